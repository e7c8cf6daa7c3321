//! Real droplets: a Debian 12 root booted with systemd in a network
//! namespace, with the built `kubeha_*.deb` installed by apt, so the unit,
//! the conffile, the maintainer scripts and `Restart=always` are what runs.
//!
//! - [`RootCache`]: a `debootstrap --variant=minbase bookworm` root with
//!   systemd and the package's dependencies, made once and kept under
//!   `/var/cache/kubeha-tests/`, keyed by its package list. The mirror comes
//!   from the host's apt configuration.
//! - [`Droplet`]: one container on that root: a private overlay (the cache
//!   stays read-only), `systemd-nspawn -b --network-namespace-path=…`,
//!   commands run with `nsenter` into the container's init. Dropping it
//!   powers it off (SIGTERM to the nspawn it started, SIGKILL after a
//!   deadline) and removes the overlay and its cgroups.
//! - [`TestNet`]: namespaces for tests that have no lab: a bridge in its own
//!   namespace and one namespace per droplet, `khdeb-<pid>-…`, addresses
//!   from 198.18.0.0/24, nothing in the host namespace, removed on drop.
//!
//! Everything a run creates carries the creating process id in its name
//! (`khdeb-<pid>-…`); [`cleanup_stale`] removes what a killed run left.
//!
//! Modules: `root` (the cached debootstrap root), `container` (boot, exec,
//! files, power-off and cleanup), `package` (the .deb and its unit inside a
//! droplet), [`apiserver`] (a fake apiserver in a droplet, the agent's
//! HAProxy status), [`kube`] (the Kubernetes test bed in a droplet: etcd,
//! fake-kubeadm as kubeadm, fakes for the kubelet, kubectl and containerd),
//! `net` ([`TestNet`]), `stale` (leftovers of killed runs).
//!
//! All of it needs root, `systemd-nspawn` (systemd-container) and
//! `debootstrap`.

pub mod apiserver;
mod container;
pub mod kube;
mod net;
mod package;
mod root;
mod stale;

pub use apiserver::{FakeCa, HaproxyState};
pub use container::{CONTROL_KEY_PATH, Droplet, DropletSpec};
pub use kube::KubeFakes;
pub use net::TestNet;
pub use root::{RootCache, debian_mirror, depends_names, mirror_from_deb822, mirror_from_one_line};
pub use stale::cleanup_stale;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Name prefix of every namespace, cgroup, machine and directory made here.
pub const PREFIX: &str = "khdeb-";
/// Where cached roots live.
pub const CACHE_DIR: &str = "/var/cache/kubeha-tests";
/// Where droplet overlays live while they run.
pub const RUN_DIR: &str = "/var/tmp/kubeha-droplets";
/// The Debian release of the droplets.
pub const SUITE: &str = "bookworm";
/// Installed into every cached root besides the package's own dependencies:
/// systemd to boot, dbus for `systemctl`'s friends, iproute2 and procps to
/// look around, haproxy because the package recommends it (and its enabled
/// `haproxy.service` exercises the unit's `Conflicts=`).
pub const BASE_PACKAGES: &[&str] = &["systemd", "dbus", "iproute2", "procps", "haproxy"];
/// Where the directory holding the .deb is bind-mounted (read-only) in a droplet.
pub const DEB_MOUNT: &str = "/kubeha-deb";

const PATH_ENV: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum DropletError {
    #[error("`{argv}` failed ({status}): {stderr}")]
    Command {
        argv: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run `{argv}`: {source}")]
    Spawn {
        argv: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("droplet `{droplet}`: {what} did not happen within {limit:?}{detail}")]
    Timeout {
        droplet: String,
        what: String,
        limit: Duration,
        detail: String,
    },
    #[error("no Debian mirror for `{SUITE}` in {searched}; set `KUBEHA_DEBIAN_MIRROR`")]
    NoMirror { searched: String },
    #[error("{0}")]
    Other(String),
}

type Result<T, E = DropletError> = std::result::Result<T, E>;

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> DropletError {
    let path = path.into();
    move |source| DropletError::Io { path, source }
}

fn argv_string(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Run a host command; its stdout, or an error with argv, status and stderr.
fn run(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    check(cmd, out)
}

fn output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| DropletError::Spawn {
            argv: argv_string(cmd),
            source,
        })
}

fn check(cmd: &Command, out: Output) -> Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(DropletError::Command {
            argv: argv_string(cmd),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Poll `cond` every 50 ms until it holds or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// FNV-1a: a stable hash for the cache key (std's hasher may change
/// between Rust releases, which would rebuild the cache for nothing).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_vectors() {
        // FNV-1a test vectors.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
