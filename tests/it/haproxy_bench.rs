//! How fast HAProxy takes a control plane out of rotation and back in:
//! kubeha's checks against the lab guide's `check fall 2 rise 1` (TCP check,
//! default `inter 2s`), same machine, same run. Figures go to docs/haproxy.md.
//!
//! ```text
//! cargo test -p kubeha-tests --test it haproxy_bench -- --ignored --nocapture
//! ```
//!
//! The apiserver under test is a `fake-apiserver` child process (so it can
//! be SIGKILLed and SIGSTOPped); a second, always-ready one keeps HAProxy
//! healthy. Times are from the event (kill, stop, 503, or the new process
//! printing `listening`) to HAProxy's `show stat` changing, polled every 5 ms.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kubeha_agent::haproxy::{ApplyOutcome, HaproxyManager};
use kubeha_core::haproxy::Backend;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::haproxy::{Guard, backend, fake, manager, options};

const TRIALS: usize = 10;
/// Trials of cases the guide's TCP check cannot see at all.
const BLIND_TRIALS: usize = 3;
const BLIND_CAP: Duration = Duration::from_secs(8);

/// A `fake-apiserver` child, killed on drop.
struct FakeProc {
    child: Child,
}

impl FakeProc {
    fn start(addr: SocketAddr, pki: &Path) -> (FakeProc, Instant) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fake-apiserver"))
            .args(["--listen", &addr.to_string(), "--name", "x", "--pki-dir"])
            .arg(pki)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn fake-apiserver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("listening "), "{line:?}");
        (FakeProc { child }, Instant::now())
    }

    fn signal(&self, s: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), s).unwrap();
    }
}

impl Drop for FakeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status(m: &HaproxyManager) -> String {
    m.show_stat()
        .ok()
        .and_then(|v| v.into_iter().find(|s| s.name == "x"))
        .map(|s| s.status)
        .unwrap_or_default()
}

/// Poll until `pred(status)`; the elapsed time since `t0`, or `None` after `cap`.
fn until(
    m: &HaproxyManager,
    t0: Instant,
    cap: Duration,
    pred: impl Fn(&str) -> bool,
) -> Option<Duration> {
    loop {
        if pred(&status(m)) {
            return Some(t0.elapsed());
        }
        if t0.elapsed() > cap {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn steady_up(m: &HaproxyManager) {
    until(m, Instant::now(), Duration::from_secs(20), |s| s == "UP").expect("x fully UP");
}

fn in_rotation(s: &str) -> bool {
    s == "UP" || s.starts_with("UP ")
}

#[derive(Default)]
struct Series(Vec<Option<Duration>>);

impl Series {
    fn summary(&self) -> String {
        if self.0.is_empty() {
            return "not run".into();
        }
        let mut ok: Vec<Duration> = self.0.iter().flatten().copied().collect();
        ok.sort();
        let missed = self.0.len() - ok.len();
        if ok.is_empty() {
            return format!(
                "not detected within {} s ({}/{} trials)",
                BLIND_CAP.as_secs(),
                missed,
                self.0.len()
            );
        }
        let ms = |d: Duration| d.as_millis();
        let mut s = format!(
            "median {} ms, min {} ms, max {} ms (n={})",
            ms(ok[ok.len() / 2]),
            ms(ok[0]),
            ms(*ok.last().unwrap()),
            ok.len()
        );
        if missed > 0 {
            s.push_str(&format!(", {missed} not detected"));
        }
        s
    }
}

struct Results {
    dead: Series,
    new: Series,
    hung: Series,
    not_ready: Series,
    ready_again: Series,
}

/// Where in the check cycle the event falls. `Locked`: right after a check
/// completed (the state change just observed), the worst case. `Random`:
/// a uniform offset within `[0, inter)` after that, the typical case.
#[derive(Clone, Copy)]
enum Phase {
    Locked,
    Random { inter: Duration },
}

/// A small deterministic generator: the runs are repeatable.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, max: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_micros(self.0 % max.as_micros().max(1) as u64)
    }
}

fn phase_offset(phase: Phase, rng: &mut XorShift) {
    if let Phase::Random { inter } = phase {
        // Deliberate placement of the event in the check cycle, not a wait
        // for a condition.
        std::thread::sleep(rng.below(inter));
    }
}

fn run(
    label: &str,
    m: &mut HaproxyManager,
    x_addr: SocketAddr,
    pki: &Path,
    readyz_aware: bool,
    phase: Phase,
    blind_cases: bool,
) -> Results {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut r = Results {
        dead: Series::default(),
        new: Series::default(),
        hung: Series::default(),
        not_ready: Series::default(),
        ready_again: Series::default(),
    };
    let (mut x, _) = FakeProc::start(x_addr, pki);
    for i in 0..TRIALS {
        // Dead: SIGKILL, port closed (connection refused).
        steady_up(m);
        phase_offset(phase, &mut rng);
        let t0 = Instant::now();
        x.signal(Signal::SIGKILL);
        r.dead.0.push(until(m, t0, Duration::from_secs(20), |s| {
            s.starts_with("DOWN")
        }));
        drop(x);
        // New: from fully DOWN, a fresh apiserver starts answering.
        until(m, Instant::now(), Duration::from_secs(20), |s| s == "DOWN").expect("x fully DOWN");
        phase_offset(phase, &mut rng);
        let (nx, t0) = FakeProc::start(x_addr, pki);
        x = nx;
        r.new
            .0
            .push(until(m, t0, Duration::from_secs(20), in_rotation));
        eprintln!(
            "{label} trial {i}: dead {:?} new {:?}",
            r.dead.0[i], r.new.0[i]
        );
    }
    let blind = match (blind_cases, readyz_aware) {
        (false, _) => 0,
        (true, true) => TRIALS,
        (true, false) => BLIND_TRIALS,
    };
    for i in 0..blind {
        // Hung: the process stops answering (SIGSTOP); the kernel still
        // completes TCP handshakes, nothing answers TLS or HTTP.
        steady_up(m);
        phase_offset(phase, &mut rng);
        let t0 = Instant::now();
        x.signal(Signal::SIGSTOP);
        r.hung
            .0
            .push(until(m, t0, BLIND_CAP, |s| s.starts_with("DOWN")));
        x.signal(Signal::SIGCONT);
        eprintln!("{label} hung trial {i}: {:?}", r.hung.0[i]);
    }
    // Not ready: the process is fine but /readyz answers 503 (SIGUSR1).
    for i in 0..blind {
        steady_up(m);
        phase_offset(phase, &mut rng);
        let t0 = Instant::now();
        x.signal(Signal::SIGUSR1);
        r.not_ready
            .0
            .push(until(m, t0, BLIND_CAP, |s| s.starts_with("DOWN")));
        if readyz_aware {
            until(m, Instant::now(), Duration::from_secs(20), |s| s == "DOWN")
                .expect("x fully DOWN");
            phase_offset(phase, &mut rng);
        }
        let t1 = Instant::now();
        x.signal(Signal::SIGUSR1);
        if readyz_aware {
            r.ready_again
                .0
                .push(until(m, t1, Duration::from_secs(20), in_rotation));
        }
        eprintln!("{label} readyz trial {i}: {:?}", r.not_ready.0[i]);
    }
    r
}

/// The lab guide's configuration (appended to Debian's default haproxy.cfg,
/// whose `defaults` give the timeouts), with kubeha's section names.
fn guide_config(stats: &Path, frontend: SocketAddr, servers: &[Backend]) -> String {
    let mut s = format!(
        "global\n    stats socket {} mode 600 level admin\n\ndefaults\n    timeout connect 5000\n    timeout client 50000\n    timeout server 50000\n\n\
         frontend kubeha-apiserver\n    mode tcp\n    bind {frontend}\n    default_backend kubeha-control-planes\n\n\
         backend kubeha-control-planes\n    mode tcp\n    balance roundrobin\n    option tcp-check\n",
        stats.display()
    );
    for b in servers {
        s.push_str(&format!(
            "    server {} {} check fall 2 rise 1\n",
            b.name, b.addr
        ));
    }
    s
}

#[test]
#[ignore = "benchmark, about 5 minutes: run with --ignored --nocapture"]
fn haproxy_bench() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let y = fake("y", "127.31.9.12:16443", &pki);
    let x_addr: SocketAddr = "127.31.9.11:16443".parse().unwrap();
    let x = Backend {
        name: "x".into(),
        addr: x_addr,
    };
    let servers = vec![x, backend(&y)];

    let ours_inter = Duration::from_millis(250);
    let guide_inter = Duration::from_secs(2);
    let (ours, ours_locked) = {
        let sub: PathBuf = dir.path().join("kubeha");
        let mut g: Guard = manager(options(
            &sub,
            "127.31.9.10:16501".parse().unwrap(),
            Some(y.ca_path()),
        ));
        assert_eq!(g.m().apply(&servers), ApplyOutcome::Started);
        let r = run(
            "kubeha",
            g.m(),
            x_addr,
            &pki,
            true,
            Phase::Random { inter: ours_inter },
            true,
        );
        let l = run(
            "kubeha-locked",
            g.m(),
            x_addr,
            &pki,
            true,
            Phase::Locked,
            true,
        );
        (r, l)
    };
    let (guide, guide_locked) = {
        let sub: PathBuf = dir.path().join("guide");
        let mut g: Guard = manager(options(&sub, "127.31.9.10:16502".parse().unwrap(), None));
        let text = guide_config(
            &g.m().paths().stats_socket.clone(),
            "127.31.9.10:16502".parse().unwrap(),
            &servers,
        );
        assert_eq!(g.m().apply_raw(&text), ApplyOutcome::Started);
        let r = run(
            "guide",
            g.m(),
            x_addr,
            &pki,
            false,
            Phase::Random { inter: guide_inter },
            true,
        );
        let l = run(
            "guide-locked",
            g.m(),
            x_addr,
            &pki,
            false,
            Phase::Locked,
            false,
        );
        (r, l)
    };
    println!("\n{}", haproxy_version());
    for (title, o, gd) in [
        (
            "event at a random point of the check cycle (typical)",
            &ours,
            &guide,
        ),
        (
            "event right after a check (worst case)",
            &ours_locked,
            &guide_locked,
        ),
    ] {
        println!("\n{title}\n");
        println!(
            "| event | kubeha (`inter 250ms fastinter 150ms downinter 250ms fall 3 rise 2`, `/readyz` over TLS) | lab guide (`check fall 2 rise 1`, TCP connect, `inter 2s`) |"
        );
        println!("|---|---|---|");
        println!(
            "| apiserver killed (port closed) -> DOWN | {} | {} |",
            o.dead.summary(),
            gd.dead.summary()
        );
        println!(
            "| new apiserver listening -> in rotation | {} | {} |",
            o.new.summary(),
            gd.new.summary()
        );
        if !o.hung.0.is_empty() {
            println!(
                "| apiserver hung (SIGSTOP) -> DOWN | {} | {} |",
                o.hung.summary(),
                gd.hung.summary()
            );
            println!(
                "| `/readyz` 503 -> DOWN | {} | {} |",
                o.not_ready.summary(),
                gd.not_ready.summary()
            );
            println!(
                "| `/readyz` 200 again -> in rotation | {} | never out |",
                o.ready_again.summary()
            );
        }
    }

    // The targets (DESIGN L4) hold for every trial, not just the median.
    let worst = |s: &Series| s.0.iter().map(|d| d.expect("detected")).max().unwrap();
    for r in [&ours, &ours_locked] {
        assert!(worst(&r.dead) <= Duration::from_millis(1500));
        assert!(worst(&r.hung) <= Duration::from_millis(1500));
        assert!(worst(&r.not_ready) <= Duration::from_millis(1500));
        assert!(worst(&r.new) <= Duration::from_millis(2000));
        assert!(worst(&r.ready_again) <= Duration::from_millis(2000));
    }
}

fn haproxy_version() -> String {
    Command::new(crate::haproxy::HAPROXY)
        .arg("-v")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}
