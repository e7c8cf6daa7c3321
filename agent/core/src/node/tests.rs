//! Node-level tests over a tiny lossless network with 1 ms links and one
//! shared clock. The simulator (`kubeha-sim`) covers faults and drift.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::membership::{MemberInfo, keys};

const LINK: Duration = Duration::from_millis(1);

struct Net {
    now: Time,
    nodes: BTreeMap<String, Node>,
    /// (deliver at, seq, to, from, msg)
    queue: Vec<(Time, u64, String, String, PeerMsg)>,
    seq: u64,
    /// Nodes whose VIP is up (effects applied in order).
    vip: BTreeSet<String>,
    log: Vec<(Time, String, Effect)>,
    down: BTreeSet<String>,
    /// `NodeParams::cloud` of the candidates started from now on.
    cloud: Option<crate::lease::CloudTiming>,
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

impl Net {
    fn new(voters: &[&str], candidates: &[(&str, u8)], others: &[&str]) -> Net {
        Net::with_cloud(voters, candidates, others, None)
    }

    fn with_cloud(
        voters: &[&str],
        candidates: &[(&str, u8)],
        others: &[&str],
        cloud: Option<crate::lease::CloudTiming>,
    ) -> Net {
        let mut net = Net {
            now: Time::from_millis(1000),
            nodes: BTreeMap::new(),
            queue: Vec::new(),
            seq: 0,
            vip: BTreeSet::new(),
            log: Vec::new(),
            down: BTreeSet::new(),
            cloud,
        };
        let mut all: BTreeMap<&str, Option<u8>> = BTreeMap::new();
        for v in voters.iter().chain(others) {
            all.insert(v, None);
        }
        for (c, p) in candidates {
            all.insert(c, Some(*p));
        }
        for (i, (n, prio)) in all.into_iter().enumerate() {
            net.start(n, prio, 10 + i as u64, voters);
        }
        net
    }

    fn start(&mut self, name: &str, prio: Option<u8>, inc: u64, voters: &[&str]) {
        let (node, effects) = Node::new(
            NodeParams {
                name: name.into(),
                voters: names(voters),
                timing: Timing::DEFAULT,
                vip_priority: prio,
                incarnation: inc,
                persisted: None,
                cloud: prio.and(self.cloud),
            },
            self.now,
        );
        self.nodes.insert(name.into(), node);
        self.down.remove(name);
        self.apply(name, effects);
    }

    fn apply(&mut self, from: &str, effects: Vec<Effect>) {
        for e in effects {
            match &e {
                Effect::Send { to, msg } => {
                    self.seq += 1;
                    self.queue.push((
                        self.now + LINK,
                        self.seq,
                        to.clone(),
                        from.to_string(),
                        msg.clone(),
                    ));
                }
                Effect::AddVip => {
                    self.vip.insert(from.to_string());
                }
                Effect::RemoveVip => {
                    self.vip.remove(from);
                }
                _ => {}
            }
            assert!(
                self.vip.len() <= 1,
                "two VIP holders at {:?}: {:?}",
                self.now,
                self.vip
            );
            self.log.push((self.now, from.to_string(), e));
        }
    }

    fn input(&mut self, who: &str, input: Input) {
        let effects = self.nodes.get_mut(who).unwrap().step(self.now, input);
        self.apply(who, effects);
    }

    /// Advance to `until`, delivering messages and ticks in time order.
    fn run_until(&mut self, until: Time) {
        loop {
            let next_msg = self.queue.iter().map(|m| (m.0, m.1)).min();
            let next_tick = self
                .nodes
                .iter()
                .filter(|(n, _)| !self.down.contains(*n))
                .filter_map(|(n, node)| node.next_wakeup().map(|t| (t, n.clone())))
                .min();
            let t_msg = next_msg.map(|m| m.0);
            let t_tick = next_tick.as_ref().map(|t| t.0);
            let t = match (t_msg, t_tick) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap(),
            };
            if t > until {
                self.now = until;
                return;
            }
            self.now = self.now.max(t);
            if t_msg == Some(t) {
                let (_, seq) = next_msg.unwrap();
                let i = self.queue.iter().position(|m| m.1 == seq).unwrap();
                let (_, _, to, from, msg) = self.queue.remove(i);
                if self.down.contains(&to) || !self.nodes.contains_key(&to) {
                    continue;
                }
                self.input(&to, Input::Peer { from, msg });
            } else {
                let who = next_tick.unwrap().1;
                self.input(&who, Input::Tick);
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// (node, job id) of every `RunInit` job started, in order.
    fn init_jobs(&self) -> Vec<(String, JobId)> {
        self.log
            .iter()
            .filter_map(|(_, n, e)| match e {
                Effect::StartJob {
                    id,
                    job: Job::RunInit,
                } => Some((n.clone(), *id)),
                _ => None,
            })
            .collect()
    }

    /// The values `who` published for `key`, in order.
    fn published(&self, who: &str, key: &str) -> Vec<String> {
        self.log
            .iter()
            .filter(|(_, n, _)| n == who)
            .filter_map(|(_, _, e)| match e {
                Effect::Publish { key: k, value } if *k == key => Some(value.clone()),
                _ => None,
            })
            .collect()
    }

    fn crash(&mut self, who: &str) {
        self.down.insert(who.to_string());
        self.vip.remove(who);
    }

    fn holder(&self) -> Option<String> {
        self.vip.iter().next().cloned()
    }

    fn vip_added_after(&self, t: Time) -> Option<(Time, String)> {
        self.log
            .iter()
            .find(|(at, _, e)| *at >= t && *e == Effect::AddVip)
            .map(|(at, n, _)| (*at, n.clone()))
    }

    fn view(&mut self, members: &[(&str, Option<u8>, bool)]) {
        let mut infos = Vec::new();
        for (n, prio, healthy) in members {
            let mut kv: Vec<(&str, String)> = vec![(keys::ROLES, "lb".into())];
            if let Some(p) = prio {
                kv.push((keys::PRIORITY, p.to_string()));
            }
            kv.push((
                keys::LB,
                if *healthy { "healthy" } else { "unhealthy" }.into(),
            ));
            infos.push(MemberInfo::from_kv(
                n,
                1,
                "198.18.0.1:7946".parse().unwrap(),
                true,
                kv.iter().map(|(k, v)| (*k, v.as_str())),
            ));
        }
        let view = MembershipView::from_incarnations(infos);
        for n in self.nodes.keys().cloned().collect::<Vec<_>>() {
            self.input(&n, Input::Membership(view.clone()));
        }
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

#[test]
fn compact_cluster_elects_one_holder_after_quarantine() {
    let mut net = Net::new(&["a", "b", "c"], &[("a", 100), ("b", 100), ("c", 100)], &[]);
    let start = net.now;
    net.run_for(ms(700));
    assert_eq!(net.holder(), None, "voters are in quarantine for one lease");
    net.run_for(ms(400));
    let h = net.holder().expect("a holder after the quarantine");
    let n = &net.nodes[&h];
    assert!(n.holds_vip(net.now));
    let st = n.status(net.now);
    assert_eq!(st.vip_holder.as_deref(), Some(h.as_str()));
    assert!(st.quorum_ok);
    assert_eq!(st.reachable_voters, 3);
    assert!(net.vip_added_after(start).unwrap().0 <= start + ms(820));
    // Everyone agrees on the holder after a probe round.
    net.run_for(ms(1000));
    for (name, node) in &net.nodes {
        assert_eq!(
            node.status(net.now).vip_holder.as_deref(),
            Some(h.as_str()),
            "{name}"
        );
    }
}

#[test]
fn failover_after_holder_crash_within_one_lease() {
    let mut net = Net::new(&["v1", "v2", "v3"], &[("lb1", 100), ("lb2", 100)], &[]);
    net.run_for(ms(2000));
    let h = net.holder().unwrap();
    let crash_at = net.now;
    net.crash(&h);
    net.run_for(ms(1500));
    let (at, new) = net.vip_added_after(crash_at).unwrap();
    assert_ne!(new, h);
    let took = at.saturating_since(crash_at);
    assert!(
        took <= Timing::DEFAULT.lease + ms(10),
        "failover took {took:?}"
    );
}

#[test]
fn drain_hands_over_within_a_few_round_trips() {
    let mut net = Net::new(&["v1", "v2", "v3"], &[("lb1", 100), ("lb2", 100)], &[]);
    net.run_for(ms(2000));
    let h = net.holder().unwrap();
    let t = net.now;
    net.input(&h, Input::Drain(true));
    assert_eq!(net.holder(), None, "RemoveVip is immediate");
    net.run_for(ms(100));
    let (at, new) = net.vip_added_after(t).unwrap();
    assert_ne!(new, h);
    assert!(
        at.saturating_since(t) <= ms(10),
        "handover took {:?}",
        at.saturating_since(t)
    );
    assert!(net.nodes[&h].status(net.now).drained);
    assert!(!net.nodes[&h].status(net.now).vip_candidate);
}

#[test]
fn stop_removes_before_releasing() {
    let mut net = Net::new(&["v1", "v2", "v3"], &[("lb1", 100)], &[]);
    net.run_for(ms(2000));
    assert_eq!(net.holder().as_deref(), Some("lb1"));
    let effects = net.nodes.get_mut("lb1").unwrap().step(net.now, Input::Stop);
    let remove = effects
        .iter()
        .position(|e| *e == Effect::RemoveVip)
        .unwrap();
    let release = effects
        .iter()
        .position(|e| {
            matches!(
                e,
                Effect::Send {
                    msg: PeerMsg::LeaseRelease(_),
                    ..
                }
            )
        })
        .unwrap();
    assert!(remove < release);
    assert!(net.nodes["lb1"].stopped());
    assert_eq!(net.nodes["lb1"].next_wakeup(), None);
    assert!(
        net.nodes
            .get_mut("lb1")
            .unwrap()
            .step(net.now, Input::Tick)
            .is_empty()
    );
}

#[test]
fn isolated_holder_drops_before_anyone_takes_over() {
    let mut net = Net::new(&["v1", "v2", "v3"], &[("lb1", 100), ("lb2", 100)], &[]);
    net.run_for(ms(2000));
    let h = net.holder().unwrap();
    // Cut the holder off: it keeps running, but nothing reaches anyone.
    let t = net.now;
    let mut dropped_at = None;
    while net.now < t + ms(1500) {
        net.queue.retain(|m| m.2 != h && m.3 != h);
        let step_to = net.now + ms(1);
        net.run_until(step_to);
        if dropped_at.is_none() && !net.nodes[&h].holds_vip(net.now) {
            dropped_at = Some(net.now);
        }
    }
    let (took_over, new) = net.vip_added_after(t).unwrap();
    assert_ne!(new, h);
    assert!(dropped_at.unwrap() < took_over);
    assert_eq!(net.nodes[&h].status(net.now).last_vip_drop, Some("expired"));
}

#[test]
fn unhealthy_holder_hands_over_and_preemption_returns_it() {
    let mut net = Net::new(&["v1", "v2", "v3"], &[("lb1", 200), ("lb2", 100)], &[]);
    net.view(&[("lb1", Some(200), true), ("lb2", Some(100), true)]);
    net.run_for(ms(2000));
    assert_eq!(
        net.holder().as_deref(),
        Some("lb1"),
        "the better one asks first"
    );
    net.input("lb1", Input::LocalHealth { lb_healthy: false });
    net.view(&[("lb1", Some(200), false), ("lb2", Some(100), true)]);
    net.run_for(ms(50));
    assert_eq!(net.holder().as_deref(), Some("lb2"));
    // lb1 recovers; lb2 hands back after `preempt_after`, not before.
    net.input("lb1", Input::LocalHealth { lb_healthy: true });
    net.view(&[("lb1", Some(200), true), ("lb2", Some(100), true)]);
    net.run_for(Timing::DEFAULT.preempt_after - ms(100));
    assert_eq!(net.holder().as_deref(), Some("lb2"));
    net.run_for(ms(300));
    assert_eq!(net.holder().as_deref(), Some("lb1"));
    assert_eq!(
        net.nodes["lb2"].status(net.now).last_vip_drop,
        Some("preempted")
    );
}

#[test]
fn a_load_balancer_restarted_at_once_still_moves_the_vip() {
    let mut net = Net::new(&["v1", "v2", "v3"], &[("lb1", 200), ("lb2", 100)], &[]);
    net.view(&[("lb1", Some(200), true), ("lb2", Some(100), true)]);
    net.input("lb1", Input::LocalHealth { lb_healthy: true });
    net.input("lb2", Input::LocalHealth { lb_healthy: true });
    net.run_for(ms(2000));
    assert_eq!(net.holder().as_deref(), Some("lb1"));
    // HAProxy dies and is restarted before anyone else could react: the
    // shell reports both, back to back.
    net.input("lb1", Input::LocalHealth { lb_healthy: false });
    net.input("lb1", Input::LocalHealth { lb_healthy: true });
    net.run_for(ms(100));
    assert_eq!(
        net.holder().as_deref(),
        Some("lb2"),
        "the VIP left the failed load balancer"
    );
    assert!(
        !net.nodes["lb1"].status(net.now).vip_candidate,
        "held down after the flap"
    );
    net.run_for(Timing::DEFAULT.lease);
    assert!(net.nodes["lb1"].status(net.now).vip_candidate);
    assert_eq!(net.holder().as_deref(), Some("lb2"), "no instant move back");
}

#[test]
fn spoofed_sender_is_ignored() {
    let mut net = Net::new(&["v1", "v2", "v3"], &[], &[]);
    net.run_for(ms(1000));
    let msg = PeerMsg::LeaseRequest(crate::wire::LeaseRequest {
        from: "x".into(),
        incarnation: 1,
        seq: 1,
        voters: lease::voters_digest(&names(&["v1", "v2", "v3"])),
        priority: 1,
    });
    let fx = net.nodes.get_mut("v1").unwrap().step(
        net.now,
        Input::Peer {
            from: "y".into(),
            msg: msg.clone(),
        },
    );
    assert!(fx.iter().all(|e| !matches!(e, Effect::Send { .. })));
    let fx = net.nodes.get_mut("v1").unwrap().step(
        net.now,
        Input::Peer {
            from: "x".into(),
            msg,
        },
    );
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Send { to, .. } if to == "x"))
    );
}

#[test]
fn bootstrap_lock_through_nodes() {
    let mut net = Net::new(&["a", "b", "c"], &[], &[]);
    for n in ["a", "b", "c"] {
        net.input(n, Input::WantInit);
    }
    net.run_for(ms(3000));
    let inits = net.init_jobs();
    assert_eq!(inits.len(), 1, "{inits:?}");
    let (winner, id) = inits[0].clone();
    assert_eq!(net.nodes[&winner].status(net.now).jobs_running, 1);
    net.input(
        &winner,
        Input::JobDone {
            id,
            outcome: JobOutcome::Init {
                ok: true,
                left_artifacts: false,
                error: None,
            },
        },
    );
    assert_eq!(net.nodes[&winner].status(net.now).jobs_running, 0);
    assert_eq!(
        net.published(&winner, keys::KUBE),
        ["initializing", "control-plane"]
    );
    net.run_for(ms(3000));
    for (n, node) in &net.nodes {
        let st = node.status(net.now);
        assert_eq!(st.init_node.as_deref(), Some(winner.as_str()), "{n}");
        assert_eq!(st.lock_voter, Some(VoterPhase::Ready));
        let want = if *n == winner {
            LockPhase::Initialized
        } else {
            LockPhase::Follower
        };
        assert_eq!(st.lock_phase, want, "{n}");
        assert_eq!(
            node.persisted().initialized.as_deref(),
            Some(winner.as_str())
        );
    }
}

#[test]
fn new_node_removes_a_stale_vip_first() {
    let (_, effects) = Node::new(
        NodeParams {
            name: "lb".into(),
            voters: names(&["v"]),
            timing: Timing::FAST,
            vip_priority: Some(1),
            incarnation: 1,
            persisted: None,
            cloud: None,
        },
        Time::ZERO,
    );
    assert_eq!(effects[0], Effect::RemoveVip);
}

/// The effects of one step with a failed `AddVip` fed back: the lease goes,
/// `vip=0` is the last word, another candidate takes over, and the faulty
/// node is out for `VIP_FAULT_LEASES` leases, then back.
#[test]
fn vip_fault_hands_over_and_stands_aside_for_a_while() {
    let mut net = Net::new(&["v1", "v2", "v3"], &[("lb1", 200), ("lb2", 100)], &[]);
    net.view(&[("lb1", Some(200), true), ("lb2", Some(100), true)]);
    net.run_for(ms(2000));
    assert_eq!(net.holder().as_deref(), Some("lb1"));
    let fx = net
        .nodes
        .get_mut("lb1")
        .unwrap()
        .step(net.now, Input::VipFault);
    let remove = fx.iter().position(|e| *e == Effect::RemoveVip);
    let vip_values: Vec<&str> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Publish { key, value } if *key == keys::VIP => Some(value.as_str()),
            _ => None,
        })
        .collect();
    assert!(remove.is_some(), "{fx:?}");
    assert_eq!(vip_values, ["0"], "{fx:?}");
    assert!(
        fx.iter().any(|e| matches!(
            e,
            Effect::Send {
                msg: PeerMsg::LeaseRelease(_),
                ..
            }
        )),
        "the lease is given back at once: {fx:?}"
    );
    net.apply("lb1", fx);
    let faulted = net.now;
    let st = net.nodes["lb1"].status(net.now);
    assert!(st.vip_fault && !st.vip_candidate && !st.holds_vip);
    net.run_for(ms(100));
    assert_eq!(net.holder().as_deref(), Some("lb2"));
    // Still out just before the back-off ends, whatever its health says.
    net.run_until(faulted + Timing::DEFAULT.lease * VIP_FAULT_LEASES - ms(10));
    assert!(!net.nodes["lb1"].status(net.now).vip_candidate);
    assert!(
        net.log
            .iter()
            .all(|(at, n, e)| !(*at > faulted && n == "lb1" && *e == Effect::AddVip)),
        "no AddVip on the faulty node during the back-off"
    );
    net.run_for(ms(20));
    let st = net.nodes["lb1"].status(net.now);
    assert!(!st.vip_fault && st.vip_candidate, "{st:?}");
    // And preemption brings the VIP back to the better candidate.
    net.run_for(Timing::DEFAULT.preempt_after + ms(500));
    assert_eq!(net.holder().as_deref(), Some("lb1"));
}

/// The fault back-off is ANDed with real health: its end does not make an
/// unhealthy load balancer a candidate (the old shell faked health `true`).
#[test]
fn vip_fault_end_does_not_override_bad_health() {
    let mut net = Net::new(&["v1", "v2", "v3"], &[("lb1", 200), ("lb2", 100)], &[]);
    net.view(&[("lb1", Some(200), true), ("lb2", Some(100), true)]);
    net.input("lb1", Input::LocalHealth { lb_healthy: true });
    net.run_for(ms(2000));
    net.input("lb1", Input::VipFault);
    net.input("lb1", Input::LocalHealth { lb_healthy: false });
    net.run_for(Timing::DEFAULT.lease * (VIP_FAULT_LEASES + 2));
    let st = net.nodes["lb1"].status(net.now);
    assert!(!st.vip_fault);
    assert!(!st.vip_candidate, "unhealthy stays out after the back-off");
    assert_eq!(net.holder().as_deref(), Some("lb2"));
    net.input("lb1", Input::LocalHealth { lb_healthy: true });
    net.run_for(Timing::DEFAULT.lease + ms(10));
    assert!(net.nodes["lb1"].status(net.now).vip_candidate);
}

/// A fault reported while not holding (e.g. a re-add after the watchdog)
/// keeps the node from asking for the lease for the back-off.
#[test]
fn vip_fault_on_a_standby_keeps_it_out() {
    let mut net = Net::new(&["v1", "v2", "v3"], &[("lb1", 200)], &[]);
    net.view(&[("lb1", Some(200), true)]);
    net.input("lb1", Input::VipFault);
    let t = net.now;
    net.run_for(Timing::DEFAULT.lease * VIP_FAULT_LEASES - ms(10));
    assert_eq!(net.holder(), None);
    assert!(net.vip_added_after(t).is_none());
    net.run_for(ms(2000));
    assert_eq!(net.holder().as_deref(), Some("lb1"));
}

/// `lb` and `drained` are the core's to publish, once per change.
#[test]
fn core_publishes_lb_and_drained_on_change() {
    let mut net = Net::new(&["v1"], &[("lb1", 1)], &[]);
    net.input("lb1", Input::LocalHealth { lb_healthy: false });
    net.input("lb1", Input::LocalHealth { lb_healthy: false });
    net.input("lb1", Input::LocalHealth { lb_healthy: true });
    assert_eq!(net.published("lb1", keys::LB), ["unhealthy", "healthy"]);
    net.input("lb1", Input::Drain(true));
    net.input("lb1", Input::Drain(true));
    net.input("lb1", Input::Drain(false));
    assert_eq!(net.published("lb1", keys::DRAINED), ["1", "0"]);
    // A node that never hears of HAProxy keeps the shell's start value.
    assert!(net.published("v1", keys::LB).is_empty());
}

#[test]
fn core_publishes_the_kubeadm_minor_on_change() {
    let mut net = Net::new(&["v1"], &[], &[]);
    for m in ["1.33", "1.33", "1.34", ""] {
        net.input("v1", Input::KubeadmMinor(m.into()));
    }
    assert_eq!(net.published("v1", keys::KUBEADM), ["1.33", "1.34", ""]);
}

/// A drained holder publishes `drained=1` and `vip=0` in one step, the
/// removal before the key that says it is gone.
#[test]
fn drain_publishes_drained_and_vip_after_removal() {
    let mut net = Net::new(&["v1", "v2", "v3"], &[("lb1", 200), ("lb2", 100)], &[]);
    net.view(&[("lb1", Some(200), true), ("lb2", Some(100), true)]);
    net.run_for(ms(2000));
    assert_eq!(net.holder().as_deref(), Some("lb1"));
    let fx = net
        .nodes
        .get_mut("lb1")
        .unwrap()
        .step(net.now, Input::Drain(true));
    let pos = |want: &Effect| fx.iter().position(|e| e == want);
    let removed = pos(&Effect::RemoveVip).expect("removed");
    let vip0 = pos(&Effect::Publish {
        key: keys::VIP,
        value: "0".into(),
    })
    .expect("vip=0");
    assert!(removed < vip0);
    assert!(
        pos(&Effect::Publish {
            key: keys::DRAINED,
            value: "1".into()
        })
        .is_some()
    );
}

/// A job result the node did not ask for, or one it already heard, is
/// ignored; a clean init failure publishes `kube=none` and a later retry is
/// a new job with a new id.
#[test]
fn job_results_match_their_job() {
    let mut net = Net::new(&["a"], &[], &[]);
    net.input("a", Input::WantInit);
    net.run_for(ms(2000));
    let jobs = net.init_jobs();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let (_, id) = jobs[0].clone();
    let clean = JobOutcome::Init {
        ok: false,
        left_artifacts: false,
        error: None,
    };
    // Unknown id: nothing happens.
    let fx = net.nodes.get_mut("a").unwrap().step(
        net.now,
        Input::JobDone {
            id: JobId(id.0 + 100),
            outcome: clean.clone(),
        },
    );
    assert!(
        fx.iter().all(|e| !matches!(e, Effect::Persist(_))),
        "{fx:?}"
    );
    assert_eq!(
        net.nodes["a"].status(net.now).lock_phase,
        LockPhase::Initializing
    );
    net.input(
        "a",
        Input::JobDone {
            id,
            outcome: clean.clone(),
        },
    );
    assert_eq!(
        net.nodes["a"].status(net.now).lock_phase,
        LockPhase::Waiting
    );
    assert_eq!(net.published("a", keys::KUBE), ["initializing", "none"]);
    // Heard already: a second report does not count again.
    net.input(
        "a",
        Input::JobDone {
            id,
            outcome: JobOutcome::Init {
                ok: true,
                left_artifacts: true,
                error: None,
            },
        },
    );
    assert_eq!(
        net.nodes["a"].status(net.now).lock_phase,
        LockPhase::Waiting
    );
    net.run_for(ms(5000));
    let jobs = net.init_jobs();
    assert_eq!(jobs.len(), 2, "retried: {jobs:?}");
    assert!(jobs[1].1 > id, "a new id: {jobs:?}");
}

/// An init that leaves files publishes `kube=failed`: other members see a
/// cluster-ish node and do not claim.
#[test]
fn dirty_init_failure_publishes_failed() {
    let mut net = Net::new(&["a"], &[], &[]);
    net.input("a", Input::WantInit);
    net.run_for(ms(2000));
    let (_, id) = net.init_jobs()[0].clone();
    net.input(
        "a",
        Input::JobDone {
            id,
            outcome: JobOutcome::Init {
                ok: false,
                left_artifacts: true,
                error: None,
            },
        },
    );
    assert_eq!(net.nodes["a"].status(net.now).lock_phase, LockPhase::Failed);
    assert_eq!(net.published("a", keys::KUBE), ["initializing", "failed"]);
    net.run_for(ms(5000));
    assert_eq!(net.init_jobs().len(), 1, "no second init after a dirty one");
}

/// The guide topology with the kubeadm driver on: gossip is rebuilt from
/// what each node published, jobs are answered after `job_ms`. cp-1's first
/// join fails. Returns the net and the (node, job, start, end) of each job.
fn guide_bootstrap(job_ms: u64) -> (Net, Vec<(String, Job, Time, Time)>) {
    let cps = ["cp-0", "cp-1", "cp-2"];
    let mut net = Net::new(&cps, &[], &["w-0", "w-1"]);
    for n in net.nodes.keys().cloned().collect::<Vec<_>>() {
        let f = crate::kube::KubeFacts {
            control_plane: n.starts_with("cp"),
            ready: Ok(()),
            admin_conf: false,
            kubelet_conf: false,
            cni: n == "cp-0",
        };
        net.input(&n, Input::KubeFacts(f));
    }
    let mut open: Vec<(String, JobId, Job, Time)> = Vec::new();
    let mut seen = 0;
    let mut history = Vec::new();
    let mut failed_once = false;
    for _ in 0..600 {
        // Gossip: everyone's latest `kube`.
        let infos: Vec<MemberInfo> = net
            .nodes
            .keys()
            .map(|n| {
                let kube = net.published(n, keys::KUBE).pop().unwrap_or("none".into());
                let roles = if n.starts_with("cp") {
                    "control-plane"
                } else {
                    "worker"
                };
                MemberInfo::from_kv(
                    n,
                    1,
                    "198.18.0.1:7946".parse().unwrap(),
                    true,
                    [(keys::ROLES, roles), (keys::KUBE, kube.as_str())],
                )
            })
            .collect();
        let view = MembershipView::from_incarnations(infos);
        for n in net.nodes.keys().cloned().collect::<Vec<_>>() {
            net.input(&n, Input::Membership(view.clone()));
        }
        let started: Vec<(String, JobId, Job)> = net.log[seen..]
            .iter()
            .filter_map(|(_, n, e)| match e {
                Effect::StartJob { id, job } => Some((n.clone(), *id, job.clone())),
                _ => None,
            })
            .collect();
        seen = net.log.len();
        for (n, id, job) in started {
            open.push((n, id, job, net.now));
        }
        net.run_for(ms(job_ms));
        for (n, id, job, since) in std::mem::take(&mut open) {
            let outcome = match &job {
                Job::RunInit | Job::CheckInit => JobOutcome::Init {
                    ok: true,
                    left_artifacts: true,
                    error: None,
                },
                Job::Join { .. } if n == "cp-1" && !failed_once => {
                    failed_once = true;
                    JobOutcome::Done {
                        error: Some("kubeadm join: etcd member add failed".into()),
                    }
                }
                _ => JobOutcome::Done { error: None },
            };
            history.push((n.clone(), job, since, net.now));
            net.input(&n, Input::JobDone { id, outcome });
        }
        let done = net
            .nodes
            .values()
            .all(|node| node.status(net.now).kube.phase == crate::kube::KubePhase::Joined);
        if done && open.is_empty() {
            break;
        }
    }
    (net, history)
}

#[test]
fn guide_cluster_bootstraps_init_once_control_planes_join_one_at_a_time() {
    let (net, history) = guide_bootstrap(50);
    let inits: Vec<_> = history.iter().filter(|h| h.1 == Job::RunInit).collect();
    assert_eq!(inits.len(), 1, "{history:?}");
    let init_node = inits[0].0.clone();
    for (name, node) in &net.nodes {
        let st = node.status(net.now);
        assert_eq!(
            st.kube.phase,
            crate::kube::KubePhase::Joined,
            "{name}: {st:?}"
        );
        assert_eq!(st.init_node.as_deref(), Some(init_node.as_str()), "{name}");
        let want = if name.starts_with("cp") {
            "control-plane"
        } else {
            "worker"
        };
        assert_eq!(net.published(name, keys::KUBE).last().unwrap(), want);
    }
    // Control-plane joins never overlap; a node joins once successfully.
    let cp_joins: Vec<_> = history
        .iter()
        .filter(|h| {
            matches!(
                h.1,
                Job::Join {
                    control_plane: true
                }
            )
        })
        .collect();
    for (i, a) in cp_joins.iter().enumerate() {
        for b in &cp_joins[i + 1..] {
            assert!(a.3 <= b.2 || b.3 <= a.2, "overlapping joins {a:?} {b:?}");
        }
    }
    assert_eq!(
        cp_joins.len(),
        3,
        "cp-1 twice (one failure), the other once"
    );
    // The failed join was reset before the retry.
    let cp1: Vec<&str> = history
        .iter()
        .filter(|h| h.0 == "cp-1")
        .map(|h| h.1.kind())
        .collect();
    assert_eq!(
        cp1,
        [
            "fetch-join-material",
            "join",
            "reset",
            "fetch-join-material",
            "join"
        ]
    );
    // The CNI manifest went on once, on the init node.
    let cni: Vec<_> = history.iter().filter(|h| h.1 == Job::ApplyCni).collect();
    assert_eq!(cni.len(), if init_node == "cp-0" { 1 } else { 0 });
}

#[test]
fn no_init_where_a_member_reports_a_cluster() {
    // A lone control plane that sees another member with a cluster never
    // runs init, even holding every vote.
    let mut net = Net::new(&["cp-9"], &[], &[]);
    let f = crate::kube::KubeFacts {
        control_plane: true,
        ready: Ok(()),
        admin_conf: false,
        kubelet_conf: false,
        cni: false,
    };
    let other = MemberInfo::from_kv(
        "cp-0",
        1,
        "198.18.0.1:7946".parse().unwrap(),
        true,
        [
            (keys::ROLES, "control-plane"),
            (keys::KUBE, "control-plane"),
        ],
    );
    net.input(
        "cp-9",
        Input::Membership(MembershipView::from_incarnations([other])),
    );
    net.input("cp-9", Input::KubeFacts(f));
    net.run_for(ms(5000));
    assert!(net.init_jobs().is_empty());
    // Without that member it does init (the same node, the same facts).
    let mut net = Net::new(&["cp-9"], &[], &[]);
    net.input(
        "cp-9",
        Input::KubeFacts(crate::kube::KubeFacts {
            control_plane: true,
            ready: Ok(()),
            admin_conf: false,
            kubelet_conf: false,
            cni: false,
        }),
    );
    net.run_for(ms(5000));
    assert_eq!(net.init_jobs().len(), 1);
}

mod cloud;

/// The init node dies mid-init for good. The others see it down: status
/// says so on every node, and nobody inits (gossip still shows it
/// `initializing`, its committed votes hold). After the operator's release
/// on one of them, exactly one other node runs init.
#[test]
fn an_operator_release_of_a_dead_init_node_lets_one_other_node_init() {
    let cps = ["a", "b", "c"];
    let mut net = Net::new(&cps, &[], &[]);
    for n in cps {
        net.input(n, Input::WantInit);
    }
    net.run_for(ms(3000));
    let jobs = net.init_jobs();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let x = jobs[0].0.clone();
    net.crash(&x);
    let view = |dead: &str| {
        MembershipView::from_incarnations(cps.iter().map(|n| {
            let kube = if *n == dead { "initializing" } else { "none" };
            MemberInfo::from_kv(
                n,
                1,
                "198.18.0.1:7946".parse().unwrap(),
                *n != dead,
                [(keys::ROLES, "control-plane"), (keys::KUBE, kube)],
            )
        }))
    };
    let others: Vec<&str> = cps.iter().copied().filter(|n| **n != x).collect();
    for n in &others {
        net.input(n, Input::Membership(view("nobody")));
        net.input(n, Input::Membership(view(&x)));
    }
    net.run_for(ms(20_000));
    assert_eq!(net.init_jobs().len(), 1, "nobody else inits by itself");
    for n in &others {
        let st = net.nodes[*n].status(net.now);
        assert_eq!(st.init_node_down.as_deref(), Some(x.as_str()), "{n}");
    }
    let y = others[0];
    // Refused while the holder looks alive to the node the command runs on.
    let mut alive = view("nobody");
    alive.members.get_mut(&x).unwrap().kube = "initializing".into();
    net.input(y, Input::Membership(alive));
    assert!(matches!(
        net.nodes[y].check_release(&x),
        Err(ReleaseError::Alive(_))
    ));
    net.input(y, Input::Membership(view(&x)));
    assert!(
        net.nodes[y].check_release(&x).is_err(),
        "just went down: not gone yet"
    );
    net.run_for(Timing::DEFAULT.lease * DOWN_FOR + ms(1000));
    assert_eq!(net.nodes[y].check_release(&x), Ok(()));
    net.input(y, Input::ReleaseInit { holder: x.clone() });
    net.run_for(ms(20_000));
    let st = net.nodes[y].status(net.now);
    let r = st.release.expect("release status");
    assert!(r.done, "{r:?}");
    let jobs = net.init_jobs();
    assert_eq!(jobs.len(), 2, "one more init: {jobs:?}");
    assert_ne!(jobs[1].0, x);
    for n in &others {
        let st = net.nodes[*n].status(net.now);
        assert_eq!(st.released, vec![x.clone()], "{n}");
        assert_eq!(st.init_node.as_deref(), Some(jobs[1].0.as_str()), "{n}");
        assert_eq!(st.init_node_down, None, "{n}");
    }
}

/// A holder gossip does not list (not heard of yet after a start, or
/// forgotten after the dead-node grace), with no sign of life in this run
/// (here: the agent restarted after the holder died), is gone only after
/// `FORGOTTEN_AFTER`.
#[test]
fn a_holder_gossip_does_not_list_is_gone_only_after_the_forgotten_period() {
    let cps = ["a", "b", "c"];
    let mut net = Net::new(&cps, &[], &[]);
    for n in cps {
        net.input(n, Input::WantInit);
    }
    net.run_for(ms(3000));
    let x = net.init_jobs()[0].0.clone();
    let y = cps.iter().copied().find(|n| *n != x).unwrap();
    net.crash(&x);
    net.start(y, None, 99, &cps);
    let without_x = MembershipView::from_incarnations(cps.iter().filter(|n| **n != x).map(|n| {
        MemberInfo::from_kv(
            n,
            1,
            "198.18.0.1:7946".parse().unwrap(),
            true,
            [(keys::ROLES, "control-plane")],
        )
    }));
    net.input(y, Input::Membership(without_x.clone()));
    net.run_for(ms(10_000));
    assert_eq!(
        net.nodes[y].check_release(&x),
        Err(ReleaseError::Alive(x.clone())),
        "unknown is not gone"
    );
    net.run_for(FORGOTTEN_AFTER);
    net.input(y, Input::Membership(without_x));
    assert_eq!(net.nodes[y].check_release(&x), Ok(()));
}
