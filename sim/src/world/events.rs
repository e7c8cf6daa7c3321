//! Events: the run's dispatcher and what each event does to a node: its
//! lifecycle (boot, crash, restart), its steps and their effects carried out
//! in order like the agent shell, the VIP as actuated, and the network.

use super::*;

impl World {
    pub(super) fn handle(&mut self, ev: Ev) {
        self.s1_overdue();
        match ev {
            Ev::Deliver { to, from, msg } => {
                if !self.nodes[to].up {
                    return;
                }
                if self.busy(to) {
                    let t = self.nodes[to].busy_until;
                    self.push(t, Ev::Deliver { to, from, msg });
                    return;
                }
                let from_name = self.nodes[from].spec.name.clone();
                if self.trace.is_some() {
                    let line = format!(
                        "{} <- {} {}",
                        self.nodes[to].spec.name,
                        from_name,
                        short(&msg)
                    );
                    self.note(|| line);
                }
                self.input(
                    to,
                    Input::Peer {
                        from: from_name,
                        msg,
                    },
                );
            }
            Ev::Tick { node, token } => {
                let n = &self.nodes[node];
                if !n.up || n.tick_token != token {
                    return;
                }
                if self.busy(node) {
                    let t = self.nodes[node].busy_until;
                    self.push(t, Ev::Tick { node, token });
                    return;
                }
                self.input(node, Input::Tick);
            }
            Ev::Input { node, epoch, input } => {
                if !self.nodes[node].up || self.nodes[node].epoch != epoch {
                    return;
                }
                if self.busy(node) {
                    let t = self.nodes[node].busy_until;
                    self.push(t, Ev::Input { node, epoch, input });
                    return;
                }
                self.input(node, input);
            }
            Ev::Apply { node, epoch, what } => {
                if self.nodes[node].epoch == epoch {
                    // A frozen agent's effects in flight wait for it.
                    if self.agent_paused(node) {
                        let t = self.agent_paused_until(node);
                        self.push(t, Ev::Apply { node, epoch, what });
                        return;
                    }
                    self.apply(node, what);
                }
            }
            Ev::Start { node } => self.boot(node, false),
            Ev::Crash { node, power_off } => self.crash(node, power_off),
            Ev::Restart { node, wipe } => {
                // Like `systemctl restart`: a stop still in flight (a frozen
                // agent takes its time) finishes first.
                if self.nodes[node].up && self.nodes[node].leaving {
                    self.push(self.now + 50 * MS, Ev::Restart { node, wipe });
                } else {
                    self.boot(node, wipe);
                }
            }
            Ev::CleanStop { node } => {
                if self.nodes[node].up && self.nodes[node].core.is_some() {
                    self.nodes[node].leaving = true;
                    let epoch = self.nodes[node].epoch;
                    self.push(
                        self.now,
                        Ev::Input {
                            node,
                            epoch,
                            input: Input::Stop,
                        },
                    );
                }
            }
            Ev::Down { node, epoch } => {
                if self.nodes[node].epoch == epoch && self.nodes[node].up {
                    let name = self.nodes[node].spec.name.clone();
                    self.note(|| format!("{name} down after clean stop"));
                    self.kill_init(node);
                    let n = &mut self.nodes[node];
                    n.up = false;
                    n.core = None;
                    n.epoch += 1;
                    if n.vip {
                        // The shell removed it before releasing; a node
                        // that still shows it is a bug the checker shows.
                        self.violations
                            .push(format!("{name} stopped with the VIP still up"));
                    }
                }
            }
            Ev::VipCleanup { node, epoch } => {
                // The dead agent's guardian: VIP off, then the release.
                if self.nodes[node].epoch == epoch {
                    let at = self.guard_resumes_at(node);
                    if self.now < at {
                        self.push(at, Ev::VipCleanup { node, epoch });
                        return;
                    }
                    if self.nodes[node].vip {
                        self.set_vip(node, false);
                        self.guard_release_for_dead_agent(node);
                    }
                }
            }
            Ev::Block { links } => {
                for l in links {
                    *self.blocked.entry(l).or_default() += 1;
                }
            }
            Ev::Unblock { links } => {
                for l in links {
                    if let Some(c) = self.blocked.get_mut(&l) {
                        *c -= 1;
                        if *c == 0 {
                            self.blocked.remove(&l);
                        }
                    }
                }
            }
            Ev::Loss { p } => self.net.loss = p,
            Ev::Delay { hi } => self.net.hi = hi,
            Ev::NetNormal => {
                if !self.healed {
                    self.net = self.base_net.clone();
                }
            }
            Ev::Drain { node, on } => {
                if self.nodes[node].up {
                    self.nodes[node].drained = on;
                    let epoch = self.nodes[node].epoch;
                    self.push(
                        self.now,
                        Ev::Input {
                            node,
                            epoch,
                            input: Input::Drain(on),
                        },
                    );
                }
            }
            Ev::Health { node, ok } => {
                self.nodes[node].healthy = ok;
                let epoch = self.nodes[node].epoch;
                self.push(
                    self.now,
                    Ev::Input {
                        node,
                        epoch,
                        input: Input::LocalHealth { lb_healthy: ok },
                    },
                );
            }
            Ev::Lies { p } => {
                if !self.healed {
                    self.lie_p = p;
                }
            }
            Ev::Pause { node, dur } => {
                let n = &mut self.nodes[node];
                n.busy_until = n.busy_until.max(self.now + dur);
                n.fence.agent_paused_until = n.fence.agent_paused_until.max(self.now + dur);
            }
            Ev::Gossip => self.gossip(),
            Ev::InitDone { node, epoch, run } => self.init_done(node, epoch, run),
            Ev::Operator => self.operator(),
            Ev::Destroy { node } => self.destroy(node),
            Ev::Heal => self.heal(),
            Ev::BenchAction(k) => self.bench_action(k),
            Ev::Fence(f) => self.handle_fence(f),
            Ev::Cloud(c) => self.handle_cloud(c),
        }
    }

    pub(super) fn busy(&self, node: usize) -> bool {
        self.now < self.nodes[node].busy_until
    }

    pub(super) fn params(&mut self, i: usize) -> NodeParams {
        let voters: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.spec.voter)
            .map(|n| n.spec.name.clone())
            .collect();
        let n = &self.nodes[i];
        NodeParams {
            name: n.spec.name.clone(),
            voters,
            timing: self.node_timing[i],
            vip_priority: n.spec.prio,
            incarnation: self.rng.next_u64(),
            persisted: n.disk.clone(),
            cloud: self
                .cloud
                .as_ref()
                .filter(|_| n.spec.prio.is_some())
                .filter(|_| self.opts.mutation != Some(Mutation::NoCloudGuard))
                .map(|c| c.timing),
        }
    }

    /// Start (or restart) a node's agent, as the shell does.
    pub(super) fn boot(&mut self, i: usize, wipe: bool) {
        if self.nodes[i].up || self.is_destroyed(i) {
            return;
        }
        // A release run loses one control plane for good; a voter wiped on
        // top of it could never relearn its lock state (the amnesia rule
        // needs `n - q + 1` others), so those runs keep every disk.
        let wipe = wipe && self.release.is_none();
        if wipe {
            let voter = self.nodes[i].spec.voter;
            let other_lost = self.lost_unresolved.is_some_and(|x| x != i);
            if !(voter && self.opts.respect_amnesia && other_lost) {
                if voter && self.nodes[i].disk.is_some() {
                    self.lost_unresolved = Some(i);
                    self.stats.voter_wipes += 1;
                    if self.nodes[i]
                        .disk
                        .as_ref()
                        .is_some_and(|d| d.vote.as_ref().is_some_and(|v| v.committed))
                    {
                        self.stats.committed_wipes += 1;
                    }
                }
                self.nodes[i].disk = None;
            }
        }
        if self.nodes[i].rebooting {
            let ppm = drift(&mut self.rng);
            let now = self.now;
            self.nodes[i].clock.reboot(now, ppm);
            self.nodes[i].rebooting = false;
        }
        let params = self.params(i);
        self.fence_boot(i, params.incarnation);
        self.cloud_boot(i);
        let local = self.nodes[i].clock.local(self.now);
        let had_disk = params.persisted.is_some();
        let (core, effects) = Node::new(params, local);
        {
            let n = &mut self.nodes[i];
            n.core = Some(core);
            n.up = true;
            n.booted = true;
            n.leaving = false;
            n.drained = false;
            n.epoch += 1;
            n.generation += 1;
            n.busy_until = self.now;
            n.view = None;
        }
        let name = self.nodes[i].spec.name.clone();
        self.note(|| format!("{name} starts (state file: {had_disk})"));
        self.apply_effects(i, effects, false);
        self.after_step(i);
        // What the shell feeds a fresh core.
        let epoch = self.nodes[i].epoch;
        let healthy = self.nodes[i].healthy;
        self.push(
            self.now,
            Ev::Input {
                node: i,
                epoch,
                input: Input::LocalHealth {
                    lb_healthy: healthy,
                },
            },
        );
        let local = self.nodes[i].clock.local(self.now);
        let st = self.nodes[i].core.as_ref().unwrap().status(local);
        let kube = self.nodes[i].kube;
        let input = if st.needs_init_check {
            Some(Input::InitFinished {
                ok: matches!(kube, Kube::ControlPlane | Kube::Worker),
                left_artifacts: kube != Kube::None,
            })
        } else if self.nodes[i].spec.cp && kube == Kube::None {
            Some(Input::WantInit)
        } else {
            None
        };
        if let Some(input) = input {
            self.push(
                self.now,
                Ev::Input {
                    node: i,
                    epoch,
                    input,
                },
            );
        }
    }

    pub(super) fn crash(&mut self, i: usize, power_off: bool) {
        if !self.nodes[i].up {
            return;
        }
        let name = self.nodes[i].spec.name.clone();
        self.note(|| format!("{name} crashes (power off: {power_off})"));
        self.stats.crashes += 1;
        let cleanup = self.rng.range(0, self.budget.cleanup);
        let guardian = self.guard_alive(i);
        self.fence_crash(i, power_off);
        let n = &mut self.nodes[i];
        n.up = false;
        n.core = None;
        n.epoch += 1;
        n.busy_until = self.now;
        n.leaving = false;
        n.rebooting = power_off;
        let epoch = n.epoch;
        if n.vip {
            if power_off {
                self.set_vip(i, false);
            } else if guardian {
                // The agent's guardian removes the address when the agent
                // dies (documented assumption: within `cleanup`), then
                // releases its lease. Without a guardian the kernel
                // lifetime does (world/fence.rs).
                self.push(self.now + cleanup, Ev::VipCleanup { node: i, epoch });
            }
        }
        self.kill_init(i);
    }

    /// The agent is gone (crash or stop): its `kubeadm init`, if running,
    /// dies with it. What it leaves is anyone's guess.
    pub(super) fn kill_init(&mut self, i: usize) {
        if let Some(run) = self.nodes[i].running_init.take() {
            let (outcome, kube) = match self.rng.below(10) {
                0..=2 => (RunOutcome::Success, Kube::ControlPlane),
                3..=6 => (RunOutcome::Dirty, Kube::Failed),
                _ => (RunOutcome::Clean, Kube::None),
            };
            self.inits[run].outcome = outcome;
            self.set_kube(i, kube);
        }
    }

    pub(super) fn set_kube(&mut self, i: usize, k: Kube) {
        let n = &mut self.nodes[i];
        n.kube = k;
        n.failed_since = (k == Kube::Failed).then_some(self.now);
    }

    pub(super) fn input(&mut self, i: usize, input: Input) {
        let local = self.nodes[i].clock.local(self.now);
        let stop = matches!(input, Input::Stop);
        let Some(core) = self.nodes[i].core.as_mut() else {
            return;
        };
        let effects = core.step(local, input);
        self.arm_guard(i);
        self.apply_effects(i, effects, true);
        self.fence_after_step(i);
        self.after_step(i);
        if stop {
            let epoch = self.nodes[i].epoch;
            let t = self.nodes[i].busy_until;
            self.push(t, Ev::Down { node: i, epoch });
        }
    }

    /// Carry out effects in order, each completing before the next.
    pub(super) fn apply_effects(&mut self, i: usize, mut effects: Vec<Effect>, in_step: bool) {
        if in_step && self.opts.mutation == Some(Mutation::IgnoreExpiry) {
            let local = self.nodes[i].clock.local(self.now);
            let expired = self.nodes[i]
                .core
                .as_ref()
                .is_some_and(|c| c.status(local).last_vip_drop == Some("expired"));
            if expired {
                effects.retain(|e| *e != Effect::RemoveVip);
            }
        }
        let epoch = self.nodes[i].epoch;
        let mut cursor = self.now.max(self.nodes[i].busy_until);
        for e in effects {
            let name = &self.nodes[i].spec.name;
            if self.trace.is_some() && !matches!(e, Effect::Send { .. } | Effect::Publish { .. }) {
                let mut line = format!("{name} effect {}", effect_str(&e));
                if e == Effect::RemoveVip
                    && let Some(c) = self.nodes[i].core.as_ref()
                {
                    let st = c.status(self.nodes[i].clock.local(self.now));
                    let _ = write!(
                        line,
                        " (last drop {:?}, cloud {:?})",
                        st.last_vip_drop, st.cloud
                    );
                }
                self.note(|| line);
            }
            let what = match e {
                Effect::Send { to, msg } => {
                    let Some(&to) = self.names.get(&to) else {
                        continue;
                    };
                    Apply::Send { to, msg }
                }
                Effect::AddVip => {
                    cursor += self.rng.range(0, self.budget.actuate);
                    Apply::Vip(true)
                }
                Effect::RemoveVip => {
                    cursor += self.rng.range(0, self.budget.actuate);
                    Apply::Vip(false)
                }
                Effect::Persist(p) => {
                    if self.opts.mutation == Some(Mutation::DropPersist) {
                        continue;
                    }
                    cursor += self.rng.range(0, self.budget.persist);
                    Apply::Persist(p)
                }
                Effect::Publish { .. } => continue,
                Effect::StartJob {
                    job: kubeha_core::node::Job::RunInit,
                    ..
                } => Apply::RunInit,
                // kubeadm driver jobs: the simulator sends no KubeFacts, so
                // the driver is off and never starts them.
                Effect::StartJob { .. } => continue,
            };
            if cursor == self.now {
                self.apply(i, what);
            } else {
                self.push(
                    cursor,
                    Ev::Apply {
                        node: i,
                        epoch,
                        what,
                    },
                );
            }
        }
        self.nodes[i].busy_until = cursor;
    }

    pub(super) fn apply(&mut self, i: usize, what: Apply) {
        match what {
            Apply::Vip(on) => {
                // The provider follows the core's wish, whatever the kernel
                // (or the guardian) did with the address.
                self.cloud_want(i, on);
                if self.nodes[i].vip != on {
                    if on {
                        self.kernel_add(i);
                    } else {
                        self.set_vip(i, false);
                    }
                }
            }
            Apply::Persist(p) => self.nodes[i].disk = Some(p),
            Apply::Send { to, msg } => self.transmit(i, to, msg),
            Apply::RunInit => self.run_init(i),
        }
    }

    pub(super) fn set_vip(&mut self, i: usize, on: bool) {
        self.nodes[i].vip = on;
        self.nodes[i].fence.leftover = false;
        self.track_vip_availability();
        self.vip_log.push((self.now, i, on));
        let name = self.nodes[i].spec.name.clone();
        self.note(|| format!("{name} VIP {}", if on { "UP" } else { "down" }));
        self.s1_update();
    }

    /// After the heal: the VIP counts as available from the instant some
    /// node holds it, if from then on it stays up for two leases, handovers
    /// of less than one renewal period aside (preemption moves it).
    pub(super) fn check_vip(&mut self) {
        if !self.healed || self.vip_after_heal.is_some() {
            return;
        }
        let hold = 2 * self.timing.lease.as_micros() as u64;
        let allow = self.timing.renew_every.as_micros() as u64;
        if self.vip_gap_since.is_some_and(|g| self.now > g + allow) {
            self.vip_up_since = None;
            self.vip_gap_since = None;
        }
        if let Some(since) = self.vip_up_since {
            let since = since.max(self.heal_at);
            if self.nodes.iter().any(|n| n.vip) && self.now >= since + hold {
                self.vip_after_heal = Some(since);
            }
        }
    }

    pub(super) fn track_vip_availability(&mut self) {
        let any = self.nodes.iter().any(|n| n.vip);
        let allow = self.timing.renew_every.as_micros() as u64;
        match (any, self.vip_up_since, self.vip_gap_since) {
            (false, Some(_), None) => self.vip_gap_since = Some(self.now),
            (true, Some(_), Some(gap)) => {
                if self.now > gap + allow {
                    self.vip_up_since = Some(self.now);
                }
                self.vip_gap_since = None;
            }
            (true, None, _) => {
                self.vip_up_since = Some(self.now);
                self.vip_gap_since = None;
            }
            _ => {}
        }
    }

    pub(super) fn transmit(&mut self, from: usize, to: usize, msg: PeerMsg) {
        if self.blocked.contains_key(&(from, to)) || self.net_rng.chance(self.net.loss) {
            return;
        }
        let copies = if self.net_rng.chance(self.net.dup) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let d = if self.net_rng.chance(self.net.long_p) {
                // A datagram stuck in a queue (or captured and replayed):
                // arrives anywhere within the window the transport accepts
                // a lease frame in (`frame::MAX_EPOCH_LAG + 1` leases).
                self.net_rng.range(
                    0,
                    u64::from(kubeha_core::frame::MAX_EPOCH_LAG + 1)
                        * self.timing.lease.as_micros() as u64,
                )
            } else {
                self.net_rng.range(self.net.lo, self.net.hi)
            };
            self.push(
                self.now + d,
                Ev::Deliver {
                    to,
                    from,
                    msg: msg.clone(),
                },
            );
        }
    }

    pub(super) fn after_step(&mut self, i: usize) {
        self.cloud_after_step(i);
        let late = self.rng.range(0, self.budget.tick_late);
        let n = &mut self.nodes[i];
        let Some(core) = n.core.as_ref() else {
            return;
        };
        if let Some(w) = core.next_wakeup() {
            let t = n.clock.real_at(w).max(self.now) + late;
            n.tick_token += 1;
            let token = n.tick_token;
            self.push(t, Ev::Tick { node: i, token });
        }
        if self.lost_unresolved == Some(i) {
            let local = self.nodes[i].clock.local(self.now);
            let st = self.nodes[i].core.as_ref().unwrap().status(local);
            if st.lock_voter == Some(VoterPhase::Ready) {
                self.lost_unresolved = None;
            }
        }
    }
}
