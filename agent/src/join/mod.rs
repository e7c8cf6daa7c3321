//! Join material over mutual TLS (docs/join.md).
//!
//! A node that must `kubeadm join` connects to a joined control plane's
//! `advertise_addr:join_port`, both sides present their self-signed
//! [`Identity`] and each checks the other's certificate against the
//! fingerprint gossip publishes for that name ([`verify`]). The client sends
//! one [`JoinRequest`] (its name, the tier it wants); the server decides
//! with the pure [`kubeha_core::join::authorize`] and answers with freshly
//! minted [`JoinMaterial`] from its [`JoinMaterialSource`] or a refusal.
//!
//! - [`identity`]: key pair + certificate in `state_dir`, reused.
//! - [`server`]: [`JoinServer`] (bounded connections, timeouts, logged refusals).
//! - [`client`]: [`fetch_join_material`], to be run as a job.
//! - [`source`]: [`JoinMaterialSource`] and the kubeadm implementation.
//!
//! Frames: a 4-byte big-endian length, then a postcard message of
//! `kubeha_core::join`, at most [`MAX_FRAME`] bytes. One request, one
//! response, then the connection closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kubeha_core::join::{MAX_FRAME, Refusal};
use rustls::crypto::CryptoProvider;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

pub mod client;
pub mod identity;
pub mod server;
pub mod source;
pub mod verify;

#[cfg(test)]
mod tests;

pub use client::{JoinTarget, fetch_join_material};
pub use identity::{Identity, IdentityError};
pub use kubeha_core::join::{Fingerprint, JoinMaterial, JoinRequest, Secret, Tier};
pub use server::{JoinServer, ServerLimits};
pub use source::{JoinMaterialSource, KubeadmSource, SourceError};

/// Default time for the whole client exchange.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("join server `{server}`: {reason}")]
    NoServer { server: String, reason: String },
    #[error("join server `{server}` ({addr}): cannot connect: {source}")]
    Connect {
        server: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("join server `{server}` ({addr}): TLS handshake failed: {source}")]
    Handshake {
        server: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("join server `{server}` ({addr}): {source}")]
    Io {
        server: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("join server `{server}` ({addr}): no answer within {after:?}")]
    Timeout {
        server: String,
        addr: SocketAddr,
        after: Duration,
    },
    #[error("join server `{server}` ({addr}) refused: {refusal}")]
    Refused {
        server: String,
        addr: SocketAddr,
        refusal: Refusal,
    },
    #[error("join server `{server}` ({addr}): {message}")]
    Protocol {
        server: String,
        addr: SocketAddr,
        message: String,
    },
    #[error("join server on {addr}: cannot listen (`advertise_addr`, `join_port`): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("join TLS configuration: {0}")]
    Tls(String),
}

/// The gossip key-value that publishes `identity` (add it to the keys an
/// agent publishes at start).
pub fn published_fingerprint(identity: &Identity) -> (String, String) {
    (
        kubeha_core::membership::keys::TLS_FINGERPRINT.to_string(),
        identity.fingerprint().to_string(),
    )
}

/// ring, TLS 1.3 only.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
) -> std::io::Result<()> {
    if payload.len() > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {} bytes exceeds {MAX_FRAME}", payload.len()),
        ));
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(4 + payload.len()));
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf).await?;
    w.flush().await
}

/// The payload of one frame; zeroed when dropped (it may hold secrets).
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {MAX_FRAME}"),
        ));
    }
    let mut buf = Zeroizing::new(vec![0u8; len]);
    r.read_exact(&mut buf).await?;
    Ok(buf)
}
