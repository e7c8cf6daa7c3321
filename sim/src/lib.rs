//! kubeha-sim: a deterministic simulator for kubeha's decision core.
//!
//! It runs the real [`kubeha_core::node::Node`] of every agent of a small
//! cluster over a simulated network and simulated clocks, injects faults
//! from a seed, executes the effects like the agent shell does, and checks
//! after every event:
//!
//! - S1: never two nodes with the VIP up at the same real instant;
//! - S2: `kubeadm init` never runs while an earlier init may have left a
//!   cluster (running, succeeded, or failed with files left);
//!
//! and after the network heals, that a VIP holder appears and the bootstrap
//! completes within documented bounds (docs/PROTOCOL.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kubeha_core::timing::Profile;

pub mod rng;
pub mod world;

pub use world::{
    Action, BenchKind, CloudBench, CloudMode, InitRun, Mutation, Opts, Outcome, RunOutcome, Stats,
    Topology, World,
};

/// Run one seed.
pub fn run_seed(seed: u64, opts: &Opts) -> Outcome {
    let mut o = World::random(seed, opts).run();
    o.seed = seed;
    o
}

/// The profile a seed runs with when none is forced: even seeds default,
/// odd seeds fast.
pub fn profile_for(seed: u64, forced: Option<Profile>) -> Profile {
    forced.unwrap_or(if seed.is_multiple_of(2) {
        Profile::Default
    } else {
        Profile::Fast
    })
}

/// Run `count` seeds from `first` on `jobs` threads. Returns the outcomes
/// of every seed, in seed order.
pub fn run_many(
    first: u64,
    count: u64,
    jobs: usize,
    profile: Option<Profile>,
    make: impl Fn(Profile) -> Opts + Sync,
) -> Vec<Outcome> {
    let next = AtomicU64::new(0);
    let jobs = jobs.max(1);
    let mut all: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..jobs)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        if k >= count {
                            break;
                        }
                        let seed = first + k;
                        let opts = make(profile_for(seed, profile));
                        let mut o = run_seed(seed, &opts);
                        // Keep memory flat over millions of seeds.
                        o.trace = Vec::new();
                        mine.push(o);
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a simulation thread panicked"))
            .collect()
    });
    all.sort_by_key(|o| o.seed);
    all
}

/// Median and 95th percentile.
pub fn percentiles(mut v: Vec<Duration>) -> Option<(Duration, Duration, Duration)> {
    if v.is_empty() {
        return None;
    }
    v.sort();
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    Some((at(0.5), at(0.95), *v.last().unwrap()))
}

/// Failover (action to the new holder's VIP up) and the gap without any VIP
/// for `trials` quiet clusters.
pub fn bench(
    profile: Profile,
    topology: Topology,
    kind: BenchKind,
    trials: u64,
    first_seed: u64,
) -> (Vec<Duration>, Vec<Duration>, Vec<String>) {
    let mut fail = Vec::new();
    let mut gap = Vec::new();
    let mut problems = Vec::new();
    for seed in first_seed..first_seed + trials {
        let (r, v) = World::bench(seed, profile, topology, kind).run_bench();
        problems.extend(v.into_iter().map(|p| format!("seed {seed}: {p}")));
        match r {
            Some((f, g)) => {
                fail.push(f);
                gap.push(g);
            }
            None => problems.push(format!("seed {seed}: no new holder")),
        }
    }
    (fail, gap, problems)
}

#[cfg(test)]
mod tests;
