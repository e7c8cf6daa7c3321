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
//!
//! Here: systems, faults, arguments and the run; `trial.rs` runs trials and
//! loss levels in one system's lab, `results.rs` holds what they yield and
//! the summary, `report.rs` writes the Markdown report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kubeha_core::timing::Profile;
use serde::Serialize;

use super::error::{LabError, Result};
use super::rng::Rng;
use super::{KaSetting, Lab, LabSpec, Prober, Sampler, Topology, cmd};

mod report;
mod results;
mod trial;

pub use report::report;
use results::summarize;
pub use results::{LossRun, Results, Stats, Summary, Trial, holder_changes, stats};
use trial::Ctx;

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
    /// Where kubeha-agent and kubeha-guardian are (default: next to kubeha-lab).
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
    fn systems_parse_and_pair() {
        assert_eq!("kubeha-fast".parse::<System>().unwrap(), System::KubehaFast);
        assert!("kubeha".parse::<System>().is_err());
        assert_eq!(System::KubehaFast.baseline(), System::KeepalivedFast);
        assert_eq!(System::KubehaDefault.baseline(), System::KeepalivedDefault);
    }
}
