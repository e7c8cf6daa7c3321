//! Membership benchmark (issues 2 and 14): convergence and failure-detection
//! time at 5, 20 and 50 agents on loopback (median of runs), idle RSS/CPU of
//! one agent and gossip bytes/s per agent; with `--footprint-secs S`, per
//! size, a window of S seconds after convergence in which every agent's CPU,
//! gossip bytes in/out, largest datagram and digest size are sampled (mean
//! and max over the agents). Real agent processes, loopback only.
//!
//! cargo build --release --workspace --bins && target/release/gossip-bench [--sizes 5,20,50] [--runs 3] [--idle-secs 20] [--footprint-secs 10]
//!
//! More than 10 agents: run it under the lab lock (`flock /run/kubeha-lab/.lock ...`).

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kubeha_core::api::Status;

struct Agent {
    child: Child,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    n: usize,
    block: u8,
    agents: Vec<Option<Agent>>,
}

impl Cluster {
    fn ip(&self, i: usize) -> String {
        format!("127.{}.{}.{}", self.block, i / 200, 10 + i % 200)
    }
    fn sock(&self, i: usize) -> PathBuf {
        self.dir.join(format!("n{i}.sock"))
    }
    fn start(&mut self, i: usize) {
        let seeds: Vec<String> = (0..3.min(self.n))
            .map(|j| format!("\"{}:7946\"", self.ip(j)))
            .collect();
        let control = if i < 3 {
            format!(
                "control_key_file = \"{}/control.key\"\n",
                self.dir.display()
            )
        } else {
            String::new()
        };
        let cfg = format!(
            "cluster = \"bench\"\nnode_name = \"n{i}\"\nadvertise_addr = \"{ip}\"\nseeds = [{seeds}]\nvoters = [\"n0\", \"n1\", \"n2\"]\n\
             key_file = \"{d}/key\"\n{control}state_dir = \"{d}/state-{i}\"\nsocket = \"{s}\"\nmetrics_addr = \"{ip}:9946\"\n",
            ip = self.ip(i),
            seeds = seeds.join(", "),
            d = self.dir.display(),
            s = self.sock(i).display()
        );
        let path = self.dir.join(format!("n{i}.toml"));
        std::fs::write(&path, cfg).unwrap();
        let child = Command::new(&self.bin)
            .arg("--config")
            .arg(&path)
            .env("KUBEHA_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn kubeha-agent");
        self.agents[i] = Some(Agent { child });
    }
    fn pid(&self, i: usize) -> u32 {
        self.agents[i].as_ref().unwrap().child.id()
    }
}

fn status(sock: &Path) -> Option<Status> {
    kubeha_tests::lab::agent::status(sock).ok()
}

fn alive_count(sock: &Path) -> usize {
    status(sock).map_or(0, |s| s.members.iter().filter(|m| m.alive).count())
}

fn wait(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn proc_cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn proc_kib(pid: u32, field: &str) -> u64 {
    let path = if field == "Pss" {
        format!("/proc/{pid}/smaps_rollup")
    } else {
        format!("/proc/{pid}/status")
    };
    let s = std::fs::read_to_string(path).unwrap();
    s.lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

fn series(body: &str, series: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn metric(addr: &str, name: &str) -> f64 {
    series(&scrape(addr), name)
}

const OUT: &str = "kubeha_gossip_bytes_total{channel=\"gossip\",direction=\"out\"}";
const IN: &str = "kubeha_gossip_bytes_total{channel=\"gossip\",direction=\"in\"}";
const MAX_OUT: &str = "kubeha_gossip_datagram_max_bytes{direction=\"out\"}";
const MAX_IN: &str = "kubeha_gossip_datagram_max_bytes{direction=\"in\"}";
const DIGEST: &str = "kubeha_gossip_digest_bytes";
const OVERSIZE: &str = "kubeha_gossip_dropped_total{reason=\"oversize\"}";

/// Per-agent figures over a window, mean and max over the agents.
#[derive(Default, Clone)]
struct Footprint {
    cpu_mean: f64,
    cpu_max: f64,
    out_mean: f64,
    in_mean: f64,
    in_max: f64,
    datagram_max: f64,
    digest_mean: f64,
    oversize: f64,
}

/// Sample every running agent of `c` over `secs` seconds.
fn footprint(c: &Cluster, secs: u64) -> Footprint {
    let idx: Vec<usize> = (0..c.n).filter(|&i| c.agents[i].is_some()).collect();
    let addr = |i: usize| format!("{}:9946", c.ip(i));
    let before: Vec<(String, u64)> = idx
        .iter()
        .map(|&i| (scrape(&addr(i)), proc_cpu_ticks(c.pid(i))))
        .collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let after: Vec<(String, u64)> = idx
        .iter()
        .map(|&i| (scrape(&addr(i)), proc_cpu_ticks(c.pid(i))))
        .collect();
    let secs = t0.elapsed().as_secs_f64();
    let k = idx.len() as f64;
    let mut f = Footprint::default();
    for ((b, t0), (a, t1)) in before.iter().zip(&after) {
        let cpu = (t1 - t0) as f64 / 100.0 / secs * 100.0; // USER_HZ = 100
        f.cpu_mean += cpu / k;
        f.cpu_max = f.cpu_max.max(cpu);
        f.out_mean += (series(a, OUT) - series(b, OUT)) / secs / k;
        let inb = (series(a, IN) - series(b, IN)) / secs;
        f.in_mean += inb / k;
        f.in_max = f.in_max.max(inb);
        f.datagram_max = f
            .datagram_max
            .max(series(a, MAX_OUT))
            .max(series(a, MAX_IN));
        f.digest_mean += series(a, DIGEST) / k;
        f.oversize += series(a, OVERSIZE) - series(b, OVERSIZE);
    }
    f
}

fn new_cluster(n: usize, block: u8, bin: &Path) -> Cluster {
    let dir = std::env::temp_dir().join(format!(
        "kubeha-gossip-bench-{}-{n}-{block}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key");
    std::fs::write(
        &key,
        kubeha_core::frame::Key::from_bytes([5; 32]).to_base64(),
    )
    .unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let control = dir.join("control.key");
    std::fs::write(
        &control,
        kubeha_core::frame::Key::from_bytes([6; 32]).to_base64(),
    )
    .unwrap();
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o600)).unwrap();
    Cluster {
        dir,
        bin: bin.to_path_buf(),
        n,
        block,
        agents: (0..n).map(|_| None).collect(),
    }
}

/// One run: start n agents, time until every agent sees n alive; kill one,
/// time until every other agent sees it dead. With `window` > 0, the
/// footprint of every agent over that many seconds before the kill.
fn run_once(n: usize, block: u8, bin: &Path, window: u64) -> (f64, f64, Option<Footprint>) {
    let mut c = new_cluster(n, block, bin);
    for i in 0..n {
        c.start(i);
    }
    let converge = wait(Duration::from_secs(60), || {
        (0..n).all(|i| alive_count(&c.sock(i)) == n)
    })
    .expect("no convergence within 60 s");
    // Let heartbeat statistics settle as in steady state.
    std::thread::sleep(Duration::from_secs(3));
    let fp = (window > 0).then(|| footprint(&c, window));
    let victim = n - 1;
    c.agents[victim] = None; // SIGKILL
    let detect = wait(Duration::from_secs(30), || {
        (0..victim).all(|i| {
            status(&c.sock(i)).is_some_and(|s| {
                s.members
                    .iter()
                    .any(|m| m.name == format!("n{victim}") && !m.alive)
            })
        })
    })
    .expect("crash not detected within 30 s");
    drop(c.agents.drain(..));
    let _ = std::fs::remove_dir_all(&c.dir);
    (
        converge.as_secs_f64() * 1000.0,
        detect.as_secs_f64() * 1000.0,
        fp,
    )
}

fn main() {
    let mut sizes = vec![5usize, 20, 50];
    let mut runs = 3usize;
    let mut idle_secs = 20u64;
    let mut window = 0u64;
    let mut bin_dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--sizes" => {
                sizes = args
                    .next()
                    .unwrap()
                    .split(',')
                    .map(|s| s.parse().unwrap())
                    .collect()
            }
            "--runs" => runs = args.next().unwrap().parse().unwrap(),
            "--idle-secs" => idle_secs = args.next().unwrap().parse().unwrap(),
            "--footprint-secs" => window = args.next().unwrap().parse().unwrap(),
            "--bin-dir" => bin_dir = PathBuf::from(args.next().unwrap()),
            other => {
                panic!("unknown argument {other}; see the header of tests/src/bin/gossip-bench.rs")
            }
        }
    }
    let bin = bin_dir.join("kubeha-agent");
    assert!(
        bin.exists(),
        "{} missing: cargo build --release --workspace --bins",
        bin.display()
    );
    println!(
        "| agents | convergence ms (median of {runs}) | failure detection ms (median of {runs}) | runs (conv/detect) |"
    );
    println!("|---|---|---|---|");
    let mut footprints = vec![];
    for (k, &n) in sizes.iter().enumerate() {
        let mut conv = vec![];
        let mut det = vec![];
        for r in 0..runs {
            let (c, d, fp) = run_once(n, 60 + (k * runs + r) as u8, &bin, window);
            conv.push(c);
            det.push(d);
            if let Some(fp) = fp {
                footprints.push((n, r, fp));
            }
        }
        let fmt = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "| {n} | {:.0} | {:.0} | {} / {} |",
            median(conv.clone()),
            median(det.clone()),
            fmt(&conv),
            fmt(&det)
        );
    }

    if !footprints.is_empty() {
        println!();
        println!(
            "| agents | run | CPU % of a core (mean / max) | gossip out B/s (mean) | gossip in B/s (mean / max) | largest datagram B | digest B (mean) | dropped oversize |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for (n, r, f) in &footprints {
            println!(
                "| {n} | {r} | {:.2} / {:.2} | {:.0} | {:.0} / {:.0} | {:.0} | {:.0} | {:.0} |",
                f.cpu_mean,
                f.cpu_max,
                f.out_mean,
                f.in_mean,
                f.in_max,
                f.datagram_max,
                f.digest_mean,
                f.oversize
            );
        }
    }
    if idle_secs == 0 {
        return;
    }

    // Idle footprint: one agent of a 5-node cluster, after it settles.
    let mut c = new_cluster(5, 90, &bin);
    for i in 0..5 {
        c.start(i);
    }
    wait(Duration::from_secs(30), || {
        (0..5).all(|i| alive_count(&c.sock(i)) == 5)
    })
    .expect("no convergence");
    std::thread::sleep(Duration::from_secs(3));
    let pid = c.pid(0);
    let maddr = format!("{}:9946", c.ip(0));
    let out0 = metric(&maddr, OUT);
    let in0 = metric(&maddr, IN);
    let ticks0 = proc_cpu_ticks(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_secs));
    let secs = t0.elapsed().as_secs_f64();
    let ticks = proc_cpu_ticks(pid) - ticks0;
    let hz = 100.0; // USER_HZ on Linux
    let cpu = ticks as f64 / hz / secs * 100.0;
    let out = (metric(&maddr, OUT) - out0) / secs;
    let inb = (metric(&maddr, IN) - in0) / secs;
    println!();
    println!("| idle agent (5-node cluster, {idle_secs} s window) | value |");
    println!("|---|---|");
    println!("| RSS | {} KiB |", proc_kib(pid, "VmRSS"));
    println!("| PSS | {} KiB |", proc_kib(pid, "Pss"));
    println!("| CPU | {cpu:.2} % of one core |");
    println!("| gossip out | {out:.0} B/s |");
    println!("| gossip in | {inb:.0} B/s |");
    drop(c.agents.drain(..));
    let _ = std::fs::remove_dir_all(&c.dir);
}
