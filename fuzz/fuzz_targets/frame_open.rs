//! Every datagram an agent receives goes through `frame::open` first.
//! It must never panic, whatever the bytes, and must reject anything it
//! did not itself seal with a key of the ring.
#![no_main]

use kubeha_core::frame::{self, Channel, Key, Keyring};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ring = Keyring::new(Key::from_bytes([42; 32]));
    let tag = frame::cluster_tag("fuzz");
    if let Ok(opened) = frame::open(&ring, tag, data) {
        // Only an exact frame under our key opens; re-sealing it with the
        // same nonce must give back the same bytes.
        let again = frame::seal(&ring, tag, opened.channel, opened.nonce, opened.unix_ms, &opened.payload).unwrap();
        assert_eq!(again, data);
    }
    // Mutating a valid frame with the fuzz input must never authenticate.
    let valid = frame::seal(&ring, tag, Channel::Gossip, [1; 24], 7, b"payload").unwrap();
    if !data.is_empty() {
        let mut bad = valid.clone();
        let i = data[0] as usize % bad.len();
        bad[i] ^= data.get(1).copied().unwrap_or(1) | 1;
        assert!(frame::open(&ring, tag, &bad).is_err());
    }
});
