//! `kubeha-sim`: run many seeded simulations of kubeha's decision core, or
//! time failovers in quiet clusters (`kubeha-sim bench`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use kubeha_core::timing::Profile;
use kubeha_sim::{BenchKind, Mutation, Opts, Topology, percentiles, profile_for};

#[derive(Parser, Debug)]
#[command(
    name = "kubeha-sim",
    version,
    about = "Deterministic simulator for kubeha's decision core"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Time failovers and handovers in quiet clusters.
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Number of seeds to run.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Timing profile; without it even seeds run `default`, odd seeds `fast`.
    #[arg(long, value_enum)]
    profile: Option<ProfileArg>,
    /// Print the trace of the first seed (and run only that one).
    #[arg(short, long)]
    verbose: bool,
    /// Worker threads (default: available cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Break a rule on purpose, to see the checkers catch it.
    #[arg(long, value_enum)]
    mutation: Option<MutationArg>,
    /// Wipe voters' state even while another voter is without its state
    /// (violates the documented amnesia assumption).
    #[arg(long)]
    ignore_amnesia_assumption: bool,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Trials per figure.
    #[arg(long, default_value_t = 200)]
    trials: u64,
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// Profile; both when omitted.
    #[arg(long, value_enum)]
    profile: Option<ProfileArg>,
    #[arg(long, value_enum, default_value_t = TopologyArg::Guide)]
    topology: TopologyArg,
    /// Instead: failovers with a cloud VIP (provider `digitalocean`,
    /// world/cloud.rs) in the guide topology, `default` profile unless
    /// `--profile` says otherwise.
    #[arg(long)]
    cloud: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProfileArg {
    Default,
    Fast,
}

impl From<ProfileArg> for Profile {
    fn from(p: ProfileArg) -> Profile {
        match p {
            ProfileArg::Default => Profile::Default,
            ProfileArg::Fast => Profile::Fast,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum MutationArg {
    IgnoreExpiry,
    DropPersist,
    NoFence,
    NoLifetime,
    NoCloudGuard,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum TopologyArg {
    Guide,
    Compact3,
}

/// `kubeha-sim bench --cloud`: until the cloud routes the Reserved IP to a
/// working holder, with the action latency of DigitalOcean's documentation
/// example (11 s, not a measurement) and with 0 s.
fn cloud_bench(b: BenchArgs) -> ExitCode {
    use kubeha_sim::{CloudBench, CloudMode, World};
    let profile: Profile = b.profile.map_or(Profile::Default, Into::into);
    let timeout = Duration::from_secs(60);
    let mut bad = false;
    println!(
        "| profile | scenario | action | trials | until the IP is on a working holder: median | p95 | max |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (kind, label) in [
        (CloudBench::Crash, "holder crash"),
        (
            CloudBench::Failing(CloudMode::Permanent),
            "holder's assignment gets 401 (permanent)",
        ),
        (
            CloudBench::Failing(CloudMode::Transient),
            "holder's assignment never completes (5xx)",
        ),
    ] {
        for action in [Duration::ZERO, Duration::from_secs(11)] {
            let mut v = Vec::new();
            for seed in b.first_seed..b.first_seed + b.trials {
                match World::cloud_bench(seed, profile, kind, action, timeout) {
                    Ok(d) => v.push(d),
                    Err(e) => {
                        eprintln!("{label}, action {action:?}, seed {seed}: {e}");
                        bad = true;
                    }
                }
            }
            if let Some((m, p95, max)) = percentiles(v.clone()) {
                println!(
                    "| {} | {label} | {} s | {} | {} | {} | {} |",
                    profile.as_str(),
                    action.as_secs(),
                    v.len(),
                    ms(m),
                    ms(p95),
                    ms(max)
                );
            }
        }
    }
    if bad {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Some(Cmd::Bench(b)) => bench(b),
        None => run(cli.run),
    }
}

fn run(a: RunArgs) -> ExitCode {
    let forced: Option<Profile> = a.profile.map(Into::into);
    let mutation = a.mutation.map(|m| match m {
        MutationArg::IgnoreExpiry => Mutation::IgnoreExpiry,
        MutationArg::DropPersist => Mutation::DropPersist,
        MutationArg::NoFence => Mutation::NoFence,
        MutationArg::NoLifetime => Mutation::NoLifetime,
        MutationArg::NoCloudGuard => Mutation::NoCloudGuard,
    });
    let make = |profile: Profile| Opts {
        profile,
        mutation,
        trace: false,
        respect_amnesia: !a.ignore_amnesia_assumption,
    };
    let replay = |seed: u64| {
        let mut cmd = format!(
            "kubeha-sim --seeds 1 --first-seed {seed} --profile {} -v",
            profile_for(seed, forced).as_str()
        );
        if let Some(m) = a.mutation {
            cmd.push_str(&format!(
                " --mutation {}",
                m.to_possible_value().unwrap().get_name()
            ));
        }
        if a.ignore_amnesia_assumption {
            cmd.push_str(" --ignore-amnesia-assumption");
        }
        cmd
    };
    if a.verbose {
        let seed = a.first_seed;
        let opts = Opts {
            trace: true,
            ..make(profile_for(seed, forced))
        };
        let o = kubeha_sim::run_seed(seed, &opts);
        for line in &o.trace {
            println!("{line}");
        }
        println!(
            "seed {seed}: {} events, vip after heal {:?}, bootstrap after heal {:?}",
            o.events, o.vip_after_heal, o.boot_after_heal
        );
        let (p, f) = if o.ok() { (1, 0) } else { (0, 1) };
        println!("{p} passed, {f} failed");
        return if o.ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let jobs = a
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let started = Instant::now();
    let outcomes = kubeha_sim::run_many(a.first_seed, a.seeds, jobs, forced, make);
    let elapsed = started.elapsed();
    let mut failed = 0u64;
    for o in &outcomes {
        if o.ok() {
            continue;
        }
        failed += 1;
        println!(
            "seed {} FAILED ({}, {}): {}",
            o.seed,
            o.topology,
            profile_for(o.seed, forced).as_str(),
            o.violations
                .iter()
                .chain(o.liveness.iter())
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        );
        println!("  replay: {}", replay(o.seed));
    }
    let events: u64 = outcomes.iter().map(|o| o.events).sum();
    let crashes: u64 = outcomes.iter().map(|o| o.stats.crashes).sum();
    let wipes: u64 = outcomes.iter().map(|o| o.stats.voter_wipes).sum();
    let committed_wipes: u64 = outcomes.iter().map(|o| o.stats.committed_wipes).sum();
    let inits: usize = outcomes.iter().map(|o| o.inits).sum();
    let cloud_runs: u64 = outcomes.iter().map(|o| o.stats.cloud_runs).sum();
    let cloud_faults: u64 = outcomes.iter().map(|o| o.stats.cloud_faults).sum();
    let release_runs: u64 = outcomes.iter().map(|o| o.stats.release_runs).sum();
    let releases: u64 = outcomes.iter().map(|o| o.stats.releases).sum();
    for p in [Profile::Default, Profile::Fast] {
        let mine = || {
            outcomes
                .iter()
                .filter(move |o| profile_for(o.seed, forced) == p)
        };
        let vip: Vec<Duration> = mine().filter_map(|o| o.vip_after_heal).collect();
        let boot: Vec<Duration> = mine().filter_map(|o| o.boot_after_heal).collect();
        if let (Some(v), Some(b)) = (percentiles(vip), percentiles(boot)) {
            println!(
                "{}: after heal, VIP holder median {} p95 {} max {}; bootstrap complete median {} p95 {} max {}",
                p.as_str(),
                ms(v.0),
                ms(v.1),
                ms(v.2),
                ms(b.0),
                ms(b.1),
                ms(b.2)
            );
        }
    }
    println!(
        "{} seeds, {} events, {} kubeadm init runs, {} crashes, {} voter state wipes ({} with a committed lock vote), {:.1} s on {} threads",
        outcomes.len(),
        events,
        inits,
        crashes,
        wipes,
        committed_wipes,
        elapsed.as_secs_f64(),
        jobs
    );
    println!(
        "{cloud_runs} runs with a cloud VIP (world/cloud.rs), {cloud_faults} cloud faults that moved the lease"
    );
    println!(
        "{release_runs} runs whose first init node is destroyed mid-init (world/release.rs), {releases} operator releases"
    );
    println!(
        "{} passed, {} failed",
        outcomes.len() as u64 - failed,
        failed
    );
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn bench(b: BenchArgs) -> ExitCode {
    if b.cloud {
        return cloud_bench(b);
    }
    let profiles: Vec<Profile> = match b.profile {
        Some(p) => vec![p.into()],
        None => vec![Profile::Default, Profile::Fast],
    };
    let topology = match b.topology {
        TopologyArg::Guide => Topology::Guide,
        TopologyArg::Compact3 => Topology::Compact3,
    };
    let mut bad = false;
    println!(
        "| profile | scenario | trials | failover median | p95 | max | gap without VIP median | p95 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for p in profiles {
        for (kind, label) in [
            (BenchKind::Crash, "holder crash"),
            (BenchKind::Partition, "holder partitioned"),
            (BenchKind::Drain, "planned handover (drain)"),
        ] {
            let (fail, gap, problems) =
                kubeha_sim::bench(p, topology, kind, b.trials, b.first_seed);
            for pr in &problems {
                eprintln!("{}/{label}: {pr}", p.as_str());
                bad = true;
            }
            if let (Some(f), Some(g)) = (percentiles(fail.clone()), percentiles(gap)) {
                println!(
                    "| {} | {label} | {} | {} | {} | {} | {} | {} |",
                    p.as_str(),
                    fail.len(),
                    ms(f.0),
                    ms(f.1),
                    ms(f.2),
                    ms(g.0),
                    ms(g.1)
                );
            }
        }
    }
    if bad {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
