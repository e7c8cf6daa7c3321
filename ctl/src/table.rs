//! The human form of `status` and `members`: a summary a person reads at a
//! glance, then one row per member.

use std::fmt::Write;

use kubeha_core::api::{CheckState, PreflightReport, Status, VipProviderStatus};

pub fn status(s: &Status) -> String {
    let mut out = String::new();
    let drained = if s.drained { " · DRAINED" } else { "" };
    let _ = writeln!(
        out,
        "cluster {} · node {} · kubeha {} · timing {}{drained}",
        s.cluster, s.node, s.version, s.timing
    );
    let q = &s.quorum;
    let _ = writeln!(
        out,
        "quorum   {}/{} voters reachable ({})",
        q.reachable,
        q.voters,
        if q.ok { "ok" } else { "NO QUORUM" }
    );
    match &s.vip {
        None => {
            let _ = writeln!(out, "vip      not configured on this node");
        }
        Some(v) => {
            let holder = match (&v.holder, v.held_here) {
                (_, true) => format!("held by {} (this node)", s.node),
                (Some(h), false) => format!("held by {h}"),
                (None, false) => "NOT HELD".to_string(),
            };
            let cand = if v.candidate {
                ", this node is a candidate"
            } else {
                ""
            };
            let _ = writeln!(out, "vip      {} {holder}{cand}", v.address);
            if let Some(p) = &v.provider {
                provider_lines(&mut out, p);
            }
            if let Some(g) = v.cloud_guard.as_ref().filter(|g| g.fault.is_some()) {
                let aside = if g.standing_aside_secs > 0 {
                    format!("standing aside {}s", g.standing_aside_secs)
                } else {
                    "a candidate again".to_string()
                };
                let _ = writeln!(
                    out,
                    "         cloud fault ({}, {} in a row): {aside}, asking with priority 0 until an assignment works",
                    g.fault.as_deref().unwrap_or("?"),
                    g.faults
                );
            }
        }
    }
    match &s.haproxy {
        None => {}
        Some(h) => {
            let up = h.backends.iter().filter(|b| b.up).count();
            let list: Vec<String> = h
                .backends
                .iter()
                .map(|b| format!("{} {}", b.name, if b.up { "up" } else { "DOWN" }))
                .collect();
            let _ = writeln!(
                out,
                "haproxy  {}, config {}, backends {up}/{} up{}{}",
                if h.running { "running" } else { "NOT RUNNING" },
                if h.config_ok { "ok" } else { "REJECTED" },
                h.backends.len(),
                if list.is_empty() {
                    String::new()
                } else {
                    format!(": {}", list.join(", "))
                },
                h.last_error
                    .as_ref()
                    .map(|e| format!("\n         last error: {e}"))
                    .unwrap_or_default()
            );
        }
    }
    let k = &s.kubernetes;
    let _ = writeln!(
        out,
        "kube     {}{}{}",
        k.phase,
        k.init_node
            .as_ref()
            .map(|n| format!(" · init node {n}"))
            .unwrap_or_default(),
        k.endpoint
            .as_ref()
            .map(|e| format!(" · endpoint {e}"))
            .unwrap_or_default()
    );
    if let Some(w) = &k.waiting_for {
        let _ = writeln!(out, "         waiting for {w}");
    }
    if let Some(n) = &k.init_node_down {
        let _ = writeln!(
            out,
            "         init node {n} is DOWN before its init finished: nobody else initializes.\n         \
             If {n} is gone for good: kubeha-ctl bootstrap release {n}"
        );
    }
    if let Some(r) = &k.release {
        let _ = writeln!(
            out,
            "         release of {}: {} ({}/{} voters{})",
            r.node,
            if r.done { "done" } else { "pending" },
            r.acked.len(),
            r.needed,
            r.refused_suffix()
        );
    }
    if let Some(e) = &k.last_error {
        let _ = writeln!(out, "         last error: {e}");
    }
    if let Some(etcd) = &k.etcd {
        let voting = etcd.members.iter().filter(|m| !m.learner).count();
        let healthy = etcd.members.iter().filter(|m| m.healthy).count();
        let members: Vec<String> = etcd
            .members
            .iter()
            .map(|m| {
                let name = if m.name.is_empty() {
                    m.id.as_str()
                } else {
                    m.name.as_str()
                };
                let mut tags = Vec::new();
                if m.leader {
                    tags.push("leader");
                }
                if m.learner {
                    tags.push("learner");
                }
                if !m.healthy {
                    tags.push("DOWN");
                }
                if tags.is_empty() {
                    name.to_string()
                } else {
                    format!("{name} ({})", tags.join(", "))
                }
            })
            .collect();
        let _ = writeln!(
            out,
            "etcd     {voting} voting, {healthy}/{} healthy: {} · {} s ago",
            etcd.members.len(),
            members.join(", "),
            etcd.age_secs
        );
        if let Some(e) = &etcd.error {
            let _ = writeln!(out, "         last read failed: {e}");
        }
    }
    if let Some(p) = &s.preflight {
        let failed = p
            .checks
            .iter()
            .filter(|c| c.state == CheckState::Failed)
            .count();
        let _ = writeln!(
            out,
            "host     {}{}",
            if p.ok {
                "prepared".to_string()
            } else {
                format!("NOT PREPARED: {failed} check(s) failed (`kubeha-ctl preflight`)")
            },
            p.kubeadm_version
                .as_ref()
                .map(|v| format!(" · kubeadm {v}"))
                .unwrap_or_default()
        );
    }
    for k in &s.kubeadm_skew {
        let _ = writeln!(
            out,
            "WARNING  {} has kubeadm {}, the other control planes {}: init/join wait until they match",
            k.member, k.kubeadm, k.common
        );
    }
    for m in &s.voter_mismatch {
        let _ = writeln!(
            out,
            "WARNING  {} lists voters [{}], this node does not: make `voters` identical on every node",
            m.member,
            m.their_voters.join(", ")
        );
    }
    out.push('\n');
    out.push_str(&members(s));
    out
}

/// `kubeha-ctl preflight`: one row per check, then what this run changed
/// and any error.
pub fn preflight(p: &PreflightReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "host {}{}",
        if p.ok { "prepared" } else { "NOT PREPARED" },
        p.kubeadm_version
            .as_ref()
            .map(|v| format!(" · kubeadm {v}"))
            .unwrap_or_default()
    );
    out.push('\n');
    let mut rows: Vec<[String; 3]> = vec![["CHECK".into(), "STATE".into(), "DETAIL".into()]];
    for c in &p.checks {
        let state = match c.state {
            CheckState::Failed => "FAILED".to_string(),
            s => s.as_str().to_string(),
        };
        rows.push([c.name.clone(), state, c.detail.clone()]);
    }
    let mut widths = [0usize; 3];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    let todo: Vec<_> = p
        .checks
        .iter()
        .filter(|c| c.state == CheckState::Failed || c.state == CheckState::Warning)
        .filter_map(|c| Some((c, c.remedy.as_ref()?)))
        .collect();
    if !todo.is_empty() {
        out.push('\n');
        for (c, r) in todo {
            let _ = writeln!(out, "to do    {}: {r}", c.name);
        }
    }
    if !p.applied.is_empty() {
        out.push('\n');
        let _ = writeln!(out, "changed  {}", p.applied.join("; "));
    }
    for e in &p.errors {
        let _ = writeln!(out, "ERROR    {e}");
    }
    out
}

/// A cloud provider's view, under the `vip` line: where the IP is, the last
/// action, and why it is not assigned when it is not.
fn provider_lines(out: &mut String, p: &VipProviderStatus) {
    let ip = p.reserved_ip.as_deref().unwrap_or("?");
    let state = match p.state.as_str() {
        "assigned" => "assigned".to_string(),
        "failed" => "FAILED".to_string(),
        other => other.to_string(),
    };
    let on = match (p.assigned_to, p.droplet_id) {
        (Some(a), Some(d)) if a == d => format!(", on droplet {a} (this droplet)"),
        (Some(a), _) => format!(", on droplet {a}"),
        (None, _) => ", on no droplet".to_string(),
    };
    let action = match &p.last_action {
        Some(a) => format!(" · last action {} {} {}s ago", a.id, a.status, a.age_secs),
        None => String::new(),
    };
    let _ = writeln!(out, "cloud    {} {ip}: {state}{on}{action}", p.kind);
    if let Some(r) = &p.reason {
        let _ = writeln!(out, "         why: {r}");
    }
}

pub fn members(s: &Status) -> String {
    let header = ["MEMBER", "ADDRESS", "ROLES", "STATE", "KUBE", "LB", ""];
    let mut rows: Vec<[String; 7]> = vec![header.map(str::to_string)];
    for m in &s.members {
        let mut flags = Vec::new();
        if m.vip_holder {
            flags.push("vip");
        }
        if m.drained {
            flags.push("drained");
        }
        if m.name == s.node {
            flags.push("self");
        }
        rows.push([
            m.name.clone(),
            m.addr.clone(),
            if m.roles.is_empty() {
                "-".into()
            } else {
                m.roles.join(",")
            },
            m.state.as_str().to_string(),
            m.kube.clone(),
            m.lb.clone(),
            flags.join(","),
        ]);
    }
    let mut widths = [0usize; 7];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubeha_core::api::*;

    fn sample() -> Status {
        let member =
            |name: &str, ip: &str, roles: &[&str], state: MemberState, vip: bool| MemberStatus {
                name: name.into(),
                addr: format!("{ip}:7946"),
                roles: roles.iter().map(|r| r.to_string()).collect(),
                alive: state == MemberState::Alive,
                state,
                generation: 1,
                kube: "control-plane".into(),
                lb: "healthy".into(),
                drained: false,
                vip_holder: vip,
            };
        Status {
            cluster: "lab".into(),
            node: "cp-0".into(),
            version: "0.1.0".into(),
            timing: "default".into(),
            drained: false,
            members: vec![
                member(
                    "cp-0",
                    "10.108.0.3",
                    &["control-plane", "lb"],
                    MemberState::Alive,
                    true,
                ),
                member(
                    "cp-1",
                    "10.108.0.6",
                    &["control-plane", "lb"],
                    MemberState::Dead,
                    false,
                ),
            ],
            vip: Some(VipStatus {
                address: "10.108.0.10/32".into(),
                holder: Some("cp-0".into()),
                held_here: true,
                candidate: true,
                provider: None,
                cloud_guard: None,
            }),
            haproxy: Some(HaproxyStatus {
                running: true,
                config_ok: true,
                last_error: None,
                backends: vec![
                    BackendStatus {
                        name: "cp-0".into(),
                        addr: "10.108.0.3:6443".into(),
                        up: true,
                    },
                    BackendStatus {
                        name: "cp-1".into(),
                        addr: "10.108.0.6:6443".into(),
                        up: false,
                    },
                ],
            }),
            quorum: QuorumStatus {
                voters: 3,
                reachable: 2,
                ok: true,
            },
            kubernetes: KubernetesStatus {
                phase: "joined".into(),
                init_node: Some("cp-0".into()),
                endpoint: Some("k8s-api:6443".into()),
                waiting_for: None,
                last_error: None,
                join_failures: 0,
                etcd: None,
                init_node_down: None,
                release: None,
                released: vec![],
            },
            voter_mismatch: vec![],
            preflight: None,
            kubeadm_skew: vec![],
        }
    }

    fn report() -> PreflightReport {
        let check =
            |name: &str, state: CheckState, detail: &str, remedy: Option<&str>| PreflightCheck {
                name: name.into(),
                state,
                detail: detail.into(),
                remedy: remedy.map(str::to_string),
            };
        PreflightReport {
            ok: false,
            kubeadm_version: Some("v1.31.2".into()),
            kubeadm_minor: Some("1.31".into()),
            checks: vec![
                check("module br_netfilter", CheckState::Changed, "loaded", None),
                check(
                    "swap at boot",
                    CheckState::Warning,
                    "/etc/fstab line 3 turns swap on at boot",
                    Some("comment out the swap line in /etc/fstab"),
                ),
                check(
                    "kubelet",
                    CheckState::Failed,
                    "not installed",
                    Some("install it from the Kubernetes apt repository"),
                ),
            ],
            applied: vec!["modprobe br_netfilter".into()],
            errors: vec!["nothing changed: `kubelet` cannot be fixed here".into()],
        }
    }

    #[test]
    fn preflight_table() {
        let expected = "\
host NOT PREPARED · kubeadm v1.31.2

CHECK                STATE    DETAIL
module br_netfilter  changed  loaded
swap at boot         warning  /etc/fstab line 3 turns swap on at boot
kubelet              FAILED   not installed

to do    swap at boot: comment out the swap line in /etc/fstab
to do    kubelet: install it from the Kubernetes apt repository

changed  modprobe br_netfilter
ERROR    nothing changed: `kubelet` cannot be fixed here
";
        assert_eq!(preflight(&report()), expected);
    }

    #[test]
    fn status_shows_etcd_as_etcd_reports_it() {
        use kubeha_core::api::{EtcdMember, EtcdStatus};
        let member = |name: &str, learner, healthy, leader| EtcdMember {
            name: name.into(),
            id: "2a".into(),
            peer_urls: vec![],
            client_urls: vec![],
            learner,
            healthy,
            leader,
        };
        let mut s = sample();
        s.kubernetes.etcd = Some(EtcdStatus {
            members: vec![
                member("cp-0", false, true, true),
                member("cp-1", false, false, false),
                member("", true, true, false),
            ],
            error: Some("POST https://10.108.0.3:2379/v3/cluster/member/list: timed out".into()),
            age_secs: 12,
        });
        let t = status(&s);
        assert!(
            t.contains("etcd     2 voting, 2/3 healthy: cp-0 (leader), cp-1 (DOWN), 2a (learner) · 12 s ago\n"),
            "{t}"
        );
        assert!(
            t.contains("         last read failed: POST https://10.108.0.3:2379"),
            "{t}"
        );
    }

    #[test]
    fn status_names_a_down_init_node_and_the_release() {
        use kubeha_core::api::{ReleaseRefused, ReleaseStatus};
        let mut s = sample();
        s.kubernetes.init_node_down = Some("cp-2".into());
        let t = status(&s);
        assert!(
            t.contains("init node cp-2 is DOWN before its init finished: nobody else initializes."),
            "{t}"
        );
        assert!(t.contains("kubeha-ctl bootstrap release cp-2\n"), "{t}");
        s.kubernetes.release = Some(ReleaseStatus {
            node: "cp-2".into(),
            acked: vec!["cp-0".into()],
            refused: vec![ReleaseRefused {
                voter: "cp-1".into(),
                reason: "it sees the holder alive".into(),
            }],
            needed: 2,
            done: false,
        });
        let t = status(&s);
        assert!(
            t.contains(
                "release of cp-2: pending (1/2 voters; refused by cp-1 (it sees the holder alive))\n"
            ),
            "{t}"
        );
    }

    #[test]
    fn status_shows_host_and_kubeadm_skew() {
        let mut s = sample();
        s.preflight = Some(report());
        s.kubeadm_skew.push(KubeadmSkew {
            member: "cp-2".into(),
            kubeadm: "1.30".into(),
            common: "1.31".into(),
        });
        let t = status(&s);
        assert!(t.contains("host     NOT PREPARED: 1 check(s) failed (`kubeha-ctl preflight`) · kubeadm v1.31.2"), "{t}");
        assert!(
            t.contains("WARNING  cp-2 has kubeadm 1.30, the other control planes 1.31"),
            "{t}"
        );
    }

    #[test]
    fn status_table() {
        let expected = "\
cluster lab · node cp-0 · kubeha 0.1.0 · timing default
quorum   2/3 voters reachable (ok)
vip      10.108.0.10/32 held by cp-0 (this node), this node is a candidate
haproxy  running, config ok, backends 1/2 up: cp-0 up, cp-1 DOWN
kube     joined · init node cp-0 · endpoint k8s-api:6443

MEMBER  ADDRESS          ROLES             STATE  KUBE           LB
cp-0    10.108.0.3:7946  control-plane,lb  alive  control-plane  healthy  vip,self
cp-1    10.108.0.6:7946  control-plane,lb  dead   control-plane  healthy
";
        assert_eq!(status(&sample()), expected);
    }

    #[test]
    fn mismatch_and_no_holder_are_loud() {
        let mut s = sample();
        s.vip.as_mut().unwrap().holder = None;
        s.vip.as_mut().unwrap().held_here = false;
        s.voter_mismatch.push(VoterMismatch {
            member: "cp-1".into(),
            their_voters: vec!["cp-1".into()],
        });
        let t = status(&s);
        assert!(t.contains("NOT HELD"), "{t}");
        assert!(t.contains("WARNING  cp-1 lists voters [cp-1]"), "{t}");
    }

    #[test]
    fn cloud_provider_lines() {
        use kubeha_core::api::ProviderAction;
        let mut s = sample();
        let p = VipProviderStatus {
            kind: "digitalocean".into(),
            state: "assigned".into(),
            reason: None,
            reserved_ip: Some("203.0.113.7".into()),
            droplet_id: Some(101),
            assigned_to: Some(101),
            last_action: Some(ProviderAction {
                id: 42,
                status: "completed".into(),
                age_secs: 12,
            }),
        };
        s.vip.as_mut().unwrap().provider = Some(p.clone());
        let t = status(&s);
        assert!(
            t.contains("cloud    digitalocean 203.0.113.7: assigned, on droplet 101 (this droplet) · last action 42 completed 12s ago\n"),
            "{t}"
        );
        assert!(!t.contains("why:"), "{t}");

        let mut failed = p;
        failed.state = "failed".into();
        failed.assigned_to = Some(102);
        failed.reason = Some("DigitalOcean assign `POST /v2/reserved_ips/203.0.113.7/actions`: HTTP 401 unauthorized".into());
        s.vip.as_mut().unwrap().provider = Some(failed);
        let t = status(&s);
        assert!(t.contains(": FAILED, on droplet 102 ·"), "{t}");
        assert!(
            t.contains("\n         why: DigitalOcean assign `POST"),
            "{t}"
        );
        assert!(!t.contains("cloud fault"), "{t}");
        s.vip.as_mut().unwrap().cloud_guard = Some(kubeha_core::api::CloudGuardStatus {
            fault: Some("permanent".into()),
            faults: 2,
            standing_aside_secs: 117,
            demoted: true,
        });
        let t = status(&s);
        assert!(
            t.contains("\n         cloud fault (permanent, 2 in a row): standing aside 117s, asking with priority 0"),
            "{t}"
        );
    }
}
