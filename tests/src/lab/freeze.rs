//! Freezing processes (SIGSTOP / SIGCONT), the way VM steal, swap storms, a
//! hung fsync or cgroup throttling freeze them in production: the agent
//! alone (its VIP guardian keeps running), or the agent and its guardian.

use std::time::Duration;

use crate::lab::{LabError, Node, Result, wait_until};

/// What to freeze on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freeze {
    /// Only the agent's pid: its guardian child keeps running.
    Agent,
    /// The agent and its VIP guardian: nothing of kubeha runs on the node;
    /// only its kernel (and the address lifetime) acts.
    AgentAndGuardian,
}

/// Frozen processes; thawed (SIGCONT) on [`Frozen::thaw`] or drop, so a
/// failing test never leaves a stopped process behind.
#[derive(Debug)]
pub struct Frozen {
    pids: Vec<i32>,
}

impl Frozen {
    pub fn pids(&self) -> &[i32] {
        &self.pids
    }

    pub fn thaw(mut self) {
        self.cont();
    }

    fn cont(&mut self) {
        for pid in self.pids.drain(..) {
            // SAFETY: plain syscall, on a pid this lab started.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.cont();
    }
}

/// The state letter of `/proc/<pid>/stat` and the parent pid.
fn stat(pid: i32) -> Option<(char, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything.
    let rest = &s[s.rfind(')')? + 2..];
    let mut it = rest.split(' ');
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((state, ppid))
}

impl Node<'_> {
    /// The pid of the agent's VIP guardian (its child `kubeha-guardian`),
    /// if it runs.
    pub fn guardian_pid(&self) -> Option<i32> {
        let agent = self.agent_pid()?;
        let children = std::fs::read_dir("/proc").ok()?;
        children
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .find(|&pid| {
                stat(pid).is_some_and(|(_, ppid)| ppid == agent)
                    && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.trim_end() == "kubeha-guardian")
            })
    }

    /// SIGSTOP `what` and wait until the kernel reports each process stopped.
    pub fn freeze(&self, what: Freeze) -> Result<Frozen> {
        let agent = self
            .agent_pid()
            .ok_or_else(|| LabError::node(self.name(), "no agent running"))?;
        let mut pids = vec![agent];
        if what == Freeze::AgentAndGuardian {
            pids.push(
                self.guardian_pid()
                    .ok_or_else(|| LabError::node(self.name(), "the agent has no VIP guardian"))?,
            );
        }
        // Guardian first: a guardian that saw its agent stop first would
        // fence the VIP, which is not the case under test.
        pids.reverse();
        let mut frozen = Frozen { pids: Vec::new() };
        for pid in pids {
            // SAFETY: plain syscall, on a pid this lab started.
            if unsafe { libc::kill(pid, libc::SIGSTOP) } != 0 {
                return Err(LabError::node(
                    self.name(),
                    format!("SIGSTOP of pid {pid}: {}", std::io::Error::last_os_error()),
                ));
            }
            frozen.pids.push(pid);
        }
        let stopped = wait_until(Duration::from_secs(2), Duration::from_millis(1), || {
            frozen
                .pids
                .iter()
                .all(|&p| stat(p).is_some_and(|(s, _)| s == 'T'))
        });
        if !stopped {
            return Err(LabError::node(
                self.name(),
                format!("pids {:?} did not stop", frozen.pids),
            ));
        }
        Ok(frozen)
    }
}
