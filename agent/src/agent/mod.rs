//! The agent's main loop: the shell around the decision core.
//!
//! One task owns all state and reacts to one event at a time: a membership
//! refresh, a lease/lock datagram, a timer of the core, an API request, a
//! signal. Decisions are the core's ([`Node`]); this loop gathers inputs and
//! carries out the effects, in order, each finished before the next: the VIP
//! is gone before a release leaves, a vote is on disk before its reply leaves.
//! Long work (kubeadm, etcd, cloud calls) runs as jobs beside the loop and
//! comes back as `Input::JobDone`.
//!
//! - `effects.rs`: the effect executor ([`effects::Effects`]) over small I/O
//!   traits, unit-tested with fakes.
//! - `status.rs`: the status document and the metrics that follow the core.
//! - `membership.rs`: logs and metrics of membership changes.

mod effects;
mod membership;
mod status;

pub use effects::{Effects, FailStop, LOCK_FILE, PeerSender, Persister, Publisher};

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kubeha_core::api::{Request, Response};
use kubeha_core::config::{Config, VipProviderKind};
use kubeha_core::frame::{self, Channel, DropReason, Rings, Tier};
use kubeha_core::membership::{LbHealth, MembershipView};
use kubeha_core::node::{Effect, Input, Node, NodeParams, Persisted};
use kubeha_core::timing::Timing;
use kubeha_core::wire::{self, PeerMsg};
use kubeha_vip::{Announce, VipProvider};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::api::{self as api_server, ApiCall};
use crate::clock;
use crate::gossip::{EncryptedTransport, Gossip, initial_keys};
use crate::haproxy::HaproxyOptions;
use crate::jobs::{JobReport, JobRunner, NodeWork};
use crate::lb::{LbReport, LbWorker};
use crate::metrics::{self, Metrics};
use crate::net::{FrameSocket, Identity, Inbound};
use crate::state::{self, LoadError, StateDir};
use crate::watchdog::LeaseWatchdog;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// While holding, re-announce the VIP this often (clients whose ARP entry
/// expired re-resolve anyway; this covers switches that forgot the MAC).
const VIP_REFRESH: Duration = Duration::from_secs(30);

/// Everything the loop owns.
struct Agent {
    config: Config,
    timing: Timing,
    metrics: Arc<Metrics>,
    frames: Arc<FrameSocket>,
    gossip: Arc<Gossip>,
    node: Node,
    /// Carries out the core's effects (VIP, sends, state file, gossip
    /// keys, job starts).
    fx: Effects,
    /// Removes the VIP at the lease deadline if this loop is late.
    watchdog: Option<LeaseWatchdog>,
    view: MembershipView,
    holder_seen: Option<String>,
    /// The bootstrap lock phase last logged.
    lock_phase_seen: &'static str,
    /// The local HAProxy (lb nodes with `[haproxy]`).
    lb: Option<LbWorker>,
    lb_report: Option<LbReport>,
    preflight: Option<crate::hostprep::PreflightWorker>,
    /// etcd as etcd reports it (control planes with `[kubernetes]`).
    etcd: Option<crate::etcd::EtcdWatcher>,
    /// What the core was last told about the cloud assignment, and whether
    /// the node held the VIP then (`Input::VipAssignment`).
    assignment_sent: Option<(kubeha_core::lease::Assignment, bool)>,
    /// Cloud faults already counted in the metrics.
    cloud_faults_seen: u64,
    /// What the core was last told about kubeadm on this node.
    kube_facts: Option<kubeha_core::kube::KubeFacts>,
    /// The member view for the join server and the join jobs.
    members_tx: tokio::sync::watch::Sender<MembershipView>,
    /// Dropped (or set) at stop: the join server closes.
    _join_stop: tokio::sync::watch::Sender<bool>,
}

/// Run until SIGTERM/SIGINT. Binds in a fixed order so the first failure
/// names what could not be bound: metrics, gossip socket, API socket.
pub async fn run(mut config: Config, keyring: Rings) -> anyhow::Result<()> {
    let timing = config.timing.timing();
    let state_dir = StateDir::open(&config.state_dir)?;
    let persisted = load_persisted(&state_dir)?;
    let generation = state_dir.next_generation(clock::unix_ms() * 1000)?;
    let metrics = Metrics::new(&config.node_name, VERSION);

    let vip = vip_provider(&config, &timing, &metrics)?;
    if let Some(v) = &vip {
        // A VIP left by a crashed predecessor must not linger: this node's
        // kernel would keep answering ARP for it.
        match v.release().await {
            Ok(c) if c.is_changed() => {
                warn!(vip = %v.describe(), "removed a VIP left on this node by an earlier run")
            }
            Ok(_) => {}
            Err(e) => anyhow::bail!("cannot make sure the VIP is not on this node at start: {e}"),
        }
    }

    anchor_frontend(&mut config).await?;

    metrics::serve(config.metrics_addr, metrics.clone()).await?;
    let frames = FrameSocket::bind(
        config.gossip_addr(),
        keyring,
        &config.cluster,
        Identity {
            name: config.node_name.clone(),
            generation,
            epoch: timing.lease,
        },
        metrics.clone(),
    )
    .await?;
    let (gossip_tx, gossip_rx) = mpsc::channel(1024);
    let (lease_tx, mut lease_rx) = mpsc::channel(1024);
    frames.spawn_reader(gossip_tx, lease_tx);
    let (api_tx, mut api_rx) = mpsc::channel::<ApiCall>(64);
    api_server::serve(&config.socket, api_tx).await?;

    // VIP-only lb nodes are healthy while the agent runs; with HAProxy,
    // healthy once it runs with a server UP.
    let lb = match (
        config.has_role(kubeha_core::config::Role::Lb),
        &config.haproxy,
    ) {
        (false, _) => LbHealth::None,
        (true, None) => LbHealth::Healthy,
        (true, Some(_)) => LbHealth::Unhealthy,
    };
    let mut initial = initial_keys(&config, lb);
    // The join channel (docs/join.md): every node with `[kubernetes]` has a
    // TLS identity whose fingerprint gossip carries.
    let identity = match &config.kubernetes {
        Some(_) => {
            let id = crate::join::Identity::load_or_create(&config.state_dir, &config.node_name)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            initial.push(crate::join::published_fingerprint(&id));
            Some(Arc::new(id))
        }
        None => None,
    };
    let (members_tx, members_rx) = tokio::sync::watch::channel(MembershipView::default());
    let transport = EncryptedTransport::new(frames.clone(), metrics.clone(), gossip_rx);
    let gossip = Arc::new(Gossip::start(&config, generation, &timing, transport, initial).await?);
    let (join_stop, join_stop_rx) = tokio::sync::watch::channel(false);
    if let (Some(id), Some(source), true) = (
        &identity,
        crate::join::KubeadmSource::from_config(&config),
        config.has_role(kubeha_core::config::Role::ControlPlane),
    ) {
        // Joined control planes hand out material; `authorize` refuses
        // while this node has not joined.
        let server = crate::join::JoinServer::bind(
            config.join_addr(),
            &config.node_name,
            id,
            members_rx.clone(),
            Arc::new(source),
            crate::join::ServerLimits::default(),
        )
        .await?;
        tokio::spawn(server.run(join_stop_rx));
    }
    let work: Arc<dyn crate::jobs::JobWork> = if let Some(id) = identity.clone() {
        let fetch = crate::kube_jobs::TlsJoinFetch {
            node: config.node_name.clone(),
            identity: id,
            members: members_rx.clone(),
            join_port: config.join_port,
        };
        Arc::new(crate::kube_jobs::KubeWork::new(
            config.clone(),
            // Under systemd: each command in a transient unit, outside
            // the agent's sandbox (crate::transient).
            crate::transient::for_agent(),
            Arc::new(fetch),
            metrics.clone(),
        ))
    } else {
        Arc::new(NodeWork {
            metrics: metrics.clone(),
        })
    };
    let (jobs, mut job_rx) = JobRunner::new(work, crate::jobs::MAX_CONCURRENT);

    let incarnation = rand::random();
    let params = NodeParams {
        name: config.node_name.clone(),
        voters: config.voters.clone(),
        timing,
        vip_priority: config
            .vip
            .as_ref()
            .filter(|_| config.is_vip_candidate())
            .map(|v| v.priority),
        incarnation,
        persisted,
        cloud: config
            .vip
            .as_ref()
            .filter(|_| config.is_vip_candidate())
            .and_then(|v| v.digitalocean.as_ref())
            .map(|d| kubeha_core::lease::CloudTiming {
                assign_timeout: d.assign_timeout,
            }),
    };
    let (node, mut effects) = Node::new(params, clock::now());
    let lb_worker = config.haproxy.as_ref().map(|h| {
        let etc = config.kubernetes.as_ref().map(|k| k.etc_dir.as_path());
        LbWorker::spawn(HaproxyOptions::new(h.clone(), etc), metrics.clone())
    });
    info!(
        node = %config.node_name,
        cluster = %config.cluster,
        generation,
        addr = %config.gossip_addr(),
        timing = config.timing.as_str(),
        voter = config.is_voter(),
        vip_candidate = config.is_vip_candidate(),
        keys = ?frames.key_ids(),
        control_keys = ?frames.control_key_ids(),
        "agent started"
    );
    if config.control_key_file.is_none() && config.control_public_keys.is_empty() {
        warn!(
            key = "control_public_keys",
            file = %config.path.display(),
            "no control public key: this node cannot verify role proofs and believes any member's control-plane and lb claims (set control_public_keys; `kubeha-ctl keygen --public-of` prints them)"
        );
    }

    let watchdog = vip
        .as_ref()
        .and_then(|_| watchdog_for(&config, incarnation));
    let fx = Effects::new(
        vip,
        Box::new(effects::FrameSender(frames.clone())),
        Box::new(effects::GossipPublisher(gossip.clone())),
        Box::new(state_dir),
        Box::new(jobs),
        metrics.clone(),
    );
    let preflight = crate::hostprep::PreflightWorker::spawn_for(&config);
    let etcd = crate::etcd::EtcdWatcher::start(&config);
    let mut agent = Agent {
        config,
        timing,
        metrics,
        frames,
        gossip,
        node,
        fx,
        watchdog,
        view: MembershipView::default(),
        holder_seen: None,
        lock_phase_seen: "idle",
        lb: lb_worker,
        lb_report: None,
        preflight,
        etcd,
        assignment_sent: None,
        cloud_faults_seen: 0,
        kube_facts: None,
        members_tx,
        _join_stop: join_stop,
    };
    if agent.lb.is_some() {
        // Not a VIP candidate until HAProxy runs with a server UP.
        effects.extend(
            agent
                .node
                .step(clock::now(), Input::LocalHealth { lb_healthy: false }),
        );
    }
    agent.run_effects(effects).await;
    agent.report_kube_facts().await;

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut refresh = tokio::time::interval(agent.timing.gossip_interval);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        let wake = agent.node.next_wakeup().map(clock::until);
        tokio::select! {
            biased;
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            // The core's deadlines first: a lease that ends must end on time.
            _ = sleep_opt(wake) => agent.step(Input::Tick).await,
            Some(inbound) = lease_rx.recv() => agent.on_datagram(inbound).await,
            _ = refresh.tick() => agent.refresh().await,
            Some(report) = lb_report(&mut agent.lb) => agent.on_lb_report(report).await,
            Some(JobReport { id, outcome, .. }) = job_rx.recv() => {
                // The files a job changed first, then its outcome.
                agent.report_kube_facts().await;
                agent.step(Input::JobDone { id, outcome }).await
            }
            minor = crate::hostprep::PreflightWorker::minor_changed(&mut agent.preflight) => {
                agent.step(Input::KubeadmMinor(minor)).await;
            }
            Some(call) = api_rx.recv() => {
                // Preflight is answered by its own thread, not the loop.
                if let Some(call) = crate::hostprep::intercept(&agent.preflight, call) {
                    let response = agent.answer(call.request).await;
                    let _ = call.reply.send(response);
                }
            }
            _ = sighup.recv() => agent.reload_key().await,
        }
    }
    agent.stop().await;
    Ok(())
}

/// The next HAProxy report, if this node runs HAProxy (never otherwise).
async fn lb_report(lb: &mut Option<LbWorker>) -> Option<LbReport> {
    match lb {
        Some(w) => match w.reports.recv().await {
            Some(r) => Some(r),
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

fn load_persisted(dir: &StateDir) -> Result<Option<Persisted>, LoadError> {
    let Some(bytes) = dir.read(LOCK_FILE)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| LoadError::State {
        path: dir.path(LOCK_FILE),
        message: format!(
            "unreadable bootstrap-lock state ({e}); the agent will not guess a lost vote: restore the file, \
             or move it away to start this voter without state (docs/PROTOCOL.md, amnesia)"
        ),
    })
}

fn watchdog_for(config: &Config, incarnation: u64) -> Option<LeaseWatchdog> {
    let link = crate::guard::take_link()?;
    // Sealed releases open while the recipient's epoch they echo is recent
    // (`frame::MAX_EPOCH_LAG` leases) and their counter is within the
    // receiver's window: seal them again twice a lease.
    let reseal_every = config.timing.timing().lease / 2;
    Some(LeaseWatchdog::connect(
        link,
        &config.node_name,
        incarnation,
        reseal_every,
    ))
}

fn vip_provider(
    config: &Config,
    timing: &Timing,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Option<Box<dyn VipProvider>>> {
    let Some(vip) = config.vip.as_ref().filter(|_| config.is_vip_candidate()) else {
        return Ok(None);
    };
    let provider = match vip.provider {
        VipProviderKind::Digitalocean => {
            let observer: Arc<dyn kubeha_vip::digitalocean::ApiObserver> = metrics.clone();
            kubeha_vip::digitalocean::from_config(vip, Some(observer))
        }
        // A finite kernel lifetime, renewed while holding: the address goes by
        // itself when every kubeha process on this node is frozen or dead.
        VipProviderKind::Arp => kubeha_vip::from_config(
            vip,
            Announce::default(),
            Some(crate::guard::kernel_lifetime(timing)),
        ),
    };
    provider
        .map(Some)
        .with_context(|| format!("`vip` in {}", config.path.display()))
}

/// Provider `digitalocean` without `haproxy.frontend`: HAProxy binds this
/// droplet's anchor address, where the Reserved IP's traffic arrives. Looked
/// up once, before anything binds; without it the agent does not start (the
/// error names the metadata URL, and `haproxy.frontend` as the way out).
pub async fn anchor_frontend(config: &mut Config) -> anyhow::Result<()> {
    let Some(h) = config.haproxy.as_mut().filter(|h| h.frontend_anchor) else {
        return Ok(());
    };
    let Some(d) = config.vip.as_ref().and_then(|v| v.digitalocean.as_ref()) else {
        return Ok(());
    };
    let ip = kubeha_vip::digitalocean::lookup_anchor_ipv4(d, 5, Duration::from_secs(1))
        .await
        .with_context(|| {
            format!(
                "`haproxy.frontend` in {} is left out, so HAProxy binds this droplet's anchor address, \
                 which the metadata service did not give (set `haproxy.frontend` to bind another address)",
                config.path.display()
            )
        })?;
    h.frontend.set_ip(std::net::IpAddr::V4(ip));
    info!(frontend = %h.frontend, "haproxy binds the droplet's anchor address (metadata service)");
    Ok(())
}

/// Exit 70: see `FailStop`.
fn fail_stop(e: FailStop) -> ! {
    error!(error = %e, "fail-stop");
    std::process::exit(70);
}

impl Agent {
    /// Step the core, carry out its effects, then step again with what the
    /// effects reported (each input after the previous batch, never nested).
    async fn step(&mut self, input: Input) {
        let mut inputs = VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            let effects = self.node.step(clock::now(), input);
            self.arm_watchdog();
            inputs.extend(self.execute(effects).await);
            inputs.extend(self.check_watchdog().await);
            inputs.extend(self.assignment_input());
        }
        self.observe();
    }

    /// Effects that did not come from `step` (those of `Node::new`).
    async fn run_effects(&mut self, effects: Vec<Effect>) {
        let inputs = self.execute(effects).await;
        for input in inputs {
            self.step(input).await;
        }
    }

    async fn execute(&mut self, effects: Vec<Effect>) -> Vec<Input> {
        match self.fx.execute(effects, &self.view).await {
            Ok(feedback) => feedback,
            Err(e) => fail_stop(e),
        }
    }

    fn arm_watchdog(&mut self) {
        if let Some(w) = &mut self.watchdog {
            w.arm(self.node.vip_deadline());
        }
        // A cloud provider moves the address only while the lease is valid.
        if let Some(v) = &self.fx.vip {
            v.set_lease_deadline(self.node.vip_deadline().map(clock::until));
        }
    }

    /// If the guardian removed the VIP while the core (after a renewal that
    /// raced it) still holds, re-arm and put it back; else record that it is
    /// gone. While holding, keep the kernel lifetime and the guardian's
    /// releases fresh. Returns `VipFault` if putting it back failed.
    async fn check_watchdog(&mut self) -> Option<Input> {
        let Some(w) = &mut self.watchdog else {
            return None;
        };
        let fired = w.take_fired();
        if w.lost() {
            error!("the VIP guardian is gone; removing the VIP and stopping (fail-stop)");
            if let Err(e) = self.fx.remove_vip().await {
                fail_stop(e);
            }
            std::process::exit(70);
        }
        let now = clock::now();
        if fired {
            self.fx.vip_up = false;
            self.metrics.vip_held.set(0);
            if self.node.holds_vip(now) {
                // Armed before the address goes back: the guardian removes a
                // VIP that appears while no deadline is armed.
                self.arm_watchdog();
                if !self.fx.add_vip().await {
                    return Some(Input::VipFault);
                }
            }
            return None;
        }
        if !self.fx.vip_up || !self.node.holds_vip(now) {
            return None;
        }
        if w.renew_due(now)
            && let Some(vip) = &self.fx.vip
            && let Err(e) = vip.renew().await
        {
            warn!(vip = %vip.describe(), error = %e, "restarting the VIP's kernel lifetime failed");
        }
        self.hand_guardian_releases(now);
        None
    }

    /// Sealed releases for the guardian to send to the other voters if this
    /// agent dies holding the VIP.
    fn hand_guardian_releases(&mut self, now: kubeha_core::time::Time) {
        let Some(w) = &mut self.watchdog else { return };
        let voters: Vec<(&str, std::net::SocketAddr)> = self
            .config
            .voters
            .iter()
            .filter(|v| **v != self.config.node_name)
            .filter_map(|v| Some((v.as_str(), self.view.get(v)?.addr)))
            .collect();
        let addrs: Vec<std::net::SocketAddr> = voters.iter().map(|(_, a)| *a).collect();
        if !w.releases_due(now, &addrs) {
            return;
        }
        let payload = w.release_payload();
        // Addressed to each voter's current run, like every lease frame.
        let tier = self.frames.top_tier();
        let frames = voters
            .iter()
            .filter_map(|(name, a)| {
                let sealed = self
                    .frames
                    .seal(*a, Channel::Lease, tier, Some(name), &payload)
                    .ok()?;
                Some((*a, sealed))
            })
            .collect();
        w.set_releases(now, frames);
    }

    /// A lease-channel frame, authenticated and replay-checked by the
    /// socket. `from` is the sender named in the frame (never the name
    /// inside the message), and the frame must come from the address that
    /// member gossips, at a tier allowed for its message, addressed to this
    /// run of this node.
    async fn on_datagram(&mut self, inbound: Inbound) {
        let Inbound {
            from: src,
            header,
            payload,
        } = inbound;
        let msg = match wire::decode(&payload) {
            Ok(msg) => msg,
            Err(e) => {
                self.metrics.count_drop(DropReason::BadPayload);
                debug!(peer = %header.sender, %src, error = %e, "lease datagram did not decode");
                return;
            }
        };
        let check = if !wire::admitted(&msg, header.tier, self.frames.has_control()) {
            Err(DropReason::Tier)
        } else if let Some(addr) = self.view.get(&header.sender).map(|m| m.addr)
            && addr != src
        {
            Err(DropReason::Spoofed)
        } else if self.view.get(&header.sender).is_none() {
            Err(DropReason::UnknownPeer)
        } else if wire::needs_addressing(&msg) {
            frame::check_addressed(&self.frames.local(), &header)
        } else {
            Ok(())
        };
        if let Err(reason) = check {
            self.metrics.count_drop(reason);
            debug!(peer = %header.sender, %src, kind = msg.kind(), tier = header.tier.as_str(), %reason, "lease datagram dropped");
            return;
        }
        let sender = header.sender;
        if let PeerMsg::LeaseReply(r) = &msg {
            debug!(peer = %sender, seq = r.seq, granted = r.granted, refusal = ?r.refusal,
                holder = ?r.holder.as_ref().map(|h| &h.name), remaining_us = r.remaining_us, "lease reply");
        } else {
            debug!(peer = %sender, kind = msg.kind(), "lease message");
        }
        self.fx.member_tier_prober = (header.tier == Tier::Member
            && matches!(msg, PeerMsg::Probe(_)))
        .then(|| sender.clone());
        self.step(Input::Peer { from: sender, msg }).await;
        self.fx.member_tier_prober = None;
    }

    /// Membership, health and periodic duties, every gossip round.
    async fn refresh(&mut self) {
        if let Some(input) = self.assignment_input() {
            self.step(input).await;
        }
        if self.fx.vip_up && self.fx.last_announce.elapsed() >= VIP_REFRESH {
            self.fx.announce("refresh").await;
        }
        self.report_kube_facts().await;
        // Most rounds change nothing a view is built from: then no view is
        // built (at 100 members that work was most of an idle agent's CPU).
        let Some(view) = self.gossip.view_if_changed().await else {
            return;
        };
        if view == self.view {
            return;
        }
        let rejoined = self.log_membership_changes(&view);
        self.members_tx.send_replace(view.clone());
        self.view = view;
        self.update_membership_metrics();
        // A member back from a partition may have a stale ARP entry for the
        // VIP (keepalived leaves clients on the wrong MAC for tens of
        // seconds after a heal): the holder says again where the VIP is.
        if rejoined && self.fx.vip_up {
            self.fx.announce("member rejoined").await;
        }
        if let (Some(lb), Some(h)) = (&self.lb, &self.config.haproxy) {
            lb.want(kubeha_core::haproxy::backend_set(
                &self.view,
                h.backend_port,
            ));
        }
        self.step(Input::Membership(self.view.clone())).await;
    }

    /// A cloud provider's assignment, when it (or whether this node holds
    /// the VIP) changed since the core last heard: the provider works on its
    /// own task, so the loop looks after every step and every gossip round.
    fn assignment_input(&mut self) -> Option<Input> {
        let a = self.fx.vip.as_ref()?.assignment()?;
        let now = (a, self.node.holds_vip(clock::now()));
        if self.assignment_sent == Some(now) {
            return None;
        }
        if self.assignment_sent.map(|(old, _)| old) != Some(a) {
            debug!(assignment = ?a, "cloud assignment changed");
        }
        self.assignment_sent = Some(now);
        Some(Input::VipAssignment(a))
    }

    /// Tell the core what kubeadm left on this node, when it changed: the
    /// host check, the kubeadm skew, `admin.conf` and `kubelet.conf`.
    async fn report_kube_facts(&mut self) {
        let Some(k) = &self.config.kubernetes else {
            return;
        };
        let report = self.preflight.as_ref().and_then(|p| p.latest());
        let skew = kubeha_core::hostprep::view_skew(&self.view);
        let facts = kubeha_core::kube::KubeFacts {
            control_plane: self
                .config
                .has_role(kubeha_core::config::Role::ControlPlane),
            ready: kubeha_core::hostprep::may_bootstrap(report.as_ref(), &skew),
            admin_conf: k.etc_dir.join("admin.conf").exists(),
            kubelet_conf: k.etc_dir.join("kubelet.conf").exists(),
            cni: k.cni_manifest.is_some(),
        };
        if self.kube_facts.as_ref() != Some(&facts) {
            info!(
                ready = ?facts.ready,
                admin_conf = facts.admin_conf,
                kubelet_conf = facts.kubelet_conf,
                "kubeadm facts changed"
            );
            self.kube_facts = Some(facts.clone());
            self.step(Input::KubeFacts(facts)).await;
        }
    }

    async fn on_lb_report(&mut self, report: LbReport) {
        let was = self.lb_report.as_ref().map(|r| r.healthy);
        let healthy = report.healthy;
        self.lb_report = Some(report);
        if was != Some(healthy) {
            info!(healthy, "haproxy health changed");
            // The core publishes `lb` (Effect::Publish).
            self.step(Input::LocalHealth {
                lb_healthy: healthy,
            })
            .await;
        }
    }

    async fn reload_key(&mut self) {
        match state::load_rings(&self.config) {
            Ok(k) => {
                self.frames.set_rings(k);
                // Role claims are proven under the primary control key.
                self.gossip.republish_proof().await;
                info!(keys = ?self.frames.key_ids(), control_keys = ?self.frames.control_key_ids(), "key files reloaded");
            }
            Err(e) => warn!(error = %e, "key file not reloaded; keeping the current keys"),
        }
    }

    async fn answer(&mut self, request: Request) -> Response {
        match request {
            Request::Status => Response::Status(Box::new(self.status())),
            Request::Preflight => Response::Error {
                message: "this node has no `[kubernetes]` section: nothing to prepare".into(),
            },
            Request::ReleaseInit { node } => match self.node.check_release(&node) {
                Err(e) => {
                    warn!(holder = %node, error = %e, "bootstrap lock release refused");
                    Response::Error {
                        message: format!("not released: {e}"),
                    }
                }
                Ok(()) => {
                    self.step(Input::ReleaseInit {
                        holder: node.clone(),
                    })
                    .await;
                    warn!(holder = %node, "operator releases the bootstrap lock of a node that never initialized");
                    Response::Ok {
                        message: format!(
                            "releasing {node}'s bootstrap lock at the voters; \
                             `kubeha-ctl status` shows their answers"
                        ),
                    }
                }
            },
            Request::Drain | Request::Undrain => {
                let drain = request == Request::Drain;
                // The core publishes `drained` (Effect::Publish).
                self.step(Input::Drain(drain)).await;
                info!(drained = drain, "drain state changed by operator");
                Response::Ok {
                    message: if drain {
                        "drained: the VIP is handed over and this node takes no new role".into()
                    } else {
                        "undrained".into()
                    },
                }
            }
        }
    }

    /// Hand everything over, announce the leave, stop.
    async fn stop(mut self) {
        let config = self.config.clone();
        info!("stopping: handing over and announcing leave");
        self.step(Input::Stop).await;
        self.fx.jobs.cancel_all();
        if self.fx.vip_up {
            // The core always asks for RemoveVip on Stop; this is a last guard.
            if let Err(e) = self.fx.remove_vip().await {
                fail_stop(e);
            }
        }
        let flush = self.timing.leave_flush;
        let Agent { fx, gossip, .. } = self;
        // The executor's handle goes first so that `leave` owns gossip.
        drop(fx);
        match Arc::try_unwrap(gossip) {
            Ok(g) => g.leave(flush).await,
            Err(_) => warn!("gossip still shared at stop; leaving without the flush"),
        }
        let _ = std::fs::remove_file(&config.socket);
        info!("stopped");
    }
}
