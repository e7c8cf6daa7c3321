//! What an agent costs: resident memory (`VmRSS`), open file descriptors
//! (`/proc/PID/fd`), threads and CPU time (utime + stime) of every agent
//! and its VIP guardian, read from /proc every few seconds; and the leak
//! rule applied to those samples.
//!
//! **Leak rule.** Comparing the start and the end of a run says nothing
//! about processes the churn restarted, so the rule looks at one
//! incarnation (pid and start time) at a time: every incarnation sampled
//! for at least `min_life` is split into an early window (`window` long,
//! after a `warmup` from its first sample) and a late window (its last
//! `window`). It leaks when the *smallest* value of the late window is
//! above the *largest* of the early window by more than the allowance
//! (fds: 4, threads: 2, RSS: 2 MiB + 10 %): a leak grows for good, while
//! short-lived sockets, blocking-pool threads and allocator noise come and
//! go and do not lift the late minimum.

use serde::Serialize;

/// One reading of one process.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FpSample {
    /// Seconds from the start of the run.
    pub t: f64,
    pub node: String,
    /// `agent` or `guardian`.
    pub kind: &'static str,
    pub pid: i32,
    /// Start time (clock ticks after boot): with `pid`, the incarnation.
    pub start: u64,
    pub rss_kib: u64,
    pub fds: u64,
    pub threads: u64,
    /// utime + stime, clock ticks.
    pub cpu_ticks: u64,
}

/// Read `pid`'s footprint; `None` if it is gone (or a zombie).
pub fn read(pid: i32) -> Option<(u64, u64, u64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 (index 0); utime 14, stime 15,
    // starttime 22.
    if matches!(f.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let start: u64 = f.get(19)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(k))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let rss = field("VmRSS:").unwrap_or(0);
    let threads = field("Threads:")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((start, rss, fds, threads, utime + stime))
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn clk_tck() -> f64 {
    // SAFETY: plain libc call.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// The leak rule's parameters (seconds).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct LeakRule {
    pub min_life: f64,
    pub warmup: f64,
    pub window: f64,
    pub fd_allow: u64,
    pub thread_allow: u64,
    pub rss_allow_kib: u64,
    pub rss_allow_pct: f64,
}

impl LeakRule {
    pub fn for_run(churn_secs: f64) -> LeakRule {
        LeakRule {
            // At least half the churn, at least 2 minutes.
            min_life: (churn_secs / 2.0).max(120.0),
            warmup: 20.0,
            window: (churn_secs / 10.0).clamp(20.0, 120.0),
            fd_allow: 4,
            thread_allow: 2,
            rss_allow_kib: 2048,
            rss_allow_pct: 10.0,
        }
    }
}

/// One incarnation the leak rule looked at.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IncarnationCheck {
    pub node: String,
    pub kind: &'static str,
    pub pid: i32,
    pub life_s: f64,
    pub samples: usize,
    /// (early max, late min) of each measure.
    pub rss_kib: (u64, u64),
    pub fds: (u64, u64),
    pub threads: (u64, u64),
    /// CPU over its whole sampled life, percent of one core.
    pub cpu_pct: f64,
    /// The measures that grew beyond the allowance.
    pub leaks: Vec<String>,
}

/// Group samples by incarnation, in first-seen order.
pub fn incarnations(samples: &[FpSample]) -> Vec<Vec<&FpSample>> {
    let mut keys: Vec<(String, &'static str, i32, u64)> = Vec::new();
    let mut groups: Vec<Vec<&FpSample>> = Vec::new();
    for s in samples {
        let k = (s.node.clone(), s.kind, s.pid, s.start);
        match keys.iter().position(|x| *x == k) {
            Some(i) => groups[i].push(s),
            None => {
                keys.push(k);
                groups.push(vec![s]);
            }
        }
    }
    groups
}

fn cpu_pct(g: &[&FpSample], tck: f64) -> f64 {
    match (g.first(), g.last()) {
        (Some(a), Some(b)) if b.t > a.t => {
            (b.cpu_ticks.saturating_sub(a.cpu_ticks)) as f64 / tck / (b.t - a.t) * 100.0
        }
        _ => 0.0,
    }
}

/// Apply the leak rule to every incarnation that lived long enough.
pub fn check_leaks(samples: &[FpSample], rule: &LeakRule, tck: f64) -> Vec<IncarnationCheck> {
    let mut out = Vec::new();
    for g in incarnations(samples) {
        let (first, last) = (g[0].t, g[g.len() - 1].t);
        let life = last - first;
        if life < rule.min_life {
            continue;
        }
        let early: Vec<&&FpSample> = g
            .iter()
            .filter(|s| s.t >= first + rule.warmup && s.t <= first + rule.warmup + rule.window)
            .collect();
        let late: Vec<&&FpSample> = g.iter().filter(|s| s.t >= last - rule.window).collect();
        if early.is_empty() || late.is_empty() {
            continue;
        }
        let em = |f: fn(&FpSample) -> u64| early.iter().map(|s| f(s)).max().unwrap_or(0);
        let lm = |f: fn(&FpSample) -> u64| late.iter().map(|s| f(s)).min().unwrap_or(0);
        let rss = (em(|s| s.rss_kib), lm(|s| s.rss_kib));
        let fds = (em(|s| s.fds), lm(|s| s.fds));
        let threads = (em(|s| s.threads), lm(|s| s.threads));
        let mut leaks = Vec::new();
        if fds.1 > fds.0 + rule.fd_allow {
            leaks.push(format!("fds {} -> {}", fds.0, fds.1));
        }
        if threads.1 > threads.0 + rule.thread_allow {
            leaks.push(format!("threads {} -> {}", threads.0, threads.1));
        }
        let rss_limit =
            rss.0 + rule.rss_allow_kib + (rss.0 as f64 * rule.rss_allow_pct / 100.0) as u64;
        if rss.1 > rss_limit {
            leaks.push(format!("RSS {} KiB -> {} KiB", rss.0, rss.1));
        }
        out.push(IncarnationCheck {
            node: g[0].node.clone(),
            kind: g[0].kind,
            pid: g[0].pid,
            life_s: life,
            samples: g.len(),
            rss_kib: rss,
            fds,
            threads,
            cpu_pct: cpu_pct(&g, tck),
            leaks,
        });
    }
    out
}

/// Footprint of one node's process over a time window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WindowFootprint {
    pub node: String,
    pub kind: &'static str,
    /// Medians over the window's samples.
    pub rss_kib: u64,
    pub fds: u64,
    pub threads: u64,
    /// CPU over the window, percent of one core (per incarnation, time
    /// weighted).
    pub cpu_pct: f64,
    pub max_rss_kib: u64,
    pub max_fds: u64,
    pub max_threads: u64,
}

fn median_u(mut v: Vec<u64>) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[v.len() / 2]
}

/// Median of floats (0 for none).
pub fn median_f(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Per node and kind, the footprint over samples in `[a, b]`.
pub fn window(samples: &[FpSample], a: f64, b: f64, tck: f64) -> Vec<WindowFootprint> {
    let inside: Vec<FpSample> = samples
        .iter()
        .filter(|s| s.t >= a && s.t <= b)
        .cloned()
        .collect();
    let mut keys: Vec<(String, &'static str)> = Vec::new();
    for s in &inside {
        if !keys.iter().any(|(n, k)| *n == s.node && *k == s.kind) {
            keys.push((s.node.clone(), s.kind));
        }
    }
    let mut out = Vec::new();
    for (node, kind) in keys {
        let mine: Vec<FpSample> = inside
            .iter()
            .filter(|s| s.node == node && s.kind == kind)
            .cloned()
            .collect();
        let (mut ticks, mut secs) = (0.0, 0.0);
        for g in incarnations(&mine) {
            if let (Some(x), Some(y)) = (g.first(), g.last())
                && y.t > x.t
            {
                ticks += y.cpu_ticks.saturating_sub(x.cpu_ticks) as f64;
                secs += y.t - x.t;
            }
        }
        let col = |f: fn(&FpSample) -> u64| mine.iter().map(f).collect::<Vec<u64>>();
        out.push(WindowFootprint {
            node,
            kind,
            rss_kib: median_u(col(|s| s.rss_kib)),
            fds: median_u(col(|s| s.fds)),
            threads: median_u(col(|s| s.threads)),
            cpu_pct: if secs > 0.0 {
                ticks / tck / secs * 100.0
            } else {
                0.0
            },
            max_rss_kib: col(|s| s.rss_kib).into_iter().max().unwrap_or(0),
            max_fds: col(|s| s.fds).into_iter().max().unwrap_or(0),
            max_threads: col(|s| s.threads).into_iter().max().unwrap_or(0),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: f64, pid: i32, rss: u64, fds: u64, threads: u64, cpu: u64) -> FpSample {
        FpSample {
            t,
            node: "cp-0".into(),
            kind: "agent",
            pid,
            start: pid as u64 * 10,
            rss_kib: rss,
            fds,
            threads,
            cpu_ticks: cpu,
        }
    }

    fn rule() -> LeakRule {
        LeakRule {
            min_life: 100.0,
            warmup: 10.0,
            window: 20.0,
            fd_allow: 4,
            thread_allow: 2,
            rss_allow_kib: 2048,
            rss_allow_pct: 10.0,
        }
    }

    #[test]
    fn a_steady_process_with_noise_does_not_leak() {
        let v: Vec<FpSample> = (0..60)
            .map(|i| {
                let t = i as f64 * 3.0;
                // fds jump up now and then, threads come and go.
                s(
                    t,
                    7,
                    7000 + (i % 3) * 100,
                    20 + (i % 5 == 0) as u64 * 6,
                    9 + i % 2,
                    i * 2,
                )
            })
            .collect();
        let c = check_leaks(&v, &rule(), 100.0);
        assert_eq!(c.len(), 1);
        assert!(c[0].leaks.is_empty(), "{:?}", c[0]);
        // 2 ticks per 3 s at 100 ticks/s = 0.67 %.
        assert!((c[0].cpu_pct - 0.6667).abs() < 0.01, "{}", c[0].cpu_pct);
    }

    #[test]
    fn growing_fds_threads_and_memory_are_leaks() {
        let v: Vec<FpSample> = (0..60)
            .map(|i| s(i as f64 * 3.0, 7, 7000 + i * 200, 20 + i / 2, 9 + i / 10, 0))
            .collect();
        let c = check_leaks(&v, &rule(), 100.0);
        assert_eq!(c[0].leaks.len(), 3, "{:?}", c[0]);
    }

    #[test]
    fn short_incarnations_are_not_judged_and_restarts_split_them() {
        let mut v: Vec<FpSample> = (0..20)
            .map(|i| s(i as f64 * 3.0, 7, 7000, 20, 9, 0))
            .collect();
        // A new incarnation with more fds is not growth of the old one.
        v.extend((20..60).map(|i| s(i as f64 * 3.0, 8, 9000, 40, 12, 0)));
        assert_eq!(incarnations(&v).len(), 2);
        let c = check_leaks(&v, &rule(), 100.0);
        assert_eq!(c.len(), 1, "only pid 8 lived 100 s: {c:?}");
        assert_eq!(c[0].pid, 8);
        assert!(c[0].leaks.is_empty());
    }

    #[test]
    fn window_medians_and_cpu_across_a_restart() {
        let mut v: Vec<FpSample> = (0..5)
            .map(|i| s(i as f64, 7, 1000, 10, 5, i * 10))
            .collect();
        v.extend((5..10).map(|i| s(i as f64, 8, 3000, 12, 6, (i - 5) * 30)));
        let w = window(&v, 0.0, 10.0, 100.0);
        assert_eq!(w.len(), 1);
        // 40 ticks in 4 s and 120 ticks in 4 s: 160 ticks / 8 s / 100 = 20 %.
        assert!((w[0].cpu_pct - 20.0).abs() < 1e-9, "{}", w[0].cpu_pct);
        assert_eq!(w[0].rss_kib, 3000);
        assert_eq!(w[0].max_fds, 12);
        assert_eq!(median_f(vec![3.0, 1.0, 2.0, 10.0]), 2.5);
    }

    #[test]
    fn reads_our_own_process() {
        let (start, rss, fds, threads, _) = read(std::process::id() as i32).unwrap();
        assert!(start > 0 && rss > 0 && fds >= 3 && threads >= 1);
    }
}
