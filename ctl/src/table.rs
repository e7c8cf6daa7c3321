//! The human form of `status` and `members`: a summary a person reads at a
//! glance, then one row per member.

use std::fmt::Write;

use kubeha_core::api::{Status, VipProviderStatus};

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
            },
            voter_mismatch: vec![],
        }
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
    }
}
