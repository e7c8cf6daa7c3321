//! kubeha-core: the pure decision core of kubeha.
//!
//! Nothing in this crate reads a clock, touches a socket, a file or a process.
//! Time arrives as an argument ([`time::Millis`]), randomness as bytes, and
//! decisions leave as data (effects) for the agent shell to carry out. The
//! simulator (`kubeha-sim`) drives the same code over a simulated network.

pub mod api;
pub mod config;
pub mod etcd;
pub mod frame;
pub mod haproxy;
pub mod hostprep;
pub mod hosts;
pub mod join;
pub mod kube;
pub mod kubeadm;
pub mod lease;
pub mod lock;
pub mod membership;
pub mod node;
pub mod proof;
pub mod time;
pub mod timing;
pub mod wire;
