//! The client prober: from the client namespace, a TCP connect to VIP:6443
//! every 10 ms, each with its own 50 ms timeout (probes overlap, so the
//! cadence holds while probes time out). Each probe records when it started
//! and ended (monotonic clock) and which node answered.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use super::error::Result;
use super::netns;

pub const PROBE_INTERVAL: Duration = Duration::from_millis(10);
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(50);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered by this node.
    Ok(Arc<str>),
    Timeout,
    Refused,
    Unreachable,
    Reset,
    /// Connected, but closed without a name.
    Eof,
    Error(i32),
}

impl Outcome {
    pub fn node(&self) -> Option<&str> {
        match self {
            Outcome::Ok(n) => Some(n),
            _ => None,
        }
    }

    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok(_))
    }

    pub fn label(&self) -> String {
        match self {
            Outcome::Ok(n) => format!("ok:{n}"),
            Outcome::Timeout => "timeout".into(),
            Outcome::Refused => "refused".into(),
            Outcome::Unreachable => "unreachable".into(),
            Outcome::Reset => "reset".into(),
            Outcome::Eof => "eof".into(),
            Outcome::Error(e) => format!("errno {e}"),
        }
    }

    fn from_io(e: &std::io::Error) -> Outcome {
        match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => Outcome::Refused,
            Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH) => Outcome::Unreachable,
            Some(libc::ECONNRESET) => Outcome::Reset,
            Some(n) => Outcome::Error(n),
            None => Outcome::Error(0),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Probe {
    pub seq: u64,
    pub start: Instant,
    pub end: Instant,
    pub outcome: Outcome,
}

#[derive(Default)]
struct Shared {
    /// In completion order, so `end` does not decrease.
    probes: Mutex<Vec<Probe>>,
    stop: AtomicBool,
}

pub struct Prober {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    target: SocketAddr,
}

impl Prober {
    /// Probe the lab's VIP:6443 from its client namespace every 10 ms with
    /// a 50 ms timeout.
    pub fn start(lab: &super::Lab) -> Result<Prober> {
        Prober::start_in(
            lab.client_ns(),
            lab.vip_target(),
            PROBE_INTERVAL,
            PROBE_TIMEOUT,
        )
    }

    /// Probe `target` from namespace `ns` every `interval`.
    pub fn start_in(
        ns: &str,
        target: SocketAddr,
        interval: Duration,
        timeout: Duration,
    ) -> Result<Prober> {
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        // The runtime is built inside the namespace thread, so every socket
        // it creates is in the client's namespace.
        let thread = netns::spawn_in(ns, "prober", move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime for the prober");
            rt.block_on(run(sh, target, interval, timeout));
        })?;
        Ok(Prober {
            shared,
            thread: Some(thread),
            target,
        })
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Finished probes that started at or after `t`, by start time.
    pub fn since(&self, t: Instant) -> Vec<Probe> {
        self.window(t, None)
    }

    /// Finished probes that started in `[a, b]` (b open when `None`).
    pub fn window(&self, a: Instant, b: Option<Instant>) -> Vec<Probe> {
        let probes = self.shared.probes.lock().unwrap();
        let i = probes.partition_point(|p| p.end < a);
        let mut v: Vec<Probe> = probes[i..]
            .iter()
            .filter(|p| p.start >= a && b.is_none_or(|b| p.start <= b))
            .cloned()
            .collect();
        drop(probes);
        v.sort_by_key(|p| p.start);
        v
    }

    /// The earliest-ending successful probe started at or after `t` that was
    /// answered by a node for which `pred` holds.
    pub fn first_ok_where(&self, t: Instant, pred: impl Fn(&str) -> bool) -> Option<Probe> {
        let probes = self.shared.probes.lock().unwrap();
        let i = probes.partition_point(|p| p.end < t);
        probes[i..]
            .iter()
            .find(|p| p.start >= t && p.outcome.node().is_some_and(&pred))
            .cloned()
    }

    /// Wait for a probe (started at or after `t`) answered by a node for
    /// which `pred` holds.
    pub fn wait_ok_where(
        &self,
        t: Instant,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<Probe> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(p) = self.first_ok_where(t, &pred) {
                return Some(p);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Every probe that started in the last `d` (and has finished) was
    /// answered by `node`, and there were at least half the expected number.
    pub fn stable_on(&self, node: &str, d: Duration) -> bool {
        let now = Instant::now();
        let Some(a) = now.checked_sub(d + PROBE_TIMEOUT) else {
            return false;
        };
        let b = now - PROBE_TIMEOUT;
        let w = self.window(a, Some(b));
        let expected = d.as_millis() / PROBE_INTERVAL.as_millis().max(1);
        (w.len() as u128) * 2 >= expected && w.iter().all(|p| p.outcome.node() == Some(node))
    }

    /// The node that answered the latest finished probe, if it succeeded.
    pub fn last_answer(&self) -> Option<Arc<str>> {
        let probes = self.shared.probes.lock().unwrap();
        probes.iter().rev().find_map(|p| match &p.outcome {
            Outcome::Ok(n) => Some(n.clone()),
            _ => None,
        })
    }

    pub fn count(&self) -> usize {
        self.shared.probes.lock().unwrap().len()
    }

    /// Stop probing and wait for the probes in flight.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.halt();
    }
}

async fn run(sh: Arc<Shared>, target: SocketAddr, interval: Duration, timeout: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut seq = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    while !sh.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        seq += 1;
        let sh = sh.clone();
        tasks.spawn(async move {
            let start = Instant::now();
            let outcome = match tokio::time::timeout(timeout, probe_once(target)).await {
                Ok(o) => o,
                Err(_) => Outcome::Timeout,
            };
            let end = Instant::now();
            sh.probes.lock().unwrap().push(Probe {
                seq,
                start,
                end,
                outcome,
            });
        });
        // Reap finished tasks so the set does not grow.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

async fn probe_once(target: SocketAddr) -> Outcome {
    let sock = match tokio::net::TcpSocket::new_v4() {
        Ok(s) => s,
        Err(e) => return Outcome::from_io(&e),
    };
    // Close with RST: no TIME_WAIT pile-up in the client at 100 probes/s.
    let _ = socket2::SockRef::from(&sock).set_linger(Some(Duration::ZERO));
    let mut stream = match sock.connect(target).await {
        Ok(s) => s,
        Err(e) => return Outcome::from_io(&e),
    };
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 64];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.contains(&b'\n') || buf.len() >= 256 {
                    break;
                }
            }
            Err(e) => {
                if buf.is_empty() {
                    return Outcome::from_io(&e);
                }
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let name = text.split('\n').next().unwrap_or("").trim();
    if name.is_empty() {
        Outcome::Eof
    } else {
        Outcome::Ok(Arc::from(name))
    }
}

/// Longest stretch without a successful probe ending, within `[a, b]`.
pub fn max_ok_gap(probes: &[Probe], a: Instant, b: Instant) -> Duration {
    let mut ends: Vec<Instant> = probes
        .iter()
        .filter(|p| p.outcome.is_ok() && p.end >= a && p.end <= b)
        .map(|p| p.end)
        .collect();
    ends.sort();
    let mut prev = a;
    let mut gap = Duration::ZERO;
    for e in ends.into_iter().chain(std::iter::once(b)) {
        gap = gap.max(e.saturating_duration_since(prev));
        prev = e;
    }
    gap
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(start_ms: u64, end_ms: u64, ok: bool, base: Instant) -> Probe {
        Probe {
            seq: 0,
            start: base + Duration::from_millis(start_ms),
            end: base + Duration::from_millis(end_ms),
            outcome: if ok {
                Outcome::Ok(Arc::from("n1"))
            } else {
                Outcome::Timeout
            },
        }
    }

    #[test]
    fn gap_between_successes() {
        let t = Instant::now();
        let probes = vec![
            p(0, 1, true, t),
            p(10, 11, true, t),
            p(20, 70, false, t),
            p(300, 301, true, t),
        ];
        let g = max_ok_gap(&probes, t, t + Duration::from_millis(400));
        assert_eq!(g, Duration::from_millis(290));
        // No success at all: the whole window.
        let g = max_ok_gap(&probes[2..3], t, t + Duration::from_millis(100));
        assert_eq!(g, Duration::from_millis(100));
    }

    #[test]
    fn outcome_labels() {
        assert_eq!(Outcome::Ok(Arc::from("n2")).label(), "ok:n2");
        assert_eq!(
            Outcome::from_io(&std::io::Error::from_raw_os_error(libc::ECONNREFUSED)),
            Outcome::Refused
        );
    }
}
