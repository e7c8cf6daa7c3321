//! Authenticated encryption of every datagram kubeha sends between agents.
//!
//! Gossip (chitchat), lease and lock messages all travel in one frame format,
//! sealed with XChaCha20-Poly1305 under a key derived from the cluster key
//! (tier `member`) or from the control key (tier `control`, lease and lock
//! traffic of voters, control planes and lb nodes):
//!
//! ```text
//!  0     2   3   4    5            13          21        29      33         41      45            63
//!  +-----+---+---+----+------------+-----------+---------+-------+----------+-------+-------------+
//!  | KH  |v2 |ch |tier| cluster tag| sender gen| counter | epoch | rcpt gen | echo  | sender addr |
//!  +-----+---+---+----+------------+-----------+---------+-------+----------+-------+-------------+
//!  | len | sender name | len | recipient name | nonce (24) | ciphertext + tag (16)            |
//!  +-----+-------------+-----+----------------+------------+----------------------------------+
//!  plaintext = sender's wall clock, unix ms (u64 LE) | payload
//!  AAD       = everything before the nonce
//! ```
//!
//! Integers are little-endian; the address is 16 bytes (IPv4-mapped IPv6)
//! and a big-endian port. The cluster tag lets a node tell a datagram of
//! another cluster from a forgery without trying keys. The header binds a
//! frame to its sender (name, generation, address) and, for lease and lock
//! traffic, to one run of its recipient ([`check_addressed`]); the counter
//! and generation feed the [`ReplayGuard`]. Nothing here does I/O: nonces,
//! clocks and epochs are arguments.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

pub const MAGIC: [u8; 2] = *b"KH";
pub const VERSION: u8 = 2;
pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// The largest UDP payload over IPv4.
pub const MAX_DATAGRAM: usize = 65_507;

/// Which subsystem a frame is for. Part of the AAD, so a gossip frame cannot
/// be replayed as a lease frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Channel {
    Gossip = 0,
    Lease = 1,
}

impl Channel {
    fn from_u8(b: u8) -> Option<Channel> {
        match b {
            0 => Some(Channel::Gossip),
            1 => Some(Channel::Lease),
            _ => None,
        }
    }
}

/// Which key sealed a frame: the cluster key every member holds, or the
/// control key only voters, control planes and lb nodes hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Tier {
    Member = 0,
    Control = 1,
}

impl Tier {
    fn from_u8(b: u8) -> Option<Tier> {
        match b {
            0 => Some(Tier::Member),
            1 => Some(Tier::Control),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Member => "member",
            Tier::Control => "control",
        }
    }
}

/// Why a datagram was dropped. Labels of `kubeha_gossip_dropped_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Too short, wrong magic, version or channel.
    Malformed,
    /// Another cluster's tag.
    OtherCluster,
    /// No key of the keyring authenticates it.
    Auth,
    /// Timestamp outside the replay window.
    Stale,
    /// Seen before.
    Replay,
    /// Too large to send.
    Oversize,
    /// Authenticated, but the payload does not decode.
    BadPayload,
    /// Sealed with a key tier this node does not hold, or a message the
    /// tier it came with may not send (a lease vote under the cluster key).
    Tier,
    /// Not addressed to this node's name and current generation.
    Misaddressed,
    /// The source address is not the sender's: not the one in the frame,
    /// or not the one the sender's member gossips.
    Spoofed,
    /// A name or value from a peer that this node does not accept.
    BadName,
    /// A lease-channel frame from a node gossip does not show (yet).
    UnknownPeer,
}

impl DropReason {
    pub const ALL: [DropReason; 12] = [
        DropReason::Malformed,
        DropReason::OtherCluster,
        DropReason::Auth,
        DropReason::Stale,
        DropReason::Replay,
        DropReason::Oversize,
        DropReason::BadPayload,
        DropReason::Tier,
        DropReason::Misaddressed,
        DropReason::Spoofed,
        DropReason::BadName,
        DropReason::UnknownPeer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::OtherCluster => "other_cluster",
            DropReason::Auth => "auth",
            DropReason::Stale => "stale",
            DropReason::Replay => "replay",
            DropReason::Oversize => "oversize",
            DropReason::BadPayload => "bad_payload",
            DropReason::Tier => "tier",
            DropReason::Misaddressed => "misaddressed",
            DropReason::Spoofed => "spoofed",
            DropReason::BadName => "bad_name",
            DropReason::UnknownPeer => "unknown_peer",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no key found (expected a base64 line of 32 bytes; `kubeha-ctl keygen` writes one)")]
    Empty,
    #[error("line {line}: not base64")]
    NotBase64 { line: usize },
    #[error("line {line}: key is {len} bytes, expected 32")]
    WrongLength { line: usize, len: usize },
    #[error("line {line}: the same key is listed twice")]
    Duplicate { line: usize },
}

/// One 32-byte cluster key. Never printed: `Debug` shows only its id.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    raw: [u8; 32],
    wire: [u8; 32],
}

impl Key {
    pub fn from_bytes(raw: [u8; 32]) -> Key {
        Key {
            raw,
            wire: derive(&raw, b"kubeha/v1 wire"),
        }
    }

    /// A short, public fingerprint to tell keys apart in status and logs.
    pub fn id(&self) -> String {
        let d = Sha256::digest([b"kubeha/v1 key-id".as_slice(), &self.raw].concat());
        d[..4].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A secret derived for another purpose (e.g. a TLS pre-shared identity).
    pub fn derive(&self, purpose: &[u8]) -> [u8; 32] {
        derive(&self.raw, purpose)
    }

    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.raw)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.id())
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        // Do not leave key bytes in freed memory.
        self.raw.zeroize();
        self.wire.zeroize();
    }
}

fn derive(ikm: &[u8; 32], info: &[u8]) -> [u8; 32] {
    let hk = hkdf::Hkdf::<Sha256>::new(Some(b"kubeha cluster key"), ikm);
    let mut out = [0u8; 32];
    hk.expand(info, &mut out)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

/// The keys a node accepts; the first one is used to send. Rotation: add the
/// new key second everywhere, then make it first everywhere, then drop the
/// old one (docs/operations.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyring {
    keys: Vec<Key>,
}

impl Keyring {
    pub fn new(primary: Key) -> Keyring {
        Keyring {
            keys: vec![primary],
        }
    }

    /// The key file: one base64 key per line, primary first; blank lines and
    /// `#` comments are ignored.
    pub fn parse(text: &str) -> Result<Keyring, KeyError> {
        let mut keys: Vec<Key> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(t)
                .map_err(|_| KeyError::NotBase64 { line: i + 1 })?;
            let raw: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| KeyError::WrongLength {
                    line: i + 1,
                    len: bytes.len(),
                })?;
            let key = Key::from_bytes(raw);
            if keys.contains(&key) {
                return Err(KeyError::Duplicate { line: i + 1 });
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Keyring { keys })
    }

    pub fn primary(&self) -> &Key {
        &self.keys[0]
    }

    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(Key::id).collect()
    }

    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// Whether the two rings share a key (the control key must differ
    /// from the cluster key, or the control tier means nothing).
    pub fn shares_key_with(&self, other: &Keyring) -> bool {
        self.keys.iter().any(|k| other.keys.contains(k))
    }
}

/// The first 8 bytes of SHA-256 of the cluster name.
pub fn cluster_tag(cluster: &str) -> [u8; 8] {
    let d = Sha256::digest([b"kubeha/v1 cluster ".as_slice(), cluster.as_bytes()].concat());
    d[..8].try_into().expect("sha256 is 32 bytes")
}

/// The keys a node holds: the cluster key (every member) and, on voters,
/// control planes and lb nodes, the control key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rings {
    pub member: Keyring,
    pub control: Option<Keyring>,
}

impl Rings {
    pub fn ring(&self, tier: Tier) -> Option<&Keyring> {
        match tier {
            Tier::Member => Some(&self.member),
            Tier::Control => self.control.as_ref(),
        }
    }

    /// The best tier this node can seal with.
    pub fn top_tier(&self) -> Tier {
        if self.control.is_some() {
            Tier::Control
        } else {
            Tier::Member
        }
    }
}

/// Who sent a frame, to whom, and where it stands in the sender's sequence.
/// All of it is authenticated (it is the AEAD's associated data).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub channel: Channel,
    pub tier: Tier,
    /// The sender's node name.
    pub sender: String,
    /// The sender's agent generation (unix µs at its start, persisted and
    /// increasing): a restarted sender has a higher one.
    pub sender_gen: u64,
    /// Strictly increasing per sender generation, over all frames it sends.
    pub counter: u64,
    /// The sender's current epoch (its monotonic clock / its lease length).
    pub sender_epoch: u32,
    /// The address the sender's socket is bound to (`advertise_addr:gossip_port`).
    pub sender_addr: SocketAddr,
    /// The recipient's node name, `""` if not known (gossip to a new seed).
    pub recipient: String,
    /// The recipient's generation as the sender last heard it; 0 = unknown.
    pub recipient_gen: u64,
    /// The recipient's epoch as the sender last heard it.
    pub echo_epoch: u32,
}

/// Bytes of the header before the names.
const FIXED: usize = 2 + 1 + 1 + 1 + 8 + 8 + 8 + 4 + 8 + 4 + 18;
/// The shortest possible frame: empty names, empty payload.
pub const MIN_FRAME: usize = FIXED + 2 + NONCE_LEN + 8 + TAG_LEN;
/// Longest node name (as `config::check_name`).
pub const MAX_NAME: usize = 63;
/// Bytes a frame adds to its payload, at most.
pub const OVERHEAD: usize = MIN_FRAME + 2 * MAX_NAME;
/// A lease-channel frame is never longer than this: anything longer is
/// dropped before any key is tried (`wire::MAX_LEASE_MESSAGE` + overhead).
pub const MAX_LEASE_FRAME: usize = 1024 + OVERHEAD;

fn put_addr(out: &mut Vec<u8>, a: SocketAddr) {
    let ip = match a.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    out.extend_from_slice(&ip.octets());
    out.extend_from_slice(&a.port().to_be_bytes());
}

fn get_addr(b: &[u8]) -> SocketAddr {
    let octets: [u8; 16] = b[..16].try_into().expect("16 bytes");
    let v6 = Ipv6Addr::from(octets);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, u16::from_be_bytes([b[16], b[17]]))
}

/// A node name as a frame may carry it (`config::check_name`); the
/// recipient may be empty.
fn valid_name(s: &[u8], may_be_empty: bool) -> bool {
    (may_be_empty && s.is_empty()) || crate::config::is_node_name(s)
}

fn encode_header(tag: [u8; 8], h: &Header) -> Result<Vec<u8>, DropReason> {
    if !valid_name(h.sender.as_bytes(), false) || !valid_name(h.recipient.as_bytes(), true) {
        return Err(DropReason::Malformed);
    }
    let mut out = Vec::with_capacity(FIXED + 2 + h.sender.len() + h.recipient.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(h.channel as u8);
    out.push(h.tier as u8);
    out.extend_from_slice(&tag);
    out.extend_from_slice(&h.sender_gen.to_le_bytes());
    out.extend_from_slice(&h.counter.to_le_bytes());
    out.extend_from_slice(&h.sender_epoch.to_le_bytes());
    out.extend_from_slice(&h.recipient_gen.to_le_bytes());
    out.extend_from_slice(&h.echo_epoch.to_le_bytes());
    put_addr(&mut out, h.sender_addr);
    out.push(h.sender.len() as u8);
    out.extend_from_slice(h.sender.as_bytes());
    out.push(h.recipient.len() as u8);
    out.extend_from_slice(h.recipient.as_bytes());
    Ok(out)
}

/// Seal `payload` under the primary key of `ring` (the ring of `header.tier`).
/// `nonce` must be fresh random bytes.
pub fn seal(
    ring: &Keyring,
    tag: [u8; 8],
    header: &Header,
    nonce: [u8; NONCE_LEN],
    unix_ms: u64,
    payload: &[u8],
) -> Result<Vec<u8>, DropReason> {
    let mut out = encode_header(tag, header)?;
    let total = out.len() + NONCE_LEN + 8 + payload.len() + TAG_LEN;
    if total > MAX_DATAGRAM || (header.channel == Channel::Lease && total > MAX_LEASE_FRAME) {
        return Err(DropReason::Oversize);
    }
    let aad_len = out.len();
    out.extend_from_slice(&nonce);
    let mut plain = Vec::with_capacity(8 + payload.len());
    plain.extend_from_slice(&unix_ms.to_le_bytes());
    plain.extend_from_slice(payload);
    let cipher = XChaCha20Poly1305::new(&ring.primary().wire.into());
    let sealed = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: &plain,
                aad: &out[..aad_len],
            },
        )
        .map_err(|_| DropReason::Oversize)?;
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// An authenticated frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub header: Header,
    pub unix_ms: u64,
    pub payload: Vec<u8>,
}

/// Check and decrypt a datagram. Never panics, whatever the bytes. Cheap
/// checks (length, magic, cluster, names, tier held) come before any key
/// is tried.
pub fn open(rings: &Rings, tag: [u8; 8], datagram: &[u8]) -> Result<Opened, DropReason> {
    if datagram.len() < MIN_FRAME || datagram[..2] != MAGIC || datagram[2] != VERSION {
        return Err(DropReason::Malformed);
    }
    let channel = Channel::from_u8(datagram[3]).ok_or(DropReason::Malformed)?;
    if channel == Channel::Lease && datagram.len() > MAX_LEASE_FRAME {
        return Err(DropReason::Oversize);
    }
    let tier = Tier::from_u8(datagram[4]).ok_or(DropReason::Malformed)?;
    if datagram[5..13] != tag {
        return Err(DropReason::OtherCluster);
    }
    let u64_at = |i: usize| u64::from_le_bytes(datagram[i..i + 8].try_into().expect("8 bytes"));
    let u32_at = |i: usize| u32::from_le_bytes(datagram[i..i + 4].try_into().expect("4 bytes"));
    let sender_gen = u64_at(13);
    let counter = u64_at(21);
    let sender_epoch = u32_at(29);
    let recipient_gen = u64_at(33);
    let echo_epoch = u32_at(41);
    let sender_addr = get_addr(&datagram[45..63]);
    let mut i = FIXED;
    let mut name = |may_be_empty: bool| -> Result<String, DropReason> {
        let len = usize::from(*datagram.get(i).ok_or(DropReason::Malformed)?);
        let bytes = datagram
            .get(i + 1..i + 1 + len)
            .ok_or(DropReason::Malformed)?;
        if !valid_name(bytes, may_be_empty) {
            return Err(DropReason::Malformed);
        }
        i += 1 + len;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    };
    let sender = name(false)?;
    let recipient = name(true)?;
    let aad_len = FIXED + 2 + sender.len() + recipient.len();
    if datagram.len() < aad_len + NONCE_LEN + 8 + TAG_LEN {
        return Err(DropReason::Malformed);
    }
    let nonce: [u8; NONCE_LEN] = datagram[aad_len..aad_len + NONCE_LEN]
        .try_into()
        .map_err(|_| DropReason::Malformed)?;
    let ring = rings.ring(tier).ok_or(DropReason::Tier)?;
    for key in &ring.keys {
        let cipher = XChaCha20Poly1305::new(&key.wire.into());
        if let Ok(mut plain) = cipher.decrypt(
            &XNonce::from(nonce),
            Payload {
                msg: &datagram[aad_len + NONCE_LEN..],
                aad: &datagram[..aad_len],
            },
        ) {
            let unix_ms =
                u64::from_le_bytes(plain[..8].try_into().map_err(|_| DropReason::Malformed)?);
            plain.drain(..8);
            return Ok(Opened {
                header: Header {
                    channel,
                    tier,
                    sender,
                    sender_gen,
                    counter,
                    sender_epoch,
                    sender_addr,
                    recipient,
                    recipient_gen,
                    echo_epoch,
                },
                unix_ms,
                payload: plain,
            });
        }
    }
    Err(DropReason::Auth)
}

/// What a receiver knows about itself when it checks a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Local {
    pub name: String,
    pub generation: u64,
    /// Its current epoch (monotonic clock / lease length).
    pub epoch: u32,
}

/// A frame addressed to an epoch of the receiver older than this many
/// epochs is dropped: a lease or lock frame is accepted at most
/// `(MAX_EPOCH_LAG + 1)` leases of the receiver's clock after the receiver
/// last spoke to its sender.
pub const MAX_EPOCH_LAG: u32 = 3;

/// The strict check for lease and lock traffic: addressed to this node by
/// name, to its current generation, and to a recent epoch of it. A frame
/// captured before the receiver restarted, or held back for more than a
/// few leases, fails it.
pub fn check_addressed(local: &Local, h: &Header) -> Result<(), DropReason> {
    if h.recipient != local.name || h.recipient_gen != local.generation {
        return Err(DropReason::Misaddressed);
    }
    if h.echo_epoch > local.epoch || local.epoch - h.echo_epoch > MAX_EPOCH_LAG {
        return Err(DropReason::Stale);
    }
    Ok(())
}

/// One sender's sliding window of counters (as IPsec and WireGuard keep).
#[derive(Clone, Copy, Debug)]
struct Window {
    generation: u64,
    top: u64,
    /// Bit i set: counter `top - i` was seen.
    bits: u128,
    last_ms: u64,
}

const WINDOW_BITS: u64 = 128;

/// Rejects frames whose timestamp is outside `window_ms` of the local wall
/// clock, whose sender generation is older than one already seen from that
/// name (a restarted sender's earlier frames) or lies in the future, whose
/// counter was seen, or that fall behind the window. Keyed by (tier,
/// sender name, sender address; the socket checks that the address is the
/// datagram's source), so a forgery under the cluster key from another
/// address never moves the real sender's window, and none moves a control
/// tier window. Memory: one window per key, at most `capacity` (the
/// longest unheard is forgotten).
#[derive(Debug)]
pub struct ReplayGuard {
    window_ms: u64,
    capacity: usize,
    /// One table per tier, each bounded on its own: a cluster-key holder
    /// sending under many names can evict only member-tier windows.
    windows: [HashMap<(String, SocketAddr), Window>; 2],
}

impl ReplayGuard {
    pub fn new(window_ms: u64, capacity: usize) -> ReplayGuard {
        ReplayGuard {
            window_ms,
            capacity: capacity.max(1),
            windows: [HashMap::new(), HashMap::new()],
        }
    }

    /// Check a frame and remember it.
    pub fn check(&mut self, now_unix_ms: u64, frame: &Opened) -> Result<(), DropReason> {
        if frame.unix_ms.saturating_add(self.window_ms) < now_unix_ms
            || frame.unix_ms > now_unix_ms.saturating_add(self.window_ms)
        {
            return Err(DropReason::Stale);
        }
        let h = &frame.header;
        // Generations are unix µs at the sender's start: one from the
        // future would lock out the sender's real frames.
        if h.sender_gen / 1000 > now_unix_ms.saturating_add(self.window_ms) {
            return Err(DropReason::Stale);
        }
        let key = (h.sender.clone(), h.sender_addr);
        let c = h.counter;
        let windows = &mut self.windows[h.tier as usize];
        match windows.get_mut(&key) {
            // An earlier run's frame. Unless that sender has been silent
            // for longer than the window: then every frame of the run we
            // remember is stale anyway, and a lower generation is a new run
            // whose clock went back (state directory lost, clock stepped).
            Some(w)
                if h.sender_gen < w.generation
                    && now_unix_ms.saturating_sub(w.last_ms) <= self.window_ms =>
            {
                Err(DropReason::Replay)
            }
            Some(w) if h.sender_gen == w.generation => {
                if c > w.top {
                    let shift = c - w.top;
                    w.bits = if shift >= WINDOW_BITS {
                        0
                    } else {
                        w.bits << shift
                    };
                    w.bits |= 1;
                    w.top = c;
                } else {
                    let back = w.top - c;
                    if back >= WINDOW_BITS || w.bits & (1u128 << back) != 0 {
                        return Err(DropReason::Replay);
                    }
                    w.bits |= 1u128 << back;
                }
                w.last_ms = now_unix_ms;
                Ok(())
            }
            _ => {
                if !windows.contains_key(&key) && windows.len() >= self.capacity {
                    let oldest = windows
                        .iter()
                        .min_by_key(|(_, w)| w.last_ms)
                        .map(|(k, _)| k.clone());
                    if let Some(k) = oldest {
                        windows.remove(&k);
                    }
                }
                windows.insert(
                    key,
                    Window {
                        generation: h.sender_gen,
                        top: c,
                        bits: 1,
                        last_ms: now_unix_ms,
                    },
                );
                Ok(())
            }
        }
    }

    /// Senders remembered, over both tiers.
    pub fn len(&self) -> usize {
        self.windows.iter().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ring(b: u8) -> Keyring {
        Keyring::new(Key::from_bytes([b; 32]))
    }

    fn rings(b: u8) -> Rings {
        Rings {
            member: ring(b),
            control: Some(ring(b.wrapping_add(100))),
        }
    }

    fn hdr(channel: Channel, tier: Tier) -> Header {
        Header {
            channel,
            tier,
            sender: "cp-0".into(),
            sender_gen: 1_700_000_000_000_000,
            counter: 1,
            sender_epoch: 10,
            sender_addr: "198.18.0.2:7946".parse().unwrap(),
            recipient: "lb-1".into(),
            recipient_gen: 1_700_000_000_000_001,
            echo_epoch: 20,
        }
    }

    #[test]
    fn round_trip_and_rotation() {
        let tag = cluster_tag("lab");
        let old = ring(1);
        let h = hdr(Channel::Lease, Tier::Member);
        let f = seal(&old, tag, &h, [7; 24], 1234, b"hello").unwrap();
        assert_eq!(f.len(), MIN_FRAME + 4 + 4 + 5);
        let o = open(
            &Rings {
                member: old.clone(),
                control: None,
            },
            tag,
            &f,
        )
        .unwrap();
        assert_eq!(
            (&o.header, o.unix_ms, o.payload.as_slice()),
            (&h, 1234, &b"hello"[..])
        );

        // A node mid-rotation (new primary, old still accepted) reads both.
        let text = format!(
            "# rotated\n{}\n\n{}\n",
            Key::from_bytes([2; 32]).to_base64(),
            Key::from_bytes([1; 32]).to_base64()
        );
        let both = Keyring::parse(&text).unwrap();
        assert_eq!(both.ids().len(), 2);
        let r = |k: &Keyring| Rings {
            member: k.clone(),
            control: None,
        };
        assert!(open(&r(&both), tag, &f).is_ok());
        let g = seal(
            &both,
            tag,
            &hdr(Channel::Gossip, Tier::Member),
            [8; 24],
            1,
            b"x",
        )
        .unwrap();
        assert_eq!(open(&r(&old), tag, &g), Err(DropReason::Auth));
        assert!(open(&r(&ring(2)), tag, &g).is_ok());
        // IPv6 senders keep their address.
        let mut h6 = hdr(Channel::Gossip, Tier::Member);
        h6.sender_addr = "[fd00::5]:7946".parse().unwrap();
        let f6 = seal(&old, tag, &h6, [9; 24], 1, b"").unwrap();
        assert_eq!(open(&r(&old), tag, &f6).unwrap().header, h6);
    }

    #[test]
    fn tiers_are_separate_keys() {
        let tag = cluster_tag("lab");
        let both = rings(1);
        let worker = Rings {
            member: both.member.clone(),
            control: None,
        };
        let c = seal(
            both.control.as_ref().unwrap(),
            tag,
            &hdr(Channel::Lease, Tier::Control),
            [1; 24],
            5,
            b"vote",
        )
        .unwrap();
        assert!(open(&both, tag, &c).is_ok());
        // A node without the control key cannot read control frames ...
        assert_eq!(open(&worker, tag, &c), Err(DropReason::Tier));
        // ... and a frame sealed with the cluster key cannot claim the
        // control tier: the tier byte is authenticated and picks the key.
        let mut m = seal(
            &both.member,
            tag,
            &hdr(Channel::Lease, Tier::Member),
            [2; 24],
            5,
            b"vote",
        )
        .unwrap();
        assert!(open(&both, tag, &m).is_ok());
        m[4] = Tier::Control as u8;
        assert_eq!(open(&both, tag, &m), Err(DropReason::Auth));
    }

    #[test]
    fn wrong_key_cluster_and_tampering_are_dropped() {
        let tag = cluster_tag("lab");
        let f = seal(
            &ring(1),
            tag,
            &hdr(Channel::Gossip, Tier::Member),
            [0; 24],
            5,
            b"payload",
        )
        .unwrap();
        assert_eq!(open(&rings(9), tag, &f), Err(DropReason::Auth));
        assert_eq!(
            open(&rings(1), cluster_tag("prod"), &f),
            Err(DropReason::OtherCluster)
        );
        // Every header byte (names, generations, counter, address) is
        // authenticated.
        for i in 0..f.len() {
            let mut g = f.clone();
            g[i] ^= 0x01;
            assert!(
                open(&rings(1), tag, &g).is_err(),
                "flipped byte {i} accepted"
            );
        }
        // The channel is authenticated: a gossip frame cannot pass as lease.
        let mut g = f.clone();
        g[3] = Channel::Lease as u8;
        assert_eq!(open(&rings(1), tag, &g), Err(DropReason::Auth));
        assert_eq!(
            open(&rings(1), tag, &f[..MIN_FRAME - 1]),
            Err(DropReason::Malformed)
        );
    }

    #[test]
    fn names_are_checked_before_any_key() {
        let tag = cluster_tag("lab");
        let mut h = hdr(Channel::Gossip, Tier::Member);
        h.sender = "evil\u{1b}[2J".into();
        assert_eq!(
            seal(&ring(1), tag, &h, [0; 24], 0, b""),
            Err(DropReason::Malformed)
        );
        h.sender = "x".repeat(64);
        assert_eq!(
            seal(&ring(1), tag, &h, [0; 24], 0, b""),
            Err(DropReason::Malformed)
        );
        h.sender = "cp-0.example".into();
        assert!(seal(&ring(1), tag, &h, [0; 24], 0, b"").is_ok());
        h.sender = "ok".into();
        h.recipient = String::new();
        let f = seal(&ring(1), tag, &h, [0; 24], 0, b"").unwrap();
        // An escape byte written into the name fails before decryption.
        let mut g = f.clone();
        g[FIXED + 1] = 0x1b;
        assert_eq!(open(&rings(1), tag, &g), Err(DropReason::Malformed));
    }

    #[test]
    fn key_file_errors() {
        assert_eq!(Keyring::parse("# nothing\n\n"), Err(KeyError::Empty));
        assert_eq!(
            Keyring::parse("not base64!"),
            Err(KeyError::NotBase64 { line: 1 })
        );
        assert_eq!(
            Keyring::parse("\naGVsbG8="),
            Err(KeyError::WrongLength { line: 2, len: 5 })
        );
        let k = Key::from_bytes([3; 32]).to_base64();
        assert_eq!(
            Keyring::parse(&format!("{k}\n{k}")),
            Err(KeyError::Duplicate { line: 2 })
        );
        assert!(
            ring(1)
                .shares_key_with(&Keyring::parse(&Key::from_bytes([1; 32]).to_base64()).unwrap())
        );
        assert!(!ring(1).shares_key_with(&ring(2)));
    }

    #[test]
    fn key_debug_does_not_leak() {
        let k = Key::from_bytes([0xab; 32]);
        let d = format!("{k:?} {:?}", Keyring::new(k.clone()));
        assert!(!d.contains(&k.to_base64()));
        assert!(!d.to_lowercase().contains("abab"));
    }

    #[test]
    fn oversize_is_refused() {
        let h = hdr(Channel::Gossip, Tier::Member);
        let fixed = MIN_FRAME + h.sender.len() + h.recipient.len();
        let big = vec![0u8; MAX_DATAGRAM - fixed + 1];
        assert_eq!(
            seal(&ring(1), [0; 8], &h, [0; 24], 0, &big),
            Err(DropReason::Oversize)
        );
        let ok = vec![0u8; MAX_DATAGRAM - fixed];
        assert_eq!(
            seal(&ring(1), [0; 8], &h, [0; 24], 0, &ok).unwrap().len(),
            MAX_DATAGRAM
        );
        // Lease frames are small: a big one is refused at both ends, the
        // receiving end before any key is tried.
        let l = hdr(Channel::Lease, Tier::Member);
        assert_eq!(
            seal(&ring(1), [0; 8], &l, [0; 24], 0, &[0; MAX_LEASE_FRAME]),
            Err(DropReason::Oversize)
        );
        let mut g = seal(&ring(1), [0; 8], &l, [0; 24], 0, b"").unwrap();
        g.resize(MAX_LEASE_FRAME + 1, 0);
        assert_eq!(open(&rings(1), [0; 8], &g), Err(DropReason::Oversize));
    }

    fn opened(tier: Tier, name: &str, generation: u64, counter: u64, ts: u64) -> Opened {
        let mut header = hdr(Channel::Gossip, tier);
        header.sender = name.into();
        header.sender_gen = generation;
        header.counter = counter;
        Opened {
            header,
            unix_ms: ts,
            payload: vec![],
        }
    }

    #[test]
    fn replay_guard_counters_and_generations() {
        let now = 1_700_000_000_000;
        let g0 = now * 1000;
        let mut g = ReplayGuard::new(1000, 3);
        let m = |n, c| opened(Tier::Member, n, g0, c, now);
        assert_eq!(g.check(now, &m("a", 5)), Ok(()));
        assert_eq!(g.check(now, &m("a", 5)), Err(DropReason::Replay));
        // Reordering within the window is fine, once.
        assert_eq!(g.check(now, &m("a", 3)), Ok(()));
        assert_eq!(g.check(now, &m("a", 3)), Err(DropReason::Replay));
        assert_eq!(g.check(now, &m("a", 300)), Ok(()));
        // Too far behind the window: dropped even if never seen.
        assert_eq!(g.check(now, &m("a", 100)), Err(DropReason::Replay));
        // A restarted sender (higher generation) starts afresh; frames of
        // its earlier run are dropped from then on, whatever their counter.
        let restarted = opened(Tier::Member, "a", g0 + 1, 1, now);
        assert_eq!(g.check(now, &restarted), Ok(()));
        assert_eq!(g.check(now, &m("a", 1000)), Err(DropReason::Replay));
        // Tiers have separate windows: a cluster-key forgery in a control
        // node's name cannot move its control window; nor can a forgery
        // from another address move the real sender's.
        let c = opened(Tier::Control, "a", g0, 7, now);
        assert_eq!(g.check(now, &c), Ok(()));
        let mut elsewhere = opened(Tier::Member, "a", g0 + 5, 1, now);
        elsewhere.header.sender_addr = "198.18.0.99:7946".parse().unwrap();
        assert_eq!(g.check(now, &elsewhere), Ok(()));
        assert_eq!(
            g.check(now, &opened(Tier::Member, "a", g0 + 1, 2, now)),
            Ok(())
        );
        // A generation from the future is refused (it would lock out the
        // real sender).
        let future = opened(Tier::Member, "b", (now + 2000) * 1000, 1, now);
        assert_eq!(g.check(now, &future), Err(DropReason::Stale));
        // Timestamps outside the window.
        assert_eq!(
            g.check(now, &opened(Tier::Member, "b", g0, 1, now - 2000)),
            Err(DropReason::Stale)
        );
        assert_eq!(
            g.check(now, &opened(Tier::Member, "b", g0, 1, now + 2000)),
            Err(DropReason::Stale)
        );
        // A lower generation after the window of silence is a new run
        // (its clock went back), not a replay.
        let later = now + 1001;
        assert_eq!(
            g.check(later, &opened(Tier::Member, "a", g0, 2000, later)),
            Ok(())
        );
        assert_eq!(
            g.check(later, &opened(Tier::Member, "a", g0, 2000, later)),
            Err(DropReason::Replay)
        );
        // Bounded per tier: the longest unheard sender is forgotten, and
        // member-tier senders never push out a control-tier window.
        assert_eq!(g.len(), 3);
        for (i, n) in ["b", "c", "d", "e"].iter().enumerate() {
            let t = later + i as u64;
            assert_eq!(g.check(t, &opened(Tier::Member, n, g0, 1, t)), Ok(()));
        }
        assert_eq!(g.len(), 4);
        let c = opened(Tier::Control, "a", g0, 7, later);
        assert_eq!(g.check(later, &c), Err(DropReason::Replay));
    }

    #[test]
    fn addressed_to_this_run_and_a_recent_epoch() {
        let local = Local {
            name: "lb-1".into(),
            generation: 1_700_000_000_000_001,
            epoch: 20,
        };
        let h = hdr(Channel::Lease, Tier::Control);
        assert_eq!(check_addressed(&local, &h), Ok(()));
        let mut other = h.clone();
        other.recipient = "lb-2".into();
        assert_eq!(
            check_addressed(&local, &other),
            Err(DropReason::Misaddressed)
        );
        // Captured before the receiver restarted: its old generation.
        let mut before = h.clone();
        before.recipient_gen -= 1;
        assert_eq!(
            check_addressed(&local, &before),
            Err(DropReason::Misaddressed)
        );
        let mut unknown = h.clone();
        unknown.recipient_gen = 0;
        assert_eq!(
            check_addressed(&local, &unknown),
            Err(DropReason::Misaddressed)
        );
        // Held back for more than MAX_EPOCH_LAG epochs of the receiver.
        let mut late = h.clone();
        late.echo_epoch = 20 - MAX_EPOCH_LAG;
        assert_eq!(check_addressed(&local, &late), Ok(()));
        late.echo_epoch -= 1;
        assert_eq!(check_addressed(&local, &late), Err(DropReason::Stale));
        let mut ahead = h;
        ahead.echo_epoch = 21;
        assert_eq!(check_addressed(&local, &ahead), Err(DropReason::Stale));
    }

    proptest! {
        #[test]
        fn frame_names_are_exactly_config_names(name in "[a-z0-9.\\-_A]{0,70}") {
            prop_assert_eq!(
                crate::config::is_node_name(name.as_bytes()),
                crate::config::check_name(&name).is_ok()
            );
        }

        #[test]
        fn open_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = open(&rings(1), cluster_tag("lab"), &bytes);
        }

        #[test]
        fn truncated_or_extended_frames_are_dropped(cut in 0usize..200, extra in proptest::collection::vec(any::<u8>(), 1..8), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let tag = cluster_tag("lab");
            let f = seal(&ring(1), tag, &hdr(Channel::Gossip, Tier::Member), [5; 24], 9, &payload).unwrap();
            let cut = cut.min(f.len() - 1);
            prop_assert!(open(&rings(1), tag, &f[..cut]).is_err());
            let mut g = f.clone();
            g.extend_from_slice(&extra);
            prop_assert!(open(&rings(1), tag, &g).is_err());
        }

        #[test]
        fn a_counter_is_accepted_at_most_once(counters in proptest::collection::vec(0u64..400, 1..200)) {
            let now = 1_700_000_000_000;
            let mut g = ReplayGuard::new(1000, 10);
            let mut accepted = std::collections::HashSet::new();
            for c in counters {
                if g.check(now, &opened(Tier::Member, "a", now * 1000, c, now)).is_ok() {
                    prop_assert!(accepted.insert(c), "counter {} accepted twice", c);
                }
            }
        }
    }
}
