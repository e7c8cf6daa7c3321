//! A stand-in for kube-apiserver's health endpoints: TLS on one address,
//! `/healthz`, `/readyz` and `/livez` answer `ok` (200), everything else 404.
//!
//! HAProxy's checks in front of the control planes ask `/readyz` over TLS and
//! verify the certificate against the cluster CA, so this fake has a CA like
//! kubeadm's (subject `CN=kubernetes`) in `<pki_dir>/ca.crt` (+ `ca.key`),
//! reused when the directory already has one (several fake apiservers of one
//! cluster share it, as kubeadm copies the CA to every control plane), and a
//! serving certificate for `kubernetes`, `localhost`, the bound IP and any
//! extra names.
//!
//! Readiness can be taken away without stopping the server: [`FakeApiserver::set_ready`],
//! a `not_ready_file` that makes `/readyz` answer 503 while it exists, or
//! SIGUSR1 in the `fake-apiserver` binary.
//!
//! With an etcd backend ([`FakeApiserverOptions::backend`], what
//! `fake-kubeadm` starts) it also serves the Node API and the few
//! ConfigMaps/Secrets kubeadm's join reads, from the cluster state in etcd
//! (see [`crate::fake_kubeadm::api`]), and `/readyz` fails while etcd does not
//! answer. It can then serve kubeadm's own `apiserver.crt`
//! ([`FakeApiserverOptions::serving`]) instead of making one.
//!
//! Every response carries `x-fake-apiserver: <name>` so a test can tell which
//! backend HAProxy picked. Connections are HTTP/1.1 keep-alive, so one client
//! connection can make requests for as long as it likes (a stand-in for a
//! long-lived watch).

use std::fs;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener as StdTcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::fake_kubeadm::api;
pub use crate::fake_kubeadm::api::Backend;

/// Response header naming the fake apiserver that answered.
pub const NAME_HEADER: &str = "x-fake-apiserver";

/// Subject common name of the CA, as kubeadm's.
const CA_CN: &str = "kubernetes";

#[derive(Debug, thiserror::Error)]
pub enum FakeApiserverError {
    #[error("cannot bind `{addr}`: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot read or write `{path}`: {source}")]
    File { path: PathBuf, source: io::Error },
    #[error("certificate: {0}")]
    Cert(String),
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot start the runtime: {0}")]
    Runtime(io::Error),
}

#[derive(Clone)]
pub struct FakeApiserverOptions {
    /// Sent back in the `x-fake-apiserver` header.
    pub name: String,
    pub listen: SocketAddr,
    /// `ca.crt`/`ca.key` are read from here if both exist, else written;
    /// `apiserver.crt`/`apiserver.key` are always (re)written.
    pub pki_dir: PathBuf,
    /// More subject alternative names (DNS names or IPs).
    pub extra_sans: Vec<String>,
    /// While this file exists `/readyz` answers 503.
    pub not_ready_file: Option<PathBuf>,
    /// Serve this certificate and key (PEM files) instead of writing
    /// `apiserver.crt`; `ca.crt` is still `<pki_dir>/ca.crt`.
    pub serving: Option<(PathBuf, PathBuf)>,
    /// The Node API and kubeadm's objects, from etcd.
    pub backend: Option<Backend>,
}

impl FakeApiserverOptions {
    pub fn new(name: &str, listen: SocketAddr, pki_dir: &Path) -> Self {
        FakeApiserverOptions {
            name: name.to_string(),
            listen,
            pki_dir: pki_dir.to_path_buf(),
            extra_sans: Vec::new(),
            not_ready_file: None,
            serving: None,
            backend: None,
        }
    }
}

/// Shared between the server tasks and the handle.
pub struct State {
    name: String,
    ready: AtomicBool,
    not_ready_file: Option<PathBuf>,
    requests: AtomicU64,
    backend: Option<Backend>,
}

impl State {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
            && !self.not_ready_file.as_ref().is_some_and(|p| p.exists())
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Flip readiness; returns the new value.
    pub fn toggle_ready(&self) -> bool {
        !self.ready.fetch_xor(true, Ordering::SeqCst)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Everything needed to serve: a bound listener, the TLS config, the state.
/// Built synchronously so that bind errors (EADDRINUSE) reach the caller.
pub struct Prepared {
    pub listener: StdTcpListener,
    pub local_addr: SocketAddr,
    pub tls: Arc<rustls::ServerConfig>,
    pub state: Arc<State>,
    pub ca_path: PathBuf,
}

/// Bind and make certificates, without serving yet.
pub fn prepare(opts: &FakeApiserverOptions) -> Result<Prepared, FakeApiserverError> {
    let pki = match &opts.serving {
        Some((crt, key)) => Pki::load(&opts.pki_dir, crt, key)?,
        None => Pki::load_or_create(&opts.pki_dir, opts.listen.ip(), &opts.extra_sans)?,
    };
    let tls = pki.server_config()?;
    // std sets SO_REUSEADDR but not SO_REUSEPORT, like kube-apiserver without
    // `--permit-port-sharing`: a wildcard bind conflicts with HAProxy's.
    let listener =
        StdTcpListener::bind(opts.listen).map_err(|source| FakeApiserverError::Bind {
            addr: opts.listen,
            source,
        })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| FakeApiserverError::Bind {
            addr: opts.listen,
            source,
        })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| FakeApiserverError::Bind {
            addr: opts.listen,
            source,
        })?;
    Ok(Prepared {
        listener,
        local_addr,
        tls: Arc::new(tls),
        state: Arc::new(State {
            name: opts.name.clone(),
            ready: AtomicBool::new(true),
            not_ready_file: opts.not_ready_file.clone(),
            requests: AtomicU64::new(0),
            backend: opts.backend.clone(),
        }),
        ca_path: pki.ca_path,
    })
}

/// Serve until `shutdown` turns true. Dropping the future closes the
/// listener; connection tasks end when `shutdown` fires too.
pub async fn serve(
    listener: StdTcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let acceptor = TlsAcceptor::from(tls);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let Ok((tcp, _peer)) = accepted else { continue };
                let acceptor = acceptor.clone();
                let state = state.clone();
                let mut shutdown = shutdown.clone();
                conns.spawn(async move {
                    tokio::select! {
                        _ = shutdown.changed() => {}
                        _ = serve_conn(acceptor, tcp, state) => {}
                    }
                });
            }
            // Reap finished connections so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.shutdown().await;
    Ok(())
}

async fn serve_conn(acceptor: TlsAcceptor, tcp: tokio::net::TcpStream, state: Arc<State>) {
    let _ = tcp.set_nodelay(true);
    let Ok(mut tls) = acceptor.accept(tcp).await else {
        return;
    };
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        // One request at a time: head, then a content-length body.
        let head_end = loop {
            if let Some(i) = find_head_end(&buf) {
                break i;
            }
            if buf.len() > 16 * 1024 {
                return;
            }
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end + 4);
        let req = parse_head(&head);
        if req.content_length > 1 << 20 {
            return;
        }
        while buf.len() < req.content_length {
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let req_body: Vec<u8> = buf.drain(..req.content_length).collect();
        state.requests.fetch_add(1, Ordering::SeqCst);
        let path = req.path.clone().unwrap_or_default();
        let (status, ctype, body) = match &state.backend {
            Some(b) if api::handles(&path) || path.starts_with("/readyz") => {
                let (b, method, bearer) = (b.clone(), req.method.clone(), req.bearer.clone());
                let st = state.clone();
                let r = tokio::task::spawn_blocking(move || {
                    if path.starts_with("/readyz") {
                        let (s, body) = respond(&st, &path);
                        if s.starts_with("200") && !api::etcd_ok(&b) {
                            return (
                                "503 Service Unavailable".to_string(),
                                "text/plain; charset=utf-8",
                                "[-]etcd failed: reason withheld\nreadyz check failed\n"
                                    .to_string(),
                            );
                        }
                        return (s.to_string(), "text/plain; charset=utf-8", body);
                    }
                    let r = api::handle(&b, &method, &path, bearer.as_deref(), &req_body);
                    (status_line(r.status), "application/json", r.body)
                })
                .await;
                match r {
                    Ok(x) => x,
                    Err(_) => return,
                }
            }
            _ => {
                let (s, b) = respond(&state, &path);
                (s.to_string(), "text/plain; charset=utf-8", b)
            }
        };
        let close = req.close;
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\n{NAME_HEADER}: {}\r\n{}\r\n{body}",
            body.len(),
            state.name,
            if close { "connection: close\r\n" } else { "" },
        );
        if tls.write_all(response.as_bytes()).await.is_err() || tls.flush().await.is_err() {
            return;
        }
        if close {
            let _ = tls.shutdown().await;
            return;
        }
    }
}

fn respond(state: &State, path: &str) -> (&'static str, String) {
    let path = path.split('?').next().unwrap_or("");
    match path {
        "/healthz" | "/livez" => ("200 OK", "ok".into()),
        "/readyz" if state.is_ready() => ("200 OK", "ok".into()),
        "/readyz" => (
            "503 Service Unavailable",
            "[-]fake-not-ready failed: reason withheld\nreadyz check failed\n".into(),
        ),
        _ => ("404 Not Found", "404 page not found\n".into()),
    }
}

fn status_line(code: u16) -> String {
    let reason = match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        422 => "Unprocessable Entity",
        _ => "Internal Server Error",
    };
    format!("{code} {reason}")
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

struct RequestHead {
    method: String,
    path: Option<String>,
    close: bool,
    content_length: usize,
    bearer: Option<String>,
}

fn parse_head(head: &str) -> RequestHead {
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or("").split_whitespace();
    let method = parts.next().unwrap_or("GET").to_string();
    let path = parts.next().map(str::to_string);
    let version = parts.next().unwrap_or("HTTP/1.0");
    let mut close = version == "HTTP/1.0";
    let mut content_length = 0;
    let mut bearer = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("connection") {
            if v.eq_ignore_ascii_case("close") {
                close = true;
            } else if v.eq_ignore_ascii_case("keep-alive") {
                close = false;
            }
        } else if k.eq_ignore_ascii_case("content-length") {
            content_length = v.parse().unwrap_or(0);
        } else if k.eq_ignore_ascii_case("authorization") {
            bearer = v.strip_prefix("Bearer ").map(str::to_string);
        }
    }
    RequestHead {
        method,
        path,
        close,
        content_length,
        bearer,
    }
}

/// A fake apiserver running on its own thread, stopped on drop: the
/// listener and every open connection are closed before `stop` returns.
pub struct FakeApiserver {
    local_addr: SocketAddr,
    state: Arc<State>,
    ca_path: PathBuf,
    shutdown: Option<watch::Sender<bool>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FakeApiserver {
    pub fn start(opts: FakeApiserverOptions) -> Result<FakeApiserver, FakeApiserverError> {
        let p = prepare(&opts)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(FakeApiserverError::Runtime)?;
        let (tx, rx) = watch::channel(false);
        let state = p.state.clone();
        let (listener, tls) = (p.listener, p.tls);
        let thread = thread::Builder::new()
            .name(format!("fake-apiserver-{}", opts.name))
            .spawn(move || {
                rt.block_on(async move {
                    let _ = serve(listener, tls, state, rx).await;
                });
            })
            .map_err(FakeApiserverError::Runtime)?;
        Ok(FakeApiserver {
            local_addr: p.local_addr,
            state: p.state,
            ca_path: p.ca_path,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `<pki_dir>/ca.crt`.
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    pub fn set_ready(&self, ready: bool) {
        self.state.set_ready(ready);
    }

    /// Requests answered so far (all paths, all connections).
    pub fn requests(&self) -> u64 {
        self.state.requests()
    }

    /// Close the listener and all connections, and wait until they are.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FakeApiserver {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

// ------------------------------------------------------------------ pki

struct Pki {
    ca_path: PathBuf,
    server_cert_pem: String,
    server_key_pem: String,
}

fn ca_params() -> Result<CertificateParams, FakeApiserverError> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_CN);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::CrlSign,
    ];
    Ok(p)
}

fn cert_err(e: rcgen::Error) -> FakeApiserverError {
    FakeApiserverError::Cert(e.to_string())
}

fn file_err(path: &Path) -> impl FnOnce(io::Error) -> FakeApiserverError + '_ {
    move |source| FakeApiserverError::File {
        path: path.to_path_buf(),
        source,
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), FakeApiserverError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(file_err(path))?;
    f.write_all(text.as_bytes()).map_err(file_err(path))
}

impl Pki {
    /// kubeadm's files: `<pki_dir>/ca.crt` and a given serving pair.
    fn load(dir: &Path, crt: &Path, key: &Path) -> Result<Pki, FakeApiserverError> {
        Ok(Pki {
            ca_path: dir.join("ca.crt"),
            server_cert_pem: fs::read_to_string(crt).map_err(file_err(crt))?,
            server_key_pem: fs::read_to_string(key).map_err(file_err(key))?,
        })
    }

    fn load_or_create(
        dir: &Path,
        ip: IpAddr,
        extra_sans: &[String],
    ) -> Result<Pki, FakeApiserverError> {
        fs::create_dir_all(dir).map_err(file_err(dir))?;
        let ca_path = dir.join("ca.crt");
        let ca_key_path = dir.join("ca.key");
        let ca_params = ca_params()?;
        // Reuse a CA with subject CN=kubernetes (ours, fake-kubeadm's or
        // kubeadm's): the issuer's name and key are all signing needs.
        let ca_key = if ca_path.exists() && ca_key_path.exists() {
            let pem = fs::read_to_string(&ca_key_path).map_err(file_err(&ca_key_path))?;
            KeyPair::from_pem(&pem).map_err(cert_err)?
        } else {
            let key = KeyPair::generate().map_err(cert_err)?;
            let cert = ca_params.self_signed(&key).map_err(cert_err)?;
            write_private(&ca_key_path, &key.serialize_pem())?;
            fs::write(&ca_path, cert.pem()).map_err(file_err(&ca_path))?;
            key
        };

        let mut sans = vec![
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ];
        if !ip.is_unspecified() {
            sans.push(ip.to_string());
        }
        for s in extra_sans {
            if !sans.contains(s) {
                sans.push(s.clone());
            }
        }
        let mut params = CertificateParams::new(sans).map_err(cert_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "kube-apiserver");
        params.distinguished_name = dn;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().map_err(cert_err)?;
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let cert = params.signed_by(&key, &issuer).map_err(cert_err)?;
        let server_cert_pem = cert.pem();
        let server_key_pem = key.serialize_pem();
        let crt_path = dir.join("apiserver.crt");
        fs::write(&crt_path, &server_cert_pem).map_err(file_err(&crt_path))?;
        write_private(&dir.join("apiserver.key"), &server_key_pem)?;
        Ok(Pki {
            ca_path,
            server_cert_pem,
            server_key_pem,
        })
    }

    fn server_config(&self) -> Result<rustls::ServerConfig, FakeApiserverError> {
        let chain = vec![
            CertificateDer::from_pem_slice(self.server_cert_pem.as_bytes())
                .map_err(|e| FakeApiserverError::Cert(e.to_string()))?,
        ];
        let key = PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes())
            .map_err(|e| FakeApiserverError::Cert(e.to_string()))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

// --------------------------------------------------------------- client

/// A blocking HTTPS client for tests: one TLS connection that trusts the
/// given CA and makes keep-alive GET requests on it (through HAProxy's TCP
/// frontend or straight to a fake apiserver).
pub struct Client {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

/// One response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Value of the `x-fake-apiserver` header.
    pub server: Option<String>,
    pub body: String,
}

impl Client {
    pub fn connect(addr: SocketAddr, ca_path: &Path, timeout: Duration) -> io::Result<Client> {
        let ca = CertificateDer::from_pem_file(ca_path)
            .map_err(|e| io::Error::other(format!("`{}`: {e}", ca_path.display())))?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).map_err(io::Error::other)?;
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = ServerName::try_from("kubernetes").expect("static name");
        let conn = rustls::ClientConnection::new(Arc::new(cfg), name).map_err(io::Error::other)?;
        let tcp = TcpStream::connect_timeout(&addr, timeout)?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        tcp.set_nodelay(true)?;
        Ok(Client {
            stream: rustls::StreamOwned::new(conn, tcp),
            buf: Vec::new(),
        })
    }

    /// `GET path` on this connection, keeping it open.
    pub fn get(&mut self, path: &str) -> io::Result<Response> {
        let req =
            format!("GET {path} HTTP/1.1\r\nhost: kubernetes\r\nuser-agent: kubeha-tests\r\n\r\n");
        self.stream.write_all(req.as_bytes())?;
        self.stream.flush()?;
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = find_head_end(&self.buf) {
                break i;
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before a response",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line in `{head}`")))?;
        let mut len = 0usize;
        let mut server = None;
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                let k = k.trim();
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case(NAME_HEADER) {
                    server = Some(v.trim().to_string());
                }
            }
        }
        while self.buf.len() < len {
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a body",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8_lossy(&self.buf[..len]).into_owned();
        self.buf.drain(..len);
        Ok(Response {
            status,
            server,
            body,
        })
    }
}

/// One request on a fresh connection.
pub fn get_once(
    addr: SocketAddr,
    ca_path: &Path,
    path: &str,
    timeout: Duration,
) -> io::Result<Response> {
    Client::connect(addr, ca_path, timeout)?.get(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(dir: &Path, name: &str) -> FakeApiserver {
        FakeApiserver::start(FakeApiserverOptions::new(
            name,
            "127.0.0.1:0".parse().unwrap(),
            dir,
        ))
        .unwrap()
    }

    #[test]
    fn endpoints_and_readiness() {
        let dir = tempfile::tempdir().unwrap();
        let s = start(dir.path(), "a");
        let t = Duration::from_secs(5);
        let mut c = Client::connect(s.local_addr(), s.ca_path(), t).unwrap();
        for p in ["/healthz", "/readyz", "/livez", "/readyz?verbose"] {
            let r = c.get(p).unwrap();
            assert_eq!((r.status, r.body.as_str()), (200, "ok"), "{p}");
            assert_eq!(r.server.as_deref(), Some("a"));
        }
        assert_eq!(c.get("/api").unwrap().status, 404);
        s.set_ready(false);
        assert_eq!(c.get("/readyz").unwrap().status, 503);
        assert_eq!(c.get("/livez").unwrap().status, 200);
        s.set_ready(true);
        assert_eq!(c.get("/readyz").unwrap().status, 200);
        assert_eq!(s.requests(), 8);
    }

    #[test]
    fn not_ready_file() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("not-ready");
        let mut o = FakeApiserverOptions::new("a", "127.0.0.1:0".parse().unwrap(), dir.path());
        o.not_ready_file = Some(flag.clone());
        let s = FakeApiserver::start(o).unwrap();
        let t = Duration::from_secs(5);
        assert_eq!(
            get_once(s.local_addr(), s.ca_path(), "/readyz", t)
                .unwrap()
                .status,
            200
        );
        fs::write(&flag, "").unwrap();
        assert_eq!(
            get_once(s.local_addr(), s.ca_path(), "/readyz", t)
                .unwrap()
                .status,
            503
        );
    }

    #[test]
    fn second_server_reuses_the_ca_and_stop_closes_connections() {
        let dir = tempfile::tempdir().unwrap();
        let a = start(dir.path(), "a");
        let ca = fs::read(a.ca_path()).unwrap();
        let b = start(dir.path(), "b");
        assert_eq!(fs::read(b.ca_path()).unwrap(), ca, "the CA is reused");
        let t = Duration::from_secs(5);
        // b's certificate verifies against the CA written by a.
        assert_eq!(
            get_once(b.local_addr(), a.ca_path(), "/readyz", t)
                .unwrap()
                .server
                .as_deref(),
            Some("b")
        );
        let mut c = Client::connect(a.local_addr(), a.ca_path(), t).unwrap();
        c.get("/readyz").unwrap();
        let addr = a.local_addr();
        let a_ca = a.ca_path().to_path_buf();
        a.stop();
        assert!(
            c.get("/readyz").is_err(),
            "open connection is closed on stop"
        );
        // Not a bare TCP connect: once the port is free, a parallel test may
        // bind it, or a loopback connect may pick it as its own source port
        // and connect to itself. Only `a` answering would be wrong.
        let answer = get_once(addr, a_ca.as_path(), "/readyz", t).ok();
        assert!(
            answer.as_ref().and_then(|r| r.server.as_deref()) != Some("a"),
            "listener of `a` is closed"
        );
    }

    #[test]
    fn bind_conflict_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let a = start(dir.path(), "a");
        let e = FakeApiserver::start(FakeApiserverOptions::new("b", a.local_addr(), dir.path()))
            .err()
            .expect("second bind must fail");
        let s = e.to_string();
        assert!(
            s.contains(&a.local_addr().to_string()) && s.contains("in use"),
            "{s}"
        );
    }
}
