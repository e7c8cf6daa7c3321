//! The command line of `kubeha-agent` (also used to generate its man page).

use std::path::PathBuf;

use clap::Parser;
use kubeha_core::config::DEFAULT_PATH;

/// Turns plain Debian VMs into a highly available kubeadm cluster: gossip
/// membership, a quorum-leased virtual IP, HAProxy kept equal to the live
/// control planes, and a kubeadm bootstrap that runs `init` exactly once.
#[derive(Parser, Debug)]
#[command(name = "kubeha-agent", version, about, long_about)]
pub struct Cli {
    /// The configuration file.
    #[arg(long, short = 'c', value_name = "PATH", default_value = DEFAULT_PATH, env = "KUBEHA_CONFIG")]
    pub config: PathBuf,
    /// Validate the configuration and the key file, print the problem (file,
    /// key, line) and exit: 0 valid, 1 invalid. Binds nothing.
    #[arg(long)]
    pub check_config: bool,
    /// Remove this node's VIP from its interface and exit (0 also when it was
    /// not there). The systemd unit runs it after the agent stops or dies, so
    /// a crashed agent's kernel stops answering ARP for the VIP.
    #[arg(long, conflicts_with = "check_config")]
    pub release_vip: bool,
    /// Internal: one host preparation run (modules, sysctls, swap,
    /// containerd, /etc/hosts), its report as JSON on stdout. The agent runs
    /// it outside its sandbox through systemd-run; `kubeha-ctl preflight`
    /// asks the agent for one.
    #[arg(long, hide = true, conflicts_with_all = ["check_config", "release_vip"])]
    pub prepare_host: bool,
}
