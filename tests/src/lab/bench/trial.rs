//! Running trials in one system's lab: settle on a stable holder, inject
//! a fault at a random phase, observe, restore; and the loss levels.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use super::super::error::{LabError, Result};
use super::super::prober::max_ok_gap;
use super::super::rng::Rng;
use super::super::{Lab, Prober, Sampler};
use super::{BenchArgs, Fault, LossRun, System, Trial, holder_changes, ms};

pub(super) struct Ctx<'a> {
    pub(super) sys: System,
    pub(super) lab: &'a Lab,
    pub(super) sampler: &'a Sampler,
    pub(super) prober: &'a Prober,
    pub(super) preferred: String,
    pub(super) raw: &'a Path,
}

impl Ctx<'_> {
    /// The raw record's `# vip` lines: each change of the sampled holders
    /// in `[from, end]`, at `rel` of its time.
    fn raw_holder_lines(
        &self,
        s: &mut String,
        from: Instant,
        end: Instant,
        rel: &dyn Fn(Instant) -> f64,
    ) {
        let mut last = u64::MAX;
        for x in self.sampler.window(from, Some(end)) {
            if x.holders != last {
                let _ = writeln!(
                    s,
                    "# vip {:.1} ms holders={}",
                    rel(x.t),
                    self.sampler.holder_names(x.holders).join(",")
                );
                last = x.holders;
            }
        }
    }

    /// Hold `pct` % loss on every lb node for `hold`, starting from a
    /// stable holder; the rules are removed before this returns.
    pub(super) fn loss_phase(&self, pct: u8, hold: Duration) -> LossRun {
        let mut r = LossRun {
            system: self.sys.as_str().into(),
            loss_pct: pct,
            ..Default::default()
        };
        match self.wait_stable(Duration::from_secs(90)) {
            Ok(h) => r.start_holder = h,
            Err(e) => {
                r.error = Some(e.to_string());
                return r;
            }
        }
        let nss: Vec<String> = self.lab.lb_nodes().iter().map(|n| n.ns.clone()).collect();
        let mut set_err = None;
        for ns in &nss {
            if let Err(e) = super::super::loss::set(ns, pct) {
                set_err = Some(e.to_string());
                break;
            }
        }
        let t0 = Instant::now();
        if set_err.is_none() {
            std::thread::sleep(hold);
        }
        let end = Instant::now();
        for ns in &nss {
            r.dropped_packets += super::super::loss::dropped(ns).unwrap_or(0);
        }
        for ns in &nss {
            if let Err(e) = super::super::loss::clear(ns)
                && set_err.is_none()
            {
                set_err = Some(e.to_string());
            }
        }
        r.error = set_err;
        // Let the last probes finish so the window is complete.
        std::thread::sleep(super::super::prober::PROBE_TIMEOUT + Duration::from_millis(10));
        r.secs = (end - t0).as_secs_f64();
        let samples = self.sampler.window(t0, Some(end));
        let sum = super::super::sampler::summarize(&samples, end);
        r.holder_changes = holder_changes(samples.iter().map(|x| x.holders));
        r.no_holder_ms = ms(sum.none_time);
        r.two_holders_ms = ms(sum.multi_time.max(self.sampler.event_overlap(t0, end, 0)));
        r.vip_events = self.sampler.vip_changes(t0, end);
        r.end_holders = samples
            .last()
            .map(|x| self.sampler.holder_names(x.holders))
            .unwrap_or_default();
        let probes = self.prober.window(t0, Some(end));
        r.probes = probes.len();
        r.probe_failures = probes.iter().filter(|p| !p.outcome.is_ok()).count();
        r.max_outage_ms = ms(max_ok_gap(&probes, t0, end));
        self.save_loss_raw(&r, t0, end);
        r
    }

    fn save_loss_raw(&self, r: &LossRun, t0: Instant, end: Instant) {
        let rel = |x: Instant| ms(x.saturating_duration_since(t0));
        let mut s = format!(
            "# {} loss {}% t0=loss on; columns: seq start_ms end_ms outcome\n",
            r.system, r.loss_pct
        );
        self.raw_holder_lines(&mut s, t0, end, &rel);
        for p in self.prober.window(t0, Some(end)) {
            if !p.outcome.is_ok() {
                let _ = writeln!(
                    s,
                    "{}\t{:.1}\t{:.1}\t{}",
                    p.seq,
                    rel(p.start),
                    rel(p.end),
                    p.outcome.label()
                );
            }
        }
        let path = self
            .raw
            .join(format!("{}-loss-{:02}.tsv", r.system, r.loss_pct));
        if let Err(e) = std::fs::write(&path, s) {
            eprintln!("kubeha-lab bench: {}: {e}", path.display());
        }
    }

    fn node(&self, name: &str) -> Result<super::super::Node<'_>> {
        self.lab.node(name)
    }

    pub(super) fn start_system(&self, node: &str) -> Result<()> {
        let n = self.node(node)?;
        if self.sys.is_kubeha() {
            n.start()
        } else {
            n.start_keepalived(self.sys.ka_setting())
        }
    }

    /// The processes run and (kubeha) every agent agrees that `holder`
    /// holds the VIP, sees all members and has quorum.
    fn system_ok(&self, holder: &str) -> bool {
        for n in self.lab.nodes() {
            let Ok(node) = self.node(&n.name) else {
                return false;
            };
            if self.sys.is_kubeha() {
                if node.agent_pid().is_none() {
                    return false;
                }
                let Ok(st) = node.status() else {
                    return false;
                };
                let alive = st.members.iter().filter(|m| m.alive).count();
                if alive != self.lab.nodes().len()
                    || !st.quorum.ok
                    || st.vip.as_ref().and_then(|v| v.holder.as_deref()) != Some(holder)
                {
                    return false;
                }
            } else if node.keepalived_pid().is_none() {
                return false;
            }
        }
        true
    }

    /// Wait for one stable holder that the client reaches: the preferred
    /// (highest priority) node, or any node that stays the holder for 5 s
    /// (so a pending preemption back to the preferred node does not fall
    /// into the next trial).
    pub(super) fn wait_stable(&self, timeout: Duration) -> Result<String> {
        let settle_max = Duration::from_secs(5);
        let start = Instant::now();
        let mut cand: Option<(String, Instant)> = None;
        loop {
            let h = self
                .sampler
                .stable_single(Duration::from_millis(500))
                .filter(|h| self.prober.stable_on(h, Duration::from_millis(500)))
                .filter(|h| self.system_ok(h));
            match h {
                Some(h) => {
                    let since = match &cand {
                        Some((c, s)) if *c == h => *s,
                        _ => {
                            cand = Some((h.clone(), Instant::now()));
                            Instant::now()
                        }
                    };
                    if h == self.preferred || since.elapsed() >= settle_max {
                        return Ok(h);
                    }
                }
                None => cand = None,
            }
            if start.elapsed() >= timeout {
                return Err(LabError::Timeout {
                    what: format!(
                        "one stable VIP holder for {} (interfaces: {:?}, client last answered by {:?})",
                        self.sys,
                        self.sampler.holders(),
                        self.prober.last_answer()
                    ),
                    secs: timeout.as_secs_f64(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn inject(&self, fault: Fault, old: &str) -> Result<()> {
        let n = self.node(old)?;
        match fault {
            Fault::Kill | Fault::KillGroup => {
                let sent = if !self.sys.is_kubeha() {
                    n.kill_keepalived_nowait()
                } else if fault == Fault::KillGroup {
                    n.kill_agent_group_nowait()
                } else {
                    n.signal_agent_nowait(libc::SIGKILL)
                };
                n.stop_responder();
                if !sent {
                    return Err(LabError::node(old, "nothing to kill"));
                }
            }
            Fault::Cut | Fault::Partition => n.cut()?,
            Fault::Carrier => n.cut_carrier()?,
            Fault::Handover => {
                let sent = if self.sys.is_kubeha() {
                    n.signal_agent_nowait(libc::SIGTERM)
                } else {
                    n.term_keepalived_nowait()
                };
                if !sent {
                    return Err(LabError::node(old, "nothing to stop"));
                }
            }
            Fault::Drain => {
                n.drain()?;
            }
            Fault::Loss => {
                return Err(LabError::node(old, "`loss` runs as phases, not trials"));
            }
        }
        Ok(())
    }

    fn restore(&self, fault: Fault, old: &str) -> Result<()> {
        let n = self.node(old)?;
        match fault {
            Fault::Kill | Fault::KillGroup | Fault::Handover => {
                let grace = if fault != Fault::Handover {
                    Duration::from_secs(2)
                } else {
                    Duration::from_secs(15)
                };
                if self.sys.is_kubeha() {
                    if n.agent_pid().is_some() {
                        n.wait_agent_exit(grace)?;
                    }
                } else if n.keepalived_pid().is_some() {
                    n.wait_keepalived_gone(grace)?;
                }
                self.start_system(old)?;
                if !n.responder_running() {
                    n.start_responder()?;
                }
            }
            Fault::Cut | Fault::Carrier => {
                n.heal()?;
                // A stale client ARP entry after a split takes ~30 s to
                // expire (measured by `partition`); start the next trial
                // without that wait.
                self.lab.client_neigh_flush()?;
            }
            Fault::Drain => {
                n.undrain()?;
            }
            Fault::Partition | Fault::Loss => {}
        }
        Ok(())
    }

    pub(super) fn trial(
        &self,
        fault: Fault,
        idx: usize,
        rng: &mut Rng,
        args: &BenchArgs,
    ) -> Result<Trial> {
        let t_settle = Instant::now();
        let old = self.wait_stable(Duration::from_secs(90))?;
        let mut t = Trial {
            system: self.sys.as_str().into(),
            fault: fault.as_str().into(),
            trial: idx,
            old: old.clone(),
            settle_ms: ms(t_settle.elapsed()),
            ..Default::default()
        };
        let phase = rng.below(self.sys.phase_max());
        t.phase_ms = ms(phase);
        std::thread::sleep(phase);
        let t0 = Instant::now();
        if let Err(e) = self.inject(fault, &old) {
            t.error = Some(e.to_string());
            // Best effort back to a known state; the next trial waits for it.
            let _ = self.node(&old).and_then(|n| n.heal());
            return Ok(t);
        }
        t.inject_ms = ms(t0.elapsed());
        let part = Duration::from_secs_f64(args.partition_secs);
        let limit = if fault == Fault::Partition {
            part
        } else if self.sys.is_fast() {
            Duration::from_secs(10)
        } else {
            Duration::from_secs(20)
        };
        let first = self.prober.wait_ok_where(t0, limit, |n| n != old);
        let observe = if self.sys.is_fast() {
            Duration::from_millis(500)
        } else {
            Duration::from_millis(1000)
        };
        let mut end;
        if fault == Fault::Partition {
            if let Some(rest) = (t0 + part).checked_duration_since(Instant::now()) {
                std::thread::sleep(rest);
            }
            let t_heal = Instant::now();
            t.cut_ms = Some(ms(t_heal - t0));
            self.node(&old)?.heal()?;
            self.after_heal(&mut t, t_heal, Duration::from_secs_f64(args.heal_wait))?;
            end = Instant::now();
        } else {
            std::thread::sleep(observe);
            end = Instant::now();
        }
        // Let the last probes finish so the window is complete.
        std::thread::sleep(super::super::prober::PROBE_TIMEOUT + Duration::from_millis(10));
        end = end.max(t0);
        let probes = self.prober.window(t0, Some(end));
        let samples = self.sampler.window(t0, Some(end));
        if let Some(f) = &first {
            t.failover_ms = Some(ms(f.end - t0));
            t.new = f.outcome.node().map(str::to_string);
            t.failed_probes = probes
                .iter()
                .filter(|p| !p.outcome.is_ok() && p.start < f.end)
                .count();
            t.old_answers_after_switch = probes
                .iter()
                .filter(|p| p.start > f.end && p.outcome.node() == Some(old.as_str()))
                .count();
            t.errors_after_switch = probes
                .iter()
                .filter(|p| p.start > f.end && !p.outcome.is_ok())
                .count();
        }
        t.outage_ms = ms(max_ok_gap(&probes, t0, end));
        let sum = super::super::sampler::summarize(&samples, end);
        t.multi_ms = ms(sum.multi_time);
        t.max_holders = sum.max_holders;
        let old_bit = self
            .sampler
            .names()
            .iter()
            .position(|n| *n == old)
            .map(|i| 1u64 << i)
            .unwrap_or(0);
        let is_kill = matches!(fault, Fault::Kill | Fault::KillGroup);
        let killed = if is_kill { old_bit } else { 0 };
        t.overlap_ms = ms(self.sampler.event_overlap(t0, end, 0));
        t.overlap_live_ms = ms(self.sampler.event_overlap(t0, end, killed));
        t.vip_events = self.sampler.vip_changes(t0, end);
        if is_kill {
            let live: Vec<_> = samples
                .iter()
                .map(|s| super::super::Sample {
                    holders: s.holders & !old_bit,
                    ..*s
                })
                .collect();
            t.multi_live_ms = ms(super::super::sampler::summarize(&live, end).multi_time);
            t.stale_vip_on_old = samples.last().is_some_and(|s| s.holders & old_bit != 0);
        } else {
            t.multi_live_ms = t.multi_ms;
        }
        self.save_raw(&t, t0, end);
        let t_restore = Instant::now();
        self.restore(fault, &old)?;
        t.restore_ms = ms(t_restore.elapsed());
        Ok(t)
    }

    /// After a partition heals: wait (up to 60 s) until one node holds the
    /// VIP and the client is answered by it steadily for a second; watch
    /// the client's ARP entry meanwhile.
    fn after_heal(&self, t: &mut Trial, t_heal: Instant, limit: Duration) -> Result<()> {
        let steady = Duration::from_secs(1);
        let mut arp_wrong_last: Option<Instant> = None;
        let mut final_holder = None;
        while t_heal.elapsed() < limit {
            let holders = self.sampler.holders();
            if let Ok(ne) = self.lab.client_neigh()
                && let Some(node) = &ne.node
                && !holders.contains(node)
            {
                arp_wrong_last = Some(Instant::now());
            }
            if let Some(h) = self.sampler.stable_single(steady)
                && self.prober.stable_on(&h, steady)
                && t_heal.elapsed() >= steady
            {
                final_holder = Some(h);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let end = Instant::now();
        let probes = self.prober.window(t_heal, Some(end));
        t.max_gap_after_heal_ms = Some(ms(max_ok_gap(&probes, t_heal, end)));
        t.arp_wrong_ms = Some(arp_wrong_last.map(|x| ms(x - t_heal)).unwrap_or(0.0));
        if let Some(h) = &final_holder {
            // Start of the final unbroken run of answers from `h`.
            let mut start = None;
            for p in probes.iter().rev() {
                if p.outcome.node() == Some(h.as_str()) {
                    start = Some(p.end);
                } else {
                    break;
                }
            }
            t.reconverge_ms = start.map(|s| ms(s.saturating_duration_since(t_heal)));
            t.arp_ok_at_end = self
                .lab
                .client_neigh()
                .ok()
                .map(|ne| ne.node.as_deref() == Some(h.as_str()));
        } else {
            t.arp_ok_at_end = Some(false);
        }
        t.final_holder = final_holder;
        Ok(())
    }

    fn save_raw(&self, t: &Trial, t0: Instant, end: Instant) {
        let from = t0.checked_sub(Duration::from_millis(500)).unwrap_or(t0);
        let rel = |x: Instant| {
            if x >= t0 { ms(x - t0) } else { -ms(t0 - x) }
        };
        let mut s = format!(
            "# {} {} #{} old={} t0=fault; columns: seq start_ms end_ms outcome\n",
            t.system, t.fault, t.trial, t.old
        );
        self.raw_holder_lines(&mut s, from, end, &rel);
        for e in self.sampler.events(from, Some(end)) {
            let _ = writeln!(
                s,
                "# event {:.2} ms {} {}",
                rel(e.t),
                self.sampler
                    .names()
                    .get(e.node)
                    .map(String::as_str)
                    .unwrap_or("?"),
                if e.present {
                    "added the VIP"
                } else {
                    "removed the VIP"
                }
            );
        }
        for p in self.prober.window(from, Some(end)) {
            let _ = writeln!(
                s,
                "{}\t{:.1}\t{:.1}\t{}",
                p.seq,
                rel(p.start),
                rel(p.end),
                p.outcome.label()
            );
        }
        let path = self
            .raw
            .join(format!("{}-{}-{:02}.tsv", t.system, t.fault, t.trial));
        if let Err(e) = std::fs::write(&path, s) {
            eprintln!("kubeha-lab bench: {}: {e}", path.display());
        }
    }
}
