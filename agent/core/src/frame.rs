//! Authenticated encryption of every datagram kubeha sends between agents.
//!
//! Gossip (chitchat), lease and lock messages all travel in one frame format,
//! sealed with XChaCha20-Poly1305 under a key derived from the cluster key:
//!
//! ```text
//!  0       2    3        4              12                    36
//!  +-------+----+--------+--------------+---------------------+------------------------+
//!  | "KH"  | v1 | channel| cluster tag  | nonce (24, random)  | ciphertext + tag (16)   |
//!  +-------+----+--------+--------------+---------------------+------------------------+
//!  plaintext = sender's wall clock, unix ms (u64 LE) | payload
//!  AAD       = bytes 0..12
//! ```
//!
//! The cluster tag lets a node tell a datagram of another cluster from a
//! forgery without trying keys; the timestamp and the nonce feed the
//! [`ReplayGuard`]. Nothing here does I/O: nonces and clocks are arguments.

use std::collections::{HashSet, VecDeque};
use std::fmt;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

pub const MAGIC: [u8; 2] = *b"KH";
pub const VERSION: u8 = 1;
pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
pub const HEADER_LEN: usize = 2 + 1 + 1 + 8 + NONCE_LEN;
/// Bytes a frame adds to its payload.
pub const OVERHEAD: usize = HEADER_LEN + 8 + TAG_LEN;
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
}

impl DropReason {
    pub const ALL: [DropReason; 7] = [
        DropReason::Malformed,
        DropReason::OtherCluster,
        DropReason::Auth,
        DropReason::Stale,
        DropReason::Replay,
        DropReason::Oversize,
        DropReason::BadPayload,
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
}

/// The first 8 bytes of SHA-256 of the cluster name.
pub fn cluster_tag(cluster: &str) -> [u8; 8] {
    let d = Sha256::digest([b"kubeha/v1 cluster ".as_slice(), cluster.as_bytes()].concat());
    d[..8].try_into().expect("sha256 is 32 bytes")
}

/// Seal `payload` for `channel`. `nonce` must be fresh random bytes.
pub fn seal(
    keyring: &Keyring,
    tag: [u8; 8],
    channel: Channel,
    nonce: [u8; NONCE_LEN],
    unix_ms: u64,
    payload: &[u8],
) -> Result<Vec<u8>, DropReason> {
    if payload.len() + OVERHEAD > MAX_DATAGRAM {
        return Err(DropReason::Oversize);
    }
    let mut out = Vec::with_capacity(payload.len() + OVERHEAD);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(channel as u8);
    out.extend_from_slice(&tag);
    out.extend_from_slice(&nonce);
    let mut plain = Vec::with_capacity(8 + payload.len());
    plain.extend_from_slice(&unix_ms.to_le_bytes());
    plain.extend_from_slice(payload);
    let cipher = XChaCha20Poly1305::new(&keyring.primary().wire.into());
    let sealed = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: &plain,
                aad: &out[..12],
            },
        )
        .map_err(|_| DropReason::Oversize)?;
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// An authenticated frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub channel: Channel,
    pub unix_ms: u64,
    pub nonce: [u8; NONCE_LEN],
    pub payload: Vec<u8>,
}

/// Check and decrypt a datagram. Never panics, whatever the bytes.
pub fn open(keyring: &Keyring, tag: [u8; 8], datagram: &[u8]) -> Result<Opened, DropReason> {
    if datagram.len() < OVERHEAD || datagram[..2] != MAGIC || datagram[2] != VERSION {
        return Err(DropReason::Malformed);
    }
    let channel = Channel::from_u8(datagram[3]).ok_or(DropReason::Malformed)?;
    if datagram[4..12] != tag {
        return Err(DropReason::OtherCluster);
    }
    let nonce: [u8; NONCE_LEN] = datagram[12..HEADER_LEN]
        .try_into()
        .map_err(|_| DropReason::Malformed)?;
    for key in &keyring.keys {
        let cipher = XChaCha20Poly1305::new(&key.wire.into());
        if let Ok(mut plain) = cipher.decrypt(
            &XNonce::from(nonce),
            Payload {
                msg: &datagram[HEADER_LEN..],
                aad: &datagram[..12],
            },
        ) {
            let unix_ms =
                u64::from_le_bytes(plain[..8].try_into().map_err(|_| DropReason::Malformed)?);
            plain.drain(..8);
            return Ok(Opened {
                channel,
                unix_ms,
                nonce,
                payload: plain,
            });
        }
    }
    Err(DropReason::Auth)
}

/// Rejects frames whose timestamp is outside `window` of the local wall clock
/// and frames seen before within the window. Memory is bounded by the rate
/// of authenticated frames times the window.
#[derive(Debug)]
pub struct ReplayGuard {
    window_ms: u64,
    seen: HashSet<[u8; 16]>,
    order: VecDeque<(u64, [u8; 16])>,
    capacity: usize,
}

impl ReplayGuard {
    pub fn new(window_ms: u64, capacity: usize) -> ReplayGuard {
        ReplayGuard {
            window_ms,
            seen: HashSet::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    pub fn check(&mut self, now_unix_ms: u64, frame: &Opened) -> Result<(), DropReason> {
        if frame.unix_ms.saturating_add(self.window_ms) < now_unix_ms
            || frame.unix_ms > now_unix_ms.saturating_add(self.window_ms)
        {
            return Err(DropReason::Stale);
        }
        while let Some(&(expiry, id)) = self.order.front() {
            if expiry >= now_unix_ms && self.order.len() < self.capacity {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&id);
        }
        let id: [u8; 16] = frame.nonce[..16].try_into().expect("nonce is 24 bytes");
        if !self.seen.insert(id) {
            return Err(DropReason::Replay);
        }
        self.order
            .push_back((frame.unix_ms.saturating_add(self.window_ms), id));
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ring(b: u8) -> Keyring {
        Keyring::new(Key::from_bytes([b; 32]))
    }

    #[test]
    fn round_trip_and_rotation() {
        let tag = cluster_tag("lab");
        let old = ring(1);
        let f = seal(&old, tag, Channel::Lease, [7; 24], 1234, b"hello").unwrap();
        assert_eq!(f.len(), 5 + OVERHEAD);
        let o = open(&old, tag, &f).unwrap();
        assert_eq!(
            (o.channel, o.unix_ms, o.payload.as_slice()),
            (Channel::Lease, 1234, &b"hello"[..])
        );

        // A node mid-rotation (new primary, old still accepted) reads both.
        let text = format!(
            "# rotated\n{}\n\n{}\n",
            Key::from_bytes([2; 32]).to_base64(),
            Key::from_bytes([1; 32]).to_base64()
        );
        let both = Keyring::parse(&text).unwrap();
        assert_eq!(both.ids().len(), 2);
        assert!(open(&both, tag, &f).is_ok());
        let g = seal(&both, tag, Channel::Gossip, [8; 24], 1, b"x").unwrap();
        assert_eq!(open(&old, tag, &g), Err(DropReason::Auth));
        assert!(open(&ring(2), tag, &g).is_ok());
    }

    #[test]
    fn wrong_key_cluster_and_tampering_are_dropped() {
        let tag = cluster_tag("lab");
        let f = seal(&ring(1), tag, Channel::Gossip, [0; 24], 5, b"payload").unwrap();
        assert_eq!(open(&ring(9), tag, &f), Err(DropReason::Auth));
        assert_eq!(
            open(&ring(1), cluster_tag("prod"), &f),
            Err(DropReason::OtherCluster)
        );
        for i in 0..f.len() {
            let mut g = f.clone();
            g[i] ^= 0x40;
            assert!(
                open(&ring(1), tag, &g).is_err(),
                "flipped byte {i} accepted"
            );
        }
        // The channel is authenticated: a gossip frame cannot pass as lease.
        let mut g = f.clone();
        g[3] = Channel::Lease as u8;
        assert_eq!(open(&ring(1), tag, &g), Err(DropReason::Auth));
        assert_eq!(
            open(&ring(1), tag, &f[..OVERHEAD - 1]),
            Err(DropReason::Malformed)
        );
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
        let big = vec![0u8; MAX_DATAGRAM - OVERHEAD + 1];
        assert_eq!(
            seal(&ring(1), [0; 8], Channel::Gossip, [0; 24], 0, &big),
            Err(DropReason::Oversize)
        );
        let ok = vec![0u8; MAX_DATAGRAM - OVERHEAD];
        assert_eq!(
            seal(&ring(1), [0; 8], Channel::Gossip, [0; 24], 0, &ok)
                .unwrap()
                .len(),
            MAX_DATAGRAM
        );
    }

    #[test]
    fn replay_guard() {
        let mut g = ReplayGuard::new(1000, 10_000);
        let mk = |ts, n: u8| Opened {
            channel: Channel::Gossip,
            unix_ms: ts,
            nonce: [n; 24],
            payload: vec![],
        };
        assert_eq!(g.check(10_000, &mk(10_000, 1)), Ok(()));
        assert_eq!(g.check(10_001, &mk(10_000, 1)), Err(DropReason::Replay));
        assert_eq!(g.check(10_000, &mk(8_000, 2)), Err(DropReason::Stale));
        assert_eq!(g.check(10_000, &mk(12_000, 3)), Err(DropReason::Stale));
        assert_eq!(g.check(10_500, &mk(9_600, 4)), Ok(()));
        // Old entries are forgotten once their window has passed.
        assert_eq!(g.check(20_000, &mk(20_000, 5)), Ok(()));
        assert_eq!(g.len(), 1);
    }

    proptest! {
        #[test]
        fn open_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = open(&ring(1), cluster_tag("lab"), &bytes);
        }

        #[test]
        fn truncated_or_extended_frames_are_dropped(cut in 0usize..80, extra in proptest::collection::vec(any::<u8>(), 1..8), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let tag = cluster_tag("lab");
            let f = seal(&ring(1), tag, Channel::Gossip, [5; 24], 9, &payload).unwrap();
            let cut = cut.min(f.len() - 1);
            prop_assert!(open(&ring(1), tag, &f[..cut]).is_err());
            let mut g = f.clone();
            g.extend_from_slice(&extra);
            prop_assert!(open(&ring(1), tag, &g).is_err());
        }
    }
}
