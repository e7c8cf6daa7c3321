//! Membership over chitchat, encrypted on the wire.
//!
//! chitchat hands its `Transport` decoded envelopes and keeps its wire codec
//! private, so encryption cannot sit inside the codec. Instead
//! [`EncryptedSocket`] uses chitchat's own public `UdpSocket` as the codec on
//! a private loopback port:
//!
//! ```text
//!  send: chitchat ─envelope→ codec.send(tap) ─plaintext→ tap ─seal→ FrameSocket → peer
//!  recv: peer → FrameSocket (open, replay check) → tap ─plaintext, marker→ codec.recv() → chitchat
//! ```
//!
//! `tap` is connected to the codec's address and the codec's socket to the
//! tap's ([`connect_codec`]), so the kernel delivers to each only what the
//! other wrote: a local process writing to either loopback port reaches
//! nothing (the codec's reads are checked to come from `tap` as well).
//! Every relayed datagram is followed by a *marker* (an envelope peers never
//! send us: `BadCluster`, since the frame's cluster tag already matched), and
//! the codec delivers the tap's datagrams in order: what comes out before the
//! marker belongs to that datagram, and a marker alone means it did not
//! decode. No deadline, so neither a local flood of junk nor a stall can
//! attribute one peer's message to another.
//!
//! Role claims: [`Gossip::view_if_changed`] believes a member's `control-plane` and
//! `lb` roles only with a valid `proof` key, an Ed25519 signature under the
//! control key (`kubeha_core::proof`). Nodes with the control key verify with
//! its public half; nodes without it (workers) verify with
//! `control_public_keys`, and only a worker configured without any takes the
//! roles as gossiped (it warns at start: docs/join.md).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::{
    ChitchatConfig, ChitchatEnvelope, ChitchatHandle, ChitchatId, ChitchatMessage,
    FailureDetectorConfig, ProtocolVersion, spawn_chitchat,
};
use kubeha_core::config::Config;
use kubeha_core::frame::{Channel, DropReason, Keyring, Tier};
use kubeha_core::membership::{self, LbHealth, MemberInfo, MembershipView, keys};
use kubeha_core::proof::{self, ProofKey};
use kubeha_core::timing::{SynPacer, Timing};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::debug;

use crate::clock;
use crate::gossip_wire::{Codec, Reassembly};
use crate::metrics::Metrics;
use crate::net::{FrameSocket, Inbound};

/// How long a relayed datagram and its marker may take through the loopback
/// codec: only a loss on loopback (or a stall of this process that long)
/// reaches it.
const RELAY_DEADLINE: Duration = Duration::from_secs(2);

/// A message from a peer this close to chitchat's limit had its delta cut
/// short: the peer holds more for us (see [`SynPacer::credit`]).
const TRUNCATED_MESSAGE: usize = 64_000;

/// How often the member count the SYN pacer works from is refreshed.
const MEMBER_COUNT_EVERY: Duration = Duration::from_secs(1);

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
    /// Members chitchat knows (kept by [`Gossip`]): what SYNs are paced by.
    members: Arc<AtomicUsize>,
    timing: Mutex<Timing>,
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
            members: Arc::new(AtomicUsize::new(0)),
            timing: Mutex::new(Timing::DEFAULT),
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
        let tap_addr = tap.local_addr()?;
        connect_codec(codec_addr, tap_addr)?;
        let mut codec = codec;
        let mut buf = vec![0u8; 65_536];
        let wire = Codec::new().context("creating the gossip compression context")?;
        codec.send(tap_addr, marker()).await?;
        let n = tap
            .recv(&mut buf)
            .await
            .context("reading back the gossip codec's marker")?;
        Ok(Box::new(EncryptedSocket {
            frames: self.frames.clone(),
            metrics: self.metrics.clone(),
            inbound,
            codec,
            tap_addr,
            tap,
            marker: buf[..n].to_vec(),
            pending: None,
            buf,
            wire,
            reassembly: Reassembly::default(),
            next_id: 0,
            pacer: SynPacer::default(),
            members: self.members.clone(),
            timing: *self.timing.lock().expect("transport lock"),
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
    /// The marker envelope's bytes.
    marker: Vec<u8>,
    /// The peer whose plaintext sits in the codec, whether its message came
    /// out already (then only its marker is left), and until when to wait.
    /// Kept across calls because chitchat may cancel `recv`.
    pending: Option<(SocketAddr, bool, Instant)>,
    buf: Vec<u8>,
    /// Compression and fragments (gossip_wire.rs).
    wire: Codec,
    reassembly: Reassembly,
    next_id: u32,
    /// Leaves SYNs out above `GOSSIP_FULL_RATE_MEMBERS` members.
    pacer: SynPacer,
    members: Arc<AtomicUsize>,
    timing: Timing,
}

/// Connect the codec's socket (chitchat owns it; found by its address among
/// this process's descriptors) to the tap: the kernel then drops datagrams
/// from anyone else before they reach its queue, so another local process
/// can neither inject gossip nor fill the codec's buffer (and the log with
/// chitchat's complaints about junk).
fn connect_codec(codec: SocketAddr, tap: SocketAddr) -> anyhow::Result<()> {
    use nix::sys::socket::{SockaddrIn, connect, getsockname};
    let (SocketAddr::V4(codec4), SocketAddr::V4(tap4)) = (codec, tap) else {
        anyhow::bail!("the gossip codec and tap are on IPv4 loopback");
    };
    let want = SockaddrIn::from(codec4);
    for fd in 0..65_536 {
        if let Ok(a) = getsockname::<SockaddrIn>(fd)
            && a == want
        {
            connect(fd, &SockaddrIn::from(tap4))
                .with_context(|| format!("connecting the gossip codec {codec} to its tap {tap}"))?;
            return Ok(());
        }
    }
    anyhow::bail!("the gossip codec's socket {codec} is not among this process's descriptors")
}

/// The envelope that follows every relayed datagram.
fn marker() -> ChitchatEnvelope {
    ChitchatEnvelope {
        version: ProtocolVersion::V0,
        message: ChitchatMessage::BadCluster,
    }
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
        let is_syn = matches!(envelope.message, ChitchatMessage::Syn { .. });
        if is_syn {
            let members = self.members.load(Ordering::Relaxed);
            if self.timing.paces_gossip(members)
                && !self
                    .pacer
                    .admit(clock::now(), self.timing.syn_rate(members))
            {
                self.metrics
                    .gossip_messages
                    .with_label_values(&["paced"])
                    .inc();
                return Ok(SendOutcome { num_bytes_sent: 0 });
            }
        }
        self.codec.send(self.tap_addr, envelope).await?;
        let n = self
            .tap
            .recv(&mut self.buf)
            .await
            .context("reading back the gossip codec's output")?;
        if is_syn {
            // A SYN is this node's digest plus the cluster name.
            self.metrics
                .gossip_digest_bytes
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.next_id = self.next_id.wrapping_add(1);
        let encoded = self.wire.encode(&self.buf[..n], self.next_id);
        if encoded.compressed {
            self.metrics
                .gossip_messages
                .with_label_values(&["compressed"])
                .inc();
        }
        if encoded.frames.len() > 1 {
            self.metrics
                .gossip_messages
                .with_label_values(&["fragmented"])
                .inc();
        }
        let mut num_bytes_sent = 0;
        for payload in &encoded.frames {
            // A peer that is unreachable right now is not a broken transport.
            match self
                .frames
                .send(to, Channel::Gossip, Tier::Member, None, payload)
                .await
            {
                Ok(sent) => num_bytes_sent += sent,
                Err(e) => {
                    debug!(peer = %to, error = %e, "gossip send failed");
                    break;
                }
            }
        }
        Ok(SendOutcome { num_bytes_sent })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            if let Some((from, delivered, deadline)) = self.pending {
                let mut outcome = match tokio::time::timeout_at(deadline, self.codec.recv()).await {
                    Ok(r) => r?,
                    Err(_) => {
                        // Our own loopback datagram was lost (the codec's
                        // socket is connected, so nothing else competes for
                        // its buffer): give up on it rather than wait forever.
                        self.pending = None;
                        self.metrics.count_drop(DropReason::BadPayload);
                        debug!(peer = %from, "gossip datagram lost on the loopback relay");
                        continue;
                    }
                };
                if outcome.from_addr != self.tap_addr {
                    // Someone else wrote to the codec's loopback port.
                    self.metrics.count_drop(DropReason::Malformed);
                    continue;
                }
                if matches!(outcome.envelope.message, ChitchatMessage::BadCluster) {
                    if !delivered {
                        // Authenticated but not a chitchat message (or a
                        // `BadCluster`, which a peer of our cluster never sends).
                        self.metrics.count_drop(DropReason::BadPayload);
                        debug!(peer = %from, "authenticated gossip datagram did not decode");
                    }
                    self.pending = None;
                    continue;
                }
                if delivered {
                    // Cannot happen: one datagram decodes to one envelope.
                    self.metrics.count_drop(DropReason::Malformed);
                    continue;
                }
                self.pending = Some((from, true, deadline));
                outcome.from_addr = from;
                return Ok(outcome);
            }
            let inbound = self
                .inbound
                .recv()
                .await
                .context("the gossip socket reader stopped")?;
            let sender = (inbound.header.sender.as_str(), inbound.header.sender_gen);
            let message = match self
                .reassembly
                .accept(sender, inbound.payload)
                .and_then(|whole| whole.map(|w| self.wire.decode(w)).transpose())
            {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(e) => {
                    self.metrics.count_drop(DropReason::BadPayload);
                    debug!(peer = %inbound.from, error = ?e, "gossip payload did not decode");
                    continue;
                }
            };
            if message.len() >= TRUNCATED_MESSAGE {
                self.pacer.credit();
            }
            self.tap
                .send(&message)
                .await
                .context("handing a datagram to the gossip codec")?;
            self.tap
                .send(&self.marker)
                .await
                .context("handing a marker to the gossip codec")?;
            self.pending = Some((inbound.from, false, Instant::now() + RELAY_DEADLINE));
        }
    }
}

/// A running membership layer.
pub struct Gossip {
    handle: ChitchatHandle,
    self_name: String,
    cluster: String,
    generation: u64,
    addr: SocketAddr,
    /// What this incarnation's role proof covers (`membership::proof_subject`).
    proof_subject: String,
    frames: Arc<FrameSocket>,
    /// `control_public_keys` from the config.
    public_keys: Vec<ProofKey>,
    proofs: Mutex<ProofCache>,
    /// The fingerprint of the state the last view was built from
    /// ([`Gossip::view_if_changed`]).
    last_view: Mutex<Option<u64>>,
    members: Arc<AtomicUsize>,
    _counter: AbortOnDrop,
}

/// Stops the member-count task with the [`Gossip`] that owns it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Outcomes of signature checks: a view is rebuilt every gossip round, and a
/// member's proof changes only with its incarnation or a key rotation.
#[derive(Default)]
struct ProofCache {
    /// (verifying keys, signed message, proof) → valid.
    checked: std::collections::HashMap<(Vec<ProofKey>, Vec<u8>, String), bool>,
}

impl ProofCache {
    /// Enough for every control-tier incarnation of a large cluster; workers
    /// carry no proof and never reach the cache.
    const MAX: usize = 256;

    fn check(&mut self, keys: &[ProofKey], message: Vec<u8>, proof: &str) -> bool {
        let k = (keys.to_vec(), message, proof.to_string());
        if let Some(v) = self.checked.get(&k) {
            return *v;
        }
        let v = proof::verify(keys, &k.1, proof);
        if self.checked.len() >= Self::MAX {
            self.checked.clear();
        }
        self.checked.insert(k, v);
        v
    }
}

impl Gossip {
    pub async fn start(
        config: &Config,
        generation: u64,
        timing: &Timing,
        transport: EncryptedTransport,
        initial: Vec<(String, String)>,
    ) -> anyhow::Result<Gossip> {
        let frames = transport.frames.clone();
        *transport.timing.lock().expect("transport lock") = *timing;
        let members = transport.members.clone();
        let mut initial = initial;
        let tls_fp = initial
            .iter()
            .find(|(k, _)| k == keys::TLS_FINGERPRINT)
            .map(|(_, v)| v.clone());
        let subject =
            membership::proof_subject(&membership::format_roles(&config.roles), tls_fp.as_deref());
        if let Some(control) = frames.control_ring() {
            initial.push((
                keys::PROOF.to_string(),
                own_proof(config, generation, &control, &subject),
            ));
        }
        let handle = spawn_chitchat(
            chitchat_config(config, generation, timing),
            initial,
            &transport,
        )
        .await
        .context("starting gossip")?;
        let chitchat = handle.chitchat();
        let count = members.clone();
        let counter = AbortOnDrop(tokio::spawn(async move {
            let mut every = tokio::time::interval(MEMBER_COUNT_EVERY);
            loop {
                every.tick().await;
                let n = chitchat.lock().await.node_states().len();
                count.store(n, Ordering::Relaxed);
            }
        }));
        Ok(Gossip {
            handle,
            self_name: config.node_name.clone(),
            cluster: config.cluster.clone(),
            generation,
            addr: config.gossip_addr(),
            proof_subject: subject,
            frames,
            public_keys: config.control_public_keys.clone(),
            proofs: Mutex::new(ProofCache::default()),
            last_view: Mutex::new(None),
            members,
            _counter: counter,
        })
    }

    /// Publish this incarnation's role proof under the current primary
    /// control key (after a key reload).
    pub async fn republish_proof(&self) {
        if let Some(control) = self.frames.control_ring() {
            let proof = proof::role_proof(
                control.primary(),
                &self.cluster,
                &self.self_name,
                self.generation,
                self.addr,
                &self.proof_subject,
            );
            self.publish(&[(keys::PROOF, proof)]).await;
        }
    }

    /// The keys role proofs are checked with: the public halves of our
    /// control keys and the configured `control_public_keys`. Empty on a
    /// worker configured without any: it cannot check.
    fn verifiers(&self) -> Vec<ProofKey> {
        let mut keys = self
            .frames
            .control_ring()
            .map(|r| ProofKey::of_ring(&r))
            .unwrap_or_default();
        for k in &self.public_keys {
            if !keys.contains(k) {
                keys.push(*k);
            }
        }
        keys
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

    /// One member per node name, from every node state chitchat knows, if
    /// anything it is built from changed since the last view this returned:
    /// a node's incarnation, its key-values (chitchat's `max_version`), its
    /// liveness, or the keys role proofs are checked with. `None` costs one
    /// pass over the members' ids and versions; the agent asks every gossip
    /// round, and most rounds change nothing.
    pub async fn view_if_changed(&self) -> Option<MembershipView> {
        let self_name = self.self_name.clone();
        let verifiers = self.verifiers();
        let cluster = self.cluster.clone();
        let proofs = &self.proofs;
        let last_view = &self.last_view;
        self.handle
            .with_chitchat(|c| {
                let live: std::collections::HashSet<ChitchatId> = c.live_nodes().cloned().collect();
                let print = state_fingerprint(
                    c.node_states()
                        .iter()
                        .map(|(id, s)| (id, s.max_version(), live.contains(id))),
                    &verifiers,
                );
                {
                    let mut last = last_view.lock().unwrap_or_else(|e| e.into_inner());
                    if *last == Some(print) {
                        return None;
                    }
                    *last = Some(print);
                }
                let mut proofs = proofs.lock().unwrap_or_else(|e| e.into_inner());
                let incarnations: Vec<MemberInfo> = c
                    .node_states()
                    .iter()
                    .map(|(id, state)| {
                        let is_self = *id == *c.self_chitchat_id();
                        let mut m = MemberInfo::from_kv(
                            &id.node_id,
                            id.generation_id,
                            id.gossip_advertise_addr,
                            is_self || live.contains(id),
                            state.key_values(),
                        );
                        if !verifiers.is_empty() {
                            check_member_roles(
                                &mut m,
                                &verifiers,
                                &mut proofs,
                                &cluster,
                                state.get(keys::ROLES),
                                state.get(keys::TLS_FINGERPRINT),
                                state.get(keys::PROOF),
                            );
                        }
                        m
                    })
                    // Ignore older incarnations of ourselves that peers still gossip.
                    .filter(|m| {
                        m.name != self_name || m.generation <= c.self_chitchat_id().generation_id
                    })
                    .collect();
                Some(MembershipView::from_incarnations(incarnations))
            })
            .await
    }

    /// Members chitchat knew at the last count (once a second): what the
    /// SYN pacer works from.
    pub fn members_known(&self) -> usize {
        self.members.load(Ordering::Relaxed)
    }

    /// Live members (this node included), straight from chitchat.
    pub async fn live_count(&self) -> usize {
        self.handle.with_chitchat(|c| c.live_nodes().count()).await
    }

    /// Members (this node included) whose state carries `key`: how far a
    /// node that just joined has caught up.
    pub async fn members_with_key(&self, key: &str) -> usize {
        self.handle
            .with_chitchat(|c| {
                c.node_states()
                    .values()
                    .filter(|s| s.get(key).is_some())
                    .count()
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

/// What a view is built from, as one number: every node state's id, its
/// key-value version and whether it is live, and the keys role proofs are
/// checked with. Heartbeats are left out: they change every round and no
/// view depends on them.
fn state_fingerprint<'a>(
    nodes: impl Iterator<Item = (&'a ChitchatId, u64, bool)>,
    verifiers: &[ProofKey],
) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (id, version, live) in nodes {
        (id, version, live).hash(&mut h);
    }
    verifiers.hash(&mut h);
    h.finish()
}

fn check_member_roles(
    m: &mut MemberInfo,
    keys: &[ProofKey],
    cache: &mut ProofCache,
    cluster: &str,
    roles: Option<&str>,
    tls_fp: Option<&str>,
    proof: Option<&str>,
) {
    let subject = membership::proof_subject(roles.unwrap_or_default(), tls_fp);
    let proven = proof.is_some_and(|p| {
        let msg = proof::message(cluster, &m.name, m.generation, m.addr, &subject);
        cache.check(keys, msg, p)
    });
    m.set_proven(proven);
}

/// This node's role proof under the primary control key.
pub fn own_proof(config: &Config, generation: u64, control: &Keyring, subject: &str) -> String {
    proof::role_proof(
        control.primary(),
        &config.cluster,
        &config.node_name,
        generation,
        config.gossip_addr(),
        subject,
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str, generation: u64) -> ChitchatId {
        ChitchatId::new(
            name.to_string(),
            generation,
            "198.18.0.2:7946".parse().unwrap(),
        )
    }

    #[test]
    fn the_fingerprint_follows_everything_a_view_is_built_from() {
        let (a, b) = (id("a", 1), id("b", 1));
        let key = ProofKey::of(&kubeha_core::frame::Key::from_bytes([7; 32]));
        let print = |nodes: &[(&ChitchatId, u64, bool)], keys: &[ProofKey]| {
            state_fingerprint(nodes.iter().copied(), keys)
        };
        let base = print(&[(&a, 3, true), (&b, 5, true)], &[key]);
        assert_eq!(base, print(&[(&a, 3, true), (&b, 5, true)], &[key]));
        // A key-value changed, a member died, a member came or went, a new
        // incarnation, a key rotation: each gives another fingerprint.
        assert_ne!(base, print(&[(&a, 3, true), (&b, 6, true)], &[key]));
        assert_ne!(base, print(&[(&a, 3, true), (&b, 5, false)], &[key]));
        assert_ne!(base, print(&[(&a, 3, true)], &[key]));
        assert_ne!(
            base,
            print(&[(&a, 3, true), (&id("b", 2), 5, true)], &[key])
        );
        assert_ne!(base, print(&[(&a, 3, true), (&b, 5, true)], &[]));
    }
}
