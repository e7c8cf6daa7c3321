//! The agent's main loop: the shell around the decision core.
//!
//! One task owns all state and reacts to one event at a time: a membership
//! refresh, a lease/lock datagram, a timer of the core, an API request, a
//! signal. Decisions are the core's; this loop only gathers inputs and
//! carries out effects, in order.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use kubeha_core::api::{self, MemberState, Request, Response};
use kubeha_core::config::Config;
use kubeha_core::frame::Keyring;
use kubeha_core::membership::{LbHealth, MembershipView, keys};
use kubeha_core::timing::Timing;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::api::{self as api_server, ApiCall};
use crate::clock;
use crate::gossip::{EncryptedTransport, Gossip, initial_keys};
use crate::metrics::{self, Metrics};
use crate::net::FrameSocket;
use crate::state::{self, StateDir};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Everything the loop owns.
struct Agent {
    config: Config,
    timing: Timing,
    metrics: Arc<Metrics>,
    frames: Arc<FrameSocket>,
    gossip: Gossip,
    view: MembershipView,
    drained: bool,
    lb: LbHealth,
}

/// Run until SIGTERM/SIGINT. Binds in a fixed order so the first failure
/// names what could not be bound: metrics, gossip socket, API socket.
pub async fn run(config: Config, keyring: Keyring) -> anyhow::Result<()> {
    let timing = config.timing.timing();
    let state_dir = StateDir::open(&config.state_dir)?;
    let generation = state_dir.next_generation(clock::unix_ms() * 1000)?;
    let metrics = Metrics::new(&config.node_name, VERSION);

    metrics::serve(config.metrics_addr, metrics.clone()).await?;
    let frames = FrameSocket::bind(
        config.gossip_addr(),
        keyring,
        &config.cluster,
        metrics.clone(),
    )
    .await?;
    let (gossip_tx, gossip_rx) = mpsc::channel(1024);
    let (lease_tx, mut lease_rx) = mpsc::channel(1024);
    frames.spawn_reader(gossip_tx, lease_tx);
    let (api_tx, mut api_rx) = mpsc::channel::<ApiCall>(64);
    api_server::serve(&config.socket, api_tx).await?;

    let lb = if config.has_role(kubeha_core::config::Role::Lb) {
        LbHealth::Healthy
    } else {
        LbHealth::None
    };
    let mut initial = initial_keys(&config);
    initial.retain(|(k, _)| k != keys::LB);
    initial.push((keys::LB.to_string(), lb.as_str().to_string()));
    let transport = EncryptedTransport::new(frames.clone(), metrics.clone(), gossip_rx);
    let gossip = Gossip::start(&config, generation, &timing, transport, initial).await?;
    info!(
        node = %config.node_name,
        cluster = %config.cluster,
        generation,
        addr = %config.gossip_addr(),
        timing = config.timing.as_str(),
        keys = ?frames.key_ids(),
        "agent started"
    );

    let mut agent = Agent {
        config,
        timing,
        metrics,
        frames,
        gossip,
        view: MembershipView::default(),
        drained: false,
        lb,
    };

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut refresh = tokio::time::interval(agent.timing.gossip_interval);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            _ = refresh.tick() => agent.refresh_membership().await,
            Some(call) = api_rx.recv() => {
                let response = agent.answer(call.request).await;
                let _ = call.reply.send(response);
            }
            Some((_from, _payload)) = lease_rx.recv() => {
                // Lease and lock messages: handled by the decision core.
            }
            _ = sighup.recv() => agent.reload_key(),
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    info!("stopping: announcing leave");
    let flush = agent.timing.leave_flush;
    agent.gossip.leave(flush).await;
    let _ = std::fs::remove_file(&agent.config.socket);
    info!("stopped");
    Ok(())
}

impl Agent {
    async fn refresh_membership(&mut self) {
        let view = self.gossip.view().await;
        if view == self.view {
            return;
        }
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
            }
        }
        for name in self.view.members.keys() {
            if !view.members.contains_key(name) {
                info!(member = %name, "member forgotten");
            }
        }
        let old_bad: Vec<String> = self
            .view
            .voter_mismatches(&self.config.voters)
            .iter()
            .map(|m| m.name.clone())
            .collect();
        let bad = view.voter_mismatches(&self.config.voters);
        for m in &bad {
            if !old_bad.contains(&m.name) {
                warn!(
                    member = %m.name,
                    theirs = ?m.voters,
                    ours = ?self.config.voters,
                    "member has a different voter list; fix `voters` so every node lists the same nodes"
                );
            }
        }
        self.metrics.voter_mismatch.set(bad.len() as i64);
        let mut by_state: BTreeMap<&str, i64> =
            BTreeMap::from([("alive", 0), ("dead", 0), ("left", 0)]);
        for m in view.members.values() {
            *by_state.entry(m.state().as_str()).or_default() += 1;
        }
        for (s, n) in by_state {
            self.metrics.members.with_label_values(&[s]).set(n);
        }
        let reachable = self.config.voters.iter().filter(|v| view.alive(v)).count();
        self.metrics.quorum_reachable.set(reachable as i64);
        self.view = view;
    }

    fn reload_key(&mut self) {
        match state::load_keyring(&self.config.key_file) {
            Ok(k) => {
                self.frames.set_keyring(k);
                info!(keys = ?self.frames.key_ids(), "cluster key file reloaded");
            }
            Err(e) => warn!(error = %e, "key file not reloaded; keeping the current keys"),
        }
    }

    async fn answer(&mut self, request: Request) -> Response {
        match request {
            Request::Status => Response::Status(Box::new(self.status())),
            Request::Drain | Request::Undrain => {
                let drain = request == Request::Drain;
                self.drained = drain;
                self.gossip
                    .publish(&[(keys::DRAINED, if drain { "1" } else { "0" }.to_string())])
                    .await;
                info!(drained = drain, "drain state changed by operator");
                Response::Ok {
                    message: if drain {
                        "drained: this node takes no new role".into()
                    } else {
                        "undrained".into()
                    },
                }
            }
        }
    }

    fn status(&self) -> api::Status {
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
        let reachable = self
            .config
            .voters
            .iter()
            .filter(|v| self.view.alive(v))
            .count();
        let holder = self
            .view
            .claimed_vip_holders()
            .first()
            .map(|m| m.name.clone());
        api::Status {
            cluster: self.config.cluster.clone(),
            node: self.config.node_name.clone(),
            version: VERSION.to_string(),
            timing: self.config.timing.as_str().to_string(),
            drained: self.drained,
            members,
            vip: self.config.vip.as_ref().map(|v| api::VipStatus {
                address: v.cidr(),
                holder: holder.clone(),
                held_here: holder.as_deref() == Some(self.config.node_name.as_str()),
                candidate: self.config.is_vip_candidate()
                    && !self.drained
                    && self.lb == LbHealth::Healthy,
            }),
            haproxy: None,
            quorum: api::QuorumStatus {
                voters: self.config.voters.len(),
                reachable,
                ok: reachable >= self.config.quorum(),
            },
            kubernetes: api::KubernetesStatus {
                phase: if self.config.kubernetes.is_some() {
                    "waiting"
                } else {
                    "disabled"
                }
                .to_string(),
                init_node: None,
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
