//! Runs external commands (kubeadm). A minimal stand-in with the public
//! interface of the command runner on branch `wt-shell` (`Command`,
//! `Output`, `CommandError`, same names and signatures), so the integrator
//! can replace this file by that one unchanged.
//!
//! - argv only, never a shell; [`Command::secret_arg`] values show as
//!   `<redacted>` in every error and `Debug`. Secrets belong in stdin or a
//!   root-only file: other users can read `/proc/<pid>/cmdline`.
//! - A timeout on every run; on timeout or when the run is dropped the
//!   child's process group is killed (the child leads its own group).
//! - Every error names argv, the exit status and the tail of stderr.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// How much of stderr an error quotes (the end of it).
pub const STDERR_TAIL: usize = 2048;
/// At most this much stdout is kept.
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
        /// Kept for callers that parse a failure.
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

    /// An argument shown as `<redacted>` everywhere. Prefer stdin or a 0600
    /// file: argv is world-readable in /proc.
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
        let mut child = cmd.spawn().map_err(|source| CommandError::Spawn {
            argv: argv.clone(),
            source,
        })?;
        let mut group = KillGroup(child.id().map(|p| Pid::from_raw(p as i32)));
        let stdout = tokio::spawn(read_capped(child.stdout.take(), MAX_STDOUT, false));
        let stderr = tokio::spawn(read_capped(child.stderr.take(), STDERR_TAIL, true));
        if let (Some(bytes), Some(mut pipe)) = (&self.stdin, child.stdin.take()) {
            let bytes = bytes.clone();
            tokio::spawn(async move {
                let _ = pipe.write_all(&bytes).await;
                let _ = pipe.shutdown().await;
            });
        }
        let status = match tokio::time::timeout(self.timeout, child.wait()).await {
            Ok(Ok(status)) => {
                group.0 = None;
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
                group.kill();
                let _ = child.wait().await;
                group.0 = None;
                let tail = stderr.await.unwrap_or_default();
                return Err(CommandError::Timeout {
                    argv,
                    timeout: self.timeout,
                    stderr_tail: tail_text(&tail),
                });
            }
        };
        let stdout = stdout.await.unwrap_or_default();
        let stderr = stderr.await.unwrap_or_default();
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

/// Kills the process group when dropped (a cancelled run) while the
/// leader is unreaped.
struct KillGroup(Option<Pid>);

impl KillGroup {
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

async fn read_capped<R: AsyncRead + Unpin>(pipe: Option<R>, cap: usize, tail: bool) -> Vec<u8> {
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
    async fn failure_names_argv_status_and_stderr_and_redacts_secrets() {
        let e = sh("echo 'the cause' >&2; exit 3")
            .secret_arg("hunter2")
            .run()
            .await
            .unwrap_err();
        let msg = format!("{e} {e:?}");
        assert!(msg.contains("/bin/sh -c"), "{msg}");
        assert!(msg.contains("exit status: 3"), "{msg}");
        assert!(msg.contains("the cause"), "{msg}");
        assert!(
            msg.contains("<redacted>") && !msg.contains("hunter2"),
            "{msg}"
        );
        let out = sh("printf %s \"$0\"").secret_arg("s3").run().await.unwrap();
        assert_eq!(out.stdout_str(), "s3");
    }

    #[tokio::test]
    async fn timeout_is_an_error_naming_argv() {
        let e = sh("echo started >&2; exec sleep 30")
            .timeout(Duration::from_millis(200))
            .run()
            .await
            .unwrap_err();
        assert!(
            matches!(&e, CommandError::Timeout { stderr_tail, .. } if stderr_tail == "started")
        );
        assert!(e.to_string().contains("sleep 30"), "{e}");
    }
}
