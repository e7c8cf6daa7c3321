//! Membership over chitchat, encrypted on the wire.
//!
//! chitchat hands its `Transport` decoded envelopes and keeps its wire codec
//! private, so encryption cannot sit inside the codec. Instead
//! [`EncryptedSocket`] uses chitchat's own public `UdpSocket` as the codec on
//! a private loopback port:
//!
//! ```text
//!  send: chitchat ─envelope→ codec.send(tap) ─plaintext→ tap ─seal→ FrameSocket → peer
//!  recv: peer → FrameSocket (open, replay check) → tap ─plaintext→ codec.recv() → chitchat
//! ```
//!
//! `tap` is connected to the codec's address, so it only ever reads what the
//! codec wrote; the codec's reads are checked to come from `tap`, so a local
//! process writing to the loopback port cannot inject plaintext gossip.
//! Loopback delivery is synchronous, so the round trip through the kernel is
//! immediate.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::{
    ChitchatConfig, ChitchatEnvelope, ChitchatHandle, ChitchatId, FailureDetectorConfig,
    ProtocolVersion, spawn_chitchat,
};
use kubeha_core::config::Config;
use kubeha_core::frame::{Channel, DropReason};
use kubeha_core::membership::{self, LbHealth, MemberInfo, MembershipView, keys};
use kubeha_core::timing::Timing;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::debug;

use crate::metrics::Metrics;
use crate::net::{FrameSocket, Inbound};

/// How long an injected datagram may take to come out of the codec before it
/// is taken for one chitchat could not decode (chitchat skips those silently).
const DECODE_DEADLINE: Duration = Duration::from_millis(250);

/// How long a dead member stays listed (as dead) before chitchat forgets it.
/// chitchat's default is 24 h; self-heal needs dead members remembered for at
/// least `kubernetes.dead_after`, so this is the larger of 30 min and twice that.
pub fn dead_node_grace(config: &Config) -> Duration {
    let floor = Duration::from_secs(30 * 60);
    config
        .kubernetes
        .as_ref()
        .map_or(floor, |k| floor.max(k.dead_after * 2))
}

pub fn chitchat_config(config: &Config, generation: u64, timing: &Timing) -> ChitchatConfig {
    ChitchatConfig {
        chitchat_id: ChitchatId::new(config.node_name.clone(), generation, config.gossip_addr()),
        cluster_id: config.cluster.clone(),
        gossip_interval: timing.gossip_interval,
        listen_addr: config.gossip_addr(),
        seed_nodes: config.seeds.clone(),
        failure_detector_config: FailureDetectorConfig {
            phi_threshold: f64::from(timing.phi_threshold),
            sampling_window_size: timing.fd_window,
            max_interval: timing.fd_max_interval,
            initial_interval: timing.fd_initial_interval,
            dead_node_grace_period: dead_node_grace(config),
        },
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        // V1 zstd-compresses digests, creating a compression context per
        // message: half the agent's idle CPU for 40 % fewer bytes. Small
        // clusters on a LAN are better served uncompressed.
        protocol_version: ProtocolVersion::V0,
    }
}

/// The `Transport` chitchat opens: it ignores the listen address (the
/// [`FrameSocket`] is already bound there) and takes the inbound queue once.
pub struct EncryptedTransport {
    frames: Arc<FrameSocket>,
    metrics: Arc<Metrics>,
    inbound: Mutex<Option<mpsc::Receiver<Inbound>>>,
}

impl EncryptedTransport {
    pub fn new(
        frames: Arc<FrameSocket>,
        metrics: Arc<Metrics>,
        inbound: mpsc::Receiver<Inbound>,
    ) -> Self {
        EncryptedTransport {
            frames,
            metrics,
            inbound: Mutex::new(Some(inbound)),
        }
    }
}

#[async_trait]
impl Transport for EncryptedTransport {
    async fn open(&self, _listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let inbound = self
            .inbound
            .lock()
            .expect("transport lock")
            .take()
            .context("the encrypted gossip transport can be opened once")?;
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let codec = chitchat::transport::UdpSocket::open(loopback).await?;
        let codec_addr = codec.local_addr()?;
        let tap = UdpSocket::bind(loopback)
            .await
            .context("binding the gossip codec tap on loopback")?;
        tap.connect(codec_addr)
            .await
            .context("connecting the gossip codec tap")?;
        Ok(Box::new(EncryptedSocket {
            frames: self.frames.clone(),
            metrics: self.metrics.clone(),
            inbound,
            codec,
            tap_addr: tap.local_addr()?,
            tap,
            pending: None,
            buf: vec![0u8; 65_536],
        }))
    }
}

pub struct EncryptedSocket {
    frames: Arc<FrameSocket>,
    metrics: Arc<Metrics>,
    inbound: mpsc::Receiver<Inbound>,
    codec: chitchat::transport::UdpSocket,
    tap: UdpSocket,
    tap_addr: SocketAddr,
    /// The peer whose plaintext sits in the codec, and until when we wait.
    /// Kept across calls because chitchat may cancel `recv`.
    pending: Option<(SocketAddr, Instant)>,
    buf: Vec<u8>,
}

#[async_trait]
impl Socket for EncryptedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.frames.local_addr()?)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        self.codec.send(self.tap_addr, envelope).await?;
        let n = self
            .tap
            .recv(&mut self.buf)
            .await
            .context("reading back the gossip codec's output")?;
        // A peer that is unreachable right now is not a broken transport.
        let num_bytes_sent = match self.frames.send(to, Channel::Gossip, &self.buf[..n]).await {
            Ok(sent) => sent,
            Err(e) => {
                debug!(peer = %to, error = %e, "gossip send failed");
                0
            }
        };
        Ok(SendOutcome { num_bytes_sent })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            if let Some((from, deadline)) = self.pending {
                match tokio::time::timeout_at(deadline, self.codec.recv()).await {
                    Ok(Ok(mut outcome)) => {
                        if outcome.from_addr != self.tap_addr {
                            // Someone else wrote to the codec's loopback port.
                            self.metrics.count_drop(DropReason::Malformed);
                            continue;
                        }
                        self.pending = None;
                        outcome.from_addr = from;
                        return Ok(outcome);
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        // Authenticated but not a chitchat message.
                        self.pending = None;
                        self.metrics.count_drop(DropReason::BadPayload);
                        debug!(peer = %from, "authenticated gossip datagram did not decode");
                    }
                }
            }
            let (from, payload) = self
                .inbound
                .recv()
                .await
                .context("the gossip socket reader stopped")?;
            self.tap
                .send(&payload)
                .await
                .context("handing a datagram to the gossip codec")?;
            self.pending = Some((from, Instant::now() + DECODE_DEADLINE));
        }
    }
}

/// A running membership layer.
pub struct Gossip {
    handle: ChitchatHandle,
    self_name: String,
}

impl Gossip {
    pub async fn start(
        config: &Config,
        generation: u64,
        timing: &Timing,
        transport: EncryptedTransport,
        initial: Vec<(String, String)>,
    ) -> anyhow::Result<Gossip> {
        let handle = spawn_chitchat(
            chitchat_config(config, generation, timing),
            initial,
            &transport,
        )
        .await
        .context("starting gossip")?;
        Ok(Gossip {
            handle,
            self_name: config.node_name.clone(),
        })
    }

    /// Set our own keys (only those that changed produce gossip traffic).
    pub async fn publish(&self, kv: &[(&str, String)]) {
        self.handle
            .with_chitchat(|c| {
                let state = c.self_node_state();
                for (k, v) in kv {
                    if state.get(k) != Some(v.as_str()) {
                        state.set(*k, v);
                    }
                }
            })
            .await;
    }

    /// One member per node name, from every node state chitchat knows.
    pub async fn view(&self) -> MembershipView {
        let self_name = self.self_name.clone();
        self.handle
            .with_chitchat(|c| {
                let live: std::collections::HashSet<ChitchatId> = c.live_nodes().cloned().collect();
                let incarnations: Vec<MemberInfo> = c
                    .node_states()
                    .iter()
                    .map(|(id, state)| {
                        let is_self = *id == *c.self_chitchat_id();
                        MemberInfo::from_kv(
                            &id.node_id,
                            id.generation_id,
                            id.gossip_advertise_addr,
                            is_self || live.contains(id),
                            state.key_values(),
                        )
                    })
                    // Ignore older incarnations of ourselves that peers still gossip.
                    .filter(|m| {
                        m.name != self_name || m.generation <= c.self_chitchat_id().generation_id
                    })
                    .collect();
                MembershipView::from_incarnations(incarnations)
            })
            .await
    }

    /// Announce a clean stop, let it spread, then stop gossiping.
    pub async fn leave(self, flush: Duration) {
        self.publish(&[(keys::LEAVING, "1".to_string())]).await;
        tokio::time::sleep(flush).await;
        let _ = self.handle.shutdown().await;
    }
}

/// The keys this node publishes about itself at start. `lb`: the health of
/// its load balancer as known at start.
pub fn initial_keys(config: &Config, lb: LbHealth) -> Vec<(String, String)> {
    let mut kv = vec![
        (
            keys::ROLES.to_string(),
            membership::format_roles(&config.roles),
        ),
        (
            keys::VOTERS.to_string(),
            membership::format_list(&config.voters),
        ),
        (keys::LB.to_string(), lb.as_str().to_string()),
        (keys::DRAINED.to_string(), "0".to_string()),
        (keys::VIP.to_string(), "0".to_string()),
        (keys::KUBE.to_string(), "none".to_string()),
        (keys::LEAVING.to_string(), "0".to_string()),
        (
            keys::VERSION.to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    ];
    if config.is_vip_candidate()
        && let Some(v) = &config.vip
    {
        kv.push((keys::PRIORITY.to_string(), v.priority.to_string()));
    }
    kv
}
