//! Gossip key-values of a peer, as chitchat hands them over: parsing,
//! role-proof checking and the member view never panic, only valid node
//! names enter the view, and values that reach status are plain.
#![no_main]

use std::net::SocketAddr;

use kubeha_core::frame::{Key, Keyring};
use kubeha_core::membership::{MemberInfo, MembershipView, keys};
use kubeha_core::proof::ProofKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\n');
    let name = parts.next().unwrap_or_default().to_string();
    let kv: Vec<(String, String)> = parts
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let addr: SocketAddr = "198.18.0.9:7946".parse().unwrap();
    let control = ProofKey::of_ring(&Keyring::new(Key::from_bytes([9; 32])));
    let get = |k: &str| kv.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str());
    let mut m = MemberInfo::from_kv(
        &name,
        7,
        addr,
        true,
        kv.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    m.check_roles(
        &control,
        "fuzz",
        get(keys::ROLES).unwrap_or_default(),
        get(keys::PROOF),
    );
    assert!(
        m.kube
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    );
    assert!(m.version.len() <= 64 || m.version == "invalid");
    let view = MembershipView::from_incarnations([m]);
    for n in view.members.keys() {
        assert!(
            kubeha_core::config::check_name(n).is_ok(),
            "{n:?} in the view"
        );
    }
    let _ = view.vip_candidates();
    let _ = view.voter_mismatches(&["a".to_string()]);
});
