//! HAProxy in the namespace lab, on top of [`crate::lab`]'s public API:
//! `fake-apiserver` processes in node namespaces, TLS requests from the
//! client namespace, HAProxy's master CLI and stats socket on a node, the
//! agent's `/metrics`, and edits of a node's `[haproxy]` section.
//!
//! Everything here acts only on the lab's own namespaces and on processes
//! it started or that run in a lab node's HAProxy runtime directory (found
//! by pid file and `show proc`, checked to be `haproxy` before a signal).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kubeha_agent::haproxy::{ProcInfo, ServerStat, parse_show_proc, parse_show_stat};
use kubeha_core::api::Status;
use kubeha_core::config::Config;
use kubeha_core::haproxy::{BACKEND_NAME, RuntimePaths};

use crate::fake_apiserver::{Client, Response, get_once};
use crate::lab::process::{ProcRecord, Spawned, spawn_in_netns};
use crate::lab::{Lab, LabError, Node, Result, netns, wait_until};

/// Debian's HAProxy, which the agent runs by default.
pub const HAPROXY: &str = "/usr/sbin/haproxy";

/// `Some(reason)` when HAProxy is not installed.
pub fn haproxy_missing() -> Option<String> {
    (!Path::new(HAPROXY).exists())
        .then(|| format!("`{HAPROXY}` is missing: `apt-get install -y haproxy`"))
}

// ------------------------------------------------------------ fake apiserver

/// A `fake-apiserver` process in a node's namespace. Dropping it kills it
/// (by pid, after checking its start time).
pub struct FakeApi {
    proc: Spawned,
    name: String,
    listen: SocketAddr,
    log: PathBuf,
}

impl FakeApi {
    /// Start `fake-apiserver --listen <listen> --pki-dir <pki> --name <name>`
    /// through `ip netns exec <ns>` and return once it printed `listening`
    /// (it accepts connections then). Output goes to
    /// `<lab dir>/fake-apiserver-<name>-<port>.log`.
    pub fn start(
        lab: &Lab,
        ns: &str,
        name: &str,
        listen: SocketAddr,
        pki: &Path,
    ) -> Result<FakeApi> {
        let bin = lab.bin_dir().join("fake-apiserver");
        if !bin.exists() {
            return Err(LabError::MissingTool {
                tool: bin.display().to_string(),
                hint: "cargo build -p kubeha-tests --bins",
            });
        }
        let log = lab
            .dir()
            .join(format!("fake-apiserver-{name}-{}.log", listen.port()));
        // A fresh log per start: the wait below looks for its `listening` line.
        let _ = std::fs::remove_file(&log);
        let args: Vec<String> = [
            "netns",
            "exec",
            ns,
            &bin.to_string_lossy(),
            "--listen",
            &listen.to_string(),
            "--pki-dir",
            &pki.to_string_lossy(),
            "--name",
            name,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut proc = spawn_in_netns(ns, Path::new("ip"), &args, &log)?;
        let mut ready = false;
        let ok = wait_until(Duration::from_secs(10), Duration::from_millis(5), || {
            ready = std::fs::read_to_string(&log)
                .is_ok_and(|t| t.lines().any(|l| l.starts_with("listening ")));
            ready || proc.reap()
        });
        if !ok || !ready {
            proc.rec.signal(libc::SIGKILL);
            proc.wait_gone(Duration::from_secs(2));
            let out = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(LabError::Node {
                node: ns.to_string(),
                message: format!(
                    "`{}` did not start listening on {listen}: {}",
                    proc.argv,
                    out.trim()
                ),
            });
        }
        Ok(FakeApi {
            proc,
            name: name.to_string(),
            listen,
            log,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }
    pub fn pid(&self) -> i32 {
        self.proc.rec.pid
    }
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// `kill -9`: the port closes at once (the kernel answers RST).
    pub fn kill(mut self) {
        self.proc.rec.signal(libc::SIGKILL);
        self.proc.wait_gone(Duration::from_secs(5));
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        if self.proc.rec.signal(libc::SIGKILL) {
            self.proc.wait_gone(Duration::from_secs(5));
        }
    }
}

// ------------------------------------------------------------ client side

/// One HTTPS GET on a fresh connection from namespace `ns`.
pub fn get_from(
    ns: &str,
    target: SocketAddr,
    ca: &Path,
    path: &str,
    timeout: Duration,
) -> io::Result<Response> {
    let ca = ca.to_path_buf();
    let path = path.to_string();
    netns::run_in(ns, move || get_once(target, &ca, &path, timeout))
        .map_err(|e| io::Error::other(e.to_string()))?
}

/// A keep-alive TLS connection opened from namespace `ns`. The socket stays
/// in that namespace, so the returned client can be used from any thread.
pub fn connect_from(
    ns: &str,
    target: SocketAddr,
    ca: &Path,
    timeout: Duration,
) -> io::Result<Client> {
    let ca = ca.to_path_buf();
    netns::run_in(ns, move || Client::connect(target, &ca, timeout))
        .map_err(|e| io::Error::other(e.to_string()))?
}

/// One HTTPS request of a [`TlsProber`].
#[derive(Clone, Debug)]
pub struct TlsProbe {
    pub start: Instant,
    pub end: Instant,
    /// The fake apiserver that answered `/readyz` with 200, or the error.
    pub outcome: std::result::Result<String, String>,
}

impl TlsProbe {
    pub fn ok(&self) -> bool {
        self.outcome.is_ok()
    }
}

/// From a namespace, `GET /readyz` over TLS on a fresh connection every
/// `interval` (one at a time, each bounded by `timeout`): whether the
/// service behind an address answers, not just its TCP port.
pub struct TlsProber {
    probes: Arc<Mutex<Vec<TlsProbe>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TlsProber {
    pub fn start(
        ns: &str,
        target: SocketAddr,
        ca: &Path,
        interval: Duration,
        timeout: Duration,
    ) -> Result<TlsProber> {
        let probes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s, ca) = (probes.clone(), stop.clone(), ca.to_path_buf());
        let thread = netns::spawn_in(ns, "tls-prober", move || {
            while !s.load(Ordering::Relaxed) {
                let start = Instant::now();
                let outcome = match get_once(target, &ca, "/readyz", timeout) {
                    Ok(r) if r.status == 200 => Ok(r.server.unwrap_or_default()),
                    Ok(r) => Err(format!("status {}", r.status)),
                    Err(e) => Err(e.to_string()),
                };
                let end = Instant::now();
                p.lock().unwrap().push(TlsProbe {
                    start,
                    end,
                    outcome,
                });
                if let Some(rest) = interval.checked_sub(end - start) {
                    std::thread::sleep(rest);
                }
            }
        })?;
        Ok(TlsProber {
            probes,
            stop,
            thread: Some(thread),
        })
    }

    /// Finished probes that started at or after `t`.
    pub fn since(&self, t: Instant) -> Vec<TlsProbe> {
        self.probes
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.start >= t)
            .cloned()
            .collect()
    }

    /// Wait for a successful probe started at or after `t`.
    pub fn wait_ok(&self, t: Instant, timeout: Duration) -> Option<TlsProbe> {
        let mut found = None;
        wait_until(timeout, Duration::from_millis(5), || {
            found = self.since(t).into_iter().find(TlsProbe::ok);
            found.is_some()
        });
        found
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TlsProber {
    fn drop(&mut self) {
        self.halt();
    }
}

// ------------------------------------------------------------ HAProxy on a node

/// The node's HAProxy runtime paths (the lab's `[haproxy] runtime_dir`).
pub fn runtime(node: &Node<'_>) -> RuntimePaths {
    RuntimePaths::new(&node.paths().haproxy_runtime())
}

/// One command on a HAProxy CLI socket (a file: reachable from the host
/// namespace), the whole answer.
pub fn cli(socket: &Path, cmd: &str) -> io::Result<String> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(format!("{cmd}\n").as_bytes())?;
    // The CLI answers and closes once it sees the end of input.
    s.shutdown(Shutdown::Write)?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// `show proc` on the node's master socket.
pub fn show_proc(node: &Node<'_>) -> Option<ProcInfo> {
    parse_show_proc(&cli(&runtime(node).master_socket, "show proc").ok()?)
}

/// The control-plane servers as the node's HAProxy reports them
/// (`show stat` on its stats socket); empty when it does not answer.
pub fn show_stat(node: &Node<'_>) -> Vec<ServerStat> {
    cli(&runtime(node).stats_socket, "show stat")
        .map(|t| parse_show_stat(&t, BACKEND_NAME))
        .unwrap_or_default()
}

/// Is `server` in rotation in the node's HAProxy (`None`: not listed)?
pub fn haproxy_up(node: &Node<'_>, server: &str) -> Option<bool> {
    show_stat(node)
        .into_iter()
        .find(|s| s.name == server)
        .map(|s| s.up())
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The node's HAProxy processes: the master from its pid file plus the
/// workers (current and old) `show proc` lists, each checked to be a live
/// `haproxy` process in the node's namespace.
pub fn haproxy_pids(node: &Node<'_>) -> Vec<ProcRecord> {
    let rt = runtime(node);
    let mut pids: Vec<i32> = Vec::new();
    if let Some(p) = std::fs::read_to_string(&rt.pid_file)
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
    {
        pids.push(p);
    }
    if let Some(p) = show_proc(node) {
        pids.push(p.master_pid);
        pids.extend(p.workers);
        pids.extend(p.old_workers);
    }
    pids.sort();
    pids.dedup();
    let in_ns = netns::pids(node.ns());
    pids.into_iter()
        .filter(|p| *p > 1 && in_ns.contains(p) && comm(*p).starts_with("haproxy"))
        .filter_map(ProcRecord::of)
        .collect()
}

/// `kill -9` the node's HAProxy master and all its workers at once (a
/// crash) and wait until they are gone. Returns the pids killed.
pub fn kill_haproxy(node: &Node<'_>) -> Result<Vec<i32>> {
    let procs = haproxy_pids(node);
    if procs.is_empty() {
        return Err(LabError::Node {
            node: node.name().to_string(),
            message: "no HAProxy process found (pid file, `show proc`)".into(),
        });
    }
    for p in &procs {
        p.signal(libc::SIGKILL);
    }
    let gone = wait_until(Duration::from_secs(5), Duration::from_millis(5), || {
        procs.iter().all(|p| !p.alive())
    });
    if !gone {
        return Err(LabError::Node {
            node: node.name().to_string(),
            message: format!("HAProxy pids {procs:?} survived SIGKILL"),
        });
    }
    Ok(procs.iter().map(|p| p.pid).collect())
}

// ------------------------------------------------------------ agent

/// The agent's Prometheus text from `127.0.0.1:9946` inside the node's
/// namespace.
pub fn metrics(node: &Node<'_>) -> Result<String> {
    let ns = node.ns().to_string();
    let r = netns::run_in(&ns, || -> io::Result<String> {
        let addr: SocketAddr = "127.0.0.1:9946".parse().expect("static address");
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nhost: localhost\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })?;
    r.map_err(|e| LabError::node(node.name(), format!("GET /metrics: {e}")))
}

/// `kubeha_haproxy_reloads_total{outcome="<outcome>"}` (0 when absent).
pub fn reloads(node: &Node<'_>, outcome: &str) -> Result<u64> {
    let text = metrics(node)?;
    Ok(metric_value(
        &text,
        "kubeha_haproxy_reloads_total",
        &format!("outcome=\"{outcome}\""),
    ))
}

/// The value of the first sample of `name` whose labels contain `label`.
pub fn metric_value(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let (n, labels) = key.split_once('{').unwrap_or((key, ""));
            (n == name && labels.contains(label)).then(|| value.trim().parse::<f64>().ok())?
        })
        .next()
        .map(|v| v as u64)
        .unwrap_or(0)
}

/// Poll the node's status until `pred` holds; the status, or the last
/// status (or error) seen.
pub fn wait_status(
    node: &Node<'_>,
    timeout: Duration,
    mut pred: impl FnMut(&Status) -> bool,
) -> std::result::Result<Status, String> {
    let mut last = String::from("no answer yet");
    let mut hit = None;
    wait_until(timeout, Duration::from_millis(10), || match node.status() {
        Ok(s) if pred(&s) => {
            hit = Some(s);
            true
        }
        Ok(s) => {
            last = format!("{:?}", s.haproxy);
            false
        }
        Err(e) => {
            last = e.to_string();
            false
        }
    });
    hit.ok_or_else(|| format!("`{}` after {timeout:?}: {last}", node.name()))
}

/// The status's backends as `(name, up)`, sorted by name.
pub fn backends(st: &Status) -> Vec<(String, bool)> {
    let mut v: Vec<(String, bool)> = st
        .haproxy
        .as_ref()
        .map(|h| h.backends.iter().map(|b| (b.name.clone(), b.up)).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Set `key = <value>` (`value` already TOML) in the node's `[haproxy]`
/// section, replacing the key if present; the result must parse. The agent
/// reads it on its next start.
pub fn set_haproxy_key(node: &Node<'_>, key: &str, value: &str) -> Result<()> {
    let path = node.paths().config();
    let text = std::fs::read_to_string(&path).map_err(|e| LabError::io(&path, e))?;
    let next = edit_section(&text, "haproxy", key, value).ok_or_else(|| {
        LabError::node(
            node.name(),
            format!("{} has no `[haproxy]` section", path.display()),
        )
    })?;
    Config::parse(&path, &next, node.name())
        .map_err(|e| LabError::Invalid(format!("edited config does not parse: {e}")))?;
    std::fs::write(&path, next).map_err(|e| LabError::io(&path, e))
}

/// `text` with `key = value` set in `[section]`; `None` without the section.
fn edit_section(text: &str, section: &str, key: &str, value: &str) -> Option<String> {
    let header = format!("[{section}]");
    let mut out = Vec::new();
    let mut inside = false;
    let mut seen = false;
    let mut done = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            if inside && !done {
                out.push(format!("{key} = {value}"));
                done = true;
            }
            inside = t == header;
            seen |= inside;
        } else if inside && !done && t.split_once('=').is_some_and(|(k, _)| k.trim() == key) {
            out.push(format!("{key} = {value}"));
            done = true;
            continue;
        }
        out.push(line.to_string());
    }
    if inside && !done {
        out.push(format!("{key} = {value}"));
    }
    seen.then(|| out.join("\n") + "\n")
}

/// Write an executable `haproxy` wrapper to `path`: while `flag` exists,
/// `-c` (the agent's config check) fails with an `[ALERT]` naming the flag;
/// everything else execs Debian's HAProxy with the same arguments.
pub fn write_check_wrapper(path: &Path, flag: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let text = format!(
        "#!/bin/sh\n\
         # kubeha lab: refuse `haproxy -c` while the flag file exists.\n\
         if [ -e '{flag}' ]; then\n\
         \x20 for a in \"$@\"; do\n\
         \x20   if [ \"$a\" = -c ]; then\n\
         \x20     echo \"[ALERT] lab wrapper: check refused on purpose ({flag} exists)\" >&2\n\
         \x20     exit 1\n\
         \x20   fi\n\
         \x20 done\n\
         fi\n\
         exec {HAPROXY} \"$@\"\n",
        flag = flag.display()
    );
    std::fs::write(path, text).map_err(|e| LabError::io(path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| LabError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_section_replaces_or_appends() {
        let t = "a = 1\n\n[vip]\nx = 2\n\n[haproxy]\nfrontend = \"1.2.3.4:6443\"\nconfig_path = \"/c\"\n";
        let e = edit_section(t, "haproxy", "frontend", "\"1.2.3.4:7443\"").unwrap();
        assert!(
            e.contains("frontend = \"1.2.3.4:7443\"") && !e.contains(":6443"),
            "{e}"
        );
        let e = edit_section(t, "haproxy", "binary", "\"/w\"").unwrap();
        assert!(
            e.ends_with("config_path = \"/c\"\nbinary = \"/w\"\n"),
            "{e}"
        );
        // Appended at the end of its own section, not of the file.
        let t2 = "[haproxy]\nfrontend = \"f\"\n\n[kubernetes]\nx = 1\n";
        let e = edit_section(t2, "haproxy", "binary", "\"/w\"").unwrap();
        assert!(
            e.contains("frontend = \"f\"\n\nbinary = \"/w\"\n[kubernetes]"),
            "{e}"
        );
        assert!(edit_section("a = 1\n", "haproxy", "k", "1").is_none());
    }

    #[test]
    fn metric_values_by_label() {
        let t = "# HELP kubeha_haproxy_reloads_total x\n\
                 kubeha_haproxy_reloads_total{outcome=\"ok\"} 4\n\
                 kubeha_haproxy_reloads_total{outcome=\"check_failed\"} 1\n";
        assert_eq!(
            metric_value(t, "kubeha_haproxy_reloads_total", "outcome=\"ok\""),
            4
        );
        assert_eq!(
            metric_value(
                t,
                "kubeha_haproxy_reloads_total",
                "outcome=\"check_failed\""
            ),
            1
        );
        assert_eq!(
            metric_value(t, "kubeha_haproxy_reloads_total", "outcome=\"x\""),
            0
        );
    }
}
