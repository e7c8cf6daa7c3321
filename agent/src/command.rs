//! The one place the agent runs external commands (kubeadm, kubectl, etcdctl,
//! later cloud CLIs). Everything else builds a [`Command`] and calls
//! [`Command::run`].
//!
//! - argv only, never a shell; arguments marked secret ([`Command::secret_arg`])
//!   show as `<redacted>` in every error and log. Secrets belong in stdin
//!   ([`Command::stdin`]) or a root-only file, not in argv (other users can
//!   read `/proc/<pid>/cmdline`); `secret_arg` exists for tools that leave no
//!   other way, and so that such an argument can never be logged by mistake.
//! - A timeout on every run. On timeout (or when the run is dropped) the
//!   child's whole process group is killed (the child is a process-group
//!   leader), so helpers it started go too.
//! - Nothing outlives the agent: the child gets `PR_SET_PDEATHSIG(SIGKILL)`
//!   (the signal comes when the agent thread that spawned it exits, and
//!   tokio's worker threads live as long as the agent), and a dropped run
//!   (a cancelled job) kills its process group.
//! - Every error names argv, the exit status and the tail of stderr.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

/// How much of stderr an error quotes (the end of it: the cause is there).
pub const STDERR_TAIL: usize = 2048;
/// At most this much stdout is kept; more is read and dropped.
pub const MAX_STDOUT: usize = 4 * 1024 * 1024;
/// Timeout when none is set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

const REDACTED: &str = "<redacted>";

#[derive(Clone)]
struct Arg {
    value: OsString,
    secret: bool,
}

/// One external command: program, arguments, optional stdin, timeout.
#[derive(Clone)]
pub struct Command {
    argv: Vec<Arg>,
    stdin: Option<Vec<u8>>,
    env: Vec<(OsString, OsString)>,
    timeout: Duration,
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Command")
            .field("argv", &self.display_argv())
            .field("stdin", &self.stdin.as_ref().map(|_| REDACTED))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What a successful run produced.
#[derive(Debug)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("`{argv}`: cannot start: {source}")]
    Spawn {
        argv: String,
        #[source]
        source: io::Error,
    },
    #[error("`{argv}`: {what}: {source}")]
    Io {
        argv: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "`{argv}`: no exit after {timeout:?}, its process group was killed; stderr: {}",
        shown(stderr_tail)
    )]
    Timeout {
        argv: String,
        timeout: Duration,
        stderr_tail: String,
    },
    #[error("`{argv}` failed ({status}); stderr: {}", shown(stderr_tail))]
    Failed {
        argv: String,
        status: ExitStatus,
        stderr_tail: String,
        /// Kept for callers that parse a failure (e.g. kubectl's JSON).
        stdout: Vec<u8>,
    },
}

fn shown(tail: &str) -> &str {
    if tail.is_empty() { "(empty)" } else { tail }
}

impl CommandError {
    /// argv as shown (secrets redacted).
    pub fn argv(&self) -> &str {
        match self {
            CommandError::Spawn { argv, .. }
            | CommandError::Io { argv, .. }
            | CommandError::Timeout { argv, .. }
            | CommandError::Failed { argv, .. } => argv,
        }
    }

    /// The exit status, if the command ran to its end.
    pub fn status(&self) -> Option<ExitStatus> {
        match self {
            CommandError::Failed { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl Command {
    pub fn new(program: impl AsRef<OsStr>) -> Command {
        Command {
            argv: vec![Arg {
                value: program.as_ref().to_os_string(),
                secret: false,
            }],
            stdin: None,
            env: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Command {
        self.argv.push(Arg {
            value: a.as_ref().to_os_string(),
            secret: false,
        });
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    /// An argument that is shown as `<redacted>` everywhere. Prefer
    /// [`Command::stdin`] or a 0600 file: argv is world-readable in /proc.
    pub fn secret_arg(mut self, a: impl AsRef<OsStr>) -> Command {
        self.argv.push(Arg {
            value: a.as_ref().to_os_string(),
            secret: true,
        });
        self
    }

    /// Bytes written to the child's stdin (then closed). Never shown.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Command {
        self.stdin = Some(bytes.into());
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Command {
        self.env
            .push((k.as_ref().to_os_string(), v.as_ref().to_os_string()));
        self
    }

    pub fn timeout(mut self, t: Duration) -> Command {
        self.timeout = t;
        self
    }

    /// The program and the arguments that are not secret (`None` for a
    /// secret one): what a fake runner may look at.
    pub fn argv(&self) -> Vec<Option<&OsStr>> {
        self.argv
            .iter()
            .map(|a| (!a.secret).then_some(a.value.as_os_str()))
            .collect()
    }

    /// argv for people: space-separated, secrets as `<redacted>`.
    pub fn display_argv(&self) -> String {
        self.argv
            .iter()
            .map(|a| {
                if a.secret {
                    REDACTED.to_string()
                } else {
                    a.value.to_string_lossy().into_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The timeout of a run.
    pub fn get_timeout(&self) -> Duration {
        self.timeout
    }

    /// Environment variables set for the child (never secret: they show in
    /// `/proc/<pid>/environ` and, through `systemd-run`, in unit properties).
    pub fn get_env(&self) -> &[(OsString, OsString)] {
        &self.env
    }

    /// Whether an argument was given with [`Command::secret_arg`].
    pub fn has_secret_args(&self) -> bool {
        self.argv.iter().any(|a| a.secret)
    }

    /// This command run by another program: `program prefix… argv…`, each
    /// of this command's arguments (its program included) passed through
    /// `quote`, with the same stdin and the given timeout; secret arguments
    /// stay secret; the environment is not copied (the caller passes it on
    /// as the wrapper needs). For `systemd-run` ([`crate::transient`]).
    pub fn wrapped<I, S>(
        &self,
        program: impl AsRef<OsStr>,
        prefix: I,
        timeout: Duration,
        quote: impl Fn(&OsStr) -> OsString,
    ) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut w = Command::new(program).args(prefix).timeout(timeout);
        w.argv.extend(self.argv.iter().map(|a| Arg {
            value: quote(&a.value),
            secret: a.secret,
        }));
        w.stdin = self.stdin.clone();
        w
    }

    /// Run to the end. `Ok` only for exit status 0.
    pub async fn run(&self) -> Result<Output, CommandError> {
        let argv = self.display_argv();
        let mut cmd = tokio::process::Command::new(&self.argv[0].value);
        cmd.args(self.argv[1..].iter().map(|a| &a.value))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; nothing else runs between
        // fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| CommandError::Spawn {
            argv: argv.clone(),
            source,
        })?;
        // The child leads its own group: its pid is the group id.
        let mut group = KillGroup(child.id().map(|p| Pid::from_raw(p as i32)));
        let stdout = reader(child.stdout.take(), MAX_STDOUT, false);
        let stderr = reader(child.stderr.take(), STDERR_TAIL, true);
        if let (Some(bytes), Some(mut pipe)) = (&self.stdin, child.stdin.take()) {
            let bytes = bytes.clone();
            // A child that does not read its stdin must not block us.
            tokio::spawn(async move {
                let _ = pipe.write_all(&bytes).await;
                let _ = pipe.shutdown().await;
            });
        }
        let status = match tokio::time::timeout(self.timeout, child.wait()).await {
            Ok(Ok(status)) => {
                // Reaped: the group id may be reused from now on.
                group.disarm();
                status
            }
            Ok(Err(source)) => {
                return Err(CommandError::Io {
                    argv,
                    what: "waiting for it",
                    source,
                });
            }
            Err(_) => {
                // Killed while the leader is unreaped, so the id is still
                // this group's.
                group.kill();
                let _ = child.wait().await;
                group.disarm();
                let stderr_tail = collect(stderr).await;
                return Err(CommandError::Timeout {
                    argv,
                    timeout: self.timeout,
                    stderr_tail: tail_text(&stderr_tail),
                });
            }
        };
        let stdout = collect(stdout).await;
        let stderr = collect(stderr).await;
        if status.success() {
            Ok(Output { stdout, stderr })
        } else {
            Err(CommandError::Failed {
                argv,
                status,
                stderr_tail: tail_text(&stderr),
                stdout,
            })
        }
    }
}

/// Runs commands: [`SystemRunner`] for real, a fake in tests of the code
/// that builds them (jobs take an `Arc<dyn Runner>`).
#[async_trait::async_trait]
pub trait Runner: Send + Sync {
    async fn run(&self, cmd: &Command) -> Result<Output, CommandError>;
}

/// Runs commands on this host with [`Command::run`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemRunner;

#[async_trait::async_trait]
impl Runner for SystemRunner {
    async fn run(&self, cmd: &Command) -> Result<Output, CommandError> {
        cmd.run().await
    }
}

/// Kills the process group when dropped (a cancelled run) or asked. Armed
/// only while the leader is not reaped (its pid names the group until then).
/// Declared after the `Child`, so dropped before it: the group dies before
/// tokio's `kill_on_drop` reaps the leader.
struct KillGroup(Option<Pid>);

impl KillGroup {
    fn disarm(&mut self) {
        self.0 = None;
    }

    fn kill(&self) {
        if let Some(pg) = self.0 {
            let _ = killpg(pg, Signal::SIGKILL);
        }
    }
}

impl Drop for KillGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Read a pipe to its end; keep the first `cap` bytes, or with `tail` the
/// last `cap` bytes.
fn reader<R>(pipe: Option<R>, cap: usize, tail: bool) -> JoinHandle<Vec<u8>>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut kept = Vec::new();
        let Some(mut pipe) = pipe else { return kept };
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => return kept,
                Ok(n) => {
                    kept.extend_from_slice(&buf[..n]);
                    if kept.len() > cap {
                        if tail {
                            let cut = kept.len() - cap;
                            kept.drain(..cut);
                        } else {
                            kept.truncate(cap);
                        }
                    }
                }
            }
        }
    })
}

/// A pipe's contents; a helper that escaped the process group and holds
/// the pipe open does not hold us for more than a moment.
async fn collect(h: JoinHandle<Vec<u8>>) -> Vec<u8> {
    let abort = h.abort_handle();
    match tokio::time::timeout(Duration::from_secs(1), h).await {
        Ok(Ok(v)) => v,
        _ => {
            abort.abort();
            Vec::new()
        }
    }
}

fn tail_text(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let s = s.trim();
    let mut start = s.len().saturating_sub(STDERR_TAIL);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        Command::new("/bin/sh").arg("-c").arg(script)
    }

    #[tokio::test]
    async fn success_returns_stdout() {
        let runner: &dyn Runner = &SystemRunner;
        let out = runner.run(&sh("echo hello; echo note >&2")).await.unwrap();
        assert_eq!(out.stdout_str(), "hello\n");
        assert_eq!(out.stderr, b"note\n");
    }

    #[tokio::test]
    async fn failure_names_argv_status_and_stderr_tail() {
        let e = sh("echo first >&2; echo 'the cause' >&2; exit 3")
            .run()
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("`/bin/sh -c echo first"),
            "argv named: {msg}"
        );
        assert!(msg.contains("exit status: 3"), "{msg}");
        assert!(msg.contains("the cause"), "{msg}");
        assert_eq!(e.status().and_then(|s| s.code()), Some(3));
    }

    #[tokio::test]
    async fn stderr_tail_keeps_the_end() {
        let e = sh("i=0; while [ $i -lt 2000 ]; do echo line$i >&2; i=$((i+1)); done; exit 1")
            .run()
            .await
            .unwrap_err();
        let CommandError::Failed { stderr_tail, .. } = &e else {
            panic!("{e}")
        };
        assert!(stderr_tail.len() <= STDERR_TAIL);
        assert!(stderr_tail.ends_with("line1999"), "{stderr_tail}");
        assert!(!stderr_tail.contains("line0\n"));
    }

    #[tokio::test]
    async fn missing_program_is_named() {
        let e = Command::new("/nonexistent/kubeadm")
            .arg("init")
            .run()
            .await
            .unwrap_err();
        assert!(matches!(e, CommandError::Spawn { .. }));
        assert!(e.to_string().contains("/nonexistent/kubeadm init"), "{e}");
    }

    #[tokio::test]
    async fn secret_args_are_redacted_everywhere() {
        let cmd = sh("echo failing >&2; exit 1")
            .arg("--token")
            .secret_arg("hunter2-token")
            .stdin("stdin-secret");
        assert_eq!(
            cmd.display_argv(),
            "/bin/sh -c echo failing >&2; exit 1 --token <redacted>"
        );
        assert_eq!(cmd.argv()[3], Some(OsStr::new("--token")));
        assert_eq!(cmd.argv()[4], None);
        let dbg = format!("{cmd:?}");
        assert!(
            !dbg.contains("hunter2") && !dbg.contains("stdin-secret"),
            "{dbg}"
        );
        let e = cmd.run().await.unwrap_err();
        let msg = format!("{e} {e:?}");
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(msg.contains("<redacted>"), "{msg}");
        // The secret did reach the program.
        let out = sh("printf %s \"$0\"")
            .secret_arg("hunter2-token")
            .run()
            .await
            .unwrap();
        assert_eq!(out.stdout_str(), "hunter2-token");
    }

    #[tokio::test]
    async fn stdin_carries_secrets() {
        let out = sh("read x; [ \"$x\" = s3cret ] && echo matched")
            .stdin("s3cret\n")
            .run()
            .await
            .unwrap();
        assert_eq!(out.stdout_str(), "matched\n");
    }

    fn alive(pid: i32) -> bool {
        // A zombie is dead for our purposes.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(s) => !s
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    }

    async fn gone_within(pid: i32, limit: Duration) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if !alive(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!(
            "sleep 300 & echo $! > {}; echo started >&2; wait",
            pidfile.display()
        );
        let t = std::time::Instant::now();
        let e = sh(&script)
            .timeout(Duration::from_millis(300))
            .run()
            .await
            .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        let CommandError::Timeout { stderr_tail, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(stderr_tail, "started");
        assert!(e.to_string().contains("process group was killed"), "{e}");
        let grandchild: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            gone_within(grandchild, Duration::from_secs(5)).await,
            "the helper the command started ({grandchild}) outlived the timeout"
        );
    }

    #[tokio::test]
    async fn a_dropped_run_kills_its_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("echo $$ > {}; exec sleep 300", pidfile.display());
        let cmd = sh(&script).timeout(Duration::from_secs(600));
        let run = tokio::spawn(async move { cmd.run().await });
        let start = std::time::Instant::now();
        let pid = loop {
            if let Some(p) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            {
                break p;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(alive(pid));
        run.abort();
        let _ = run.await;
        assert!(
            gone_within(pid, Duration::from_secs(5)).await,
            "a cancelled run left its command ({pid}) running"
        );
    }
}

/// What [`run`] produced, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextOutput {
    pub stdout: String,
    pub stderr: String,
}

/// `argv` joined for messages (no secrets: callers of [`run`] put none in argv).
pub fn display(argv: &[OsString]) -> String {
    argv.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Blocking form of [`Command::run`] for work on a thread of its own (host
/// preparation): the same process-group, timeout and error handling, on a
/// private current-thread runtime. Must not be called from async code.
///
/// A program file written a moment ago can still be open for writing in a
/// child that another thread forked meanwhile (until that child execs):
/// the kernel then refuses to run it (ETXTBSY), so that one error is retried.
pub fn run(argv: &[OsString], timeout: Duration) -> Result<TextOutput, CommandError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(CommandError::Spawn {
            argv: String::new(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "empty argv"),
        });
    };
    let cmd = Command::new(program).args(args).timeout(timeout);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| CommandError::Spawn {
            argv: cmd.display_argv(),
            source,
        })?;
    let mut attempt = 0;
    loop {
        match rt.block_on(cmd.run()) {
            Err(CommandError::Spawn { source, .. })
                if source.raw_os_error() == Some(libc::ETXTBSY) && attempt < 50 =>
            {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            r => {
                return r.map(|o| TextOutput {
                    stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
                });
            }
        }
    }
}
