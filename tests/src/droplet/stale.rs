//! Leftovers of killed runs: everything carries its creator's pid.

use std::fs;
use std::path::Path;
use std::process::Command;

use super::container::{cgroup_hierarchies, remove_cgroup, remove_overlay};
use super::{PREFIX, RUN_DIR, run};

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// `khdeb-<pid>-…` → pid.
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Remove what runs killed before their cleanup left behind: containers
/// (killed by PID through their cgroups), overlays, cgroups and namespaces
/// whose creating process is gone. Returns what was removed.
pub fn cleanup_stale() -> Vec<String> {
    let mut removed = Vec::new();
    let stale = |name: &str| owner_pid(name).is_some_and(|p| !pid_alive(p));
    for h in cgroup_hierarchies() {
        for e in fs::read_dir(&h).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if stale(&n) && remove_cgroup(&e.path()).is_ok() {
                removed.push(e.path().display().to_string());
            }
        }
    }
    for e in fs::read_dir(RUN_DIR).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if stale(&n) && remove_overlay(&e.path()).is_ok() {
            removed.push(e.path().display().to_string());
        }
    }
    for e in fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if stale(&n) && run(Command::new("ip").args(["netns", "del", &n])).is_ok() {
            removed.push(format!("netns {n}"));
        }
    }
    for e in fs::read_dir("/run/systemd/nspawn/propagate")
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if stale(&n) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners() {
        assert_eq!(owner_pid("khdeb-123-n1"), Some(123));
        assert_eq!(owner_pid("khdeb-x-n1"), None);
        assert_eq!(owner_pid("khlab-123-n1"), None);
    }
}
