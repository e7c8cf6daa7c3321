//! kubeha's integration tests (one binary, see STYLE.md).
//!
//! Lab tests need root (network namespaces); without it they print why and
//! pass without running. They take a lock so that only one lab runs at a
//! time, across test binaries too.

mod lab;
