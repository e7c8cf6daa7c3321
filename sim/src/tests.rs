use std::time::Duration;

use kubeha_core::timing::{Profile, Timing};

use super::*;

fn seeds_from_env(default: u64) -> u64 {
    std::env::var("KUBEHA_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn random_seeds_keep_s1_s2_and_liveness() {
    let n = seeds_from_env(500);
    let outcomes = run_many(0, n, 2, None, Opts::new);
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.ok())
        .map(|o| {
            format!(
                "seed {} ({}): {:?} {:?}; replay: kubeha-sim --seeds 1 --first-seed {} --profile {} -v",
                o.seed,
                o.topology,
                o.violations,
                o.liveness,
                o.seed,
                profile_for(o.seed, None).as_str()
            )
        })
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    // The runs did exercise the protocol.
    assert!(outcomes.iter().map(|o| o.inits).sum::<usize>() >= n as usize);
}

#[test]
fn same_seed_same_trace() {
    let opts = Opts {
        trace: true,
        ..Opts::new(Profile::Fast)
    };
    let a = run_seed(1234, &opts);
    let b = run_seed(1234, &opts);
    assert!(a.trace.len() > 100);
    assert_eq!(a.trace, b.trace);
    let c = run_seed(1235, &opts);
    assert_ne!(a.trace, c.trace);
}

/// Seed 7226 (default profile): a holder's agent and guardian die (its
/// kernel keeps the VIP for its lifetime), a successor takes the lease, and
/// the dead node's agent restarts 6 ms before the successor's address is up:
/// for 3 ms both kernels have it while the new run removes its
/// predecessor's. That is the kernel-lifetime case (bounded), not a holder
/// that can act: the new run never added it.
#[test]
fn a_restart_removing_its_dead_run_s_vip_is_the_kernel_lifetime_case() {
    let o = run_seed(7226, &Opts::new(Profile::Default));
    assert!(o.violations.is_empty(), "{:?}", o.violations);
    let traced = run_seed(
        7226,
        &Opts {
            trace: true,
            ..Opts::new(Profile::Default)
        },
    );
    let t = traced.trace.join("\n");
    assert!(
        t.contains("(kernel lifetime case)"),
        "the overlap no longer happens in this seed"
    );
}

#[test]
fn checker_catches_a_holder_that_ignores_expiry() {
    // Random chaos finds it ...
    let outcomes = run_many(0, 200, 2, None, |p| Opts {
        mutation: Some(Mutation::IgnoreExpiry),
        ..Opts::new(p)
    });
    let s1 = outcomes
        .iter()
        .filter(|o| o.violations.iter().any(|v| v.starts_with("S1")))
        .count();
    assert!(s1 > 0, "no S1 violation found with the mutation");
    // ... and so does the obvious script, while the real rule passes it.
    for mutation in [Some(Mutation::IgnoreExpiry), None] {
        let opts = Opts {
            mutation,
            ..Opts::new(Profile::Default)
        };
        let mut w = World::quiet(7, &opts, Topology::Guide);
        w.run_until(Duration::from_secs(3));
        let h = w.vip_holders()[0];
        w.act(Action::Isolate { node: h });
        w.run_until(Duration::from_secs(5));
        let s1 = w.violations().iter().any(|v| v.starts_with("S1"));
        assert_eq!(s1, mutation.is_some(), "{mutation:?}: {:?}", w.violations());
        assert!(
            w.vip_holders().iter().any(|&n| n != h),
            "a new holder took over"
        );
    }
}

/// A quiet guide cluster whose holder gets `act` at a random phase of its
/// renewal period, 3 s in; runs 15 s more. The S1 violations, and how long
/// after the action another node held the VIP.
fn fence_case(
    profile: Profile,
    mutation: Option<Mutation>,
    phase_seed: u64,
    act: impl Fn(usize) -> Action,
) -> (Vec<String>, Option<Duration>) {
    let opts = Opts {
        mutation,
        ..Opts::new(profile)
    };
    let mut w = World::quiet(11, &opts, Topology::Guide);
    let renew = profile.timing().renew_every;
    w.run_until(Duration::from_secs(3) + renew * (phase_seed % 8) as u32 / 8);
    let h = w.vip_holders()[0];
    let t0 = w.now();
    w.act(act(h));
    let moved = w.run_until_true(t0 + Duration::from_secs(5), |w| {
        w.vip_holders().iter().any(|&n| n != h)
    });
    let after = moved.then(|| w.now() - t0);
    w.run_until(t0 + Duration::from_secs(15));
    let s1 = w
        .violations()
        .iter()
        .filter(|v| v.starts_with("S1") || v.starts_with("fence"))
        .cloned()
        .collect();
    (s1, after)
}

type ActFn = Box<dyn Fn(usize) -> Action>;

fn freeze_agent(dur: Duration) -> impl Fn(usize) -> Action {
    move |node| Action::Pause { node, dur }
}

#[test]
fn a_frozen_agent_is_fenced_by_its_guardian() {
    // The agent alone frozen (SIGSTOP, VM steal): its kernel keeps the VIP.
    // The guardian removes it at the lease deadline; without it (the keeper
    // of old, acting only on death) a successor and the frozen node answer
    // together. A pause within the guard breaks nothing either way.
    let guard = Timing::DEFAULT.actuation_guard;
    for profile in [Profile::Default, Profile::Fast] {
        for phase in 0..4 {
            for secs in [1, 3, 10] {
                let dur = Duration::from_secs(secs);
                let (v, moved) = fence_case(profile, None, phase, freeze_agent(dur));
                assert!(v.is_empty(), "{profile:?} {secs} s: {v:?}");
                assert!(moved.is_some(), "{profile:?} {secs} s: nobody took over");
                let (v, _) = fence_case(profile, Some(Mutation::NoFence), phase, freeze_agent(dur));
                assert!(
                    !v.is_empty(),
                    "{profile:?} {secs} s without the fence: no violation"
                );
            }
            let (v, _) = fence_case(
                profile,
                Some(Mutation::NoFence),
                phase,
                freeze_agent(guard / 4),
            );
            assert!(v.is_empty(), "{profile:?} short pause: {v:?}");
        }
    }
}

#[test]
fn a_frozen_guardian_alone_changes_nothing() {
    for phase in 0..4 {
        let (v, moved) = fence_case(Profile::Default, None, phase, |node| {
            Action::PauseGuardian {
                node,
                dur: Duration::from_secs(3),
            }
        });
        assert!(v.is_empty() && moved.is_none(), "{v:?} {moved:?}");
    }
}

#[test]
fn a_frozen_or_dead_agent_and_guardian_overlap_only_within_the_kernel_bound() {
    // Nothing of kubeha runs on the holder (a cgroup freeze; kill -9 of the
    // process group): only the VIP's kernel lifetime removes it. The
    // overlap with the successor stays within the documented bound; without
    // the lifetime it lasts as long as the freeze, or for ever.
    for profile in [Profile::Default, Profile::Fast] {
        for phase in 0..4 {
            let cases: [(&str, ActFn); 2] = [
                (
                    "freeze",
                    Box::new(|node| Action::PauseAll {
                        node,
                        dur: Duration::from_secs(3),
                    }),
                ),
                ("kill", Box::new(|node| Action::KillAll { node })),
            ];
            for (what, act) in &cases {
                let (v, moved) = fence_case(profile, None, phase, act);
                assert!(v.is_empty(), "{profile:?} {what}: {v:?}");
                assert!(moved.is_some(), "{profile:?} {what}: nobody took over");
                let (v, _) = fence_case(profile, Some(Mutation::NoLifetime), phase, act);
                assert!(
                    v.iter().any(|v| v.contains("frozen or dead holder")),
                    "{profile:?} {what} without the lifetime: {v:?}"
                );
            }
        }
    }
}

#[test]
fn a_frozen_vm_answers_nothing_and_is_fenced_when_it_resumes() {
    // The whole VM frozen: its kernel answers nothing meanwhile, so the
    // successor is the only holder that answers. On resume the guardian
    // (CLOCK_BOOTTIME has advanced) removes the VIP before anything else of
    // the node runs; without the fence the agent's own first step does, too
    // late: the resumed kernel answers for a moment beside the successor.
    for profile in [Profile::Default, Profile::Fast] {
        for phase in 0..4 {
            let act = |node| Action::FreezeVm {
                node,
                dur: Duration::from_secs(3),
            };
            let (v, moved) = fence_case(profile, None, phase, act);
            assert!(v.is_empty(), "{profile:?}: {v:?}");
            assert!(moved.is_some(), "{profile:?}: nobody took over");
            let (v, _) = fence_case(profile, Some(Mutation::NoFence), phase, act);
            assert!(!v.is_empty(), "{profile:?} without the fence: no violation");
        }
    }
}

#[test]
fn a_killed_agent_s_guardian_releases_its_lease_at_once() {
    // kill -9 of the agent alone: the guardian removes the VIP and releases
    // the dead incarnation's lease, so a standby holds within a few round
    // trips instead of after the grants ran out (at least L - renew_every).
    for profile in [Profile::Default, Profile::Fast] {
        let t = profile.timing();
        for phase in 0..8 {
            let kill = |node| Action::Crash {
                node,
                power_off: false,
            };
            let (v, fast) = fence_case(profile, None, phase, kill);
            let (v2, slow) = fence_case(profile, Some(Mutation::NoFence), phase, kill);
            assert!(v.is_empty() && v2.is_empty(), "{v:?} {v2:?}");
            let (fast, slow) = (fast.unwrap(), slow.unwrap());
            assert!(fast < t.lease / 4, "{profile:?}: failover after {fast:?}");
            assert!(
                slow >= t.lease - t.renew_every,
                "{profile:?}: {slow:?} without the release"
            );
        }
    }
}

/// Wipe the state of every committed voter but the init node right after
/// `kubeadm init` starts, with gossip blind to it. Returns the S2
/// violations.
fn wipe_committed_voters(seed: u64, respect: bool) -> (Vec<String>, usize) {
    let opts = Opts {
        respect_amnesia: respect,
        ..Opts::new(Profile::Fast)
    };
    let mut w = World::quiet(seed, &opts, Topology::Compact5);
    w.blind_gossip();
    w.run_until_true(Duration::from_secs(5), |w| !w.init_runs().is_empty());
    let x = w.init_runs()[0].node;
    let victims: Vec<usize> = w
        .committed_voters()
        .into_iter()
        .filter(|&v| v != x)
        .collect();
    for &v in &victims {
        w.act(Action::Crash {
            node: v,
            power_off: true,
        });
    }
    for &v in &victims {
        w.act(Action::Restart {
            node: v,
            wipe: true,
        });
    }
    w.run_until(w.now() + Duration::from_secs(5));
    let s2 = w
        .violations()
        .iter()
        .filter(|v| v.starts_with("S2"))
        .cloned()
        .collect();
    (s2, victims.len())
}

#[test]
fn amnesia_assumption_what_breaks_without_it() {
    let mut broken = 0;
    for seed in 0..12 {
        let (s2, victims) = wipe_committed_voters(seed, true);
        assert!(s2.is_empty(), "seed {seed}, assumption respected: {s2:?}");
        assert!(
            victims >= 2,
            "seed {seed}: the init node needs 3 of 5 votes"
        );
        let (s2, _) = wipe_committed_voters(seed, false);
        if !s2.is_empty() {
            broken += 1;
        }
    }
    eprintln!("second init in {broken} of 12 seeds without the assumption");
    // Two or more voters losing their votes at once can elect a second
    // init node: the assumption is needed.
    assert!(broken > 0, "no second init without the assumption");
}

#[test]
fn checker_catches_lost_fsync() {
    // The shell that never writes the state file: every restart is an
    // undetected amnesia, of any number of voters at once.
    let opts = Opts {
        mutation: Some(Mutation::DropPersist),
        ..Opts::new(Profile::Fast)
    };
    let mut broken = 0;
    for seed in 0..12 {
        let mut w = World::quiet(seed, &opts, Topology::Compact5);
        w.blind_gossip();
        w.run_until_true(Duration::from_secs(5), |w| !w.init_runs().is_empty());
        let x = w.init_runs()[0].node;
        let victims: Vec<usize> = w
            .committed_voters()
            .into_iter()
            .filter(|&v| v != x)
            .collect();
        for &v in &victims {
            w.act(Action::Crash {
                node: v,
                power_off: true,
            });
            w.act(Action::Restart {
                node: v,
                wipe: false,
            });
        }
        w.run_until(w.now() + Duration::from_secs(5));
        if w.violations().iter().any(|v| v.starts_with("S2")) {
            broken += 1;
        }
    }
    eprintln!("second init in {broken} of 12 seeds with lost writes");
    assert!(broken > 0, "lost writes went unnoticed");
}

/// Run `trials` bench trials of each case on `topology`; the failover
/// figure `pick` chooses from (median, p95, max) stays within its bound.
fn assert_bench_within(
    topology: Topology,
    trials: u64,
    pick: fn((Duration, Duration, Duration)) -> Duration,
    cases: &[(Profile, BenchKind, u64)],
) {
    for &(p, kind, max_ms) in cases {
        let (fail, _gap, problems) = bench(p, topology, kind, trials, 1);
        assert!(problems.is_empty(), "{p:?} {kind:?}: {problems:?}");
        let got = pick(percentiles(fail).unwrap());
        assert!(
            got <= Duration::from_millis(max_ms),
            "{p:?} {kind:?} on {topology:?}: {got:?} > {max_ms} ms"
        );
    }
}

#[test]
fn bench_figures_are_within_targets() {
    let median = |(m, _, _): (Duration, Duration, Duration)| m;
    assert_bench_within(
        Topology::Guide,
        20,
        median,
        &[
            (Profile::Default, BenchKind::Crash, 1000),
            (Profile::Default, BenchKind::Partition, 1000),
            (Profile::Fast, BenchKind::Crash, 300),
            (Profile::Default, BenchKind::Drain, 100),
            (Profile::Fast, BenchKind::Drain, 100),
        ],
    );
}

/// Compact clusters: every candidate is also a voter and its own vote comes
/// back instantly. Two standbys must not hold one vote each and refuse each
/// other (they did, for seconds, before the outranked one stepped aside).
#[test]
fn compact_standbys_do_not_duel() {
    let p95 = |(_, p, _): (Duration, Duration, Duration)| p;
    assert_bench_within(
        Topology::Compact3,
        60,
        p95,
        &[
            (Profile::Default, BenchKind::Crash, 1500),
            (Profile::Default, BenchKind::Partition, 1500),
            (Profile::Fast, BenchKind::Crash, 450),
            (Profile::Fast, BenchKind::Partition, 450),
        ],
    );
}

/// A better candidate preempts the holder and leaves again soon after (a
/// drain, a flapping node). The node it preempted stays out only until the
/// successor holds, so it follows at handover speed, not after its `2L`.
#[test]
fn a_preempted_holder_follows_a_successor_that_leaves_at_once() {
    let t = Timing::DEFAULT;
    for seed in 0..8 {
        let mut w = World::quiet(seed, &Opts::new(Profile::Default), Topology::Guide);
        w.run_until(Duration::from_secs(3));
        let h = w.vip_holders()[0];
        let b = w.node("lb-0") + w.node("lb-1") - h;
        // `b` comes back with a better priority and takes the VIP over.
        w.act(Action::Crash {
            node: b,
            power_off: false,
        });
        w.set_priority(b, 150);
        w.act(Action::Restart {
            node: b,
            wipe: false,
        });
        let limit = w.now() + t.preempt_after + Duration::from_secs(3);
        let preempted = w.run_until_true(limit, |w| w.vip_holders() == [b]);
        assert!(preempted, "seed {seed}: {} preempts", w.name(b));
        // It leaves a moment later, well inside the old holder's stay-out.
        w.run_until(w.now() + t.lease / 2);
        w.act(Action::Drain { node: b, on: true });
        let drained = w.now();
        let back = w.run_until_true(drained + t.lease * 3, |w| w.vip_holders() == [h]);
        let took = w.now() - drained;
        assert!(back, "seed {seed}: no holder after the drain");
        assert!(
            took <= Duration::from_millis(100),
            "seed {seed}: {} took the VIP back {took:?} after the drain",
            w.name(h)
        );
        assert!(
            w.violations().is_empty(),
            "seed {seed}: {:?}",
            w.violations()
        );
    }
}

/// A guide cluster with a cloud VIP (world/cloud.rs) in which `bad`'s
/// assignment fails in `mode`: the lease ends on the other lb, the cloud
/// routes the IP there, S1 holds throughout. Without the core's cloud guard
/// the lease stays on the broken node.
fn cloud_case(seed: u64, mode: CloudMode, guard: bool) -> (World, usize, usize) {
    let opts = Opts {
        mutation: (!guard).then_some(Mutation::NoCloudGuard),
        ..Opts::new(Profile::Default)
    };
    let mut w = World::quiet(seed, &opts, Topology::Guide);
    let (bad, good) = (w.node("lb-0"), w.node("lb-1"));
    // The broken node is the better candidate, so it takes the lease first.
    w.set_priority(bad, 200);
    w.set_priority(good, 100);
    let mut modes = vec![CloudMode::Works; 7];
    modes[bad] = mode;
    w.set_cloud(modes, Duration::from_secs(4), Duration::from_millis(500));
    (w, bad, good)
}

#[test]
fn a_holder_whose_cloud_assignment_fails_hands_the_lease_to_one_that_works() {
    for (seed, mode) in [
        (1, CloudMode::Permanent),
        (2, CloudMode::Transient),
        (3, CloudMode::Permanent),
        (4, CloudMode::Transient),
    ] {
        let (mut w, bad, good) = cloud_case(seed, mode, true);
        let first = w.hold_first(bad, good, Duration::from_secs(2));
        assert!(first, "seed {seed}: the better one holds first");
        let moved = w.run_until_true(Duration::from_secs(10), |w| {
            w.vip_holders() == [good] && w.cloud_assigned_to() == Some(good)
        });
        assert!(moved, "seed {seed} {mode:?}: holders {:?}", w.vip_holders());
        // It stays there: the broken node, back from standing aside, asks
        // with priority 0 and does not preempt.
        w.run_until(w.now() + Duration::from_secs(30));
        assert_eq!(w.vip_holders(), [good], "seed {seed} {mode:?}");
        assert_eq!(w.cloud_assigned_to(), Some(good));
        assert!(
            w.violations().is_empty(),
            "seed {seed}: {:?}",
            w.violations()
        );
    }
}

#[test]
fn without_the_cloud_guard_a_failing_holder_keeps_the_lease() {
    let (mut w, bad, good) = cloud_case(1, CloudMode::Transient, false);
    assert!(w.hold_first(bad, good, Duration::from_secs(2)));
    w.run_until(Duration::from_secs(30));
    assert_eq!(w.vip_holders(), [bad]);
    assert_ne!(w.cloud_assigned_to(), Some(good));
    // And random chaos with cloud runs finds it too, while the real rule
    // passes the same seeds (`random_seeds_keep_s1_s2_and_liveness`).
    let outcomes = run_many(0, 200, 2, None, |p| Opts {
        mutation: Some(Mutation::NoCloudGuard),
        ..Opts::new(p)
    });
    let caught = outcomes
        .iter()
        .filter(|o| o.liveness.iter().any(|l| l.starts_with("cloud:")))
        .count();
    assert!(caught > 0, "no cloud liveness failure without the guard");
}

/// `kubeha-sim bench --cloud` figures stay within their bounds: a crash
/// costs the lease failover plus the action; a failing holder gives the IP
/// up within `assign_timeout` (permanent: at once) plus a handover and the
/// standby's action.
#[test]
fn cloud_bench_figures_are_within_their_bounds() {
    let t = Timing::DEFAULT;
    let timeout = Duration::from_secs(60);
    let handover = t.lease * 2 + Duration::from_millis(100);
    for action in [Duration::ZERO, Duration::from_secs(11)] {
        for (kind, bound) in [
            (CloudBench::Crash, t.lease + Duration::from_millis(100)),
            (CloudBench::Failing(CloudMode::Permanent), handover),
            (
                CloudBench::Failing(CloudMode::Transient),
                timeout + handover,
            ),
        ] {
            for seed in 1..11 {
                let d = World::cloud_bench(seed, Profile::Default, kind, action, timeout)
                    .unwrap_or_else(|e| panic!("{kind:?} {action:?} seed {seed}: {e}"));
                assert!(
                    d <= bound + action,
                    "{kind:?} {action:?} seed {seed}: {d:?} > {:?}",
                    bound + action
                );
                assert!(
                    d >= action,
                    "{kind:?} seed {seed}: {d:?} shorter than the action"
                );
            }
        }
    }
}

/// The init node is powered off for good while `kubeadm init` runs. Nobody
/// else inits; the operator's release on another control plane (refused
/// there while the holder is up) lets exactly one other node init.
#[test]
fn a_released_dead_init_node_lets_exactly_one_other_node_init() {
    for seed in 0..8 {
        let opts = Opts {
            trace: true,
            ..Opts::new(Profile::Fast)
        };
        let mut w = World::quiet(seed, &opts, Topology::Guide);
        assert!(w.run_until_true(Duration::from_secs(5), |w| !w.init_runs().is_empty()));
        let x = w.init_runs()[0].node;
        let y = (0..3).find(|&i| i != x).unwrap();
        assert!(
            w.release_allowed(y, x).is_err(),
            "seed {seed}: the holder is alive"
        );
        w.act(Action::Release { by: y, holder: x });
        w.act(Action::Destroy { node: x });
        w.run_until(w.now() + Duration::from_secs(10));
        assert_eq!(
            w.init_runs().len(),
            1,
            "seed {seed}: nobody inits by itself"
        );
        let ok = w.release_allowed(y, x);
        assert!(ok.is_ok(), "seed {seed}: {ok:?}");
        w.act(Action::Release { by: y, holder: x });
        assert!(
            w.run_until_true(w.now() + Duration::from_secs(10), |w| w.init_runs().len()
                > 1),
            "seed {seed}: no init after the release:\n{}",
            w.trace_tail(100000)
        );
        w.run_until(w.now() + Duration::from_secs(10));
        let runs = w.init_runs();
        let later: Vec<usize> = runs[1..].iter().map(|r| r.node).collect();
        assert!(later.iter().all(|&n| n != x), "seed {seed}: {later:?}");
        let first = later[0];
        assert!(later.iter().all(|&n| n == first), "seed {seed}: {later:?}");
        assert!(
            w.violations().is_empty(),
            "seed {seed}: {:?}",
            w.violations()
        );
    }
}
