//! Processes the lab starts: recorded by pid and start time, so a later
//! `kubeha-lab down` (another process) kills exactly those and never a
//! process that reused the pid.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::cmd::argv_string;
use super::error::{LabError, Result};
use super::netns;

/// A process the lab started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRecord {
    pub pid: i32,
    /// Field 22 of /proc/PID/stat (clock ticks after boot).
    pub start: u64,
}

/// Fields after the command name in /proc/PID/stat (the name may hold
/// spaces and parentheses, so split after the last `)`).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&s)
}

fn parse_stat(s: &str) -> Option<Vec<String>> {
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Start time of `pid`, if it exists.
pub fn start_time(pid: i32) -> Option<u64> {
    // After the name: state is field 3, starttime field 22 => index 19.
    stat_fields(pid)?.get(19)?.parse().ok()
}

impl ProcRecord {
    pub fn of(pid: i32) -> Option<ProcRecord> {
        Some(ProcRecord {
            pid,
            start: start_time(pid)?,
        })
    }

    /// Same process (pid and start time) and not a zombie.
    pub fn alive(&self) -> bool {
        match stat_fields(self.pid) {
            Some(f) => {
                f.get(19).and_then(|s| s.parse::<u64>().ok()) == Some(self.start)
                    && !matches!(f.first().map(String::as_str), Some("Z") | Some("X"))
            }
            None => false,
        }
    }

    /// Send `sig` if this is still the recorded process. Returns whether it
    /// was sent.
    pub fn signal(&self, sig: i32) -> bool {
        if !self.alive() {
            return false;
        }
        // SAFETY: plain syscall.
        unsafe { libc::kill(self.pid, sig) == 0 }
    }

    /// Send `sig` to the process group this process leads (it was started
    /// with `setsid`, so its pgid is its pid).
    pub fn signal_group(&self, sig: i32) -> bool {
        if !self.alive() {
            return false;
        }
        // SAFETY: plain syscall; negative pid = process group.
        unsafe { libc::kill(-self.pid, sig) == 0 }
    }
}

/// Poll until `pred` holds or `timeout` passes. Returns whether it held.
pub fn wait_until(timeout: Duration, step: Duration, mut pred: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if pred() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(step);
    }
}

/// A child started by this process.
#[derive(Debug)]
pub struct Spawned {
    pub rec: ProcRecord,
    pub child: Option<Child>,
    pub argv: String,
}

impl Spawned {
    /// Reap if it exited; true when it is gone.
    pub fn reap(&mut self) -> bool {
        if let Some(c) = &mut self.child
            && let Ok(Some(_)) = c.try_wait()
        {
            self.child = None;
        }
        !self.rec.alive()
    }

    /// Wait until gone; SIGKILL the group after `grace`.
    pub fn wait_gone(&mut self, grace: Duration) -> bool {
        if wait_until(grace, Duration::from_millis(5), || self.reap()) {
            return true;
        }
        self.rec.signal_group(libc::SIGKILL);
        self.rec.signal(libc::SIGKILL);
        wait_until(Duration::from_secs(5), Duration::from_millis(5), || {
            self.reap()
        })
    }
}

/// Start `program args` inside `ns` as the leader of a new session, stdout
/// and stderr appended to `log`.
pub fn spawn_in_netns(ns: &str, program: &Path, args: &[String], log: &Path) -> Result<Spawned> {
    let argv = argv_string(program.as_os_str(), args);
    let fd = netns::open(ns)?;
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| LabError::io(log, e))?;
    let err = out.try_clone().map_err(|e| LabError::io(log, e))?;
    let raw = fd.as_raw_fd();
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: child_setup only makes async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(move || netns::child_setup(raw));
    }
    let child = cmd.spawn().map_err(|source| LabError::Spawn {
        argv: argv.clone(),
        source,
    })?;
    drop(fd);
    let pid = child.id() as i32;
    // The start time is fixed at fork, so it is readable right away.
    let rec = ProcRecord::of(pid).ok_or_else(|| LabError::Spawn {
        argv: argv.clone(),
        source: std::io::Error::other("the process vanished right after it was started"),
    })?;
    Ok(Spawned {
        rec,
        child: Some(child),
        argv,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_in_name() {
        let s = "123 (a (b) c) S 1 123 123 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 98765 0 0";
        let f = parse_stat(s).unwrap();
        assert_eq!(f[0], "S");
        assert_eq!(f[19], "98765");
    }

    #[test]
    fn own_record_is_alive_and_a_wrong_start_is_not() {
        let me = ProcRecord::of(std::process::id() as i32).unwrap();
        assert!(me.alive());
        let other = ProcRecord {
            pid: me.pid,
            start: me.start + 1,
        };
        assert!(!other.alive());
        // A record that does not match is never signalled.
        assert!(!other.signal(0));
    }

    #[test]
    fn exited_child_is_not_alive_once_reaped() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let rec = ProcRecord::of(pid);
        child.wait().unwrap();
        if let Some(rec) = rec {
            assert!(!rec.alive());
        }
    }
}
