//! A cloud VIP (provider `digitalocean`) as a separate actor: the cloud's
//! Reserved IP, which one droplet receives, moved by `assign` actions that
//! take a while, one at a time; and per node how its API calls fare (works,
//! fails for good, fails transiently for ever, or fails until some instant).
//!
//! The simulated shell does what the agent does: the core's `AddVip` starts
//! the assignment (`acquire`), its `RemoveVip` stops it (`release`), and the
//! provider's view comes back as `Input::VipAssignment` (`Pending`, then
//! `Assigned` or `Failing`). An action the cloud has started completes even
//! when the node that asked has let go or crashed (as DigitalOcean's do).
//!
//! Checked: S1 as before (the lease and the actuated VIP; the cloud only
//! follows); and, after the heal, that the run ends with a lease holder
//! whose assignment works and to which the cloud routes the IP, stable for
//! [`World::cloud_stable`], within [`World::cloud_bound`].

use kubeha_core::lease::cloud::MAX_HOLD_FACTOR;
use kubeha_core::lease::{Assignment, CloudTiming};

use super::*;

/// How a node's cloud calls fare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloudMode {
    Works,
    /// 401/403/404 on every call.
    Permanent,
    /// 5xx / timeouts for ever.
    Transient,
    /// 5xx until this real instant, then it works.
    FlakyUntil(Us),
}

#[derive(Clone, Debug)]
pub(super) struct CloudWorld {
    pub(super) timing: CloudTiming,
    pub(super) modes: Vec<CloudMode>,
    /// The droplet the cloud routes the IP to.
    pub(super) assigned_to: Option<usize>,
    /// Per node: between acquire and release (the provider's `wanted`).
    wants: Vec<bool>,
    /// Per node: bumped by every acquire and release; stale events drop.
    round: Vec<u64>,
    /// The cloud runs one action on the IP at a time (the others get 422
    /// and retry): the next one starts no earlier than this.
    busy_until: Us,
    /// Duration of one `assign` action.
    action: (Us, Us),
    /// One API call's latency.
    call: (Us, Us),
    /// Since when the end condition holds (after the heal).
    good_since: Option<Us>,
    /// When it first held long enough.
    pub(super) done_at: Option<Us>,
    /// Per node: the core's `faults_total` already counted.
    faults_seen: Vec<u64>,
}

#[derive(Clone, Debug)]
pub(super) enum CloudEv {
    /// The provider makes (or retries) its calls.
    Try { node: usize, round: u64 },
    /// The cloud finishes an action: the IP now routes to `node`.
    Complete { node: usize, round: u64 },
    /// The holder checks the IP again (the agent's periodic re-announce,
    /// `DoVip` at most once a minute): moved away, it assigns again.
    Verify { node: usize, round: u64 },
}

impl CloudWorld {
    /// Modes for `n` nodes, at least one candidate working.
    pub(super) fn random(rng: &mut Rng, nodes: &[SimNode], lease: Us, chaos: Us) -> CloudWorld {
        let mut modes: Vec<CloudMode> = nodes
            .iter()
            .map(|_| match rng.below(6) {
                0 | 1 => CloudMode::Works,
                2 => CloudMode::Permanent,
                3 => CloudMode::Transient,
                _ => CloudMode::FlakyUntil(rng.range(0, chaos + lease * 4)),
            })
            .collect();
        let cands: Vec<usize> = (0..nodes.len())
            .filter(|&i| nodes[i].spec.prio.is_some())
            .collect();
        let works = |m: CloudMode| matches!(m, CloudMode::Works | CloudMode::FlakyUntil(_));
        if !cands.iter().any(|&i| works(modes[i])) && !cands.is_empty() {
            let i = cands[rng.below(cands.len() as u64) as usize];
            modes[i] = CloudMode::Works;
        }
        let action_hi = *rng.pick(&[lease / 10, lease, lease * 3]);
        CloudWorld::new(
            CloudTiming {
                assign_timeout: Duration::from_micros(lease * 5 + action_hi),
            },
            modes,
            (action_hi / 4, action_hi.max(1)),
            lease / 20,
        )
    }

    pub(super) fn new(
        timing: CloudTiming,
        modes: Vec<CloudMode>,
        action: (Us, Us),
        call_hi: Us,
    ) -> CloudWorld {
        let n = modes.len();
        CloudWorld {
            timing,
            modes,
            assigned_to: None,
            wants: vec![false; n],
            round: vec![0; n],
            busy_until: 0,
            action,
            call: (call_hi / 10, call_hi.max(1)),
            good_since: None,
            done_at: None,
            faults_seen: vec![0; n],
        }
    }

    fn works_at(&self, i: usize, now: Us) -> Option<bool> {
        match self.modes[i] {
            CloudMode::Works => Some(true),
            CloudMode::FlakyUntil(t) => Some(now >= t),
            CloudMode::Permanent => None,
            CloudMode::Transient => Some(false),
        }
    }

    /// The node's calls succeed from now on (or will: a flaky one).
    pub(super) fn can_work(&self, i: usize) -> bool {
        matches!(self.modes[i], CloudMode::Works | CloudMode::FlakyUntil(_))
    }
}

impl World {
    /// The shell carried out `AddVip` (`on`) or `RemoveVip` on node `i`.
    pub(super) fn cloud_want(&mut self, i: usize, on: bool) {
        let Some(c) = self.cloud.as_mut() else {
            return;
        };
        if c.wants[i] == on {
            return;
        }
        c.wants[i] = on;
        c.round[i] += 1;
        let round = c.round[i];
        let report = if on {
            self.push(self.now, Ev::Cloud(CloudEv::Try { node: i, round }));
            Assignment::Pending
        } else {
            Assignment::Idle
        };
        self.cloud_report(i, report);
    }

    /// A fresh agent: its provider wants nothing.
    pub(super) fn cloud_boot(&mut self, i: usize) {
        if let Some(c) = self.cloud.as_mut() {
            c.wants[i] = false;
            c.round[i] += 1;
            c.faults_seen[i] = 0;
        }
    }

    /// After a step: count the core's new cloud faults.
    pub(super) fn cloud_after_step(&mut self, i: usize) {
        let Some(c) = self.cloud.as_mut() else {
            return;
        };
        let n = &self.nodes[i];
        let Some(st) = n
            .core
            .as_ref()
            .and_then(|core| core.status(n.clock.local(self.now)).cloud)
        else {
            return;
        };
        if st.faults_total > c.faults_seen[i] {
            self.stats.cloud_faults += st.faults_total - c.faults_seen[i];
            c.faults_seen[i] = st.faults_total;
            let name = n.spec.name.clone();
            self.note(|| format!("{name} cloud fault {:?}: lets the lease go", st.fault));
        }
    }

    fn cloud_report(&mut self, i: usize, a: Assignment) {
        self.cloud_report_at(self.now, i, a);
    }

    /// The provider's view reaches the core at `t` (the shell looks after
    /// every step and every gossip round).
    fn cloud_report_at(&mut self, t: Us, i: usize, a: Assignment) {
        let epoch = self.nodes[i].epoch;
        let name = self.nodes[i].spec.name.clone();
        self.note(|| format!("{name} cloud reports {a:?}"));
        self.push(
            t,
            Ev::Input {
                node: i,
                epoch,
                input: Input::VipAssignment(a),
            },
        );
    }

    /// Whether `round` is still node `i`'s current assignment (its agent up).
    fn cloud_current(&self, i: usize, round: u64) -> bool {
        self.cloud
            .as_ref()
            .is_some_and(|c| c.round[i] == round && c.wants[i])
            && self.nodes[i].up
    }

    pub(super) fn handle_cloud(&mut self, ev: CloudEv) {
        let now = self.now;
        let Some(verify_every) = self
            .cloud
            .as_ref()
            .map(|c| c.timing.assign_timeout.as_micros() as u64)
        else {
            return;
        };
        match ev {
            CloudEv::Try { node, round } => {
                if !self.cloud_current(node, round) {
                    return;
                }
                // A frozen agent's provider task is frozen with it.
                if self.agent_paused(node) {
                    let t = self.agent_paused_until(node);
                    self.push(t, Ev::Cloud(CloudEv::Try { node, round }));
                    return;
                }
                // The provider calls only while the lease is valid (the
                // agent hands it the lease deadline after every step): a
                // task that resumes before its core has noticed the lease
                // ran out waits, and its release ends it.
                let n = &self.nodes[node];
                let local = n.clock.local(now);
                let valid = n
                    .core
                    .as_ref()
                    .and_then(|core| core.vip_deadline())
                    .is_some_and(|d| d > local);
                if !valid {
                    let t = now + self.timing.renew_every.as_micros() as u64;
                    self.push(t, Ev::Cloud(CloudEv::Try { node, round }));
                    return;
                }
                let c = self.cloud.as_mut().expect("a cloud");
                let call = self.rng.range(c.call.0, c.call.1);
                match c.works_at(node, now) {
                    Some(true) => {
                        if c.assigned_to == Some(node) && c.busy_until <= now {
                            // Already ours: the check answers, no action.
                            self.push(now + call, Ev::Cloud(CloudEv::Complete { node, round }));
                            return;
                        }
                        let start = now.max(c.busy_until) + call;
                        let done = start + self.rng.range(c.action.0, c.action.1);
                        c.busy_until = done;
                        self.push(done, Ev::Cloud(CloudEv::Complete { node, round }));
                    }
                    Some(false) => {
                        let retry = self.rng.range(c.call.1, c.call.1 * 10);
                        self.push(now + call + retry, Ev::Cloud(CloudEv::Try { node, round }));
                        self.cloud_report_at(
                            now + call,
                            node,
                            Assignment::Failing { permanent: false },
                        );
                    }
                    None => self.cloud_report_at(
                        now + call,
                        node,
                        Assignment::Failing { permanent: true },
                    ),
                }
            }
            CloudEv::Complete { node, round } => {
                // The cloud moves the IP whoever wants it now.
                let c = self.cloud.as_mut().expect("a cloud");
                c.assigned_to = Some(node);
                let current = c.round[node] == round && c.wants[node];
                let name = self.nodes[node].spec.name.clone();
                self.note(|| format!("cloud routes the IP to {name}"));
                if current {
                    self.cloud_report(node, Assignment::Assigned);
                    let t = now + verify_every;
                    self.push(t, Ev::Cloud(CloudEv::Verify { node, round }));
                }
            }
            CloudEv::Verify { node, round } => {
                if !self.cloud_current(node, round) {
                    return;
                }
                if self.agent_paused(node) {
                    let t = self.agent_paused_until(node);
                    self.push(t, Ev::Cloud(CloudEv::Verify { node, round }));
                    return;
                }
                if self.cloud_assigned_to() == Some(node) {
                    let t = now + verify_every;
                    self.push(t, Ev::Cloud(CloudEv::Verify { node, round }));
                } else {
                    let name = self.nodes[node].spec.name.clone();
                    self.note(|| format!("{name} finds the IP moved away: assigns again"));
                    self.push(now, Ev::Cloud(CloudEv::Try { node, round }));
                    self.cloud_report(node, Assignment::Pending);
                }
            }
        }
    }

    /// After the heal, on every gossip round: does the run end well yet?
    /// A holder (the only one), whose assignment works, the IP routed to
    /// it, for [`World::cloud_stable`] without a change.
    pub(super) fn check_cloud(&mut self) {
        let now = self.now;
        let stable = self.cloud_stable();
        let holders = self.vip_holders();
        let Some(c) = self.cloud.as_mut() else {
            return;
        };
        if !self.healed || c.done_at.is_some() {
            return;
        }
        let good = match holders[..] {
            [h] => c.can_work(h) && c.assigned_to == Some(h) && c.wants[h],
            _ => false,
        };
        if !good {
            c.good_since = None;
            return;
        }
        let since = *c.good_since.get_or_insert(now);
        if now >= since + stable {
            c.done_at = Some(since);
        }
    }

    /// How long the end state must last: long enough for a candidate that
    /// has not failed yet to preempt and fail (it asks with its own
    /// priority until its first fault).
    pub(super) fn cloud_stable(&self) -> Us {
        let Some(c) = &self.cloud else { return 0 };
        let t = &self.timing;
        (t.preempt_after + c.timing.assign_timeout + t.lease * 4).as_micros() as u64
    }

    /// The bound on the end state after the heal: a working candidate may
    /// be standing aside (at most `MAX_HOLD_FACTOR` × `assign_timeout`),
    /// every candidate whose
    /// cloud fails may take the lease once (preempting, or when it is free)
    /// and hold it for `assign_timeout`, then the lease finds a working
    /// one; plus a flaky node's failures that end during the run, and the
    /// actions in the cloud's queue.
    pub(super) fn cloud_bound(&self) -> Us {
        let Some(c) = &self.cloud else { return 0 };
        let t = &self.timing;
        let cands = self.nodes.iter().filter(|n| n.spec.prio.is_some()).count() as u32;
        let per = t.preempt_after + c.timing.assign_timeout + vip_bound(t);
        let flaky_end = c
            .modes
            .iter()
            .filter_map(|m| match m {
                CloudMode::FlakyUntil(u) => Some(u.saturating_sub(self.heal_at)),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        // A node that works (again) may be standing aside at the heal.
        // ... and an IP a late action moved away comes back at the
        // holder's next check (one `assign_timeout` here).
        let aside = c.timing.assign_timeout * (MAX_HOLD_FACTOR + 1);
        (per * (cands + 1) + aside).as_micros() as u64 + flaky_end + 4 * c.action.1
    }

    /// The check at the end of a run.
    pub(super) fn finish_cloud(&self, liveness: &mut Vec<String>) {
        let Some(c) = &self.cloud else { return };
        if !self.healed || !self.has_candidates() {
            return;
        }
        let bound = self.cloud_bound();
        match c.done_at {
            Some(t) if t <= self.heal_at + bound => {}
            other => {
                let holders: Vec<&str> = self
                    .vip_holders()
                    .iter()
                    .map(|&i| self.nodes[i].spec.name.as_str())
                    .collect();
                liveness.push(format!(
                    "cloud: no stable holder with a working assignment within {:.0} ms of heal (reached: {:?}; holders {holders:?}, IP on {:?}, modes {:?})",
                    bound as f64 / 1000.0,
                    other.map(|t| (t - self.heal_at) / 1000),
                    c.assigned_to.map(|i| self.nodes[i].spec.name.as_str()),
                    c.modes
                ));
            }
        }
    }

    /// Tests: a cloud VIP for this world (set before the nodes start).
    /// Let `first` take the lease before `standby` can (the standby is
    /// drained from its start, within the voters' quarantine, until `first`
    /// holds), so that the cloud IP was never on the standby. Whether
    /// `first` held within `limit`.
    pub fn hold_first(&mut self, first: usize, standby: usize, limit: Duration) -> bool {
        // Every node of a quiet world starts within its first 100 ms.
        self.run_until(Duration::from_millis(100));
        self.act(Action::Drain {
            node: standby,
            on: true,
        });
        let held = self.run_until_true(limit, |w| w.vip_holders() == [first]);
        self.act(Action::Drain {
            node: standby,
            on: false,
        });
        held
    }

    pub fn set_cloud(&mut self, modes: Vec<CloudMode>, assign_timeout: Duration, action: Duration) {
        let a = action.as_micros() as u64;
        self.cloud = Some(CloudWorld::new(
            CloudTiming { assign_timeout },
            modes,
            (a, a + 1),
            MS,
        ));
    }

    /// Tests: the droplet the cloud routes the IP to.
    pub fn cloud_assigned_to(&self) -> Option<usize> {
        self.cloud.as_ref().and_then(|c| c.assigned_to)
    }
}

/// What a cloud bench trial does (`kubeha-sim bench --cloud`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloudBench {
    /// The holder (its IP assigned) powers off: until the cloud routes the
    /// IP to the new holder.
    Crash,
    /// The better candidate's assignment fails in this mode: from its first
    /// hold until the cloud routes the IP to the standby.
    Failing(CloudMode),
}

impl World {
    /// One trial in a quiet guide cluster with a cloud VIP: `action` per
    /// `assign` action, `assign_timeout` for the guard. The time it
    /// measures, or why there is none.
    pub fn cloud_bench(
        seed: u64,
        profile: Profile,
        kind: CloudBench,
        action: Duration,
        assign_timeout: Duration,
    ) -> Result<Duration, String> {
        let mut w = World::quiet(seed, &Opts::new(profile), Topology::Guide);
        let (lb0, lb1) = (w.node("lb-0"), w.node("lb-1"));
        let mut modes = vec![CloudMode::Works; w.nodes.len()];
        if let CloudBench::Failing(m) = kind {
            w.set_priority(lb0, 200);
            modes[lb0] = m;
        }
        w.set_cloud(modes, assign_timeout, action);
        let mut s = Rng::new(seed).fork(41);
        let far = |w: &World, d: Duration| w.now() + d + action * 4 + Duration::from_secs(10);
        let t0 = match kind {
            CloudBench::Crash => {
                let limit = far(&w, Duration::from_secs(3));
                let assigned = w.run_until_true(limit, |w| {
                    let h = w.vip_holders();
                    h.len() == 1 && w.cloud_assigned_to() == Some(h[0])
                });
                if !assigned {
                    return Err("no assigned holder to crash".into());
                }
                let phase = s.range(0, w.timing.renew_every.as_micros() as u64);
                w.run_until(w.now() + Duration::from_micros(phase));
                let h = w.vip_holders()[0];
                w.act(Action::Crash {
                    node: h,
                    power_off: true,
                });
                w.now()
            }
            CloudBench::Failing(_) => {
                if !w.hold_first(lb0, lb1, Duration::from_secs(5)) {
                    return Err("the failing node never held".into());
                }
                w.now()
            }
        };
        let limit = far(&w, assign_timeout * 2);
        let moved = w.run_until_true(limit, |w| {
            let h = w.vip_holders();
            h.len() == 1
                && w.cloud_assigned_to() == Some(h[0])
                && (kind == CloudBench::Crash || h[0] == lb1)
        });
        if !w.violations().is_empty() {
            return Err(format!("{:?}", w.violations()));
        }
        if !moved {
            return Err(format!("IP not on a working holder {:?} after", limit - t0));
        }
        Ok(w.now() - t0)
    }
}
