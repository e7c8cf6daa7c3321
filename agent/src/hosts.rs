//! The managed `/etc/hosts` line (decided by `kubeha_core::hosts`), and the
//! atomic file write host preparation uses.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use kubeha_core::api::PreflightCheck;
use kubeha_core::hosts;

/// Replace `path` with `bytes` atomically: a temporary file in the same
/// directory, fsync, rename, fsync of the directory. A new file gets `mode`;
/// an existing one keeps its mode. Missing parent directories are created
/// (0755).
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)?;
    let mode = match fs::metadata(path) {
        Ok(m) => m.permissions().mode() & 0o7777,
        Err(_) => mode,
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.kubeha-tmp"));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Make the hosts file at `path` (`shown` in messages) hold the managed line
/// for `name` → `addr`; with `fix` false only report.
pub fn ensure(path: &Path, shown: &str, name: &str, addr: IpAddr, fix: bool) -> PreflightCheck {
    let current = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            let p = hosts::plan("", name, addr);
            return hosts::check(
                shown,
                name,
                addr,
                &p,
                false,
                Some(&format!("cannot read: {e}")),
            );
        }
    };
    let plan = hosts::plan(&current, name, addr);
    let (written, error) = match (&plan.contents, fix) {
        (Some(new), true) => match write_file(path, new.as_bytes(), 0o644) {
            Ok(()) => {
                tracing::info!(file = %shown, name, addr = %addr, "managed hosts line written");
                (true, None)
            }
            Err(e) => (false, Some(format!("cannot write: {e}"))),
        },
        _ => (false, None),
    };
    hosts::check(shown, name, addr, &plan, written, error.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubeha_core::api::CheckState;

    #[test]
    fn writes_atomically_keeps_other_lines_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        fs::write(&path, "127.0.0.1 localhost\n10.0.0.5 db\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let addr: IpAddr = "10.108.0.10".parse().unwrap();

        let c = ensure(&path, "/etc/hosts", "k8s-api", addr, true);
        assert_eq!(c.state, CheckState::Changed, "{c:?}");
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "127.0.0.1 localhost\n10.0.0.5 db\n10.108.0.10\tk8s-api\t# kubeha: managed\n"
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        // No temporary file left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");

        let again = ensure(&path, "/etc/hosts", "k8s-api", addr, true);
        assert_eq!(again.state, CheckState::Ok);

        // The VIP moved to another address: the line follows, in place.
        let other: IpAddr = "10.108.0.11".parse().unwrap();
        let report_only = ensure(&path, "/etc/hosts", "k8s-api", other, false);
        assert_eq!(report_only.state, CheckState::Failed);
        assert!(fs::read_to_string(&path).unwrap().contains("10.108.0.10\t"));
        ensure(&path, "/etc/hosts", "k8s-api", other, true);
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "127.0.0.1 localhost\n10.0.0.5 db\n10.108.0.11\tk8s-api\t# kubeha: managed\n"
        );
    }

    #[test]
    fn write_failure_is_a_failed_check_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: rename fails.
        let path = dir.path().join("hosts");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("x"), "").unwrap();
        let c = ensure(
            &path,
            "/etc/hosts",
            "k8s-api",
            "10.0.0.1".parse().unwrap(),
            true,
        );
        assert_eq!(c.state, CheckState::Failed);
        assert!(
            c.detail.starts_with("/etc/hosts: cannot read"),
            "{}",
            c.detail
        );
    }
}
