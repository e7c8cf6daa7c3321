//! The kernel-side backstop: an address added with a finite lifetime goes by
//! itself, and `renew` restarts the lifetime. Also the fence's notifications.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kubeha_vip::{AddressEvent, Announce, ArpVip, Change, VipFence, VipProvider};

use crate::lab::{Lab, NsRuntime, addrs, require_root, wait_for};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 31);

fn vip(dev: &str, secs: u32) -> Arc<ArpVip> {
    Arc::new(
        ArpVip::new(dev, IpAddr::V4(VIP), None, Announce::default())
            .unwrap()
            .with_lifetime(secs),
    )
}

fn present(ns: &str, dev: &str) -> bool {
    addrs(ns, dev).contains("inet 198.18.0.31/32")
}

/// How long after the last (re)start of a 1 s lifetime the kernel's address
/// worker actually deletes it. docs/PROTOCOL.md quotes these figures: the
/// worker batches expiries to whole seconds (round_jiffies_up), so the
/// address goes between 1 s and 2.3 s after the last renewal.
#[test]
fn a_lifetime_expires_by_itself_and_renew_restarts_it() {
    require_root!();
    let mut lab = Lab::new();
    let a = lab.ns("a");
    let b = lab.ns("b");
    lab.veth(&a, "kv0", &b, "kv1");
    lab.addr(&a, "kv0", "198.18.0.21/24");
    let rt = NsRuntime::new(&a);
    let v = vip("kv0", 1);

    let mut late = Vec::new();
    for _ in 0..3 {
        let v2 = Arc::clone(&v);
        assert_eq!(
            rt.run(move || async move { v2.acquire().await }).unwrap(),
            Change::Changed
        );
        // Renew for 1.5 s, every 200 ms: the address must stay throughout.
        let mut last = Instant::now();
        let until = last + Duration::from_millis(1500);
        while Instant::now() < until {
            assert!(
                present(&a, "kv0"),
                "gone while renewed: {}",
                addrs(&a, "kv0")
            );
            std::thread::sleep(Duration::from_millis(200));
            let v2 = Arc::clone(&v);
            rt.run(move || async move { v2.renew().await }).unwrap();
            last = Instant::now();
        }
        wait_for(
            Duration::from_secs(5),
            "the kernel to expire the VIP",
            || (!present(&a, "kv0")).then_some(()),
        );
        late.push(last.elapsed());
    }
    eprintln!("1 s lifetime: gone after {late:?} from the last renewal");
    for l in &late {
        assert!(
            *l >= Duration::from_millis(950) && *l <= Duration::from_millis(2500),
            "{late:?}"
        );
    }
}

/// The fence sees the address come and go, whoever adds or removes it, and
/// removes it from its own socket.
#[test]
fn the_fence_sees_and_removes_the_vip() {
    require_root!();
    let mut lab = Lab::new();
    let a = lab.ns("a");
    let b = lab.ns("b");
    lab.veth(&a, "kv0", &b, "kv1");
    lab.addr(&a, "kv0", "198.18.0.21/24");
    let rt = NsRuntime::new(&a);
    let v = vip("kv0", 5);
    let v2 = Arc::clone(&v);
    let (added, removed, took) = rt.run(move || async move {
        let mut fence = VipFence::open("kv0", IpAddr::V4(VIP)).unwrap();
        assert!(!fence.is_present().await.unwrap());
        v2.acquire().await.unwrap();
        let added = tokio::time::timeout(Duration::from_secs(5), fence.next_event())
            .await
            .expect("no notification within 5 s");
        v2.renew().await.unwrap();
        let renewed = fence.next_event().await;
        assert_eq!(renewed, Some(AddressEvent::Added), "a renewal notifies too");
        assert!(fence.is_present().await.unwrap());
        let t = Instant::now();
        assert_eq!(fence.remove().await.unwrap(), Change::Changed);
        let took = t.elapsed();
        let removed = fence.next_event().await;
        assert_eq!(fence.remove().await.unwrap(), Change::Unchanged);
        (added, removed, took)
    });
    assert_eq!(added, Some(AddressEvent::Added));
    assert_eq!(removed, Some(AddressEvent::Removed));
    assert!(!present(&a, "kv0"), "{}", addrs(&a, "kv0"));
    eprintln!("fence removal took {took:?}");
}
