//! The agent's side of the VIP guardian (`kubeha-guardian`, guardian.rs):
//! starting it, and the kernel lifetime that fences the VIP when every
//! kubeha process is frozen or dead.
//!
//! The agent starts the guardian from its main thread before anything else
//! ([`spawn`]), from the `kubeha-guardian` binary beside its own, with the
//! link (link.rs) on the guardian's fd 3 and `PR_SET_PDEATHSIG`, so the
//! kernel tells the guardian when the agent is gone. What the guardian does
//! is in guardian.rs; watchdog.rs is the agent's end of the link.
//!
//! When every kubeha process is frozen or dead the address still goes: the
//! agent adds it with a finite kernel lifetime ([`kernel_lifetime`]) and
//! renews it while holding (docs/PROTOCOL.md §1, "pauses").

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use kubeha_core::config::Config;
use kubeha_core::timing::Timing;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

use crate::guardian;
use crate::link::{DEATH_SIGNAL, LINK_FD};

/// The guardian's binary name, looked for beside the agent's.
pub const GUARDIAN_BIN: &str = "kubeha-guardian";

/// The agent's end of the link, between [`spawn`] and the agent's loop.
static LINK: Mutex<Option<OwnedFd>> = Mutex::new(None);

/// The kernel lifetime (whole seconds) to add the VIP with for `timing`: the
/// kernel must never remove it while the holder's lease counts. The lease a
/// holder counts ends at most `H(L)` after its last renewal; the agent
/// renews the lifetime at most [`RENEW_LIFETIME_EVERY`] apart while holding,
/// and the kernel's address worker may act up to 20 ms before a lifetime
/// ends (ADDRCONF_TIMER_FUZZ_MINUS). Every profile gives 1 s.
pub fn kernel_lifetime(timing: &Timing) -> u32 {
    let need = timing.holder_lease() + RENEW_LIFETIME_EVERY + Duration::from_millis(20);
    need.as_secs_f64().ceil().max(1.0) as u32
}

/// While holding, the agent restarts the kernel lifetime at most this far apart.
pub const RENEW_LIFETIME_EVERY: Duration = Duration::from_millis(100);

/// Where the guardian's binary is: beside `agent_exe`.
pub fn guardian_path(agent_exe: &Path) -> PathBuf {
    agent_exe.with_file_name(GUARDIAN_BIN)
}

/// Start the guardian for `config` (only VIP candidates with an interface).
/// Call from the main thread: the death signal follows the spawning thread.
/// The error names the guardian binary when it is missing or cannot run.
pub fn spawn(config: &Config) -> io::Result<Option<Child>> {
    let Some(vip) = config.vip.as_ref() else {
        return Ok(None);
    };
    let Some(interface) = vip.interface.clone() else {
        return Ok(None);
    };
    if !config.is_vip_candidate() {
        return Ok(None);
    }
    let exe = guardian_path(&std::env::current_exe()?);
    if !exe.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} is missing (it ships beside kubeha-agent)",
                exe.display()
            ),
        ));
    }
    let (agent_end, guard_end) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let guard_raw = guard_end.as_raw_fd();
    let parent = std::process::id() as i32;
    let mut cmd = Command::new(&exe);
    cmd.args(guardian::argv(&guardian::Args {
        interface,
        vip: vip.address,
        source: config.gossip_addr(),
    }))
    .stdin(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if guard_raw == LINK_FD {
                if libc::fcntl(LINK_FD, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(guard_raw, LINK_FD) != LINK_FD {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                DEATH_SIGNAL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(0);
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("starting {}: {e}", exe.display())))?;
    drop(guard_end);
    *LINK.lock().expect("guardian link lock") = Some(agent_end);
    Ok(Some(child))
}

/// The agent's end of the link to the guardian [`spawn`] started.
pub fn take_link() -> Option<OwnedFd> {
    LINK.lock().expect("guardian link lock").take()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_lifetime_outlasts_every_lease_a_holder_counts() {
        for t in [Timing::DEFAULT, Timing::FAST] {
            let secs = kernel_lifetime(&t);
            let h = t.holder_lease();
            // The kernel may act 20 ms early; the lifetime restarts at most
            // RENEW_LIFETIME_EVERY apart while the lease counts.
            assert!(
                Duration::from_secs(secs.into())
                    >= h + RENEW_LIFETIME_EVERY + Duration::from_millis(20),
                "{secs} s for H = {h:?}"
            );
            assert_eq!(secs, 1);
        }
    }

    #[test]
    fn the_guardian_is_looked_for_beside_the_agent() {
        assert_eq!(
            guardian_path(Path::new("/usr/bin/kubeha-agent")),
            Path::new("/usr/bin/kubeha-guardian")
        );
    }
}
