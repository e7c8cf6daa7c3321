//! Processes and sockets as `/proc` shows them: is a pid a live HAProxy,
//! and who listens on a port (to say what holds the frontend's port when
//! HAProxy cannot bind it).

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcState {
    Absent,
    /// Exited, not reaped yet: dead for our purposes.
    Zombie,
    Running {
        comm: String,
    },
}

/// From `/proc/<pid>/stat` (`pid (comm) S ...`; comm may hold spaces and
/// parentheses, so split at the last `)`).
pub fn proc_state(proc_root: &Path, pid: i32) -> ProcState {
    let Ok(stat) = fs::read_to_string(proc_root.join(pid.to_string()).join("stat")) else {
        return ProcState::Absent;
    };
    parse_stat(&stat).unwrap_or(ProcState::Absent)
}

fn parse_stat(stat: &str) -> Option<ProcState> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let state = stat.get(close + 1..)?.split_whitespace().next()?;
    Some(match state {
        "Z" | "X" | "x" => ProcState::Zombie,
        _ => ProcState::Running { comm },
    })
}

/// Pids whose parent is `pid` (a master's workers).
pub fn children(pid: i32) -> Vec<i32> {
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|p| p.file_name().to_str()?.parse::<i32>().ok())
        .filter(|c| {
            fs::read_to_string(format!("/proc/{c}/stat"))
                .ok()
                .and_then(|s| parent_of(&s))
                == Some(pid)
        })
        .collect()
}

fn parent_of(stat: &str) -> Option<i32> {
    let close = stat.rfind(')')?;
    stat.get(close + 1..)?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn alive(pid: i32) -> bool {
    matches!(
        proc_state(Path::new("/proc"), pid),
        ProcState::Running { .. }
    )
}

pub fn is_haproxy(pid: i32) -> bool {
    matches!(proc_state(Path::new("/proc"), pid), ProcState::Running { comm } if comm.starts_with("haproxy"))
}

pub fn read_pid_file(path: &Path) -> Option<i32> {
    fs::read_to_string(path)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
        .filter(|p: &i32| *p > 1)
}

pub fn signal(pid: i32, sig: Signal) -> bool {
    kill(Pid::from_raw(pid), sig).is_ok()
}

/// A listening TCP socket on this node (this network namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    pub inode: u64,
    /// The process holding it, when it could be found.
    pub owner: Option<(i32, String)>,
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.owner {
            Some((pid, comm)) => write!(f, "{} (pid {pid} `{comm}`)", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// Listening sockets on `port` from `/proc/net/tcp{,6}`, with their owner.
pub fn listeners_on_port(port: u16) -> Vec<Listener> {
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = fs::read_to_string(file) {
            out.extend(
                parse_proc_net_tcp(&text)
                    .into_iter()
                    .filter(|l| l.addr.port() == port),
            );
        }
    }
    if !out.is_empty() {
        find_owners(&mut out);
    }
    out
}

/// LISTEN rows (`st` 0A) of a `/proc/net/tcp` or `tcp6` table.
pub fn parse_proc_net_tcp(text: &str) -> Vec<Listener> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.get(3) != Some(&"0A") {
                return None;
            }
            let (ip, port) = f.get(1)?.split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let ip = parse_hex_ip(ip)?;
            let inode = f.get(9)?.parse().ok()?;
            Some(Listener {
                addr: SocketAddr::new(ip, port),
                inode,
                owner: None,
            })
        })
        .collect()
}

/// The kernel prints addresses as 32-bit words in host (little-endian) order.
fn parse_hex_ip(s: &str) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(s.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_le_bytes())
    };
    match s.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(b);
            Some(match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            })
        }
        _ => None,
    }
}

fn find_owners(listeners: &mut [Listener]) {
    let Ok(procs) = fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            for l in listeners
                .iter_mut()
                .filter(|l| l.inode == inode && l.owner.is_none())
            {
                let comm = fs::read_to_string(p.path().join("comm"))
                    .map(|c| c.trim().to_string())
                    .unwrap_or_default();
                l.owner = Some((pid, comm));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line() {
        assert_eq!(
            parse_stat("123 (haproxy) S 1 123 123 0 -1"),
            Some(ProcState::Running {
                comm: "haproxy".into()
            })
        );
        assert_eq!(parse_stat("9 (a) b) Z 1 2"), Some(ProcState::Zombie));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parent_of("9 (a) b) S 42 9 9"), Some(42));
    }

    #[test]
    fn proc_net_tcp_listeners() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:192B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n\
   1: 0A00007F:192B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 100 0 0 10 0\n\
   2: 0100007F:192B 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 100 0 0 10 0\n";
        let l = parse_proc_net_tcp(text);
        assert_eq!(l.len(), 2, "established rows are skipped");
        assert_eq!(l[0].addr, "0.0.0.0:6443".parse().unwrap());
        assert_eq!(l[0].inode, 4242);
        assert_eq!(l[1].addr, "127.0.0.10:6443".parse().unwrap());
        let v6 = "  sl  local_address                         remote_address                        st\n\
   0: 00000000000000000000000001000000:192B 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1\n";
        let l = parse_proc_net_tcp(v6);
        assert_eq!(l[0].addr, "[::1]:6443".parse().unwrap());
    }

    #[test]
    fn children_of_this_process() {
        let mut c = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let kids = children(std::process::id() as i32);
        let _ = c.kill();
        let _ = c.wait();
        assert!(kids.contains(&(c.id() as i32)), "{kids:?}");
    }

    #[test]
    fn finds_our_own_listener_and_owner() {
        let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        let l = listeners_on_port(port);
        assert_eq!(l.len(), 1, "{l:?}");
        assert_eq!(l[0].addr, sock.local_addr().unwrap());
        assert_eq!(
            l[0].owner.as_ref().map(|o| o.0),
            Some(std::process::id() as i32)
        );
    }
}
