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
//!
//! `--in-process N [--dilate F] [--footprint-secs S]`: N members in this one
//! process, each the agent's own membership stack (its `FrameSocket` with
//! frame v2 sealing, `EncryptedTransport`, chitchat, the SYN pacer) on its
//! own loopback address, without the rest of an agent (no lease traffic, no
//! main loop). Every period of the timing profile is stretched F times, so a
//! cluster that would need more CPU than this machine has still runs
//! unstarved: counts per round stay the same, per-second figures are
//! reported scaled back by F (CPU and bytes times F, times divided by F).

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
    /// Members missing from an agent's alive list, mean over agents and
    /// samples (every half second in the window): false deaths.
    missing_mean: f64,
    missing_max: usize,
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
    // After the CPU window (status requests cost the agents CPU): alive
    // lists every half second for 5 s; a live member missing is a false death.
    let mut missing = vec![];
    let t1 = Instant::now();
    while t1.elapsed() < Duration::from_secs(5) {
        let s = Instant::now();
        for &i in &idx {
            missing.push(c.n.saturating_sub(alive_count(&c.sock(i))));
        }
        std::thread::sleep(Duration::from_millis(500).saturating_sub(s.elapsed()));
    }
    let k = idx.len() as f64;
    let mut f = Footprint {
        missing_mean: missing.iter().sum::<usize>() as f64 / missing.len().max(1) as f64,
        missing_max: missing.iter().max().copied().unwrap_or(0),
        ..Footprint::default()
    };
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

/// One member of the in-process cluster.
struct Member {
    gossip: Option<kubeha_agent::gossip::Gossip>,
    reader: tokio::task::JoinHandle<()>,
    metrics: std::sync::Arc<kubeha_agent::metrics::Metrics>,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn dilated(f: u32) -> kubeha_core::timing::Timing {
    let t = kubeha_core::timing::Timing::DEFAULT;
    kubeha_core::timing::Timing {
        gossip_interval: t.gossip_interval * f,
        fd_initial_interval: t.fd_initial_interval * f,
        fd_max_interval: t.fd_max_interval * f,
        ..t
    }
}

async fn start_member(
    dir: &Path,
    n: usize,
    i: usize,
    generation: u64,
    timing: &kubeha_core::timing::Timing,
) -> Member {
    use kubeha_agent::gossip::{EncryptedTransport, Gossip, initial_keys};
    use kubeha_agent::metrics::Metrics;
    use kubeha_agent::net::{FrameSocket, Identity};
    use kubeha_core::frame::{Key, Keyring, Rings};
    use kubeha_core::membership::LbHealth;
    let ip = |j: usize| format!("127.200.{}.{}", j / 200, 10 + j % 200);
    let seeds: Vec<String> = (0..3.min(n))
        .map(|j| format!("\"{}:7946\"", ip(j)))
        .collect();
    let text = format!(
        "cluster = \"bench\"\nnode_name = \"w{i}\"\nadvertise_addr = \"{ip}\"\nseeds = [{seeds}]\nvoters = [\"w0\", \"w1\", \"w2\"]\n\
         key_file = \"{d}/key\"\n{control}state_dir = \"{d}/state-{i}\"\nsocket = \"{d}/w{i}.sock\"\n",
        control = if i < 3 {
            format!("control_key_file = \"{}/control.key\"\n", dir.display())
        } else {
            String::new()
        },
        ip = ip(i),
        seeds = seeds.join(", "),
        d = dir.display()
    );
    let path = dir.join(format!("w{i}.toml"));
    let config = kubeha_core::config::Config::parse(&path, &text, "bench").expect("bench config");
    let control = (i < 3).then(|| Keyring::new(Key::from_bytes([6; 32])));
    let rings = Rings {
        member: Keyring::new(Key::from_bytes([5; 32])),
        control,
    };
    let metrics = Metrics::new(&config.node_name, "bench");
    let frames = FrameSocket::bind(
        config.gossip_addr(),
        rings,
        &config.cluster,
        Identity {
            name: config.node_name.clone(),
            generation,
            epoch: timing.lease,
        },
        metrics.clone(),
    )
    .await
    .expect("bind");
    let (gtx, grx) = tokio::sync::mpsc::channel(1024);
    let (ltx, _lrx) = tokio::sync::mpsc::channel(16);
    let reader = frames.spawn_reader(gtx, ltx);
    let transport = EncryptedTransport::new(frames, metrics.clone(), grx);
    let gossip = Gossip::start(
        &config,
        generation,
        timing,
        transport,
        initial_keys(&config, LbHealth::None),
    )
    .await
    .expect("gossip");
    Member {
        gossip: Some(gossip),
        reader,
        metrics,
    }
}

/// Whether every observer sees `want` live members.
async fn live_at(members: &[Member], observers: &[usize], want: usize) -> bool {
    for &o in observers {
        if let Some(g) = members.get(o).and_then(|m| m.gossip.as_ref())
            && g.live_count().await != want
        {
            return false;
        }
    }
    true
}

fn self_cpu_ticks() -> u64 {
    proc_cpu_ticks(std::process::id())
}

fn in_process(n: usize, f: u32, window: u64, limit_secs: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("kubeha-gossip-inproc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let timing = dilated(f);
    let fs = f64::from(f);
    rt.block_on(async {
        let t0 = Instant::now();
        let mut members = Vec::with_capacity(n);
        for i in 0..n {
            members.push(start_member(&dir, n, i, 1, &timing).await);
        }
        let observers: Vec<usize> = (0..n).step_by((n / 20).max(1)).collect();
        let limit = Duration::from_secs(limit_secs);
        let mut converged = None;
        while t0.elapsed() < limit {
            if live_at(&members, &observers, n).await {
                converged = Some(t0.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut known = 0usize;
        let mut live = 0usize;
        for &o in &observers {
            let g = members[o].gossip.as_ref().unwrap();
            known += g.members_known();
            live += g.live_count().await;
        }
        println!(
            "observers know {:.0} members and see {:.0} live (means)",
            known as f64 / observers.len() as f64,
            live as f64 / observers.len() as f64
        );
        println!(
            "in-process {n} members, periods x{f}: all {} observers see {n} live after {} ({:.1} s real)",
            observers.len(),
            converged.map_or("no convergence".to_string(), |d| format!(
                "{:.1} s scaled",
                d.as_secs_f64() / fs
            )),
            t0.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(3) * f).await;
        let scrape_all = |members: &Vec<Member>| -> Vec<String> {
            members
                .iter()
                .map(|m| String::from_utf8(m.metrics.render()).unwrap())
                .collect()
        };
        let before = scrape_all(&members);
        let ticks0 = self_cpu_ticks();
        let w0 = Instant::now();
        // Live members each observer sees, sampled every half second: a
        // member missing from a view is a false death.
        let mut seen = vec![];
        while w0.elapsed() < Duration::from_secs(window) {
            for &o in &observers {
                seen.push(members[o].gossip.as_ref().unwrap().live_count().await);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let secs = w0.elapsed().as_secs_f64();
        let ticks = self_cpu_ticks() - ticks0;
        let after = scrape_all(&members);
        let k = n as f64;
        let cpu_total = ticks as f64 / 100.0 / secs * 100.0;
        let mut out = 0.0;
        let mut inb = 0.0;
        let mut maxd = 0.0f64;
        let mut digest = 0.0;
        let mut oversize = 0.0;
        let mut fragmented = 0.0;
        let mut paced = 0.0;
        let mut compressed = 0.0;
        let mut packets = 0.0;
        for (b, a) in before.iter().zip(&after) {
            out += (series(a, OUT) - series(b, OUT)) / secs / k;
            inb += (series(a, IN) - series(b, IN)) / secs / k;
            maxd = maxd.max(series(a, MAX_OUT)).max(series(a, MAX_IN));
            digest += series(a, DIGEST) / k;
            oversize += series(a, OVERSIZE);
            let msg = |s: &str, l: &str| series(s, &format!("kubeha_gossip_messages_total{{action=\"{l}\"}}"));
            fragmented += msg(a, "fragmented") - msg(b, "fragmented");
            paced += msg(a, "paced") - msg(b, "paced");
            compressed += msg(a, "compressed") - msg(b, "compressed");
            let pk = "kubeha_gossip_packets_total{channel=\"gossip\",direction=\"out\"}";
            packets += (series(a, pk) - series(b, pk)) / secs / k;
        }
        println!("| per member, {window} s window (x{f} scaled back) | value |");
        println!("|---|---|");
        println!(
            "| CPU | {:.2} % of a core (process {cpu_total:.0} % over {n} members, x{f}) |",
            cpu_total / k * fs
        );
        println!("| gossip out | {:.0} B/s |", out * fs);
        println!("| gossip in | {:.0} B/s |", inb * fs);
        println!("| datagrams out | {:.1} /s |", packets * fs);
        println!("| largest datagram (since start) | {maxd:.0} B |");
        println!("| digest | {digest:.0} B |");
        println!(
            "| in the window, all members: compressed / fragmented / paced SYNs | {compressed:.0} / {fragmented:.0} / {paced:.0} |"
        );
        println!("| dropped oversize since start, all members | {oversize:.0} |");
        let missing: Vec<usize> = seen.iter().map(|&l| n.saturating_sub(l)).collect();
        println!(
            "| members missing from an observer's live set (false deaths), mean / max of {} samples | {:.2} / {} |",
            missing.len(),
            missing.iter().sum::<usize>() as f64 / missing.len().max(1) as f64,
            missing.iter().max().copied().unwrap_or(0)
        );

        // Failure detection: the last member stops dead (its socket closes).
        let victim = n - 1;
        if let Some(m) = members.last_mut() {
            drop(m.gossip.take());
            m.reader.abort();
        }
        let t = Instant::now();
        let mut detected = None;
        while t.elapsed() < Duration::from_secs(60) * f {
            if live_at(&members, &observers, n - 1).await {
                detected = Some(t.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "| failure detection (every observer) | {} |",
            detected.map_or("not within 60 s".into(), |d| format!(
                "{:.2} s scaled ({:.1} s real)",
                d.as_secs_f64() / fs,
                d.as_secs_f64()
            ))
        );
        // Let it be dead a while, then the same node restarts (a new
        // generation) and must catch up with every member's state.
        tokio::time::sleep(Duration::from_secs(2) * f).await;
        members.pop();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = Instant::now();
        members.push(start_member(&dir, n, victim, 2, &timing).await);
        let mut caught_up = None;
        let mut seen_alive = None;
        while t.elapsed() < Duration::from_secs(60) * f && (caught_up.is_none() || seen_alive.is_none()) {
            let g = members[victim].gossip.as_ref().unwrap();
            if caught_up.is_none()
                && g.members_with_key(kubeha_core::membership::keys::ROLES).await >= n
                && g.live_count().await >= n
            {
                caught_up = Some(t.elapsed());
            }
            if seen_alive.is_none() && live_at(&members, &observers, n).await {
                seen_alive = Some(t.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let show = |d: Option<Duration>| {
            d.map_or("not within 60 s".into(), |d| {
                format!("{:.2} s scaled ({:.1} s real)", d.as_secs_f64() / fs, d.as_secs_f64())
            })
        };
        println!(
            "| rejoin: the restarted node holds all {n} members' state and sees them live | {} |",
            show(caught_up)
        );
        println!("| rejoin: every observer sees it live again | {} |", show(seen_alive));
        let oversize: f64 = members
            .iter()
            .map(|m| series(&String::from_utf8(m.metrics.render()).unwrap(), OVERSIZE))
            .sum();
        println!("| dropped oversize at the end, all members | {oversize:.0} |");
        println!("| RSS of the process | {} MiB |", proc_kib(std::process::id(), "VmRSS") / 1024);
        drop(members);
    });
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    let mut sizes = vec![5usize, 20, 50];
    let mut runs = 3usize;
    let mut idle_secs = 20u64;
    let mut window = 0u64;
    let mut in_proc = 0usize;
    let mut dilate = 1u32;
    let mut limit_secs = 120u64;
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
            "--in-process" => in_proc = args.next().unwrap().parse().unwrap(),
            "--dilate" => dilate = args.next().unwrap().parse().unwrap(),
            "--converge-secs" => limit_secs = args.next().unwrap().parse().unwrap(),
            "--bin-dir" => bin_dir = PathBuf::from(args.next().unwrap()),
            other => {
                panic!("unknown argument {other}; see the header of tests/src/bin/gossip-bench.rs")
            }
        }
    }
    if in_proc > 0 {
        in_process(in_proc, dilate.max(1), window.max(5), limit_secs);
        return;
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
            "| agents | run | CPU % of a core (mean / max) | gossip out B/s (mean) | gossip in B/s (mean / max) | largest datagram B | digest B (mean) | dropped oversize | false deaths per agent (mean / max) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        for (n, r, f) in &footprints {
            println!(
                "| {n} | {r} | {:.2} / {:.2} | {:.0} | {:.0} / {:.0} | {:.0} | {:.0} | {:.0} | {:.2} / {} |",
                f.cpu_mean,
                f.cpu_max,
                f.out_mean,
                f.in_mean,
                f.in_max,
                f.datagram_max,
                f.digest_mean,
                f.oversize,
                f.missing_mean,
                f.missing_max
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
