//! kubeha's integration tests: one test binary (`cargo test -p kubeha-tests --test it`).
//! They start the real binaries, so build them first: `cargo build --workspace --bins`.

mod deb;
mod membership;
mod support;
