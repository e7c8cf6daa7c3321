//! Talking to HAProxy's Unix sockets: the master CLI (`-S`: `reload`,
//! `show proc`) and the worker's stats socket (`show stat`), and parsing
//! what they answer.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Send one command and read the whole answer. The write side is shut down
/// after the command: the master CLI only answers and closes once it sees
/// the end of input.
pub fn command(socket: &Path, cmd: &str, timeout: Duration) -> io::Result<String> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(cmd.as_bytes())?;
    s.write_all(b"\n")?;
    s.shutdown(Shutdown::Write)?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// `show proc` on the master CLI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcInfo {
    pub master_pid: i32,
    /// Reload attempts since the master started, failed ones included.
    pub reloads: u64,
    pub failed_reloads: u64,
    /// Workers of the current generation.
    pub workers: Vec<i32>,
    /// Workers of earlier generations still serving their connections.
    pub old_workers: Vec<i32>,
}

/// Parse HAProxy 2.6's `show proc`:
///
/// ```text
/// #<PID>          <type>          <reloads>       <uptime>        <version>
/// 16754           master          2 [failed: 1]   0d00h10m55s     2.6.12-1+deb12u3
/// # workers
/// 20029           worker          1               0d00h00m16s     2.6.12-1+deb12u3
/// # old workers
/// 16756           worker          2               0d00h01m10s     2.6.12-1+deb12u3
/// # programs
/// ```
pub fn parse_show_proc(text: &str) -> Option<ProcInfo> {
    #[derive(PartialEq)]
    enum Section {
        Master,
        Workers,
        OldWorkers,
        Other,
    }
    let mut section = Section::Master;
    let mut master = None;
    let mut workers = Vec::new();
    let mut old_workers = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("#<") {
            continue;
        }
        if let Some(h) = line.strip_prefix('#') {
            section = match h.trim() {
                "workers" => Section::Workers,
                "old workers" => Section::OldWorkers,
                _ => Section::Other,
            };
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(pid) = f.first().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        match section {
            Section::Master if f.get(1) == Some(&"master") => {
                let reloads = f.get(2)?.parse().ok()?;
                // "[failed:" "1]"
                let failed = match (f.get(3), f.get(4)) {
                    (Some(&"[failed:"), Some(n)) => n.trim_end_matches(']').parse().ok()?,
                    _ => 0,
                };
                master = Some((pid, reloads, failed));
            }
            Section::Workers => workers.push(pid),
            Section::OldWorkers => old_workers.push(pid),
            _ => {}
        }
    }
    let (master_pid, reloads, failed_reloads) = master?;
    Some(ProcInfo {
        master_pid,
        reloads,
        failed_reloads,
        workers,
        old_workers,
    })
}

/// One server row of `show stat`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerStat {
    pub name: String,
    pub addr: String,
    /// `UP`, `UP 1/3` (going down), `DOWN`, `DOWN 1/2` (going up), `MAINT`,
    /// `DRAIN`, `no check`...
    pub status: String,
}

impl ServerStat {
    /// In rotation: `UP`, `UP n/m` (failing, not out yet) and `no check`.
    pub fn up(&self) -> bool {
        self.status == "UP" || self.status.starts_with("UP ") || self.status == "no check"
    }
}

/// Server rows of `backend` in `show stat`'s CSV, columns found by the
/// header so that other HAProxy versions' extra columns do not matter.
pub fn parse_show_stat(text: &str, backend: &str) -> Vec<ServerStat> {
    let mut lines = text.lines();
    let Some(header) = lines.next().and_then(|h| h.strip_prefix("# ")) else {
        return Vec::new();
    };
    let cols: Vec<&str> = header.split(',').collect();
    let col = |name: &str| cols.iter().position(|c| *c == name);
    let (Some(px), Some(sv), Some(st)) = (col("pxname"), col("svname"), col("status")) else {
        return Vec::new();
    };
    let addr = col("addr");
    lines
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let name = *f.get(sv)?;
            if *f.get(px)? != backend || name == "BACKEND" || name == "FRONTEND" {
                return None;
            }
            Some(ServerStat {
                name: name.to_string(),
                addr: addr
                    .and_then(|a| f.get(a))
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                status: f.get(st)?.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_proc_after_a_failed_reload() {
        let text = "#<PID>          <type>          <reloads>       <uptime>        <version>      \n\
            16754           master          2 [failed: 1]   0d00h10m55s     2.6.12-1+deb12u3\n\
            # workers\n\
            20029           worker          1               0d00h00m16s     2.6.12-1+deb12u3\n\
            # old workers\n\
            16756           worker          2               0d00h01m10s     2.6.12-1+deb12u3\n\
            # programs\n\n";
        assert_eq!(
            parse_show_proc(text),
            Some(ProcInfo {
                master_pid: 16754,
                reloads: 2,
                failed_reloads: 1,
                workers: vec![20029],
                old_workers: vec![16756],
            })
        );
        assert_eq!(parse_show_proc("Unknown command\n"), None);
        assert_eq!(parse_show_proc(""), None);
    }

    #[test]
    fn show_stat_rows_of_our_backend() {
        let text = "# pxname,svname,qcur,status,weight,addr\n\
            kubeha-apiserver,FRONTEND,,OPEN,,\n\
            kubeha-control-planes,cp-0,0,UP,1,10.0.0.3:6443\n\
            kubeha-control-planes,cp-1,0,UP 1/3,1,10.0.0.4:6443\n\
            kubeha-control-planes,cp-2,0,DOWN 1/2,1,10.0.0.5:6443\n\
            kubeha-control-planes,cp-3,0,MAINT,1,10.0.0.6:6443\n\
            kubeha-control-planes,BACKEND,0,UP,2,\n\
            other,x,0,UP,1,10.0.0.9:1\n";
        let rows = parse_show_stat(text, "kubeha-control-planes");
        let got: Vec<(&str, &str, bool)> = rows
            .iter()
            .map(|r| (r.name.as_str(), r.addr.as_str(), r.up()))
            .collect();
        assert_eq!(
            got,
            [
                ("cp-0", "10.0.0.3:6443", true),
                ("cp-1", "10.0.0.4:6443", true),
                ("cp-2", "10.0.0.5:6443", false),
                ("cp-3", "10.0.0.6:6443", false),
            ]
        );
        assert!(parse_show_stat("garbage", "kubeha-control-planes").is_empty());
    }
}
