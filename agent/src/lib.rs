//! kubeha-agent: the I/O shells around `kubeha-core`.
//!
//! - [`net`]: the one UDP socket, authenticated frames in and out.
//! - [`gossip`]: chitchat membership over that socket.
//! - [`api`]: the root-only Unix socket `kubeha-ctl` talks to.
//! - [`metrics`]: Prometheus `/metrics`.
//! - [`state`]: config, key file and state directory on disk.
//! - [`agent`]: the main loop that feeds the core and carries out its effects.

pub mod agent;
pub mod api;
pub mod cli;
pub mod clock;
pub mod gossip;
pub mod metrics;
pub mod net;
pub mod state;
