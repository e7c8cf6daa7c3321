//! kubeha-agent

pub mod haproxy;
