//! Membership benchmark (issue 2): convergence and failure-detection time at
//! 5, 20 and 50 agents on loopback (median of runs), idle RSS/CPU of one agent
//! and gossip bytes/s per agent. Real agent processes, loopback only.
//!
//! cargo build --release --workspace --bins && target/release/gossip-bench [--sizes 5,20,50] [--runs 3] [--idle-secs 20]

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

fn metric(addr: &str, series: &str) -> f64 {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
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
/// time until every other agent sees it dead.
fn run_once(n: usize, block: u8, bin: &Path) -> (f64, f64) {
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
    )
}

fn main() {
    let mut sizes = vec![5usize, 20, 50];
    let mut runs = 3usize;
    let mut idle_secs = 20u64;
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
    for (k, &n) in sizes.iter().enumerate() {
        let mut conv = vec![];
        let mut det = vec![];
        for r in 0..runs {
            let (c, d) = run_once(n, 60 + (k * runs + r) as u8, &bin);
            conv.push(c);
            det.push(d);
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
    let out0 = metric(
        &maddr,
        "kubeha_gossip_bytes_total{channel=\"gossip\",direction=\"out\"}",
    );
    let in0 = metric(
        &maddr,
        "kubeha_gossip_bytes_total{channel=\"gossip\",direction=\"in\"}",
    );
    let ticks0 = proc_cpu_ticks(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_secs));
    let secs = t0.elapsed().as_secs_f64();
    let ticks = proc_cpu_ticks(pid) - ticks0;
    let hz = 100.0; // USER_HZ on Linux
    let cpu = ticks as f64 / hz / secs * 100.0;
    let out = (metric(
        &maddr,
        "kubeha_gossip_bytes_total{channel=\"gossip\",direction=\"out\"}",
    ) - out0)
        / secs;
    let inb = (metric(
        &maddr,
        "kubeha_gossip_bytes_total{channel=\"gossip\",direction=\"in\"}",
    ) - in0)
        / secs;
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
