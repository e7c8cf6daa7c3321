//! Network namespaces: create, delete, list, and run code inside one.
//!
//! Code runs inside a namespace on a thread of its own that called
//! `setns(CLONE_NEWNET)`: the network namespace is per thread, and a socket
//! stays in the namespace it was created in, so a thread can open sockets in
//! a node's namespace and hand them to others.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;

use super::cmd;
use super::error::{LabError, Result};

/// Every namespace the lab makes starts with this.
pub const PREFIX: &str = "khl";
pub const NETNS_DIR: &str = "/run/netns";

pub fn path(ns: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(ns)
}

pub fn exists(ns: &str) -> bool {
    path(ns).exists()
}

/// Namespaces whose name starts with [`PREFIX`], sorted.
pub fn list_lab() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(PREFIX))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Lab id of a lab namespace name: `khl<id>-<suffix>` gives `<id>`.
pub fn lab_id_of(ns: &str) -> Option<&str> {
    let rest = ns.strip_prefix(PREFIX)?;
    let (id, _) = rest.split_once('-')?;
    (!id.is_empty()).then_some(id)
}

/// Create `ns` with loopback up and IPv6 off (no router solicitations or
/// DAD chatter on the test segment).
pub fn add(ns: &str) -> Result<()> {
    cmd::ip(["netns", "add", ns])?;
    cmd::ip_n(ns, ["link", "set", "lo", "up"])?;
    for key in [
        "net/ipv6/conf/all/disable_ipv6",
        "net/ipv6/conf/default/disable_ipv6",
    ] {
        // A kernel without IPv6 has no such file: nothing to disable.
        let _ = write_sysctl(ns, key, "1");
    }
    Ok(())
}

/// Delete `ns` (its mount point; the kernel frees it once no process or
/// socket uses it). Missing is fine.
pub fn del(ns: &str) -> Result<()> {
    if !exists(ns) {
        return Ok(());
    }
    match cmd::ip(["netns", "del", ns]) {
        Ok(_) => Ok(()),
        Err(_) if !exists(ns) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Pids whose main thread is in `ns` (`ip netns pids`).
pub fn pids(ns: &str) -> Vec<i32> {
    match cmd::ip(["netns", "pids", ns]) {
        Ok(s) => s
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

pub fn open(ns: &str) -> Result<File> {
    File::open(path(ns)).map_err(|source| LabError::Netns {
        ns: ns.to_string(),
        what: "open",
        source,
    })
}

fn setns_fd(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: plain syscall on a descriptor we own; affects this thread only.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Spawn a thread that enters `ns` and then runs `f`. Returns once the
/// thread is inside the namespace.
pub fn spawn_in<T, F>(ns: &str, thread_name: &str, f: F) -> Result<JoinHandle<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let file = open(ns)?;
    let (tx, rx) = mpsc::channel::<std::io::Result<()>>();
    let handle = std::thread::Builder::new()
        .name(thread_name.to_string())
        .spawn(move || {
            let r = setns_fd(file.as_raw_fd());
            drop(file);
            let ok = r.is_ok();
            let _ = tx.send(r);
            // The caller gets the error and drops the handle; this thread
            // must not run `f` outside the namespace.
            assert!(ok, "setns failed");
            f()
        })
        .map_err(|source| LabError::Netns {
            ns: ns.to_string(),
            what: "spawn thread",
            source,
        })?;
    match rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(source)) => Err(LabError::Netns {
            ns: ns.to_string(),
            what: "setns",
            source,
        }),
        Err(_) => Err(LabError::Netns {
            ns: ns.to_string(),
            what: "setns",
            source: std::io::Error::other("thread died before entering the namespace"),
        }),
    }
}

/// Run `f` inside `ns` and return its result.
pub fn run_in<T, F>(ns: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let h = spawn_in(ns, "khl-netns", f)?;
    h.join().map_err(|_| LabError::Netns {
        ns: ns.to_string(),
        what: "run",
        source: std::io::Error::other("the code run inside the namespace panicked"),
    })
}

/// Write a sysctl of `ns`; `key` is a path under /proc/sys, e.g.
/// `net/ipv4/ip_nonlocal_bind`. /proc/sys/net shows the namespace of the
/// thread that opens it.
pub fn write_sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    let p = PathBuf::from("/proc/sys").join(key);
    let v = value.to_string();
    let p2 = p.clone();
    run_in(ns, move || std::fs::write(&p2, v))?.map_err(|e| LabError::Netns {
        ns: ns.to_string(),
        what: "write sysctl",
        source: std::io::Error::new(e.kind(), format!("{}: {e}", p.display())),
    })
}

pub fn read_sysctl(ns: &str, key: &str) -> Result<String> {
    let p = PathBuf::from("/proc/sys").join(key);
    let p2 = p.clone();
    run_in(ns, move || std::fs::read_to_string(&p2))?
        .map(|s| s.trim().to_string())
        .map_err(|e| LabError::Netns {
            ns: ns.to_string(),
            what: "read sysctl",
            source: std::io::Error::new(e.kind(), format!("{}: {e}", p.display())),
        })
}

/// For `Command::pre_exec`: enter the namespace open as `fd`, start a new
/// session (so the child gets no terminal signals and can be killed as a
/// group) and clear the signal mask the lab may have set for its own
/// signal thread.
///
/// # Safety
/// Called between fork and exec: only async-signal-safe syscalls.
pub unsafe fn child_setup(fd: RawFd) -> std::io::Result<()> {
    setns_fd(fd)?;
    // SAFETY: async-signal-safe syscalls only.
    unsafe {
        if libc::setsid() < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_id_is_parsed() {
        assert_eq!(lab_id_of("khlab12-sw"), Some("ab12"));
        assert_eq!(lab_id_of("khlab12-n1"), Some("ab12"));
        assert_eq!(lab_id_of("khl-sw"), None);
        assert_eq!(lab_id_of("other-sw"), None);
        assert_eq!(lab_id_of("khlab12"), None);
    }
}
