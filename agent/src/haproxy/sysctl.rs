//! `net.ipv4.ip_nonlocal_bind` / `net.ipv6.ip_nonlocal_bind`: let HAProxy
//! on a standby lb node listen on the VIP before the node holds it, so that
//! taking the VIP over needs no HAProxy restart. Per network namespace.

use std::fs;
use std::path::{Path, PathBuf};

/// The outcome for one address family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SysctlOutcome {
    /// Was 1 already.
    AlreadySet,
    /// Was 0, now 1.
    Set,
    /// The file is not there (e.g. IPv6 disabled on this node).
    Absent,
    /// Could not read or write it (e.g. read-only /proc/sys in a container).
    Failed(String),
    /// Not attempted (`set_nonlocal_bind = false`).
    Skipped,
}

impl SysctlOutcome {
    pub fn is_set(&self) -> bool {
        matches!(self, SysctlOutcome::AlreadySet | SysctlOutcome::Set)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NonlocalBindReport {
    pub ipv4: SysctlOutcome,
    pub ipv6: SysctlOutcome,
}

impl NonlocalBindReport {
    pub fn skipped() -> Self {
        NonlocalBindReport {
            ipv4: SysctlOutcome::Skipped,
            ipv6: SysctlOutcome::Skipped,
        }
    }
}

pub const IPV4_KEY: &str = "net/ipv4/ip_nonlocal_bind";
pub const IPV6_KEY: &str = "net/ipv6/ip_nonlocal_bind";

/// Set both to 1 under `root` (normally `/proc/sys`).
pub fn ensure_nonlocal_bind(root: &Path) -> NonlocalBindReport {
    NonlocalBindReport {
        ipv4: ensure_one(&root.join(IPV4_KEY)),
        ipv6: ensure_one(&root.join(IPV6_KEY)),
    }
}

fn ensure_one(path: &PathBuf) -> SysctlOutcome {
    match fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => SysctlOutcome::Absent,
        Err(e) => SysctlOutcome::Failed(format!("cannot read `{}`: {e}", path.display())),
        Ok(v) if v.trim() == "1" => SysctlOutcome::AlreadySet,
        Ok(_) => match fs::write(path, "1\n") {
            Ok(()) => SysctlOutcome::Set,
            Err(e) => SysctlOutcome::Failed(format!("cannot write 1 to `{}`: {e}", path.display())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_reports_and_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let v4 = dir.path().join(IPV4_KEY);
        fs::create_dir_all(v4.parent().unwrap()).unwrap();
        fs::write(&v4, "0\n").unwrap();
        let r = ensure_nonlocal_bind(dir.path());
        assert_eq!(r.ipv4, SysctlOutcome::Set);
        assert_eq!(r.ipv6, SysctlOutcome::Absent);
        assert_eq!(fs::read_to_string(&v4).unwrap(), "1\n");
        assert_eq!(
            ensure_nonlocal_bind(dir.path()).ipv4,
            SysctlOutcome::AlreadySet
        );

        // A directory where the file should be: reading fails, and says where.
        let bad = tempfile::tempdir().unwrap();
        fs::create_dir_all(bad.path().join(IPV4_KEY)).unwrap();
        match ensure_nonlocal_bind(bad.path()).ipv4 {
            SysctlOutcome::Failed(m) => assert!(m.contains("ip_nonlocal_bind"), "{m}"),
            other => panic!("expected a failure, got {other:?}"),
        }
    }
}
