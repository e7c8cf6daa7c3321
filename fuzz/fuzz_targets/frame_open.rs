//! Every datagram an agent receives goes through `frame::open` first.
//! It must never panic, whatever the bytes, and must reject anything it
//! did not itself seal with a key of the ring of the tier it names.
#![no_main]

use kubeha_core::frame::{self, Channel, Header, Key, Keyring, Rings, Tier};
use libfuzzer_sys::fuzz_target;

fn header() -> Header {
    Header {
        channel: Channel::Lease,
        tier: Tier::Control,
        sender: "cp-0".into(),
        sender_gen: 1,
        counter: 1,
        sender_epoch: 1,
        sender_addr: "198.18.0.2:7946".parse().unwrap(),
        recipient: "lb-0".into(),
        recipient_gen: 2,
        echo_epoch: 1,
    }
}

fuzz_target!(|data: &[u8]| {
    let rings = Rings {
        member: Keyring::new(Key::from_bytes([42; 32])),
        control: Some(Keyring::new(Key::from_bytes([43; 32]))),
    };
    let tag = frame::cluster_tag("fuzz");
    if let Ok(opened) = frame::open(&rings, tag, data) {
        // Only a frame sealed under one of our keys opens; its names are
        // node names and a lease frame is small.
        assert!(!opened.header.sender.is_empty() && opened.header.sender.len() <= 63);
        assert!(opened.header.channel != Channel::Lease || data.len() <= frame::MAX_LEASE_FRAME);
    }
    // Mutating a valid frame with the fuzz input must never authenticate.
    let valid = frame::seal(
        rings.control.as_ref().unwrap(),
        tag,
        &header(),
        [1; 24],
        7,
        b"payload",
    )
    .unwrap();
    if !data.is_empty() {
        let mut bad = valid.clone();
        let i = data[0] as usize % bad.len();
        bad[i] ^= data.get(1).copied().unwrap_or(1) | 1;
        assert!(frame::open(&rings, tag, &bad).is_err());
    }
});
