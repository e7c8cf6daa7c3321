//! kubeha-tests: the test bed of kubeha.
//!
//! - [`lab`]: droplets as network namespaces on a bridge (`kubeha-lab`),
//!   with a TCP responder, a client prober, a VIP sampler, keepalived as the
//!   baseline, and the failover benchmark.

pub mod lab;
