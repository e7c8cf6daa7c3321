use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kubeha_vip::packet::{garp_reply, garp_request};
use kubeha_vip::{
    Announce, ArpVip, Change, VipError, VipProvider, lookup_interface, release_blocking,
};

use crate::lab::{
    self, Capture, Lab, NsRuntime, addrs, arp_op, is_garp_from, mac_of, neigh, require_root,
    wait_for,
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 30);

fn vip(dev: &str, count: u32, interval_ms: u64) -> Arc<ArpVip> {
    Arc::new(
        ArpVip::new(
            dev,
            IpAddr::V4(VIP),
            None,
            Announce {
                count,
                interval: Duration::from_millis(interval_ms),
            },
        )
        .unwrap(),
    )
}

/// Run one provider call on the namespace's runtime.
macro_rules! call {
    ($rt:expr, $vip:expr, $method:ident) => {{
        let v = Arc::clone(&$vip);
        $rt.run(move || async move { v.$method().await })
    }};
}

fn count_vip(ns: &str, dev: &str) -> usize {
    addrs(ns, dev).matches("inet 198.18.0.30/").count()
}

#[test]
fn acquire_announce_release_ipv4() {
    require_root!();
    let mut lab = Lab::new();
    let a = lab.ns("a");
    let b = lab.ns("b");
    lab.veth(&a, "kv0", &b, "kv1");
    lab.addr(&a, "kv0", "198.18.0.21/24");
    lab.addr(&b, "kv1", "198.18.0.22/24");
    let cap = Capture::open(&b, "kv1");
    let rt = NsRuntime::new(&a);
    let interval = Duration::from_millis(100);
    let v = vip("kv0", 3, 100);

    let mac = mac_of(&a, "kv0");
    let iface = rt.run(|| lookup_interface("kv0")).unwrap();
    assert_eq!(iface.mac, Some(mac));
    assert!(iface.up);
    assert_eq!(iface.name, "kv0");

    assert!(!call!(rt, v, is_held).unwrap());
    let t = Instant::now();
    assert_eq!(call!(rt, v, acquire).unwrap(), Change::Changed);
    eprintln!("acquire (add + first round) took {:?}", t.elapsed());
    assert!(call!(rt, v, is_held).unwrap());
    assert!(
        addrs(&a, "kv0").contains("inet 198.18.0.30/32"),
        "{}",
        addrs(&a, "kv0")
    );

    // Three rounds of request + reply, byte for byte, about `interval` apart.
    let keep = |f: &[u8]| is_garp_from(f, mac, VIP);
    let frames = cap.collect(Duration::from_secs(3), keep, |got| got.len() >= 6);
    assert_eq!(frames.len(), 6, "expected 3 requests and 3 replies");
    let requests: Vec<_> = frames.iter().filter(|f| arp_op(&f.bytes) == 1).collect();
    let replies: Vec<_> = frames.iter().filter(|f| arp_op(&f.bytes) == 2).collect();
    assert_eq!((requests.len(), replies.len()), (3, 3));
    for f in &requests {
        assert_eq!(f.bytes, garp_request(mac, VIP));
    }
    for f in &replies {
        assert_eq!(f.bytes, garp_reply(mac, VIP));
    }
    // Kernel receive stamps, so a late reader does not matter.
    let spread = requests[2].stamp - requests[0].stamp;
    assert!(
        spread >= 2 * interval - Duration::from_millis(2)
            && spread < 2 * interval + Duration::from_millis(300),
        "3 rounds 100 ms apart took {spread:?}"
    );
    eprintln!("3 announcement rounds spread over {spread:?}");
    // The schedule ends after `count` rounds.
    let extra = cap.collect(3 * interval, keep, |_| false);
    assert_eq!(extra.len(), 0, "frames after the last round");

    // Idempotent: nothing added twice, but announced again.
    assert_eq!(call!(rt, v, acquire).unwrap(), Change::Unchanged);
    assert_eq!(count_vip(&a, "kv0"), 1, "{}", addrs(&a, "kv0"));
    let again = cap.collect(Duration::from_secs(3), keep, |got| got.len() >= 6);
    assert_eq!(again.len(), 6);

    // refresh: exactly one round.
    call!(rt, v, refresh).unwrap();
    let one = cap.collect(Duration::from_secs(1), keep, |got| got.len() >= 2);
    assert_eq!(one.len(), 2);
    assert_eq!(cap.collect(3 * interval, keep, |_| false).len(), 0);

    let t = Instant::now();
    assert_eq!(call!(rt, v, release).unwrap(), Change::Changed);
    eprintln!("release took {:?}", t.elapsed());
    assert!(!call!(rt, v, is_held).unwrap());
    assert_eq!(count_vip(&a, "kv0"), 0, "{}", addrs(&a, "kv0"));
    assert!(
        addrs(&a, "kv0").contains("inet 198.18.0.21/24"),
        "the node's own address must stay"
    );
    assert_eq!(call!(rt, v, release).unwrap(), Change::Unchanged);

    // Announcing an address we do not hold would pull clients to a dead end.
    let e = call!(rt, v, announce).unwrap_err();
    assert!(matches!(e, VipError::NotHeld { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "198.18.0.30 is not on `kv0`; refusing to announce an address this node does not hold"
    );
    assert!(matches!(
        call!(rt, v, refresh).unwrap_err(),
        VipError::NotHeld { .. }
    ));
    assert_eq!(cap.collect(3 * interval, keep, |_| false).len(), 0);
}

#[test]
fn release_stops_pending_announcements() {
    require_root!();
    let mut lab = Lab::new();
    let a = lab.ns("a");
    let b = lab.ns("b");
    lab.veth(&a, "kv0", &b, "kv1");
    lab.addr(&a, "kv0", "198.18.0.21/24");
    lab.addr(&b, "kv1", "198.18.0.22/24");
    let cap = Capture::open(&b, "kv1");
    let rt = NsRuntime::new(&a);
    let mac = mac_of(&a, "kv0");
    // 50 rounds 20 ms apart: a second of announcements.
    let v = vip("kv0", 50, 20);
    let keep = |f: &[u8]| is_garp_from(f, mac, VIP);

    assert_eq!(call!(rt, v, acquire).unwrap(), Change::Changed);
    let started = cap.collect(Duration::from_secs(3), keep, |got| got.len() >= 6);
    assert_eq!(started.len(), 6, "the schedule should be running");
    assert_eq!(call!(rt, v, release).unwrap(), Change::Changed);
    let released = Instant::now();
    let after = cap.collect(Duration::from_millis(400), keep, |_| false);
    let late: Vec<_> = after
        .iter()
        .filter(|f| f.at > released + Duration::from_millis(20))
        .collect();
    assert!(
        late.is_empty(),
        "{} announcement frames arrived after release returned",
        late.len()
    );
    assert!(6 + after.len() < 100, "the whole schedule went out");
}

/// The guide topology in small: a client and two VIP holders on a bridge.
/// Moving the VIP must move the client's neighbour entry without the client
/// doing anything (no flush, no traffic).
#[test]
fn vip_moves_between_holders_ipv4() {
    require_root!();
    let mut lab = Lab::new();
    let c = lab.ns("c");
    let h1 = lab.ns("h1");
    let h2 = lab.ns("h2");
    lab.bridge(&c, "kvbr");
    lab.veth(&h1, "kv0", &c, "kvh1");
    lab.veth(&h2, "kv0", &c, "kvh2");
    lab.enslave(&c, "kvh1", "kvbr");
    lab.enslave(&c, "kvh2", "kvbr");
    lab.addr(&c, "kvbr", "198.18.0.20/24");
    lab.addr(&h1, "kv0", "198.18.0.21/24");
    lab.addr(&h2, "kv0", "198.18.0.22/24");
    let mac1 = mac_of(&h1, "kv0");
    let mac2 = mac_of(&h2, "kv0");
    let rt1 = NsRuntime::new(&h1);
    let rt2 = NsRuntime::new(&h2);
    let v1 = vip("kv0", 3, 50);
    let v2 = vip("kv0", 3, 50);
    let vip_ip = IpAddr::V4(VIP);
    let entry = || neigh(&c, "kvbr", vip_ip);

    assert_eq!(call!(rt1, v1, acquire).unwrap(), Change::Changed);
    // The client learns the VIP by talking to it.
    lab::poke(&c, vip_ip);
    wait_for(Duration::from_secs(3), "client entry -> h1", || {
        entry().filter(|(m, _)| *m == mac1)
    });

    // Control: the address alone (no announcement) does not move the client.
    assert_eq!(call!(rt1, v1, release).unwrap(), Change::Changed);
    lab.addr(&h2, "kv0", "198.18.0.30/32");
    let hold = Instant::now() + Duration::from_millis(500);
    while Instant::now() < hold {
        assert_eq!(
            entry().map(|e| e.0),
            Some(mac1),
            "the client moved without an announcement"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The announcement moves it (acquire finds the address there already).
    assert_eq!(call!(rt2, v2, acquire).unwrap(), Change::Unchanged);
    let t = Instant::now();
    let (_, state) = wait_for(Duration::from_secs(2), "client entry -> h2", || {
        entry().filter(|(m, _)| *m == mac2)
    });
    eprintln!(
        "ipv4 client moved to the new holder in {:?} (state {state})",
        t.elapsed()
    );

    // And straight back, within the kernel's 1 s ARP lock time: only a
    // gratuitous ARP may override an entry that fresh.
    assert_eq!(call!(rt2, v2, release).unwrap(), Change::Changed);
    assert_eq!(call!(rt1, v1, acquire).unwrap(), Change::Changed);
    wait_for(Duration::from_secs(2), "client entry -> h1 again", || {
        entry().filter(|(m, _)| *m == mac1)
    });

    // The synchronous release for `--release-vip`, from a plain thread ...
    let h1_name = h1.clone();
    let (first, second) = lab::in_ns(&h1_name, || {
        (
            release_blocking("kv0", IpAddr::V4(VIP)).unwrap(),
            release_blocking("kv0", IpAddr::V4(VIP)).unwrap(),
        )
    });
    assert_eq!((first, second), (Change::Changed, Change::Unchanged));
    assert_eq!(count_vip(&h1, "kv0"), 0);
    // ... and from inside a runtime; a leftover with another prefix goes too.
    lab.addr(&h1, "kv0", "198.18.0.30/32");
    lab.addr(&h1, "kv0", "198.18.0.30/28");
    assert_eq!(count_vip(&h1, "kv0"), 2, "{}", addrs(&h1, "kv0"));
    let r = rt1.run(|| async { release_blocking("kv0", IpAddr::V4(VIP)) });
    assert_eq!(r.unwrap(), Change::Changed);
    assert_eq!(count_vip(&h1, "kv0"), 0, "{}", addrs(&h1, "kv0"));
    assert!(!call!(rt1, v1, is_held).unwrap());
    assert!(addrs(&h1, "kv0").contains("inet 198.18.0.21/24"));
}
