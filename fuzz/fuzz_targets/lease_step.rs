//! The whole receive path of a lease-channel datagram, with a known key so
//! the input gets past the crypto: seal (header fields from the input) →
//! open → replay check → decode → tier and addressing checks → `Node::step`
//! of a voter that is also a VIP candidate. Nothing may panic, and a frame
//! accepted once is never accepted again.
#![no_main]

use std::net::SocketAddr;
use std::time::Duration;

use kubeha_core::frame::{self, Channel, Header, Key, Keyring, Local, ReplayGuard, Rings, Tier};
use kubeha_core::node::{Input, Node, NodeParams};
use kubeha_core::time::Time;
use kubeha_core::timing::Profile;
use kubeha_core::wire;
use libfuzzer_sys::fuzz_target;

const NOW_MS: u64 = 1_800_000_000_000;

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let (h, payload) = data.split_at(12);
    let rings = Rings {
        member: Keyring::new(Key::from_bytes([1; 32])),
        control: Some(Keyring::new(Key::from_bytes([2; 32]))),
    };
    let tier = if h[0] & 1 == 0 {
        Tier::Member
    } else {
        Tier::Control
    };
    let senders = ["cp-1", "cp-2", "lb-0", "worker-0"];
    let sender = senders[usize::from(h[1]) % senders.len()];
    let local = Local {
        name: "cp-0".into(),
        generation: 5,
        epoch: 100,
    };
    let header = Header {
        channel: Channel::Lease,
        tier,
        sender: sender.into(),
        sender_gen: u64::from(h[2]),
        counter: u64::from(h[3]),
        sender_epoch: u32::from(h[4]),
        sender_addr: SocketAddr::from(([198, 18, 0, h[5]], 7946)),
        recipient: if h[6] & 1 == 0 {
            "cp-0".into()
        } else {
            "cp-1".into()
        },
        recipient_gen: u64::from(h[7] % 8),
        echo_epoch: 96 + u32::from(h[8] % 8),
    };
    let ring = rings.ring(tier).unwrap();
    let Ok(sealed) = frame::seal(
        ring,
        frame::cluster_tag("fuzz"),
        &header,
        [h[9]; 24],
        NOW_MS,
        payload,
    ) else {
        return;
    };
    let Ok(opened) = frame::open(&rings, frame::cluster_tag("fuzz"), &sealed) else {
        panic!("a frame sealed under our key did not open");
    };
    assert_eq!(opened.header, header);
    let mut guard = ReplayGuard::new(60_000, 16);
    if guard.check(NOW_MS, &opened).is_err() {
        return;
    }
    assert!(
        guard.check(NOW_MS, &opened).is_err(),
        "a replay was accepted"
    );
    let Ok(msg) = wire::decode(&opened.payload) else {
        return;
    };
    if !wire::admitted(&msg, tier, true) {
        return;
    }
    if wire::needs_addressing(&msg) && frame::check_addressed(&local, &opened.header).is_err() {
        return;
    }
    let params = NodeParams {
        name: "cp-0".into(),
        voters: vec!["cp-0".into(), "cp-1".into(), "cp-2".into()],
        timing: Profile::Fast.timing(),
        vip_priority: Some(100),
        incarnation: u64::from(h[10]),
        persisted: None,
        cloud: None,
    };
    let (mut node, _) = Node::new(params, Time::from_micros(1_000_000));
    let mut now = Time::from_micros(2_000_000);
    for _ in 0..1 + h[11] % 3 {
        let _ = node.step(
            now,
            Input::Peer {
                from: sender.into(),
                msg: msg.clone(),
            },
        );
        now = now + Duration::from_millis(50);
        let _ = node.step(now, Input::Tick);
    }
    let _ = node.status(now);
});
