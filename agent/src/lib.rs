//! kubeha-agent: the I/O shells around `kubeha-core`.
//!
//! - [`net`]: the one UDP socket, authenticated frames in and out.
//! - [`gossip`]: chitchat membership over that socket; [`gossip_wire`]: what
//!   a gossip frame carries (compression, fragments).
//! - [`api`]: the root-only Unix socket `kubeha-ctl` talks to.
//! - [`metrics`]: Prometheus `/metrics`.
//! - [`haproxy`]: the local HAProxy: render, check, hitless reload, health.
//! - [`guardian`]: the VIP guardian (`kubeha-guardian`, its own process)
//!   that fences the VIP when the agent is late, frozen or dead; [`guard`]
//!   starts it, [`link`] is what crosses between them, [`watchdog`] the
//!   agent's end of the link.
//! - [`state`]: config, key file and state directory on disk.
//! - [`hostprep`], [`hosts`]: host preparation for kubeadm and the managed /etc/hosts line.
//! - [`kubeadm_config`]: the root-only kubeadm config files (init/join renders, patches).
//! - [`join`]: join material over mutual TLS (identity, server, client, kubeadm source).
//! - [`agent`]: the main loop that feeds the core and carries out its effects.
//! - [`jobs`]: long work (kubeadm, etcd, cloud calls) beside the loop.
//! - [`etcd`]: etcd's members as etcd reports them, read beside the loop for status.
//! - [`command`]: the one place external commands run; [`transient`]: kubeadm
//!   and kubectl in a transient systemd unit, outside the agent's sandbox.

pub mod agent;
pub mod api;
pub mod cli;
pub mod clock;
pub mod command;
pub mod etcd;
pub mod gossip;
pub mod gossip_wire;
pub mod guard;
pub mod guardian;
pub mod haproxy;
pub mod hostprep;
pub mod hosts;
pub mod jobs;
pub mod join;
pub mod kube_jobs;
pub mod kubeadm_config;
pub mod lb;
pub mod link;
pub mod metrics;
pub mod net;
pub mod state;
pub mod transient;
pub mod watchdog;

/// `--release-vip`: make sure the VIP is not on this node (ExecStopPost).
pub fn release_vip(config: &kubeha_core::config::Config) -> std::process::ExitCode {
    use std::process::ExitCode;
    let Some(vip) = &config.vip else {
        return ExitCode::SUCCESS;
    };
    let Some(interface) = &vip.interface else {
        // Cloud providers move the address through their API; nothing is on the interface.
        return ExitCode::SUCCESS;
    };
    match kubeha_vip::release_blocking(interface, vip.address) {
        Ok(change) => {
            if change.is_changed() {
                tracing::info!(vip = %vip.cidr(), interface = %interface, "released a VIP left on this node");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kubeha-agent: --release-vip: {e}");
            ExitCode::from(1)
        }
    }
}
