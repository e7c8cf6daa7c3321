//! HAProxy in front of the kube-apiservers: which servers it balances over
//! ([`backend_set`]) and the exact configuration text ([`render`]).
//!
//! Both are pure. The agent shell (`kubeha_agent::haproxy`) writes the text,
//! validates it with `haproxy -c`, swaps it in and reloads the master.
//!
//! The shape of the configuration and the reasons for the check timings are
//! in docs/haproxy.md; the short version: a TCP frontend on the VIP, one
//! server per live control plane, checks that ask each apiserver's `/readyz`
//! over TLS (verified against the cluster CA once it exists), and timings
//! that take a dead apiserver out of rotation within DESIGN's L4 budget.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{HaproxyConfig, Role};
use crate::membership::{MemberInfo, MembershipView};

/// Name of the frontend section.
pub const FRONTEND_NAME: &str = "kubeha-apiserver";
/// Name of the backend section: `show stat` rows with this `pxname` are the
/// control planes.
pub const BACKEND_NAME: &str = "kubeha-control-planes";
/// Host name the checks verify the apiserver certificate against: kubeadm
/// puts `kubernetes` in every apiserver certificate's SANs.
pub const VERIFY_HOST: &str = "kubernetes";
/// First line of every rendered file.
pub const HEADER: &str =
    "# Managed by kubeha-agent: do not edit, it is rewritten whenever the control planes change.";

/// One apiserver behind HAProxy.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    /// The member's node name, used as HAProxy's server name.
    pub name: String,
    pub addr: SocketAddr,
}

/// Whether a member's apiserver belongs behind HAProxy now.
///
/// Seam for the kubeadm issue: today any alive control-plane member counts;
/// once members publish their kubeadm state this must also require
/// `kube` to be `joining` or `control-plane` (an apiserver that has not been
/// set up yet must not receive traffic, and `/readyz` alone cannot tell a
/// half-joined node from a ready one during kubeadm's own bootstrap).
pub fn is_backend_member(m: &MemberInfo) -> bool {
    m.alive() && m.roles.contains(&Role::ControlPlane) && valid_server_name(&m.name)
}

/// One server per control-plane member that [`is_backend_member`] admits,
/// at the member's gossip IP and `backend_port`, sorted by name.
pub fn backend_set(view: &MembershipView, backend_port: u16) -> Vec<Backend> {
    // `members` is a BTreeMap by name, so the output is sorted already;
    // sort anyway so the contract does not hang on that.
    let mut out: Vec<Backend> = view
        .members
        .values()
        .filter(|m| is_backend_member(m))
        .map(|m| Backend {
            name: m.name.clone(),
            addr: SocketAddr::new(m.addr.ip(), backend_port),
        })
        .collect();
    out.sort();
    out
}

/// Names that can go into the file verbatim. Node names are validated in the
/// config already; this keeps a name that arrived some other way from
/// smuggling a line into the file.
pub fn valid_server_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// Health-check timing. See docs/haproxy.md for the arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckTiming {
    /// Between checks of a server that is fully up; also the check's
    /// connect + TLS handshake timeout (HAProxy uses `min(timeout connect, inter)`).
    pub inter: Duration,
    /// Between checks while a server is changing state.
    pub fastinter: Duration,
    /// Between checks of a server that is fully down.
    pub downinter: Duration,
    /// Consecutive failures that take a server out.
    pub fall: u32,
    /// Consecutive successes that put it back.
    pub rise: u32,
    /// Time for the `/readyz` answer once the TLS connection is up.
    pub timeout_check: Duration,
    /// `timeout connect`: client traffic, and the upper bound on a check's
    /// connect timeout.
    pub timeout_connect: Duration,
}

impl CheckTiming {
    /// kubeha's default: out within 1.5 s, in within 2 s (DESIGN L4).
    pub const DEFAULT: CheckTiming = CheckTiming {
        inter: Duration::from_millis(250),
        fastinter: Duration::from_millis(150),
        downinter: Duration::from_millis(250),
        fall: 3,
        rise: 2,
        timeout_check: Duration::from_millis(1000),
        timeout_connect: Duration::from_millis(1000),
    };

    fn check_connect_timeout(&self) -> Duration {
        self.inter.min(self.timeout_connect)
    }

    /// Longest time from an apiserver dying with its port closed (connection
    /// refused) to HAProxy marking it DOWN: wait for the next check, then
    /// `fall - 1` more at `fastinter`.
    pub fn worst_out_refused(&self) -> Duration {
        self.inter + self.fastinter * self.fall.saturating_sub(1)
    }

    /// Same when the node vanishes or hangs (no answer at all): every check
    /// also waits out its connect/handshake timeout.
    pub fn worst_out_silent(&self) -> Duration {
        self.inter
            + self.check_connect_timeout() * self.fall
            + self.fastinter * self.fall.saturating_sub(1)
    }

    /// Longest time from `/readyz` answering 200 to HAProxy marking the
    /// server UP (check durations themselves excluded: a few ms on a LAN).
    pub fn worst_in(&self) -> Duration {
        self.downinter + self.fastinter * self.rise.saturating_sub(1)
    }
}

impl Default for CheckTiming {
    fn default() -> Self {
        CheckTiming::DEFAULT
    }
}

/// Files the agent keeps for HAProxy under `runtime_dir`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimePaths {
    pub dir: PathBuf,
    /// Master CLI (`-S`): `reload`, `show proc`.
    pub master_socket: PathBuf,
    /// Worker stats socket (in the config): `show stat`.
    pub stats_socket: PathBuf,
    /// Master's pid (`-p`).
    pub pid_file: PathBuf,
    /// HAProxy's stderr: startup and reload errors, server state changes.
    pub log_file: PathBuf,
}

impl RuntimePaths {
    pub fn new(runtime_dir: &Path) -> RuntimePaths {
        RuntimePaths {
            dir: runtime_dir.to_path_buf(),
            master_socket: runtime_dir.join("master.sock"),
            stats_socket: runtime_dir.join("haproxy.sock"),
            pid_file: runtime_dir.join("haproxy.pid"),
            log_file: runtime_dir.join("haproxy.log"),
        }
    }
}

/// Unprivileged user and group for the workers (the master stays root so
/// that it can bind on reload). The agent does not use it: under its systemd
/// unit HAProxy's workers stay root inside the unit's sandbox, because an
/// unprivileged worker needs `CAP_SETUID`/`CAP_SETGID` to get there and
/// `CAP_KILL` for the root master to stop it after a reload
/// (packaging/README.md, "HAProxy's privileges"). No `chroot` either: it
/// would need `CAP_SYS_CHROOT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub user: String,
    pub group: String,
}

impl RunAs {
    /// What Debian's `haproxy` package creates.
    pub fn debian() -> RunAs {
        RunAs {
            user: "haproxy".into(),
            group: "haproxy".into(),
        }
    }
}

/// Everything [`render`] needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderInput<'a> {
    pub haproxy: &'a HaproxyConfig,
    pub backends: &'a [Backend],
    /// The cluster CA (`<etc_dir>/pki/ca.crt`) if it exists: checks verify
    /// the apiserver certificate against it; `None` means `verify none`
    /// (before `kubeadm init` has made a CA).
    pub ca_file: Option<&'a Path>,
    pub paths: &'a RuntimePaths,
    pub timing: CheckTiming,
    pub run_as: Option<&'a RunAs>,
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// `10.0.0.3:6443` or `[fd00::3]:6443`: both forms HAProxy accepts.
fn addr(a: &SocketAddr) -> String {
    a.to_string()
}

/// Keep a path one word on one line: HAProxy's parser splits on spaces and
/// treats `#`, quotes and backslashes specially, so escape those (outside
/// quotes no `$` expansion happens) and replace control characters.
fn path_arg(p: &Path) -> String {
    let s = p.display().to_string();
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            ' ' | '#' | '\\' | '\'' | '"' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push('_'),
            c => out.push(c),
        }
    }
    out
}

/// The whole `haproxy.cfg`.
pub fn render(input: &RenderInput<'_>) -> String {
    let h = input.haproxy;
    let t = &input.timing;
    let p = input.paths;
    let mut o = String::with_capacity(2048);
    let mut line = |s: &str| {
        o.push_str(s);
        o.push('\n');
    };
    line(HEADER);
    line(&format!(
        "# Source: `[haproxy]` in kubeha.toml and the live control planes in gossip. Master CLI: {}",
        p.master_socket.display()
    ));
    line("");
    line("global");
    line(&format!(
        "    stats socket {} mode 600 level admin",
        path_arg(&p.stats_socket)
    ));
    line("    stats timeout 30s");
    if let Some(r) = input.run_as {
        line(&format!("    user {}", r.user));
        line(&format!("    group {}", r.group));
    }
    // Old workers keep serving their connections (long kube watches) after a
    // reload; bound how long and how many of them linger.
    line("    hard-stop-after 1h");
    line("    mworker-max-reloads 10");
    line("");
    line("defaults");
    line("    mode tcp");
    line(&format!("    timeout connect {}", ms(t.timeout_connect)));
    // kube API watches, exec and logs -f stay open and quiet for long.
    line("    timeout client 1h");
    line("    timeout server 1h");
    line("    timeout tunnel 1h");
    line("    timeout client-fin 30s");
    line("    timeout server-fin 30s");
    line(&format!("    timeout check {}", ms(t.timeout_check)));
    line("    retries 3");
    line("    option redispatch 1");
    line("");
    line(&format!("frontend {FRONTEND_NAME}"));
    line(&format!("    bind {}", addr(&h.frontend)));
    line(&format!("    default_backend {BACKEND_NAME}"));
    line("");
    line(&format!("backend {BACKEND_NAME}"));
    line("    balance leastconn");
    line("    option httpchk");
    line(&format!(
        "    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host {VERIFY_HOST}"
    ));
    line("    http-check expect status 200");
    let verify = match input.ca_file {
        Some(ca) => format!(
            "verify required ca-file {} verifyhost {VERIFY_HOST}",
            path_arg(ca)
        ),
        None => "verify none".to_string(),
    };
    line(&format!(
        "    default-server check check-ssl {verify} inter {} fastinter {} downinter {} fall {} rise {} on-marked-down shutdown-sessions",
        ms(t.inter),
        ms(t.fastinter),
        ms(t.downinter),
        t.fall,
        t.rise
    ));
    if input.backends.is_empty() {
        line("    # no control plane is alive: connections are refused until one is");
    }
    for b in input.backends {
        let name: String = b
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        line(&format!("    server {name} {}", addr(&b.addr)));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::keys;

    fn hcfg(frontend: &str) -> HaproxyConfig {
        HaproxyConfig {
            frontend: frontend.parse().unwrap(),
            frontend_anchor: false,
            config_path: "/etc/haproxy/haproxy.cfg".into(),
            binary: "/usr/sbin/haproxy".into(),
            backend_port: 6443,
            runtime_dir: "/run/kubeha/haproxy".into(),
        }
    }

    fn member(name: &str, ip: &str, roles: &str, live: bool) -> MemberInfo {
        MemberInfo::from_kv(
            name,
            1,
            SocketAddr::new(ip.parse().unwrap(), 7946),
            live,
            [(keys::ROLES, roles)],
        )
    }

    #[test]
    fn backend_set_is_the_live_control_planes_sorted() {
        let mut leaving = member("cp-3", "10.0.0.6", "control-plane", true);
        leaving.leaving = true;
        let view = MembershipView::from_incarnations([
            member("cp-2", "10.0.0.5", "control-plane,lb", true),
            member("cp-0", "10.0.0.3", "control-plane", true),
            member("cp-1", "10.0.0.4", "control-plane", false),
            member("w-0", "10.0.0.9", "worker", true),
            member("lb-0", "10.0.0.7", "lb", true),
            leaving,
            member("fd", "fd00::3", "control-plane", true),
        ]);
        let got = backend_set(&view, 16443);
        let want: Vec<Backend> = [
            ("cp-0", "10.0.0.3:16443"),
            ("cp-2", "10.0.0.5:16443"),
            ("fd", "[fd00::3]:16443"),
        ]
        .iter()
        .map(|(n, a)| Backend {
            name: n.to_string(),
            addr: a.parse().unwrap(),
        })
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn names_that_could_inject_lines_are_not_backends() {
        let view = MembershipView::from_incarnations([
            member("ok", "10.0.0.3", "control-plane", true),
            member(
                "evil\n    server x 1.2.3.4:1",
                "10.0.0.4",
                "control-plane",
                true,
            ),
            member("sp ace", "10.0.0.5", "control-plane", true),
        ]);
        let names: Vec<_> = backend_set(&view, 6443)
            .into_iter()
            .map(|b| b.name)
            .collect();
        assert_eq!(names, ["ok"]);
    }

    #[test]
    fn default_timing_meets_l4() {
        let t = CheckTiming::DEFAULT;
        // DESIGN L4: out of rotation within 1.5 s, back within 2 s.
        assert!(
            t.worst_out_refused() <= Duration::from_millis(1500),
            "{t:?}"
        );
        assert!(t.worst_out_silent() <= Duration::from_millis(1500), "{t:?}");
        assert!(t.worst_in() <= Duration::from_millis(2000), "{t:?}");
        assert_eq!(t.worst_out_refused(), Duration::from_millis(550));
        assert_eq!(t.worst_out_silent(), Duration::from_millis(1300));
        assert_eq!(t.worst_in(), Duration::from_millis(400));
        // The lab guide's `check fall 2 rise 1` at the default 2 s interval.
        let guide = CheckTiming {
            inter: Duration::from_secs(2),
            fastinter: Duration::from_secs(2),
            downinter: Duration::from_secs(2),
            fall: 2,
            rise: 1,
            timeout_check: Duration::from_secs(2),
            timeout_connect: Duration::from_secs(5),
        };
        assert_eq!(guide.worst_out_refused(), Duration::from_secs(4));
        assert_eq!(guide.worst_in(), Duration::from_secs(2));
    }

    fn snapshot(input: &RenderInput<'_>, file: &str, expected: &str) {
        let got = render(input);
        if got != expected {
            // Show the first differing line; the whole text follows.
            let diff = got
                .lines()
                .zip(expected.lines())
                .enumerate()
                .find(|(_, (a, b))| a != b)
                .map(|(i, (a, b))| format!("line {}: got `{a}`, want `{b}`", i + 1))
                .unwrap_or_else(|| "lengths differ".into());
            panic!("render differs from snapshots/{file}: {diff}\n--- got ---\n{got}");
        }
    }

    #[test]
    fn snapshot_guide_topology_with_ca() {
        let h = hcfg("10.108.0.10:6443");
        let backends = vec![
            Backend {
                name: "cp-0".into(),
                addr: "10.108.0.3:6443".parse().unwrap(),
            },
            Backend {
                name: "cp-1".into(),
                addr: "10.108.0.6:6443".parse().unwrap(),
            },
            Backend {
                name: "cp-2".into(),
                addr: "10.108.0.7:6443".parse().unwrap(),
            },
        ];
        let paths = RuntimePaths::new(&h.runtime_dir);
        // What the agent renders (no `user`/`group`: packaging/README.md).
        let input = RenderInput {
            haproxy: &h,
            backends: &backends,
            ca_file: Some(Path::new("/etc/kubernetes/pki/ca.crt")),
            paths: &paths,
            timing: CheckTiming::DEFAULT,
            run_as: None,
        };
        snapshot(
            &input,
            "guide-with-ca.cfg",
            include_str!("haproxy/snapshots/guide-with-ca.cfg"),
        );
        // `run_as` adds exactly the two lines, in `global`.
        let run_as = RunAs::debian();
        let with_user = render(&RenderInput {
            run_as: Some(&run_as),
            ..input.clone()
        });
        assert_eq!(
            with_user,
            render(&input).replace(
                "    stats timeout 30s\n",
                "    stats timeout 30s\n    user haproxy\n    group haproxy\n"
            )
        );
        assert!(!with_user.contains("chroot"));
    }

    #[test]
    fn snapshot_no_ca_yet() {
        let h = hcfg("198.18.0.10:6443");
        let backends = vec![Backend {
            name: "cp-0".into(),
            addr: "198.18.0.11:6443".parse().unwrap(),
        }];
        let paths = RuntimePaths::new(&h.runtime_dir);
        let input = RenderInput {
            haproxy: &h,
            backends: &backends,
            ca_file: None,
            paths: &paths,
            timing: CheckTiming::DEFAULT,
            run_as: None,
        };
        snapshot(
            &input,
            "no-ca.cfg",
            include_str!("haproxy/snapshots/no-ca.cfg"),
        );
    }

    #[test]
    fn snapshot_zero_backends_ipv6() {
        let h = hcfg("[fd00::10]:6443");
        let paths = RuntimePaths::new(&h.runtime_dir);
        let input = RenderInput {
            haproxy: &h,
            backends: &[],
            ca_file: None,
            paths: &paths,
            timing: CheckTiming::DEFAULT,
            run_as: None,
        };
        snapshot(
            &input,
            "empty-ipv6.cfg",
            include_str!("haproxy/snapshots/empty-ipv6.cfg"),
        );
    }

    #[test]
    fn render_is_deterministic_and_changes_with_backends() {
        let h = hcfg("10.0.0.10:6443");
        let paths = RuntimePaths::new(&h.runtime_dir);
        let one = vec![Backend {
            name: "a".into(),
            addr: "10.0.0.3:6443".parse().unwrap(),
        }];
        let mk = |b: &[Backend]| {
            render(&RenderInput {
                haproxy: &h,
                backends: b,
                ca_file: None,
                paths: &paths,
                timing: CheckTiming::DEFAULT,
                run_as: None,
            })
        };
        assert_eq!(mk(&one), mk(&one));
        assert_ne!(mk(&one), mk(&[]));
        assert!(mk(&one).contains("\n    server a 10.0.0.3:6443\n"));
    }

    #[test]
    fn odd_paths_are_quoted() {
        assert_eq!(path_arg(Path::new("/run/a.sock")), "/run/a.sock");
        assert_eq!(path_arg(Path::new("/run/a b#c")), "/run/a\\ b\\#c");
        assert_eq!(path_arg(Path::new("/x\ny'")), "/x_y\\'");
    }
}
