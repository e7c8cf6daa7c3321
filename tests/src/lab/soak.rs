//! The churn soak (`kubeha-lab soak`, issue 14): the guide topology (2 lb
//! nodes with HAProxy, 3 control planes that are the voters, 1 worker),
//! default timing, and for `--minutes` one fault every 10-30 s (seeded,
//! uniform) on a random node's agent:
//!
//! - `kill`: `kill -9` of the agent (its VIP guardian runs on and removes
//!   the VIP), restarted 2-5 s later;
//! - `freeze`: SIGSTOP of the agent alone (the guardian runs: the "never
//!   two holders" row of docs/PROTOCOL.md §1), SIGCONT 2-5 s later;
//! - `cut`: the node's bridge port leaves the bridge (all its traffic
//!   dropped, carrier up), re-attached 2-5 s later;
//! - `restart`: SIGTERM, wait for the exit, start again.
//!
//! The apiservers behind HAProxy stay up through agent faults (an agent
//! crash is not a node crash): `fake-apiserver` on every control plane's own
//! address, or with `--kubernetes` the ones fake-kubeadm started when the
//! agents bootstrapped the cluster themselves (one `kubeadm init` over real
//! etcd).
//!
//! Recorded the whole time: every node's VIP every 10 ms (the [`Sampler`]),
//! `kubeadm init`s in fake-kubeadm's call log every 10 ms (`--kubernetes`),
//! a client in the client namespace doing HTTPS `GET /readyz` through
//! VIP:6443 every 20 ms (500 ms timeout), and every agent's and guardian's
//! RSS, fds, threads and CPU time every 2 s ([`footprint`]). The verdicts
//! ([`analysis`]): never two holders; exactly one init; every fault phase
//! (injection and undo) recovered — one VIP holder and the client answered
//! — within [`RECOVERY`]; every failed request explained by a phase's
//! recovery window or a VIP handover; no incarnation leaking.
//!
//! Output: `report.json` and `summary.md` in `--out`.

pub mod analysis;
pub mod footprint;

use std::fmt::Write as _;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kubeha_core::config::Role;
use kubeha_core::timing::{Profile, Timing};
use serde::Serialize;

use self::analysis::{Phase, Req, Rules};
use self::footprint::{FpSample, LeakRule};
use super::error::{LabError, Result};
use super::rng::Rng;
use super::{Freeze, Lab, LabSpec, Sampler, Topology, VIP, VIP_PORT, cmd};
use crate::lab_haproxy::{FakeApi, TlsProber};

/// The recovery target for every fault phase: one VIP holder and the client
/// answered within `3L + 2 renew_every` of the default profile (2.8 s), the
/// liveness bound the simulator checks after a heal (docs/PROTOCOL.md,
/// "Simulator"). It covers L1's p95 (1.5 s) and L4's dead control plane out
/// of rotation (1.5 s) with room for the restart of a process.
pub fn recovery_target(t: &Timing) -> Duration {
    3 * t.lease + 2 * t.renew_every
}

/// [`recovery_target`] of the default profile.
pub const RECOVERY: Duration = Duration::from_millis(2800);
/// The client's request period and timeout.
pub const CLIENT_INTERVAL: Duration = Duration::from_millis(20);
pub const CLIENT_TIMEOUT: Duration = Duration::from_millis(500);
/// A failed request this close to a VIP holder change is the handover's:
/// L2 (100 ms without a working VIP) plus one request timeout.
pub const HANDOVER_SLACK: Duration = Duration::from_millis(600);
const FOOTPRINT_EVERY: Duration = Duration::from_secs(2);

#[derive(clap::Args, Clone, Debug)]
pub struct SoakArgs {
    /// Seed for the fault schedule (default: from the clock; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Minutes of churn (faults), after the rest period.
    #[arg(long, default_value_t = 30.0)]
    pub minutes: f64,
    /// Seconds at rest (no faults) before the churn: the footprint at rest.
    #[arg(long, default_value_t = 60.0)]
    pub rest_secs: f64,
    /// Kubernetes: the agents bootstrap the cluster (fake-kubeadm over real
    /// etcd) first, then the churn runs on it; init counted throughout.
    #[arg(long)]
    pub kubernetes: bool,
    /// Output directory (report.json, summary.md; agent logs on failure).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where kubeha-agent and kubeha-guardian are (default: next to kubeha-lab).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Shortest and longest time between two faults, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub min_gap: f64,
    #[arg(long, default_value_t = 30.0)]
    pub max_gap: f64,
}

impl SoakArgs {
    pub fn new(seed: u64, minutes: f64, out: &Path) -> SoakArgs {
        SoakArgs {
            seed: Some(seed),
            minutes,
            rest_secs: 60.0,
            kubernetes: false,
            out: Some(out.to_path_buf()),
            bin_dir: None,
            min_gap: 10.0,
            max_gap: 30.0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    Kill,
    Freeze,
    Cut,
    Restart,
}

impl FaultKind {
    const ALL: [FaultKind; 4] = [
        FaultKind::Kill,
        FaultKind::Freeze,
        FaultKind::Cut,
        FaultKind::Restart,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Freeze => "freeze",
            FaultKind::Cut => "cut",
            FaultKind::Restart => "restart",
        }
    }
}

/// One fault as injected.
#[derive(Clone, Debug, Serialize)]
pub struct FaultRecord {
    pub index: usize,
    pub kind: FaultKind,
    pub node: String,
    /// Seconds from the start of the run.
    pub inject_s: f64,
    pub restore_s: f64,
    /// The VIP holder (sampler) just before the fault.
    pub holder_before: Vec<String>,
    pub hit_holder: bool,
    /// Filled in by the analysis: recovery after the injection and after
    /// the undo, ms (-1: never).
    pub recovery_inject_ms: f64,
    pub recovery_restore_ms: f64,
    pub within_target: bool,
    pub failed_requests: usize,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Invariants {
    pub vip_samples: usize,
    pub max_holders: usize,
    /// Samples with two or more holders.
    pub two_holder_samples: usize,
    /// Time with two or more holders: the longer of the samples' and the
    /// address notifications' view, ms.
    pub two_holder_ms: f64,
    pub vip_events: usize,
    pub vip_events_lost: bool,
    /// Longest sweep over all nodes, ms (the sampler's own health).
    pub max_sweep_ms: f64,
    /// Changes of the VIP's holder set.
    pub holder_changes: usize,
    /// `--kubernetes`: inits in the call log, polled every 10 ms.
    pub init_polls: usize,
    pub max_inits: usize,
    pub final_inits: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Env {
    pub date: String,
    pub kernel: String,
    pub cpus: usize,
    pub command: String,
    pub seed: u64,
    pub minutes: f64,
    pub rest_secs: f64,
    pub kubernetes: bool,
    pub topology: &'static str,
    pub timing: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct FootprintSummary {
    /// Seconds (from the start of the run) of the rest and churn windows.
    pub rest: (f64, f64),
    pub churn: (f64, f64),
    pub at_rest: Vec<footprint::WindowFootprint>,
    pub under_churn: Vec<footprint::WindowFootprint>,
    /// Medians over the nodes, per kind: (kind, RSS KiB, CPU %, fds,
    /// threads) at rest and under churn.
    pub medians_rest: Vec<(String, u64, f64, u64, u64)>,
    pub medians_churn: Vec<(String, u64, f64, u64, u64)>,
    pub leak_rule: LeakRule,
    pub checked: Vec<footprint::IncarnationCheck>,
    pub samples: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub env: Env,
    pub rules: Rules,
    pub recovery_target: &'static str,
    pub faults: Vec<FaultRecord>,
    pub phases: Vec<analysis::PhaseResult>,
    pub invariants: Invariants,
    pub client: analysis::ClientVerdict,
    /// The first 500 failed requests: (start s, end s, error).
    pub failures: Vec<(f64, f64, String)>,
    pub footprint: FootprintSummary,
    /// Everything that fails the soak; empty = passed.
    pub problems: Vec<String>,
    pub wall_secs: f64,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

fn first_line(cmd: &mut Command) -> String {
    cmd::output(cmd)
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// Polls the call log for `kubeadm init`s every 10 ms.
struct InitWatch {
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<(usize, usize, usize)>>, // polls, max, current
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InitWatch {
    fn start(log: PathBuf) -> InitWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new((0, 0, 0)));
        let (s, st) = (stop.clone(), state.clone());
        let thread = std::thread::Builder::new()
            .name("init-watch".into())
            .spawn(move || {
                let mut len = u64::MAX;
                let mut count = 0;
                while !s.load(Ordering::Relaxed) {
                    let now = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
                    if now != len {
                        len = now;
                        count = std::fs::read_to_string(&log)
                            .unwrap_or_default()
                            .lines()
                            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                            .filter(super::kube::is_init)
                            .count();
                    }
                    {
                        let mut g = st.lock().unwrap_or_else(|e| e.into_inner());
                        g.0 += 1;
                        g.1 = g.1.max(count);
                        g.2 = count;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
            .expect("spawn the init watch");
        InitWatch {
            stop,
            state,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (usize, usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Run the soak; writes `report.json` and `summary.md` to the output
/// directory and returns the report (its `problems` say whether it passed).
pub fn run(args: &SoakArgs) -> Result<Report> {
    super::require_root()?;
    let t_wall = Instant::now();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let seed = args.seed.unwrap_or(now.as_nanos() as u64);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("kubeha-soak-{}", now.as_secs())));
    std::fs::create_dir_all(&out).map_err(|e| LabError::io(&out, e))?;
    if args.min_gap < 6.0 || args.max_gap < args.min_gap {
        return Err(LabError::Invalid(format!(
            "--min-gap {} / --max-gap {}: the gap must be at least 6 s (a fault holds up to 5 s) and max ≥ min",
            args.min_gap, args.max_gap
        )));
    }
    let env = Env {
        date: first_line(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])),
        kernel: first_line(Command::new("uname").args(["-srm"])),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        seed,
        minutes: args.minutes,
        rest_secs: args.rest_secs,
        kubernetes: args.kubernetes,
        topology: "guide",
        timing: "default",
    };
    eprintln!(
        "kubeha-lab soak: seed {seed}, {} min of churn after {} s at rest, {}, output {}",
        args.minutes,
        args.rest_secs,
        if args.kubernetes {
            "guide topology with HAProxy and Kubernetes (fake-kubeadm over etcd)"
        } else {
            "guide topology with HAProxy"
        },
        out.display()
    );
    let mut spec = LabSpec::new(Topology::Guide)
        .haproxy(true)
        .kubernetes(args.kubernetes)
        .timing(Profile::Default)
        .name(if args.kubernetes { "soak-kube" } else { "soak" });
    if let Some(d) = &args.bin_dir {
        spec = spec.bin_dir(d);
    }
    let lab = Lab::up(spec)?;
    let t0 = Instant::now();
    let rel = |t: Instant| t.saturating_duration_since(t0).as_secs_f64();
    // The apiservers behind HAProxy.
    let mut fakes: Vec<FakeApi> = Vec::new();
    let ca = if args.kubernetes {
        lab.wait_kube_joined(Duration::from_secs(240))?;
        lab.kube_ca()
            .ok_or_else(|| LabError::Invalid("no node has the cluster CA".into()))?
    } else {
        let pki = lab.dir().join("pki");
        for n in lab.nodes().iter().filter(|n| n.is_control_plane()) {
            let node = lab.node(&n.name)?;
            let listen = SocketAddr::V4(SocketAddrV4::new(n.addr, VIP_PORT));
            fakes.push(FakeApi::start(&lab, node.ns(), &n.name, listen, &pki)?);
        }
        pki.join("ca.crt")
    };
    let holder = lab.wait_settled(Duration::from_secs(120))?;
    eprintln!("kubeha-lab soak: `{holder}` holds the VIP; recording");
    let sampler = Sampler::start(&lab)?;
    let target = SocketAddr::V4(SocketAddrV4::new(VIP, VIP_PORT));
    let client = TlsProber::start(
        lab.client_ns(),
        target,
        &ca,
        CLIENT_INTERVAL,
        CLIENT_TIMEOUT,
    )?;
    let inits = args
        .kubernetes
        .then(|| InitWatch::start(super::kube::calls_log(lab.dir())));
    let fp: Mutex<Vec<FpSample>> = Mutex::new(Vec::new());
    let stop_fp = AtomicBool::new(false);
    let t_rec = Instant::now();
    let mut faults: Vec<FaultRecord> = Vec::new();
    let mut phases: Vec<Phase> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let (rest_end, churn_end) = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop_fp.load(Ordering::Relaxed) {
                let t = rel(Instant::now());
                let mut got = Vec::new();
                for n in lab.nodes() {
                    let Ok(node) = lab.node(&n.name) else {
                        continue;
                    };
                    let procs = [
                        ("agent", node.agent_pid()),
                        ("guardian", node.guardian_pid()),
                    ];
                    for (kind, pid) in procs {
                        if let Some(pid) = pid
                            && let Some((start, rss, fds, threads, cpu)) = footprint::read(pid)
                        {
                            got.push(FpSample {
                                t,
                                node: n.name.clone(),
                                kind,
                                pid,
                                start,
                                rss_kib: rss,
                                fds,
                                threads,
                                cpu_ticks: cpu,
                            });
                        }
                    }
                }
                fp.lock().unwrap_or_else(|e| e.into_inner()).extend(got);
                let until = Instant::now() + FOOTPRINT_EVERY;
                while Instant::now() < until && !stop_fp.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        });
        let r = churn(
            &lab,
            args,
            seed,
            &sampler,
            &rel,
            &mut faults,
            &mut phases,
            &mut errors,
        );
        stop_fp.store(true, Ordering::Relaxed);
        r
    });
    // After the churn: the lab settles again, every fault undone.
    let settled = lab.wait_settled(Duration::from_secs(60));
    if args.kubernetes
        && let Err(e) = lab.wait_kube_joined(Duration::from_secs(120))
    {
        errors.push(format!("after the churn: {e}"));
    }
    if let Err(e) = &settled {
        errors.push(format!("after the churn: {e}"));
    }
    // Let the last requests finish.
    std::thread::sleep(CLIENT_TIMEOUT * 3);
    let t_end = Instant::now();
    let init_state = inits.map(InitWatch::finish);
    let probes = client.since(t_rec);
    let failures: Vec<(f64, f64, String)> = probes
        .iter()
        .filter_map(|p| {
            p.outcome
                .as_ref()
                .err()
                .map(|e| (rel(p.start), rel(p.end), e.clone()))
        })
        .take(500)
        .collect();
    let reqs: Vec<Req> = probes
        .iter()
        .map(|p| Req {
            start: rel(p.start),
            end: rel(p.end),
            ok: p.ok(),
        })
        .collect();
    drop(client);
    let samples = sampler.window(t_rec, Some(t_end));
    let sum = sampler.summary(t_rec, t_end);
    let mut inv = Invariants {
        vip_samples: sum.samples,
        max_holders: sum.max_holders,
        two_holder_samples: sum.multi_samples,
        two_holder_ms: sum
            .multi_time
            .max(sampler.event_overlap(t_rec, t_end, 0))
            .as_secs_f64()
            * 1000.0,
        vip_events: sampler.events(t_rec, Some(t_end)).len(),
        vip_events_lost: sampler.events_lost(),
        max_sweep_ms: sum.max_sweep.as_secs_f64() * 1000.0,
        ..Default::default()
    };
    let masks: Vec<(f64, u64)> = samples.iter().map(|x| (rel(x.t), x.holders)).collect();
    let counts: Vec<(f64, usize)> = samples.iter().map(|x| (rel(x.t), x.count())).collect();
    let changes = analysis::holder_changes(&masks);
    inv.holder_changes = changes.len();
    if let Some((polls, max, cur)) = init_state {
        inv.init_polls = polls;
        inv.max_inits = max;
        inv.final_inits = cur;
    }
    drop(sampler);
    let rules = Rules {
        recovery: RECOVERY.as_secs_f64(),
        handover: HANDOVER_SLACK.as_secs_f64(),
    };
    let verdict = analysis::judge_client(&reqs, &phases, &changes, &rules);
    let phase_res = analysis::judge_phases(&phases, &reqs, &counts, rel(t_end), &rules);
    for f in &mut faults {
        let mine: Vec<&analysis::PhaseResult> =
            phase_res.iter().filter(|p| p.fault == f.index).collect();
        f.recovery_inject_ms = mine
            .iter()
            .find(|p| p.what == "inject")
            .map_or(-1.0, |p| p.recovery_ms);
        f.recovery_restore_ms = mine
            .iter()
            .find(|p| p.what == "restore")
            .map_or(-1.0, |p| p.recovery_ms);
        f.within_target = !mine.is_empty() && mine.iter().all(|p| p.within_target);
        f.failed_requests = mine.iter().map(|p| p.failed).sum();
    }
    // Footprint.
    let fp = fp.into_inner().unwrap_or_else(|e| e.into_inner());
    let tck = footprint::clk_tck();
    let churn_secs = churn_end - rest_end;
    let rule = LeakRule::for_run(churn_secs);
    let at_rest = footprint::window(&fp, rel(t_rec), rest_end, tck);
    let under = footprint::window(&fp, rest_end, churn_end, tck);
    let medians = |w: &[footprint::WindowFootprint]| {
        ["agent", "guardian"]
            .iter()
            .filter(|k| w.iter().any(|x| x.kind == **k))
            .map(|k| {
                let m: Vec<&footprint::WindowFootprint> =
                    w.iter().filter(|x| x.kind == *k).collect();
                let mu = |f: fn(&footprint::WindowFootprint) -> u64| {
                    footprint::median_f(m.iter().map(|x| f(x) as f64).collect()) as u64
                };
                (
                    k.to_string(),
                    mu(|x| x.rss_kib),
                    footprint::median_f(m.iter().map(|x| x.cpu_pct).collect()),
                    mu(|x| x.fds),
                    mu(|x| x.threads),
                )
            })
            .collect::<Vec<_>>()
    };
    let checked = footprint::check_leaks(&fp, &rule, tck);
    let fsum = FootprintSummary {
        rest: (rel(t_rec), rest_end),
        churn: (rest_end, churn_end),
        medians_rest: medians(&at_rest),
        medians_churn: medians(&under),
        at_rest,
        under_churn: under,
        leak_rule: rule,
        checked,
        samples: fp.len(),
    };
    // The verdicts.
    let mut problems = errors;
    if inv.max_holders > 1 || inv.two_holder_ms > 0.0 {
        problems.push(format!(
            "two VIP holders: {} samples, {:.1} ms",
            inv.two_holder_samples, inv.two_holder_ms
        ));
    }
    if inv.vip_samples < (rel(t_end) - rel(t_rec)) as usize * 50 {
        problems.push(format!(
            "the VIP sampler stalled: {} samples in {:.0} s",
            inv.vip_samples,
            rel(t_end) - rel(t_rec)
        ));
    }
    if args.kubernetes && (inv.max_inits != 1 || inv.final_inits != 1) {
        problems.push(format!(
            "kubeadm init ran {} times (at most {} seen)",
            inv.final_inits, inv.max_inits
        ));
    }
    for f in faults.iter().filter(|f| !f.within_target) {
        problems.push(format!(
            "fault #{} ({} of `{}` at {:.1} s) not recovered within {} ms: after the fault {:.0} ms, after the undo {:.0} ms",
            f.index,
            f.kind.as_str(),
            f.node,
            f.inject_s,
            RECOVERY.as_millis(),
            f.recovery_inject_ms,
            f.recovery_restore_ms
        ));
    }
    if verdict.unexplained_count > 0 {
        problems.push(format!(
            "{} failed client requests outside every fault's recovery window and every handover (first at {:?})",
            verdict.unexplained_count,
            verdict.unexplained.first()
        ));
    }
    if verdict.requests < (rel(t_end) - rel(t_rec)) as usize * 10 {
        problems.push(format!(
            "the client stalled: {} requests in {:.0} s",
            verdict.requests,
            rel(t_end) - rel(t_rec)
        ));
    }
    for c in fsum.checked.iter().filter(|c| !c.leaks.is_empty()) {
        problems.push(format!(
            "leak in `{}`'s {} (pid {}, {:.0} s): {}",
            c.node,
            c.kind,
            c.pid,
            c.life_s,
            c.leaks.join(", ")
        ));
    }
    if !fsum.checked.iter().any(|c| c.kind == "agent") {
        problems.push(format!(
            "no agent incarnation lived {:.0} s: the leak rule judged nothing",
            rule.min_life
        ));
    }
    let report = Report {
        env,
        rules,
        recovery_target: "3L + 2 renew_every (default profile: 2.8 s), docs/PROTOCOL.md simulator liveness bound; covers L1 p95 1.5 s and L4 1.5 s",
        faults,
        phases: phase_res,
        invariants: inv,
        client: verdict,
        failures,
        footprint: fsum,
        problems,
        wall_secs: t_wall.elapsed().as_secs_f64(),
    };
    write_outputs(&out, &report)?;
    if !report.passed() {
        let logs = out.join("logs");
        let _ = std::fs::create_dir_all(&logs);
        for n in lab.nodes() {
            let p = lab.node(&n.name)?.log();
            let _ = std::fs::copy(&p, logs.join(format!("{}.log", n.name)));
        }
    }
    drop(fakes);
    lab.down();
    println!("{}", summary(&report));
    eprintln!(
        "kubeha-lab soak: wrote {}/report.json and summary.md",
        out.display()
    );
    Ok(report)
}

/// The fault loop: rest, then faults until the churn time is up. Returns
/// (end of rest, end of churn) in seconds from the start of the run.
#[allow(clippy::too_many_arguments)]
fn churn(
    lab: &Lab,
    args: &SoakArgs,
    seed: u64,
    sampler: &Sampler,
    rel: &dyn Fn(Instant) -> f64,
    faults: &mut Vec<FaultRecord>,
    phases: &mut Vec<Phase>,
    errors: &mut Vec<String>,
) -> (f64, f64) {
    let mut rng = Rng(seed);
    std::thread::sleep(Duration::from_secs_f64(args.rest_secs));
    let rest_end = rel(Instant::now());
    let t_churn = Instant::now();
    let churn = Duration::from_secs_f64(args.minutes * 60.0);
    let names: Vec<String> = lab.nodes().iter().map(|n| n.name.clone()).collect();
    let mut next = t_churn + Duration::from_secs_f64(rng.secs(2.0, args.min_gap));
    loop {
        if let Some(w) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
        if t_churn.elapsed() >= churn {
            break;
        }
        let node = names[rng.pick(names.len())].clone();
        let kind = FaultKind::ALL[rng.pick(FaultKind::ALL.len())];
        let hold = Duration::from_secs_f64(rng.secs(2.0, 5.0));
        // A cut control plane's etcd member is gone from (or back in) the
        // etcd cluster: if it led, etcd elects anew first.
        let slack = if args.kubernetes
            && kind == FaultKind::Cut
            && lab
                .nodes()
                .iter()
                .any(|n| n.name == node && n.roles.contains(&Role::ControlPlane))
        {
            analysis::ETCD_ELECTION
        } else {
            0.0
        };
        let gap = Duration::from_secs_f64(rng.secs(args.min_gap, args.max_gap));
        let index = faults.len();
        let holder_before = sampler.holders();
        let t_inject = Instant::now();
        next = t_inject + gap;
        phases.push(Phase {
            t: rel(t_inject),
            fault: index,
            what: "inject",
            slack,
        });
        let r = one_fault(lab, &node, kind, hold, phases, (index, slack), rel);
        let t_restore = phases.last().map(|p| p.t).unwrap_or(rel(t_inject));
        let error = r.err().map(|e| e.to_string());
        if let Some(e) = &error {
            errors.push(format!(
                "fault #{index} ({} of `{node}`): {e}",
                kind.as_str()
            ));
        }
        eprintln!(
            "  #{index:03} {:>6.1} s {:<7} {:<9} hold {:.1} s{}{}",
            rel(t_inject),
            kind.as_str(),
            node,
            hold.as_secs_f64(),
            if holder_before.contains(&node) {
                " (the VIP holder)"
            } else {
                ""
            },
            error
                .as_deref()
                .map(|e| format!(": ERROR {e}"))
                .unwrap_or_default()
        );
        faults.push(FaultRecord {
            index,
            kind,
            hit_holder: holder_before.contains(&node),
            node,
            inject_s: rel(t_inject),
            restore_s: t_restore,
            holder_before,
            recovery_inject_ms: -1.0,
            recovery_restore_ms: -1.0,
            within_target: false,
            failed_requests: 0,
            error,
        });
    }
    (rest_end, rel(Instant::now()))
}

/// Inject one fault, hold it, undo it; pushes the `restore` phase.
fn one_fault(
    lab: &Lab,
    node: &str,
    kind: FaultKind,
    hold: Duration,
    phases: &mut Vec<Phase>,
    (index, slack): (usize, f64),
    rel: &dyn Fn(Instant) -> f64,
) -> Result<()> {
    let n = lab.node(node)?;
    let restored = |phases: &mut Vec<Phase>| {
        phases.push(Phase {
            t: rel(Instant::now()),
            fault: index,
            what: "restore",
            slack,
        })
    };
    match kind {
        FaultKind::Kill => {
            n.kill()?;
            std::thread::sleep(hold);
            restored(phases);
            n.start()?;
        }
        FaultKind::Freeze => {
            let frozen = n.freeze(Freeze::Agent)?;
            std::thread::sleep(hold);
            restored(phases);
            frozen.thaw();
        }
        FaultKind::Cut => {
            n.cut()?;
            std::thread::sleep(hold);
            restored(phases);
            n.heal()?;
        }
        FaultKind::Restart => {
            n.stop()?;
            restored(phases);
            n.start()?;
        }
    }
    Ok(())
}

fn write_outputs(out: &Path, r: &Report) -> Result<()> {
    let j = out.join("report.json");
    std::fs::write(
        &j,
        serde_json::to_string_pretty(r).expect("the report serializes"),
    )
    .map_err(|e| LabError::io(&j, e))?;
    let m = out.join("summary.md");
    std::fs::write(&m, summary(r)).map_err(|e| LabError::io(&m, e))
}

/// The short human summary.
pub fn summary(r: &Report) -> String {
    let mut m = String::new();
    let e = &r.env;
    let _ = writeln!(
        m,
        "# Churn soak: {} min, seed {}{}\n",
        e.minutes,
        e.seed,
        if e.kubernetes { ", Kubernetes" } else { "" }
    );
    let _ = writeln!(
        m,
        "- {} ({}, {} CPUs), `{}`, {:.0} s wall; guide topology, HAProxy{}, timing {}",
        e.date,
        e.kernel,
        e.cpus,
        e.command,
        r.wall_secs,
        if e.kubernetes {
            ", fake-kubeadm over etcd"
        } else {
            ", fake apiservers"
        },
        e.timing
    );
    let count = |k: FaultKind| r.faults.iter().filter(|f| f.kind == k).count();
    let _ = writeln!(
        m,
        "- faults: {} ({} kill, {} freeze, {} cut, {} restart; {} on the VIP holder)",
        r.faults.len(),
        count(FaultKind::Kill),
        count(FaultKind::Freeze),
        count(FaultKind::Cut),
        count(FaultKind::Restart),
        r.faults.iter().filter(|f| f.hit_holder).count()
    );
    let i = &r.invariants;
    let _ = writeln!(
        m,
        "- VIP: {} samples (every 10 ms), at most {} holder(s), {:.1} ms with two, {} holder changes, {} address events (lost: {}), slowest sweep {:.1} ms",
        i.vip_samples,
        i.max_holders,
        i.two_holder_ms,
        i.holder_changes,
        i.vip_events,
        i.vip_events_lost,
        i.max_sweep_ms
    );
    if e.kubernetes {
        let _ = writeln!(
            m,
            "- kubeadm init: {} (at most {} in {} polls every 10 ms)",
            i.final_inits, i.max_inits, i.init_polls
        );
    }
    let c = &r.client;
    let _ = writeln!(
        m,
        "- client (HTTPS GET /readyz through VIP:6443 every 20 ms, 500 ms timeout): {} requests, {} failed ({} in fault recovery windows, {} at handovers, {} unexplained), longest outage {:.0} ms at {:.1} s",
        c.requests,
        c.failed,
        c.failed_in_fault_windows,
        c.failed_in_handovers,
        c.unexplained_count,
        c.longest_outage_s * 1000.0,
        c.longest_outage_at_s
    );
    let rec: Vec<f64> = r
        .phases
        .iter()
        .filter(|p| p.recovery_ms > 0.0)
        .map(|p| p.recovery_ms)
        .collect();
    let _ = writeln!(
        m,
        "- recovery (target {:.0} ms): {} of {} phases within; of the {} that cost anything, median {:.0} ms, max {:.0} ms",
        r.rules.recovery * 1000.0,
        r.phases.iter().filter(|p| p.within_target).count(),
        r.phases.len(),
        rec.len(),
        footprint::median_f(rec.clone()),
        rec.iter().cloned().fold(0.0, f64::max)
    );
    let f = &r.footprint;
    for (label, w) in [
        ("at rest", &f.medians_rest),
        ("under churn", &f.medians_churn),
    ] {
        for (kind, rss, cpu, fds, thr) in w.iter() {
            let _ = writeln!(
                m,
                "- footprint {label}, {kind} (median over nodes): RSS {:.1} MiB, CPU {cpu:.2} %, {fds} fds, {thr} threads",
                *rss as f64 / 1024.0
            );
        }
    }
    let _ = writeln!(
        m,
        "- leak rule (incarnations sampled ≥ {:.0} s): {} checked, {} leaking",
        f.leak_rule.min_life,
        f.checked.len(),
        f.checked.iter().filter(|c| !c.leaks.is_empty()).count()
    );
    if r.passed() {
        let _ = writeln!(m, "\nPASSED");
    } else {
        let _ = writeln!(m, "\nFAILED:");
        for p in &r.problems {
            let _ = writeln!(m, "- {p}");
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recovery_target_is_the_documented_bound() {
        assert_eq!(recovery_target(&Timing::DEFAULT), RECOVERY);
        assert_eq!(recovery_target(&Timing::FAST), Duration::from_millis(800));
    }
}
