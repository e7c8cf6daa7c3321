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
use crate::config::Role;
use crate::join::Fingerprint;

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
        };
        for (k, v) in kv {
            match k {
                keys::ROLES => m.roles = v.split(',').filter_map(Role::parse).collect(),
                keys::VOTERS => m.voters = split_list(v),
                keys::LB => m.lb = LbHealth::parse(v),
                keys::PRIORITY => m.priority = v.parse().ok(),
                keys::DRAINED => m.drained = v == "1",
                keys::VIP => m.vip_holder = v == "1",
                keys::KUBE => m.kube = v.to_string(),
                keys::LEAVING => m.leaving = v == "1",
                keys::VERSION => m.version = v.to_string(),
                keys::KUBEADM => m.kubeadm = Some(v.to_string()).filter(|v| !v.is_empty()),
                keys::TLS_FINGERPRINT => m.tls_fingerprint = Fingerprint::parse(v),
                _ => {}
            }
        }
        m
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
        .map(str::to_string)
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
    /// until the dead-node grace period ends.
    pub fn from_incarnations(incarnations: impl IntoIterator<Item = MemberInfo>) -> Self {
        let mut members: BTreeMap<String, MemberInfo> = BTreeMap::new();
        for m in incarnations {
            match members.get(&m.name) {
                Some(old) if old.generation >= m.generation => {}
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

    fn m(name: &str, generation: u64, kv: &[(&str, &str)]) -> MemberInfo {
        MemberInfo::from_kv(
            name,
            generation,
            "127.0.0.1:7946".parse().unwrap(),
            true,
            kv.iter().copied(),
        )
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
