//! The local HAProxy: keep it running in master-worker mode with the
//! configuration [`kubeha_core::haproxy::render`] makes from the live
//! control planes, swap configurations safely and report what HAProxy
//! itself says about its servers.
//!
//! - One master (`haproxy -W -S <runtime_dir>/master.sock -f <config_path>
//!   -p <runtime_dir>/haproxy.pid`), started in its own process group with
//!   stderr in `<runtime_dir>/haproxy.log`. It outlives the agent: a new
//!   agent adopts a master whose pid file and master socket answer (and
//!   reloads it once, hitlessly, on its first `apply`), so an agent restart
//!   does not touch traffic. The agent never stops HAProxy
//!   ([`HaproxyManager::shutdown`] exists for tests).
//! - [`HaproxyManager::apply`]: render; identical to what runs → nothing.
//!   Else write a temp file beside `config_path`, `haproxy -c` it; refused →
//!   the running config and `config_path` stay as they are and the error
//!   (argv, exit status, output) is recorded and counted. Accepted → fsync,
//!   rename over `config_path`, `reload` on the master socket, and wait for
//!   `show proc` to count the reload and show a new worker generation. A
//!   reload HAProxy refuses (e.g. a bind error `-c` cannot see) puts the
//!   previous file back; the old worker never stopped serving.
//! - Blocking calls with bounded timeouts: run them on a blocking thread
//!   (`spawn_blocking` or a dedicated thread), not on the async runtime.
//!
//! Design notes, timings and coexistence with Debian's `haproxy.service`:
//! docs/haproxy.md.

mod cli;
mod process;
mod sysctl;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use kubeha_core::api::{BackendStatus, HaproxyStatus};
use kubeha_core::config::HaproxyConfig;
use kubeha_core::haproxy::{
    BACKEND_NAME, Backend, CheckTiming, RenderInput, RunAs, RuntimePaths, render,
};
use nix::sys::signal::Signal;

pub use cli::{ProcInfo, ServerStat, parse_show_proc, parse_show_stat};
pub use process::{Listener, listeners_on_port};
pub use sysctl::{NonlocalBindReport, SysctlOutcome, ensure_nonlocal_bind};

/// Where Debian's `haproxy.service` writes its pid.
pub const DEBIAN_PID_FILE: &str = "/run/haproxy.pid";

/// HAProxy's stderr log is cut back to empty past this size.
const LOG_LIMIT: u64 = 1 << 20;
/// Between two start attempts of the same configuration.
const START_RETRY: Duration = Duration::from_secs(5);
/// A refused render is checked again after this long.
const CHECK_RETRY: Duration = Duration::from_secs(30);
const SOCKET_TIMEOUT: Duration = Duration::from_secs(2);
const POLL_STEP: Duration = Duration::from_millis(10);

/// A failure, with what a person needs to act on it. `Clone` so that the
/// last one can be kept for status and returned again.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HaproxyError {
    /// A subprocess failed (`haproxy -c`).
    #[error("`{}` failed with {status}: {output}", argv.join(" "))]
    Command {
        argv: Vec<String>,
        status: String,
        output: String,
    },
    #[error("cannot run `{}`: {message}", argv.join(" "))]
    Spawn { argv: Vec<String>, message: String },
    /// The master exited while starting; `log` holds its alerts.
    #[error("`{}` exited with {status} while starting: {log}", argv.join(" "))]
    StartExited {
        argv: Vec<String>,
        status: String,
        log: String,
    },
    /// The frontend's address:port is taken by another socket.
    #[error(
        "haproxy cannot bind its frontend `{frontend}`: address already in use{}; on a node that is both control-plane and lb, bind kube-apiserver to the node address (kubeadm `localAPIEndpoint.advertiseAddress` and apiserver `bind-address`) instead of `0.0.0.0`, or move `haproxy.frontend` to another port (`{log}`)",
        held_by(.listeners)
    )]
    FrontendInUse {
        frontend: SocketAddr,
        listeners: Vec<String>,
        log: String,
    },
    /// The frontend's address is not on this node and non-local binds are off.
    #[error(
        "haproxy cannot bind its frontend `{frontend}`: the address is not on this node; set `net.ipv4.ip_nonlocal_bind=1` (`net.ipv6.ip_nonlocal_bind` for IPv6) so standby lb nodes can listen on the VIP{} (`{log}`)",
        sysctl_note(.sysctl)
    )]
    FrontendNotLocal {
        frontend: SocketAddr,
        sysctl: Option<String>,
        log: String,
    },
    #[error("haproxy master rejected `reload` on `{socket}`: {log}")]
    ReloadRejected { socket: PathBuf, log: String },
    #[error("timed out after {waited_ms} ms waiting for {what}")]
    Timeout { what: String, waited_ms: u128 },
    #[error("`{path}`: {message}")]
    Io { path: PathBuf, message: String },
    #[error("haproxy master socket `{socket}`: {message}")]
    Socket { socket: PathBuf, message: String },
}

fn held_by(listeners: &[String]) -> String {
    if listeners.is_empty() {
        String::new()
    } else {
        format!(" (held by {})", listeners.join(", "))
    }
}

fn sysctl_note(s: &Option<String>) -> String {
    s.as_ref()
        .map(|m| format!("; the agent could not: {m}"))
        .unwrap_or_default()
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> HaproxyError + '_ {
    move |e| HaproxyError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// What [`HaproxyManager::apply`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The rendered text is what runs already.
    Unchanged,
    /// No HAProxy was running: started one with this configuration.
    Started,
    /// Reloaded: a new worker generation runs the new configuration.
    Reloaded,
    /// `haproxy -c` refused it; nothing changed.
    CheckFailed(HaproxyError),
    /// HAProxy could not be started (nothing runs).
    StartFailed(HaproxyError),
    /// The master could not load it; the previous configuration still runs
    /// and is back in `config_path`.
    ReloadFailed(HaproxyError),
    /// Writing the files failed; nothing changed.
    Failed(HaproxyError),
}

impl ApplyOutcome {
    pub fn is_ok(&self) -> bool {
        matches!(
            self,
            ApplyOutcome::Unchanged | ApplyOutcome::Started | ApplyOutcome::Reloaded
        )
    }

    pub fn error(&self) -> Option<&HaproxyError> {
        match self {
            ApplyOutcome::CheckFailed(e)
            | ApplyOutcome::StartFailed(e)
            | ApplyOutcome::ReloadFailed(e)
            | ApplyOutcome::Failed(e) => Some(e),
            _ => None,
        }
    }
}

/// Counters for metrics (`kubeha_haproxy_reloads_total{outcome=...}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HaproxyStats {
    pub reloads_ok: u64,
    /// `haproxy -c` refused a render.
    pub check_failed: u64,
    /// The master refused a reload (the previous config kept running).
    pub reload_failed: u64,
    pub starts_ok: u64,
    pub start_failed: u64,
}

#[derive(Clone, Debug)]
pub struct HaproxyOptions {
    pub haproxy: HaproxyConfig,
    /// The cluster CA (`<etc_dir>/pki/ca.crt`); checks verify against it
    /// from the first `apply` after it exists, `verify none` before.
    pub ca_file: Option<PathBuf>,
    pub timing: CheckTiming,
    /// Workers drop to this user and group; `None` (the default): they stay
    /// root. `Some` needs `CAP_SETUID`, `CAP_SETGID` and `CAP_KILL`, which
    /// the shipped unit does not grant (packaging/README.md).
    pub run_as: Option<RunAs>,
    /// Set `ip_nonlocal_bind` on start (false in tests on the host).
    pub set_nonlocal_bind: bool,
    pub sysctl_root: PathBuf,
    /// Debian's pid file, to warn when its `haproxy.service` runs too.
    pub debian_pid_file: PathBuf,
    /// Start the master in its own process group, so that a signal to the
    /// agent's group (Ctrl-C in a terminal) does not reach it.
    pub detach: bool,
    pub start_timeout: Duration,
    pub reload_timeout: Duration,
}

impl HaproxyOptions {
    /// Production defaults. `etc_dir` is `[kubernetes].etc_dir` if any.
    /// Workers stay root (no `user`/`group`/`chroot`), inside the agent's
    /// unit sandbox: what that unit allows (packaging/README.md). Not
    /// detected from the machine, so tests and installed nodes render the
    /// same file.
    pub fn new(haproxy: HaproxyConfig, etc_dir: Option<&Path>) -> HaproxyOptions {
        HaproxyOptions {
            haproxy,
            ca_file: etc_dir.map(|d| d.join("pki").join("ca.crt")),
            timing: CheckTiming::DEFAULT,
            run_as: None,
            set_nonlocal_bind: true,
            sysctl_root: PathBuf::from("/proc/sys"),
            debian_pid_file: PathBuf::from(DEBIAN_PID_FILE),
            detach: true,
            start_timeout: Duration::from_secs(10),
            reload_timeout: Duration::from_secs(10),
        }
    }
}

pub struct HaproxyManager {
    opts: HaproxyOptions,
    paths: RuntimePaths,
    /// Set when this agent started the master (to reap it).
    child: Option<Child>,
    master_pid: Option<i32>,
    /// The configuration the running master loaded (== `config_path`).
    /// `None` after adopting a master: the file may be newer than what it
    /// loaded (an agent that died between rename and reload), so the first
    /// `apply` reloads once, hitlessly.
    running_config: Option<String>,
    /// The last render `haproxy -c` refused, and why.
    /// The last render `haproxy -c` refused, why, and when (checked again
    /// after `CHECK_RETRY`: the cause may lie outside the text, e.g. a CA file
    /// being written).
    rejected: Option<(String, HaproxyError, Instant)>,
    /// The last render that failed to start, why, and when.
    start_failed: Option<(String, HaproxyError, Instant)>,
    config_ok: bool,
    last_error: Option<String>,
    stats: HaproxyStats,
    status: HaproxyStatus,
    nonlocal: NonlocalBindReport,
    warnings: Vec<String>,
}

impl HaproxyManager {
    /// Prepare the runtime directory, set `ip_nonlocal_bind`, and adopt a
    /// running master from an earlier agent if its pid file and master
    /// socket answer. Starts nothing: the first [`apply`](Self::apply) does.
    pub fn start(opts: HaproxyOptions) -> Result<HaproxyManager, HaproxyError> {
        let paths = RuntimePaths::new(&opts.haproxy.runtime_dir);
        // `-S` takes comma-separated bind options after the path.
        if paths.master_socket.to_string_lossy().contains(',') {
            return Err(HaproxyError::Io {
                path: paths.dir.clone(),
                message: "`haproxy.runtime_dir` must not contain `,` (haproxy's `-S` syntax)"
                    .into(),
            });
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&paths.dir)
            .map_err(io_err(&paths.dir))?;
        let nonlocal = if opts.set_nonlocal_bind {
            let r = ensure_nonlocal_bind(&opts.sysctl_root);
            tracing::info!(ipv4 = ?r.ipv4, ipv6 = ?r.ipv6, "haproxy ip_nonlocal_bind");
            r
        } else {
            NonlocalBindReport::skipped()
        };
        let mut m = HaproxyManager {
            opts,
            paths,
            child: None,
            master_pid: None,
            running_config: None,
            rejected: None,
            start_failed: None,
            config_ok: false,
            last_error: None,
            stats: HaproxyStats::default(),
            status: HaproxyStatus {
                running: false,
                config_ok: false,
                last_error: None,
                backends: Vec::new(),
            },
            nonlocal,
            warnings: Vec::new(),
        };
        let family = if m.opts.haproxy.frontend.is_ipv6() {
            &m.nonlocal.ipv6
        } else {
            &m.nonlocal.ipv4
        };
        if let SysctlOutcome::Failed(msg) = family {
            let w = format!(
                "cannot set ip_nonlocal_bind ({msg}): haproxy can bind the VIP frontend only while this node holds the VIP"
            );
            tracing::warn!(warning = %w, "haproxy");
            m.warnings.push(w);
        }
        m.adopt();
        m.check_debian_service();
        Ok(m)
    }

    pub fn paths(&self) -> &RuntimePaths {
        &self.paths
    }

    pub fn options(&self) -> &HaproxyOptions {
        &self.opts
    }

    pub fn stats(&self) -> HaproxyStats {
        self.stats
    }

    /// The sysctl outcome from [`start`](Self::start).
    pub fn nonlocal_bind(&self) -> &NonlocalBindReport {
        &self.nonlocal
    }

    /// Problems outside the config that an operator should see (Debian's
    /// haproxy.service running, `ip_nonlocal_bind` not settable).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The master's pid, if one is known to run.
    pub fn master_pid(&self) -> Option<i32> {
        self.master_pid.filter(|p| process::alive(*p))
    }

    /// What [`apply`](Self::apply) would write for `backends` now.
    pub fn render(&self, backends: &[Backend]) -> String {
        let ca = self.opts.ca_file.as_deref().filter(|p| p.is_file());
        render(&RenderInput {
            haproxy: &self.opts.haproxy,
            backends,
            ca_file: ca,
            paths: &self.paths,
            timing: self.opts.timing,
            run_as: self.opts.run_as.as_ref(),
        })
    }

    /// Make HAProxy run with `backends`. Idempotent and cheap when nothing
    /// changed; call it on every membership change and periodically (it also
    /// restarts a master that died, and picks up the CA once it exists).
    pub fn apply(&mut self, backends: &[Backend]) -> ApplyOutcome {
        let text = self.render(backends);
        self.apply_raw(&text)
    }

    /// Same with a given configuration text: for tests (a render that
    /// `haproxy -c` refuses) and benchmarks (the lab guide's config).
    pub fn apply_raw(&mut self, text: &str) -> ApplyOutcome {
        let running = self.master_serving();
        if running && self.running_config.as_deref() == Some(text) {
            self.set_ok();
            return ApplyOutcome::Unchanged;
        }
        if let Some((t, e, at)) = &self.rejected
            && t == text
            && at.elapsed() < CHECK_RETRY
        {
            // Same refused text again: do not rerun `-c` nor count it twice.
            return ApplyOutcome::CheckFailed(e.clone());
        }
        if !running
            && let Some((t, e, at)) = &self.start_failed
            && t == text
            && at.elapsed() < START_RETRY
        {
            return ApplyOutcome::StartFailed(e.clone());
        }

        let config_path = self.opts.haproxy.config_path.clone();
        let tmp = tmp_path(&config_path);
        if let Err(e) = write_synced(&tmp, text.as_bytes()) {
            return self.failed(e);
        }
        if let Err(e) = self.check(&tmp) {
            let _ = fs::remove_file(&tmp);
            self.stats.check_failed += 1;
            tracing::warn!(error = %e, config = %config_path.display(), "haproxy config refused by `haproxy -c`, keeping the running config");
            self.rejected = Some((text.to_string(), e.clone(), Instant::now()));
            self.set_error(&e);
            return ApplyOutcome::CheckFailed(e);
        }
        self.rejected = None;
        // What to put back if the master refuses the new file.
        let previous = self
            .running_config
            .clone()
            .or_else(|| fs::read_to_string(&config_path).ok());
        if let Err(e) = rename_synced(&tmp, &config_path) {
            let _ = fs::remove_file(&tmp);
            return self.failed(e);
        }

        if running {
            match self.reload() {
                Ok(()) => {
                    self.stats.reloads_ok += 1;
                    self.running_config = Some(text.to_string());
                    self.set_ok();
                    tracing::info!(config = %config_path.display(), "haproxy reloaded");
                    ApplyOutcome::Reloaded
                }
                Err(e) => {
                    self.stats.reload_failed += 1;
                    // Put back what the old worker runs, so the file and the
                    // running config agree.
                    if let Some(prev) = previous {
                        let tmp = tmp_path(&config_path);
                        if let Err(e2) = write_synced(&tmp, prev.as_bytes())
                            .and_then(|_| rename_synced(&tmp, &config_path))
                        {
                            tracing::error!(error = %e2, "haproxy cannot restore the previous config");
                        }
                    }
                    tracing::warn!(error = %e, "haproxy reload failed, previous config still runs");
                    self.set_error(&e);
                    ApplyOutcome::ReloadFailed(e)
                }
            }
        } else {
            match self.spawn() {
                Ok(pid) => {
                    self.stats.starts_ok += 1;
                    self.running_config = Some(text.to_string());
                    self.start_failed = None;
                    self.set_ok();
                    tracing::info!(pid, config = %config_path.display(), "haproxy started");
                    ApplyOutcome::Started
                }
                Err(e) => {
                    self.stats.start_failed += 1;
                    tracing::error!(error = %e, "haproxy failed to start");
                    self.start_failed = Some((text.to_string(), e.clone(), Instant::now()));
                    self.set_error(&e);
                    ApplyOutcome::StartFailed(e)
                }
            }
        }
    }

    /// Ask HAProxy how it is, and remember it for [`healthy`](Self::healthy).
    pub fn poll(&mut self) -> HaproxyStatus {
        self.reap();
        // Alive is not enough: the master must answer and have a worker.
        let running =
            self.master_running() && self.show_proc().is_ok_and(|p| !p.workers.is_empty());
        let backends = if running {
            match cli::command(&self.paths.stats_socket, "show stat", SOCKET_TIMEOUT) {
                Ok(text) => parse_show_stat(&text, BACKEND_NAME)
                    .into_iter()
                    .map(|s| BackendStatus {
                        up: s.up(),
                        name: s.name,
                        addr: s.addr,
                    })
                    .collect(),
                Err(e) => {
                    tracing::debug!(error = %e, socket = %self.paths.stats_socket.display(), "haproxy stats socket");
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        let before: BTreeMap<&str, bool> = self
            .status
            .backends
            .iter()
            .map(|b| (b.name.as_str(), b.up))
            .collect();
        for b in &backends {
            if before.get(b.name.as_str()) != Some(&b.up) {
                tracing::info!(server = %b.name, addr = %b.addr, up = b.up, "haproxy backend state");
            }
        }
        if self.status.running != running {
            tracing::info!(running, "haproxy running state");
        }
        self.check_debian_service();
        self.status = HaproxyStatus {
            running,
            config_ok: self.config_ok && running,
            last_error: self.last_error.clone(),
            backends,
        };
        self.status.clone()
    }

    /// The last [`poll`](Self::poll): running and at least one server UP.
    /// An lb node that is not healthy must not be a VIP candidate.
    pub fn healthy(&self) -> bool {
        self.status.running && self.status.backends.iter().any(|b| b.up)
    }

    /// The last [`poll`](Self::poll)'s status.
    pub fn status(&self) -> &HaproxyStatus {
        &self.status
    }

    /// `show proc` from the master.
    pub fn show_proc(&self) -> Result<ProcInfo, HaproxyError> {
        let sock = &self.paths.master_socket;
        let text =
            cli::command(sock, "show proc", SOCKET_TIMEOUT).map_err(|e| HaproxyError::Socket {
                socket: sock.clone(),
                message: e.to_string(),
            })?;
        parse_show_proc(&text).ok_or_else(|| HaproxyError::Socket {
            socket: sock.clone(),
            message: format!("unexpected `show proc` answer: {}", text.trim()),
        })
    }

    /// The servers of the control-plane backend as `show stat` reports
    /// them, with HAProxy's own status strings (`UP`, `UP 1/3`, `DOWN 1/2`...).
    pub fn show_stat(&self) -> Result<Vec<ServerStat>, HaproxyError> {
        let sock = &self.paths.stats_socket;
        let text =
            cli::command(sock, "show stat", SOCKET_TIMEOUT).map_err(|e| HaproxyError::Socket {
                socket: sock.clone(),
                message: e.to_string(),
            })?;
        Ok(parse_show_stat(&text, BACKEND_NAME))
    }

    /// Stop HAProxy (master, workers, old workers) and wait until they are
    /// gone. For tests: the agent itself leaves HAProxy running.
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    // ------------------------------------------------------------ inside

    fn set_ok(&mut self) {
        self.config_ok = true;
        self.last_error = None;
    }

    fn set_error(&mut self, e: &HaproxyError) {
        self.config_ok = false;
        self.last_error = Some(e.to_string());
    }

    fn failed(&mut self, e: HaproxyError) -> ApplyOutcome {
        tracing::error!(error = %e, "haproxy config not written");
        self.set_error(&e);
        ApplyOutcome::Failed(e)
    }

    fn master_running(&mut self) -> bool {
        self.reap();
        match self.master_pid {
            Some(pid) if process::alive(pid) => true,
            Some(_) => {
                self.master_pid = None;
                false
            }
            None => false,
        }
    }

    /// The master is alive and answers `show proc` with a worker. A master
    /// that stays alive without answering for a second is stopped: starting
    /// a second one next to it would split the frontend (`SO_REUSEPORT`).
    fn master_serving(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            if !self.master_running() {
                return false;
            }
            if self.show_proc().is_ok_and(|p| !p.workers.is_empty()) {
                return true;
            }
            if Instant::now() >= deadline {
                let pid = self.master_pid.take();
                tracing::warn!(?pid, socket = %self.paths.master_socket.display(), "haproxy master alive but not answering, stopping it");
                if let Some(pid) = pid {
                    // Its workers too: they may still hold the frontend.
                    let mut pids = process::children(pid);
                    pids.push(pid);
                    terminate(&pids, Duration::from_secs(5));
                }
                self.reap();
                return false;
            }
            thread::sleep(POLL_STEP);
        }
    }

    /// Reap our child if it exited, so that its pid does not linger.
    fn reap(&mut self) {
        if let Some(c) = &mut self.child
            && let Ok(Some(status)) = c.try_wait()
        {
            tracing::warn!(pid = c.id(), %status, "haproxy master exited");
            if self.master_pid == Some(c.id() as i32) {
                self.master_pid = None;
            }
            self.child = None;
        }
    }

    fn adopt(&mut self) {
        let Some(pid) = process::read_pid_file(&self.paths.pid_file) else {
            return;
        };
        if !process::is_haproxy(pid) {
            return;
        }
        match self.show_proc() {
            Ok(p) if p.master_pid == pid => {
                self.master_pid = Some(pid);
                self.running_config = None;
                self.config_ok = true;
                tracing::info!(pid, "haproxy adopted the running master");
            }
            other => {
                // An HAProxy from our pid file that does not answer on our
                // master socket: a second master would share the frontend
                // port with it (SO_REUSEPORT) and split traffic, so stop it.
                tracing::warn!(pid, answer = ?other, "haproxy master from the pid file does not answer its master socket, stopping it");
                let mut pids = process::children(pid);
                pids.push(pid);
                terminate(&pids, Duration::from_secs(5));
            }
        }
    }

    fn check_debian_service(&mut self) {
        let Some(pid) = process::read_pid_file(&self.opts.debian_pid_file) else {
            return;
        };
        let ours = self.master_pid == Some(pid);
        let msg = format!(
            "Debian's haproxy.service runs (pid {pid} in `{}`): stop and disable it (`systemctl disable --now haproxy`), kubeha-agent runs its own HAProxy",
            self.opts.debian_pid_file.display()
        );
        let live = !ours && process::is_haproxy(pid);
        let known = self.warnings.contains(&msg);
        if live && !known {
            tracing::warn!(
                pid,
                "haproxy: Debian's haproxy.service is running next to kubeha's"
            );
            self.warnings.push(msg);
        } else if !live && known {
            self.warnings.retain(|w| *w != msg);
        }
    }

    fn check(&self, file: &Path) -> Result<(), HaproxyError> {
        let bin = &self.opts.haproxy.binary;
        let argv = vec![
            bin.display().to_string(),
            "-c".into(),
            "-f".into(),
            file.display().to_string(),
        ];
        let out = Command::new(bin)
            .args(&argv[1..])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| HaproxyError::Spawn {
                argv: argv.clone(),
                message: e.to_string(),
            })?;
        if out.status.success() {
            return Ok(());
        }
        let mut output = String::from_utf8_lossy(&out.stderr).into_owned();
        output.push_str(&String::from_utf8_lossy(&out.stdout));
        Err(HaproxyError::Command {
            argv,
            status: out.status.to_string(),
            output: one_line(&output),
        })
    }

    fn spawn_argv(&self) -> Vec<String> {
        vec![
            self.opts.haproxy.binary.display().to_string(),
            "-W".into(),
            "-S".into(),
            format!("{},mode,600", self.paths.master_socket.display()),
            "-f".into(),
            self.opts.haproxy.config_path.display().to_string(),
            "-p".into(),
            self.paths.pid_file.display().to_string(),
        ]
    }

    fn spawn(&mut self) -> Result<i32, HaproxyError> {
        let argv = self.spawn_argv();
        let (log, offset) = self.open_log()?;
        let log2 = log.try_clone().map_err(io_err(&self.paths.log_file))?;
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        if self.opts.detach {
            cmd.process_group(0);
        }
        let mut child = cmd.spawn().map_err(|e| HaproxyError::Spawn {
            argv: argv.clone(),
            message: e.to_string(),
        })?;
        let pid = child.id() as i32;
        let deadline = Instant::now() + self.opts.start_timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = self.log_since(offset);
                return Err(self.start_error(&argv, status.to_string(), log));
            }
            if let Ok(p) = self.show_proc()
                && p.master_pid == pid
                && !p.workers.is_empty()
            {
                self.child = Some(child);
                self.master_pid = Some(pid);
                return Ok(pid);
            }
            if Instant::now() >= deadline {
                // Do not leave a half-started master behind.
                let _ = child.kill();
                let _ = child.wait();
                return Err(HaproxyError::Timeout {
                    what: format!(
                        "`{}` to answer `show proc` on `{}` ({})",
                        argv.join(" "),
                        self.paths.master_socket.display(),
                        self.log_since(offset)
                    ),
                    waited_ms: self.opts.start_timeout.as_millis(),
                });
            }
            thread::sleep(POLL_STEP);
        }
    }

    /// Turn a failed start into the most useful error: bind problems get
    /// their own, actionable message.
    fn start_error(&self, argv: &[String], status: String, log: String) -> HaproxyError {
        let frontend = self.opts.haproxy.frontend;
        if log.contains("Address already in use") {
            let listeners = process::listeners_on_port(frontend.port())
                .into_iter()
                .filter(|l| l.addr.ip().is_unspecified() || l.addr.ip() == frontend.ip())
                .map(|l| l.to_string())
                .collect();
            return HaproxyError::FrontendInUse {
                frontend,
                listeners,
                log,
            };
        }
        if log.contains("Cannot assign requested address") {
            let s = if frontend.is_ipv6() {
                &self.nonlocal.ipv6
            } else {
                &self.nonlocal.ipv4
            };
            let sysctl = match s {
                SysctlOutcome::Failed(m) => Some(m.clone()),
                SysctlOutcome::Absent => Some("the sysctl does not exist".into()),
                SysctlOutcome::Skipped => Some("setting it is turned off".into()),
                _ => None,
            };
            return HaproxyError::FrontendNotLocal {
                frontend,
                sysctl,
                log,
            };
        }
        HaproxyError::StartExited {
            argv: argv.to_vec(),
            status,
            log,
        }
    }

    fn reload(&mut self) -> Result<(), HaproxyError> {
        let before = self.show_proc()?;
        let offset = self.log_len();
        let sock = self.paths.master_socket.clone();
        // The master closes the connection when it re-executes itself.
        if let Err(e) = cli::command(&sock, "reload", SOCKET_TIMEOUT)
            && matches!(
                e.kind(),
                io::ErrorKind::NotFound
                    | io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::PermissionDenied
            )
        {
            return Err(HaproxyError::Socket {
                socket: sock,
                message: format!("`reload`: {e}"),
            });
        }
        let deadline = Instant::now() + self.opts.reload_timeout;
        loop {
            // Refused or reset while the master re-executes: keep asking.
            if let Ok(p) = self.show_proc()
                && p.reloads > before.reloads
            {
                if p.failed_reloads > before.failed_reloads {
                    return Err(HaproxyError::ReloadRejected {
                        socket: sock,
                        log: self.log_since(offset),
                    });
                }
                if p.workers.iter().any(|w| !before.workers.contains(w)) {
                    self.master_pid = Some(p.master_pid);
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(HaproxyError::Timeout {
                    what: format!(
                        "a new worker generation in `show proc` on `{}` after `reload` ({})",
                        sock.display(),
                        self.log_since(offset)
                    ),
                    waited_ms: self.opts.reload_timeout.as_millis(),
                });
            }
            thread::sleep(POLL_STEP);
        }
    }

    /// Open HAProxy's stderr log for appending (cut back to empty when too
    /// big) and return it with its current length.
    fn open_log(&self) -> Result<(fs::File, u64), HaproxyError> {
        let p = &self.paths.log_file;
        let f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(p)
            .map_err(io_err(p))?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len > LOG_LIMIT {
            // The master's fd is O_APPEND, so it keeps writing at the new end.
            f.set_len(0).map_err(io_err(p))?;
            return Ok((f, 0));
        }
        Ok((f, len))
    }

    fn log_len(&self) -> u64 {
        match fs::metadata(&self.paths.log_file) {
            Ok(m) if m.len() > LOG_LIMIT => {
                let _ = fs::OpenOptions::new()
                    .write(true)
                    .open(&self.paths.log_file)
                    .and_then(|f| f.set_len(0));
                0
            }
            Ok(m) => m.len(),
            Err(_) => 0,
        }
    }

    /// HAProxy's alerts written since `offset` (all lines if none is an
    /// alert), on one line.
    fn log_since(&self, offset: u64) -> String {
        let mut text = String::new();
        if let Ok(mut f) = fs::File::open(&self.paths.log_file) {
            let _ = f.seek(SeekFrom::Start(offset));
            let _ = f.take(64 * 1024).read_to_string(&mut text);
        }
        let alerts: Vec<&str> = text.lines().filter(|l| l.contains("[ALERT]")).collect();
        let picked: Vec<&str> = if alerts.is_empty() {
            text.lines()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect()
        } else {
            alerts
        };
        if picked.is_empty() {
            format!("nothing in `{}`", self.paths.log_file.display())
        } else {
            one_line(&picked.join("\n"))
        }
    }

    fn stop_all(&mut self) {
        let mut pids = Vec::new();
        if let Ok(p) = self.show_proc() {
            pids.push(p.master_pid);
            pids.extend(p.workers);
            pids.extend(p.old_workers);
        }
        if let Some(pid) = self.master_pid {
            pids.insert(0, pid);
        }
        pids.sort();
        pids.dedup();
        // The master first: it stops its workers; then anything left.
        if let Some(m) = self.master_pid {
            process::signal(m, Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && pids.iter().any(|p| process::alive(*p)) {
            self.reap();
            thread::sleep(POLL_STEP);
        }
        terminate(&pids, Duration::from_secs(2));
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.master_pid = None;
    }
}

impl std::fmt::Debug for HaproxyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HaproxyManager")
            .field("config_path", &self.opts.haproxy.config_path)
            .field("master_pid", &self.master_pid)
            .field("config_ok", &self.config_ok)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL what is left.
fn terminate(pids: &[i32], grace: Duration) {
    let live: Vec<i32> = pids
        .iter()
        .copied()
        .filter(|p| process::alive(*p))
        .collect();
    for p in &live {
        process::signal(*p, Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && live.iter().any(|p| process::alive(*p)) {
        thread::sleep(POLL_STEP);
    }
    for p in live.iter().filter(|p| process::alive(**p)) {
        process::signal(*p, Signal::SIGKILL);
    }
}

fn tmp_path(config_path: &Path) -> PathBuf {
    let name = config_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "haproxy.cfg".into());
    config_path.with_file_name(format!(".{name}.kubeha-new"))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), HaproxyError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Atomic replace: after a crash the file is the old or the new one, whole.
fn rename_synced(from: &Path, to: &Path) -> Result<(), HaproxyError> {
    fs::rename(from, to).map_err(io_err(to))?;
    if let Some(dir) = to.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    Ok(())
}

fn one_line(s: &str) -> String {
    let t: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    t.join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_what_to_do() {
        let e = HaproxyError::FrontendInUse {
            frontend: "127.0.0.2:6443".parse().unwrap(),
            listeners: vec!["0.0.0.0:6443 (pid 7 `kube-apiserver`)".into()],
            log: "[ALERT] cannot bind socket (Address already in use)".into(),
        };
        let s = e.to_string();
        assert!(s.contains("`127.0.0.2:6443`"), "{s}");
        assert!(
            s.contains("held by 0.0.0.0:6443 (pid 7 `kube-apiserver`)"),
            "{s}"
        );
        assert!(s.contains("bind kube-apiserver to the node address"), "{s}");
        assert!(s.contains("move `haproxy.frontend` to another port"), "{s}");

        let e = HaproxyError::Command {
            argv: vec![
                "/usr/sbin/haproxy".into(),
                "-c".into(),
                "-f".into(),
                "/x".into(),
            ],
            status: "exit status: 1".into(),
            output: "[ALERT] parsing [/x:3]: unknown keyword 'bogus'".into(),
        };
        assert_eq!(
            e.to_string(),
            "`/usr/sbin/haproxy -c -f /x` failed with exit status: 1: [ALERT] parsing [/x:3]: unknown keyword 'bogus'"
        );
    }

    #[test]
    fn tmp_file_is_beside_the_config() {
        assert_eq!(
            tmp_path(Path::new("/etc/haproxy/haproxy.cfg")),
            PathBuf::from("/etc/haproxy/.haproxy.cfg.kubeha-new")
        );
    }

    #[test]
    fn one_line_joins_non_empty_lines() {
        assert_eq!(one_line("a\n\n  b  \nc\n"), "a | b | c");
    }
}
