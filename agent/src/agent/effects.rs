//! Carrying out the core's effects, in order, each complete before the next:
//! the VIP is gone before a later `Send` leaves, a vote is on disk before
//! the reply that announces it. Jobs only *start* here (they run beside the
//! loop, see `crate::jobs`).
//!
//! The executor decides nothing. What it learns while acting goes back to
//! the core as inputs (a failed `AddVip` becomes `Input::VipFault`), never
//! as a nested step: the rest of the batch runs first, except that a
//! `Publish vip=1` after a failed `AddVip` is not sent (it would claim an
//! address that is not up). The I/O it drives sits behind small traits
//! (`VipProvider`, [`PeerSender`], [`Publisher`], [`Persister`],
//! [`JobSink`]) so that tests can fake each.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kubeha_core::frame::{Channel, Tier};
use kubeha_core::membership::{MembershipView, keys};
use kubeha_core::node::{Effect, Input, Persisted};
use kubeha_core::wire::{self, PeerMsg};
use kubeha_vip::VipProvider;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::gossip::Gossip;
use crate::jobs::JobSink;
use crate::metrics::Metrics;
use crate::net::FrameSocket;
use crate::state::StateDir;

/// The bootstrap-lock state file in `state_dir`.
pub const LOCK_FILE: &str = "lock.json";

/// The agent must stop now (exit 70) so that no second VIP holder, and no
/// answer without its vote on disk, can appear.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FailStop(pub String);

/// Lease datagrams to peers.
#[async_trait]
pub trait PeerSender: Send + Sync {
    /// `to` is the recipient's name (authenticated in the frame);
    /// `member_tier`: answer at the cluster-key tier (a worker's probe).
    async fn send(
        &self,
        addr: SocketAddr,
        to: &str,
        member_tier: bool,
        msg: &PeerMsg,
    ) -> std::io::Result<()>;
}

/// This node's gossip keys.
#[async_trait]
pub trait Publisher: Send + Sync {
    async fn publish(&self, key: &'static str, value: String);
}

/// The state file, written and fsynced before `persist` returns.
pub trait Persister: Send {
    fn persist(&mut self, p: &Persisted) -> Result<(), FailStop>;
}

pub struct FrameSender(pub Arc<FrameSocket>);

#[async_trait]
impl PeerSender for FrameSender {
    async fn send(
        &self,
        addr: SocketAddr,
        to: &str,
        member_tier: bool,
        msg: &PeerMsg,
    ) -> std::io::Result<()> {
        let tier = if member_tier {
            Tier::Member
        } else {
            self.0.top_tier()
        };
        self.0
            .send(addr, Channel::Lease, tier, Some(to), &wire::encode(msg))
            .await
            .map(|_| ())
    }
}

pub struct GossipPublisher(pub Arc<Gossip>);

#[async_trait]
impl Publisher for GossipPublisher {
    async fn publish(&self, key: &'static str, value: String) {
        self.0.publish(&[(key, value)]).await;
    }
}

impl Persister for StateDir {
    fn persist(&mut self, p: &Persisted) -> Result<(), FailStop> {
        let bytes = serde_json::to_vec_pretty(p).expect("persisted state serializes");
        self.write(LOCK_FILE, &bytes).map_err(|e| {
            error!(
                file = %self.path(LOCK_FILE).display(),
                error = %e,
                "cannot persist the bootstrap-lock state; stopping rather than answer without it"
            );
            FailStop(format!(
                "cannot write {}: {e}",
                self.path(LOCK_FILE).display()
            ))
        })
    }
}

/// The I/O half of the loop: everything effects touch.
pub struct Effects {
    pub vip: Option<Box<dyn VipProvider>>,
    sender: Box<dyn PeerSender>,
    publisher: Box<dyn Publisher>,
    persister: Box<dyn Persister>,
    pub jobs: Box<dyn JobSink>,
    metrics: Arc<Metrics>,
    /// What the shell did last: the VIP is on this node's interface.
    pub vip_up: bool,
    pub last_announce: Instant,
    /// While stepping a `Probe` that came under the cluster key alone (a
    /// worker's): its sender, whose `ProbeReply` goes out at that tier.
    pub member_tier_prober: Option<String>,
}

impl Effects {
    pub fn new(
        vip: Option<Box<dyn VipProvider>>,
        sender: Box<dyn PeerSender>,
        publisher: Box<dyn Publisher>,
        persister: Box<dyn Persister>,
        jobs: Box<dyn JobSink>,
        metrics: Arc<Metrics>,
    ) -> Effects {
        Effects {
            vip,
            sender,
            publisher,
            persister,
            jobs,
            metrics,
            vip_up: false,
            last_announce: Instant::now(),
            member_tier_prober: None,
        }
    }

    /// Carry out effects in order, each complete before the next. Returns
    /// the inputs the core must hear next (after this batch).
    pub async fn execute(
        &mut self,
        effects: Vec<Effect>,
        view: &MembershipView,
    ) -> Result<Vec<Input>, FailStop> {
        let mut fault = false;
        let mut vip_failed = false;
        for e in effects {
            match e {
                Effect::Send { to, msg } => self.send(view, &to, &msg).await,
                Effect::AddVip => {
                    vip_failed = !self.add_vip().await;
                    fault |= vip_failed;
                }
                Effect::RemoveVip => self.remove_vip().await?,
                Effect::Persist(p) => self.persister.persist(&p)?,
                Effect::Publish { key, value } => {
                    if vip_failed && key == keys::VIP && value == "1" {
                        debug!("not publishing vip=1: the VIP could not be added");
                        continue;
                    }
                    self.publisher.publish(key, value).await;
                }
                Effect::StartJob { id, job } => self.jobs.start(id, job),
            }
        }
        // One `VipFault` per batch, however many `AddVip`s failed.
        Ok(fault.then_some(Input::VipFault).into_iter().collect())
    }

    async fn send(&mut self, view: &MembershipView, to: &str, msg: &PeerMsg) {
        let Some(addr) = view.get(to).map(|m| m.addr) else {
            debug!(peer = %to, kind = msg.kind(), "peer address unknown yet; message not sent");
            return;
        };
        if matches!(msg, PeerMsg::LeaseRequest(_)) && self.vip_up {
            self.metrics.lease_renewals.inc();
        }
        // A worker's probe is answered at the worker's tier; everything
        // else at this node's best tier.
        let member_tier =
            matches!(msg, PeerMsg::ProbeReply(_)) && self.member_tier_prober.as_deref() == Some(to);
        if let Err(e) = self.sender.send(addr, to, member_tier, msg).await {
            debug!(peer = %to, %addr, kind = msg.kind(), error = %e, "lease datagram not sent");
        }
    }

    /// Returns whether the VIP is up. On failure the caller reports
    /// `Input::VipFault`: the core, not the shell, decides to stand aside.
    pub async fn add_vip(&mut self) -> bool {
        debug!("effect: add vip");
        let Some(vip) = &self.vip else { return true };
        match vip.acquire().await {
            Ok(change) => {
                if !self.vip_up {
                    self.metrics.failovers.inc();
                    info!(vip = %vip.describe(), changed = change.is_changed(), "vip acquired");
                }
                self.vip_up = true;
                self.last_announce = Instant::now();
                self.metrics.vip_held.set(1);
                true
            }
            Err(e) => {
                // Holding a lease for an address we cannot put up helps no one:
                // the core steps aside for a while and lets another candidate take it.
                error!(vip = %vip.describe(), error = %e, "cannot add the VIP; reporting a VIP fault");
                false
            }
        }
    }

    /// Must succeed: S1 rests on it. A node that cannot remove the VIP stops
    /// (fail-stop); systemd's `ExecStopPost=kubeha-agent --release-vip` retries.
    pub async fn remove_vip(&mut self) -> Result<(), FailStop> {
        let Some(vip) = &self.vip else { return Ok(()) };
        let mut last = None;
        for attempt in 0..3 {
            match vip.release().await {
                Ok(_) => {
                    if self.vip_up {
                        info!(vip = %vip.describe(), "vip released");
                    }
                    self.vip_up = false;
                    self.metrics.vip_held.set(0);
                    return Ok(());
                }
                Err(e) => {
                    warn!(vip = %vip.describe(), attempt, error = %e, "removing the VIP failed");
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        let error = last.map(|e| e.to_string()).unwrap_or_default();
        error!(
            vip = %vip.describe(),
            error = %error,
            "cannot remove the VIP; stopping so that no second holder can appear"
        );
        Err(FailStop(format!(
            "cannot remove the VIP {}: {error}",
            vip.describe()
        )))
    }

    pub async fn announce(&mut self, why: &str) {
        let Some(vip) = &self.vip else { return };
        self.last_announce = Instant::now();
        if let Err(e) = vip.refresh().await {
            warn!(vip = %vip.describe(), reason = why, error = %e, "re-announcing the VIP failed");
        } else {
            debug!(vip = %vip.describe(), reason = why, "vip re-announced");
        }
    }
}

#[cfg(test)]
mod tests;
