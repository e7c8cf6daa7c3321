//! The VIP guardian: a small child process that removes the VIP the moment
//! the agent dies, however it dies.
//!
//! After `kill -9` of an agent (or a panic that aborts it) nobody would remove
//! the VIP, and the node's kernel would keep answering ARP for it while
//! another node holds it (keepalived has exactly this problem). The agent
//! therefore starts `kubeha-agent --guard-vip` from its main thread before
//! anything else, with `PR_SET_PDEATHSIG = SIGTERM`: the kernel signals the
//! guardian when the agent's main thread ends, and the guardian removes the
//! address and exits. Removing is always safe (S1 is about adding). Under
//! systemd the unit's `ExecStopPost=kubeha-agent --release-vip` does the same
//! once more.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};

use kubeha_core::config::Config;
use nix::sys::signal::{SigSet, Signal};

/// Start the guardian for `config` (only VIP candidates with an interface).
/// Call from the main thread: the death signal follows the spawning thread.
pub fn spawn(config_path: &Path, config: &Config) -> std::io::Result<Option<Child>> {
    if !config.is_vip_candidate()
        || config
            .vip
            .as_ref()
            .and_then(|v| v.interface.as_ref())
            .is_none()
    {
        return Ok(None);
    }
    let parent = std::process::id() as i32;
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("--guard-vip")
        .arg("--config")
        .arg(config_path)
        .stdin(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGTERM as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(0);
            }
            Ok(())
        });
    }
    cmd.spawn().map(Some)
}

/// `--guard-vip`: wait for the agent's death (SIGTERM) and remove the VIP.
pub fn run(config: &Config) -> ExitCode {
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    if let Err(e) = set.thread_block() {
        eprintln!("kubeha-agent --guard-vip: cannot block signals: {e}");
        return ExitCode::from(1);
    }
    loop {
        match set.wait() {
            // SIGHUP reaches the whole process group on a terminal hangup; the
            // agent decides about that, not us.
            Ok(Signal::SIGHUP) => continue,
            Ok(_) => break,
            Err(e) => {
                eprintln!("kubeha-agent --guard-vip: waiting for signals: {e}");
                break;
            }
        }
    }
    crate::release_vip(config)
}
