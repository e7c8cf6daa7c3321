//! The local API: a root-only Unix socket (`socket` in the config) speaking
//! one JSON line in, one JSON line out (kubeha_core::api). Requests are
//! answered by the agent's main loop, so a status is one consistent snapshot.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kubeha_core::api::{Request, Response};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{debug, warn};

pub struct ApiCall {
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
}

const MAX_REQUEST: usize = 64 * 1024;
/// Connections answered at once; more are closed unanswered (the socket is
/// root-only, but a stuck client must not take the agent's descriptors).
pub const MAX_CONNECTIONS: usize = 32;
/// Reading the request, and separately writing the answer, get this long.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Bounds of the API server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub io_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: MAX_CONNECTIONS,
            io_timeout: IO_TIMEOUT,
        }
    }
}

/// Bind the socket (removing a stale one left by a crashed agent) and serve.
pub async fn serve(path: &Path, calls: mpsc::Sender<ApiCall>) -> anyhow::Result<()> {
    serve_with(path, calls, Limits::default()).await
}

pub async fn serve_with(
    path: &Path,
    calls: mpsc::Sender<ApiCall>,
    limits: Limits,
) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("creating the directory of `socket` {}", path.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            anyhow::bail!(
                "another agent is already serving `socket` {}",
                path.display()
            );
        }
        fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding `socket` {}", path.display()))?;
    // Root-only: status names peers and roles, drain moves the VIP.
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making `socket` {} root-only", path.display()))?;
    let path: PathBuf = path.to_path_buf();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        debug!(socket = %path.display(), "too many api connections; closed one unanswered");
                        continue;
                    };
                    let calls = calls.clone();
                    tokio::spawn(async move {
                        let _slot = slot;
                        handle(stream, calls, limits.io_timeout).await;
                    });
                }
                Err(e) => {
                    warn!(socket = %path.display(), error = %e, "api accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
}

async fn handle(stream: UnixStream, calls: mpsc::Sender<ApiCall>, io_timeout: Duration) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
    let mut line = String::new();
    let response = match tokio::time::timeout(io_timeout, reader.read_line(&mut line)).await {
        Ok(Ok(_)) => match serde_json::from_str::<Request>(line.trim()) {
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                if calls.send(ApiCall { request, reply: tx }).await.is_err() {
                    Response::Error {
                        message: "the agent is stopping".into(),
                    }
                } else {
                    rx.await.unwrap_or(Response::Error {
                        message: "the agent is stopping".into(),
                    })
                }
            }
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
        },
        Ok(Err(e)) => Response::Error {
            message: format!("reading the request: {e}"),
        },
        Err(_) => Response::Error {
            message: format!("no request within {io_timeout:?}"),
        },
    };
    let mut out = serde_json::to_vec(&response).expect("responses serialize");
    out.push(b'\n');
    match tokio::time::timeout(io_timeout, write.write_all(&out)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "api client went away"),
        Err(_) => debug!("api client does not read its answer; closed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A main loop that answers every call.
    fn answering() -> mpsc::Sender<ApiCall> {
        let (tx, mut rx) = mpsc::channel::<ApiCall>(8);
        tokio::spawn(async move {
            while let Some(call) = rx.recv().await {
                let _ = call.reply.send(Response::Ok {
                    message: "fine".into(),
                });
            }
        });
        tx
    }

    async fn ask(path: &Path) -> std::io::Result<String> {
        let mut s = UnixStream::connect(path).await?;
        s.write_all(b"{\"cmd\":\"status\"}\n").await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    /// Idle clients take at most `max_connections` slots (each for at most
    /// the timeout); the next one is closed unanswered, and once the idle
    /// ones time out requests are answered again.
    #[tokio::test]
    async fn connections_are_bounded_and_idle_ones_time_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let limits = Limits {
            max_connections: 2,
            io_timeout: Duration::from_secs(2),
        };
        serve_with(&path, answering(), limits).await.unwrap();
        let idle1 = UnixStream::connect(&path).await.unwrap();
        let idle2 = UnixStream::connect(&path).await.unwrap();
        // Accepted after the two idle ones (the backlog is FIFO): no slot.
        let turned_away = ask(&path).await.unwrap_or_default();
        assert_eq!(turned_away, "", "answered beyond the bound");
        let start = std::time::Instant::now();
        let answer = loop {
            let a = ask(&path).await.unwrap_or_default();
            if !a.is_empty() {
                break a;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "never answered after the idle clients timed out"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(answer.contains("fine"), "{answer}");
        drop((idle1, idle2));
    }
}
