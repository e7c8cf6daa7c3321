//! The one UDP socket an agent talks to its peers on (`advertise_addr:gossip_port`).
//!
//! Every datagram in or out is an authenticated frame (kubeha_core::frame).
//! A reader task opens each incoming datagram and drops (and counts) what
//! fails authentication, is malformed, comes from another cluster, from
//! another address than the one its sender is bound to, is addressed to
//! another node or to an earlier run of this one, or is a replay; it hands
//! the rest to gossip or to the lease/lock logic by channel. Nothing
//! unauthenticated ever reaches chitchat, and nothing is ever sent in reply
//! to a datagram that did not authenticate.
//!
//! Outgoing frames carry this node's name, generation, address, a counter
//! and its epoch, and what it last heard from the recipient (its generation
//! and epoch), so a recipient can tell a fresh frame meant for its current
//! run from a captured one (docs/PROTOCOL.md, "Trust model").

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use kubeha_core::frame::{
    self, Channel, DropReason, Header, Keyring, Local, ReplayGuard, Rings, Tier,
};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::clock;
use crate::metrics::Metrics;

/// Frames older or newer than this (sender's vs receiver's wall clock) are
/// dropped as stale. Peers' clocks must agree within it (NTP does far better).
/// Lease and lock frames are held to a much shorter window, in the
/// receiver's own clock: [`frame::check_addressed`].
pub const REPLAY_WINDOW_MS: u64 = 60_000;
/// Bound on the senders whose counters are remembered.
const REPLAY_CAPACITY: usize = 4096;
/// Bound on the peers whose generation and epoch are remembered.
const BOOK_CAPACITY: usize = 4096;

/// One authenticated datagram for gossip or the lease logic.
#[derive(Debug)]
pub struct Inbound {
    /// The UDP source (equal to `header.sender_addr`).
    pub from: SocketAddr,
    pub header: Header,
    pub payload: Vec<u8>,
}

/// What this node last heard from each peer, per tier: its generation, its
/// epoch and the counter of that frame. Control-tier entries are learned
/// only from control-tier frames, so a cluster-key holder cannot make this
/// node address its lease traffic to a run that does not exist.
#[derive(Default)]
struct PeerBook {
    /// Per tier (a table each, bounded on its own: cluster-key holders
    /// sending under many names can only ever clear the member tier's).
    heard: [HashMap<String, (u64, u64, u32)>; 2],
    /// Gossip senders by address (chitchat sends to addresses).
    names: HashMap<SocketAddr, String>,
}

impl PeerBook {
    fn learn(&mut self, from: SocketAddr, h: &Header) {
        let heard = &mut self.heard[h.tier as usize];
        if heard.len() >= BOOK_CAPACITY && !heard.contains_key(&h.sender) {
            heard.clear();
        }
        if self.names.len() >= BOOK_CAPACITY {
            self.names.clear();
        }
        // The replay guard passed it: another run (even a lower generation,
        // after silence), or a later frame of the same run.
        let newer = heard
            .get(&h.sender)
            .is_none_or(|&(g, c, _)| h.sender_gen != g || h.counter > c);
        if newer {
            heard.insert(h.sender.clone(), (h.sender_gen, h.counter, h.sender_epoch));
        }
        if h.channel == Channel::Gossip {
            self.names.insert(from, h.sender.clone());
        }
    }

    /// (generation, epoch) of `name` as last heard at `tier`; zeros if never.
    fn address(&self, tier: Tier, name: &str) -> (u64, u32) {
        self.heard[tier as usize]
            .get(name)
            .map_or((0, 0), |&(g, _, e)| (g, e))
    }
}

pub struct FrameSocket {
    socket: UdpSocket,
    rings: RwLock<Rings>,
    tag: [u8; 8],
    replay: Mutex<ReplayGuard>,
    book: Mutex<PeerBook>,
    metrics: Arc<Metrics>,
    name: String,
    generation: u64,
    addr: SocketAddr,
    epoch_us: u64,
    counter: AtomicU64,
}

/// Who this node is on the wire.
pub struct Identity {
    pub name: String,
    /// The agent generation (gossip's too): increasing across restarts.
    pub generation: u64,
    /// One epoch of this node's clock: its lease length.
    pub epoch: Duration,
}

impl FrameSocket {
    pub async fn bind(
        addr: SocketAddr,
        rings: Rings,
        cluster: &str,
        identity: Identity,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<FrameSocket>> {
        let socket = UdpSocket::bind(addr).await.with_context(|| {
            format!("binding the gossip socket {addr}/udp (`advertise_addr`, `gossip_port`)")
        })?;
        Ok(Arc::new(FrameSocket {
            socket,
            rings: RwLock::new(rings),
            tag: frame::cluster_tag(cluster),
            replay: Mutex::new(ReplayGuard::new(REPLAY_WINDOW_MS, REPLAY_CAPACITY)),
            book: Mutex::new(PeerBook::default()),
            metrics,
            name: identity.name,
            generation: identity.generation,
            addr,
            epoch_us: u64::try_from(identity.epoch.as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
            counter: AtomicU64::new(1),
        }))
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Swap the keys (SIGHUP after a key rotation step).
    pub fn set_rings(&self, rings: Rings) {
        *self.rings.write().expect("keyring lock") = rings;
    }

    pub fn key_ids(&self) -> Vec<String> {
        self.rings.read().expect("keyring lock").member.ids()
    }

    pub fn control_key_ids(&self) -> Vec<String> {
        self.rings
            .read()
            .expect("keyring lock")
            .control
            .as_ref()
            .map(Keyring::ids)
            .unwrap_or_default()
    }

    /// The control keyring, if this node holds one.
    pub fn control_ring(&self) -> Option<Keyring> {
        self.rings.read().expect("keyring lock").control.clone()
    }

    pub fn has_control(&self) -> bool {
        self.rings.read().expect("keyring lock").control.is_some()
    }

    /// The tier this node seals lease traffic with.
    pub fn top_tier(&self) -> Tier {
        self.rings.read().expect("keyring lock").top_tier()
    }

    fn epoch(&self) -> u32 {
        u32::try_from(clock::now().as_micros() / self.epoch_us).unwrap_or(u32::MAX)
    }

    /// This node as a recipient, now.
    pub fn local(&self) -> Local {
        Local {
            name: self.name.clone(),
            generation: self.generation,
            epoch: self.epoch(),
        }
    }

    /// Seal and send to `to`, naming `recipient` (`None`: whoever last sent
    /// gossip from `to`). An oversize payload is dropped and counted, not an
    /// error (chitchat treats send errors as a broken transport).
    /// Seal `payload` for `to` exactly as [`send`](Self::send) does: this
    /// node's identity, the next counter, and what it last heard from the
    /// recipient. Also for a datagram sent later by someone else: the VIP
    /// guardian's releases (guard.rs), sent if this agent dies. Such a frame
    /// opens while the recipient's epoch it echoes is recent
    /// (`frame::MAX_EPOCH_LAG` leases), so the agent seals them again often.
    pub fn seal(
        &self,
        to: SocketAddr,
        channel: Channel,
        tier: Tier,
        recipient: Option<&str>,
        payload: &[u8],
    ) -> Result<Vec<u8>, DropReason> {
        let (recipient, (recipient_gen, echo_epoch)) = {
            let book = self.book.lock().expect("peer book lock");
            let name = match recipient {
                Some(n) => n.to_string(),
                None => book.names.get(&to).cloned().unwrap_or_default(),
            };
            let a = book.address(tier, &name);
            (name, a)
        };
        let header = Header {
            channel,
            tier,
            sender: self.name.clone(),
            sender_gen: self.generation,
            counter: self.counter.fetch_add(1, Ordering::Relaxed),
            sender_epoch: self.epoch(),
            sender_addr: self.addr,
            recipient,
            recipient_gen,
            echo_epoch,
        };
        {
            let rings = self.rings.read().expect("keyring lock");
            match rings.ring(tier) {
                Some(ring) => frame::seal(
                    ring,
                    self.tag,
                    &header,
                    rand::random(),
                    clock::unix_ms(),
                    payload,
                ),
                None => Err(DropReason::Tier),
            }
        }
    }

    pub async fn send(
        &self,
        to: SocketAddr,
        channel: Channel,
        tier: Tier,
        recipient: Option<&str>,
        payload: &[u8],
    ) -> io::Result<usize> {
        let bytes = match self.seal(to, channel, tier, recipient, payload) {
            Ok(b) => b,
            Err(reason) => {
                self.metrics.count_drop(reason);
                warn!(peer = %to, len = payload.len(), reason = %reason, "outgoing datagram dropped");
                return Ok(0);
            }
        };
        let n = self.socket.send_to(&bytes, to).await?;
        self.metrics.count_packet("out", channel, n);
        Ok(n)
    }

    /// Open and check one datagram.
    fn open(&self, from: SocketAddr, datagram: &[u8]) -> Result<Inbound, DropReason> {
        let opened = {
            let rings = self.rings.read().expect("keyring lock");
            frame::open(&rings, self.tag, datagram)?
        };
        let h = &opened.header;
        // The sender's socket is bound to the address it names; nobody
        // speaks for this node.
        if h.sender_addr != from || h.sender == self.name {
            return Err(DropReason::Spoofed);
        }
        // A lease frame addressed to an earlier run of this node is checked
        // after decoding (`frame::check_addressed`, for every message but a
        // `Probe`): a probe is how a peer that only knows that earlier run
        // learns this one (the reply tells it), since a restarted voter
        // speaks to a candidate only when asked. Dropping it here left every
        // candidate addressing a restarted voter's old run for good.
        if (!h.recipient.is_empty() && h.recipient != self.name)
            || (h.channel == Channel::Gossip
                && h.recipient_gen != 0
                && h.recipient_gen != self.generation)
        {
            return Err(DropReason::Misaddressed);
        }
        if h.channel == Channel::Gossip && h.tier != Tier::Member {
            return Err(DropReason::Tier);
        }
        self.replay
            .lock()
            .expect("replay lock")
            .check(clock::unix_ms(), &opened)?;
        self.book
            .lock()
            .expect("peer book lock")
            .learn(from, &opened.header);
        Ok(Inbound {
            from,
            header: opened.header,
            payload: opened.payload,
        })
    }

    /// Read datagrams until the socket breaks, dispatching by channel.
    pub fn spawn_reader(
        self: &Arc<Self>,
        gossip: mpsc::Sender<Inbound>,
        lease: mpsc::Sender<Inbound>,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let (n, from) = match this.socket.recv_from(&mut buf).await {
                    Ok(r) => r,
                    Err(e) if transient(&e) => continue,
                    Err(e) => {
                        warn!(error = %e, "gossip socket receive failed; stopping the reader");
                        return;
                    }
                };
                match this.open(from, &buf[..n]) {
                    Ok(inbound) => {
                        let channel = inbound.header.channel;
                        this.metrics.count_packet("in", channel, n);
                        let tx = match channel {
                            Channel::Gossip => &gossip,
                            Channel::Lease => &lease,
                        };
                        if tx.try_send(inbound).is_err() {
                            debug!(peer = %from, ?channel, "inbound queue full, datagram dropped");
                        }
                    }
                    Err(reason) => {
                        this.metrics.count_drop(reason);
                        debug!(peer = %from, len = n, reason = %reason, "datagram dropped");
                    }
                }
            }
        })
    }
}

fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    ) || e.raw_os_error() == Some(libc::ENOBUFS)
}
