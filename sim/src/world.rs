//! The simulated cluster: nodes running the real `kubeha_core::node::Node`,
//! a network, per-node clocks, a fault schedule, and the checkers.
//!
//! Real time is in microseconds. Each node reads its own clock, which runs
//! up to `MAX_DRIFT_PPM` fast or slow and restarts from zero when the
//! machine reboots (CLOCK_BOOTTIME). Like the agent shell, a node carries
//! out the effects of a step one after the other, each taking a little
//! time, and takes its next input only when they are done.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::Write as _;
use std::time::Duration;

use kubeha_core::lock::{LockPhase, VoterPhase};
use kubeha_core::membership::{MemberInfo, MembershipView, keys};
use kubeha_core::node::{Effect, Input, Node, NodeParams, Persisted};
use kubeha_core::time::Time;
use kubeha_core::timing::{MAX_DRIFT_PPM, Profile, Timing};
use kubeha_core::wire::PeerMsg;

use crate::rng::Rng;

/// Real time, microseconds.
pub type Us = u64;

const MS: Us = 1000;

/// A deliberately broken rule, to show the checkers catch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// The shell drops RemoveVip when the lease ran out (a holder that
    /// ignores its expiry). Must produce S1 violations.
    IgnoreExpiry,
    /// The shell never writes the state file (lost fsync): every restart
    /// is an undetected loss of state. Must produce S2 violations.
    DropPersist,
}

#[derive(Clone, Debug)]
pub struct Opts {
    pub profile: Profile,
    pub mutation: Option<Mutation>,
    pub trace: bool,
    /// Wipe a voter's state only while no other voter is without its state
    /// (the amnesia assumption of docs/PROTOCOL.md). Off: wipe freely.
    pub respect_amnesia: bool,
}

impl Opts {
    pub fn new(profile: Profile) -> Opts {
        Opts {
            profile,
            mutation: None,
            trace: false,
            respect_amnesia: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// 3 nodes, each control-plane + lb + voter.
    Compact3,
    /// 3 control planes (voters), 2 lb nodes, 2 workers.
    Guide,
    /// 5 nodes, each control-plane + lb + voter.
    Compact5,
    /// 5 control planes (voters), 3 lb nodes, 1 worker.
    Big,
}

impl Topology {
    pub const ALL: [Topology; 4] = [
        Topology::Compact3,
        Topology::Guide,
        Topology::Compact5,
        Topology::Big,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Topology::Compact3 => "compact3",
            Topology::Guide => "guide",
            Topology::Compact5 => "compact5",
            Topology::Big => "big",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    pub voter: bool,
    pub cp: bool,
    pub worker: bool,
    pub prio: Option<u8>,
}

fn specs(t: Topology, rng: &mut Rng) -> Vec<Spec> {
    let mut prio = || *rng.pick(&[100u8, 100, 100, 150, 200]);
    let mk = |name: String, voter, cp, worker, prio| Spec {
        name,
        voter,
        cp,
        worker,
        prio,
    };
    match t {
        Topology::Compact3 => (0..3)
            .map(|i| mk(format!("cp-{i}"), true, true, false, Some(prio())))
            .collect(),
        Topology::Compact5 => (0..5)
            .map(|i| mk(format!("cp-{i}"), true, true, false, Some(prio())))
            .collect(),
        Topology::Guide => {
            let mut v: Vec<Spec> = (0..3)
                .map(|i| mk(format!("cp-{i}"), true, true, false, None))
                .collect();
            v.extend((0..2).map(|i| mk(format!("lb-{i}"), false, false, false, Some(prio()))));
            v.extend((0..2).map(|i| mk(format!("w-{i}"), false, false, true, None)));
            v
        }
        Topology::Big => {
            let mut v: Vec<Spec> = (0..5)
                .map(|i| mk(format!("cp-{i}"), true, true, false, None))
                .collect();
            v.extend((0..3).map(|i| mk(format!("lb-{i}"), false, false, false, Some(prio()))));
            v.push(mk("w-0".into(), false, false, true, None));
            v
        }
    }
}

/// A node's clock: `local = offset + real * (1 + ppm / 1e6)`.
#[derive(Clone, Copy, Debug)]
struct Clock {
    offset: i128,
    ppm: i64,
}

impl Clock {
    fn local(&self, real: Us) -> Time {
        let l = self.offset + (real as i128) * (1_000_000 + self.ppm as i128) / 1_000_000;
        Time::from_micros(l.max(0) as u64)
    }

    /// The first real instant at which the clock shows `local`.
    fn real_at(&self, local: Time) -> Us {
        let num = (local.as_micros() as i128 - self.offset) * 1_000_000;
        let den = 1_000_000 + self.ppm as i128;
        let r = (num + den - 1).div_euclid(den);
        r.max(0) as u64
    }

    /// A reboot: CLOCK_BOOTTIME starts again near zero.
    fn reboot(&mut self, real: Us, ppm: i64) {
        self.ppm = ppm;
        self.offset = -((real as i128) * (1_000_000 + ppm as i128) / 1_000_000);
    }
}

/// What the node's kubelet side looks like (gossip `kube`, files on disk).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kube {
    None,
    Initializing,
    ControlPlane,
    Worker,
    /// kubeadm left files but no working cluster.
    Failed,
}

impl Kube {
    fn as_str(self) -> &'static str {
        match self {
            Kube::None => "none",
            Kube::Initializing => "initializing",
            Kube::ControlPlane => "control-plane",
            Kube::Worker => "worker",
            Kube::Failed => "failed",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    Running,
    /// A cluster exists.
    Success,
    /// Nothing left behind.
    Clean,
    /// Files left, maybe a partial cluster.
    Dirty,
    /// An operator ran `kubeadm reset` after `Dirty`: that life is over.
    Reset,
}

#[derive(Clone, Debug)]
pub struct InitRun {
    pub node: usize,
    pub start: Us,
    pub outcome: RunOutcome,
}

struct SimNode {
    spec: Spec,
    clock: Clock,
    core: Option<Node>,
    up: bool,
    /// Stopped cleanly: gossip shows `leaving`.
    leaving: bool,
    booted: bool,
    epoch: u64,
    tick_token: u64,
    busy_until: Us,
    disk: Option<Persisted>,
    vip: bool,
    kube: Kube,
    failed_since: Option<Us>,
    healthy: bool,
    drained: bool,
    generation: u64,
    view: Option<MembershipView>,
    view_fp: u64,
    running_init: Option<usize>,
    /// The next restart is a reboot (new clock).
    rebooting: bool,
}

#[derive(Clone, Debug)]
enum Apply {
    Vip(bool),
    Persist(Persisted),
    Send { to: usize, msg: PeerMsg },
    RunInit,
}

#[derive(Clone, Debug)]
enum Ev {
    Deliver {
        to: usize,
        from: usize,
        msg: PeerMsg,
    },
    Tick {
        node: usize,
        token: u64,
    },
    Input {
        node: usize,
        epoch: u64,
        input: Input,
    },
    Apply {
        node: usize,
        epoch: u64,
        what: Apply,
    },
    Start {
        node: usize,
    },
    Crash {
        node: usize,
        power_off: bool,
    },
    Restart {
        node: usize,
        wipe: bool,
    },
    CleanStop {
        node: usize,
    },
    Down {
        node: usize,
        epoch: u64,
    },
    VipCleanup {
        node: usize,
        epoch: u64,
    },
    Block {
        links: Vec<(usize, usize)>,
    },
    Unblock {
        links: Vec<(usize, usize)>,
    },
    Loss {
        p: f64,
    },
    Delay {
        hi: Us,
    },
    NetNormal,
    Drain {
        node: usize,
        on: bool,
    },
    Health {
        node: usize,
        ok: bool,
    },
    Lies {
        p: f64,
    },
    Pause {
        node: usize,
        dur: Us,
    },
    Gossip,
    InitDone {
        node: usize,
        epoch: u64,
        run: usize,
    },
    Operator,
    Heal,
    /// Bench: act on the holder.
    BenchAction(BenchKind),
}

/// A scripted fault (tests).
#[derive(Clone, Copy, Debug)]
pub enum Action {
    Crash {
        node: usize,
        power_off: bool,
    },
    Restart {
        node: usize,
        wipe: bool,
    },
    /// Cut every link of the node, both ways.
    Isolate {
        node: usize,
    },
    Rejoin {
        node: usize,
    },
    /// The agent process is stopped (SIGSTOP, a long GC-like stall): it
    /// handles nothing, but the kernel keeps its VIP.
    Pause {
        node: usize,
        dur: Duration,
    },
    Drain {
        node: usize,
        on: bool,
    },
}

/// What a bench trial does to the VIP holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchKind {
    /// Power off (VIP gone at once, no more messages).
    Crash,
    /// Cut all its links both ways; it keeps running.
    Partition,
    /// `kubeha-ctl drain`.
    Drain,
}

struct Entry {
    t: Us,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.t, self.seq) == (o.t, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.t, self.seq).cmp(&(o.t, o.seq))
    }
}

/// Per-step timing of the simulated shell, within the actuation guard.
#[derive(Clone, Copy, Debug)]
struct Budget {
    tick_late: Us,
    actuate: Us,
    persist: Us,
    /// A killed agent's VIP is removed by its keeper within this.
    cleanup: Us,
    pause: Us,
}

#[derive(Clone, Debug)]
struct NetParams {
    lo: Us,
    hi: Us,
    loss: f64,
    dup: f64,
    long_p: f64,
}

/// The result of one seed.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub seed: u64,
    pub topology: &'static str,
    /// S1/S2 violations.
    pub violations: Vec<String>,
    /// Liveness bounds missed.
    pub liveness: Vec<String>,
    /// Time from heal to the first VIP holder.
    pub vip_after_heal: Option<Duration>,
    /// Time from heal to bootstrap complete.
    pub boot_after_heal: Option<Duration>,
    pub events: u64,
    pub inits: usize,
    pub stats: Stats,
    pub trace: Vec<String>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.violations.is_empty() && self.liveness.is_empty()
    }
}

/// Liveness bounds after the heal (documented in docs/PROTOCOL.md).
pub fn vip_bound(t: &Timing) -> Duration {
    t.lease * 3 + t.renew_every * 2
}

pub fn boot_bound(t: &Timing) -> Duration {
    t.lease * 24 + Duration::from_secs(3)
}

pub struct World {
    opts: Opts,
    timing: Timing,
    rng: Rng,
    net_rng: Rng,
    now: Us,
    seq: u64,
    queue: BinaryHeap<Reverse<Entry>>,
    nodes: Vec<SimNode>,
    names: BTreeMap<String, usize>,
    blocked: BTreeMap<(usize, usize), u32>,
    base_net: NetParams,
    net: NetParams,
    lie_p: f64,
    base_lie_p: f64,
    fresh_p: f64,
    budget: Budget,
    pub inits: Vec<InitRun>,
    /// A voter whose state was wiped and that has not relearned it yet.
    lost_unresolved: Option<usize>,
    heal_at: Us,
    end_at: Us,
    healed: bool,
    vip_after_heal: Option<Us>,
    boot_after_heal: Option<Us>,
    violations: Vec<String>,
    trace: Option<Vec<String>>,
    events: u64,
    topology: Topology,
    /// (time, node, on)
    vip_log: Vec<(Us, usize, bool)>,
    bench_t0: Us,
    bench_holder: Option<usize>,
    last_ev: LastEv,
    /// Since when some node holds the VIP (short handover gaps aside).
    vip_up_since: Option<Us>,
    vip_gap_since: Option<Us>,
    /// Gossip always says `kube = none` (a view that lies; tests).
    blind_kube: bool,
    stats: Stats,
    /// Each node's timing profile (mixed in some runs, as during a change
    /// of `timing` rolled out node by node).
    node_timing: Vec<Timing>,
}

/// Counts of what a run exercised.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Voters restarted without their state file.
    pub voter_wipes: u64,
    /// ... whose lost file held a committed lock vote.
    pub committed_wipes: u64,
    pub crashes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LastEv {
    Gossip,
    Other,
}

impl World {
    fn base(seed: u64, opts: &Opts, topology: Topology, rng: &mut Rng) -> World {
        let timing = opts.profile.timing();
        let g = timing.actuation_guard.as_micros() as u64;
        let budget = Budget {
            tick_late: g * 15 / 100,
            actuate: g * 15 / 100,
            persist: g * 15 / 100,
            cleanup: g * 40 / 100,
            pause: g * 15 / 100,
        };
        let mut spec_rng = rng.fork(11);
        let specs = specs(topology, &mut spec_rng);
        let mut clock_rng = rng.fork(12);
        let nodes: Vec<SimNode> = specs
            .into_iter()
            .map(|spec| SimNode {
                spec,
                clock: Clock {
                    offset: clock_rng.range(0, 1 << 40) as i128,
                    ppm: drift(&mut clock_rng),
                },
                core: None,
                up: false,
                leaving: false,
                booted: false,
                epoch: 0,
                tick_token: 0,
                busy_until: 0,
                disk: None,
                vip: false,
                kube: Kube::None,
                failed_since: None,
                healthy: true,
                drained: false,
                generation: 0,
                view: None,
                view_fp: 0,
                running_init: None,
                rebooting: false,
            })
            .collect();
        let n_nodes = nodes.len();
        let names = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.spec.name.clone(), i))
            .collect();
        let quiet = NetParams {
            lo: 100,
            hi: 500,
            loss: 0.0,
            dup: 0.0,
            long_p: 0.0,
        };
        World {
            opts: opts.clone(),
            timing,
            net_rng: rng.fork(13),
            rng: rng.fork(14),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            names,
            blocked: BTreeMap::new(),
            base_net: quiet.clone(),
            net: quiet,
            lie_p: 0.0,
            base_lie_p: 0.0,
            fresh_p: 1.0,
            budget,
            inits: Vec::new(),
            lost_unresolved: None,
            heal_at: u64::MAX,
            end_at: u64::MAX,
            healed: false,
            vip_after_heal: None,
            boot_after_heal: None,
            violations: Vec::new(),
            trace: opts.trace.then(Vec::new),
            events: 0,
            topology,
            vip_log: Vec::new(),
            bench_t0: 0,
            bench_holder: None,
            last_ev: LastEv::Other,
            vip_up_since: None,
            vip_gap_since: None,
            blind_kube: false,
            stats: Stats::default(),
            node_timing: vec![timing; n_nodes],
        }
        .with_seed_note(seed)
    }

    fn with_seed_note(mut self, seed: u64) -> World {
        if let Some(t) = self.trace.as_mut() {
            t.push(format!("seed {seed}"));
        }
        self
    }

    /// A random scenario: chaos until `heal_at`, then everything is
    /// repaired and liveness is checked.
    pub fn random(seed: u64, opts: &Opts) -> World {
        let mut rng = Rng::new(seed);
        let topology = *rng.pick(&Topology::ALL);
        let mut w = World::base(seed, opts, topology, &mut rng);
        let mut s = rng.fork(21);
        let lease = w.timing.lease.as_micros() as u64;
        w.base_net = NetParams {
            lo: s.range(50, 500),
            hi: 0,
            loss: *s.pick(&[0.0, 0.0, 0.01, 0.05, 0.15]),
            dup: *s.pick(&[0.0, 0.01, 0.05]),
            long_p: *s.pick(&[0.0, 0.002, 0.01]),
        };
        w.base_net.hi = w.base_net.lo + s.range(100, 3000);
        w.net = w.base_net.clone();
        if s.chance(0.1) {
            // Mixed profiles: bounds follow the slower one, the simulated
            // shell the tighter guard.
            let n = w.nodes.len();
            w.node_timing = (0..n)
                .map(|_| *s.pick(&[Timing::DEFAULT, Timing::FAST]))
                .collect();
            w.timing = Timing::DEFAULT;
            let g = Timing::FAST.actuation_guard.as_micros() as u64;
            w.budget = Budget {
                tick_late: g * 15 / 100,
                actuate: g * 15 / 100,
                persist: g * 15 / 100,
                cleanup: g * 40 / 100,
                pause: g * 15 / 100,
            };
            if let Some(t) = w.trace.as_mut() {
                t.push("mixed timing profiles".into());
            }
        }
        w.base_lie_p = *s.pick(&[0.0, 0.0, 0.02, 0.1]);
        w.lie_p = w.base_lie_p;
        w.fresh_p = *s.pick(&[1.0, 0.7, 0.4]);
        if let Some(t) = w.trace.as_mut() {
            t.push(format!(
                "topology {} profile {} net {:?} lie_p {} fresh_p {}",
                topology.as_str(),
                opts.profile.as_str(),
                w.base_net,
                w.base_lie_p,
                w.fresh_p
            ));
        }
        let chaos = lease * s.range(3, 12);
        w.heal_at = chaos;
        w.end_at = chaos + boot_bound(&w.timing).as_micros() as u64 + MS * 500;
        for i in 0..w.nodes.len() {
            let at = s.range(0, lease / 2);
            w.push(at, Ev::Start { node: i });
        }
        let n = w.nodes.len();
        let faults = s.range(1, 12);
        for _ in 0..faults {
            let t = s.range(0, chaos);
            // Half the faults land in the first seconds, where the
            // bootstrap lock runs.
            let t = if s.chance(0.5) { t / 4 } else { t };
            let node = s.below(n as u64) as usize;
            let dur = s.range(lease / 10, lease * 4);
            match s.below(20) {
                0..=4 => {
                    let power_off = s.chance(0.5);
                    w.push(t, Ev::Crash { node, power_off });
                    let wipe = s.chance(0.35);
                    if t + dur < chaos {
                        w.push(t + dur, Ev::Restart { node, wipe });
                    }
                }
                5 => {
                    w.push(t, Ev::CleanStop { node });
                    if t + dur < chaos {
                        w.push(t + dur, Ev::Restart { node, wipe: false });
                    }
                }
                6..=8 => {
                    // A partition, possibly one way only.
                    let mut side: Vec<bool> = (0..n).map(|_| s.chance(0.5)).collect();
                    side[node] = true;
                    let dir = s.below(3);
                    let mut links = Vec::new();
                    for a in 0..n {
                        for b in 0..n {
                            if side[a] && !side[b] {
                                if dir != 2 {
                                    links.push((a, b));
                                }
                                if dir != 1 {
                                    links.push((b, a));
                                }
                            }
                        }
                    }
                    w.push(
                        t,
                        Ev::Block {
                            links: links.clone(),
                        },
                    );
                    w.push(t + dur, Ev::Unblock { links });
                }
                9 | 10 => {
                    let b = s.below(n as u64) as usize;
                    let mut links = vec![(node, b)];
                    if s.chance(0.5) {
                        links.push((b, node));
                    }
                    w.push(
                        t,
                        Ev::Block {
                            links: links.clone(),
                        },
                    );
                    w.push(t + dur, Ev::Unblock { links });
                }
                11 => {
                    let p = *s.pick(&[0.2, 0.5, 0.9]);
                    w.push(t, Ev::Loss { p });
                    w.push(t + dur, Ev::NetNormal);
                }
                12 => {
                    let hi = *s.pick(&[10 * MS, 100 * MS, lease]);
                    w.push(t, Ev::Delay { hi });
                    w.push(t + dur, Ev::NetNormal);
                }
                13 | 14 => {
                    w.push(t, Ev::Drain { node, on: true });
                    w.push(t + dur, Ev::Drain { node, on: false });
                }
                15 | 16 => {
                    w.push(t, Ev::Health { node, ok: false });
                    w.push(t + dur, Ev::Health { node, ok: true });
                }
                17 => {
                    w.push(t, Ev::Lies { p: 0.3 });
                    w.push(t + dur, Ev::Lies { p: w.base_lie_p });
                }
                _ => {
                    let d = s.range(0, w.budget.pause);
                    w.push(t, Ev::Pause { node, dur: d });
                }
            }
        }
        w.push(chaos, Ev::Heal);
        w.push(0, Ev::Gossip);
        w.push(0, Ev::Operator);
        w
    }

    fn push(&mut self, t: Us, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Entry {
            t,
            seq: self.seq,
            ev,
        }));
    }

    fn note(&mut self, f: impl FnOnce() -> String) {
        if let Some(t) = self.trace.as_mut() {
            let line = f();
            t.push(format!("{:>10.3}ms {line}", self.now as f64 / 1000.0));
        }
    }

    pub fn run(mut self) -> Outcome {
        while let Some(Reverse(e)) = self.queue.pop() {
            if e.t > self.end_at {
                break;
            }
            self.now = e.t;
            self.events += 1;
            self.last_ev = if matches!(e.ev, Ev::Gossip) {
                LastEv::Gossip
            } else {
                LastEv::Other
            };
            self.handle(e.ev);
            if self.healed && matches!(self.last_ev, LastEv::Gossip) && self.settled() {
                break;
            }
        }
        self.finish()
    }

    /// After the heal, both liveness goals were met a while ago.
    fn settled(&self) -> bool {
        let vip_done = !self.has_candidates() || self.vip_after_heal.is_some();
        let boot_done = !self.has_cps() || self.boot_after_heal.is_some();
        vip_done && boot_done
    }

    fn has_candidates(&self) -> bool {
        self.nodes.iter().any(|n| n.spec.prio.is_some())
    }

    fn has_cps(&self) -> bool {
        self.nodes.iter().any(|n| n.spec.cp)
    }

    fn finish(mut self) -> Outcome {
        let mut liveness = Vec::new();
        if self.healed {
            let vb = vip_bound(&self.timing).as_micros() as u64;
            if self.has_candidates() {
                match self.vip_after_heal {
                    Some(t) if t <= self.heal_at + vb => {}
                    Some(t) => liveness.push(format!(
                        "VIP holder only {:.0} ms after heal (bound {:.0} ms)",
                        (t - self.heal_at) as f64 / 1000.0,
                        vb as f64 / 1000.0
                    )),
                    None => liveness.push(format!(
                        "no lasting VIP holder within {:.0} ms of heal",
                        (self.now - self.heal_at) as f64 / 1000.0
                    )),
                }
            }
            let bb = boot_bound(&self.timing).as_micros() as u64;
            if self.has_cps() {
                match self.boot_after_heal {
                    Some(t) if t <= self.heal_at + bb => {}
                    _ => {
                        let phases: Vec<String> = self
                            .nodes
                            .iter()
                            .filter(|n| n.spec.cp)
                            .map(|n| {
                                let st = n.core.as_ref().map(|c| c.status(n.clock.local(self.now)));
                                format!(
                                    "{}:{}/{:?}/{:?}/{}",
                                    n.spec.name,
                                    st.as_ref().map_or("down", |s| s.lock_phase.as_str()),
                                    st.as_ref().and_then(|s| s.init_node.clone()),
                                    st.as_ref().and_then(|s| s.lock_voter),
                                    n.kube.as_str()
                                )
                            })
                            .collect();
                        liveness.push(format!(
                            "bootstrap not complete within {:.0} ms of heal: {}",
                            bb as f64 / 1000.0,
                            phases.join(" ")
                        ));
                    }
                }
            }
        } else {
            liveness.push("run ended before the heal".into());
        }
        let mut trace = self.trace.take().unwrap_or_default();
        if !self.violations.is_empty() || !liveness.is_empty() {
            trace.push(format!("violations: {:?}", self.violations));
            trace.push(format!("liveness: {liveness:?}"));
        }
        Outcome {
            seed: 0,
            topology: self.topology.as_str(),
            violations: self.violations,
            liveness,
            vip_after_heal: self
                .vip_after_heal
                .map(|t| Duration::from_micros(t - self.heal_at)),
            boot_after_heal: self
                .boot_after_heal
                .map(|t| Duration::from_micros(t - self.heal_at)),
            events: self.events,
            inits: self.inits.len(),
            stats: self.stats,
            trace,
        }
    }

    // ------------------------------------------------------------ events

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver { to, from, msg } => {
                if !self.nodes[to].up {
                    return;
                }
                if self.busy(to) {
                    let t = self.nodes[to].busy_until;
                    self.push(t, Ev::Deliver { to, from, msg });
                    return;
                }
                let from_name = self.nodes[from].spec.name.clone();
                if self.trace.is_some() {
                    let line = format!(
                        "{} <- {} {}",
                        self.nodes[to].spec.name,
                        from_name,
                        short(&msg)
                    );
                    self.note(|| line);
                }
                self.input(
                    to,
                    Input::Peer {
                        from: from_name,
                        msg,
                    },
                );
            }
            Ev::Tick { node, token } => {
                let n = &self.nodes[node];
                if !n.up || n.tick_token != token {
                    return;
                }
                if self.busy(node) {
                    let t = self.nodes[node].busy_until;
                    self.push(t, Ev::Tick { node, token });
                    return;
                }
                self.input(node, Input::Tick);
            }
            Ev::Input { node, epoch, input } => {
                if !self.nodes[node].up || self.nodes[node].epoch != epoch {
                    return;
                }
                if self.busy(node) {
                    let t = self.nodes[node].busy_until;
                    self.push(t, Ev::Input { node, epoch, input });
                    return;
                }
                self.input(node, input);
            }
            Ev::Apply { node, epoch, what } => {
                if self.nodes[node].epoch == epoch {
                    self.apply(node, what);
                }
            }
            Ev::Start { node } => self.boot(node, false),
            Ev::Crash { node, power_off } => self.crash(node, power_off),
            Ev::Restart { node, wipe } => self.boot(node, wipe),
            Ev::CleanStop { node } => {
                if self.nodes[node].up && self.nodes[node].core.is_some() {
                    self.nodes[node].leaving = true;
                    let epoch = self.nodes[node].epoch;
                    self.push(
                        self.now,
                        Ev::Input {
                            node,
                            epoch,
                            input: Input::Stop,
                        },
                    );
                }
            }
            Ev::Down { node, epoch } => {
                if self.nodes[node].epoch == epoch && self.nodes[node].up {
                    let name = self.nodes[node].spec.name.clone();
                    self.note(|| format!("{name} down after clean stop"));
                    self.kill_init(node);
                    let n = &mut self.nodes[node];
                    n.up = false;
                    n.core = None;
                    n.epoch += 1;
                    if n.vip {
                        // The shell removed it before releasing; a node
                        // that still shows it is a bug the checker shows.
                        self.violations
                            .push(format!("{name} stopped with the VIP still up"));
                    }
                }
            }
            Ev::VipCleanup { node, epoch } => {
                if self.nodes[node].epoch == epoch && self.nodes[node].vip {
                    self.set_vip(node, false);
                }
            }
            Ev::Block { links } => {
                for l in links {
                    *self.blocked.entry(l).or_default() += 1;
                }
            }
            Ev::Unblock { links } => {
                for l in links {
                    if let Some(c) = self.blocked.get_mut(&l) {
                        *c -= 1;
                        if *c == 0 {
                            self.blocked.remove(&l);
                        }
                    }
                }
            }
            Ev::Loss { p } => self.net.loss = p,
            Ev::Delay { hi } => self.net.hi = hi,
            Ev::NetNormal => {
                if !self.healed {
                    self.net = self.base_net.clone();
                }
            }
            Ev::Drain { node, on } => {
                if self.nodes[node].up {
                    self.nodes[node].drained = on;
                    let epoch = self.nodes[node].epoch;
                    self.push(
                        self.now,
                        Ev::Input {
                            node,
                            epoch,
                            input: Input::Drain(on),
                        },
                    );
                }
            }
            Ev::Health { node, ok } => {
                self.nodes[node].healthy = ok;
                let epoch = self.nodes[node].epoch;
                self.push(
                    self.now,
                    Ev::Input {
                        node,
                        epoch,
                        input: Input::LocalHealth { lb_healthy: ok },
                    },
                );
            }
            Ev::Lies { p } => {
                if !self.healed {
                    self.lie_p = p;
                }
            }
            Ev::Pause { node, dur } => {
                let n = &mut self.nodes[node];
                n.busy_until = n.busy_until.max(self.now + dur);
            }
            Ev::Gossip => self.gossip(),
            Ev::InitDone { node, epoch, run } => self.init_done(node, epoch, run),
            Ev::Operator => self.operator(),
            Ev::Heal => self.heal(),
            Ev::BenchAction(k) => self.bench_action(k),
        }
    }

    fn busy(&self, node: usize) -> bool {
        self.now < self.nodes[node].busy_until
    }

    fn params(&mut self, i: usize) -> NodeParams {
        let voters: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.spec.voter)
            .map(|n| n.spec.name.clone())
            .collect();
        let n = &self.nodes[i];
        NodeParams {
            name: n.spec.name.clone(),
            voters,
            timing: self.node_timing[i],
            vip_priority: n.spec.prio,
            incarnation: self.rng.next_u64(),
            persisted: n.disk.clone(),
        }
    }

    /// Start (or restart) a node's agent, as the shell does.
    fn boot(&mut self, i: usize, wipe: bool) {
        if self.nodes[i].up {
            return;
        }
        if wipe {
            let voter = self.nodes[i].spec.voter;
            let other_lost = self.lost_unresolved.is_some_and(|x| x != i);
            if !(voter && self.opts.respect_amnesia && other_lost) {
                if voter && self.nodes[i].disk.is_some() {
                    self.lost_unresolved = Some(i);
                    self.stats.voter_wipes += 1;
                    if self.nodes[i]
                        .disk
                        .as_ref()
                        .is_some_and(|d| d.vote.as_ref().is_some_and(|v| v.committed))
                    {
                        self.stats.committed_wipes += 1;
                    }
                }
                self.nodes[i].disk = None;
            }
        }
        if self.nodes[i].rebooting {
            let ppm = drift(&mut self.rng);
            let now = self.now;
            self.nodes[i].clock.reboot(now, ppm);
            self.nodes[i].rebooting = false;
        }
        let params = self.params(i);
        let local = self.nodes[i].clock.local(self.now);
        let had_disk = params.persisted.is_some();
        let (core, effects) = Node::new(params, local);
        {
            let n = &mut self.nodes[i];
            n.core = Some(core);
            n.up = true;
            n.booted = true;
            n.leaving = false;
            n.drained = false;
            n.epoch += 1;
            n.generation += 1;
            n.busy_until = self.now;
            n.view = None;
        }
        let name = self.nodes[i].spec.name.clone();
        self.note(|| format!("{name} starts (state file: {had_disk})"));
        self.apply_effects(i, effects, false);
        self.after_step(i);
        // What the shell feeds a fresh core.
        let epoch = self.nodes[i].epoch;
        let healthy = self.nodes[i].healthy;
        self.push(
            self.now,
            Ev::Input {
                node: i,
                epoch,
                input: Input::LocalHealth {
                    lb_healthy: healthy,
                },
            },
        );
        let local = self.nodes[i].clock.local(self.now);
        let st = self.nodes[i].core.as_ref().unwrap().status(local);
        let kube = self.nodes[i].kube;
        let input = if st.needs_init_check {
            Some(Input::InitFinished {
                ok: matches!(kube, Kube::ControlPlane | Kube::Worker),
                left_artifacts: kube != Kube::None,
            })
        } else if self.nodes[i].spec.cp && kube == Kube::None {
            Some(Input::WantInit)
        } else {
            None
        };
        if let Some(input) = input {
            self.push(
                self.now,
                Ev::Input {
                    node: i,
                    epoch,
                    input,
                },
            );
        }
    }

    fn crash(&mut self, i: usize, power_off: bool) {
        if !self.nodes[i].up {
            return;
        }
        let name = self.nodes[i].spec.name.clone();
        self.note(|| format!("{name} crashes (power off: {power_off})"));
        self.stats.crashes += 1;
        let cleanup = self.rng.range(0, self.budget.cleanup);
        let n = &mut self.nodes[i];
        n.up = false;
        n.core = None;
        n.epoch += 1;
        n.busy_until = self.now;
        n.leaving = false;
        n.rebooting = power_off;
        let epoch = n.epoch;
        if n.vip {
            if power_off {
                self.set_vip(i, false);
            } else {
                // The agent's VIP keeper removes the address when the
                // agent dies (documented assumption: within `cleanup`).
                self.push(self.now + cleanup, Ev::VipCleanup { node: i, epoch });
            }
        }
        self.kill_init(i);
    }

    /// The agent is gone (crash or stop): its `kubeadm init`, if running,
    /// dies with it. What it leaves is anyone's guess.
    fn kill_init(&mut self, i: usize) {
        if let Some(run) = self.nodes[i].running_init.take() {
            let (outcome, kube) = match self.rng.below(10) {
                0..=2 => (RunOutcome::Success, Kube::ControlPlane),
                3..=6 => (RunOutcome::Dirty, Kube::Failed),
                _ => (RunOutcome::Clean, Kube::None),
            };
            self.inits[run].outcome = outcome;
            self.set_kube(i, kube);
        }
    }

    fn set_kube(&mut self, i: usize, k: Kube) {
        let n = &mut self.nodes[i];
        n.kube = k;
        n.failed_since = (k == Kube::Failed).then_some(self.now);
    }

    fn input(&mut self, i: usize, input: Input) {
        let local = self.nodes[i].clock.local(self.now);
        let stop = matches!(input, Input::Stop);
        let Some(core) = self.nodes[i].core.as_mut() else {
            return;
        };
        let effects = core.step(local, input);
        self.apply_effects(i, effects, true);
        self.after_step(i);
        if stop {
            let epoch = self.nodes[i].epoch;
            let t = self.nodes[i].busy_until;
            self.push(t, Ev::Down { node: i, epoch });
        }
    }

    /// Carry out effects in order, each completing before the next.
    fn apply_effects(&mut self, i: usize, mut effects: Vec<Effect>, in_step: bool) {
        if in_step && self.opts.mutation == Some(Mutation::IgnoreExpiry) {
            let local = self.nodes[i].clock.local(self.now);
            let expired = self.nodes[i]
                .core
                .as_ref()
                .is_some_and(|c| c.status(local).last_vip_drop == Some("expired"));
            if expired {
                effects.retain(|e| *e != Effect::RemoveVip);
            }
        }
        let epoch = self.nodes[i].epoch;
        let mut cursor = self.now.max(self.nodes[i].busy_until);
        for e in effects {
            let name = &self.nodes[i].spec.name;
            if self.trace.is_some() && !matches!(e, Effect::Send { .. } | Effect::Publish { .. }) {
                let line = format!("{name} effect {}", effect_str(&e));
                self.note(|| line);
            }
            let what = match e {
                Effect::Send { to, msg } => {
                    let Some(&to) = self.names.get(&to) else {
                        continue;
                    };
                    Apply::Send { to, msg }
                }
                Effect::AddVip => {
                    cursor += self.rng.range(0, self.budget.actuate);
                    Apply::Vip(true)
                }
                Effect::RemoveVip => {
                    cursor += self.rng.range(0, self.budget.actuate);
                    Apply::Vip(false)
                }
                Effect::Persist(p) => {
                    if self.opts.mutation == Some(Mutation::DropPersist) {
                        continue;
                    }
                    cursor += self.rng.range(0, self.budget.persist);
                    Apply::Persist(p)
                }
                Effect::Publish { .. } => continue,
                Effect::StartJob {
                    job: kubeha_core::node::Job::RunInit,
                    ..
                } => Apply::RunInit,
                // kubeadm driver jobs: the simulator sends no KubeFacts, so
                // the driver is off and never starts them.
                Effect::StartJob { .. } => continue,
            };
            if cursor == self.now {
                self.apply(i, what);
            } else {
                self.push(
                    cursor,
                    Ev::Apply {
                        node: i,
                        epoch,
                        what,
                    },
                );
            }
        }
        self.nodes[i].busy_until = cursor;
    }

    fn apply(&mut self, i: usize, what: Apply) {
        match what {
            Apply::Vip(on) => {
                if self.nodes[i].vip != on {
                    self.set_vip(i, on);
                }
            }
            Apply::Persist(p) => self.nodes[i].disk = Some(p),
            Apply::Send { to, msg } => self.transmit(i, to, msg),
            Apply::RunInit => self.run_init(i),
        }
    }

    fn set_vip(&mut self, i: usize, on: bool) {
        self.nodes[i].vip = on;
        self.track_vip_availability();
        self.vip_log.push((self.now, i, on));
        let name = self.nodes[i].spec.name.clone();
        self.note(|| format!("{name} VIP {}", if on { "UP" } else { "down" }));
        if on {
            let holders: Vec<&str> = self
                .nodes
                .iter()
                .filter(|n| n.vip)
                .map(|n| n.spec.name.as_str())
                .collect();
            if holders.len() > 1 {
                let msg = format!(
                    "S1: {} hold the VIP at {:.3} ms",
                    holders.join(" and "),
                    self.now as f64 / 1000.0
                );
                self.violations.push(msg);
            }
        }
    }

    /// After the heal: the VIP counts as available from the instant some
    /// node holds it, if from then on it stays up for two leases, handovers
    /// of less than one renewal period aside (preemption moves it).
    fn check_vip(&mut self) {
        if !self.healed || self.vip_after_heal.is_some() {
            return;
        }
        let hold = 2 * self.timing.lease.as_micros() as u64;
        let allow = self.timing.renew_every.as_micros() as u64;
        if self.vip_gap_since.is_some_and(|g| self.now > g + allow) {
            self.vip_up_since = None;
            self.vip_gap_since = None;
        }
        if let Some(since) = self.vip_up_since {
            let since = since.max(self.heal_at);
            if self.nodes.iter().any(|n| n.vip) && self.now >= since + hold {
                self.vip_after_heal = Some(since);
            }
        }
    }

    fn track_vip_availability(&mut self) {
        let any = self.nodes.iter().any(|n| n.vip);
        let allow = self.timing.renew_every.as_micros() as u64;
        match (any, self.vip_up_since, self.vip_gap_since) {
            (false, Some(_), None) => self.vip_gap_since = Some(self.now),
            (true, Some(_), Some(gap)) => {
                if self.now > gap + allow {
                    self.vip_up_since = Some(self.now);
                }
                self.vip_gap_since = None;
            }
            (true, None, _) => {
                self.vip_up_since = Some(self.now);
                self.vip_gap_since = None;
            }
            _ => {}
        }
    }

    fn transmit(&mut self, from: usize, to: usize, msg: PeerMsg) {
        if self.blocked.contains_key(&(from, to)) || self.net_rng.chance(self.net.loss) {
            return;
        }
        let copies = if self.net_rng.chance(self.net.dup) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let d = if self.net_rng.chance(self.net.long_p) {
                // A datagram stuck in a queue: arrives after a lease or so.
                self.net_rng
                    .range(0, 3 * self.timing.lease.as_micros() as u64)
            } else {
                self.net_rng.range(self.net.lo, self.net.hi)
            };
            self.push(
                self.now + d,
                Ev::Deliver {
                    to,
                    from,
                    msg: msg.clone(),
                },
            );
        }
    }

    fn after_step(&mut self, i: usize) {
        let late = self.rng.range(0, self.budget.tick_late);
        let n = &mut self.nodes[i];
        let Some(core) = n.core.as_ref() else {
            return;
        };
        if let Some(w) = core.next_wakeup() {
            let t = n.clock.real_at(w).max(self.now) + late;
            n.tick_token += 1;
            let token = n.tick_token;
            self.push(t, Ev::Tick { node: i, token });
        }
        if self.lost_unresolved == Some(i) {
            let local = self.nodes[i].clock.local(self.now);
            let st = self.nodes[i].core.as_ref().unwrap().status(local);
            if st.lock_voter == Some(VoterPhase::Ready) {
                self.lost_unresolved = None;
            }
        }
    }

    // ------------------------------------------------------- kubeadm init

    fn run_init(&mut self, i: usize) {
        let name = self.nodes[i].spec.name.clone();
        for (k, r) in self.inits.iter().enumerate() {
            if matches!(
                r.outcome,
                RunOutcome::Running | RunOutcome::Success | RunOutcome::Dirty
            ) {
                let msg = format!(
                    "S2: kubeadm init on {name} at {:.3} ms while init #{k} on {} is {:?}",
                    self.now as f64 / 1000.0,
                    self.nodes[r.node].spec.name,
                    r.outcome
                );
                self.violations.push(msg);
                break;
            }
        }
        self.note(|| format!("{name} RUNS KUBEADM INIT"));
        self.inits.push(InitRun {
            node: i,
            start: self.now,
            outcome: RunOutcome::Running,
        });
        let run = self.inits.len() - 1;
        self.nodes[i].running_init = Some(run);
        self.set_kube(i, Kube::Initializing);
        let dur = self.rng.range(50 * MS, 600 * MS);
        let epoch = self.nodes[i].epoch;
        self.push(
            self.now + dur,
            Ev::InitDone {
                node: i,
                epoch,
                run,
            },
        );
    }

    fn init_done(&mut self, i: usize, epoch: u64, run: usize) {
        if self.nodes[i].epoch != epoch || self.nodes[i].running_init != Some(run) {
            return;
        }
        self.nodes[i].running_init = None;
        let (outcome, kube, ok, left) = match self.rng.below(100) {
            0..=87 => (RunOutcome::Success, Kube::ControlPlane, true, true),
            88..=94 => (RunOutcome::Clean, Kube::None, false, false),
            _ => (RunOutcome::Dirty, Kube::Failed, false, true),
        };
        self.inits[run].outcome = outcome;
        self.set_kube(i, kube);
        self.push(
            self.now,
            Ev::Input {
                node: i,
                epoch,
                input: Input::InitFinished {
                    ok,
                    left_artifacts: left,
                },
            },
        );
    }

    /// The operator's documented action for phase `failed`: `kubeadm reset
    /// -f` on the node, then restart the agent.
    fn operator(&mut self) {
        let delay = 4 * self.timing.lease.as_micros() as u64;
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            if n.kube == Kube::Failed && n.failed_since.is_some_and(|s| self.now >= s + delay) {
                for r in self.inits.iter_mut() {
                    if r.node == i && r.outcome == RunOutcome::Dirty {
                        r.outcome = RunOutcome::Reset;
                    }
                }
                self.set_kube(i, Kube::None);
                if self.nodes[i].up {
                    self.push(self.now, Ev::CleanStop { node: i });
                    self.push(
                        self.now + 50 * MS,
                        Ev::Restart {
                            node: i,
                            wipe: false,
                        },
                    );
                }
            }
        }
        self.push(self.now + 200 * MS, Ev::Operator);
    }

    // ------------------------------------------------------- membership

    fn connected(&self, a: usize, b: usize) -> bool {
        a == b || !(self.blocked.contains_key(&(a, b)) || self.blocked.contains_key(&(b, a)))
    }

    fn member(&mut self, viewer: usize, m: usize) -> MemberInfo {
        let n = &self.nodes[m];
        let mut roles = Vec::new();
        if n.spec.cp {
            roles.push("control-plane");
        }
        if n.spec.worker {
            roles.push("worker");
        }
        if n.spec.prio.is_some() {
            roles.push("lb");
        }
        let voters: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.spec.voter)
            .map(|n| n.spec.name.clone())
            .collect();
        let mut kv: Vec<(&str, String)> = vec![
            (keys::ROLES, roles.join(",")),
            (keys::VOTERS, voters.join(",")),
            (keys::KUBE, n.kube.as_str().into()),
            (keys::DRAINED, if n.drained { "1" } else { "0" }.into()),
            (keys::LEAVING, if n.leaving { "1" } else { "0" }.into()),
        ];
        if let Some(p) = n.spec.prio {
            kv.push((keys::PRIORITY, p.to_string()));
            kv.push((
                keys::LB,
                if n.healthy { "healthy" } else { "unhealthy" }.into(),
            ));
        }
        if self.blind_kube {
            kv[2].1 = "none".into();
        }
        let live = n.up && self.connected(viewer, m);
        let mut info = MemberInfo::from_kv(
            &n.spec.name,
            n.generation,
            format!("198.18.0.{}:7946", m + 10).parse().unwrap(),
            live,
            kv.iter().map(|(k, v)| (*k, v.as_str())),
        );
        if self.rng.chance(self.lie_p) {
            // Gossip that is wrong: safety must not care.
            match self.rng.below(5) {
                0 => info.live = !info.live,
                1 => info.lb = kubeha_core::membership::LbHealth::Healthy,
                2 => info.kube = "none".into(),
                3 => info.kube = "control-plane".into(),
                _ => info.priority = Some(self.rng.below(256) as u8),
            }
        }
        info
    }

    fn gossip(&mut self) {
        let n = self.nodes.len();
        for v in 0..n {
            if !self.nodes[v].up || self.nodes[v].core.is_none() {
                continue;
            }
            if !self.healed && !self.rng.chance(self.fresh_p) {
                continue;
            }
            let booted: Vec<usize> = (0..n).filter(|&m| self.nodes[m].booted).collect();
            // Skip building a view that cannot have changed.
            let mut fp: u64 = 0xcbf2_9ce4_8422_2325;
            for &m in &booted {
                let x = &self.nodes[m];
                let bits = [
                    m as u64,
                    x.up as u64,
                    self.connected(v, m) as u64,
                    x.kube as u64,
                    x.drained as u64,
                    x.healthy as u64,
                    x.leaving as u64,
                    x.generation,
                    self.blind_kube as u64,
                ];
                for b in bits {
                    fp = (fp ^ b).wrapping_mul(0x0000_0100_0000_01b3);
                }
            }
            // A view built while gossip lied is always rebuilt.
            if self.lie_p == 0.0 && self.nodes[v].view.is_some() && self.nodes[v].view_fp == fp {
                continue;
            }
            self.nodes[v].view_fp = if self.lie_p == 0.0 { fp } else { 0 };
            let members: Vec<MemberInfo> = booted.into_iter().map(|m| self.member(v, m)).collect();
            let view = MembershipView::from_incarnations(members);
            if self.nodes[v].view.as_ref() != Some(&view) {
                self.nodes[v].view = Some(view.clone());
                let epoch = self.nodes[v].epoch;
                self.push(
                    self.now,
                    Ev::Input {
                        node: v,
                        epoch,
                        input: Input::Membership(view),
                    },
                );
            }
        }
        self.joins();
        self.check_boot();
        self.check_vip();
        let next = self.now + self.timing.gossip_interval.as_micros() as u64;
        self.push(next, Ev::Gossip);
    }

    fn cluster_exists(&self) -> bool {
        self.inits.iter().any(|r| r.outcome == RunOutcome::Success)
    }

    /// Nodes whose core knows the init node join once a cluster exists.
    fn joins(&mut self) {
        if !self.cluster_exists() {
            return;
        }
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            if !n.up || n.kube != Kube::None || !(n.spec.cp || n.spec.worker) {
                continue;
            }
            let Some(core) = n.core.as_ref() else {
                continue;
            };
            let st = core.status(n.clock.local(self.now));
            let other = st.init_node.as_ref().is_some_and(|x| *x != n.spec.name);
            let follows = matches!(
                st.lock_phase,
                LockPhase::Idle | LockPhase::Follower | LockPhase::Blocked | LockPhase::Waiting
            );
            if other && follows {
                let k = if n.spec.cp {
                    Kube::ControlPlane
                } else {
                    Kube::Worker
                };
                self.set_kube(i, k);
            }
        }
    }

    fn check_boot(&mut self) {
        if !self.healed || self.boot_after_heal.is_some() || !self.cluster_exists() {
            return;
        }
        let done = self.nodes.iter().filter(|n| n.spec.cp).all(|n| {
            n.up && n
                .core
                .as_ref()
                .is_some_and(|c| c.status(n.clock.local(self.now)).init_node.is_some())
        });
        if done {
            self.boot_after_heal = Some(self.now);
        }
    }

    fn heal(&mut self) {
        self.note(|| "HEAL".into());
        self.healed = true;
        self.blocked.clear();
        self.net = NetParams {
            loss: 0.0,
            long_p: 0.0,
            ..self.base_net.clone()
        };
        self.lie_p = 0.0;
        self.fresh_p = 1.0;
        for i in 0..self.nodes.len() {
            if !self.nodes[i].up {
                self.boot(i, false);
            } else {
                if self.nodes[i].drained {
                    self.handle(Ev::Drain { node: i, on: false });
                }
                if !self.nodes[i].healthy {
                    self.handle(Ev::Health { node: i, ok: true });
                }
            }
            // A clean stop in flight: its node restarts when it is down.
            if self.nodes[i].leaving {
                self.push(
                    self.now + 100 * MS,
                    Ev::Restart {
                        node: i,
                        wipe: false,
                    },
                );
            }
            self.nodes[i].healthy = true;
        }
    }

    // ------------------------------------------------------------- bench

    /// A quiet cluster: LAN delays, no loss, truthful gossip, no faults
    /// unless a test or bench adds them. Candidates get equal priorities.
    pub fn quiet(seed: u64, opts: &Opts, topology: Topology) -> World {
        let mut rng = Rng::new(seed);
        let mut w = World::base(seed, opts, topology, &mut rng);
        for n in w.nodes.iter_mut() {
            if n.spec.prio.is_some() {
                n.spec.prio = Some(100);
            }
        }
        let mut s = rng.fork(31);
        for i in 0..w.nodes.len() {
            let at = s.range(0, 100 * MS);
            w.push(at, Ev::Start { node: i });
        }
        w.push(0, Ev::Gossip);
        w.push(0, Ev::Operator);
        w
    }

    /// A quiet cluster for timing one failover: the action hits the holder
    /// 3 s in, at a random phase of its renewal period.
    pub fn bench(seed: u64, profile: Profile, topology: Topology, kind: BenchKind) -> World {
        let mut w = World::quiet(seed, &Opts::new(profile), topology);
        let mut s = Rng::new(seed).fork(32);
        let warm = 3_000 * MS + s.range(0, w.timing.renew_every.as_micros() as u64);
        w.push(warm, Ev::BenchAction(kind));
        w.end_at = warm + 3_000 * MS;
        w.bench_t0 = warm;
        w
    }

    // ---------------------------------------------- scripting (for tests)

    /// Process events up to real time `t` (from the start of the run).
    pub fn run_until(&mut self, t: Duration) {
        self.run_until_true(t, |_| false);
    }

    /// Process events until `cond` holds (checked after every event) or
    /// real time `limit` is reached. Whether `cond` holds at the end.
    pub fn run_until_true(&mut self, limit: Duration, cond: impl Fn(&World) -> bool) -> bool {
        let until = limit.as_micros() as u64;
        while !cond(self) {
            match self.queue.peek() {
                Some(Reverse(e)) if e.t <= until => {
                    let Reverse(e) = self.queue.pop().unwrap();
                    self.now = e.t;
                    self.events += 1;
                    self.handle(e.ev);
                }
                _ => {
                    self.now = self.now.max(until);
                    return cond(self);
                }
            }
        }
        true
    }

    /// From now on gossip reports every node's `kube` as `none`: only the
    /// lock stands between the cluster and a second init.
    pub fn blind_gossip(&mut self) {
        self.blind_kube = true;
    }

    pub fn now(&self) -> Duration {
        Duration::from_micros(self.now)
    }

    pub fn act(&mut self, a: Action) {
        let ev = match a {
            Action::Crash { node, power_off } => Ev::Crash { node, power_off },
            Action::Restart { node, wipe } => Ev::Restart { node, wipe },
            Action::Isolate { node } => Ev::Block {
                links: self.links_of(node),
            },
            Action::Rejoin { node } => Ev::Unblock {
                links: self.links_of(node),
            },
            Action::Pause { node, dur } => Ev::Pause {
                node,
                dur: dur.as_micros() as u64,
            },
            Action::Drain { node, on } => Ev::Drain { node, on },
        };
        self.handle(ev);
    }

    fn links_of(&self, node: usize) -> Vec<(usize, usize)> {
        (0..self.nodes.len())
            .filter(|&o| o != node)
            .flat_map(|o| [(node, o), (o, node)])
            .collect()
    }

    pub fn node(&self, name: &str) -> usize {
        self.names[name]
    }

    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].spec.name
    }

    /// The VIP priority the node's agent gets at its next (re)start, as an
    /// operator's config edit would.
    pub fn set_priority(&mut self, node: usize, prio: u8) {
        self.nodes[node].spec.prio = Some(prio);
    }

    pub fn vip_holders(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].vip)
            .collect()
    }

    pub fn init_runs(&self) -> &[InitRun] {
        &self.inits
    }

    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// Voters whose state (as the core last asked to persist it) holds a
    /// committed lock vote.
    pub fn committed_voters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].spec.voter)
            .filter(|&i| {
                self.nodes[i]
                    .core
                    .as_ref()
                    .is_some_and(|c| c.persisted().vote.as_ref().is_some_and(|v| v.committed))
            })
            .collect()
    }

    fn bench_action(&mut self, kind: BenchKind) {
        let Some(h) = self.nodes.iter().position(|n| n.vip) else {
            self.violations
                .push("bench: no holder before the action".into());
            return;
        };
        self.bench_holder = Some(h);
        match kind {
            BenchKind::Crash => self.crash(h, true),
            BenchKind::Partition => {
                let links: Vec<(usize, usize)> = (0..self.nodes.len())
                    .filter(|&o| o != h)
                    .flat_map(|o| [(h, o), (o, h)])
                    .collect();
                self.handle(Ev::Block { links });
            }
            BenchKind::Drain => self.handle(Ev::Drain { node: h, on: true }),
        }
    }

    /// Run a bench world; returns (failover, gap without any VIP) or None.
    pub fn run_bench(mut self) -> (Option<(Duration, Duration)>, Vec<String>) {
        while let Some(Reverse(e)) = self.queue.pop() {
            if e.t > self.end_at {
                break;
            }
            self.now = e.t;
            self.handle(e.ev);
        }
        let t0 = self.bench_t0;
        let Some(h) = self.bench_holder else {
            return (None, self.violations);
        };
        let up = self
            .vip_log
            .iter()
            .find(|(t, n, on)| *t >= t0 && *n != h && *on)
            .map(|x| x.0);
        let down = self
            .vip_log
            .iter()
            .find(|(t, n, on)| *t >= t0 && *n == h && !*on)
            .map(|x| x.0);
        let r = up.map(|u| {
            let gap = u.saturating_sub(down.unwrap_or(t0));
            (Duration::from_micros(u - t0), Duration::from_micros(gap))
        });
        (r, self.violations)
    }
}

fn drift(rng: &mut Rng) -> i64 {
    let m = MAX_DRIFT_PPM as i64;
    match rng.below(3) {
        0 => -m,
        1 => m,
        _ => rng.range(0, 2 * m as u64) as i64 - m,
    }
}

fn short(m: &PeerMsg) -> String {
    let mut s = String::new();
    match m {
        PeerMsg::LeaseRequest(r) => {
            let _ = write!(s, "lease_request seq={}", r.seq);
        }
        PeerMsg::LeaseReply(r) => {
            let _ = write!(
                s,
                "lease_reply seq={} granted={} refusal={:?} holder={:?} remaining={}us",
                r.seq,
                r.granted,
                r.refusal,
                r.holder.as_ref().map(|h| &h.name),
                r.remaining_us
            );
        }
        PeerMsg::LeaseRelease(r) => {
            let _ = write!(s, "lease_release seq={}", r.seq);
        }
        PeerMsg::LockRequest(r) => {
            let _ = write!(s, "lock_request {:?} {}#{}", r.op, r.id.name, r.id.round);
        }
        PeerMsg::LockReply(r) => {
            let _ = write!(
                s,
                "lock_reply {:?} {}#{} ok={} refusal={:?}",
                r.op, r.id.name, r.id.round, r.ok, r.refusal
            );
        }
        PeerMsg::LockWithdraw(w) => {
            let _ = write!(s, "lock_withdraw {}#{}", w.id.name, w.id.round);
        }
        other => s.push_str(other.kind()),
    }
    s
}

fn effect_str(e: &Effect) -> String {
    match e {
        Effect::Persist(p) => format!(
            "Persist(ready={} vote={:?} committed={} initialized={:?} init={:?})",
            p.voter_ready,
            p.vote.as_ref().map(|v| (&v.id.name, v.id.round)),
            p.vote.as_ref().is_some_and(|v| v.committed),
            p.initialized,
            p.init
        ),
        other => format!("{other:?}"),
    }
}
