//! The VIP sampler: every 10 ms, a netlink address dump in every node's
//! namespace; records which nodes have the VIP. Two nodes with the VIP at
//! once is the split brain the product must never show.
//!
//! Between samples the same thread listens to every node's address-change
//! notifications (RTMGRP_IPV4_IFADDR), stamped when they arrive: an overlap
//! shorter than the 10 ms period, which the samples can miss, shows there.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::error::Result;
use super::netlink::NlSocket;

pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// When the sweep started.
    pub t: Instant,
    /// Bit i set: node i (in the sampler's node order) had the VIP.
    pub holders: u64,
    /// How long the sweep over all nodes took.
    pub took: Duration,
}

impl Sample {
    pub fn count(&self) -> usize {
        self.holders.count_ones() as usize
    }
}

/// The VIP appeared on (`present`) or left a node, as notified by netlink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipEvent {
    /// When the sampler thread received the notification.
    pub t: Instant,
    pub node: usize,
    pub present: bool,
    /// Holders after this event (bit per node).
    pub mask_after: u64,
}

struct Shared {
    samples: Mutex<Vec<Sample>>,
    events: Mutex<Vec<VipEvent>>,
    /// Holders per the first dump, before any event.
    initial: Mutex<u64>,
    /// A notification queue overflowed: the event record has gaps.
    events_lost: AtomicBool,
    stop: AtomicBool,
}

pub struct Sampler {
    names: Vec<String>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Sample every node of `lab` for the VIP every 10 ms.
    pub fn start(lab: &super::Lab) -> Result<Sampler> {
        let nodes: Vec<(String, String)> = lab
            .nodes()
            .iter()
            .map(|n| (n.name.clone(), n.ns.clone()))
            .collect();
        Sampler::start_for(&nodes, super::VIP, SAMPLE_INTERVAL)
    }

    /// Sample `nodes` (name, namespace) for `vip` every `interval`.
    pub fn start_for(
        nodes: &[(String, String)],
        vip: Ipv4Addr,
        interval: Duration,
    ) -> Result<Sampler> {
        assert!(nodes.len() <= 64, "the sampler handles at most 64 nodes");
        let mut socks = Vec::new();
        let mut monitors = Vec::new();
        for (_, ns) in nodes {
            // Monitors first, so no change falls between them and the first dump.
            monitors.push(NlSocket::open_monitor_in(ns)?);
            socks.push(NlSocket::open_in(ns)?);
        }
        let shared = Arc::new(Shared {
            samples: Mutex::new(Vec::new()),
            events: Mutex::new(Vec::new()),
            initial: Mutex::new(0),
            events_lost: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("vip-sampler".into())
            .spawn(move || {
                let sweep = |socks: &mut Vec<NlSocket>| {
                    let mut holders = 0u64;
                    for (i, s) in socks.iter_mut().enumerate() {
                        // A namespace being torn down fails the dump: no VIP there.
                        if let Ok(addrs) = s.ipv4_addrs()
                            && addrs.iter().any(|a| a.addr == vip)
                        {
                            holders |= 1 << i;
                        }
                    }
                    holders
                };
                let mut state = sweep(&mut socks);
                *sh.initial.lock().unwrap_or_else(|e| e.into_inner()) = state;
                let mut pfds: Vec<libc::pollfd> = monitors
                    .iter()
                    .map(|m| libc::pollfd {
                        fd: m.raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    })
                    .collect();
                let mut next = Instant::now();
                while !sh.stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if now >= next {
                        let t = Instant::now();
                        let holders = sweep(&mut socks);
                        let took = t.elapsed();
                        sh.samples
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(Sample { t, holders, took });
                        next += interval;
                        if next <= Instant::now() {
                            next = Instant::now() + interval;
                        }
                    }
                    let wait = next.saturating_duration_since(Instant::now());
                    let ts = libc::timespec {
                        tv_sec: wait.as_secs() as libc::time_t,
                        tv_nsec: wait.subsec_nanos() as libc::c_long,
                    };
                    // SAFETY: valid pollfd array and timespec.
                    let n = unsafe {
                        libc::ppoll(
                            pfds.as_mut_ptr(),
                            pfds.len() as libc::nfds_t,
                            &ts,
                            std::ptr::null(),
                        )
                    };
                    if n <= 0 {
                        continue;
                    }
                    let t = Instant::now();
                    for (i, m) in monitors.iter_mut().enumerate() {
                        if pfds[i].revents == 0 {
                            continue;
                        }
                        match m.address_events() {
                            Ok(evs) => {
                                let mut out = sh.events.lock().unwrap_or_else(|e| e.into_inner());
                                for (present, e) in evs {
                                    if e.addr != vip {
                                        continue;
                                    }
                                    if present {
                                        state |= 1 << i;
                                    } else {
                                        state &= !(1 << i);
                                    }
                                    out.push(VipEvent {
                                        t,
                                        node: i,
                                        present,
                                        mask_after: state,
                                    });
                                }
                            }
                            Err(_) => sh.events_lost.store(true, Ordering::Relaxed),
                        }
                    }
                }
            })
            .expect("spawn the vip sampler thread");
        Ok(Sampler {
            names: nodes.iter().map(|(n, _)| n.clone()).collect(),
            shared,
            thread: Some(thread),
        })
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn holder_names(&self, mask: u64) -> Vec<String> {
        self.names
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, n)| n.clone())
            .collect()
    }

    pub fn latest(&self) -> Option<Sample> {
        self.shared.samples.lock().unwrap().last().copied()
    }

    /// Holders in the latest sample.
    pub fn holders(&self) -> Vec<String> {
        self.latest()
            .map(|s| self.holder_names(s.holders))
            .unwrap_or_default()
    }

    /// Samples taken at or after `t`.
    pub fn since(&self, t: Instant) -> Vec<Sample> {
        self.window(t, None)
    }

    pub fn window(&self, a: Instant, b: Option<Instant>) -> Vec<Sample> {
        let s = self.shared.samples.lock().unwrap();
        let i = s.partition_point(|x| x.t < a);
        s[i..]
            .iter()
            .take_while(|x| b.is_none_or(|b| x.t <= b))
            .copied()
            .collect()
    }

    /// Wait for the next sample after now (so a caller sees the state after
    /// something it just did).
    pub fn fresh(&self) -> Option<Sample> {
        let t = Instant::now();
        let end = t + Duration::from_secs(1);
        while Instant::now() < end {
            if let Some(s) = self.latest()
                && s.t >= t
            {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    }

    /// Wait until the latest sample's holders satisfy `pred`.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[String]) -> bool) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.fresh()
                && pred(&self.holder_names(s.holders))
            {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
        }
    }

    /// The same single node held the VIP in every sample of the last `d`.
    pub fn stable_single(&self, d: Duration) -> Option<String> {
        let now = Instant::now();
        let a = now.checked_sub(d)?;
        let w = self.window(a, None);
        let expected = (d.as_millis() / SAMPLE_INTERVAL.as_millis().max(1)) as usize;
        if w.len() * 2 < expected {
            return None;
        }
        let first = w.first()?.holders;
        (first.count_ones() == 1 && w.iter().all(|s| s.holders == first))
            .then(|| self.holder_names(first).remove(0))
    }

    pub fn summary(&self, a: Instant, b: Instant) -> HolderSummary {
        summarize(&self.window(a, Some(b)), b)
    }

    /// Netlink notifications about the VIP received in `[a, b]`.
    pub fn events(&self, a: Instant, b: Option<Instant>) -> Vec<VipEvent> {
        let ev = self.shared.events.lock().unwrap_or_else(|e| e.into_inner());
        let i = ev.partition_point(|x| x.t < a);
        ev[i..]
            .iter()
            .take_while(|x| b.is_none_or(|b| x.t <= b))
            .copied()
            .collect()
    }

    /// Holders (from notifications) just before `t`.
    pub fn event_state_at(&self, t: Instant) -> u64 {
        let ev = self.shared.events.lock().unwrap_or_else(|e| e.into_inner());
        let i = ev.partition_point(|x| x.t < t);
        if i == 0 {
            *self
                .shared
                .initial
                .lock()
                .unwrap_or_else(|e| e.into_inner())
        } else {
            ev[i - 1].mask_after
        }
    }

    /// Whether a notification queue overflowed (then the event record has
    /// gaps and only the samples count).
    pub fn events_lost(&self) -> bool {
        self.shared.events_lost.load(Ordering::Relaxed)
    }

    /// Time in `[a, b]` with two or more holders according to the
    /// notifications (sub-millisecond resolution), leaving out nodes in
    /// `ignore` (a bit mask).
    pub fn event_overlap(&self, a: Instant, b: Instant, ignore: u64) -> Duration {
        overlap(
            self.event_state_at(a),
            &self.events(a, Some(b)),
            a,
            b,
            ignore,
        )
    }

    /// Notifications in `[a, b]` that changed whether a node carries the
    /// VIP: an add or a removal. A holder restarting its address's kernel
    /// lifetime is a notification too (`RTM_NEWADDR` for an address already
    /// there) and is not counted.
    pub fn vip_changes(&self, a: Instant, b: Instant) -> usize {
        presence_changes(self.event_state_at(a), &self.events(a, Some(b)))
    }

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

impl Drop for Sampler {
    fn drop(&mut self) {
        self.halt();
    }
}

/// What the samples of a window say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HolderSummary {
    pub samples: usize,
    pub max_holders: usize,
    /// Samples with two or more holders.
    pub multi_samples: usize,
    /// Time with two or more holders: each such sample counts until the next
    /// sample (or `end`).
    pub multi_time: Duration,
    /// Time with no holder, likewise.
    pub none_time: Duration,
    /// Slowest sweep over all nodes.
    pub max_sweep: Duration,
}

/// Events after which the holder set differs from before, starting from
/// `initial`.
pub fn presence_changes(initial: u64, events: &[VipEvent]) -> usize {
    let mut mask = initial;
    let mut n = 0;
    for e in events {
        if e.mask_after != mask {
            n += 1;
        }
        mask = e.mask_after;
    }
    n
}

/// Time with two or more holders, from `initial` at `a` and `events` up to `b`.
pub fn overlap(initial: u64, events: &[VipEvent], a: Instant, b: Instant, ignore: u64) -> Duration {
    let mut mask = initial & !ignore;
    let mut since = a;
    let mut total = Duration::ZERO;
    for e in events.iter().filter(|e| e.t >= a && e.t <= b) {
        if mask.count_ones() >= 2 {
            total += e.t - since;
        }
        mask = e.mask_after & !ignore;
        since = e.t;
    }
    if mask.count_ones() >= 2 {
        total += b.saturating_duration_since(since);
    }
    total
}

pub fn summarize(samples: &[Sample], end: Instant) -> HolderSummary {
    let mut s = HolderSummary {
        samples: samples.len(),
        ..Default::default()
    };
    for (i, x) in samples.iter().enumerate() {
        let next = samples.get(i + 1).map(|n| n.t).unwrap_or(end).max(x.t);
        let span = next - x.t;
        s.max_holders = s.max_holders.max(x.count());
        s.max_sweep = s.max_sweep.max(x.took);
        if x.count() >= 2 {
            s.multi_samples += 1;
            s.multi_time += span;
        }
        if x.count() == 0 {
            s.none_time += span;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_from_events() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let ev = |at: u64, node: usize, present: bool, mask_after: u64| VipEvent {
            t: t + ms(at),
            node,
            present,
            mask_after,
        };
        // n0 holds; n1 adds at 5 ms; n0 drops at 8 ms; n2 adds at 20, n1 drops at 21.
        let events = [
            ev(5, 1, true, 0b011),
            ev(8, 0, false, 0b010),
            ev(20, 2, true, 0b110),
            ev(21, 1, false, 0b100),
        ];
        assert_eq!(overlap(0b001, &events, t, t + ms(30), 0), ms(4));
        // Leaving n1 out: never two.
        assert_eq!(
            overlap(0b001, &events, t, t + ms(30), 0b010),
            Duration::ZERO
        );
        // Still overlapping at the end of the window.
        assert_eq!(overlap(0b001, &events[..1], t, t + ms(7), 0), ms(2));
        assert_eq!(presence_changes(0b001, &events), 4);
        // Lifetime renewals of n0 (the address is already there) change nothing.
        let renewals = [ev(5, 0, true, 0b001), ev(205, 0, true, 0b001)];
        assert_eq!(presence_changes(0b001, &renewals), 0);
        assert_eq!(presence_changes(0, &renewals), 1);
    }

    #[test]
    fn summary_counts_time_with_two_holders() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let samples = [
            Sample {
                t,
                holders: 0b001,
                took: ms(1),
            },
            Sample {
                t: t + ms(10),
                holders: 0b011,
                took: ms(1),
            },
            Sample {
                t: t + ms(20),
                holders: 0b111,
                took: ms(2),
            },
            Sample {
                t: t + ms(30),
                holders: 0,
                took: ms(1),
            },
        ];
        let s = summarize(&samples, t + ms(45));
        assert_eq!(s.max_holders, 3);
        assert_eq!(s.multi_samples, 2);
        assert_eq!(s.multi_time, ms(20));
        assert_eq!(s.none_time, ms(15));
        assert_eq!(s.max_sweep, ms(2));
    }
}
