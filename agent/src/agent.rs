//! The agent's main loop: the shell around the decision core.
//!
//! One task owns all state and reacts to one event at a time: a membership
//! refresh, a lease/lock datagram, a timer of the core, an API request, a
//! signal. Decisions are the core's ([`Node`]); this loop gathers inputs and
//! carries out the effects, in order, each finished before the next: the VIP
//! is gone before a release leaves, a vote is on disk before its reply leaves.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kubeha_core::api::{self, MemberState, Request, Response};
use kubeha_core::config::Config;
use kubeha_core::frame::{self, Channel, DropReason, Rings, Tier};
use kubeha_core::membership::{LbHealth, MembershipView, keys};
use kubeha_core::node::{Effect, Input, Node, NodeParams, Persisted};
use kubeha_core::timing::Timing;
use kubeha_core::wire::{self, PeerMsg};
use kubeha_vip::{Announce, VipProvider};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::api::{self as api_server, ApiCall};
use crate::clock;
use crate::gossip::{EncryptedTransport, Gossip, initial_keys};
use crate::haproxy::HaproxyOptions;
use crate::lb::{LbReport, LbWorker};
use crate::metrics::{self, Metrics};
use crate::net::{FrameSocket, Identity, Inbound};
use crate::state::{self, LoadError, StateDir};
use crate::watchdog::LeaseWatchdog;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The bootstrap-lock state file in `state_dir`.
pub const LOCK_FILE: &str = "lock.json";
/// While holding, re-announce the VIP this often (clients whose ARP entry
/// expired re-resolve anyway; this covers switches that forgot the MAC).
const VIP_REFRESH: Duration = Duration::from_secs(30);
/// After the VIP could not be added, stay out of the race this long.
const VIP_FAULT_BACKOFF: Duration = Duration::from_secs(5);

/// Everything the loop owns.
struct Agent {
    config: Config,
    timing: Timing,
    metrics: Arc<Metrics>,
    frames: Arc<FrameSocket>,
    gossip: Gossip,
    state_dir: StateDir,
    node: Node,
    vip: Option<Box<dyn VipProvider>>,
    /// Removes the VIP at the lease deadline if this loop is late.
    watchdog: Option<LeaseWatchdog>,
    /// What the shell did last: the VIP is on this node's interface.
    vip_up: bool,
    vip_fault_until: Option<Instant>,
    last_announce: Instant,
    view: MembershipView,
    holder_seen: Option<String>,
    /// While stepping a `Probe` that came under the cluster key alone (a
    /// worker's): its sender, whose `ProbeReply` goes out at that tier.
    member_tier_prober: Option<String>,
    /// The local HAProxy (lb nodes with `[haproxy]`).
    lb: Option<LbWorker>,
    lb_report: Option<LbReport>,
}

/// Run until SIGTERM/SIGINT. Binds in a fixed order so the first failure
/// names what could not be bound: metrics, gossip socket, API socket.
pub async fn run(config: Config, keyring: Rings) -> anyhow::Result<()> {
    let timing = config.timing.timing();
    let state_dir = StateDir::open(&config.state_dir)?;
    let persisted = load_persisted(&state_dir)?;
    let generation = state_dir.next_generation(clock::unix_ms() * 1000)?;
    let metrics = Metrics::new(&config.node_name, VERSION);

    let vip = vip_provider(&config)?;
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
    let initial = initial_keys(&config, lb);
    let transport = EncryptedTransport::new(frames.clone(), metrics.clone(), gossip_rx);
    let gossip = Gossip::start(&config, generation, &timing, transport, initial).await?;

    let params = NodeParams {
        name: config.node_name.clone(),
        voters: config.voters.clone(),
        timing,
        vip_priority: config
            .vip
            .as_ref()
            .filter(|_| config.is_vip_candidate())
            .map(|v| v.priority),
        incarnation: rand::random(),
        persisted,
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

    let watchdog = vip.as_ref().and_then(|_| watchdog_for(&config));
    let mut agent = Agent {
        config,
        timing,
        metrics,
        frames,
        gossip,
        state_dir,
        node,
        watchdog,
        vip,
        vip_up: false,
        vip_fault_until: None,
        last_announce: Instant::now(),
        view: MembershipView::default(),
        holder_seen: None,
        member_tier_prober: None,
        lb: lb_worker,
        lb_report: None,
    };
    if agent.lb.is_some() {
        // Not a VIP candidate until HAProxy runs with a server UP.
        effects.extend(
            agent
                .node
                .step(clock::now(), Input::LocalHealth { lb_healthy: false }),
        );
    }
    agent.execute(effects).await;

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
            Some(call) = api_rx.recv() => {
                let response = agent.answer(call.request).await;
                let _ = call.reply.send(response);
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

fn watchdog_for(config: &Config) -> Option<LeaseWatchdog> {
    let vip = config.vip.as_ref()?;
    Some(LeaseWatchdog::spawn(vip.interface.clone()?, vip.address))
}

fn vip_provider(config: &Config) -> anyhow::Result<Option<Box<dyn VipProvider>>> {
    let Some(vip) = config.vip.as_ref().filter(|_| config.is_vip_candidate()) else {
        return Ok(None);
    };
    kubeha_vip::from_config(vip, Announce::default())
        .map(Some)
        .with_context(|| format!("`vip` in {}", config.path.display()))
}

impl Agent {
    async fn step(&mut self, input: Input) {
        let effects = self.node.step(clock::now(), input);
        self.arm_watchdog();
        self.execute(effects).await;
        self.check_watchdog().await;
        self.observe();
    }

    fn arm_watchdog(&self) {
        if let Some(w) = &self.watchdog {
            w.arm(self.node.vip_deadline());
        }
    }

    /// If the watchdog removed the VIP while the core (after a renewal that
    /// raced it) still holds, put it back; else record that it is gone.
    async fn check_watchdog(&mut self) {
        if !self
            .watchdog
            .as_ref()
            .is_some_and(LeaseWatchdog::take_fired)
        {
            return;
        }
        self.vip_up = false;
        self.metrics.vip_held.set(0);
        if self.node.holds_vip(clock::now()) {
            self.add_vip().await;
            self.arm_watchdog();
        }
    }

    /// Carry out effects in order, each complete before the next.
    async fn execute(&mut self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Send { to, msg } => self.send(&to, &msg).await,
                Effect::AddVip => self.add_vip().await,
                Effect::RemoveVip => self.remove_vip().await,
                Effect::Persist(p) => self.persist(&p),
                Effect::Publish { key, value } => self.gossip.publish(&[(key, value)]).await,
                Effect::RunInit => {
                    // Nothing feeds `WantInit` in this build, so the lock is never claimed.
                    error!(
                        "the decision core asked for `kubeadm init`, which this build does not drive"
                    );
                }
            }
        }
    }

    async fn send(&mut self, to: &str, msg: &PeerMsg) {
        let Some(addr) = self.view.get(to).map(|m| m.addr) else {
            debug!(peer = %to, kind = msg.kind(), "peer address unknown yet; message not sent");
            return;
        };
        if matches!(msg, PeerMsg::LeaseRequest(_)) && self.vip_up {
            self.metrics.lease_renewals.inc();
        }
        // A worker's probe is answered at the worker's tier; everything
        // else at this node's best tier.
        let tier = match msg {
            PeerMsg::ProbeReply(_) if self.member_tier_prober.as_deref() == Some(to) => {
                Tier::Member
            }
            _ => self.frames.top_tier(),
        };
        if let Err(e) = self
            .frames
            .send(addr, Channel::Lease, tier, Some(to), &wire::encode(msg))
            .await
        {
            debug!(peer = %to, %addr, kind = msg.kind(), error = %e, "lease datagram not sent");
        }
    }

    async fn add_vip(&mut self) {
        debug!("effect: add vip");
        let Some(vip) = &self.vip else { return };
        match vip.acquire().await {
            Ok(change) => {
                if !self.vip_up {
                    self.metrics.failovers.inc();
                    info!(vip = %vip.describe(), changed = change.is_changed(), "vip acquired");
                }
                self.vip_up = true;
                self.last_announce = Instant::now();
                self.metrics.vip_held.set(1);
            }
            Err(e) => {
                // Holding a lease for an address we cannot put up helps no one:
                // step aside for a while and let another candidate take it.
                error!(vip = %vip.describe(), error = %e, "cannot add the VIP; standing aside");
                self.vip_fault_until = Some(Instant::now() + VIP_FAULT_BACKOFF);
                let effects = self
                    .node
                    .step(clock::now(), Input::LocalHealth { lb_healthy: false });
                Box::pin(self.execute(effects)).await;
            }
        }
    }

    /// Must succeed: S1 rests on it. A node that cannot remove the VIP stops
    /// (fail-stop); systemd's `ExecStopPost=kubeha-agent --release-vip` retries.
    async fn remove_vip(&mut self) {
        let Some(vip) = &self.vip else { return };
        let mut last = None;
        for attempt in 0..3 {
            match vip.release().await {
                Ok(_) => {
                    if self.vip_up {
                        info!(vip = %vip.describe(), "vip released");
                    }
                    self.vip_up = false;
                    self.metrics.vip_held.set(0);
                    return;
                }
                Err(e) => {
                    warn!(vip = %vip.describe(), attempt, error = %e, "removing the VIP failed");
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        error!(
            vip = %vip.describe(),
            error = %last.map(|e| e.to_string()).unwrap_or_default(),
            "cannot remove the VIP; stopping so that no second holder can appear"
        );
        std::process::exit(70);
    }

    /// A vote must be on disk before the reply that announces it leaves.
    fn persist(&mut self, p: &Persisted) {
        let bytes = serde_json::to_vec_pretty(p).expect("persisted state serializes");
        if let Err(e) = self.state_dir.write(LOCK_FILE, &bytes) {
            error!(
                file = %self.state_dir.path(LOCK_FILE).display(),
                error = %e,
                "cannot persist the bootstrap-lock state; stopping rather than answer without it"
            );
            std::process::exit(70);
        }
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
        self.member_tier_prober = (header.tier == Tier::Member && matches!(msg, PeerMsg::Probe(_)))
            .then(|| sender.clone());
        self.step(Input::Peer { from: sender, msg }).await;
        self.member_tier_prober = None;
    }

    /// Membership, health and periodic duties, every gossip round.
    async fn refresh(&mut self) {
        if let Some(until) = self.vip_fault_until
            && Instant::now() >= until
        {
            self.vip_fault_until = None;
            self.step(Input::LocalHealth { lb_healthy: true }).await;
        }
        if self.vip_up && self.last_announce.elapsed() >= VIP_REFRESH {
            self.announce("refresh").await;
        }
        let view = self.gossip.view().await;
        if view == self.view {
            return;
        }
        let rejoined = self.log_membership_changes(&view);
        self.view = view;
        self.update_membership_metrics();
        // A member back from a partition may have a stale ARP entry for the
        // VIP (keepalived leaves clients on the wrong MAC for tens of
        // seconds after a heal): the holder says again where the VIP is.
        if rejoined && self.vip_up {
            self.announce("member rejoined").await;
        }
        if let (Some(lb), Some(h)) = (&self.lb, &self.config.haproxy) {
            lb.want(kubeha_core::haproxy::backend_set(
                &self.view,
                h.backend_port,
            ));
        }
        self.step(Input::Membership(self.view.clone())).await;
    }

    async fn on_lb_report(&mut self, report: LbReport) {
        let was = self.lb_report.as_ref().map(|r| r.healthy);
        let healthy = report.healthy;
        self.lb_report = Some(report);
        if was != Some(healthy) {
            info!(healthy, "haproxy health changed");
            let lb = if healthy {
                LbHealth::Healthy
            } else {
                LbHealth::Unhealthy
            };
            self.gossip
                .publish(&[(keys::LB, lb.as_str().to_string())])
                .await;
            self.step(Input::LocalHealth {
                lb_healthy: healthy,
            })
            .await;
        }
    }

    async fn announce(&mut self, why: &str) {
        let Some(vip) = &self.vip else { return };
        self.last_announce = Instant::now();
        if let Err(e) = vip.refresh().await {
            warn!(vip = %vip.describe(), reason = why, error = %e, "re-announcing the VIP failed");
        } else {
            debug!(vip = %vip.describe(), reason = why, "vip re-announced");
        }
    }

    /// One log event per member state change. Returns whether a member came
    /// back alive.
    fn log_membership_changes(&self, view: &MembershipView) -> bool {
        let mut rejoined = false;
        for (name, m) in &view.members {
            let before = self.view.get(name).map(|o| o.state());
            let now = m.state();
            if before != Some(now) {
                info!(
                    member = %name,
                    generation = m.generation,
                    from = before.map_or("unknown", MemberState::as_str),
                    to = now.as_str(),
                    "member state changed"
                );
                rejoined |= before.is_some() && now == MemberState::Alive;
            }
        }
        for name in self.view.members.keys() {
            if !view.members.contains_key(name) {
                info!(member = %name, "member forgotten");
            }
        }
        let old_bad: Vec<&str> = self
            .view
            .voter_mismatches(&self.config.voters)
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        for m in view.voter_mismatches(&self.config.voters) {
            if !old_bad.contains(&m.name.as_str()) {
                warn!(
                    member = %m.name,
                    theirs = ?m.voters,
                    ours = ?self.config.voters,
                    "member has a different voter list; fix `voters` so every node lists the same nodes"
                );
            }
        }
        rejoined
    }

    fn update_membership_metrics(&self) {
        self.metrics
            .voter_mismatch
            .set(self.view.voter_mismatches(&self.config.voters).len() as i64);
        let mut by_state: BTreeMap<&str, i64> =
            BTreeMap::from([("alive", 0), ("dead", 0), ("left", 0)]);
        for m in self.view.members.values() {
            *by_state.entry(m.state().as_str()).or_default() += 1;
        }
        for (s, n) in by_state {
            self.metrics.members.with_label_values(&[s]).set(n);
        }
    }

    /// Metrics and logs that follow the core's view after every step.
    fn observe(&mut self) {
        let st = self.node.status(clock::now());
        self.metrics
            .quorum_reachable
            .set(st.reachable_voters as i64);
        if st.vip_holder != self.holder_seen {
            if let Some(old) = &self.holder_seen {
                self.metrics
                    .vip_holder
                    .with_label_values(&[old.as_str()])
                    .set(0);
            }
            if let Some(new) = &st.vip_holder {
                self.metrics
                    .vip_holder
                    .with_label_values(&[new.as_str()])
                    .set(1);
            }
            info!(
                from = self.holder_seen.as_deref().unwrap_or("none"),
                to = st.vip_holder.as_deref().unwrap_or("none"),
                "vip holder changed"
            );
            self.holder_seen = st.vip_holder;
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
            Request::Drain | Request::Undrain => {
                let drain = request == Request::Drain;
                self.step(Input::Drain(drain)).await;
                self.gossip
                    .publish(&[(keys::DRAINED, if drain { "1" } else { "0" }.to_string())])
                    .await;
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
        info!("stopping: handing over and announcing leave");
        self.step(Input::Stop).await;
        if self.vip_up {
            // The core always asks for RemoveVip on Stop; this is a last guard.
            self.remove_vip().await;
        }
        let flush = self.timing.leave_flush;
        self.gossip.leave(flush).await;
        let _ = std::fs::remove_file(&self.config.socket);
        info!("stopped");
    }

    fn status(&self) -> api::Status {
        let st = self.node.status(clock::now());
        let members = self
            .view
            .members
            .values()
            .map(|m| api::MemberStatus {
                name: m.name.clone(),
                addr: m.addr.to_string(),
                roles: m.roles.iter().map(|r| r.as_str().to_string()).collect(),
                alive: m.alive(),
                state: m.state(),
                generation: m.generation,
                kube: m.kube.clone(),
                lb: m.lb.as_str().to_string(),
                drained: m.drained,
                vip_holder: m.vip_holder,
            })
            .collect();
        api::Status {
            cluster: self.config.cluster.clone(),
            node: self.config.node_name.clone(),
            version: VERSION.to_string(),
            timing: self.config.timing.as_str().to_string(),
            drained: st.drained,
            members,
            vip: self.config.vip.as_ref().map(|v| api::VipStatus {
                address: v.cidr(),
                holder: st.vip_holder.clone(),
                held_here: self.vip_up,
                candidate: st.vip_candidate,
            }),
            haproxy: self.lb_report.as_ref().map(|r| r.status.clone()),
            quorum: api::QuorumStatus {
                voters: st.voters,
                reachable: st.reachable_voters,
                ok: st.quorum_ok,
            },
            kubernetes: api::KubernetesStatus {
                phase: if self.config.kubernetes.is_some() {
                    "waiting"
                } else {
                    "disabled"
                }
                .to_string(),
                init_node: st.init_node.clone(),
                endpoint: self
                    .config
                    .kubernetes
                    .as_ref()
                    .map(|k| k.control_plane_endpoint.clone()),
            },
            voter_mismatch: self
                .view
                .voter_mismatches(&self.config.voters)
                .iter()
                .map(|m| api::VoterMismatch {
                    member: m.name.clone(),
                    their_voters: m.voters.clone(),
                })
                .collect(),
        }
    }
}
