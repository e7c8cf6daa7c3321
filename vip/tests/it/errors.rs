use std::sync::Arc;

use kubeha_vip::{Announce, ArpVip, Change, VipError, VipProvider, lookup_interface};

use crate::lab::{Lab, NsRuntime, addrs, require_root};

fn vip(dev: &str) -> Arc<ArpVip> {
    Arc::new(
        ArpVip::new(
            dev,
            "198.18.0.30".parse().unwrap(),
            None,
            Announce::default(),
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

#[test]
fn missing_interface() {
    require_root!();
    let mut lab = Lab::new();
    let a = lab.ns("a");
    let rt = NsRuntime::new(&a);
    let v = vip("kvnone");

    let e = call!(rt, v, acquire).unwrap_err();
    assert!(matches!(e, VipError::InterfaceNotFound { .. }), "{e:?}");
    assert_eq!(e.to_string(), "interface `kvnone` not found");
    let e = rt.run(|| lookup_interface("kvnone")).unwrap_err();
    assert_eq!(e.to_string(), "interface `kvnone` not found");
    // Nothing to hold on an interface that does not exist.
    assert!(!call!(rt, v, is_held).unwrap());
    assert_eq!(call!(rt, v, release).unwrap(), Change::Unchanged);
}

#[test]
fn non_ethernet_interface_is_refused_before_adding() {
    require_root!();
    let mut lab = Lab::new();
    let a = lab.ns("a");
    let rt = NsRuntime::new(&a);
    let lo = rt.run(|| lookup_interface("lo")).unwrap();
    assert_eq!(lo.mac, None);
    assert_eq!(lo.index, 1);

    let v = vip("lo");
    let e = call!(rt, v, acquire).unwrap_err();
    assert_eq!(
        e.to_string(),
        "interface `lo` has no Ethernet address; provider `arp` needs an Ethernet interface"
    );
    assert!(
        !addrs(&a, "lo").contains("198.18.0.30"),
        "{}",
        addrs(&a, "lo")
    );
}

#[test]
fn down_interface_fails_the_announcement() {
    require_root!();
    let mut lab = Lab::new();
    let a = lab.ns("a");
    let b = lab.ns("b");
    lab.veth(&a, "kv0", &b, "kv1");
    crate::lab::ip(&a, &["link", "set", "kv0", "down"]);
    let rt = NsRuntime::new(&a);
    let v = vip("kv0");
    let e = call!(rt, v, acquire).unwrap_err();
    assert_eq!(
        e.to_string(),
        "sending gratuitous ARP request for 198.18.0.30 on `kv0`: Network is down (is the interface up?)"
    );
    // The address went on; a retry once the link is up announces it.
    assert!(call!(rt, v, is_held).unwrap());
    crate::lab::ip(&a, &["link", "set", "kv0", "up"]);
    assert_eq!(call!(rt, v, acquire).unwrap(), Change::Unchanged);
}

// Linux capabilities are per thread: drop two from the effective set of the
// calling thread only.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn drop_effective_caps(caps: &[u32]) {
    const VERSION_3: u32 = 0x2008_0522;
    let mut hdr = CapHeader {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and two data structs, as capget(2) wants for version 3.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    assert_eq!(r, 0, "capget: {}", std::io::Error::last_os_error());
    for &c in caps {
        data[(c / 32) as usize].effective &= !(1 << (c % 32));
    }
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    assert_eq!(r, 0, "capset: {}", std::io::Error::last_os_error());
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;

#[test]
fn missing_capabilities_are_named() {
    require_root!();
    let mut lab = Lab::new();
    let a = lab.ns("a");
    let b = lab.ns("b");
    lab.veth(&a, "kv0", &b, "kv1");
    let v = vip("kv0");
    let rt = NsRuntime::new(&a);
    // A second runtime thread in the same namespace, without the capabilities.
    let weak = NsRuntime::new(&a);
    weak.run(|| async { drop_effective_caps(&[CAP_NET_ADMIN, CAP_NET_RAW]) });

    let e = call!(weak, v, acquire).unwrap_err();
    assert_eq!(
        e.to_string(),
        "adding 198.18.0.30/32 to `kv0`: Operation not permitted (needs CAP_NET_ADMIN)"
    );
    assert!(e.is_permission_denied());
    // Reading needs no capability.
    assert!(!call!(weak, v, is_held).unwrap());

    assert_eq!(call!(rt, v, acquire).unwrap(), Change::Changed);
    let e = call!(weak, v, refresh).unwrap_err();
    assert_eq!(
        e.to_string(),
        "opening a packet socket on `kv0`: Operation not permitted (needs CAP_NET_RAW)"
    );
    let e = call!(weak, v, release).unwrap_err();
    assert_eq!(
        e.to_string(),
        "removing 198.18.0.30/32 from `kv0`: Operation not permitted (needs CAP_NET_ADMIN)"
    );
    assert!(call!(rt, v, is_held).unwrap());
    assert_eq!(call!(rt, v, release).unwrap(), Change::Changed);
}
