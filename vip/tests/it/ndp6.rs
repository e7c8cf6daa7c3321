use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kubeha_vip::packet::unsolicited_na;
use kubeha_vip::{Announce, ArpVip, Change, VipProvider};

use crate::lab::{
    self, Capture, Lab, NsRuntime, addrs, is_na_from, mac_of, neigh, require_root, wait_for,
};

/// Documentation range, only ever inside the test namespaces.
const VIP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x30);

fn vip() -> Arc<ArpVip> {
    Arc::new(
        ArpVip::new(
            "kv0",
            IpAddr::V6(VIP),
            None,
            Announce {
                count: 3,
                interval: Duration::from_millis(50),
            },
        )
        .unwrap(),
    )
}

macro_rules! call {
    ($rt:expr, $vip:expr, $method:ident) => {{
        let v = Arc::clone(&$vip);
        $rt.run(move || async move { v.$method().await })
    }};
}

fn has_vip(ns: &str) -> bool {
    addrs(ns, "kv0").contains("inet6 2001:db8::30/128")
}

#[test]
fn vip_moves_between_holders_ipv6() {
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
    lab.addr(&c, "kvbr", "2001:db8::20/64");
    lab.addr(&h1, "kv0", "2001:db8::21/64");
    lab.addr(&h2, "kv0", "2001:db8::22/64");
    let mac1 = mac_of(&h1, "kv0");
    let mac2 = mac_of(&h2, "kv0");
    // Captured on the client's bridge port towards h2.
    let cap = Capture::open(&c, "kvh2");
    let rt1 = NsRuntime::new(&h1);
    let rt2 = NsRuntime::new(&h2);
    let v1 = vip();
    let v2 = vip();
    let vip_ip = IpAddr::V6(VIP);
    let entry = || neigh(&c, "kvbr", vip_ip);

    assert!(!call!(rt1, v1, is_held).unwrap());
    assert_eq!(call!(rt1, v1, acquire).unwrap(), Change::Changed);
    assert!(call!(rt1, v1, is_held).unwrap());
    assert!(has_vip(&h1), "{}", addrs(&h1, "kv0"));
    // Added without duplicate address detection: usable at once.
    let line = addrs(&h1, "kv0")
        .lines()
        .find(|l| l.contains("2001:db8::30/128"))
        .map(str::to_string)
        .unwrap();
    assert!(
        !line.contains("tentative") && line.contains("nodad"),
        "{line}"
    );
    assert_eq!(call!(rt1, v1, acquire).unwrap(), Change::Unchanged);

    lab::poke(&c, vip_ip);
    wait_for(Duration::from_secs(3), "client entry -> h1", || {
        entry().filter(|(m, _)| *m == mac1)
    });

    assert_eq!(call!(rt1, v1, release).unwrap(), Change::Changed);
    assert!(!has_vip(&h1));
    assert_eq!(call!(rt1, v1, release).unwrap(), Change::Unchanged);

    let t = Instant::now();
    assert_eq!(call!(rt2, v2, acquire).unwrap(), Change::Changed);
    let (_, state) = wait_for(Duration::from_secs(2), "client entry -> h2", || {
        entry().filter(|(m, _)| *m == mac2)
    });
    eprintln!(
        "ipv6 client moved to the new holder in {:?} (state {state})",
        t.elapsed()
    );

    // What went over the wire: 3 unsolicited NAs, byte for byte.
    let frames = cap.collect(
        Duration::from_secs(3),
        |f| is_na_from(f, mac2, VIP),
        |got| got.len() >= 3,
    );
    assert_eq!(frames.len(), 3);
    for f in &frames {
        assert_eq!(f.bytes, unsolicited_na(mac2, VIP));
    }
    let more = cap.collect(
        Duration::from_millis(200),
        |f| is_na_from(f, mac2, VIP),
        |_| false,
    );
    assert_eq!(more.len(), 0);

    assert_eq!(call!(rt2, v2, release).unwrap(), Change::Changed);
    assert!(!call!(rt2, v2, is_held).unwrap());
    assert!(addrs(&h2, "kv0").contains("inet6 2001:db8::22/64"));
}
