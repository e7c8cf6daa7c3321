//! The fence as separate actors (docs/PROTOCOL.md §1, "the fence"): the VIP
//! guardian process beside the agent, and the kernel's address lifetime.
//!
//! Each node has three things that can be stopped on their own: the agent
//! (its core and the shell's effects in flight), the guardian, and the whole
//! VM, whose kernel then answers nothing. The VIP as the *kernel* holds it
//! is `SimNode::vip`; S1 is checked on the kernels that hold it and answer
//! (not frozen), whatever the cores believe:
//!
//! - while any node that can still act (its agent or guardian runs) is one
//!   of two answering holders: a violation at once;
//! - when every holder but one has no kubeha process running (agent and
//!   guardian frozen or dead), the overlap is the documented kernel-lifetime
//!   case and must end within [`World::kernel_overlap_bound`].

use kubeha_core::wire::LeaseRelease;

use super::*;

/// The guardian acts this long after an armed deadline (agent guardian::SLACK).
const SLACK: Us = 5 * MS;
/// The guardian's own reaction, from its timer or a notification.
const GUARD_LATENCY: Us = MS;
/// While holding, the shell restarts the lifetime at most this far apart
/// (agent guard::RENEW_LIFETIME_EVERY).
const RENEW_EVERY: Us = 100 * MS;
/// The kernel's address worker acts up to this early (ADDRCONF_TIMER_FUZZ_MINUS)...
const KERNEL_EARLY: Us = 20 * MS;
/// ... and up to this late (ADDRCONF_TIMER_FUZZ plus workqueue latency).
const KERNEL_LATE: Us = 300 * MS;

/// One node's guardian and kernel lifetime.
#[derive(Clone, Debug, Default)]
pub(super) struct NodeFence {
    /// Real instant the armed lease deadline falls on (`None`: not armed).
    deadline: Option<Us>,
    token: u64,
    guard_dead: bool,
    guard_paused_until: Us,
    pub(super) agent_paused_until: Us,
    vm_frozen_until: Us,
    /// The kernel deletes the VIP then, unless renewed.
    expiry_token: u64,
    last_renew: Option<Us>,
    incarnation: u64,
    /// The guardian saw the VIP go; the agent learns at its next step.
    fired: bool,
    /// The kernel's VIP is a dead run's, not yet removed by this run (whose
    /// `Node::new` removes it first): the kernel-lifetime case still, not a
    /// holder that can act.
    pub(super) leftover: bool,
}

#[derive(Clone, Debug)]
pub(super) enum FenceEv {
    GuardFire { node: usize, token: u64 },
    GuardResume { node: usize },
    VmResume { node: usize },
    KernelExpire { node: usize, token: u64 },
    PauseGuardian { node: usize, dur: Us },
    PauseAll { node: usize, dur: Us },
    FreezeVm { node: usize, dur: Us },
    KillAll { node: usize },
}

#[derive(Clone, Debug)]
pub(super) struct Overlap {
    start: Us,
    /// Already a violation (any overlap not of the kernel-lifetime case is
    /// one at once).
    flagged: bool,
}

impl World {
    /// `IgnoreExpiry` breaks the whole shell, guardian included: the
    /// checker must still see what a holder that ignores expiry does.
    fn fencing(&self) -> bool {
        !matches!(
            self.opts.mutation,
            Some(Mutation::NoFence | Mutation::IgnoreExpiry)
        )
    }

    /// The lifetime the shell adds the VIP with (agent guard::kernel_lifetime).
    fn kernel_lifetime(&self) -> Us {
        let need = self.timing.holder_lease().as_micros() as u64 + RENEW_EVERY + KERNEL_EARLY;
        need.div_ceil(1_000_000).max(1) * 1_000_000
    }

    /// The longest two kernels may answer when every holder but one is
    /// frozen or dead: the lifetime runs out at most `lifetime + late` after
    /// its last renewal (a step of the holder, at most `renew_every` before
    /// the freeze); a successor holds at the earliest when the grant of the
    /// frozen holder's last request (sent at most `renew_every` before the
    /// freeze) ran out, `L` of a voter's clock after it.
    pub(super) fn kernel_overlap_bound(&self) -> Us {
        let l = self.timing.lease.as_micros() as u64;
        let renew = self.timing.renew_every.as_micros() as u64;
        let takeover = l * (1_000_000 - MAX_DRIFT_PPM) / (1_000_000 + MAX_DRIFT_PPM);
        (self.kernel_lifetime() + KERNEL_LATE + 2 * renew).saturating_sub(takeover)
    }

    pub(super) fn agent_paused(&self, i: usize) -> bool {
        self.now < self.nodes[i].fence.agent_paused_until
    }

    pub(super) fn agent_paused_until(&self, i: usize) -> Us {
        self.nodes[i].fence.agent_paused_until
    }

    fn agent_running(&self, i: usize) -> bool {
        self.nodes[i].core.is_some() && !self.agent_paused(i)
    }

    fn guard_running(&self, i: usize) -> bool {
        let f = &self.nodes[i].fence;
        self.nodes[i].up
            && !f.guard_dead
            && self.now >= f.guard_paused_until
            && self.now >= f.vm_frozen_until
    }

    fn guard_allows(&self, i: usize) -> bool {
        self.nodes[i].fence.deadline.is_some_and(|d| self.now < d)
    }

    /// A new agent (and its guardian) starts.
    pub(super) fn fence_boot(&mut self, i: usize, incarnation: u64) {
        let f = &mut self.nodes[i].fence;
        f.guard_dead = false;
        f.guard_paused_until = 0;
        f.agent_paused_until = 0;
        f.deadline = None;
        f.token += 1;
        f.fired = false;
        f.last_renew = None;
        f.incarnation = incarnation;
        let leftover = self.nodes[i].vip;
        self.nodes[i].fence.leftover = leftover;
    }

    /// The agent is gone; its guardian (if alive) handles the death
    /// (`VipCleanup`), then exits.
    pub(super) fn fence_crash(&mut self, i: usize, power_off: bool) {
        let f = &mut self.nodes[i].fence;
        f.deadline = None;
        f.token += 1;
        if power_off {
            f.guard_dead = true;
            f.expiry_token += 1;
        }
    }

    /// Whether a dead agent's guardian is there to clean up after it.
    pub(super) fn guard_alive(&self, i: usize) -> bool {
        !self.nodes[i].fence.guard_dead
    }

    /// When the guardian can act (its or the VM's freeze over).
    pub(super) fn guard_resumes_at(&self, i: usize) -> Us {
        let f = &self.nodes[i].fence;
        f.guard_paused_until.max(f.vm_frozen_until)
    }

    /// The guardian's death handling, after it removed the VIP: the voters
    /// free the dead incarnation's lease at once.
    pub(super) fn guard_release_for_dead_agent(&mut self, i: usize) {
        self.nodes[i].fence.guard_dead = true;
        if !self.fencing() {
            return;
        }
        let msg = PeerMsg::LeaseRelease(LeaseRelease {
            from: self.nodes[i].spec.name.clone(),
            incarnation: self.nodes[i].fence.incarnation,
            seq: u64::MAX,
        });
        let voters: Vec<usize> = (0..self.nodes.len())
            .filter(|&v| v != i && self.nodes[v].spec.voter)
            .collect();
        for v in voters {
            self.transmit(i, v, msg.clone());
        }
    }

    /// After a step (before its effects): arm the guardian with the
    /// deadline, as the shell does over its link.
    pub(super) fn arm_guard(&mut self, i: usize) {
        let n = &self.nodes[i];
        let Some(core) = n.core.as_ref() else { return };
        let real = core.vip_deadline().map(|d| n.clock.real_at(d));
        if n.fence.deadline == real && !n.fence.fired {
            return;
        }
        let f = &mut self.nodes[i].fence;
        f.deadline = real;
        f.token += 1;
        let token = f.token;
        if let Some(d) = real {
            let at = d.max(self.now) + SLACK + self.rng.range(0, GUARD_LATENCY);
            self.push(at, Ev::Fence(FenceEv::GuardFire { node: i, token }));
        }
    }

    /// After a step's effects: put back a VIP the guardian removed if the
    /// core still holds (re-armed first), and restart the kernel lifetime.
    pub(super) fn fence_after_step(&mut self, i: usize) {
        let local = self.nodes[i].clock.local(self.now);
        let holds = self.nodes[i]
            .core
            .as_ref()
            .is_some_and(|c| c.holds_vip(local));
        if std::mem::take(&mut self.nodes[i].fence.fired) {
            if holds && !self.nodes[i].vip {
                self.arm_guard(i);
                self.apply_effects(i, vec![Effect::AddVip], false);
            }
            return;
        }
        if holds
            && self.nodes[i].vip
            && self.nodes[i]
                .fence
                .last_renew
                .is_none_or(|t| self.now >= t + RENEW_EVERY)
        {
            self.start_lifetime(i);
        }
    }

    fn start_lifetime(&mut self, i: usize) {
        self.nodes[i].fence.last_renew = Some(self.now);
        self.nodes[i].fence.expiry_token += 1;
        if self.opts.mutation == Some(Mutation::NoLifetime) {
            return;
        }
        let token = self.nodes[i].fence.expiry_token;
        let at = self.now + self.kernel_lifetime() - KERNEL_EARLY
            + self.rng.range(0, KERNEL_EARLY + KERNEL_LATE);
        self.push(at, Ev::Fence(FenceEv::KernelExpire { node: i, token }));
    }

    /// The shell's netlink request to add the VIP reaches the kernel. A
    /// running guardian removes a VIP that appears while no deadline is in
    /// the future (an agent frozen inside its own add), at once.
    pub(super) fn kernel_add(&mut self, i: usize) {
        if self.fencing() && self.guard_running(i) && !self.guard_allows(i) {
            let name = self.nodes[i].spec.name.clone();
            self.note(|| format!("{name} guardian removed a VIP added after the lease deadline"));
            self.nodes[i].fence.fired = true;
            return;
        }
        self.set_vip(i, true);
        self.start_lifetime(i);
    }

    fn guard_remove(&mut self, i: usize, why: &str) {
        self.nodes[i].fence.deadline = None;
        self.nodes[i].fence.token += 1;
        self.nodes[i].fence.fired = true;
        if self.nodes[i].vip {
            let name = self.nodes[i].spec.name.clone();
            self.note(|| format!("{name} guardian removes the VIP: {why}"));
            self.set_vip(i, false);
        }
    }

    pub(super) fn handle_fence(&mut self, ev: FenceEv) {
        match ev {
            FenceEv::GuardFire { node, token } => {
                if self.nodes[node].fence.token != token
                    || !self.fencing()
                    || !self.nodes[node].up
                    || self.nodes[node].fence.guard_dead
                {
                    return;
                }
                if !self.guard_running(node) {
                    let at = self.guard_resumes_at(node);
                    self.push(at, Ev::Fence(FenceEv::GuardFire { node, token }));
                    return;
                }
                self.guard_remove(node, "lease deadline");
            }
            FenceEv::GuardResume { node } | FenceEv::VmResume { node } => {
                if self.fencing()
                    && self.guard_running(node)
                    && self.nodes[node].vip
                    && !self.guard_allows(node)
                {
                    self.guard_remove(node, "found after the lease deadline on resume");
                }
                self.s1_update();
            }
            FenceEv::KernelExpire { node, token } => {
                if self.nodes[node].fence.expiry_token != token || !self.nodes[node].vip {
                    return;
                }
                let frozen = self.nodes[node].fence.vm_frozen_until;
                if self.now < frozen {
                    self.push(frozen, Ev::Fence(FenceEv::KernelExpire { node, token }));
                    return;
                }
                let local = self.nodes[node].clock.local(self.now);
                if self.nodes[node]
                    .core
                    .as_ref()
                    .is_some_and(|c| c.holds_vip(local))
                    && !self.agent_paused(node)
                {
                    let name = self.nodes[node].spec.name.clone();
                    self.violations.push(format!(
                        "fence: the kernel lifetime removed {name}'s VIP while its lease counted"
                    ));
                }
                let name = self.nodes[node].spec.name.clone();
                self.note(|| format!("{name} kernel: the VIP's lifetime ran out"));
                self.nodes[node].fence.fired = true;
                self.set_vip(node, false);
            }
            FenceEv::PauseGuardian { node, dur } => self.pause_guardian(node, dur),
            FenceEv::PauseAll { node, dur } => {
                self.pause_guardian(node, dur);
                self.handle(Ev::Pause { node, dur });
            }
            FenceEv::FreezeVm { node, dur } => {
                let until = self.now + dur;
                let f = &mut self.nodes[node].fence;
                f.vm_frozen_until = f.vm_frozen_until.max(until);
                self.pause_guardian(node, dur);
                self.handle(Ev::Pause { node, dur });
                self.push(until, Ev::Fence(FenceEv::VmResume { node }));
                self.s1_update();
            }
            FenceEv::KillAll { node } => {
                self.nodes[node].fence.guard_dead = true;
                self.crash(node, false);
            }
        }
    }

    fn pause_guardian(&mut self, node: usize, dur: Us) {
        let until = self.now + dur;
        let f = &mut self.nodes[node].fence;
        f.guard_paused_until = f.guard_paused_until.max(until);
        self.push(until, Ev::Fence(FenceEv::GuardResume { node }));
    }

    /// S1 on the kernels that hold the VIP and answer.
    pub(super) fn s1_update(&mut self) {
        let answering: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].vip && self.now >= self.nodes[i].fence.vm_frozen_until)
            .collect();
        if answering.len() >= 2 {
            if self.overlap.is_none() {
                let fenced_out = answering
                    .iter()
                    .filter(|&&i| {
                        (!self.agent_running(i) && !self.guard_running(i))
                            || self.nodes[i].fence.leftover
                    })
                    .count();
                let exempt = fenced_out + 1 >= answering.len();
                let names: Vec<&str> = answering
                    .iter()
                    .map(|&i| self.nodes[i].spec.name.as_str())
                    .collect();
                let msg = format!(
                    "S1: {} hold the VIP at {:.3} ms",
                    names.join(" and "),
                    self.now as f64 / 1000.0
                );
                if exempt {
                    self.note(|| format!("{msg} (kernel lifetime case)"));
                } else {
                    self.violations.push(msg);
                }
                self.overlap = Some(Overlap {
                    start: self.now,
                    flagged: !exempt,
                });
            }
        } else if let Some(o) = self.overlap.take() {
            let d = self.now - o.start;
            self.note(|| format!("two holders for {:.3} ms", d as f64 / 1000.0));
            if !o.flagged && d > self.kernel_overlap_bound() {
                self.flag_overlap(o.start, d);
            }
        }
    }

    /// Called before every event: an exempt overlap past its bound.
    pub(super) fn s1_overdue(&mut self) {
        let bound = self.kernel_overlap_bound();
        if let Some(o) = &self.overlap
            && !o.flagged
            && self.now > o.start + bound
        {
            let start = o.start;
            self.overlap.as_mut().unwrap().flagged = true;
            self.flag_overlap(start, self.now - start);
        }
    }

    fn flag_overlap(&mut self, start: Us, d: Us) {
        let msg = format!(
            "S1: two kernels answered for the VIP from {:.3} ms for more than {:.3} ms (frozen or dead holder; bound {:.3} ms)",
            start as f64 / 1000.0,
            d as f64 / 1000.0,
            self.kernel_overlap_bound() as f64 / 1000.0
        );
        self.violations.push(msg);
    }
}
