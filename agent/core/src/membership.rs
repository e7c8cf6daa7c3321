//! What the agents tell each other through gossip, and the member view built
//! from it.
//!
//! Each agent publishes a few small keys (below) in its chitchat node state.
//! The shell turns chitchat's node states into [`MemberInfo`]s; this module
//! keeps one member per node name (the newest incarnation wins), tells a clean
//! stop (`leaving`) from a crash, ranks VIP candidates and spots members whose
//! voter list differs from ours. Values are short strings: chitchat stalls
//! replication of a node whose values exceed ~64 KB.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use crate::api::MemberState;
use crate::config::{self, Role};
use crate::join::Fingerprint;
use crate::proof::{self, ProofKey};

/// Gossip keys. Changing one is a wire-format change.
pub mod keys {
    /// Comma-separated roles: `control-plane,lb`.
    pub const ROLES: &str = "roles";
    /// Comma-separated sorted voter names, as in this node's config.
    pub const VOTERS: &str = "voters";
    /// `healthy`, `unhealthy` or `none` (not an lb node).
    pub const LB: &str = "lb";
    /// VIP priority (0-255), only on VIP candidates.
    pub const PRIORITY: &str = "priority";
    /// `1` while drained.
    pub const DRAINED: &str = "drained";
    /// `1` while this node holds the VIP.
    pub const VIP: &str = "vip";
    /// Kubernetes state of the node (`none`, `joined`, ...).
    pub const KUBE: &str = "kube";
    /// `1` once the agent is stopping cleanly.
    pub const LEAVING: &str = "leaving";
    /// Agent version.
    pub const VERSION: &str = "version";
    /// Installed kubeadm's minor version (`1.31`), once preflight knows it.
    pub const KUBEADM: &str = "kubeadm";
    /// SHA-256 fingerprint of the agent's TLS certificate (`sha256:<hex>`),
    /// pinned by the join channel (`crate::join`).
    pub const TLS_FINGERPRINT: &str = "tls_fp";
    /// [`crate::proof::role_proof`] of this incarnation's roles under the
    /// control key; without it, roles `control-plane` and `lb` are not
    /// believed.
    pub const PROOF: &str = "proof";
}

/// Roles a node may claim only with a proof under the control key: a
/// `control-plane` becomes a HAProxy backend and a lock claimant, an `lb`
/// a VIP candidate.
pub const CONTROL_ROLES: [Role; 2] = [Role::ControlPlane, Role::Lb];

pub use crate::proof::subject as proof_subject;

/// A value from a peer as this node keeps it: short, of a plain alphabet,
/// or `invalid` (what reaches `kubeha-ctl`'s table and metric labels).
fn plain_value(v: &str, max: usize, extra: &[char]) -> String {
    if v.len() <= max
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
    {
        v.to_string()
    } else {
        "invalid".to_string()
    }
}

/// A node name from gossip is one `node_name` could be.
pub fn valid_member_name(name: &str) -> bool {
    config::check_name(name).is_ok()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LbHealth {
    Healthy,
    Unhealthy,
    /// Not an lb node.
    None,
}

impl LbHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            LbHealth::Healthy => "healthy",
            LbHealth::Unhealthy => "unhealthy",
            LbHealth::None => "none",
        }
    }

    pub fn parse(s: &str) -> LbHealth {
        match s {
            "healthy" => LbHealth::Healthy,
            "unhealthy" => LbHealth::Unhealthy,
            _ => LbHealth::None,
        }
    }
}

/// One incarnation of one member, as gossip shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    pub name: String,
    pub generation: u64,
    pub addr: SocketAddr,
    /// The failure detector considers it live.
    pub live: bool,
    pub leaving: bool,
    pub roles: BTreeSet<Role>,
    pub voters: Vec<String>,
    pub lb: LbHealth,
    pub priority: Option<u8>,
    pub drained: bool,
    pub vip_holder: bool,
    pub kube: String,
    pub version: String,
    /// kubeadm minor (`1.31`); `None` until the member publishes it.
    pub kubeadm: Option<String>,
    /// Its join-channel TLS certificate, bound to `name` by tier-authenticated gossip.
    pub tls_fingerprint: Option<Fingerprint>,
    /// Its control-tier roles carry a valid proof under our control key.
    pub proven: bool,
}

impl MemberInfo {
    /// Build from a node state's key-values. Unknown keys are ignored and
    /// missing ones get neutral values, so older and newer agents mix.
    pub fn from_kv<'a>(
        name: &str,
        generation: u64,
        addr: SocketAddr,
        live: bool,
        kv: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> MemberInfo {
        let mut m = MemberInfo {
            name: name.to_string(),
            generation,
            addr,
            live,
            leaving: false,
            roles: BTreeSet::new(),
            voters: Vec::new(),
            lb: LbHealth::None,
            priority: None,
            drained: false,
            vip_holder: false,
            kube: "none".to_string(),
            version: String::new(),
            kubeadm: None,
            tls_fingerprint: None,
            proven: false,
        };
        for (k, v) in kv {
            match k {
                keys::ROLES => m.roles = v.split(',').filter_map(Role::parse).collect(),
                keys::VOTERS => m.voters = split_list(v),
                keys::LB => m.lb = LbHealth::parse(v),
                keys::PRIORITY => m.priority = v.parse().ok(),
                keys::DRAINED => m.drained = v == "1",
                keys::VIP => m.vip_holder = v == "1",
                keys::KUBE => m.kube = plain_value(v, 32, &['-']),
                keys::LEAVING => m.leaving = v == "1",
                keys::VERSION => m.version = plain_value(v, 64, &['.', '-', '+']),
                keys::KUBEADM => {
                    m.kubeadm = Some(plain_value(v, 16, &['.'])).filter(|v| !v.is_empty())
                }
                keys::TLS_FINGERPRINT => m.tls_fingerprint = Fingerprint::parse(v),
                _ => {}
            }
        }
        m
    }

    /// Believe the control-tier roles (and the VIP priority) of this
    /// incarnation only if `proof` proves them under one of `keys`;
    /// otherwise drop them, and with them the fingerprint a join server
    /// would pin. `subject` is [`proof_subject`] of the `roles` and `tls_fp`
    /// values as published.
    pub fn check_roles(
        &mut self,
        keys: &[ProofKey],
        cluster: &str,
        subject: &str,
        proof: Option<&str>,
    ) {
        let proven = proof.is_some_and(|p| {
            proof::check_role_proof(
                keys,
                cluster,
                &self.name,
                self.generation,
                self.addr,
                subject,
                p,
            )
        });
        self.set_proven(proven);
    }

    /// The outcome of a proof check (the shell caches them: a signature
    /// check costs tens of microseconds, and views are rebuilt often).
    pub fn set_proven(&mut self, proven: bool) {
        self.proven = proven;
        let needs = CONTROL_ROLES.iter().any(|r| self.roles.contains(r));
        if needs && !proven {
            for r in CONTROL_ROLES {
                self.roles.remove(&r);
            }
            self.priority = None;
            self.tls_fingerprint = None;
        }
    }

    pub fn state(&self) -> MemberState {
        if self.leaving {
            MemberState::Left
        } else if self.live {
            MemberState::Alive
        } else {
            MemberState::Dead
        }
    }

    pub fn alive(&self) -> bool {
        self.state() == MemberState::Alive
    }

    /// May hold the VIP now: an alive, healthy, undrained lb node with a
    /// `[vip]` (it publishes a priority).
    pub fn is_vip_eligible(&self) -> bool {
        self.alive()
            && self.roles.contains(&Role::Lb)
            && self.priority.is_some()
            && self.lb == LbHealth::Healthy
            && !self.drained
    }
}

/// The list format of `voters`.
pub fn format_list(items: &[String]) -> String {
    items.join(",")
}

fn split_list(v: &str) -> Vec<String> {
    let mut out: Vec<String> = v
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            if valid_member_name(s) {
                s.to_string()
            } else {
                "invalid".to_string()
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

pub fn format_roles(roles: &BTreeSet<Role>) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// One entry per node name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MembershipView {
    pub members: BTreeMap<String, MemberInfo>,
}

impl MembershipView {
    /// Keep the newest incarnation of each name: a restarted agent has a
    /// higher generation, and its previous incarnation lingers in chitchat
    /// until the dead-node grace period ends. A proven incarnation beats
    /// any unproven one, so a cluster-key holder gossiping a voter's or a
    /// control plane's name with a higher generation (and its own address)
    /// takes neither the name's address nor its roles. Names a node name
    /// cannot be are left out.
    pub fn from_incarnations(incarnations: impl IntoIterator<Item = MemberInfo>) -> Self {
        let mut members: BTreeMap<String, MemberInfo> = BTreeMap::new();
        for m in incarnations {
            if !valid_member_name(&m.name) {
                continue;
            }
            match members.get(&m.name) {
                Some(old) if (old.proven, old.generation) >= (m.proven, m.generation) => {}
                _ => {
                    members.insert(m.name.clone(), m);
                }
            }
        }
        MembershipView { members }
    }

    pub fn get(&self, name: &str) -> Option<&MemberInfo> {
        self.members.get(name)
    }

    pub fn alive(&self, name: &str) -> bool {
        self.get(name).is_some_and(MemberInfo::alive)
    }

    /// VIP-eligible members, best first: highest priority, then name.
    pub fn vip_candidates(&self) -> Vec<&MemberInfo> {
        let mut c: Vec<&MemberInfo> = self
            .members
            .values()
            .filter(|m| m.is_vip_eligible())
            .collect();
        c.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.name.cmp(&b.name))
        });
        c
    }

    /// Members (alive or not) whose voter list differs from `ours`.
    pub fn voter_mismatches(&self, ours: &[String]) -> Vec<&MemberInfo> {
        self.members
            .values()
            .filter(|m| !m.voters.is_empty() && m.voters != ours)
            .collect()
    }

    /// Members that say they hold the VIP (more than one only while a
    /// former holder's gossip is stale: the lease rules decide, not this).
    pub fn claimed_vip_holders(&self) -> Vec<&MemberInfo> {
        self.members
            .values()
            .filter(|m| m.alive() && m.vip_holder)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Key, Keyring};

    fn m(name: &str, generation: u64, kv: &[(&str, &str)]) -> MemberInfo {
        MemberInfo::from_kv(
            name,
            generation,
            "127.0.0.1:7946".parse().unwrap(),
            true,
            kv.iter().copied(),
        )
    }

    fn control() -> Keyring {
        Keyring::new(Key::from_bytes([42; 32]))
    }

    fn verifiers() -> Vec<ProofKey> {
        ProofKey::of_ring(&control())
    }

    fn claimed(name: &str, generation: u64, roles: &str, proof: Option<String>) -> MemberInfo {
        let addr: SocketAddr = "198.18.0.9:7946".parse().unwrap();
        let kv = [
            (keys::ROLES, roles),
            (keys::PRIORITY, "100"),
            (keys::LB, "healthy"),
        ];
        let mut x = MemberInfo::from_kv(name, generation, addr, true, kv.iter().copied());
        x.check_roles(&verifiers(), "lab", roles, proof.as_deref());
        x
    }

    #[test]
    fn control_roles_need_a_proof_under_the_control_key() {
        let addr: SocketAddr = "198.18.0.9:7946".parse().unwrap();
        let good = proof::role_proof(
            control().primary(),
            "lab",
            "cp-1",
            7,
            addr,
            "control-plane,lb",
        );
        let x = claimed("cp-1", 7, "control-plane,lb", Some(good.clone()));
        assert!(x.proven && x.roles.contains(&Role::ControlPlane) && x.is_vip_eligible());
        // No proof, a proof of another generation, name, role set, or
        // under another key (a worker has only the cluster key): the
        // control roles and the priority are dropped.
        let other_key = proof::role_proof(
            &Key::from_bytes([1; 32]),
            "lab",
            "cp-1",
            7,
            addr,
            "control-plane,lb",
        );
        for (name, generation, roles, proof) in [
            ("cp-1", 7, "control-plane,lb", None),
            ("cp-1", 8, "control-plane,lb", Some(good.clone())),
            ("w-1", 7, "control-plane,lb", Some(good.clone())),
            ("cp-1", 7, "control-plane,lb,worker", Some(good.clone())),
            ("cp-1", 7, "control-plane,lb", Some(other_key)),
            ("cp-1", 7, "control-plane,lb", Some("garbage!".into())),
        ] {
            let x = claimed(name, generation, roles, proof);
            assert!(!x.proven, "{name} {generation} {roles}");
            assert!(!x.roles.contains(&Role::ControlPlane) && !x.roles.contains(&Role::Lb));
            assert!(x.priority.is_none() && !x.is_vip_eligible());
        }
        // A worker needs no proof for its role.
        let w = claimed("w-1", 7, "worker", None);
        assert!(w.roles.contains(&Role::Worker));
        // A forged incarnation of a proven name, however new, loses.
        let forged = claimed("cp-1", 99, "control-plane,lb", None);
        let v = MembershipView::from_incarnations([x_proven(&good), forged]);
        assert_eq!(v.get("cp-1").unwrap().generation, 7);
    }

    #[test]
    fn a_forged_tls_fingerprint_breaks_the_proof_of_a_control_plane() {
        let addr: SocketAddr = "198.18.0.9:7946".parse().unwrap();
        let real = format!("sha256:{}", "a".repeat(64));
        let forged = format!("sha256:{}", "b".repeat(64));
        let roles = "control-plane";
        let proof = proof::role_proof(
            control().primary(),
            "lab",
            "cp-1",
            7,
            addr,
            &proof_subject(roles, Some(&real)),
        );
        let member = |fp: &str| {
            let kv = [(keys::ROLES, roles), (keys::TLS_FINGERPRINT, fp)];
            let mut m = MemberInfo::from_kv("cp-1", 7, addr, true, kv.iter().copied());
            m.check_roles(
                &verifiers(),
                "lab",
                &proof_subject(roles, Some(fp)),
                Some(&proof),
            );
            m
        };
        let honest = member(&real);
        assert!(honest.proven);
        assert!(honest.roles.contains(&Role::ControlPlane));
        assert_eq!(honest.tls_fingerprint, Fingerprint::parse(&real));
        // Another member relays cp-1's state with its own fingerprint in it.
        let relayed = member(&forged);
        assert!(!relayed.proven);
        assert!(!relayed.roles.contains(&Role::ControlPlane));
        assert_eq!(relayed.tls_fingerprint, None);
    }

    #[test]
    fn an_unproven_control_plane_is_no_haproxy_backend_and_no_candidate() {
        let addr: SocketAddr = "198.18.0.9:7946".parse().unwrap();
        let good = proof::role_proof(
            control().primary(),
            "lab",
            "cp-1",
            7,
            addr,
            "control-plane,lb",
        );
        let view = MembershipView::from_incarnations([
            claimed("cp-1", 7, "control-plane,lb", Some(good)),
            claimed("w-1", 7, "control-plane,lb", None),
        ]);
        let backends: Vec<String> = crate::haproxy::backend_set(&view, 6443)
            .into_iter()
            .map(|b| b.name)
            .collect();
        assert_eq!(backends, ["cp-1"]);
        let candidates: Vec<&str> = view
            .vip_candidates()
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(candidates, ["cp-1"]);
    }

    fn x_proven(proof: &str) -> MemberInfo {
        claimed("cp-1", 7, "control-plane,lb", Some(proof.to_string()))
    }

    #[test]
    fn peer_names_and_values_are_validated() {
        let v = MembershipView::from_incarnations([
            m("evil\u{1b}[31m", 1, &[]),
            m(&"x".repeat(64), 1, &[]),
            m(
                "ok",
                1,
                &[
                    (keys::KUBE, "joined\u{1b}[2J"),
                    (keys::VERSION, "0.1.0"),
                    (keys::VOTERS, "a,B_AD"),
                ],
            ),
        ]);
        assert_eq!(v.members.len(), 1);
        let ok = v.get("ok").unwrap();
        assert_eq!(ok.kube, "invalid");
        assert_eq!(ok.version, "0.1.0");
        assert_eq!(ok.voters, ["a", "invalid"]);
        assert!(m("x", 1, &[(keys::VERSION, &"9".repeat(65))]).version == "invalid");
    }

    #[test]
    fn newest_incarnation_wins() {
        let v = MembershipView::from_incarnations([
            m("a", 5, &[(keys::KUBE, "old")]),
            m("a", 9, &[(keys::KUBE, "new")]),
            m("a", 7, &[(keys::KUBE, "mid")]),
            m("b", 1, &[]),
        ]);
        assert_eq!(v.members.len(), 2);
        assert_eq!(v.get("a").unwrap().kube, "new");
    }

    #[test]
    fn leaving_is_left_not_dead() {
        let mut x = m("a", 1, &[(keys::LEAVING, "1")]);
        assert_eq!(x.state(), MemberState::Left);
        x.leaving = false;
        x.live = false;
        assert_eq!(x.state(), MemberState::Dead);
    }

    #[test]
    fn candidates_ranked_by_priority_then_name() {
        let lb = |n: &str, p: &str, health: &str| {
            m(
                n,
                1,
                &[(keys::ROLES, "lb"), (keys::PRIORITY, p), (keys::LB, health)],
            )
        };
        let mut drained = lb("d", "255", "healthy");
        drained.drained = true;
        let v = MembershipView::from_incarnations([
            lb("b", "100", "healthy"),
            lb("a", "100", "healthy"),
            lb("c", "150", "healthy"),
            lb("u", "200", "unhealthy"),
            drained,
            m("w", 1, &[(keys::ROLES, "worker")]),
        ]);
        let names: Vec<_> = v.vip_candidates().iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["c", "a", "b"]);
    }

    #[test]
    fn voter_mismatch() {
        let ours = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let v = MembershipView::from_incarnations([
            m("a", 1, &[(keys::VOTERS, "c,b,a")]),
            m("b", 1, &[(keys::VOTERS, "a,b")]),
            m("c", 1, &[]),
        ]);
        let bad: Vec<_> = v
            .voter_mismatches(&ours)
            .iter()
            .map(|m| m.name.clone())
            .collect();
        assert_eq!(bad, ["b"]);
    }
}
