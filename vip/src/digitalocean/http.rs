//! A small HTTP/1.1 client for tiny JSON calls: one request per connection
//! (`Connection: close`), plain TCP or TLS (rustls, roots from a PEM bundle),
//! `Content-Length`, chunked or read-to-close bodies, one deadline for the
//! whole exchange. Nothing here logs a header: the `Authorization` header is
//! only ever written to the socket.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Biggest answer accepted (DigitalOcean's are a few hundred bytes).
const MAX_RESPONSE: usize = 1 << 20;

/// The system's CA bundle on Debian (package `ca-certificates`).
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A parsed `http://` or `https://` base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing `/` (often empty).
    pub base_path: String,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("`{s}` must start with https:// or http://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("`{s}`: unclosed `[`"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("`{s}`: bad port"))?,
                None => default_port,
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| format!("`{s}`: bad port"))?,
                ),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(format!("`{s}` has no host"));
        }
        Ok(Url {
            tls,
            host,
            port,
            base_path: path.trim_end_matches('/').to_string(),
        })
    }

    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// A secret header value that never shows in `Debug` and is wiped on drop.
#[derive(Clone)]
pub struct Secret(pub String);

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn header_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("connecting to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("TLS with {host}: {source}")]
    Tls { host: String, source: io::Error },
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("reading CA file `{path}`: {message}")]
    CaFile { path: String, message: String },
    #[error("reading the client certificate or key `{path}`: {message}")]
    ClientCert { path: String, message: String },
}

/// One client: TLS roots, loaded once.
#[derive(Clone)]
pub struct Client {
    tls: TlsConnector,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Client")
    }
}

impl Client {
    /// Trusts the certificates in `ca_file` (PEM), by default the system bundle.
    pub fn new(ca_file: Option<&Path>) -> Result<Client, HttpError> {
        Self::build(ca_file, None)
    }

    /// Trusts `ca_file` and presents the certificate and key in `cert_file`
    /// and `key_file` (PEM): mutual TLS, as etcd's client port asks.
    pub fn with_client_cert(
        ca_file: &Path,
        cert_file: &Path,
        key_file: &Path,
    ) -> Result<Client, HttpError> {
        Self::build(Some(ca_file), Some((cert_file, key_file)))
    }

    fn build(ca_file: Option<&Path>, client: Option<(&Path, &Path)>) -> Result<Client, HttpError> {
        let path = ca_file.unwrap_or(Path::new(SYSTEM_CA_FILE));
        let ca_err = |message: String| HttpError::CaFile {
            path: path.display().to_string(),
            message,
        };
        let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| ca_err(e.to_string()))?;
            // A bundle may hold certificates rustls cannot use; skip those.
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(ca_err("no usable certificate".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ca_err(e.to_string()))?
            .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some((cert_file, key_file)) => {
                let file_err = |p: &Path, message: String| HttpError::ClientCert {
                    path: p.display().to_string(),
                    message,
                };
                let pem =
                    std::fs::read(cert_file).map_err(|e| file_err(cert_file, e.to_string()))?;
                let chain = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| file_err(cert_file, e.to_string()))?;
                let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key_file)
                    .map_err(|e| file_err(key_file, e.to_string()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| file_err(cert_file, e.to_string()))?
            }
        };
        Ok(Client {
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    /// One request; `path` is appended to the URL's base path.
    pub async fn request(
        &self,
        method: &str,
        url: &Url,
        path: &str,
        bearer: Option<&Secret>,
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        tokio::time::timeout(timeout, self.exchange(method, url, path, bearer, body))
            .await
            .map_err(|_| HttpError::Timeout(timeout))?
    }

    async fn exchange(
        &self,
        method: &str,
        url: &Url,
        path: &str,
        bearer: Option<&Secret>,
        body: Option<&[u8]>,
    ) -> Result<Response, HttpError> {
        let addr = format!("{}:{}", url.host, url.port);
        let addr_for_connect = if url.host.contains(':') {
            format!("[{}]:{}", url.host, url.port)
        } else {
            addr.clone()
        };
        let tcp = TcpStream::connect(&addr_for_connect)
            .await
            .map_err(|source| HttpError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let mut req = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: kubeha/{}\r\nAccept: application/json\r\nConnection: close\r\n",
            url.base_path,
            url.host_header(),
            env!("CARGO_PKG_VERSION"),
        )
        .into_bytes();
        if let Some(Secret(token)) = bearer {
            req.extend_from_slice(b"Authorization: Bearer ");
            req.extend_from_slice(token.as_bytes());
            req.extend_from_slice(b"\r\n");
        }
        if let Some(b) = body {
            req.extend_from_slice(
                format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n",
                    b.len()
                )
                .as_bytes(),
            );
        }
        req.extend_from_slice(b"\r\n");
        if let Some(b) = body {
            req.extend_from_slice(b);
        }
        if url.tls {
            let name = ServerName::try_from(url.host.clone()).map_err(|e| HttpError::Tls {
                host: url.host.clone(),
                source: io::Error::other(e.to_string()),
            })?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|source| HttpError::Tls {
                    host: url.host.clone(),
                    source,
                })?;
            send_and_read(tls, &req).await
        } else {
            send_and_read(tcp, &req).await
        }
    }
}

async fn send_and_read<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    req: &[u8],
) -> Result<Response, HttpError> {
    s.write_all(req).await?;
    s.flush().await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_RESPONSE {
                    return Err(HttpError::Malformed(format!(
                        "response larger than {MAX_RESPONSE} bytes"
                    )));
                }
                if let Some(r) = parse_response(&buf, false)? {
                    return Ok(r);
                }
            }
            // A peer that closes without TLS close_notify: what we have is
            // all there is (judged by parse_response at EOF).
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
    }
    parse_response(&buf, true)?
        .ok_or_else(|| HttpError::Malformed("connection closed before the response ended".into()))
}

/// Parses a complete response from `buf`, or `None` if more bytes are
/// needed. At `eof` a body without length ends at the end of the bytes.
pub fn parse_response(buf: &[u8], eof: bool) -> Result<Option<Response>, HttpError> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| HttpError::Malformed("header is not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed(format!("status line `{status_line}`")));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| HttpError::Malformed(format!("status line `{status_line}`")))?;
    let mut headers = Vec::new();
    for line in lines {
        let (n, v) = line
            .split_once(':')
            .ok_or_else(|| HttpError::Malformed(format!("header line `{line}`")))?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let body_bytes = &buf[head_end + 4..];
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let chunked =
        get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        match decode_chunked(body_bytes)? {
            Some(b) => b,
            None if eof => {
                return Err(HttpError::Malformed(
                    "connection closed inside a chunked body".into(),
                ));
            }
            None => return Ok(None),
        }
    } else if let Some(len) = get("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| HttpError::Malformed(format!("content-length `{len}`")))?;
        if body_bytes.len() < len {
            if eof {
                return Err(HttpError::Malformed(format!(
                    "body ended after {} of {len} bytes",
                    body_bytes.len()
                )));
            }
            return Ok(None);
        }
        body_bytes[..len].to_vec()
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if eof {
        body_bytes.to_vec()
    } else {
        return Ok(None);
    };
    Ok(Some(Response {
        status,
        headers,
        body,
    }))
}

/// The body of a chunked transfer, or `None` if incomplete.
fn decode_chunked(mut b: &[u8]) -> Result<Option<Vec<u8>>, HttpError> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = find(b, b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&b[..line_end])
            .map_err(|_| HttpError::Malformed("chunk size is not UTF-8".into()))?;
        let size_str = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_str, 16)
            .map_err(|_| HttpError::Malformed(format!("chunk size `{size_str}`")))?;
        b = &b[line_end + 2..];
        if size == 0 {
            // Trailers (if any) end with an empty line; we need not read them.
            return Ok(Some(out));
        }
        if b.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&b[..size]);
        if &b[size..size + 2] != b"\r\n" {
            return Err(HttpError::Malformed("chunk not followed by CRLF".into()));
        }
        b = &b[size + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("https://api.digitalocean.com").unwrap();
        assert_eq!(
            u,
            Url {
                tls: true,
                host: "api.digitalocean.com".into(),
                port: 443,
                base_path: String::new()
            }
        );
        assert_eq!(u.host_header(), "api.digitalocean.com");
        let u = Url::parse("http://169.254.169.254/").unwrap();
        assert_eq!((u.tls, u.port, u.base_path.as_str()), (false, 80, ""));
        let u = Url::parse("https://127.0.0.1:8443/droplet/7/").unwrap();
        assert_eq!(u.port, 8443);
        assert_eq!(u.base_path, "/droplet/7");
        assert_eq!(u.host_header(), "127.0.0.1:8443");
        let u = Url::parse("http://[::1]:81").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 81));
        assert_eq!(u.host_header(), "[::1]:81");
        assert!(Url::parse("ftp://x").is_err());
        assert!(Url::parse("https://").is_err());
        assert!(Url::parse("https://h:notaport").is_err());
    }

    #[test]
    fn content_length_bodies() {
        let full =
            b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nRateLimit-Remaining: 9\r\n\r\nhello";
        let r = parse_response(full, false).unwrap().unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.body, b"hello");
        assert_eq!(r.header("ratelimit-remaining"), Some("9"));
        // Incomplete: wait for more; at EOF it is an error.
        assert_eq!(
            parse_response(&full[..full.len() - 1], false).unwrap(),
            None
        );
        assert!(parse_response(&full[..full.len() - 1], true).is_err());
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n", false).unwrap(), None);
    }

    #[test]
    fn chunked_and_close_delimited_bodies() {
        let b = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;ext=1\r\n:1}\r\n0\r\n\r\n";
        let r = parse_response(b, false).unwrap().unwrap();
        assert_eq!(r.body, b"{\"a\":1}");
        assert_eq!(parse_response(&b[..b.len() - 7], false).unwrap(), None);
        assert!(parse_response(&b[..b.len() - 7], true).is_err());

        let b = b"HTTP/1.0 200 OK\r\n\r\n7";
        assert_eq!(parse_response(b, false).unwrap(), None);
        assert_eq!(parse_response(b, true).unwrap().unwrap().body, b"7");
        let b = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert!(parse_response(b, false).unwrap().unwrap().body.is_empty());
    }

    #[test]
    fn malformed_is_an_error() {
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n", false).is_err());
        assert!(parse_response(b"HTTP/1.1 abc OK\r\n\r\n", false).is_err());
        assert!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                false
            )
            .is_err()
        );
    }

    #[test]
    fn secret_has_no_debug() {
        let s = Secret("dop_v1_abcdef".into());
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
    }
}
