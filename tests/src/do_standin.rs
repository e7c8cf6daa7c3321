//! A local stand-in for the parts of the DigitalOcean API the
//! `digitalocean` VIP provider uses, and for the droplet metadata service.
//!
//! - API over HTTPS on loopback, with a CA of its own (`ca.pem` in the given
//!   directory; the provider is pointed at it through `api_ca_file`):
//!   `GET /v2/reserved_ips/{ip}` (answered chunked),
//!   `POST /v2/reserved_ips/{ip}/actions` (`assign`, `unassign`),
//!   `GET /v2/reserved_ips/{ip}/actions/{id}` and `GET /v2/actions/{id}`.
//!   Bearer token checked (401 `unauthorized`), unknown IP or droplet 404
//!   `not_found`, an assign while an action is in progress 422
//!   `unprocessable_entity` ("pending event"), `ratelimit-*` headers on every
//!   answer. An action completes `action_latency` after it was started; only
//!   then does the IP move (the stand-in decides which droplet it routes to).
//! - Metadata over plain HTTP: `/droplet/{id}/metadata/v1/id` and
//!   `/droplet/{id}/metadata/v1/interfaces/public/0/anchor_ipv4/address`
//!   (each provider gets its droplet's prefix as its `metadata_url`).
//! - Faults, applied strictly in the order injected (the front one, when a
//!   request it applies to comes): a status (401,
//!   404, 422, 429 with `retry-after`, 5xx), a stall (for timeouts), an
//!   action that errors; a metadata service that is down (connections
//!   closed at once).
//!
//! Runs on its own thread and runtime; stopped on drop.

use std::collections::VecDeque;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// The per-token limits DigitalOcean documents (per hour; 250 per minute).
pub const RATE_LIMIT_PER_HOUR: u64 = 5000;

/// Which requests a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    GetReservedIp,
    Assign,
    GetAction,
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and DigitalOcean's error body; `retry_after`
    /// in seconds adds the header (for 429).
    Status {
        route: Route,
        status: u16,
        retry_after: Option<u64>,
    },
    /// Wait this long before answering (normally).
    Stall { route: Route, delay: Duration },
    /// The next action started errors instead of completing.
    ErrorNextAction,
}

/// One request as the stand-in saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// The request carried `Authorization: Bearer <the right token>`.
    pub authorized: bool,
    pub status: u16,
}

#[derive(Debug, Clone)]
struct ActionRec {
    id: u64,
    kind: &'static str,
    droplet: Option<u64>,
    started: Instant,
    started_unix: u64,
    latency: Duration,
    errors: bool,
    status: &'static str,
}

#[derive(Debug)]
struct World {
    token: String,
    reserved_ip: IpAddr,
    droplets: Vec<(u64, Ipv4Addr)>,
    assigned: Option<u64>,
    history: Vec<u64>,
    actions: Vec<ActionRec>,
    next_action: u64,
    latency: Duration,
    faults: VecDeque<Fault>,
    metadata_down: bool,
    seen: Vec<Seen>,
    assign_calls: Vec<AssignCall>,
    used: u64,
}

/// One `POST /v2/reserved_ips/{ip}/actions` with `"type": "assign"`, as it
/// arrived, whatever the answer (a 422 included): when a droplet *asked*.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssignCall {
    /// When the stand-in read the request.
    pub at: Instant,
    pub droplet: Option<u64>,
    /// The answer's status (201: an action started).
    pub status: u16,
}

/// An action as the stand-in ran it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionInfo {
    pub id: u64,
    pub droplet: Option<u64>,
    pub started: Instant,
    /// The action latency it was started with (it completes this long after
    /// `started`, unless it errors).
    pub latency: Duration,
    /// `in-progress`, `completed` or `errored`.
    pub status: &'static str,
}

impl World {
    /// Completes the actions whose time has come.
    fn advance(&mut self, now: Instant) {
        for a in self.actions.iter_mut() {
            if a.status == "in-progress" && now >= a.started + a.latency {
                if a.errors {
                    a.status = "errored";
                } else {
                    a.status = "completed";
                    self.assigned = a.droplet;
                    if let Some(d) = a.droplet {
                        self.history.push(d);
                    }
                }
            }
        }
    }

    fn pending(&self) -> bool {
        self.actions.iter().any(|a| a.status == "in-progress")
    }

    /// The fault at the front of the queue, if it applies to `route`:
    /// faults apply strictly in the order they were injected.
    fn take_fault(&mut self, route: Route) -> Option<Fault> {
        let applies = match self.faults.front()? {
            Fault::Status { route: r, .. } | Fault::Stall { route: r, .. } => {
                *r == route || *r == Route::Any
            }
            Fault::ErrorNextAction => false,
        };
        if applies {
            self.faults.pop_front()
        } else {
            None
        }
    }
}

#[derive(Debug, Clone)]
pub struct StandinOptions {
    pub token: String,
    pub reserved_ip: IpAddr,
    /// Droplet ids and their anchor addresses.
    pub droplets: Vec<(u64, Ipv4Addr)>,
    pub action_latency: Duration,
    /// Where `ca.pem` is written.
    pub dir: PathBuf,
    /// Address both listeners bind (port chosen by the kernel): loopback in
    /// tests, a lab address for a lab.
    pub listen: IpAddr,
}

/// The running stand-in.
pub struct DoStandin {
    api_addr: SocketAddr,
    metadata_addr: SocketAddr,
    ca_file: PathBuf,
    world: Arc<Mutex<World>>,
    shutdown: Option<watch::Sender<bool>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl DoStandin {
    pub fn start(o: StandinOptions) -> anyhow::Result<DoStandin> {
        let (ca_pem, tls) = make_tls(&o.dir, o.listen)?;
        let ca_file = o.dir.join("ca.pem");
        fs::write(&ca_file, ca_pem)?;
        let api = StdTcpListener::bind(SocketAddr::new(o.listen, 0))?;
        let metadata = StdTcpListener::bind(SocketAddr::new(o.listen, 0))?;
        api.set_nonblocking(true)?;
        metadata.set_nonblocking(true)?;
        let (api_addr, metadata_addr) = (api.local_addr()?, metadata.local_addr()?);
        let world = Arc::new(Mutex::new(World {
            token: o.token,
            reserved_ip: o.reserved_ip,
            droplets: o.droplets,
            assigned: None,
            history: Vec::new(),
            actions: Vec::new(),
            next_action: 1000,
            latency: o.action_latency,
            faults: VecDeque::new(),
            metadata_down: false,
            seen: Vec::new(),
            assign_calls: Vec::new(),
            used: 0,
        }));
        let (tx, rx) = watch::channel(false);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let w = world.clone();
        let thread = thread::Builder::new()
            .name("do-standin".into())
            .spawn(move || {
                rt.block_on(async move {
                    let api = tokio::net::TcpListener::from_std(api).expect("api listener");
                    let md = tokio::net::TcpListener::from_std(metadata).expect("md listener");
                    let acceptor = TlsAcceptor::from(Arc::new(tls));
                    let mut rx1 = rx.clone();
                    let mut rx2 = rx;
                    let w2 = w.clone();
                    let a = async move {
                        loop {
                            tokio::select! {
                                _ = rx1.changed() => break,
                                Ok((tcp, _)) = api.accept() => {
                                    let acceptor = acceptor.clone();
                                    let w = w.clone();
                                    tokio::spawn(async move {
                                        if let Ok(s) = acceptor.accept(tcp).await {
                                            serve_conn(s, w, false).await;
                                        }
                                    });
                                }
                            }
                        }
                    };
                    let m = async move {
                        loop {
                            tokio::select! {
                                _ = rx2.changed() => break,
                                Ok((tcp, _)) = md.accept() => {
                                    let w = w2.clone();
                                    tokio::spawn(serve_conn(tcp, w, true));
                                }
                            }
                        }
                    };
                    tokio::join!(a, m);
                });
            })?;
        Ok(DoStandin {
            api_addr,
            metadata_addr,
            ca_file,
            world,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    fn lock(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn api_url(&self) -> String {
        format!("https://{}", self.api_addr)
    }

    pub fn metadata_addr(&self) -> SocketAddr {
        self.metadata_addr
    }

    /// The metadata service as droplet `id` sees it.
    pub fn metadata_url(&self, id: u64) -> String {
        format!("http://{}/droplet/{id}", self.metadata_addr)
    }

    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The droplet the Reserved IP routes to now.
    pub fn assigned_to(&self) -> Option<u64> {
        let mut w = self.lock();
        w.advance(Instant::now());
        w.assigned
    }

    /// Every completed assignment, in order.
    pub fn history(&self) -> Vec<u64> {
        let mut w = self.lock();
        w.advance(Instant::now());
        w.history.clone()
    }

    pub fn set_assigned(&self, droplet: Option<u64>) {
        self.lock().assigned = droplet;
    }

    pub fn set_action_latency(&self, d: Duration) {
        self.lock().latency = d;
    }

    pub fn set_metadata_down(&self, down: bool) {
        self.lock().metadata_down = down;
    }

    pub fn inject(&self, f: Fault) {
        self.lock().faults.push_back(f);
    }

    /// Faults not consumed yet.
    pub fn faults_left(&self) -> usize {
        self.lock().faults.len()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// Every `assign` request, in arrival order, with its time and answer.
    pub fn assign_calls(&self) -> Vec<AssignCall> {
        self.lock().assign_calls.clone()
    }

    /// `assign` actions started, in order, with their droplet.
    pub fn assign_actions(&self) -> Vec<(u64, Option<u64>, String)> {
        let mut w = self.lock();
        w.advance(Instant::now());
        w.actions
            .iter()
            .filter(|a| a.kind == "assign_ip")
            .map(|a| (a.id, a.droplet, a.status.to_string()))
            .collect()
    }

    /// `assign` actions started, in order, with their times.
    pub fn assign_action_log(&self) -> Vec<ActionInfo> {
        let mut w = self.lock();
        w.advance(Instant::now());
        w.actions
            .iter()
            .filter(|a| a.kind == "assign_ip")
            .map(|a| ActionInfo {
                id: a.id,
                droplet: a.droplet,
                started: a.started,
                latency: a.latency,
                status: a.status,
            })
            .collect()
    }

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

impl Drop for DoStandin {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

struct Req {
    method: String,
    path: String,
    auth: Option<String>,
    body: Vec<u8>,
}

async fn read_req<S: AsyncRead + Unpin>(s: &mut S) -> Option<Req> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split_whitespace();
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let mut auth = None;
    let mut len = 0usize;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            if k == "authorization" {
                auth = Some(v.trim().to_string());
            } else if k == "content-length" {
                len = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(len);
    Some(Req {
        method,
        path,
        auth,
        body,
    })
}

struct Answer {
    status: u16,
    body: String,
    retry_after: Option<u64>,
    chunked: bool,
    delay: Duration,
    /// Close without an answer (metadata down).
    drop: bool,
}

impl Answer {
    fn json(status: u16, body: String) -> Answer {
        Answer {
            status,
            body,
            retry_after: None,
            chunked: false,
            delay: Duration::ZERO,
            drop: false,
        }
    }

    fn error(status: u16) -> Answer {
        let (id, message) = match status {
            401 => ("unauthorized", "Unable to authenticate you."),
            404 => (
                "not_found",
                "The resource you were accessing could not be found.",
            ),
            422 => (
                "unprocessable_entity",
                "The reserved IP already has a pending event.",
            ),
            429 => ("too_many_requests", "API Rate limit exceeded."),
            _ => ("server_error", "Unexpected server-side error"),
        };
        Answer::json(
            status,
            serde_json::json!({"id": id, "message": message}).to_string(),
        )
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `2026-12-01T22:05:00Z` from Unix seconds (the API's time format).
fn iso8601(unix: u64) -> String {
    let (days, rem) = (unix / 86_400, unix % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn action_json(a: &ActionRec) -> serde_json::Value {
    serde_json::json!({"action": {
        "id": a.id,
        "status": a.status,
        "type": a.kind,
        "started_at": iso8601(a.started_unix),
        "completed_at": serde_json::Value::Null,
        "resource_id": 0,
        "resource_type": "reserved_ip",
        "region_slug": "nyc3",
    }})
}

fn handle(w: &mut World, req: &Req, metadata: bool) -> Answer {
    let now = Instant::now();
    w.advance(now);
    let path = req.path.split('?').next().unwrap_or("").to_string();
    if metadata {
        if w.metadata_down {
            let mut a = Answer::json(0, String::new());
            a.drop = true;
            return a;
        }
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let Some(id) = (parts.len() > 2 && parts[0] == "droplet")
            .then(|| parts[1].parse::<u64>().ok())
            .flatten()
        else {
            return Answer::json(404, "not found".into());
        };
        let Some(&(_, anchor)) = w.droplets.iter().find(|(d, _)| *d == id) else {
            return Answer::json(404, "not found".into());
        };
        let rest = parts[2..].join("/");
        return match rest.as_str() {
            "metadata/v1/id" => Answer::json(200, id.to_string()),
            "metadata/v1/interfaces/public/0/anchor_ipv4/address" => {
                Answer::json(200, anchor.to_string())
            }
            _ => Answer::json(404, "not found".into()),
        };
    }
    let ip = w.reserved_ip.to_string();
    let route = match (req.method.as_str(), path.as_str()) {
        ("GET", p) if p == format!("/v2/reserved_ips/{ip}") => Route::GetReservedIp,
        ("POST", p) if p == format!("/v2/reserved_ips/{ip}/actions") => Route::Assign,
        ("GET", p)
            if p.starts_with(&format!("/v2/reserved_ips/{ip}/actions/"))
                || p.starts_with("/v2/actions/") =>
        {
            Route::GetAction
        }
        ("GET", p) | ("POST", p) if p.starts_with("/v2/reserved_ips/") => {
            return Answer::error(404);
        }
        _ => return Answer::error(404),
    };
    let mut delay = Duration::ZERO;
    match w.take_fault(route) {
        Some(Fault::Status {
            status,
            retry_after,
            ..
        }) => {
            let mut a = Answer::error(status);
            a.retry_after = retry_after;
            return a;
        }
        Some(Fault::Stall { delay: d, .. }) => delay = d,
        _ => {}
    }
    if req.auth.as_deref() != Some(&format!("Bearer {}", w.token)) {
        return Answer::error(401);
    }
    let mut a = match route {
        Route::GetReservedIp => {
            let droplet = match w.assigned {
                Some(d) => serde_json::json!({"id": d, "name": format!("droplet-{d}")}),
                None => serde_json::Value::Null,
            };
            let mut a = Answer::json(
                200,
                serde_json::json!({"reserved_ip": {
                    "ip": ip,
                    "region": {"slug": "nyc3"},
                    "droplet": droplet,
                    "locked": w.pending(),
                }})
                .to_string(),
            );
            a.chunked = true;
            a
        }
        Route::Assign => {
            let body: serde_json::Value = match serde_json::from_slice(&req.body) {
                Ok(v) => v,
                Err(_) => return Answer::error(400),
            };
            let kind = body.get("type").and_then(|t| t.as_str()).unwrap_or("");
            let droplet = body.get("droplet_id").and_then(|d| d.as_u64());
            let kind = match (kind, droplet) {
                ("assign", Some(d)) if w.droplets.iter().any(|(id, _)| *id == d) => "assign_ip",
                ("assign", _) => return Answer::error(404),
                ("unassign", _) => "unassign_ip",
                _ => return Answer::error(400),
            };
            if w.pending() {
                return Answer::error(422);
            }
            let errors = w.faults.front() == Some(&Fault::ErrorNextAction);
            if errors {
                w.faults.pop_front();
            }
            w.next_action += 1;
            let rec = ActionRec {
                id: w.next_action,
                kind,
                droplet: if kind == "assign_ip" { droplet } else { None },
                started: now,
                started_unix: unix_now(),
                latency: w.latency,
                errors,
                status: "in-progress",
            };
            w.actions.push(rec);
            w.advance(now);
            let rec = w.actions.last().cloned().expect("just pushed");
            Answer::json(201, action_json(&rec).to_string())
        }
        Route::GetAction => {
            let id = path.rsplit('/').next().and_then(|s| s.parse::<u64>().ok());
            match w.actions.iter().find(|a| Some(a.id) == id) {
                Some(a) => Answer::json(200, action_json(a).to_string()),
                None => Answer::error(404),
            }
        }
        Route::Any => unreachable!("not a route of a request"),
    };
    a.delay = delay;
    a
}

async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    w: Arc<Mutex<World>>,
    metadata: bool,
) {
    let Some(req) = read_req(&mut s).await else {
        return;
    };
    let (ans, remaining) = {
        let at = Instant::now();
        let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
        let ans = handle(&mut w, &req, metadata);
        if !metadata && req.method == "POST" && req.path.ends_with("/actions") {
            let body: Option<serde_json::Value> = serde_json::from_slice(&req.body).ok();
            let assign = body
                .as_ref()
                .and_then(|b| b.get("type"))
                .and_then(|t| t.as_str())
                == Some("assign");
            if assign {
                let droplet = body
                    .as_ref()
                    .and_then(|b| b.get("droplet_id"))
                    .and_then(|d| d.as_u64());
                w.assign_calls.push(AssignCall {
                    at,
                    droplet,
                    status: ans.status,
                });
            }
        }
        if !metadata {
            w.used += 1;
        }
        let authorized = req.auth.as_deref() == Some(&format!("Bearer {}", w.token));
        w.seen.push(Seen {
            method: req.method.clone(),
            path: req.path.clone(),
            authorized,
            status: ans.status,
        });
        (ans, RATE_LIMIT_PER_HOUR.saturating_sub(w.used))
    };
    if ans.drop {
        return;
    }
    if !ans.delay.is_zero() {
        tokio::time::sleep(ans.delay).await;
    }
    let reason = match ans.status {
        200 => "OK",
        201 => "Created",
        401 => "Unauthorized",
        404 => "Not Found",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: application/json; charset=utf-8\r\nconnection: close\r\n",
        ans.status
    );
    if !metadata {
        head.push_str(&format!(
            "ratelimit-limit: {RATE_LIMIT_PER_HOUR}\r\nratelimit-remaining: {remaining}\r\nratelimit-reset: {}\r\n",
            unix_now() + 60
        ));
    }
    if let Some(r) = ans.retry_after {
        head.push_str(&format!("retry-after: {r}\r\n"));
    }
    let mut out = head.into_bytes();
    if ans.chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
        for part in ans.body.as_bytes().chunks(16) {
            out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            out.extend_from_slice(part);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
    } else {
        out.extend_from_slice(format!("content-length: {}\r\n\r\n", ans.body.len()).as_bytes());
        out.extend_from_slice(ans.body.as_bytes());
    }
    let _ = s.write_all(&out).await;
    let _ = s.flush().await;
    let _ = s.shutdown().await;
}

/// A CA and a serving certificate for `ip`, 127.0.0.1 and localhost;
/// returns the CA's PEM.
fn make_tls(dir: &Path, ip: IpAddr) -> anyhow::Result<(String, rustls::ServerConfig)> {
    fs::create_dir_all(dir)?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "kubeha test DigitalOcean stand-in CA");
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let mut sans = vec!["127.0.0.1".to_string(), "localhost".into()];
    if !sans.contains(&ip.to_string()) {
        sans.push(ip.to_string());
    }
    let mut leaf = CertificateParams::new(sans)?;
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &Issuer::from_params(&ca, &ca_key))?;
    let chain = vec![CertificateDer::from_pem_slice(cert.pem().as_bytes())?];
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())?;
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    Ok((ca_cert.pem(), cfg))
}

/// Waits (polling the stand-in, not sleeping blind) until `f` holds or
/// `timeout` passes; returns whether it held.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso8601_dates() {
        assert_eq!(super::iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::iso8601(1_444_931_833), "2015-10-15T17:57:13Z");
        assert_eq!(super::iso8601(951_782_400), "2000-02-29T00:00:00Z");
    }
}
