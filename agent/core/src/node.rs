//! One agent's decision core: the VIP lease (candidate and voter halves), the
//! bootstrap lock, and what the node knows about the others.
//!
//! The shell drives it:
//!
//! ```text
//! let (mut node, effects) = Node::new(params, boottime_now());
//! run(effects);
//! loop {
//!     let input = wait_for(input_channel, node.next_wakeup()) // Tick on timeout
//!     run(node.step(boottime_now(), input));
//! }
//! ```
//!
//! `run` executes effects in order and finishes each before the next:
//! `RemoveVip` is complete (address gone) and `Persist` is on disk (fsync)
//! before a later `Send` leaves. Safety rests on that order.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use crate::config::Role;
use crate::kube::{DriveCtx, KubeDriver, KubeFacts, KubeStatus};
use crate::lease::{
    self, Assignment, CloudGuard, CloudStatus, CloudTiming, LeaseCandidate, LeaseVoter,
    VipDropReason,
};
use crate::lock::{Lock, LockCtx, LockPhase, ReleaseError, VoterPhase};
use crate::membership::{LbHealth, MembershipView, keys};
use crate::time::Time;
use crate::timing::Timing;
use crate::wire::{
    HolderId, LeaseFree, LeaseReply, PeerMsg, Probe, ProbeReply, Refusal, ReleaseRefusal,
};

pub use crate::lock::{InitRecord, Persisted, StoredVote};
pub use job::{Job, JobId, JobOutcome};

mod job;

/// After the shell reports [`Input::VipFault`], the node is no VIP candidate
/// for this many leases (`Timing::lease`): long enough for another candidate
/// to take the address, short enough that a transient netlink error does not
/// keep a good node out for long.
pub const VIP_FAULT_LEASES: u32 = 6;

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeParams {
    pub name: String,
    /// Sorted, unique (as `Config::voters`).
    pub voters: Vec<String>,
    pub timing: Timing,
    /// `Some` = this node is a VIP candidate (role `lb` with a `[vip]`).
    pub vip_priority: Option<u8>,
    /// Unique per agent start (the shell draws it at random). Also seeds
    /// the core's jitter.
    pub incarnation: u64,
    /// The state file's contents; `None` = no file.
    pub persisted: Option<Persisted>,
    /// `Some` = a cloud VIP (provider `digitalocean`): the provider's
    /// reports (`Input::VipAssignment`) are an input of the lease
    /// ([`crate::lease::cloud`]).
    pub cloud: Option<CloudTiming>,
}

#[derive(Clone, Debug)]
pub enum Input {
    /// `next_wakeup()` has come (early or late ticks are harmless).
    Tick,
    /// A lease-channel message, authenticated by the shell; `from` is the
    /// sender name it came with.
    Peer { from: String, msg: PeerMsg },
    /// Gossip changed. May be stale or wrong: only liveness depends on it.
    Membership(MembershipView),
    /// HAProxy health (VIP-only nodes: always healthy). Assumed healthy
    /// until told otherwise.
    LocalHealth { lb_healthy: bool },
    /// `kubeha-ctl drain` (true) / `undrain` (false).
    Drain(bool),
    /// SIGTERM: let go of everything, then `stopped()` is true.
    Stop,
    /// The shell found no cluster on this node (no kubeadm files) and it is a
    /// control plane: it wants to run `kubeadm init` if elected.
    WantInit,
    /// The outcome of RunInit, or after a restart in phase `CheckNeeded` the
    /// shell's inspection: `ok` = a working control plane is here,
    /// `left_artifacts` = kubeadm left files (`etc_dir`, etcd data).
    InitFinished { ok: bool, left_artifacts: bool },
    /// The shell could not carry out `AddVip` (the address is not up). The
    /// node lets the lease go at once (`RemoveVip`, `vip=0`, releases) and is
    /// no VIP candidate for [`VIP_FAULT_LEASES`] leases, whatever its health.
    VipFault,
    /// A cloud VIP provider's view of this node's assignment (sent when it
    /// changes, and again after every change of `holds_vip`). An assignment
    /// that keeps failing makes the node let the lease go and stand aside
    /// ([`crate::lease::cloud`]); ignored without `NodeParams::cloud`.
    VipAssignment(Assignment),
    /// A job started by [`Effect::StartJob`] ended.
    JobDone { id: JobId, outcome: JobOutcome },
    /// What the shell sees of kubeadm on this node (sent at start and
    /// whenever it changes). Turns on the kubeadm driver ([`crate::kube`]):
    /// a node that never sends it (no `[kubernetes]`) runs no kubeadm job
    /// but `RunInit`, fed by `WantInit` as before.
    KubeFacts(KubeFacts),
    /// The minor of this node's installed kubeadm (`1.33`), from host
    /// preparation; empty when none is installed. Published as
    /// `membership::keys::KUBEADM` when it changes.
    KubeadmMinor(String),
    /// `kubeha-ctl bootstrap release HOLDER`: the operator says `holder`,
    /// which holds the bootstrap lock but never initialized, is gone for
    /// good. Ignored unless [`Node::check_release`] allows it.
    ReleaseInit { holder: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    Send {
        to: String,
        msg: PeerMsg,
    },
    /// Add the VIP (idempotent) and announce it (gratuitous ARP).
    AddVip,
    /// Remove the VIP. Complete it before the next effect.
    RemoveVip,
    /// Write and fsync the state file before the next effect.
    Persist(Persisted),
    /// Set a gossip key of this node. The core owns the keys that follow
    /// its state: `vip`, `lb`, `drained`, `kube`, `kubeadm`
    /// (`membership::keys`); the shell publishes only the static ones at
    /// start, and `leaving`.
    Publish {
        key: &'static str,
        value: String,
    },
    /// Start long work beside the loop (never awaited inline); its result
    /// comes back as `Input::JobDone { id, .. }`. `Job::RunInit`: the lock
    /// is ours, run `kubeadm init` now.
    StartJob {
        id: JobId,
        job: Job,
    },
}

/// Collects the effects of one step; messages to ourselves are delivered
/// within the step instead of leaving.
#[derive(Debug)]
pub struct Out {
    me: String,
    pub(crate) effects: Vec<Effect>,
    local: VecDeque<PeerMsg>,
    pub(crate) next_job: u64,
}

impl Out {
    pub fn new(me: &str) -> Out {
        Out {
            me: me.to_string(),
            effects: Vec::new(),
            local: VecDeque::new(),
            next_job: 1,
        }
    }

    /// Ask the shell to start `job`; returns its id.
    pub fn start_job(&mut self, job: Job) -> JobId {
        let id = JobId(self.next_job);
        self.next_job += 1;
        self.effects.push(Effect::StartJob { id, job });
        id
    }

    /// The effects so far, in order (messages to ourselves excluded).
    pub fn effects(&self) -> &[Effect] {
        &self.effects
    }

    pub fn send(&mut self, to: &str, msg: PeerMsg) {
        if to == self.me {
            self.local.push_back(msg);
        } else {
            self.effects.push(Effect::Send {
                to: to.to_string(),
                msg,
            });
        }
    }

    pub fn push(&mut self, e: Effect) {
        self.effects.push(e);
    }
}

/// What `kubeha-ctl status` and metrics need from the core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// Who holds the VIP as far as this node knows (`vip.holder`).
    pub vip_holder: Option<String>,
    pub holds_vip: bool,
    /// May hold the VIP now: a candidate, healthy, not drained or stopping.
    pub vip_candidate: bool,
    /// Why this node last let the VIP go: `expired`, `ineligible`,
    /// `preempted`.
    pub last_vip_drop: Option<&'static str>,
    pub drained: bool,
    pub voters: usize,
    /// Voters heard from recently (this node counts if it is one).
    pub reachable_voters: usize,
    pub quorum_ok: bool,
    /// `kubernetes.init_node`.
    pub init_node: Option<String>,
    pub lock_phase: LockPhase,
    /// In phase `Blocked`: the member whose gossip reports a cluster.
    pub lock_blocked_by: Option<String>,
    /// `None` when this node is not a voter.
    pub lock_voter: Option<VoterPhase>,
    /// The shell must inspect and report `InitFinished` (after a restart
    /// with an init of unknown outcome).
    pub needs_init_check: bool,
    /// Standing aside after `Input::VipFault` (the VIP could not be added).
    pub vip_fault: bool,
    /// Jobs started and not reported done yet.
    pub jobs_running: usize,
    /// The cloud guard (`NodeParams::cloud`): the provider's last report,
    /// faults, standing aside.
    pub cloud: Option<CloudStatus>,
    /// The kubeadm driver (`kubernetes` in the status document).
    pub kube: KubeStatus,
    /// The init node holds the bootstrap lock but is down, with no init
    /// recorded: nobody else initializes (`kubeha-ctl bootstrap release`).
    pub init_node_down: Option<String>,
    /// A release this node sent (`kubeha-ctl bootstrap release`).
    pub release: Option<ReleaseStatus>,
    /// As a voter: the nodes whose lock it released.
    pub released: Vec<String>,
    /// An operator released this node's lock: it never initializes.
    pub released_me: bool,
}

pub struct Node {
    name: String,
    voters: Vec<String>,
    timing: Timing,
    q: usize,
    digest: u64,
    incarnation: u64,
    vip_priority: Option<u8>,
    lease_voter: Option<LeaseVoter>,
    cand: Option<LeaseCandidate>,
    lock: Lock,
    kube: KubeDriver,
    membership: MembershipView,
    lb_healthy: bool,
    /// The local load balancer has been healthy at least once.
    lb_was_healthy: bool,
    /// After a health flap, not a candidate before this: a HAProxy restarted
    /// a moment after it died looks healthy at once (HAProxy starts servers
    /// UP), and the VIP must still leave the node whose load balancer failed.
    health_hold_until: Time,
    /// After `VipFault`: no VIP candidate before this.
    vip_fault_until: Time,
    /// The cloud assignment as a lease input (`NodeParams::cloud`).
    cloud: Option<CloudGuard>,
    /// The `lb` value last published (`None`: none yet; the shell's start
    /// value stands).
    published_lb: Option<bool>,
    /// The `kube` value last published (`None`: the shell's start value).
    published_kube: Option<&'static str>,
    /// The kubeadm minor last published (`Input::KubeadmMinor`).
    published_kubeadm: Option<String>,
    next_job: u64,
    /// Started and not done yet.
    jobs: BTreeMap<JobId, Job>,
    drained: bool,
    stopped: bool,
    probe_seq: u64,
    next_probe: Time,
    /// Voter → last reply from it.
    heard: BTreeMap<String, Time>,
    /// Voter → (holder it reported, until when).
    holder_reports: BTreeMap<String, (String, Time)>,
    last_now: Time,
    /// Members gossip has shown alive in this run, and since when each
    /// member has not been alive (listed dead, or not listed): what
    /// [`Node::gone`] decides from.
    seen_alive: BTreeSet<String>,
    down_since: BTreeMap<String, Time>,
    started_at: Time,
    rng: u64,
}

impl Node {
    pub fn new(params: NodeParams, now: Time) -> (Node, Vec<Effect>) {
        let digest = lease::voters_digest(&params.voters);
        let is_voter = params.voters.contains(&params.name);
        let mut out = Out::new(&params.name);
        let (lock, lock_effects) = Lock::new(
            &params.name,
            params.incarnation,
            &params.voters,
            digest,
            params.timing,
            params.persisted,
            now,
        );
        let cand = params.vip_priority.map(|_| {
            LeaseCandidate::new(
                HolderId {
                    name: params.name.clone(),
                    incarnation: params.incarnation,
                },
                params.voters.clone(),
                params.timing,
                digest,
                params.vip_priority.unwrap_or(0),
            )
        });
        if cand.is_some() {
            // A previous run may have died holding the address.
            out.push(Effect::RemoveVip);
            out.push(Effect::Publish {
                key: crate::membership::keys::VIP,
                value: "0".into(),
            });
        }
        out.effects.extend(lock_effects);
        let mut node = Node {
            q: lease::quorum(params.voters.len()),
            digest,
            incarnation: params.incarnation,
            vip_priority: params.vip_priority,
            lease_voter: is_voter
                .then(|| LeaseVoter::new(&params.name, params.timing.lease, digest, now)),
            cand,
            lock,
            kube: KubeDriver::default(),
            membership: MembershipView::default(),
            lb_healthy: true,
            lb_was_healthy: false,
            health_hold_until: Time::ZERO,
            vip_fault_until: Time::ZERO,
            cloud: params.cloud.map(CloudGuard::new),
            published_lb: None,
            published_kube: None,
            published_kubeadm: None,
            next_job: 1,
            jobs: BTreeMap::new(),
            drained: false,
            stopped: false,
            probe_seq: 0,
            next_probe: now,
            heard: BTreeMap::new(),
            holder_reports: BTreeMap::new(),
            last_now: now,
            seen_alive: BTreeSet::new(),
            down_since: BTreeMap::new(),
            started_at: now,
            rng: params.incarnation ^ fnv(&params.name),
            name: params.name,
            voters: params.voters,
            timing: params.timing,
        };
        node.settle(now, &mut out);
        node.after_step(&mut out);
        (node, out.effects)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn step(&mut self, now: Time, input: Input) -> Vec<Effect> {
        if self.stopped {
            return Vec::new();
        }
        // Readings of one monotonic clock; never let one go backwards.
        let now = now.max(self.last_now);
        self.last_now = now;
        let mut out = Out::new(&self.name);
        out.next_job = self.next_job;
        if let Some(c) = self.cand.as_mut() {
            c.drop_if_expired(now, &mut out);
        }
        match input {
            Input::Tick => {}
            Input::Peer { from, msg } => {
                // The name inside must be the one the shell saw; nobody
                // speaks for us over the network.
                if from == msg.sender() && from != self.name {
                    self.on_peer(now, msg, &mut out);
                }
            }
            Input::Membership(view) => {
                for m in view.members.values() {
                    if m.alive() {
                        self.seen_alive.insert(m.name.clone());
                        self.down_since.remove(&m.name);
                    } else {
                        self.down_since.entry(m.name.clone()).or_insert(now);
                    }
                }
                for n in self.seen_alive.iter() {
                    if view.get(n).is_none() {
                        self.down_since.entry(n.clone()).or_insert(now);
                    }
                }
                self.membership = view;
            }
            Input::LocalHealth { lb_healthy } => {
                if lb_healthy && !self.lb_healthy && self.lb_was_healthy {
                    self.health_hold_until = now + self.timing.lease;
                }
                self.lb_was_healthy |= lb_healthy;
                self.lb_healthy = lb_healthy;
                if self.published_lb != Some(lb_healthy) {
                    self.published_lb = Some(lb_healthy);
                    let lb = if lb_healthy {
                        LbHealth::Healthy
                    } else {
                        LbHealth::Unhealthy
                    };
                    out.push(Effect::Publish {
                        key: keys::LB,
                        value: lb.as_str().into(),
                    });
                }
            }
            Input::Drain(d) => {
                if d != self.drained {
                    out.push(Effect::Publish {
                        key: keys::DRAINED,
                        value: if d { "1" } else { "0" }.into(),
                    });
                }
                self.drained = d;
            }
            Input::VipFault => {
                self.vip_fault_until = now + self.timing.lease * VIP_FAULT_LEASES;
            }
            Input::VipAssignment(a) => {
                if let Some(g) = self.cloud.as_mut() {
                    g.on_report(a);
                }
            }
            Input::JobDone { id, outcome } => match self.jobs.get(&id) {
                Some(job) if outcome.answers(job) => {
                    self.jobs.remove(&id);
                    match outcome {
                        JobOutcome::Init {
                            ok,
                            left_artifacts,
                            error,
                        } => {
                            self.lock.init_finished(now, ok, left_artifacts, &mut out);
                            self.kube.init_done(Some(id), ok, error);
                        }
                        JobOutcome::Done { error } => {
                            self.kube.job_done(now, id, error, &self.timing, &mut out)
                        }
                    }
                }
                // Not ours, already heard, or no answer to that job.
                _ => {}
            },
            Input::KubeFacts(f) => self.kube.set_facts(f),
            Input::KubeadmMinor(minor) => {
                if self.published_kubeadm.as_ref() != Some(&minor) {
                    out.push(Effect::Publish {
                        key: keys::KUBEADM,
                        value: minor.clone(),
                    });
                    self.published_kubeadm = Some(minor);
                }
            }
            Input::Stop => {
                if let Some(c) = self.cand.as_mut() {
                    c.stop(now, &mut out);
                }
                self.deliver_local(now, &mut out);
                self.stopped = true;
                return out.effects;
            }
            Input::ReleaseInit { holder } => {
                if self.check_release(&holder).is_ok() {
                    self.lock.start_release(now, &holder, &mut out);
                }
            }
            Input::WantInit => {
                let ctx = self.lock_ctx();
                self.lock.want_init(now, &ctx);
            }
            Input::InitFinished { ok, left_artifacts } => {
                // The same facts as the job's outcome: it answers any init
                // job still open.
                self.jobs
                    .retain(|_, j| !matches!(j, Job::RunInit | Job::CheckInit));
                self.lock.init_finished(now, ok, left_artifacts, &mut out);
                self.kube.init_done(None, ok, None);
            }
        }
        self.settle(now, &mut out);
        self.after_step(&mut out);
        out.effects
    }

    /// Remember the jobs this step started, and publish `kube` when this
    /// node's own init changed it.
    fn after_step(&mut self, out: &mut Out) {
        self.next_job = self.next_job.max(out.next_job);
        for e in &out.effects {
            if let Effect::StartJob { id, job } = e {
                self.jobs.insert(*id, job.clone());
            }
        }
        let kube = if self.kube.active() {
            Some(self.kube.kube(self.lock.phase()))
        } else {
            match self.lock.phase() {
                LockPhase::Initializing => Some("initializing"),
                LockPhase::Initialized => Some("control-plane"),
                LockPhase::Failed => Some("failed"),
                _ => None,
            }
        };
        if kube != self.published_kube {
            // Back from an own init that left nothing: no cluster here.
            let value = kube.unwrap_or("none");
            self.published_kube = kube;
            out.push(Effect::Publish {
                key: keys::KUBE,
                value: value.into(),
            });
        }
    }

    /// Run the periodic rules, then deliver messages to ourselves until
    /// nothing is left.
    fn settle(&mut self, now: Time, out: &mut Out) {
        self.settle_rules(now, out);
        // The cloud guard looks at the hold the rules left; a fault makes
        // the node ineligible, and the rules run again to let go.
        let holding = self.cand.as_ref().is_some_and(|c| c.holding());
        let fault = self.cloud.as_mut().and_then(|g| g.observe(now, holding));
        if fault.is_some() {
            self.settle_rules(now, out);
            let holding = self.cand.as_ref().is_some_and(|c| c.holding());
            if let Some(g) = self.cloud.as_mut() {
                g.observe(now, holding);
            }
        }
        if self.cloud.is_some() {
            let prio = self.lease_priority();
            if let Some(c) = self.cand.as_mut() {
                c.set_priority(prio);
            }
        }
    }

    fn settle_rules(&mut self, now: Time, out: &mut Out) {
        for _ in 0..32 {
            self.reconcile(now, out);
            if out.local.is_empty() {
                return;
            }
            self.deliver_local(now, out);
        }
    }

    fn deliver_local(&mut self, now: Time, out: &mut Out) {
        while let Some(msg) = out.local.pop_front() {
            self.on_peer(now, msg, out);
        }
    }

    fn reconcile(&mut self, now: Time, out: &mut Out) {
        self.drive_kube(now, out);
        if let Some(v) = self.lease_voter.as_mut() {
            for c in v.tick(now) {
                out.send(
                    &c,
                    PeerMsg::LeaseFree(LeaseFree {
                        from: self.name.clone(),
                    }),
                );
            }
        }
        if self.cand.is_some() {
            let wish = lease::Wish {
                eligible: self.eligible(),
                stagger: self.vip_stagger(now),
                other_holder: self.vip_holder(now).is_some_and(|h| h != self.name),
            };
            if let Some(c) = self.cand.as_mut() {
                c.step(now, wish, out);
            }
        }
        let ctx = self.lock_ctx();
        self.lock.claimant_tick(now, &ctx, out);
        self.lock.release_tick(now, out);
        // A preempted holder asks who holds often: it stays out only until
        // it sees the successor hold, and a successor that leaves at once
        // must find it a standby again, not still staying out.
        let handing_over = self.cand.as_ref().is_some_and(|c| c.handing_over());
        if handing_over {
            self.next_probe = self.next_probe.min(now + self.timing.renew_every);
        }
        if now >= self.next_probe {
            self.probe_seq += 1;
            for v in &self.voters {
                if *v != self.name {
                    out.send(
                        v,
                        PeerMsg::Probe(Probe {
                            from: self.name.clone(),
                            seq: self.probe_seq,
                            voters: self.digest,
                        }),
                    );
                }
            }
            let period = if self.lock.is_recovering() || handing_over {
                self.timing.renew_every
            } else {
                self.timing.lease
            };
            self.next_probe = now + period;
        }
    }

    fn on_peer(&mut self, now: Time, msg: PeerMsg, out: &mut Out) {
        // A sign of life (the shell authenticated the sender).
        let from = msg.sender();
        if !self.seen_alive.contains(from) {
            self.seen_alive.insert(from.to_string());
        }
        if !self.membership.alive(from) {
            self.down_since.insert(from.to_string(), now);
        }
        match msg {
            PeerMsg::LeaseRequest(req) => {
                let reply = match self.lease_voter.as_mut() {
                    Some(v) => v.on_request(now, &req),
                    None => LeaseReply {
                        from: self.name.clone(),
                        candidate_incarnation: req.incarnation,
                        seq: req.seq,
                        granted: false,
                        refusal: Some(Refusal::NotVoter),
                        lease_us: 0,
                        holder: None,
                        remaining_us: 0,
                        contender: None,
                    },
                };
                out.send(&req.from, PeerMsg::LeaseReply(reply));
            }
            PeerMsg::LeaseReply(r) => {
                if !self.is_voter_name(&r.from) {
                    return;
                }
                self.heard.insert(r.from.clone(), now);
                match &r.holder {
                    Some(h) if r.remaining_us > 0 => {
                        let until = now + Duration::from_micros(r.remaining_us.min(10_000_000));
                        self.holder_reports
                            .insert(r.from.clone(), (h.name.clone(), until));
                    }
                    _ => {
                        if r.refusal != Some(Refusal::Quarantine) {
                            self.holder_reports.remove(&r.from);
                        }
                    }
                }
                if let Some(c) = self.cand.as_mut() {
                    c.on_reply(now, &r);
                }
            }
            PeerMsg::LeaseRelease(rel) => {
                if let Some(v) = self.lease_voter.as_mut() {
                    for c in v.on_release(now, &rel) {
                        out.send(
                            &c,
                            PeerMsg::LeaseFree(LeaseFree {
                                from: self.name.clone(),
                            }),
                        );
                    }
                }
            }
            PeerMsg::LeaseFree(f) => {
                if let Some(c) = self.cand.as_mut() {
                    c.on_free(now, &f.from);
                }
            }
            PeerMsg::Probe(p) => {
                if p.voters != self.digest {
                    return;
                }
                if let Some(v) = self.lease_voter.as_ref() {
                    let g = v.grant(now);
                    out.send(
                        &p.from,
                        PeerMsg::ProbeReply(ProbeReply {
                            from: self.name.clone(),
                            seq: p.seq,
                            voter_incarnation: self.incarnation,
                            holder: g.map(|g| g.holder.name.clone()),
                            remaining_us: g.map_or(0, |g| {
                                u64::try_from(g.expiry.saturating_since(now).as_micros())
                                    .unwrap_or(u64::MAX)
                            }),
                            lock: self.lock.report(),
                        }),
                    );
                }
            }
            PeerMsg::ProbeReply(r) => {
                if !self.is_voter_name(&r.from) {
                    return;
                }
                self.heard.insert(r.from.clone(), now);
                match &r.holder {
                    Some(h) if r.remaining_us > 0 => {
                        let until = now + Duration::from_micros(r.remaining_us.min(10_000_000));
                        self.holder_reports
                            .insert(r.from.clone(), (h.clone(), until));
                    }
                    _ => {
                        self.holder_reports.remove(&r.from);
                    }
                }
                self.lock.on_report(now, &r.from, &r.lock, out);
            }
            PeerMsg::LockRequest(req) => self.lock.on_request(now, &req, out),
            PeerMsg::LockReply(r) => {
                if !self.is_voter_name(&r.from) {
                    return;
                }
                self.heard.insert(r.from.clone(), now);
                let ctx = self.lock_ctx();
                self.lock.on_reply(now, &r, &ctx, out);
            }
            PeerMsg::LockWithdraw(w) => self.lock.on_withdraw(now, &w, out),
            PeerMsg::LockRelease(m) => {
                let alive = !self.gone(&m.holder);
                self.lock.on_release(now, &m, alive, out);
            }
            PeerMsg::LockReleaseReply(r) => {
                if self.is_voter_name(&r.from) {
                    self.heard.insert(r.from.clone(), now);
                    self.lock.on_release_reply(&r);
                }
            }
        }
    }

    /// Whether `kubeha-ctl bootstrap release HOLDER` may go ahead on this
    /// node ([`Lock::check_release`], with this node's gossip view).
    pub fn check_release(&self, holder: &str) -> Result<(), ReleaseError> {
        self.lock.check_release(holder, !self.gone(holder))
    }

    /// `name` is not alive in gossip and has not been for a while: for
    /// [`DOWN_FOR`] leases since gossip first listed it as not alive (a
    /// member just discovered, alive in fact, turns alive well within that),
    /// or since its last sign of life (gossip showed it alive, or a message
    /// from it came in); a member gossip has never listed in this run, for
    /// [`FORGOTTEN_AFTER`] (gossip forgets a dead one after its grace).
    fn gone(&self, name: &str) -> bool {
        if self.membership.alive(name) {
            return false;
        }
        let since = self
            .down_since
            .get(name)
            .copied()
            .unwrap_or(self.started_at);
        let wait = if self.seen_alive.contains(name) || self.down_since.contains_key(name) {
            self.timing.lease * DOWN_FOR
        } else {
            FORGOTTEN_AFTER
        };
        self.last_now >= since + wait
    }

    fn is_voter_name(&self, n: &str) -> bool {
        self.voters.iter().any(|v| v == n)
    }

    fn eligible(&self) -> bool {
        self.vip_priority.is_some()
            && self.lb_healthy
            && self.last_now >= self.health_hold_until
            && self.last_now >= self.vip_fault_until
            && self
                .cloud
                .as_ref()
                .is_none_or(|g| g.eligible(self.last_now))
            && !self.drained
            && !self.stopped
    }

    /// How long to wait after a voter says the lease is free: rank among
    /// the eligible candidates gossip shows (the current holder left out),
    /// times a step, plus a little jitter against equal ranks.
    fn vip_stagger(&mut self, now: Time) -> Duration {
        if self.vip_priority.is_none() {
            return Duration::ZERO;
        }
        let mine = self.lease_priority();
        let holder = self.vip_holder(now);
        let rank = self
            .membership
            .vip_candidates()
            .iter()
            .filter(|m| m.name != self.name && Some(&m.name) != holder.as_ref())
            .filter(|m| {
                let p = m.priority.unwrap_or(0);
                p > mine || (p == mine && m.name < self.name)
            })
            .count();
        let step = self.timing.renew_every / 8;
        step * rank as u32 + jitter(&mut self.rng, step / 4)
    }

    /// The priority this node asks with: its own, or 0 after a cloud fault
    /// until an assignment succeeds again (it never preempts a holder whose
    /// assignment works).
    fn lease_priority(&self) -> u8 {
        match &self.cloud {
            Some(g) if g.demoted() => 0,
            _ => self.vip_priority.unwrap_or(0),
        }
    }

    /// The kubeadm driver's turn; a `WantInit` it asks for goes to the lock
    /// at once (and the driver looks again).
    fn drive_kube(&mut self, now: Time, out: &mut Out) {
        for _ in 0..2 {
            let ctx = DriveCtx {
                me: &self.name,
                lock_phase: self.lock.phase(),
                init_node: self.lock.init_node(),
                view: &self.membership,
                timing: &self.timing,
            };
            if !self.kube.drive(now, &ctx, out) {
                return;
            }
            let lctx = self.lock_ctx();
            self.lock.want_init(now, &lctx);
        }
    }

    fn lock_ctx(&self) -> LockCtx {
        // A member that is not alive and was only initializing (or failed
        // at it) proves no cluster: the lock's committed votes for it guard
        // that case, and only an operator's release frees them.
        let cluster_elsewhere = self
            .membership
            .members
            .values()
            .find(|m| {
                m.name != self.name
                    && !m.kube.is_empty()
                    && m.kube != "none"
                    && (m.alive() || !matches!(m.kube.as_str(), "initializing" | "failed"))
            })
            .map(|m| m.name.clone());
        let rank = self
            .membership
            .members
            .values()
            .filter(|m| {
                m.name < self.name
                    && m.alive()
                    && m.roles.contains(&Role::ControlPlane)
                    && m.kube == "none"
            })
            .count();
        LockCtx {
            cluster_elsewhere,
            rank,
        }
    }

    pub fn next_wakeup(&self) -> Option<Time> {
        if self.stopped {
            return None;
        }
        let mut w: Vec<Time> = vec![self.next_probe];
        if self.vip_fault_until > self.last_now {
            w.push(self.vip_fault_until);
        }
        if let Some(g) = &self.cloud {
            w.extend(g.next_wakeup(self.last_now));
        }
        if let Some(v) = &self.lease_voter {
            w.extend(v.next_wakeup());
        }
        if let Some(c) = &self.cand {
            w.extend(c.next_wakeup(self.eligible()));
            if self.lb_healthy && self.health_hold_until > self.last_now {
                w.push(self.health_hold_until);
            }
        }
        w.extend(self.lock.next_wakeup());
        w.extend(self.kube.next_wakeup());
        w.into_iter().min()
    }

    /// While this node holds the VIP: the instant its lease stops counting
    /// (the shell arms an independent watchdog on it).
    pub fn vip_deadline(&self) -> Option<Time> {
        self.cand
            .as_ref()
            .filter(|c| c.holding())
            .and_then(|c| c.valid_until())
    }

    pub fn holds_vip(&self, now: Time) -> bool {
        self.cand.as_ref().is_some_and(|c| c.holds(now))
    }

    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// The state file as the core last asked for it.
    pub fn persisted(&self) -> &Persisted {
        self.lock.persisted()
    }

    fn vip_holder(&self, now: Time) -> Option<String> {
        if self.holds_vip(now) {
            return Some(self.name.clone());
        }
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for (h, until) in self.holder_reports.values() {
            if *until > now {
                *counts.entry(h.as_str()).or_default() += 1;
            }
        }
        if let Some(g) = self.lease_voter.as_ref().and_then(|v| v.grant(now)) {
            *counts.entry(g.holder.name.as_str()).or_default() += 1;
        }
        // Most reports first, then name: deterministic.
        counts
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(n, _)| n.to_string())
    }

    pub fn status(&self, now: Time) -> NodeStatus {
        let window = self.timing.lease * 3;
        let horizon = now - window;
        // Heard from recently, and not known dead to gossip (which notices a
        // crash well before the probe window ends).
        let mut reachable = self
            .heard
            .iter()
            .filter(|(v, at)| **at >= horizon && **v != self.name)
            .filter(|(v, _)| self.membership.get(v).is_none_or(|m| m.alive()))
            .count();
        if self.lease_voter.is_some() {
            reachable += 1;
        }
        NodeStatus {
            vip_holder: self.vip_holder(now),
            holds_vip: self.holds_vip(now),
            vip_candidate: self.cand.is_some() && self.eligible(),
            last_vip_drop: self
                .cand
                .as_ref()
                .and_then(|c| c.last_drop())
                .map(|d| match d {
                    VipDropReason::Expired => "expired",
                    VipDropReason::Ineligible => "ineligible",
                    VipDropReason::Preempted => "preempted",
                }),
            drained: self.drained,
            voters: self.voters.len(),
            reachable_voters: reachable,
            quorum_ok: reachable >= self.q,
            init_node: self.lock.init_node(),
            lock_phase: self.lock.phase(),
            lock_blocked_by: self.lock.blocked_by().map(str::to_string),
            lock_voter: self.lock.voter_phase(),
            needs_init_check: self.lock.needs_init_check(),
            vip_fault: self.vip_fault_until > now,
            jobs_running: self.jobs.len(),
            cloud: self.cloud.as_ref().map(|g| g.status(now)),
            kube: {
                let mut k = self.kube.status(self.lock.phase());
                if self.lock.released_me() && self.lock.phase() == LockPhase::Failed {
                    k.last_error = Some(
                        "an operator released this node's bootstrap lock (`kubeha-ctl bootstrap \
                         release`) while it initialized a cluster of its own, which the voters \
                         do not record: run `kubeadm reset -f`, then restart kubeha-agent, and \
                         it joins the init node"
                            .into(),
                    );
                }
                k
            },
            init_node_down: self.init_node_down(),
            release: self.lock.release_progress().map(|r| ReleaseStatus {
                holder: r.holder.clone(),
                acked: r.acked.iter().cloned().collect(),
                refused: r
                    .refused
                    .iter()
                    .map(|(v, why)| (v.clone(), release_refusal_str(*why)))
                    .collect(),
                needed: self.q,
                done: r.done(self.q),
            }),
            released: self.lock.released().iter().cloned().collect(),
            released_me: self.lock.released_me(),
        }
    }

    /// A claimant that holds the bootstrap lock (the init node, or a
    /// committed vote somewhere), has not initialized and is not alive:
    /// nobody else initializes until it is back or an operator releases it.
    fn init_node_down(&self) -> Option<String> {
        if self.lock.known_initialized().is_some() {
            return None;
        }
        let holders: Vec<String> = match self.lock.init_node() {
            Some(n) => vec![n],
            None => self.lock.committed_to().into_iter().collect(),
        };
        holders
            .into_iter()
            .find(|h| *h != self.name && self.gone(h))
    }
}

/// A member gossip has never shown alive in this run is gone after this
/// long (the shell's dead-node grace, after which gossip forgets a dead
/// member, is at least as long).
pub const FORGOTTEN_AFTER: Duration = Duration::from_secs(30 * 60);
/// A member gossip showed alive is gone after this many leases not alive.
pub const DOWN_FOR: u32 = 10;

/// `kubernetes.release` in status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseStatus {
    pub holder: String,
    /// Voters that released it.
    pub acked: Vec<String>,
    /// Voters that refused, and why.
    pub refused: Vec<(String, &'static str)>,
    /// Acks needed (a majority of the voters).
    pub needed: usize,
    pub done: bool,
}

fn release_refusal_str(r: ReleaseRefusal) -> &'static str {
    match r {
        ReleaseRefusal::NotVoter => "not a voter",
        ReleaseRefusal::VoterMismatch => "its voters list differs",
        ReleaseRefusal::Recovering => "recovering its lock state",
        ReleaseRefusal::Initialized => "the cluster is initialized",
        ReleaseRefusal::HolderAlive => "it sees the holder alive",
    }
}

fn fnv(s: &str) -> u64 {
    lease::voters_digest(&[s.to_string()])
}

fn jitter(state: &mut u64, max: Duration) -> Duration {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let m = u64::try_from(max.as_micros()).unwrap_or(u64::MAX).max(1);
    Duration::from_micros(z % m)
}

#[cfg(test)]
mod tests;
