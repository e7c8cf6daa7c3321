//! Talking to a node's agent over its Unix socket (the protocol of
//! `kubeha_core::api`: one JSON request line, one JSON response line). The
//! socket is a file, so this works from the host namespace.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use kubeha_core::api::{Request, Response, Status};

use super::error::{LabError, Result};

fn err(path: &Path, message: impl Into<String>) -> LabError {
    LabError::Agent {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

pub fn request(socket: &Path, req: &Request, timeout: Duration) -> Result<Response> {
    let mut s = UnixStream::connect(socket).map_err(|e| err(socket, format!("connect: {e}")))?;
    s.set_read_timeout(Some(timeout))
        .and_then(|_| s.set_write_timeout(Some(timeout)))
        .map_err(|e| err(socket, e.to_string()))?;
    let mut line = serde_json::to_string(req).expect("request serializes");
    line.push('\n');
    s.write_all(line.as_bytes())
        .map_err(|e| err(socket, format!("write: {e}")))?;
    let mut reply = String::new();
    BufReader::new(&s)
        .read_line(&mut reply)
        .map_err(|e| err(socket, format!("read: {e}")))?;
    if reply.trim().is_empty() {
        return Err(err(
            socket,
            "the agent closed the connection without a reply",
        ));
    }
    serde_json::from_str(&reply).map_err(|e| err(socket, format!("bad reply: {e}: {reply}")))
}

pub fn status(socket: &Path) -> Result<Status> {
    match request(socket, &Request::Status, Duration::from_secs(2))? {
        Response::Status(s) => Ok(*s),
        Response::Error { message } => Err(err(socket, message)),
        other => Err(err(socket, format!("unexpected reply {other:?}"))),
    }
}

/// `Drain` or `Undrain`.
pub fn command(socket: &Path, req: Request) -> Result<String> {
    match request(socket, &req, Duration::from_secs(5))? {
        Response::Ok { message } => Ok(message),
        Response::Error { message } => Err(err(socket, message)),
        other => Err(err(socket, format!("unexpected reply {other:?}"))),
    }
}
