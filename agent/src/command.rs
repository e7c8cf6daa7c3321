//! Running a command: argv (never a shell), a timeout, and errors that show
//! the argv, the exit status and the end of stderr.
//!
//! Minimal on purpose (host preparation needs little); blocking, so callers
//! run it off the main loop. Secrets never go in argv: pass them in files.

use std::ffi::OsString;
use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How much of stderr an error keeps (its end, where the reason usually is).
const STDERR_TAIL: usize = 2000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("`{argv}`: cannot start: {source}")]
    Spawn {
        argv: String,
        source: std::io::Error,
    },
    #[error("`{argv}`: no result within {}s, killed", timeout.as_secs_f32())]
    Timeout { argv: String, timeout: Duration },
    #[error("`{argv}`: {status}{}", tail(stderr))]
    Failed {
        argv: String,
        status: ExitStatus,
        stderr: String,
    },
}

fn tail(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        return String::new();
    }
    let start = s.len().saturating_sub(STDERR_TAIL);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    format!(": {}", &s[start..])
}

/// `argv` joined for messages.
pub fn display(argv: &[OsString]) -> String {
    argv.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run `argv` with stdin closed; wait at most `timeout`, then kill it.
/// A non-zero exit is an error.
pub fn run(argv: &[OsString], timeout: Duration) -> Result<Output, CommandError> {
    let shown = display(argv);
    let Some((program, args)) = argv.split_first() else {
        return Err(CommandError::Spawn {
            argv: shown,
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty argv"),
        });
    };
    let spawn = || {
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    };
    // ETXTBSY: a program file just written is still open in a child another
    // thread forked meanwhile (until that child execs); it passes quickly.
    let mut attempt = 0;
    let mut child = loop {
        match spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < 20 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            other => {
                break other.map_err(|source| CommandError::Spawn {
                    argv: shown.clone(),
                    source,
                })?;
            }
        }
    };
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    // Readers and the wait on their own thread, so the timeout needs no clock.
    std::thread::spawn(move || {
        let err_reader = std::thread::spawn(move || {
            let mut e = Vec::new();
            let _ = stderr.read_to_end(&mut e);
            e
        });
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        let err = err_reader.join().unwrap_or_default();
        let status = child.wait();
        let _ = tx.send((status, out, err));
    });
    let (status, out, err) = match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(_) => {
            // Our own child, by its PID.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = rx.recv_timeout(Duration::from_secs(5));
            return Err(CommandError::Timeout {
                argv: shown,
                timeout,
            });
        }
    };
    let status = status.map_err(|source| CommandError::Spawn {
        argv: shown.clone(),
        source,
    })?;
    let output = Output {
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
    };
    if !status.success() {
        return Err(CommandError::Failed {
            argv: shown,
            status,
            stderr: output.stderr,
        });
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn output_and_failure_with_stderr() {
        let o = run(
            &argv(&["sh", "-c", "echo out; echo err >&2"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(o.stdout, "out\n");
        assert_eq!(o.stderr, "err\n");
        let e = run(
            &argv(&["sh", "-c", "echo broken >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "`sh -c echo broken >&2; exit 3`: exit status: 3: broken");
    }

    #[test]
    fn missing_program_and_timeout() {
        let e = run(
            &argv(&["/nonexistent/kubeadm", "version"]),
            Duration::from_secs(10),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("`/nonexistent/kubeadm version`: cannot start"),
            "{e}"
        );
        let e = run(&argv(&["sleep", "30"]), Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, CommandError::Timeout { .. }), "{e}");
    }
}
