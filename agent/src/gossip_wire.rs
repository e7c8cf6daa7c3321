//! What a gossip frame carries (issue 14): one chitchat message, compressed
//! when that pays, split over several frames when it would not fit one.
//!
//! chitchat caps its messages at 65 507 bytes (its whole-datagram limit), so
//! a SYN-ACK or ACK whose delta filled that space no longer fit once sealed:
//! it was dropped at every round, and a node joining a large cluster never
//! caught up. Here such a message is compressed (chitchat's V0 digests are
//! mostly zeros and repeated address bytes) and, if it is still too large for
//! one frame, sent as up to [`MAX_FRAGMENTS`] fragments, each its own sealed
//! frame (authenticated and replay-checked on its own), so no datagram ever
//! exceeds the limit.
//!
//! A gossip frame's payload is one of:
//! - a chitchat envelope as chitchat encodes it (begins with its magic, `53 b0`);
//! - a zstd frame (begins `28 b5 2f fd`) that decompresses to one, at most
//!   [`MAX_MESSAGE`] bytes;
//! - a fragment: `fa`, message id (u32 LE), index (u8), count (u8), bytes.
//!   The concatenation of a message's fragments in index order is one of the
//!   two above.
//!
//! Pure: no I/O and no clock. The encrypted socket (gossip.rs) calls it.

use std::collections::HashMap;

/// The largest chitchat message (its `MAX_UDP_DATAGRAM_PAYLOAD_SIZE`).
pub const MAX_MESSAGE: usize = 65_507;
/// The largest payload sent in one frame: the datagram limit less the
/// largest frame overhead (fixed fields plus two 255-byte names, rounded up).
pub const MAX_FRAME_PAYLOAD: usize = 64_512;
/// Payload bytes per fragment.
pub const FRAGMENT_PAYLOAD: usize = 32_768;
/// A message needs at most this many fragments.
pub const MAX_FRAGMENTS: usize = 3;
/// Partial messages kept at once (one per sender); more clears them all.
pub const MAX_PARTIAL: usize = 256;
/// Messages shorter than this go out as they are.
pub const COMPRESS_MIN: usize = 512;

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const FRAGMENT_TAG: u8 = 0xfa;
const FRAGMENT_HEADER: usize = 1 + 4 + 1 + 1;

/// Why a received payload was not handed to chitchat.
#[derive(Debug, PartialEq, Eq)]
pub enum WireError {
    /// A fragment header that does not parse, or a count out of range.
    BadFragment,
    /// A zstd frame that does not decompress within [`MAX_MESSAGE`].
    BadCompression,
    /// A reassembled message larger than any chitchat message (the codec's
    /// loopback socket could not even take it).
    TooLarge,
}

/// The compression context, kept for the life of the socket (a context per
/// message cost more CPU than it saved).
pub struct Codec {
    compressor: zstd::bulk::Compressor<'static>,
    decompressor: zstd::bulk::Decompressor<'static>,
}

/// What [`Codec::encode`] made of one message.
#[derive(Debug)]
pub struct Encoded {
    /// One payload per frame to send, in order.
    pub frames: Vec<Vec<u8>>,
    pub compressed: bool,
}

impl Codec {
    pub fn new() -> std::io::Result<Codec> {
        Ok(Codec {
            compressor: zstd::bulk::Compressor::new(1)?,
            decompressor: zstd::bulk::Decompressor::new()?,
        })
    }

    /// The frames that carry `message` (a chitchat encoding). `id` numbers
    /// this sender's fragmented messages.
    pub fn encode(&mut self, message: &[u8], id: u32) -> Encoded {
        let mut body = None;
        if message.len() >= COMPRESS_MIN
            && let Ok(c) = self.compressor.compress(message)
            && c.len() < message.len()
        {
            body = Some(c);
        }
        let compressed = body.is_some();
        let body = body.unwrap_or_else(|| message.to_vec());
        let frames = if body.len() <= MAX_FRAME_PAYLOAD {
            vec![body]
        } else {
            fragments(&body, id)
        };
        Encoded { frames, compressed }
    }

    /// The chitchat encoding in a whole (reassembled) payload: never more
    /// than [`MAX_MESSAGE`] bytes.
    pub fn decode(&mut self, payload: Vec<u8>) -> Result<Vec<u8>, WireError> {
        if payload.starts_with(&ZSTD_MAGIC) {
            return self
                .decompressor
                .decompress(&payload, MAX_MESSAGE)
                .map_err(|_| WireError::BadCompression);
        }
        if payload.len() > MAX_MESSAGE {
            return Err(WireError::TooLarge);
        }
        Ok(payload)
    }
}

fn fragments(body: &[u8], id: u32) -> Vec<Vec<u8>> {
    let chunks: Vec<&[u8]> = body.chunks(FRAGMENT_PAYLOAD).collect();
    let count = chunks.len() as u8;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut f = Vec::with_capacity(FRAGMENT_HEADER + chunk.len());
            f.push(FRAGMENT_TAG);
            f.extend_from_slice(&id.to_le_bytes());
            f.push(i as u8);
            f.push(count);
            f.extend_from_slice(chunk);
            f
        })
        .collect()
}

struct Partial {
    id: u32,
    parts: Vec<Option<Vec<u8>>>,
}

/// Fragments waiting for the rest of their message, one message per sender
/// (a sender's newer message replaces its unfinished one: gossip is
/// repeated every round, a lost fragment only loses that message).
#[derive(Default)]
pub struct Reassembly {
    partial: HashMap<(String, u64), Partial>,
}

impl Reassembly {
    /// Take one payload from `sender` (name, generation): the whole payload
    /// when it is one, `None` while a message is incomplete.
    pub fn accept(
        &mut self,
        sender: (&str, u64),
        payload: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, WireError> {
        if payload.first() != Some(&FRAGMENT_TAG) {
            return Ok(Some(payload));
        }
        if payload.len() <= FRAGMENT_HEADER {
            return Err(WireError::BadFragment);
        }
        let id = u32::from_le_bytes(payload[1..5].try_into().expect("4 bytes"));
        let (index, count) = (usize::from(payload[5]), usize::from(payload[6]));
        if !(2..=MAX_FRAGMENTS).contains(&count) || index >= count {
            return Err(WireError::BadFragment);
        }
        let key = (sender.0.to_string(), sender.1);
        if !self.partial.contains_key(&key) && self.partial.len() >= MAX_PARTIAL {
            self.partial.clear();
        }
        let p = self.partial.entry(key.clone()).or_insert_with(|| Partial {
            id,
            parts: vec![None; count],
        });
        if p.id != id || p.parts.len() != count {
            *p = Partial {
                id,
                parts: vec![None; count],
            };
        }
        p.parts[index] = Some(payload[FRAGMENT_HEADER..].to_vec());
        if p.parts.iter().any(Option::is_none) {
            return Ok(None);
        }
        let p = self.partial.remove(&key).expect("present");
        Ok(Some(p.parts.into_iter().flatten().flatten().collect()))
    }

    pub fn pending(&self) -> usize {
        self.partial.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Something shaped like a V0 digest of `n` members: names, generations,
    /// addresses and small counters.
    fn digest_like(n: usize) -> Vec<u8> {
        let mut v = vec![0x53, 0xb0, 0, 1];
        for i in 0..n {
            let name = format!("worker-{i:04}");
            v.extend_from_slice(&(name.len() as u16).to_le_bytes());
            v.extend_from_slice(name.as_bytes());
            v.extend_from_slice(&(1_764_633_600_000_000u64 + i as u64 * 7919).to_le_bytes());
            v.extend_from_slice(&[4, 198, 18, (i / 250) as u8, (i % 250) as u8, 0x0a, 0x1f]);
            for c in [1000 + i as u64, 3, 12] {
                v.extend_from_slice(&c.to_le_bytes());
            }
        }
        v
    }

    /// Incompressible bytes (chitchat's deltas are already compressed).
    fn noise(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn small_messages_go_as_they_are() {
        let mut c = Codec::new().unwrap();
        let m = digest_like(5);
        assert!(m.len() < COMPRESS_MIN);
        let e = c.encode(&m, 1);
        assert!(!e.compressed);
        assert_eq!(e.frames, vec![m.clone()]);
        assert_eq!(c.decode(e.frames[0].clone()).unwrap(), m);
    }

    #[test]
    fn digests_compress_and_round_trip() {
        let mut c = Codec::new().unwrap();
        let m = digest_like(1000);
        let e = c.encode(&m, 1);
        assert!(e.compressed);
        assert_eq!(e.frames.len(), 1);
        assert!(
            e.frames[0].len() * 2 < m.len(),
            "{} of {}",
            e.frames[0].len(),
            m.len()
        );
        assert_eq!(c.decode(e.frames[0].clone()).unwrap(), m);
    }

    #[test]
    fn a_full_incompressible_message_is_fragmented_and_reassembled() {
        let mut c = Codec::new().unwrap();
        let m = noise(MAX_MESSAGE);
        let e = c.encode(&m, 7);
        assert!(!e.compressed);
        assert_eq!(e.frames.len(), 2);
        assert!(e.frames.iter().all(|f| f.len() <= MAX_FRAME_PAYLOAD));
        let mut r = Reassembly::default();
        // Out of order, with another sender's message in between.
        assert_eq!(r.accept(("a", 1), e.frames[1].clone()), Ok(None));
        assert_eq!(
            r.accept(("b", 1), vec![0x53, 0xb0]),
            Ok(Some(vec![0x53, 0xb0]))
        );
        let whole = r.accept(("a", 1), e.frames[0].clone()).unwrap().unwrap();
        assert_eq!(c.decode(whole).unwrap(), m);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn fragments_of_other_senders_or_messages_do_not_mix() {
        let mut c = Codec::new().unwrap();
        let one = c.encode(&noise(MAX_MESSAGE), 1).frames;
        let two = c.encode(&noise(MAX_MESSAGE - 1), 2).frames;
        let mut r = Reassembly::default();
        assert_eq!(r.accept(("a", 1), one[0].clone()), Ok(None));
        // Same name, another generation: its own message.
        assert_eq!(r.accept(("a", 2), one[1].clone()), Ok(None));
        // A newer message replaces the unfinished one.
        assert_eq!(r.accept(("a", 1), two[1].clone()), Ok(None));
        assert_eq!(r.accept(("a", 1), one[1].clone()), Ok(None));
        let whole = r.accept(("a", 1), one[0].clone()).unwrap().unwrap();
        assert_eq!(whole, noise(MAX_MESSAGE));
    }

    #[test]
    fn malformed_input_is_refused() {
        let mut c = Codec::new().unwrap();
        let mut r = Reassembly::default();
        assert_eq!(
            r.accept(("a", 1), vec![FRAGMENT_TAG, 0, 0]),
            Err(WireError::BadFragment)
        );
        for (index, count) in [(0u8, 1u8), (2, 2), (0, 9)] {
            let f = vec![FRAGMENT_TAG, 1, 0, 0, 0, index, count, 42];
            assert_eq!(r.accept(("a", 1), f), Err(WireError::BadFragment));
        }
        let mut junk = ZSTD_MAGIC.to_vec();
        junk.extend_from_slice(&[1, 2, 3]);
        assert_eq!(c.decode(junk), Err(WireError::BadCompression));
        // Fragments that add up to more than a chitchat message are refused
        // (handing them to the codec would fail and stop gossip).
        let big = fragments(&noise(MAX_MESSAGE + 1), 3);
        assert_eq!(r.accept(("a", 1), big[0].clone()), Ok(None));
        let whole = r.accept(("a", 1), big[1].clone()).unwrap().unwrap();
        assert_eq!(c.decode(whole), Err(WireError::TooLarge));
        // A frame that would inflate past a chitchat message is refused.
        let bomb = zstd::bulk::compress(&vec![0u8; MAX_MESSAGE + 1], 1).unwrap();
        assert_eq!(c.decode(bomb), Err(WireError::BadCompression));
    }

    #[test]
    fn partial_messages_are_bounded() {
        let mut c = Codec::new().unwrap();
        let frames = c.encode(&noise(MAX_MESSAGE), 1).frames;
        let mut r = Reassembly::default();
        for g in 0..(MAX_PARTIAL as u64 * 2) {
            assert_eq!(r.accept(("a", g), frames[0].clone()), Ok(None));
            assert!(r.pending() <= MAX_PARTIAL);
        }
    }
}
