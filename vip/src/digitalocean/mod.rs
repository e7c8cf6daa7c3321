//! Provider `digitalocean`: the VIP is a DigitalOcean Reserved IP, moved to
//! the lease holder through the DigitalOcean API. A layer-2 VIP with
//! gratuitous ARP does not move traffic inside a cloud VPC; the cloud routes
//! a Reserved IP to one droplet at a time (to its *anchor* address), so there
//! is nothing to add to or remove from an interface.
//!
//! `acquire` never waits on the cloud: it checks the token file, then starts
//! the assignment on a background task (metadata → check → `assign` →
//! follow the action, each failure retried by [`policy`]) and returns. What
//! the task is doing is visible through [`DoVip::status`] (and
//! [`VipProvider::provider_status`]): `pending`, `assigned` or `failed`, the
//! reason, the last action, its status and age. `release` stops the task;
//! the next holder's `assign` moves the IP.
//!
//! Decisions live in [`policy`] (pure, time as an input); this module only
//! makes the calls ([`api`], over the small client in [`http`]) and sleeps.

pub mod api;
pub mod http;
pub mod policy;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kubeha_core::api::{ProviderAction, VipProviderStatus};
use kubeha_core::config::{DigitalOceanConfig, VipConfig};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::{Change, VipError, VipProvider};
use api::{Api, read_token};
use http::{Client, Secret, Url};
use policy::{Assigner, Call, Cmd, Event, State, Timing};

/// The metadata service every droplet reaches.
pub const METADATA_URL: &str = "http://169.254.169.254";

/// How often a task past its lease deadline looks again.
const LATE_WAIT: Duration = Duration::from_millis(100);

/// A held IP is checked again (one `GET`) at most this often when the agent
/// asks to re-announce, so an IP moved by hand comes back.
pub const VERIFY_EVERY: Duration = Duration::from_secs(60);

/// Per-call metrics hook: the agent implements it on its Prometheus
/// registry (`call`: `metadata`, `get_reserved_ip`, `assign`, `get_action`;
/// `outcome`: `ok`, `unauthorized`, `not_found`, `busy`, `rate_limited`,
/// `server_error`, `client_error`, `timeout`, `transport`).
pub trait ApiObserver: Send + Sync {
    fn observe(&self, call: &'static str, outcome: &'static str, latency: Duration);
}

#[derive(Debug, thiserror::Error)]
pub enum DoError {
    #[error("DigitalOcean token file `{path}`: {message}")]
    Token { path: PathBuf, message: String },
    #[error(
        "DigitalOcean token file `{path}` has mode {mode:o}: group and others must not be able to read it (chmod 600)"
    )]
    TokenMode { path: PathBuf, mode: u32 },
    #[error("`vip.{key}`: {message}")]
    Config { key: &'static str, message: String },
    #[error("Reserved IP {ip} is not wanted by this node (the lease is not held)")]
    NotHeld { ip: IpAddr },
    #[error("{0}")]
    Call(String),
}

/// Everything the provider needs; [`DoVipOptions::from_config`] fills it
/// from `[vip]`.
#[derive(Clone)]
pub struct DoVipOptions {
    pub reserved_ip: IpAddr,
    pub token_file: PathBuf,
    pub api_url: String,
    pub metadata_url: String,
    /// CA bundle for the API (PEM); `None`: the system bundle.
    pub ca_file: Option<PathBuf>,
    /// Deadline of one HTTP exchange.
    pub call_timeout: Duration,
    pub timing: Timing,
    pub observer: Option<Arc<dyn ApiObserver>>,
}

impl DoVipOptions {
    pub fn from_config(c: &DigitalOceanConfig) -> Self {
        DoVipOptions {
            reserved_ip: c.reserved_ip,
            token_file: c.token_file.clone(),
            api_url: c.api_url.clone(),
            metadata_url: c.metadata_url.clone(),
            ca_file: c.ca_file.clone(),
            call_timeout: Duration::from_secs(10),
            timing: Timing::default(),
            observer: None,
        }
    }
}

/// The provider for a validated `digitalocean` `[vip]`, reporting its calls
/// to `observer` (the agent's metrics).
pub fn from_config(
    cfg: &VipConfig,
    observer: Option<Arc<dyn ApiObserver>>,
) -> Result<Box<dyn VipProvider>, VipError> {
    let d = cfg.digitalocean.as_ref().ok_or(DoError::Config {
        key: "reserved_ip",
        message: "is required for provider \"digitalocean\"".into(),
    })?;
    let mut o = DoVipOptions::from_config(d);
    o.observer = observer;
    Ok(Box::new(DoVip::new(o)?))
}

/// What the background task last saw, for status. Times are ages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoStatus {
    /// `idle` (not wanted), `pending`, `assigned`, `failed`.
    pub state: State,
    pub reason: Option<String>,
    pub droplet_id: Option<u64>,
    pub assigned_to: Option<u64>,
    pub last_action: Option<(policy::Action, Duration)>,
}

struct Shared {
    machine: Assigner,
    /// The lease holder wants the IP (between `acquire` and `release`).
    wanted: bool,
    task: Option<JoinHandle<()>>,
    last_verify: Option<Instant>,
    /// The lease's end as the agent last gave it: no `assign` after it.
    deadline: Option<Instant>,
}

/// The `digitalocean` provider.
pub struct DoVip {
    api: Api,
    token_file: PathBuf,
    epoch: Instant,
    shared: Arc<Mutex<Shared>>,
}

impl std::fmt::Debug for DoVip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DoVip")
            .field("reserved_ip", &self.api.reserved_ip)
            .field("api", &self.api.api)
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

impl DoVip {
    pub fn new(o: DoVipOptions) -> Result<DoVip, DoError> {
        let api = Url::parse(&o.api_url).map_err(|message| DoError::Config {
            key: "api_url",
            message,
        })?;
        let metadata = Url::parse(&o.metadata_url).map_err(|message| DoError::Config {
            key: "metadata_url",
            message,
        })?;
        let http = Client::new(o.ca_file.as_deref()).map_err(|e| DoError::Config {
            key: "api_ca_file",
            message: e.to_string(),
        })?;
        Ok(DoVip {
            api: Api {
                http,
                api,
                metadata,
                reserved_ip: o.reserved_ip,
                timeout: o.call_timeout,
                observer: o.observer,
            },
            token_file: o.token_file,
            epoch: Instant::now(),
            shared: Arc::new(Mutex::new(Shared {
                machine: Assigner::new(o.timing),
                wanted: false,
                task: None,
                last_verify: None,
                deadline: None,
            })),
        })
    }

    pub fn reserved_ip(&self) -> IpAddr {
        self.api.reserved_ip
    }

    /// The task's view right now.
    pub fn status(&self) -> DoStatus {
        let now = self.epoch.elapsed();
        let s = self.lock();
        let m = &s.machine;
        DoStatus {
            state: if s.wanted { m.state } else { State::Idle },
            reason: m.reason.clone(),
            droplet_id: m.droplet_id,
            assigned_to: m.assigned_to,
            last_action: m
                .last_action
                .clone()
                .map(|a| (a, now.saturating_sub(m.last_action_at.unwrap_or(now)))),
        }
    }

    /// This droplet's anchor address, for HAProxy's bind (asks the metadata
    /// service; the agent calls it once at start, off its main loop).
    pub async fn anchor_ipv4(&self) -> Result<Ipv4Addr, DoError> {
        self.api
            .anchor_ipv4()
            .await
            .map_err(|f| DoError::Call(f.message))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a round on the background task unless one runs.
    fn start_round(&self, s: &mut Shared, token: Secret) -> bool {
        if s.task.as_ref().is_some_and(|t| !t.is_finished()) {
            return false;
        }
        let now = self.epoch.elapsed();
        let first = s.machine.step(now, unix_now(), Event::Start);
        let shared = Arc::clone(&self.shared);
        let api = self.api.clone();
        let epoch = self.epoch;
        s.task = Some(tokio::spawn(run(api, token, shared, epoch, first)));
        true
    }

    fn verify(&self) -> Result<(), VipError> {
        let mut s = self.lock();
        if !s.wanted {
            return Err(DoError::NotHeld {
                ip: self.api.reserved_ip,
            }
            .into());
        }
        if s.last_verify.is_some_and(|t| t.elapsed() < VERIFY_EVERY) {
            return Ok(());
        }
        let token = read_token(&self.token_file)?;
        if self.start_round(&mut s, token) {
            s.last_verify = Some(Instant::now());
        }
        Ok(())
    }
}

/// The metadata path of a droplet's anchor address.
pub const ANCHOR_PATH: &str = "/metadata/v1/interfaces/public/0/anchor_ipv4/address";

/// This droplet's anchor address from the metadata service of `c`, for
/// HAProxy's bind: `attempts` tries, `pause` apart (the agent asks once at
/// start, before it binds anything). The error names the URL it asked.
pub async fn lookup_anchor_ipv4(
    c: &DigitalOceanConfig,
    attempts: u32,
    pause: Duration,
) -> Result<Ipv4Addr, DoError> {
    let mut o = DoVipOptions::from_config(c);
    o.call_timeout = Duration::from_secs(3);
    let p = DoVip::new(o)?;
    let mut last = None;
    for i in 0..attempts.max(1) {
        if i > 0 {
            tokio::time::sleep(pause).await;
        }
        match p.anchor_ipv4().await {
            Ok(ip) => return Ok(ip),
            Err(e) => last = Some(e),
        }
    }
    let e = last.map_or_else(|| "no answer".to_string(), |e| e.to_string());
    Err(DoError::Call(format!(
        "the anchor address from `{}{ANCHOR_PATH}` (`vip.metadata_url`): {e}",
        c.metadata_url.trim_end_matches('/')
    )))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The background task: carries out the state machine's commands until it
/// says `Done`. `release` aborts it.
async fn run(api: Api, token: Secret, shared: Arc<Mutex<Shared>>, epoch: Instant, first: Cmd) {
    let lock = || shared.lock().unwrap_or_else(|p| p.into_inner());
    let mut cmd = first;
    loop {
        let event = match cmd {
            Cmd::Done => {
                let s = lock();
                info!(
                    reserved_ip = %api.reserved_ip,
                    droplet = s.machine.droplet_id.unwrap_or(0),
                    action = s.machine.last_action.as_ref().map(|a| a.id).unwrap_or(0),
                    "reserved IP assigned to this droplet"
                );
                return;
            }
            Cmd::SleepUntil(t) => {
                tokio::time::sleep_until(epoch + t).await;
                Event::Woke
            }
            Cmd::Do(Call::Metadata) => Event::Metadata(api.droplet_id().await),
            Cmd::Do(Call::Check) => Event::Check(api.current(&token).await),
            Cmd::Do(Call::Assign) => {
                let (droplet, late) = {
                    let s = lock();
                    let late = s.deadline.is_some_and(|d| Instant::now() >= d);
                    (s.machine.droplet_id, late)
                };
                if late {
                    // The lease ran out and the agent has not stepped yet
                    // (it was frozen, say): moving the IP now could take
                    // it from the next holder. Wait for a renewal or the
                    // release that ends this task.
                    tokio::time::sleep(LATE_WAIT).await;
                    continue;
                }
                match droplet {
                    Some(d) => Event::Assign(api.assign(&token, d).await),
                    None => Event::Start,
                }
            }
            Cmd::Do(Call::Poll(id)) => Event::Poll(api.action(&token, id).await),
        };
        let mut s = lock();
        let before = s.machine.state;
        cmd = s.machine.step(epoch.elapsed(), unix_now(), event);
        if let Cmd::SleepUntil(_) = cmd
            && let Some(reason) = &s.machine.reason
            && s.machine.failures > 0
            && (before != s.machine.state
                || s.machine.failures == 1
                || s.machine.failures % 10 == 0)
        {
            warn!(reserved_ip = %api.reserved_ip, state = %s.machine.state, reason = %reason, "reserved IP not assigned yet");
        }
    }
}

#[async_trait::async_trait]
impl VipProvider for DoVip {
    /// Starts assigning the Reserved IP to this droplet and returns at once.
    /// Fails only when it cannot even start: the token file is missing or
    /// readable by others.
    async fn acquire(&self) -> Result<Change, VipError> {
        let token = read_token(&self.token_file)?;
        let mut s = self.lock();
        let was_wanted = s.wanted;
        s.wanted = true;
        if was_wanted && s.machine.state == State::Assigned {
            return Ok(Change::Unchanged);
        }
        let started = self.start_round(&mut s, token);
        s.last_verify = Some(Instant::now());
        Ok(if started || !was_wanted {
            Change::Changed
        } else {
            Change::Unchanged
        })
    }

    /// Stops the background task. Nothing to remove locally: the next
    /// holder's assignment moves the IP. Never fails.
    async fn release(&self) -> Result<Change, VipError> {
        let mut s = self.lock();
        let was = s.wanted;
        s.wanted = false;
        if let Some(t) = s.task.take() {
            t.abort();
        }
        // An assigned IP stays ours until the next holder's action
        // completes (status says so through `assigned_to`); the next acquire
        // checks again. A failure reason is no longer news.
        s.machine.state = State::Idle;
        s.machine.reason = None;
        Ok(if was {
            Change::Changed
        } else {
            Change::Unchanged
        })
    }

    /// Assigned to this droplet, as far as the last call showed.
    async fn is_held(&self) -> Result<bool, VipError> {
        let s = self.lock();
        Ok(s.wanted && s.machine.state == State::Assigned)
    }

    async fn announce(&self) -> Result<(), VipError> {
        self.verify()
    }

    async fn refresh(&self) -> Result<(), VipError> {
        self.verify()
    }

    fn describe(&self) -> String {
        format!("digitalocean reserved IP {}", self.api.reserved_ip)
    }

    fn set_lease_deadline(&self, remaining: Option<Duration>) {
        self.lock().deadline = remaining.map(|d| Instant::now() + d);
    }

    fn assignment(&self) -> Option<policy::Assignment> {
        let s = self.lock();
        Some(if s.wanted {
            s.machine.assignment()
        } else {
            policy::Assignment::Idle
        })
    }

    fn provider_status(&self) -> Option<VipProviderStatus> {
        let st = self.status();
        Some(VipProviderStatus {
            kind: "digitalocean".into(),
            state: st.state.as_str().into(),
            reason: st.reason,
            reserved_ip: Some(self.api.reserved_ip.to_string()),
            droplet_id: st.droplet_id,
            assigned_to: st.assigned_to,
            last_action: st.last_action.map(|(a, age)| ProviderAction {
                id: a.id,
                status: a.status.as_str().to_string(),
                age_secs: age.as_secs(),
            }),
        })
    }
}
