//! The simulated cluster: nodes running the real `kubeha_core::node::Node`,
//! a network, per-node clocks, a fault schedule, and the checkers.
//!
//! Real time is in microseconds. Each node reads its own clock, which runs
//! up to `MAX_DRIFT_PPM` fast or slow and restarts from zero when the
//! machine reboots (CLOCK_BOOTTIME). Like the agent shell, a node carries
//! out the effects of a step one after the other, each taking a little
//! time, and takes its next input only when they are done.

mod bench;
mod cloud;
mod events;
mod fence;
mod init;
mod membership;
mod release;
mod script;

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
    /// ignores its expiry; its guardian does not fence either). Must
    /// produce S1 violations.
    IgnoreExpiry,
    /// The shell never writes the state file (lost fsync): every restart
    /// is an undetected loss of state. Must produce S2 violations.
    DropPersist,
    /// The guardian neither fences at the lease deadline nor removes a late
    /// add nor releases for a dead agent (the keeper of old: it only removes
    /// the VIP when the agent dies). A frozen holder keeps answering.
    NoFence,
    /// The VIP is added without a kernel lifetime: a node whose every
    /// kubeha process is frozen or dead keeps it.
    NoLifetime,
    /// The core has no cloud guard (`NodeParams::cloud` is `None`: the
    /// provider's health is no input, as before issue 13's fix): a holder
    /// whose assignment fails keeps the lease. Must fail the cloud check
    /// (world/cloud.rs).
    NoCloudGuard,
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
    /// The node was destroyed with whatever it held (world/release.rs).
    Destroyed,
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
    /// The VIP guardian and the kernel lifetime (world/fence.rs).
    fence: fence::NodeFence,
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
    /// The node is gone for good (world/release.rs).
    Destroy {
        node: usize,
    },
    Heal,
    /// Bench: act on the holder.
    BenchAction(BenchKind),
    /// The fence (world/fence.rs).
    Fence(fence::FenceEv),
    /// The cloud VIP (world/cloud.rs).
    Cloud(cloud::CloudEv),
}

/// A scripted fault (tests).
#[derive(Clone, Copy, Debug)]
pub enum Action {
    Crash {
        node: usize,
        power_off: bool,
    },
    /// The node is gone for good while its `kubeadm init` runs, with all
    /// it held (world/release.rs).
    Destroy {
        node: usize,
    },
    /// `kubeha-ctl bootstrap release HOLDER` on node `by` (its agent's
    /// checks decide whether anything is sent).
    Release {
        by: usize,
        holder: usize,
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
    /// The VIP guardian process is stopped; the agent runs on.
    PauseGuardian {
        node: usize,
        dur: Duration,
    },
    /// Agent and guardian stopped (a cgroup freeze): only the kernel acts.
    PauseAll {
        node: usize,
        dur: Duration,
    },
    /// The whole VM is frozen (host pause): its kernel answers nothing.
    FreezeVm {
        node: usize,
        dur: Duration,
    },
    /// `kill -9` of agent and guardian (the process group); the kernel
    /// keeps the address until its lifetime ends.
    KillAll {
        node: usize,
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
    /// Two or more kernels answering for the VIP since then (S1).
    overlap: Option<fence::Overlap>,
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
    /// A cloud VIP (provider `digitalocean`; world/cloud.rs), in some runs.
    cloud: Option<cloud::CloudWorld>,
    /// The init node destroyed and released by an operator, in some runs.
    release: Option<release::ReleasePlan>,
    /// The bootstrap bound counts from here: the heal, or a later release.
    boot_from: Us,
}

pub use cloud::{CloudBench, CloudMode};

/// Counts of what a run exercised.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Voters restarted without their state file.
    pub voter_wipes: u64,
    /// ... whose lost file held a committed lock vote.
    pub committed_wipes: u64,
    pub crashes: u64,
    /// 1 if the run has a cloud VIP.
    pub cloud_runs: u64,
    /// Leases let go because of a cloud fault (counted at each fault).
    pub cloud_faults: u64,
    /// 1 if the run destroys its first init node (world/release.rs).
    pub release_runs: u64,
    /// `kubeha-ctl bootstrap release` runs by the simulated operator.
    pub releases: u64,
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
                fence: fence::NodeFence::default(),
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
            overlap: None,
            bench_t0: 0,
            bench_holder: None,
            last_ev: LastEv::Other,
            vip_up_since: None,
            vip_gap_since: None,
            blind_kube: false,
            stats: Stats::default(),
            node_timing: vec![timing; n_nodes],
            cloud: None,
            release: None,
            boot_from: 0,
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
                _ => match s.below(8) {
                    0..=3 => {
                        // A stall within the guard.
                        let d = s.range(0, w.budget.pause);
                        w.push(t, Ev::Pause { node, dur: d });
                    }
                    // Frozen for longer than a lease (world/fence.rs): the
                    // agent alone, the guardian alone, both, the whole VM;
                    // or agent and guardian killed together.
                    4 => w.push(t, Ev::Pause { node, dur }),
                    5 => w.push(t, Ev::Fence(fence::FenceEv::PauseGuardian { node, dur })),
                    6 => w.push(t, Ev::Fence(fence::FenceEv::PauseAll { node, dur })),
                    _ => {
                        if s.chance(0.5) {
                            w.push(t, Ev::Fence(fence::FenceEv::FreezeVm { node, dur }));
                        } else {
                            w.push(t, Ev::Fence(fence::FenceEv::KillAll { node }));
                            if t + dur < chaos {
                                w.push(t + dur, Ev::Restart { node, wipe: false });
                            }
                        }
                    }
                },
            }
        }
        // A cloud VIP in some runs, decided on a stream of its own so the
        // other runs keep their scenarios.
        // Not with mixed profiles: there a holder whose renewals outlast its
        // voters' leases loses and retakes the lease every renewal (handover
        // gaps the VIP check accepts), and no cloud action keeps up.
        let mut c = Rng::new(seed ^ 0x0c10_0d00_dead_beef);
        let mixed = w.node_timing.iter().any(|t| *t != w.timing);
        if !mixed && c.chance(0.3) {
            let cw = cloud::CloudWorld::random(&mut c, &w.nodes, lease, chaos);
            if let Some(t) = w.trace.as_mut() {
                t.push(format!(
                    "cloud VIP: modes {:?} assign_timeout {:?}",
                    cw.modes, cw.timing.assign_timeout
                ));
            }
            w.cloud = Some(cw);
            w.stats.cloud_runs = 1;
            w.end_at += w.cloud_bound() + w.cloud_stable();
        }
        // The init node destroyed mid-init and released by an operator, in
        // some runs, on a stream of its own as well.
        // Not with a cloud VIP: losing a candidate for good may leave none
        // whose assignments work, which the cloud check counts as a miss.
        let mut r = Rng::new(seed ^ 0x0e1e_a5ed_0b00_7000);
        if r.chance(0.2) && w.cloud.is_none() {
            if let Some(t) = w.trace.as_mut() {
                t.push("release: the first init node is destroyed mid-init".into());
            }
            w.release = Some(release::ReleasePlan {
                rng: r,
                stage: release::Stage::Armed,
                auto: true,
            });
            w.stats.release_runs = 1;
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
        let vip_done =
            !self.has_candidates() || self.vip_after_heal.is_some() || self.cloud.is_some();
        let boot_done = !self.has_cps() || self.boot_after_heal.is_some();
        let cloud_done = self
            .cloud
            .as_ref()
            .is_none_or(|c| c.done_at.is_some() || !self.has_candidates());
        vip_done && boot_done && cloud_done
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
            let mut vb = vip_bound(&self.timing).as_micros() as u64;
            if self
                .release
                .as_ref()
                .is_some_and(|p| p.destroyed().is_some())
            {
                // A voter is gone for good: with one of the others restarted
                // at the heal (a lease of quarantine), no majority grants
                // before that lease ends.
                vb += self.timing.lease.as_micros() as u64;
            }
            // With a cloud VIP the lease may stay free after the heal while
            // every candidate stands aside after a cloud fault: the cloud
            // check (world/cloud.rs) has its own bound instead.
            if self.has_candidates() && self.cloud.is_none() {
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
                let from = self.heal_at.max(self.boot_from);
                match self.boot_after_heal {
                    Some(t) if t <= from + bb => {}
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
                            "bootstrap not complete within {:.0} ms of heal (or release): {}",
                            bb as f64 / 1000.0,
                            phases.join(" ")
                        ));
                    }
                }
            }
            self.finish_cloud(&mut liveness);
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
        PeerMsg::LockRelease(m) => {
            let _ = write!(s, "lock_release {}", m.holder);
        }
        PeerMsg::LockReleaseReply(r) => {
            let _ = write!(
                s,
                "lock_release_reply {} ok={} refusal={:?}",
                r.holder, r.ok, r.refusal
            );
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
