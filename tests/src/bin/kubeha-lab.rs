//! `kubeha-lab`: droplets as network namespaces, the real agents inside.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use kubeha_core::timing::Profile;
use kubeha_tests::lab::{self, Lab, LabSpec, Topology, bench, demo, soak};

#[derive(Parser)]
#[command(
    name = "kubeha-lab",
    version,
    about = "Droplets as network namespaces on a bridge, running the real kubeha agents (needs root)"
)]
struct Cli {
    /// Lab name (its run directory is /run/kubeha-lab/NAME).
    #[arg(long, global = true, default_value = "lab", env = "KUBEHA_LAB_NAME")]
    name: String,
    /// Run directory (overrides the one derived from --name).
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum TimingArg {
    Default,
    Fast,
}

impl From<TimingArg> for Profile {
    fn from(t: TimingArg) -> Profile {
        match t {
            TimingArg::Default => Profile::Default,
            TimingArg::Fast => Profile::Fast,
        }
    }
}

#[derive(clap::Args, Clone)]
struct LabArgs {
    #[arg(long, value_enum, default_value = "compact")]
    topology: Topology,
    /// guide: number of workers; compact, vip: number of nodes.
    #[arg(long)]
    nodes: Option<usize>,
    #[arg(long, value_enum, default_value = "default")]
    timing: TimingArg,
    /// Give lb nodes a `[haproxy]` section.
    #[arg(long)]
    haproxy: bool,
    /// Where kubeha-agent, kubeha-guardian and kubeha-ctl are (default: next to kubeha-lab).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Who moves the VIP: `digitalocean` runs a stand-in of DigitalOcean's
    /// Reserved IP API in the lab, gives the lb agents that provider (and
    /// HAProxy, on their anchor addresses) and routes the VIP to whichever
    /// node the stand-in assigned it to. Needs `up --foreground` (the
    /// stand-in lives in this process).
    #[arg(long, value_enum, default_value = "arp")]
    vip_provider: lab::VipProvider,
    /// `digitalocean`: how long the stand-in takes to complete an assign
    /// action, milliseconds (DigitalOcean's docs' example: about 11000).
    #[arg(long, default_value_t = 0)]
    action_latency_ms: u64,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a lab and start the agents; it keeps running until `down`.
    Up {
        #[command(flatten)]
        lab: LabArgs,
        /// Build the network only, start no agent.
        #[arg(long)]
        no_agents: bool,
        /// Stay in the foreground (with a TCP responder on every node, unless
        /// --kubernetes); Ctrl-C tears the lab down.
        #[arg(long)]
        foreground: bool,
        /// Kubernetes: control planes and workers get `[kubernetes]` with
        /// fake-kubeadm over a real etcd, lb nodes `[haproxy]` (implies
        /// --haproxy); the agents bootstrap the cluster by themselves.
        #[arg(long)]
        kubernetes: bool,
        /// With --kubernetes: return only once every Kubernetes node has
        /// joined (at most this many seconds).
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
    },
    /// Wait until the agents agree on one VIP holder and, in a Kubernetes
    /// lab, every Kubernetes node has joined.
    Wait {
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Print the node that holds the VIP (the agents agree, only it has the
    /// address, and no preemption is pending).
    Holder {
        /// Wait up to this many seconds for one holder.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Kubernetes labs: an HTTPS GET from the client namespace through
    /// VIP:6443 (HAProxy, then an apiserver), trusting the cluster CA.
    Api {
        #[arg(default_value = "/api/v1/nodes")]
        path: String,
        /// Retry until the answer is 200, for at most this many seconds.
        #[arg(long, default_value_t = 0)]
        retry: u64,
    },
    /// One line per node: agent, members alive, VIP holder, quorum.
    Status {
        /// Print every agent's full status JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// kill -9 a node's agent (a crash).
    Kill {
        node: String,
    },
    /// Start a node's agent.
    Start {
        node: String,
    },
    /// SIGTERM a node's agent (a clean stop).
    Stop {
        node: String,
    },
    /// Cut a node off the bridge (its port leaves the bridge, carrier stays up).
    Cut {
        node: String,
        /// Take the link down instead (the node sees NO-CARRIER).
        #[arg(long)]
        carrier: bool,
    },
    /// Undo `cut`.
    Heal {
        node: String,
    },
    /// Planned VIP handover: `drain` through the node's agent socket.
    Drain {
        node: String,
    },
    Undrain {
        node: String,
    },
    /// Remove the lab: processes, namespaces, run directory.
    Down,
    /// Remove every lab namespace that no live process owns.
    Cleanup {
        /// Also labs left running by `up`.
        #[arg(long)]
        all: bool,
    },
    /// Bring up a lab, show its status, kill the VIP holder and show the
    /// client's failover time, then tear everything down.
    Demo {
        #[command(flatten)]
        lab: LabArgs,
    },
    /// The failover benchmark: kubeha and keepalived in the same lab.
    Bench(bench::BenchArgs),
    /// The churn soak: a random agent killed, frozen, cut off or restarted
    /// every 10-30 s in the guide topology with HAProxy; VIP holders, inits,
    /// a client through the VIP and every agent's footprint recorded.
    /// Exits non-zero when an invariant, a recovery or the leak rule fails.
    Soak(soak::SoakArgs),
    /// The lab on real droplets: a Debian 12 container with systemd in every
    /// node namespace, the built .deb installed with apt. Shows the cluster,
    /// crashes the VIP holder's agent (systemd restarts it), then removes
    /// everything.
    Droplets {
        /// The package (default: the newest target/debian/kubeha_*.deb,
        /// built by scripts/deb-build).
        #[arg(long)]
        deb: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "vip")]
        topology: Topology,
        #[arg(long, value_enum, default_value = "default")]
        timing: TimingArg,
        /// Keep the droplets running until Ctrl-C.
        #[arg(long)]
        hold: bool,
    },
}

fn main() -> ExitCode {
    // Before any other thread exists, so that all inherit the signal mask.
    if let Err(e) = lab::signals::install() {
        eprintln!("kubeha-lab: cannot install signal handling: {e}");
        return ExitCode::from(1);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KUBEHA_LAB_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kubeha-lab: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn spec_of(name: Option<&str>, dir: Option<PathBuf>, a: &LabArgs) -> LabSpec {
    let mut s = LabSpec::new(a.topology)
        .timing(a.timing.into())
        .haproxy(a.haproxy)
        .vip_provider(a.vip_provider)
        .action_latency(Duration::from_millis(a.action_latency_ms));
    if let Some(n) = name {
        s = s.name(n);
    }
    if let Some(n) = a.nodes {
        s = s.nodes(n);
    }
    if let Some(d) = &a.bin_dir {
        s = s.bin_dir(d);
    }
    if let Some(d) = dir {
        s = s.dir(d);
    }
    s
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = cli
        .dir
        .clone()
        .unwrap_or_else(|| Lab::default_dir(&cli.name));
    let attach = || {
        Lab::attach(&dir).with_context(|| {
            format!(
                "no lab `{}` (is it up? `kubeha-lab up --name {}`)",
                cli.name, cli.name
            )
        })
    };
    match cli.cmd {
        Cmd::Up {
            lab: a,
            no_agents,
            foreground,
            kubernetes,
            wait,
        } => {
            if a.vip_provider == lab::VipProvider::Digitalocean && !foreground {
                bail!(
                    "--vip-provider digitalocean needs --foreground: the DigitalOcean stand-in runs inside this process"
                );
            }
            let mut spec = spec_of(Some(&cli.name), cli.dir.clone(), &a).kubernetes(kubernetes);
            if no_agents {
                spec = spec.without_agents();
            }
            let l = Lab::up(spec)?;
            // Kept until Ctrl-C: HAProxy's backends in a digitalocean lab.
            let mut _fakes = Vec::new();
            if foreground && !kubernetes {
                if a.vip_provider == lab::VipProvider::Digitalocean {
                    _fakes = lab::cloud_bench::start_fake_apiservers(&l)?;
                } else {
                    l.start_responders()?;
                }
            }
            print_up(&l, !no_agents);
            if let Some(c) = l.cloud() {
                println!(
                    "  DigitalOcean stand-in {} (CA {}); the VIP is the Reserved IP, routed from {} to the anchor of the droplet it is assigned to; fake apiservers (CA {}) behind HAProxy",
                    c.standin().api_url(),
                    c.standin().ca_file().display(),
                    l.client_ns(),
                    lab::cloud_bench::fake_apiserver_ca(&l).display()
                );
                for d in c.droplets() {
                    println!("  droplet {} = {} anchor {}", d.id, d.node, d.anchor);
                }
            }
            if let (Some(secs), false) = (wait, no_agents) {
                let t = Instant::now();
                l.wait_converged(Duration::from_secs(secs))?;
                if kubernetes {
                    l.wait_kube_joined(Duration::from_secs(secs).saturating_sub(t.elapsed()))?;
                    println!(
                        "every Kubernetes node joined {:.1} s after the agents started",
                        t.elapsed().as_secs_f64()
                    );
                }
            }
            if foreground {
                println!("foreground: Ctrl-C tears the lab down");
                loop {
                    std::thread::park();
                }
            }
            let dir = l.detach()?;
            println!(
                "lab `{}` is up (state in {}); `kubeha-lab --name {} down` removes it",
                cli.name,
                dir.display(),
                cli.name
            );
        }
        Cmd::Status { json } => {
            let l = attach()?;
            if json {
                for (n, s) in l.statuses() {
                    match s {
                        Ok(s) => println!("{}", serde_json::to_string_pretty(&s)?),
                        Err(e) => println!("{{\"node\": \"{n}\", \"error\": {:?}}}", e.to_string()),
                    }
                }
            } else {
                print!("{}", demo::status_table(&l));
                if l.is_kubernetes() {
                    l.record_kube_daemons()?;
                    println!();
                    print!("{}", lab::kube::kube_table(&l));
                }
            }
        }
        Cmd::Wait { timeout } => {
            let l = attach()?;
            let t = Instant::now();
            let holder = l.wait_settled(Duration::from_secs(timeout))?;
            println!(
                "converged: `{holder}` holds the VIP ({:.1} s)",
                t.elapsed().as_secs_f64()
            );
            if l.is_kubernetes() {
                l.wait_kube_joined(Duration::from_secs(timeout).saturating_sub(t.elapsed()))?;
                let inits = l.kube_inits();
                let on: Vec<String> = inits.iter().filter_map(|v| l.kube_call_node(v)).collect();
                println!(
                    "every Kubernetes node joined ({:.1} s); kubeadm init ran {} time(s), on {}",
                    t.elapsed().as_secs_f64(),
                    inits.len(),
                    on.join(", ")
                );
            }
        }
        Cmd::Holder { timeout } => {
            let l = attach()?;
            println!("{}", l.wait_settled(Duration::from_secs(timeout))?);
        }
        Cmd::Api { path, retry } => {
            let l = attach()?;
            if !l.is_kubernetes() {
                bail!("lab `{}` has no Kubernetes (`up --kubernetes`)", cli.name);
            }
            let t = Instant::now();
            let end = t + Duration::from_secs(retry);
            let r = loop {
                match l.kube_api_get(&path, Duration::from_secs(2)) {
                    Ok(r) if r.status == 200 => break r,
                    res if Instant::now() >= end => match res {
                        Ok(r) => break r,
                        Err(e) => {
                            return Err(e).with_context(|| {
                                format!(
                                    "GET https://{}{path} from {}",
                                    l.vip_target(),
                                    l.client_ns()
                                )
                            });
                        }
                    },
                    _ => std::thread::sleep(Duration::from_millis(100)),
                }
            };
            println!(
                "GET https://{}{path} from the client namespace: {} (answered by apiserver `{}`, {} ms)",
                l.vip_target(),
                r.status,
                r.server.as_deref().unwrap_or("?"),
                t.elapsed().as_millis()
            );
            if path == "/api/v1/nodes" && r.status == 200 {
                for n in lab::kube::node_names(&r.body)? {
                    println!("  node {n}");
                }
            } else {
                println!("{}", r.body);
            }
            if r.status != 200 {
                bail!("status {}", r.status);
            }
        }
        Cmd::Kill { node } => {
            attach()?.node(&node)?.kill()?;
            println!("killed the agent of `{node}` (kill -9)");
        }
        Cmd::Start { node } => {
            let l = attach()?;
            let n = l.node(&node)?;
            n.start()?;
            let pid = n
                .agent_pid()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "?".into());
            println!("started the agent of `{node}` (pid {pid})");
        }
        Cmd::Stop { node } => {
            attach()?.node(&node)?.stop()?;
            println!("stopped the agent of `{node}` (SIGTERM)");
        }
        Cmd::Cut { node, carrier } => {
            let l = attach()?;
            let n = l.node(&node)?;
            if carrier {
                n.cut_carrier()?;
                println!("took the link of `{node}` down (no carrier)");
            } else {
                n.cut()?;
                println!("cut `{node}` off the bridge (carrier stays up)");
            }
        }
        Cmd::Heal { node } => {
            attach()?.node(&node)?.heal()?;
            println!("`{node}` is back on the bridge");
        }
        Cmd::Drain { node } => println!("{}", attach()?.node(&node)?.drain()?),
        Cmd::Undrain { node } => println!("{}", attach()?.node(&node)?.undrain()?),
        Cmd::Down => {
            if !dir.join("state.json").exists() {
                bail!("no lab `{}` in {}", cli.name, dir.display());
            }
            attach()?.down();
            println!("lab `{}` removed", cli.name);
        }
        Cmd::Cleanup { all } => {
            lab::require_root()?;
            let c = lab::collect_garbage(all);
            for p in &c.problems {
                eprintln!("kubeha-lab: {p}");
            }
            if c.namespaces.is_empty() {
                println!("nothing to clean up");
            } else {
                println!(
                    "removed {} namespaces: {}",
                    c.namespaces.len(),
                    c.namespaces.join(" ")
                );
            }
            if !c.problems.is_empty() {
                bail!("{} problems during cleanup", c.problems.len());
            }
        }
        Cmd::Demo { lab: a } => {
            if a.vip_provider != lab::VipProvider::Arp {
                bail!(
                    "demo: only --vip-provider arp (`bench --vip-provider digitalocean` measures the cloud failover)"
                );
            }
            let spec = spec_of(None, None, &a);
            demo::run(spec, &mut std::io::stdout())?;
        }
        Cmd::Bench(args) => {
            if args.vip_provider == lab::VipProvider::Digitalocean {
                lab::cloud_bench::run(&args)?;
            } else {
                bench::run(&args)?;
            }
        }
        Cmd::Soak(args) => {
            let r = soak::run(&args)?;
            if !r.passed() {
                bail!("the soak failed: {}", r.problems.join("; "));
            }
        }
        Cmd::Droplets {
            deb,
            topology,
            timing,
            hold,
        } => {
            lab::droplets::run(
                lab::droplets::DropletsOptions {
                    deb,
                    topology,
                    timing: timing.into(),
                    hold,
                },
                &mut std::io::stdout(),
            )?;
        }
    }
    Ok(())
}

fn print_up(l: &Lab, agents: bool) {
    println!(
        "lab `{}` (id {}, {} topology, timing {}): VIP {}, client {} in {}",
        l.name(),
        l.id(),
        l.topology().as_str(),
        l.timing(),
        lab::VIP,
        lab::CLIENT_ADDR,
        l.client_ns()
    );
    for n in l.nodes() {
        let roles: Vec<&str> = n.roles.iter().map(|r| r.as_str()).collect();
        println!(
            "  {:<10} {:<13} {:<24} ns {}{}",
            n.name,
            n.addr,
            roles.join(","),
            n.ns,
            if agents { "  agent running" } else { "" }
        );
    }
}
