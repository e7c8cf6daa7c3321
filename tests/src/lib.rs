//! kubeha-tests

pub mod droplet;
