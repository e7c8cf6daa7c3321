//! The failover benchmark (`kubeha-lab bench`): kubeha and keepalived in
//! the same lab topology (3 lb nodes + a client on one bridge), the same
//! prober (TCP connect to VIP:6443 every 10 ms, 50 ms timeout), the same
//! faults injected at a random phase, in one run.
//!
//! Measured per trial: client-visible failover (fault -> end of the first
//! successful probe answered by another node), the longest stretch without
//! a successful probe, time with two or more VIP holders (10 ms netlink
//! sampler), and after a healed partition how long until the client is
//! answered steadily by the single holder and where its ARP entry points.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kubeha_core::timing::Profile;
use serde::Serialize;

use super::error::{LabError, Result};
use super::prober::max_ok_gap;
use super::rng::Rng;
use super::{KaSetting, Lab, LabSpec, Prober, Sampler, Topology, cmd};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    KubehaDefault,
    KubehaFast,
    KeepalivedDefault,
    KeepalivedFast,
}

impl System {
    pub const ALL: [System; 4] = [
        System::KubehaDefault,
        System::KubehaFast,
        System::KeepalivedDefault,
        System::KeepalivedFast,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            System::KubehaDefault => "kubeha-default",
            System::KubehaFast => "kubeha-fast",
            System::KeepalivedDefault => "keepalived-default",
            System::KeepalivedFast => "keepalived-fast",
        }
    }

    pub fn is_kubeha(self) -> bool {
        matches!(self, System::KubehaDefault | System::KubehaFast)
    }

    pub fn is_fast(self) -> bool {
        matches!(self, System::KubehaFast | System::KeepalivedFast)
    }

    pub fn profile(self) -> Profile {
        if self.is_fast() {
            Profile::Fast
        } else {
            Profile::Default
        }
    }

    fn ka_setting(self) -> KaSetting {
        if self.is_fast() {
            KaSetting::Fast
        } else {
            KaSetting::Default
        }
    }

    /// The keepalived setting a kubeha profile is compared with.
    pub fn baseline(self) -> System {
        if self.is_fast() {
            System::KeepalivedFast
        } else {
            System::KeepalivedDefault
        }
    }

    /// Random phase bound: about one advert / renew period or more.
    fn phase_max(self) -> Duration {
        if self.is_fast() {
            Duration::from_millis(250)
        } else {
            Duration::from_millis(1000)
        }
    }
}

impl FromStr for System {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<System, String> {
        System::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown system `{s}`, expected one of kubeha-default, kubeha-fast, keepalived-default, keepalived-fast"
                )
            })
    }
}

impl std::fmt::Display for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    /// The holder's process crashes (kubeha: kill -9 the agent; keepalived:
    /// kill -9 its process group); its responder stops too.
    Kill,
    /// Like `kill`, but kubeha's whole process group (the agent and its VIP
    /// guardian child): what is left when nothing removes the address.
    KillGroup,
    /// The holder's bridge port leaves the bridge; its carrier stays up.
    Cut,
    /// The holder's bridge port goes down (the holder sees NO-CARRIER).
    Carrier,
    /// Planned handover: SIGTERM to the holder's agent / keepalived.
    Handover,
    /// Planned handover with `kubeha-ctl drain` (kubeha only).
    Drain,
    /// The holder is cut off for `--partition-secs`, then healed.
    Partition,
    /// Random loss of UDP and VRRP packets on every lb node, each level of
    /// `--loss-pct` held for `--loss-secs`.
    Loss,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::KillGroup => "kill-group",
            Fault::Cut => "cut",
            Fault::Carrier => "carrier",
            Fault::Handover => "handover",
            Fault::Drain => "drain",
            Fault::Partition => "partition",
            Fault::Loss => "loss",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Fault::Kill => {
                "holder process killed (kill -9; keepalived: its process group), its responder stopped"
            }
            Fault::Cut => {
                "holder's bridge port detached (carrier stays up); healed after the observation, then the client's ARP entry is flushed so the next trial need not wait for it to expire (`partition` measures that)"
            }
            Fault::KillGroup => {
                "holder's whole process group killed (kubeha: the agent and its VIP guardian), its responder stopped"
            }
            Fault::Carrier => {
                "holder's bridge port down (holder sees NO-CARRIER); healed and client ARP flushed as for `cut`"
            }
            Fault::Handover => "planned handover: SIGTERM to the holder's agent / keepalived",
            Fault::Drain => "planned handover: `kubeha-ctl drain` on the holder",
            Fault::Partition => {
                "holder's bridge port detached for the partition time, then re-attached"
            }
            Fault::Loss => {
                "nftables `numgen random mod 100 < N drop` on UDP and VRRP (IP protocol 112) in the input hook of every lb node's namespace (so each packet between two nodes is lost with N % probability; loopback, ARP and the client's TCP probes are not dropped), held for the loss time per level"
            }
        }
    }
}

#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// Trials per system and fault.
    #[arg(long, default_value_t = 20)]
    pub trials: usize,
    /// Trials per system for `partition` (default: --trials).
    #[arg(long)]
    pub partition_trials: Option<usize>,
    /// Comma list of kubeha-default, kubeha-fast (the agent's timing
    /// profiles), keepalived-default (VRRPv2, advert_int 1), keepalived-fast
    /// (VRRPv3, advert_int 0.1).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kubeha-default,kubeha-fast,keepalived-default,keepalived-fast"
    )]
    pub systems: Vec<System>,
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "kill,cut,handover,partition"
    )]
    pub faults: Vec<Fault>,
    /// Length of the partition, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub partition_secs: f64,
    /// Output directory (report.md, results.json, raw/).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seed for the fault phases (default: from the clock; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where kubeha-agent is (default: next to kubeha-lab).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// After a partition heals, wait at most this long (seconds) for the
    /// client to be answered steadily by one holder.
    #[arg(long, default_value_t = 60.0)]
    pub heal_wait: f64,
    /// `loss`: the loss levels, percent of UDP/VRRP packets dropped on
    /// input at every lb node.
    #[arg(long, value_delimiter = ',', default_value = "10,30,50", value_parser = clap::value_parser!(u8).range(0..=100))]
    pub loss_pct: Vec<u8>,
    /// `loss`: how long each level is held, seconds.
    #[arg(long, default_value_t = 60.0)]
    pub loss_secs: f64,
    /// `digitalocean`: the cloud failover instead (guide topology, the lb
    /// agents' `digitalocean` provider against the lab's stand-in, fault
    /// `kill` only; see `cloud_bench`). `--systems` picks the kubeha
    /// timing profiles.
    #[arg(long, value_enum, default_value = "arp")]
    pub vip_provider: super::VipProvider,
    /// `digitalocean`: the stand-in's action latencies, milliseconds; the
    /// trials alternate between them (11000: DigitalOcean's docs' example).
    #[arg(long, value_delimiter = ',', default_value = "11000,0")]
    pub action_latency_ms: Vec<u64>,
}

impl Default for BenchArgs {
    fn default() -> BenchArgs {
        BenchArgs {
            trials: 20,
            partition_trials: None,
            systems: System::ALL.to_vec(),
            faults: vec![Fault::Kill, Fault::Cut, Fault::Handover, Fault::Partition],
            partition_secs: 5.0,
            out: None,
            seed: None,
            bin_dir: None,
            heal_wait: 60.0,
            loss_pct: vec![10, 30, 50],
            loss_secs: 60.0,
            vip_provider: super::VipProvider::Arp,
            action_latency_ms: vec![11_000, 0],
        }
    }
}

/// One trial.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Trial {
    pub system: String,
    pub fault: String,
    pub trial: usize,
    /// The holder the fault hit.
    pub old: String,
    /// The node that answered the client first after the fault.
    pub new: Option<String>,
    pub phase_ms: f64,
    /// How long injecting the fault took (included in the figures).
    pub inject_ms: f64,
    /// Fault -> end of the first successful probe answered by another node.
    pub failover_ms: Option<f64>,
    /// Longest stretch without a successful probe, from the fault to the
    /// end of the observation (for a handover: the time without a VIP).
    pub outage_ms: f64,
    /// Failed probes between the fault and the first answer from another node.
    pub failed_probes: usize,
    /// Time with two or more nodes carrying the VIP (sampler).
    pub multi_ms: f64,
    /// The same, not counting a node whose process was killed.
    pub multi_live_ms: f64,
    /// Time with two or more holders according to netlink notifications
    /// (sub-millisecond; catches overlaps between samples).
    pub overlap_ms: f64,
    /// The same, not counting a node whose process was killed.
    pub overlap_live_ms: f64,
    /// VIP add/remove notifications during the trial.
    pub vip_events: usize,
    pub max_holders: usize,
    /// A killed holder still carried the VIP at the end of the observation.
    pub stale_vip_on_old: bool,
    /// Probes answered by the old holder after another node answered.
    pub old_answers_after_switch: usize,
    /// Failed probes after the first answer from another node.
    pub errors_after_switch: usize,
    /// Partition: the cut lasted this long.
    pub cut_ms: Option<f64>,
    /// Partition: heal -> start of the final unbroken run of answers from
    /// the single holder.
    pub reconverge_ms: Option<f64>,
    pub final_holder: Option<String>,
    /// Partition: longest stretch without an answer after the heal.
    pub max_gap_after_heal_ms: Option<f64>,
    /// Partition: last time after the heal the client's ARP entry for the
    /// VIP named a node that did not hold it (0 if never).
    pub arp_wrong_ms: Option<f64>,
    /// Partition: at the end the client's ARP entry names the holder.
    pub arp_ok_at_end: Option<bool>,
    pub error: Option<String>,
    /// Waiting for a stable holder before the fault.
    pub settle_ms: f64,
    /// Putting things back after the trial.
    pub restore_ms: f64,
}

/// One loss level held on every lb node for a while (`loss`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct LossRun {
    pub system: String,
    pub loss_pct: u8,
    /// How long the loss was held.
    pub secs: f64,
    /// The holder when the loss started.
    pub start_holder: String,
    pub end_holders: Vec<String>,
    /// Changes of the (non-empty) set of VIP holders, sampler view.
    pub holder_changes: usize,
    /// Total time with no node carrying the VIP (sampler).
    pub no_holder_ms: f64,
    /// Total time with two or more holders: the longer of the sampler's
    /// and the address notifications' view.
    pub two_holders_ms: f64,
    /// VIP add/remove notifications.
    pub vip_events: usize,
    pub probes: usize,
    /// Client probes through the VIP that failed (timeout or refused).
    pub probe_failures: usize,
    /// Longest stretch without a successful probe.
    pub max_outage_ms: f64,
    /// Packets the loss rules dropped, all nodes together.
    pub dropped_packets: u64,
    pub error: Option<String>,
}

/// Changes of the non-empty holder set along `masks` (empty sets are
/// skipped: A, none, A is no change; A, none, B is one; A, A+B, B is two).
pub fn holder_changes(masks: impl IntoIterator<Item = u64>) -> usize {
    let mut last = None;
    let mut n = 0;
    for m in masks.into_iter().filter(|m| *m != 0) {
        if last.is_some_and(|l| l != m) {
            n += 1;
        }
        last = Some(m);
    }
    n
}

#[derive(Clone, Debug, Serialize)]
pub struct Env {
    pub date: String,
    pub kernel: String,
    pub cpus: usize,
    pub keepalived: String,
    pub seed: u64,
    pub trials: usize,
    pub partition_trials: usize,
    pub partition_secs: f64,
    pub command: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Results {
    pub env: Env,
    pub systems: Vec<String>,
    pub faults: Vec<String>,
    /// Systems that did not run, with why.
    pub skipped: BTreeMap<String, String>,
    pub trials: Vec<Trial>,
    pub summary: Vec<Summary>,
    /// `loss`: one entry per system and loss level.
    pub loss: Vec<LossRun>,
    pub wall_secs: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    pub n: usize,
    pub min: f64,
    pub median: f64,
    pub p95: f64,
    pub max: f64,
}

/// Nearest-rank percentiles.
pub fn stats(xs: &[f64]) -> Option<Stats> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = |p: f64| {
        let r = (p * v.len() as f64).ceil() as usize;
        v[r.clamp(1, v.len()) - 1]
    };
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    Some(Stats {
        n: v.len(),
        min: v[0],
        median,
        p95: rank(0.95),
        max: v[v.len() - 1],
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub system: String,
    pub fault: String,
    pub n: usize,
    pub no_failover: usize,
    pub errors: usize,
    pub failover_ms: Option<Stats>,
    pub outage_ms: Option<Stats>,
    pub multi_ms: Option<Stats>,
    pub multi_live_ms: Option<Stats>,
    pub trials_with_two_live_holders: usize,
    pub stale_vip_on_old: usize,
    pub reconverge_ms: Option<Stats>,
    pub arp_wrong_at_end: usize,
    pub slow_reconverge: usize,
    /// Median failover of this kubeha profile / its keepalived baseline.
    pub ratio_to_keepalived: Option<f64>,
}

fn summarize(trials: &[Trial], systems: &[System], faults: &[Fault]) -> Vec<Summary> {
    let mut out = Vec::new();
    for f in faults {
        for s in systems {
            let ts: Vec<&Trial> = trials
                .iter()
                .filter(|t| t.system == s.as_str() && t.fault == f.as_str())
                .collect();
            if ts.is_empty() {
                continue;
            }
            let col = |g: &dyn Fn(&Trial) -> Option<f64>| -> Vec<f64> {
                ts.iter()
                    .filter(|t| t.error.is_none())
                    .filter_map(|t| g(t))
                    .collect()
            };
            out.push(Summary {
                system: s.as_str().into(),
                fault: f.as_str().into(),
                n: ts.len(),
                no_failover: ts
                    .iter()
                    .filter(|t| t.error.is_none() && t.failover_ms.is_none())
                    .count(),
                errors: ts.iter().filter(|t| t.error.is_some()).count(),
                failover_ms: stats(&col(&|t| t.failover_ms)),
                outage_ms: stats(&col(&|t| Some(t.outage_ms))),
                multi_ms: stats(&col(&|t| Some(t.multi_ms.max(t.overlap_ms)))),
                multi_live_ms: stats(&col(&|t| Some(t.two_live()))),
                trials_with_two_live_holders: ts.iter().filter(|t| t.two_live() > 0.0).count(),
                stale_vip_on_old: ts.iter().filter(|t| t.stale_vip_on_old).count(),
                reconverge_ms: stats(&col(&|t| t.reconverge_ms)),
                arp_wrong_at_end: ts.iter().filter(|t| t.arp_ok_at_end == Some(false)).count(),
                slow_reconverge: ts
                    .iter()
                    .filter(|t| {
                        t.fault == "partition" && t.reconverge_ms.is_none_or(|r| r > 1000.0)
                    })
                    .count(),
                ratio_to_keepalived: None,
            });
        }
    }
    let medians: BTreeMap<(String, String), f64> = out
        .iter()
        .filter_map(|s| {
            let m = if s.fault == "partition" {
                s.reconverge_ms.as_ref()?.median
            } else {
                s.failover_ms.as_ref()?.median
            };
            Some(((s.system.clone(), s.fault.clone()), m))
        })
        .collect();
    for s in &mut out {
        let sys: System = s.system.parse().expect("summary of a known system");
        if !sys.is_kubeha() {
            continue;
        }
        let mine = medians.get(&(s.system.clone(), s.fault.clone()));
        let base = medians.get(&(sys.baseline().as_str().to_string(), s.fault.clone()));
        if let (Some(a), Some(b)) = (mine, base)
            && *b > 0.0
        {
            s.ratio_to_keepalived = Some(a / b);
        }
    }
    out
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn first_line(cmd: &mut Command) -> String {
    cmd::output(cmd)
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// Run the benchmark; writes `report.md`, `results.json` and `raw/` to the
/// output directory and returns the results.
pub fn run(args: &BenchArgs) -> Result<Results> {
    super::require_root()?;
    if args.systems.iter().any(|s| !s.is_kubeha()) {
        cmd::require_tool("keepalived", "apt-get install -y keepalived")?;
    }
    let t_start = Instant::now();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let seed = args.seed.unwrap_or(now.as_nanos() as u64);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("kubeha-bench-{}", now.as_secs())));
    let raw = out.join("raw");
    std::fs::create_dir_all(&raw).map_err(|e| LabError::io(&raw, e))?;
    let bin_dir = args
        .bin_dir
        .clone()
        .unwrap_or_else(super::spec::default_bin_dir);
    let partition_trials = args.partition_trials.unwrap_or(args.trials);
    let env = Env {
        date: first_line(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])),
        kernel: first_line(Command::new("uname").args(["-srm"])),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        keepalived: if cmd::have_tool("keepalived") {
            first_line(Command::new("keepalived").arg("-v"))
        } else {
            "not installed".into()
        },
        seed,
        trials: args.trials,
        partition_trials,
        partition_secs: args.partition_secs,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    eprintln!(
        "kubeha-lab bench: systems {}, faults {}, {} trials (partition {}), seed {seed}, output {}",
        args.systems
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(","),
        args.faults
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join(","),
        args.trials,
        partition_trials,
        out.display()
    );
    let mut rng = Rng(seed);
    let mut results = Results {
        env,
        systems: args
            .systems
            .iter()
            .map(|s| s.as_str().to_string())
            .collect(),
        faults: args.faults.iter().map(|f| f.as_str().to_string()).collect(),
        skipped: BTreeMap::new(),
        trials: Vec::new(),
        summary: Vec::new(),
        loss: Vec::new(),
        wall_secs: 0.0,
    };
    for &sys in &args.systems {
        let missing = ["kubeha-agent", "kubeha-guardian"]
            .into_iter()
            .find(|b| !bin_dir.join(b).exists());
        if let (true, Some(b)) = (sys.is_kubeha(), missing) {
            let why = format!("no {b} in {}", bin_dir.display());
            eprintln!("kubeha-lab bench: skipping {sys}: {why}");
            results.skipped.insert(sys.as_str().into(), why);
            continue;
        }
        let t = Instant::now();
        let r = run_system(
            sys,
            args,
            partition_trials,
            &bin_dir,
            &raw,
            &mut rng,
            &mut results,
        );
        if let Err(e) = r {
            eprintln!("kubeha-lab bench: {sys} aborted: {e}");
            results
                .skipped
                .insert(sys.as_str().into(), format!("aborted: {e}"));
        }
        eprintln!(
            "kubeha-lab bench: {sys} took {:.0} s",
            t.elapsed().as_secs_f64()
        );
        results.summary = summarize(&results.trials, &args.systems, &args.faults);
        results.wall_secs = t_start.elapsed().as_secs_f64();
        write_outputs(&out, &results, args)?;
    }
    results.summary = summarize(&results.trials, &args.systems, &args.faults);
    results.wall_secs = t_start.elapsed().as_secs_f64();
    write_outputs(&out, &results, args)?;
    println!("{}", report(&results, args));
    eprintln!(
        "kubeha-lab bench: wrote {}/report.md and results.json",
        out.display()
    );
    Ok(results)
}

fn write_outputs(out: &Path, r: &Results, args: &BenchArgs) -> Result<()> {
    let j = out.join("results.json");
    std::fs::write(
        &j,
        serde_json::to_string_pretty(r).expect("results serialize"),
    )
    .map_err(|e| LabError::io(&j, e))?;
    let m = out.join("report.md");
    std::fs::write(&m, report(r, args)).map_err(|e| LabError::io(&m, e))
}

struct Ctx<'a> {
    sys: System,
    lab: &'a Lab,
    sampler: &'a Sampler,
    prober: &'a Prober,
    preferred: String,
    raw: &'a Path,
}

fn run_system(
    sys: System,
    args: &BenchArgs,
    partition_trials: usize,
    bin_dir: &Path,
    raw: &Path,
    rng: &mut Rng,
    results: &mut Results,
) -> Result<()> {
    let lab = Lab::up(
        LabSpec::new(Topology::Vip)
            .nodes(3)
            .timing(sys.profile())
            .without_agents()
            .bin_dir(bin_dir)
            .name(format!("bench-{sys}")),
    )?;
    lab.start_responders()?;
    let sampler = Sampler::start(&lab)?;
    let prober = Prober::start(&lab)?;
    let ctx = Ctx {
        sys,
        lab: &lab,
        sampler: &sampler,
        prober: &prober,
        preferred: lab.lb_nodes()[0].name.clone(),
        raw,
    };
    for n in lab.nodes() {
        ctx.start_system(&n.name)?;
    }
    let h = ctx.wait_stable(Duration::from_secs(90))?;
    eprintln!("kubeha-lab bench: {sys}: `{h}` holds the VIP, starting trials");
    for &fault in &args.faults {
        if fault == Fault::Drain && !sys.is_kubeha() {
            continue;
        }
        if fault == Fault::Loss {
            for &pct in &args.loss_pct {
                let r = ctx.loss_phase(pct, Duration::from_secs_f64(args.loss_secs));
                eprintln!("  {}", r.line());
                results.loss.push(r);
            }
            continue;
        }
        let n = if fault == Fault::Partition {
            partition_trials
        } else {
            args.trials
        };
        for i in 1..=n {
            let t = ctx.trial(fault, i, rng, args)?;
            eprintln!("  {}", t.line());
            results.trials.push(t);
        }
    }
    drop(prober);
    drop(sampler);
    lab.down();
    Ok(())
}

impl Trial {
    /// Time with two live holders: the larger of what the samples and the
    /// notifications show.
    pub fn two_live(&self) -> f64 {
        self.multi_live_ms.max(self.overlap_live_ms)
    }

    fn line(&self) -> String {
        let f = |x: Option<f64>| x.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into());
        let mut s = format!(
            "{} {} #{:02}: {} -> {} in {} ms (outage {:.0} ms, {} failed probes), two holders {:.0} ms (live {:.1}, {} VIP events)",
            self.system,
            self.fault,
            self.trial,
            self.old,
            self.new.as_deref().unwrap_or("nobody"),
            f(self.failover_ms),
            self.outage_ms,
            self.failed_probes,
            self.multi_ms.max(self.overlap_ms),
            self.two_live(),
            self.vip_events
        );
        if self.fault == "partition" {
            let _ = write!(
                s,
                "; after heal: steady on {} after {} ms, ARP ok {:?}",
                self.final_holder.as_deref().unwrap_or("?"),
                f(self.reconverge_ms),
                self.arp_ok_at_end
            );
        }
        if self.stale_vip_on_old {
            s.push_str("; killed node kept the VIP");
        }
        let _ = write!(
            s,
            " [settle {:.1} s, restore {:.1} s]",
            self.settle_ms / 1000.0,
            self.restore_ms / 1000.0
        );
        if let Some(e) = &self.error {
            let _ = write!(s, "; ERROR {e}");
        }
        s
    }
}

impl LossRun {
    fn line(&self) -> String {
        let mut s = format!(
            "{} loss {}% for {:.0} s: {} holder changes ({} -> {}), no holder {:.0} ms, two holders {:.0} ms, {}/{} probes failed (longest outage {:.0} ms), {} VIP events, {} packets dropped",
            self.system,
            self.loss_pct,
            self.secs,
            self.holder_changes,
            self.start_holder,
            self.end_holders.join("+"),
            self.no_holder_ms,
            self.two_holders_ms,
            self.probe_failures,
            self.probes,
            self.max_outage_ms,
            self.vip_events,
            self.dropped_packets
        );
        if let Some(e) = &self.error {
            let _ = write!(s, "; ERROR {e}");
        }
        s
    }
}

impl Ctx<'_> {
    /// Hold `pct` % loss on every lb node for `hold`, starting from a
    /// stable holder; the rules are removed before this returns.
    fn loss_phase(&self, pct: u8, hold: Duration) -> LossRun {
        let mut r = LossRun {
            system: self.sys.as_str().into(),
            loss_pct: pct,
            ..Default::default()
        };
        match self.wait_stable(Duration::from_secs(90)) {
            Ok(h) => r.start_holder = h,
            Err(e) => {
                r.error = Some(e.to_string());
                return r;
            }
        }
        let nss: Vec<String> = self.lab.lb_nodes().iter().map(|n| n.ns.clone()).collect();
        let mut set_err = None;
        for ns in &nss {
            if let Err(e) = super::loss::set(ns, pct) {
                set_err = Some(e.to_string());
                break;
            }
        }
        let t0 = Instant::now();
        if set_err.is_none() {
            std::thread::sleep(hold);
        }
        let end = Instant::now();
        for ns in &nss {
            r.dropped_packets += super::loss::dropped(ns).unwrap_or(0);
        }
        for ns in &nss {
            if let Err(e) = super::loss::clear(ns)
                && set_err.is_none()
            {
                set_err = Some(e.to_string());
            }
        }
        r.error = set_err;
        // Let the last probes finish so the window is complete.
        std::thread::sleep(super::prober::PROBE_TIMEOUT + Duration::from_millis(10));
        r.secs = (end - t0).as_secs_f64();
        let samples = self.sampler.window(t0, Some(end));
        let sum = super::sampler::summarize(&samples, end);
        r.holder_changes = holder_changes(samples.iter().map(|x| x.holders));
        r.no_holder_ms = ms(sum.none_time);
        r.two_holders_ms = ms(sum.multi_time.max(self.sampler.event_overlap(t0, end, 0)));
        r.vip_events = self.sampler.events(t0, Some(end)).len();
        r.end_holders = samples
            .last()
            .map(|x| self.sampler.holder_names(x.holders))
            .unwrap_or_default();
        let probes = self.prober.window(t0, Some(end));
        r.probes = probes.len();
        r.probe_failures = probes.iter().filter(|p| !p.outcome.is_ok()).count();
        r.max_outage_ms = ms(max_ok_gap(&probes, t0, end));
        self.save_loss_raw(&r, t0, end);
        r
    }

    fn save_loss_raw(&self, r: &LossRun, t0: Instant, end: Instant) {
        let rel = |x: Instant| ms(x.saturating_duration_since(t0));
        let mut s = format!(
            "# {} loss {}% t0=loss on; columns: seq start_ms end_ms outcome\n",
            r.system, r.loss_pct
        );
        let mut last = u64::MAX;
        for x in self.sampler.window(t0, Some(end)) {
            if x.holders != last {
                let _ = writeln!(
                    s,
                    "# vip {:.1} ms holders={}",
                    rel(x.t),
                    self.sampler.holder_names(x.holders).join(",")
                );
                last = x.holders;
            }
        }
        for p in self.prober.window(t0, Some(end)) {
            if !p.outcome.is_ok() {
                let _ = writeln!(
                    s,
                    "{}\t{:.1}\t{:.1}\t{}",
                    p.seq,
                    rel(p.start),
                    rel(p.end),
                    p.outcome.label()
                );
            }
        }
        let path = self
            .raw
            .join(format!("{}-loss-{:02}.tsv", r.system, r.loss_pct));
        if let Err(e) = std::fs::write(&path, s) {
            eprintln!("kubeha-lab bench: {}: {e}", path.display());
        }
    }

    fn node(&self, name: &str) -> Result<super::Node<'_>> {
        self.lab.node(name)
    }

    fn start_system(&self, node: &str) -> Result<()> {
        let n = self.node(node)?;
        if self.sys.is_kubeha() {
            n.start()
        } else {
            n.start_keepalived(self.sys.ka_setting())
        }
    }

    /// The processes run and (kubeha) every agent agrees that `holder`
    /// holds the VIP, sees all members and has quorum.
    fn system_ok(&self, holder: &str) -> bool {
        for n in self.lab.nodes() {
            let Ok(node) = self.node(&n.name) else {
                return false;
            };
            if self.sys.is_kubeha() {
                if node.agent_pid().is_none() {
                    return false;
                }
                let Ok(st) = node.status() else {
                    return false;
                };
                let alive = st.members.iter().filter(|m| m.alive).count();
                if alive != self.lab.nodes().len()
                    || !st.quorum.ok
                    || st.vip.as_ref().and_then(|v| v.holder.as_deref()) != Some(holder)
                {
                    return false;
                }
            } else if node.keepalived_pid().is_none() {
                return false;
            }
        }
        true
    }

    /// Wait for one stable holder that the client reaches: the preferred
    /// (highest priority) node, or any node that stays the holder for 5 s
    /// (so a pending preemption back to the preferred node does not fall
    /// into the next trial).
    fn wait_stable(&self, timeout: Duration) -> Result<String> {
        let settle_max = Duration::from_secs(5);
        let start = Instant::now();
        let mut cand: Option<(String, Instant)> = None;
        loop {
            let h = self
                .sampler
                .stable_single(Duration::from_millis(500))
                .filter(|h| self.prober.stable_on(h, Duration::from_millis(500)))
                .filter(|h| self.system_ok(h));
            match h {
                Some(h) => {
                    let since = match &cand {
                        Some((c, s)) if *c == h => *s,
                        _ => {
                            cand = Some((h.clone(), Instant::now()));
                            Instant::now()
                        }
                    };
                    if h == self.preferred || since.elapsed() >= settle_max {
                        return Ok(h);
                    }
                }
                None => cand = None,
            }
            if start.elapsed() >= timeout {
                return Err(LabError::Timeout {
                    what: format!(
                        "one stable VIP holder for {} (interfaces: {:?}, client last answered by {:?})",
                        self.sys,
                        self.sampler.holders(),
                        self.prober.last_answer()
                    ),
                    secs: timeout.as_secs_f64(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn inject(&self, fault: Fault, old: &str) -> Result<()> {
        let n = self.node(old)?;
        match fault {
            Fault::Kill | Fault::KillGroup => {
                let sent = if !self.sys.is_kubeha() {
                    n.kill_keepalived_nowait()
                } else if fault == Fault::KillGroup {
                    n.kill_agent_group_nowait()
                } else {
                    n.signal_agent_nowait(libc::SIGKILL)
                };
                n.stop_responder();
                if !sent {
                    return Err(LabError::node(old, "nothing to kill"));
                }
            }
            Fault::Cut | Fault::Partition => n.cut()?,
            Fault::Carrier => n.cut_carrier()?,
            Fault::Handover => {
                let sent = if self.sys.is_kubeha() {
                    n.signal_agent_nowait(libc::SIGTERM)
                } else {
                    n.term_keepalived_nowait()
                };
                if !sent {
                    return Err(LabError::node(old, "nothing to stop"));
                }
            }
            Fault::Drain => {
                n.drain()?;
            }
            Fault::Loss => {
                return Err(LabError::node(old, "`loss` runs as phases, not trials"));
            }
        }
        Ok(())
    }

    fn restore(&self, fault: Fault, old: &str) -> Result<()> {
        let n = self.node(old)?;
        match fault {
            Fault::Kill | Fault::KillGroup | Fault::Handover => {
                let grace = if fault != Fault::Handover {
                    Duration::from_secs(2)
                } else {
                    Duration::from_secs(15)
                };
                if self.sys.is_kubeha() {
                    if n.agent_pid().is_some() {
                        n.wait_agent_exit(grace)?;
                    }
                } else if n.keepalived_pid().is_some() {
                    n.wait_keepalived_gone(grace)?;
                }
                self.start_system(old)?;
                if !n.responder_running() {
                    n.start_responder()?;
                }
            }
            Fault::Cut | Fault::Carrier => {
                n.heal()?;
                // A stale client ARP entry after a split takes ~30 s to
                // expire (measured by `partition`); start the next trial
                // without that wait.
                self.lab.client_neigh_flush()?;
            }
            Fault::Drain => {
                n.undrain()?;
            }
            Fault::Partition | Fault::Loss => {}
        }
        Ok(())
    }

    fn trial(&self, fault: Fault, idx: usize, rng: &mut Rng, args: &BenchArgs) -> Result<Trial> {
        let t_settle = Instant::now();
        let old = self.wait_stable(Duration::from_secs(90))?;
        let mut t = Trial {
            system: self.sys.as_str().into(),
            fault: fault.as_str().into(),
            trial: idx,
            old: old.clone(),
            settle_ms: ms(t_settle.elapsed()),
            ..Default::default()
        };
        let phase = rng.below(self.sys.phase_max());
        t.phase_ms = ms(phase);
        std::thread::sleep(phase);
        let t0 = Instant::now();
        if let Err(e) = self.inject(fault, &old) {
            t.error = Some(e.to_string());
            // Best effort back to a known state; the next trial waits for it.
            let _ = self.node(&old).and_then(|n| n.heal());
            return Ok(t);
        }
        t.inject_ms = ms(t0.elapsed());
        let part = Duration::from_secs_f64(args.partition_secs);
        let limit = if fault == Fault::Partition {
            part
        } else if self.sys.is_fast() {
            Duration::from_secs(10)
        } else {
            Duration::from_secs(20)
        };
        let first = self.prober.wait_ok_where(t0, limit, |n| n != old);
        let observe = if self.sys.is_fast() {
            Duration::from_millis(500)
        } else {
            Duration::from_millis(1000)
        };
        let mut end;
        if fault == Fault::Partition {
            if let Some(rest) = (t0 + part).checked_duration_since(Instant::now()) {
                std::thread::sleep(rest);
            }
            let t_heal = Instant::now();
            t.cut_ms = Some(ms(t_heal - t0));
            self.node(&old)?.heal()?;
            self.after_heal(&mut t, t_heal, Duration::from_secs_f64(args.heal_wait))?;
            end = Instant::now();
        } else {
            std::thread::sleep(observe);
            end = Instant::now();
        }
        // Let the last probes finish so the window is complete.
        std::thread::sleep(super::prober::PROBE_TIMEOUT + Duration::from_millis(10));
        end = end.max(t0);
        let probes = self.prober.window(t0, Some(end));
        let samples = self.sampler.window(t0, Some(end));
        if let Some(f) = &first {
            t.failover_ms = Some(ms(f.end - t0));
            t.new = f.outcome.node().map(str::to_string);
            t.failed_probes = probes
                .iter()
                .filter(|p| !p.outcome.is_ok() && p.start < f.end)
                .count();
            t.old_answers_after_switch = probes
                .iter()
                .filter(|p| p.start > f.end && p.outcome.node() == Some(old.as_str()))
                .count();
            t.errors_after_switch = probes
                .iter()
                .filter(|p| p.start > f.end && !p.outcome.is_ok())
                .count();
        }
        t.outage_ms = ms(max_ok_gap(&probes, t0, end));
        let sum = super::sampler::summarize(&samples, end);
        t.multi_ms = ms(sum.multi_time);
        t.max_holders = sum.max_holders;
        let old_bit = self
            .sampler
            .names()
            .iter()
            .position(|n| *n == old)
            .map(|i| 1u64 << i)
            .unwrap_or(0);
        let is_kill = matches!(fault, Fault::Kill | Fault::KillGroup);
        let killed = if is_kill { old_bit } else { 0 };
        t.overlap_ms = ms(self.sampler.event_overlap(t0, end, 0));
        t.overlap_live_ms = ms(self.sampler.event_overlap(t0, end, killed));
        t.vip_events = self.sampler.events(t0, Some(end)).len();
        if is_kill {
            let live: Vec<_> = samples
                .iter()
                .map(|s| super::Sample {
                    holders: s.holders & !old_bit,
                    ..*s
                })
                .collect();
            t.multi_live_ms = ms(super::sampler::summarize(&live, end).multi_time);
            t.stale_vip_on_old = samples.last().is_some_and(|s| s.holders & old_bit != 0);
        } else {
            t.multi_live_ms = t.multi_ms;
        }
        self.save_raw(&t, t0, end);
        let t_restore = Instant::now();
        self.restore(fault, &old)?;
        t.restore_ms = ms(t_restore.elapsed());
        Ok(t)
    }

    /// After a partition heals: wait (up to 60 s) until one node holds the
    /// VIP and the client is answered by it steadily for a second; watch
    /// the client's ARP entry meanwhile.
    fn after_heal(&self, t: &mut Trial, t_heal: Instant, limit: Duration) -> Result<()> {
        let steady = Duration::from_secs(1);
        let mut arp_wrong_last: Option<Instant> = None;
        let mut final_holder = None;
        while t_heal.elapsed() < limit {
            let holders = self.sampler.holders();
            if let Ok(ne) = self.lab.client_neigh()
                && let Some(node) = &ne.node
                && !holders.contains(node)
            {
                arp_wrong_last = Some(Instant::now());
            }
            if let Some(h) = self.sampler.stable_single(steady)
                && self.prober.stable_on(&h, steady)
                && t_heal.elapsed() >= steady
            {
                final_holder = Some(h);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let end = Instant::now();
        let probes = self.prober.window(t_heal, Some(end));
        t.max_gap_after_heal_ms = Some(ms(max_ok_gap(&probes, t_heal, end)));
        t.arp_wrong_ms = Some(arp_wrong_last.map(|x| ms(x - t_heal)).unwrap_or(0.0));
        if let Some(h) = &final_holder {
            // Start of the final unbroken run of answers from `h`.
            let mut start = None;
            for p in probes.iter().rev() {
                if p.outcome.node() == Some(h.as_str()) {
                    start = Some(p.end);
                } else {
                    break;
                }
            }
            t.reconverge_ms = start.map(|s| ms(s.saturating_duration_since(t_heal)));
            t.arp_ok_at_end = self
                .lab
                .client_neigh()
                .ok()
                .map(|ne| ne.node.as_deref() == Some(h.as_str()));
        } else {
            t.arp_ok_at_end = Some(false);
        }
        t.final_holder = final_holder;
        Ok(())
    }

    fn save_raw(&self, t: &Trial, t0: Instant, end: Instant) {
        let from = t0.checked_sub(Duration::from_millis(500)).unwrap_or(t0);
        let rel = |x: Instant| {
            if x >= t0 { ms(x - t0) } else { -ms(t0 - x) }
        };
        let mut s = format!(
            "# {} {} #{} old={} t0=fault; columns: seq start_ms end_ms outcome\n",
            t.system, t.fault, t.trial, t.old
        );
        let mut last = u64::MAX;
        for x in self.sampler.window(from, Some(end)) {
            if x.holders != last {
                let _ = writeln!(
                    s,
                    "# vip {:.1} ms holders={}",
                    rel(x.t),
                    self.sampler.holder_names(x.holders).join(",")
                );
                last = x.holders;
            }
        }
        for e in self.sampler.events(from, Some(end)) {
            let _ = writeln!(
                s,
                "# event {:.2} ms {} {}",
                rel(e.t),
                self.sampler
                    .names()
                    .get(e.node)
                    .map(String::as_str)
                    .unwrap_or("?"),
                if e.present {
                    "added the VIP"
                } else {
                    "removed the VIP"
                }
            );
        }
        for p in self.prober.window(from, Some(end)) {
            let _ = writeln!(
                s,
                "{}\t{:.1}\t{:.1}\t{}",
                p.seq,
                rel(p.start),
                rel(p.end),
                p.outcome.label()
            );
        }
        let path = self
            .raw
            .join(format!("{}-{}-{:02}.tsv", t.system, t.fault, t.trial));
        if let Err(e) = std::fs::write(&path, s) {
            eprintln!("kubeha-lab bench: {}: {e}", path.display());
        }
    }
}

fn fmt_stats(s: &Option<Stats>) -> (String, String, String) {
    match s {
        Some(s) => (
            format!("{:.0}", s.median),
            format!("{:.0}", s.p95),
            format!("{:.0}", s.max),
        ),
        None => ("-".into(), "-".into(), "-".into()),
    }
}

/// The Markdown report.
pub fn report(r: &Results, args: &BenchArgs) -> String {
    let mut m = String::new();
    let e = &r.env;
    let _ = writeln!(m, "# VIP failover: kubeha and keepalived in the same lab\n");
    let _ = writeln!(
        m,
        "- date {}, {}, {} CPUs, {}\n- command: `{}` (seed {}; {:.0} s wall)",
        e.date, e.kernel, e.cpus, e.keepalived, e.command, e.seed, r.wall_secs
    );
    let _ = writeln!(
        m,
        "- lab: 3 lb nodes (priorities 150/100/50) + a client, network namespaces on one bridge, VIP 198.18.0.10/32; a TCP responder on VIP:6443 in every node"
    );
    let _ = writeln!(
        m,
        "- prober: TCP connect from the client to VIP:6443 every 10 ms, 50 ms timeout, overlapping; sampler: netlink address dump of every node every 10 ms, plus every node's address-change notifications (two holders = the longer of the two views)"
    );
    let _ = writeln!(
        m,
        "- kubeha: `kubeha-agent`, timing `default` / `fast`, voters = the 3 nodes; keepalived: VRRPv2 `advert_int 1` / VRRPv3 `advert_int 0.1`, all `state BACKUP`, multicast"
    );
    let _ = writeln!(
        m,
        "- fault at a random phase (0-1 s default, 0-250 ms fast); failover = fault -> end of the first probe answered by another node; outage = longest stretch without a successful probe after the fault"
    );
    for (s, why) in &r.skipped {
        let _ = writeln!(m, "- **{s} not measured**: {why}");
    }
    let _ = writeln!(m, "\n## Failover as the client sees it (ms)\n");
    let _ = writeln!(
        m,
        "| fault | system | N | median | p95 | max | kubeha / keepalived (median) | outage median | two live holders: trials / max ms | killed node kept VIP | no failover | errors |"
    );
    let _ = writeln!(m, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for s in r.summary.iter().filter(|s| s.fault != "partition") {
        let (med, p95, max) = fmt_stats(&s.failover_ms);
        let ratio = s
            .ratio_to_keepalived
            .map(|x| format!("{x:.2}"))
            .unwrap_or_else(|| "-".into());
        let outage = s
            .outage_ms
            .as_ref()
            .map(|x| format!("{:.0}", x.median))
            .unwrap_or_else(|| "-".into());
        let multi_max = s
            .multi_live_ms
            .as_ref()
            .map(|x| format!("{:.0}", x.max))
            .unwrap_or_else(|| "-".into());
        let stale = if s.fault.starts_with("kill") {
            format!("{}/{}", s.stale_vip_on_old, s.n)
        } else {
            "-".into()
        };
        let _ = writeln!(
            m,
            "| {} | {} | {} | {med} | {p95} | {max} | {ratio} | {outage} | {} / {multi_max} | {stale} | {} | {} |",
            s.fault, s.system, s.n, s.trials_with_two_live_holders, s.no_failover, s.errors
        );
    }
    if r.summary.iter().any(|s| s.fault == "partition") {
        let _ = writeln!(
            m,
            "\n## Partition: the holder cut off for {:.0} s, then healed\n",
            args.partition_secs
        );
        let _ = writeln!(
            m,
            "| system | N | two holders ms median / max | trials with two holders | client failover during the cut, median ms | after heal: steady on one holder, ms median / p95 / max | kubeha / keepalived | client ARP entry wrong at end | trials > 1 s to steady |"
        );
        let _ = writeln!(m, "|---|---|---|---|---|---|---|---|---|");
        for s in r.summary.iter().filter(|s| s.fault == "partition") {
            let multi = s
                .multi_ms
                .as_ref()
                .map(|x| format!("{:.0} / {:.0}", x.median, x.max))
                .unwrap_or_else(|| "-".into());
            let fo = s
                .failover_ms
                .as_ref()
                .map(|x| format!("{:.0}", x.median))
                .unwrap_or_else(|| "-".into());
            let (med, p95, max) = fmt_stats(&s.reconverge_ms);
            let ratio = s
                .ratio_to_keepalived
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                m,
                "| {} | {} | {multi} | {}/{} | {fo} | {med} / {p95} / {max} | {ratio} | {}/{} | {}/{} |",
                s.system,
                s.n,
                s.trials_with_two_live_holders,
                s.n,
                s.arp_wrong_at_end,
                s.n,
                s.slow_reconverge,
                s.n
            );
        }
    }
    if !r.loss.is_empty() {
        let _ = writeln!(
            m,
            "\n## Lossy links: random UDP and VRRP loss on every lb node, {:.0} s per level\n",
            args.loss_secs
        );
        let _ = writeln!(
            m,
            "| system | loss % | held s | holder changes | time without a holder ms | time with two holders ms | failed probes / probes | longest outage ms | VIP events | packets dropped | holder at start -> end | error |"
        );
        let _ = writeln!(m, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        let mut rows: Vec<&LossRun> = r.loss.iter().collect();
        rows.sort_by_key(|x| (x.loss_pct, x.system.clone()));
        for x in rows {
            let _ = writeln!(
                m,
                "| {} | {} | {:.0} | {} | {:.0} | {:.0} | {} / {} | {:.0} | {} | {} | {} -> {} | {} |",
                x.system,
                x.loss_pct,
                x.secs,
                x.holder_changes,
                x.no_holder_ms,
                x.two_holders_ms,
                x.probe_failures,
                x.probes,
                x.max_outage_ms,
                x.vip_events,
                x.dropped_packets,
                x.start_holder,
                if x.end_holders.is_empty() {
                    "none".to_string()
                } else {
                    x.end_holders.join("+")
                },
                x.error.as_deref().unwrap_or("-")
            );
        }
    }
    let _ = writeln!(m, "\n## Faults\n");
    for f in &args.faults {
        let _ = writeln!(m, "- `{}`: {}", f.as_str(), f.describe());
    }
    let _ = writeln!(
        m,
        "\nA killed process cannot remove its address: the killed node's kernel keeps the VIP (and answers ARP for it) until something removes it, so \"two live holders\" leaves the killed node out and the next column counts it. For `cut`, the observation (1 s default, 0.5 s fast) ends with the heal, which bounds a split brain there; `partition` shows its full length. Every probe of every trial is in `raw/`."
    );
    m
}

/// Run one-system smoke benchmarks from tests: `systems` x `faults`, `n`
/// trials each, output in `out`.
pub fn quick(systems: &[System], faults: &[Fault], n: usize, out: &Path) -> Result<Results> {
    run(&BenchArgs {
        trials: n,
        partition_trials: Some(n),
        systems: systems.to_vec(),
        faults: faults.to_vec(),
        partition_secs: 2.0,
        out: Some(out.to_path_buf()),
        seed: Some(1),
        bin_dir: None,
        heal_wait: 60.0,
        loss_pct: vec![10, 30, 50],
        loss_secs: 60.0,
        ..BenchArgs::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let xs: Vec<f64> = (1..=20).map(f64::from).collect();
        let s = stats(&xs).unwrap();
        assert_eq!(s.median, 10.5);
        assert_eq!(s.p95, 19.0);
        assert_eq!(s.max, 20.0);
        assert_eq!(stats(&[3.0]).unwrap().p95, 3.0);
        assert!(stats(&[]).is_none());
    }

    #[test]
    fn systems_parse_and_pair() {
        assert_eq!("kubeha-fast".parse::<System>().unwrap(), System::KubehaFast);
        assert!("kubeha".parse::<System>().is_err());
        assert_eq!(System::KubehaFast.baseline(), System::KeepalivedFast);
        assert_eq!(System::KubehaDefault.baseline(), System::KeepalivedDefault);
    }

    #[test]
    fn ratio_uses_the_same_profile() {
        let mk = |sys: &str, fo: f64| Trial {
            system: sys.into(),
            fault: "kill".into(),
            failover_ms: Some(fo),
            ..Default::default()
        };
        let trials = vec![
            mk("kubeha-default", 600.0),
            mk("keepalived-default", 3000.0),
            mk("kubeha-fast", 200.0),
            mk("keepalived-fast", 300.0),
        ];
        let s = summarize(&trials, &System::ALL, &[Fault::Kill]);
        let get = |n: &str| s.iter().find(|x| x.system == n).unwrap();
        assert!((get("kubeha-default").ratio_to_keepalived.unwrap() - 0.2).abs() < 1e-9);
        assert!((get("kubeha-fast").ratio_to_keepalived.unwrap() - 0.666).abs() < 1e-3);
        assert!(get("keepalived-fast").ratio_to_keepalived.is_none());
    }

    #[test]
    fn holder_changes_skip_empty_sets() {
        assert_eq!(holder_changes([]), 0);
        assert_eq!(holder_changes([0b001, 0b001, 0, 0b001]), 0);
        assert_eq!(holder_changes([0b001, 0, 0, 0b010]), 1);
        assert_eq!(holder_changes([0b001, 0b011, 0b010]), 2);
        assert_eq!(holder_changes([0, 0b100, 0b001, 0b100]), 2);
    }

    #[test]
    fn loss_rows_in_the_report() {
        let r = Results {
            env: Env {
                date: "d".into(),
                kernel: "k".into(),
                cpus: 2,
                keepalived: "ka".into(),
                seed: 1,
                trials: 0,
                partition_trials: 0,
                partition_secs: 5.0,
                command: "c".into(),
            },
            systems: vec!["kubeha-default".into()],
            faults: vec!["loss".into()],
            skipped: BTreeMap::new(),
            trials: vec![],
            summary: vec![],
            loss: vec![LossRun {
                system: "kubeha-default".into(),
                loss_pct: 30,
                secs: 30.0,
                start_holder: "n1".into(),
                end_holders: vec!["n2".into()],
                holder_changes: 1,
                no_holder_ms: 120.0,
                probes: 3000,
                probe_failures: 12,
                ..Default::default()
            }],
            wall_secs: 1.0,
        };
        let args = BenchArgs {
            faults: vec![Fault::Loss],
            loss_secs: 30.0,
            ..Default::default()
        };
        let md = report(&r, &args);
        assert!(md.contains("## Lossy links"), "{md}");
        assert!(
            md.contains("| kubeha-default | 30 | 30 | 1 | 120 | 0 | 12 / 3000 |"),
            "{md}"
        );
        assert!(md.contains("- `loss`: nftables"), "{md}");
    }
}
