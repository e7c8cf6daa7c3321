//! The soak's verdicts, computed after the run from what was recorded
//! (times in seconds from the start of the run): which failed client
//! requests a fault or a handover explains, how long each fault took to
//! recover from, and whether the VIP was back within the target.
//!
//! Pure functions over plain data, so the rules are unit-tested here.

use serde::Serialize;

/// One client request through the VIP.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Req {
    pub start: f64,
    pub end: f64,
    pub ok: bool,
}

/// A moment from which the system must recover: a fault injected or
/// undone (restart, thaw, heal).
#[derive(Clone, Debug, PartialEq)]
pub struct Phase {
    pub t: f64,
    /// The fault this phase belongs to (index into the fault list).
    pub fault: usize,
    /// `inject` or `restore`.
    pub what: &'static str,
    /// Seconds this phase may take beyond [`Rules::recovery`]: a control
    /// plane cut off or healed may be (or disturb) etcd's leader, and every
    /// apiserver's `/readyz` fails until etcd has elected one
    /// ([`ETCD_ELECTION`]).
    pub slack: f64,
}

/// etcd's leader election after its leader vanished or a member rejoined:
/// its `--election-timeout` (1 s, the default kubeadm keeps) for followers
/// to notice, plus up to one more randomized timeout for the vote.
pub const ETCD_ELECTION: f64 = 2.0;

/// What the recovery rules need to know.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Rules {
    /// After a phase starts, the VIP must have one holder and the client
    /// must be answered again within this (seconds).
    pub recovery: f64,
    /// A failed request that starts this close to a VIP holder change
    /// (seconds, either side) is a handover's (the agents move the VIP by
    /// themselves, e.g. back to a better node that returned).
    pub handover: f64,
}

/// The verdict on one phase.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PhaseResult {
    pub t_s: f64,
    pub fault: usize,
    pub what: String,
    /// Phase start -> the VIP has one holder and the client is answered
    /// again (end of the first success after the last failure that this
    /// phase explains); 0 when nothing failed and the VIP never went.
    pub recovery_ms: f64,
    /// Failed requests this phase explains.
    pub failed: usize,
    /// Within the target: one holder at `t + recovery` (when the phase
    /// lasted that long) and recovered in time.
    pub within_target: bool,
}

/// The client's record, judged.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ClientVerdict {
    pub requests: usize,
    pub ok: usize,
    pub failed: usize,
    /// Failed requests in flight during `[t, t + recovery]` of a phase.
    pub failed_in_fault_windows: usize,
    /// Failed requests near a VIP holder change outside those windows.
    pub failed_in_handovers: usize,
    /// Failed requests nothing explains: (start, end) of the first 20.
    pub unexplained: Vec<(f64, f64)>,
    pub unexplained_count: usize,
    /// Longest stretch without a successful request (seconds) and where
    /// it started.
    pub longest_outage_s: f64,
    pub longest_outage_at_s: f64,
}

/// Times (seconds) at which the set of VIP holders changed between two
/// non-empty sets, or became empty, or became non-empty: every moment the
/// VIP moved. `samples` is (t, holder bit mask) in time order.
pub fn holder_changes(samples: &[(f64, u64)]) -> Vec<f64> {
    let mut out = Vec::new();
    let mut last: Option<u64> = None;
    for &(t, m) in samples {
        if last.is_some_and(|l| l != m) {
            out.push(t);
        }
        last = Some(m);
    }
    out
}

/// The request was in flight at some moment of `[a, b]` (a request that
/// started just before a fault can be the one the fault breaks).
fn overlaps(q: &Req, a: f64, b: f64) -> bool {
    q.end >= a && q.start <= b
}

/// Judge the client's requests: each failed request must have been in
/// flight during a phase's recovery window or near a holder change.
pub fn judge_client(reqs: &[Req], phases: &[Phase], changes: &[f64], r: &Rules) -> ClientVerdict {
    let mut v = ClientVerdict {
        requests: reqs.len(),
        ..Default::default()
    };
    for q in reqs {
        if q.ok {
            v.ok += 1;
            continue;
        }
        v.failed += 1;
        if phases
            .iter()
            .any(|p| overlaps(q, p.t, p.t + r.recovery + p.slack))
        {
            v.failed_in_fault_windows += 1;
        } else if changes
            .iter()
            .any(|c| overlaps(q, c - r.handover, c + r.handover))
        {
            v.failed_in_handovers += 1;
        } else {
            v.unexplained_count += 1;
            if v.unexplained.len() < 20 {
                v.unexplained.push((q.start, q.end));
            }
        }
    }
    let (gap, at) = longest_outage(reqs);
    v.longest_outage_s = gap;
    v.longest_outage_at_s = at;
    v
}

/// Longest time between the ends of two successive successful requests
/// (from the first request on), and where it began.
pub fn longest_outage(reqs: &[Req]) -> (f64, f64) {
    let mut ends: Vec<f64> = reqs.iter().filter(|q| q.ok).map(|q| q.end).collect();
    ends.sort_by(f64::total_cmp);
    let Some(first) = reqs.iter().map(|q| q.start).reduce(f64::min) else {
        return (0.0, 0.0);
    };
    let last = reqs.iter().map(|q| q.end).fold(first, f64::max);
    let mut prev = first;
    let mut best = (0.0, first);
    for e in ends.into_iter().chain(std::iter::once(last)) {
        if e - prev > best.0 {
            best = (e - prev, prev);
        }
        prev = prev.max(e);
    }
    best
}

/// Judge every phase: how long until the VIP had one holder and the client
/// was answered again, and whether that was within the target. `holders`
/// is (t, number of holders) per sample, in time order; `end` is when
/// recording stopped.
pub fn judge_phases(
    phases: &[Phase],
    reqs: &[Req],
    holders: &[(f64, usize)],
    end: f64,
    r: &Rules,
) -> Vec<PhaseResult> {
    let mut out = Vec::new();
    for (i, p) in phases.iter().enumerate() {
        let next = phases.get(i + 1).map(|n| n.t).unwrap_or(end);
        let limit = r.recovery + p.slack;
        let horizon = (p.t + limit).min(next);
        // Failed requests this phase explains: in flight during
        // [t, t + recovery], before the next phase.
        let failed: Vec<&Req> = reqs
            .iter()
            .filter(|q| !q.ok && overlaps(q, p.t, horizon))
            .collect();
        let client_back = match failed.iter().map(|q| q.end).reduce(f64::max) {
            None => p.t,
            Some(last_fail) => reqs
                .iter()
                .filter(|q| q.ok && q.start >= last_fail)
                .map(|q| q.end)
                .reduce(f64::min)
                .unwrap_or(f64::INFINITY),
        };
        // The VIP: the first sample with one holder after the last sample
        // without one in [t, horizon].
        let last_none = holders
            .iter()
            .filter(|(t, n)| *t >= p.t && *t <= horizon && *n == 0)
            .map(|(t, _)| *t)
            .reduce(f64::max);
        let vip_back = match last_none {
            None => p.t,
            Some(tn) => holders
                .iter()
                .find(|(t, n)| *t > tn && *n == 1)
                .map(|(t, _)| *t)
                .unwrap_or(f64::INFINITY),
        };
        let back = client_back.max(vip_back);
        let recovery = back - p.t;
        // One holder at the end of the window, if the phase lasted that long.
        let holder_at_target = if p.t + limit <= next {
            holders
                .iter()
                .find(|(t, _)| *t >= p.t + limit)
                .is_none_or(|(_, n)| *n == 1)
        } else {
            true
        };
        out.push(PhaseResult {
            t_s: p.t,
            fault: p.fault,
            what: p.what.to_string(),
            recovery_ms: if recovery.is_finite() {
                recovery * 1000.0
            } else {
                -1.0
            },
            failed: failed.len(),
            within_target: recovery.is_finite() && recovery <= limit && holder_at_target,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Rules = Rules {
        recovery: 2.8,
        handover: 0.6,
    };

    fn reqs(spec: &[(f64, bool)]) -> Vec<Req> {
        spec.iter()
            .map(|&(s, ok)| Req {
                start: s,
                end: s + if ok { 0.01 } else { 0.5 },
                ok,
            })
            .collect()
    }

    fn phase(t: f64, fault: usize, what: &'static str) -> Phase {
        Phase {
            t,
            fault,
            what,
            slack: 0.0,
        }
    }

    #[test]
    fn failures_inside_a_fault_window_are_explained_and_others_are_not() {
        let q = reqs(&[
            (9.0, true),
            (10.2, false),
            (12.7, false),
            (13.0, true),
            // 3.5 s after the fault: outside its 2.8 s window.
            (13.5, false),
            (14.0, true),
            // Near a holder change at 20.0.
            (19.8, false),
            (20.5, true),
            // In flight when the fault at 30.0 hit (started before it).
            (29.9, false),
            (31.0, true),
        ]);
        let ph = [phase(10.0, 0, "inject"), phase(30.0, 1, "inject")];
        let v = judge_client(&q, &ph, &[20.0], &R);
        assert_eq!(v.failed, 5);
        assert_eq!(v.failed_in_fault_windows, 3);
        assert_eq!(v.failed_in_handovers, 1);
        assert_eq!(v.unexplained_count, 1);
        assert_eq!(v.unexplained, vec![(13.5, 14.0)]);
        assert_eq!(v.ok, 5);
    }

    #[test]
    fn longest_outage_is_between_successes() {
        let q = reqs(&[(0.0, true), (1.0, false), (3.0, true), (3.1, true)]);
        let (gap, at) = longest_outage(&q);
        assert!((gap - 3.0).abs() < 1e-9, "{gap}");
        assert!((at - 0.01).abs() < 1e-9, "{at}");
        assert_eq!(longest_outage(&[]), (0.0, 0.0));
    }

    /// A cut control plane's phase may take etcd's election longer: the
    /// client failing for 4.5 s is within 2.8 s + `ETCD_ELECTION`, not 2.8 s.
    #[test]
    fn a_phase_with_slack_may_take_the_etcd_election_longer() {
        let holders: Vec<(f64, usize)> = (0..1000).map(|i| (8.0 + i as f64 * 0.01, 1)).collect();
        let q = reqs(&[(10.1, false), (12.0, false), (13.9, false), (14.5, true)]);
        let mut p = phase(10.0, 0, "inject");
        let plain = judge_phases(std::slice::from_ref(&p), &q, &holders, 17.0, &R);
        assert!(!plain[0].within_target, "{:?}", plain[0]);
        p.slack = ETCD_ELECTION;
        let slack = judge_phases(std::slice::from_ref(&p), &q, &holders, 17.0, &R);
        assert!(slack[0].within_target, "{:?}", slack[0]);
        assert_eq!(slack[0].failed, 3);
        let v = judge_client(&q, &[p], &[], &R);
        assert_eq!(v.unexplained_count, 0, "{v:?}");
    }

    #[test]
    fn recovery_is_the_later_of_vip_back_and_client_back() {
        // Fault at 10: no holder from 10.1 to 10.7, client fails until 10.9.
        let holders: Vec<(f64, usize)> = (0..400)
            .map(|i| {
                let t = 8.0 + i as f64 * 0.01;
                (t, usize::from(!(10.1..10.7).contains(&t)))
            })
            .collect();
        let q = reqs(&[(9.9, true), (10.2, false), (10.4, false), (10.95, true)]);
        let ph = [phase(10.0, 0, "inject"), phase(13.0, 0, "restore")];
        let res = judge_phases(&ph, &q, &holders, 14.0, &R);
        assert_eq!(res.len(), 2);
        // Client back at the end of the success that started 10.95.
        assert!((res[0].recovery_ms - 960.0).abs() < 1.0, "{:?}", res[0]);
        assert_eq!(res[0].failed, 2);
        assert!(res[0].within_target);
        assert_eq!(res[1].recovery_ms, 0.0);
        assert!(res[1].within_target);
    }

    #[test]
    fn no_holder_at_the_target_is_over_target() {
        // Nobody holds from 10.0 on.
        let holders: Vec<(f64, usize)> = (0..800)
            .map(|i| {
                let t = 8.0 + i as f64 * 0.01;
                (t, usize::from(t < 10.0))
            })
            .collect();
        let res = judge_phases(&[phase(10.0, 0, "inject")], &[], &holders, 16.0, &R);
        assert!(!res[0].within_target, "{:?}", res[0]);
        assert_eq!(res[0].recovery_ms, -1.0);
    }

    #[test]
    fn a_client_that_never_comes_back_is_over_target() {
        let q = reqs(&[(9.0, true), (10.5, false), (11.0, false)]);
        let holders = vec![(9.0, 1), (12.0, 1), (14.0, 1)];
        let res = judge_phases(&[phase(10.0, 0, "inject")], &q, &holders, 15.0, &R);
        assert!(!res[0].within_target);
    }

    #[test]
    fn holder_changes_include_losing_and_gaining_the_vip() {
        let s = [(0.0, 1), (1.0, 1), (2.0, 0), (3.0, 2), (4.0, 2), (5.0, 1)];
        assert_eq!(holder_changes(&s), vec![2.0, 3.0, 5.0]);
        assert!(holder_changes(&[]).is_empty());
    }
}
