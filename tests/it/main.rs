//! kubeha's integration tests: one test binary (`cargo test -p kubeha-tests --test it`).
//! They start the real binaries, so build them first: `cargo build --workspace --bins`.
//!
//! Lab tests need root (network namespaces); without it they print why and
//! pass without running. They take a lock so that only one lab runs at a
//! time, across test binaries too.

mod deb;
mod digitalocean;
mod do_lab;
mod fake_kubeadm;
mod forgery;
mod haproxy;
mod haproxy_bench;
mod haproxy_lab;
mod kube_lab;
mod kube_nslab;
mod lab;
mod membership;
mod preflight;
mod soak;
mod support;
mod vip;
