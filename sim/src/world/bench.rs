//! Bench worlds: a quiet cluster and one timed failover.

use super::*;

impl World {
    /// A quiet cluster: LAN delays, no loss, truthful gossip, no faults
    /// unless a test or bench adds them. Candidates get equal priorities.
    pub fn quiet(seed: u64, opts: &Opts, topology: Topology) -> World {
        let mut rng = Rng::new(seed);
        let mut w = World::base(seed, opts, topology, &mut rng);
        for n in w.nodes.iter_mut() {
            if n.spec.prio.is_some() {
                n.spec.prio = Some(100);
            }
        }
        let mut s = rng.fork(31);
        for i in 0..w.nodes.len() {
            let at = s.range(0, 100 * MS);
            w.push(at, Ev::Start { node: i });
        }
        w.push(0, Ev::Gossip);
        w.push(0, Ev::Operator);
        w
    }

    /// A quiet cluster for timing one failover: the action hits the holder
    /// 3 s in, at a random phase of its renewal period.
    pub fn bench(seed: u64, profile: Profile, topology: Topology, kind: BenchKind) -> World {
        let mut w = World::quiet(seed, &Opts::new(profile), topology);
        let mut s = Rng::new(seed).fork(32);
        let warm = 3_000 * MS + s.range(0, w.timing.renew_every.as_micros() as u64);
        w.push(warm, Ev::BenchAction(kind));
        w.end_at = warm + 3_000 * MS;
        w.bench_t0 = warm;
        w
    }

    pub(super) fn bench_action(&mut self, kind: BenchKind) {
        let Some(h) = self.nodes.iter().position(|n| n.vip) else {
            self.violations
                .push("bench: no holder before the action".into());
            return;
        };
        self.bench_holder = Some(h);
        match kind {
            BenchKind::Crash => self.crash(h, true),
            BenchKind::Partition => {
                let links: Vec<(usize, usize)> = (0..self.nodes.len())
                    .filter(|&o| o != h)
                    .flat_map(|o| [(h, o), (o, h)])
                    .collect();
                self.handle(Ev::Block { links });
            }
            BenchKind::Drain => self.handle(Ev::Drain { node: h, on: true }),
        }
    }

    /// Run a bench world; returns (failover, gap without any VIP) or None.
    pub fn run_bench(mut self) -> (Option<(Duration, Duration)>, Vec<String>) {
        while let Some(Reverse(e)) = self.queue.pop() {
            if e.t > self.end_at {
                break;
            }
            self.now = e.t;
            self.handle(e.ev);
        }
        let t0 = self.bench_t0;
        let Some(h) = self.bench_holder else {
            return (None, self.violations);
        };
        let up = self
            .vip_log
            .iter()
            .find(|(t, n, on)| *t >= t0 && *n != h && *on)
            .map(|x| x.0);
        let down = self
            .vip_log
            .iter()
            .find(|(t, n, on)| *t >= t0 && *n == h && !*on)
            .map(|x| x.0);
        let r = up.map(|u| {
            let gap = u.saturating_sub(down.unwrap_or(t0));
            (Duration::from_micros(u - t0), Duration::from_micros(gap))
        });
        (r, self.violations)
    }
}
