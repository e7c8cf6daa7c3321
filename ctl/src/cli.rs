//! The command line of `kubeha-ctl` (also used to generate its man page
//! and shell completions).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use kubeha_core::config::DEFAULT_SOCKET;

/// Operate the kubeha agent of this node.
#[derive(Parser, Debug)]
#[command(name = "kubeha-ctl", version, about, long_about)]
pub struct Cli {
    /// The agent's Unix socket (`socket` in kubeha.toml).
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_SOCKET, env = "KUBEHA_SOCKET")]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Cluster, quorum, VIP holder, HAProxy backends, Kubernetes phase and members.
    Status {
        /// `table` for people, `json` for scripts (fields in DESIGN.md section 6).
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// The members this node sees, one per node name.
    Members {
        /// `table` for people, `json` for scripts.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Check this host for kubeadm now (modules, sysctls, swap, containerd's
    /// cgroup driver, kubelet/kubeadm/kubectl) and, unless `host_prep = false`,
    /// fix what can be fixed. Exit 0 when prepared, 1 when not.
    Preflight {
        /// `table` for people, `json` for scripts.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Hand the VIP over now (planned) and take no new role until `undrain`.
    Drain,
    /// Take roles again after `drain`.
    Undrain,
    /// Print a fresh cluster key (base64, 32 bytes), or write it root-only to a file.
    Keygen {
        /// Write the key here with mode 0600 instead of printing it; refuses to overwrite.
        #[arg(long, value_name = "FILE", conflicts_with = "public_of")]
        out: Option<PathBuf>,
        /// Print the role-proof public key of every key in this control key file
        /// (`control_public_keys` for workers), primary first; nothing secret.
        #[arg(long, value_name = "FILE")]
        public_of: Option<PathBuf>,
    },
    /// The bootstrap lock (`kubeadm init` exactly once).
    Bootstrap {
        #[command(subcommand)]
        action: Bootstrap,
    },
    /// Print kubeha-ctl's version.
    Version,
}

#[derive(Subcommand, Debug)]
pub enum Bootstrap {
    /// NODE holds the bootstrap lock, died before its `kubeadm init`
    /// finished and is gone for good (destroyed, never to boot again):
    /// release its lock so that another control plane initializes the
    /// cluster. Never for a node that may come back with a cluster of its
    /// own. Asks you to type NODE unless `--yes`; then waits up to
    /// `--wait` for a majority of the voters. Exit 0 released, 1 not.
    Release {
        /// The node whose lock to release (as `kubernetes.init_node_down`
        /// in `kubeha-ctl status` names it).
        node: String,
        /// Do not ask: NODE is gone for good.
        #[arg(long)]
        yes: bool,
        /// How long to wait for the voters' answers.
        #[arg(long, value_name = "SECONDS", default_value_t = 30)]
        wait: u64,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}
