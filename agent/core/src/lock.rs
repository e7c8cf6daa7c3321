//! The bootstrap lock: who runs `kubeadm init` (docs/PROTOCOL.md,
//! "Bootstrap lock").
//!
//! Three rounds against the voters, each needing a majority:
//! *claim* (a voter votes for one claim; persisted), *commit* (the vote
//! becomes permanent; persisted), *verify* (the committed vote is still there
//! in the same voter incarnation). Only then does the claimant persist
//! "init started" and emit [`crate::node::Effect::StartJob`]. A voter that
//! starts without a state file relearns the lock from the others before it
//! votes again ([`Lock::try_resolve`]).
//!
//! Voter and claimant live in one struct because they share the node's one
//! state file ([`Persisted`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::lease::quorum;
use crate::node::{Effect, Out};
use crate::time::Time;
use crate::timing::Timing;
use crate::wire::{ClaimId, LockReport};

mod claimant;
mod release;
mod voter;

pub use release::{ReleaseError, ReleaseProgress};

pub const PERSISTED_VERSION: u32 = 1;

/// The node's state file (`state_dir/state.json`). The shell writes it
/// atomically and fsyncs it when told ([`Effect::Persist`]) before carrying
/// out any later effect.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Persisted {
    pub version: u32,
    /// The voter part has relearned (or never lost) its state. A voter
    /// whose file lacks it is still recovering.
    pub voter_ready: bool,
    /// This node's lock vote, as a voter.
    pub vote: Option<StoredVote>,
    /// The node that initialized the cluster, once known.
    pub initialized: Option<String>,
    /// This node's own `kubeadm init`, as claimant.
    pub init: Option<InitRecord>,
    /// As a voter: nodes whose lock an operator released
    /// (`kubeha-ctl bootstrap release`); their claims are refused.
    pub released: BTreeSet<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredVote {
    pub id: ClaimId,
    pub committed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InitRecord {
    /// RunInit was emitted for this claim; the outcome is not known yet.
    Started { id: ClaimId },
    /// Init succeeded here: this node initialized the cluster.
    Done,
    /// Init failed and left files behind: an operator must clean up.
    Failed,
}

/// The claimant's progress, for status (`kubernetes.phase`) and the shell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LockPhase {
    /// No `WantInit` yet (or not a control plane).
    Idle,
    /// Waiting before (re)claiming: stagger, backoff, or another claimant
    /// is ahead.
    Waiting,
    Claiming,
    Committing,
    Verifying,
    /// RunInit emitted; waiting for `InitFinished`.
    Initializing,
    /// Restarted after an init whose outcome is unknown: the shell must
    /// inspect the node and report `InitFinished { ok, left_artifacts }`.
    CheckNeeded,
    /// This node initialized the cluster.
    Initialized,
    /// Another node initialized the cluster (`init_node`): join it.
    Follower,
    /// A member reports an existing cluster: join instead of claiming.
    Blocked,
    /// Init failed and left files behind: run `kubeadm reset -f` on this
    /// node, then restart the agent.
    Failed,
    /// An operator released this node's lock (`kubeha-ctl bootstrap
    /// release`): it never initializes; it joins the init node.
    Released,
}

impl LockPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            LockPhase::Idle => "idle",
            LockPhase::Waiting => "waiting",
            LockPhase::Claiming => "claiming",
            LockPhase::Committing => "committing",
            LockPhase::Verifying => "verifying",
            LockPhase::Initializing => "initializing",
            LockPhase::CheckNeeded => "check-needed",
            LockPhase::Initialized => "initialized",
            LockPhase::Follower => "follower",
            LockPhase::Blocked => "blocked",
            LockPhase::Failed => "failed",
            LockPhase::Released => "released",
        }
    }
}

/// The voter part's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoterPhase {
    /// Started without a state file; relearning from other voters.
    Recovering,
    Ready,
}

/// What the node knows that the lock needs at each step.
#[derive(Clone, Debug, Default)]
pub struct LockCtx {
    /// A member (not this node) whose gossip says it has a cluster
    /// (`kube` other than `none`).
    pub cluster_elsewhere: Option<String>,
    /// This node's rank among control planes that may claim (0 = first).
    pub rank: usize,
}

#[derive(Clone, Debug)]
pub struct Lock {
    me: String,
    incarnation: u64,
    voters: Vec<String>,
    q: usize,
    digest: u64,
    timing: Timing,
    is_voter: bool,
    persisted: Persisted,
    // ---- voter part
    recovering: bool,
    /// When the current uncommitted vote was cast (local clock).
    vote_since: Time,
    /// Latest lock report of each other voter (this incarnation only).
    reports: BTreeMap<String, LockReport>,
    // ---- claimant part
    phase: LockPhase,
    round: u32,
    next_send: Time,
    round_started: Time,
    votes: BTreeSet<String>,
    against: BTreeSet<String>,
    commits: BTreeMap<String, u64>,
    verified: BTreeSet<String>,
    /// Current verify round of this claim.
    verify_round: u32,
    init_acks: BTreeSet<String>,
    /// The initialized fact as learned from voters.
    learned_init: Option<String>,
    /// The member whose gossip blocks claiming (phase `Blocked`).
    blocked_by: Option<String>,

    rng: u64,
    // ---- operator release (release.rs)
    release: Option<ReleaseProgress>,
    released_me: bool,
}

impl Lock {
    pub fn new(
        me: &str,
        incarnation: u64,
        voters: &[String],
        digest: u64,
        timing: Timing,
        persisted: Option<Persisted>,
        now: Time,
    ) -> (Lock, Vec<Effect>) {
        let is_voter = voters.iter().any(|v| v == me);
        let had_file = persisted.is_some();
        let mut p = persisted.unwrap_or_default();
        p.version = PERSISTED_VERSION;
        let recovering = is_voter && !(had_file && p.voter_ready);
        let phase = match p.init {
            Some(InitRecord::Started { .. }) | Some(InitRecord::Failed) => LockPhase::CheckNeeded,
            Some(InitRecord::Done) => LockPhase::Initialized,
            None => LockPhase::Idle,
        };
        let mut lock = Lock {
            me: me.to_string(),
            incarnation,
            voters: voters.to_vec(),
            q: quorum(voters.len()),
            digest,
            timing,
            is_voter,
            persisted: p,
            recovering,
            vote_since: now,
            reports: BTreeMap::new(),
            phase,
            round: 0,
            next_send: now,
            round_started: now,
            votes: BTreeSet::new(),
            against: BTreeSet::new(),
            commits: BTreeMap::new(),
            verified: BTreeSet::new(),
            verify_round: 0,
            init_acks: BTreeSet::new(),
            learned_init: None,
            blocked_by: None,
            rng: incarnation ^ 0x9e37_79b9_7f4a_7c15,
            release: None,
            released_me: false,
        };
        let mut effects = Vec::new();
        if lock.recovering && lock.voters.len() == 1 {
            // A single voter has nobody to relearn from: its missing file
            // is taken as a first boot (documented assumption).
            lock.recovering = false;
            lock.persisted.voter_ready = true;
            effects.push(Effect::Persist(lock.persisted.clone()));
        }
        (lock, effects)
    }

    pub fn persisted(&self) -> &Persisted {
        &self.persisted
    }

    pub fn phase(&self) -> LockPhase {
        self.phase
    }

    pub fn voter_phase(&self) -> Option<VoterPhase> {
        self.is_voter.then_some(if self.recovering {
            VoterPhase::Recovering
        } else {
            VoterPhase::Ready
        })
    }

    pub fn is_recovering(&self) -> bool {
        self.recovering
    }

    /// The member whose gossip says it has a cluster, while `Blocked`.
    pub fn blocked_by(&self) -> Option<&str> {
        (self.phase == LockPhase::Blocked)
            .then_some(self.blocked_by.as_deref())
            .flatten()
    }

    /// The shell must inspect the node and report `InitFinished`.
    pub fn needs_init_check(&self) -> bool {
        self.phase == LockPhase::CheckNeeded
    }

    /// This node's own report, as a voter.
    pub fn report(&self) -> LockReport {
        LockReport {
            recovering: self.recovering,
            vote: if self.recovering {
                None
            } else {
                self.persisted.vote.as_ref().map(|v| v.id.clone())
            },
            committed: !self.recovering
                && self.persisted.vote.as_ref().is_some_and(|v| v.committed),
            initialized: self.persisted.initialized.clone(),
        }
    }

    /// The node that initialized the cluster, as recorded here or learned
    /// from a voter.
    pub fn known_initialized(&self) -> Option<String> {
        self.persisted
            .initialized
            .clone()
            .or_else(|| self.learned_init.clone())
    }

    /// The node that runs (or ran) `kubeadm init`, as far as this node
    /// knows: the initialized fact, this node if it is initializing, or a
    /// claimant with committed votes at a majority of the latest reports.
    pub fn init_node(&self) -> Option<String> {
        if let Some(n) = self
            .persisted
            .initialized
            .clone()
            .or_else(|| self.learned_init.clone())
        {
            return Some(n);
        }
        if !self.released_me
            && matches!(
                self.phase,
                LockPhase::Initializing
                    | LockPhase::Initialized
                    | LockPhase::CheckNeeded
                    | LockPhase::Failed
            )
        {
            return Some(self.me.clone());
        }
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        let own = self.is_voter.then(|| self.report());
        for r in self.reports.values().chain(own.iter()) {
            if let (true, Some(v)) = (r.committed, &r.vote) {
                *counts.entry(v.name.as_str()).or_default() += 1;
            }
        }
        counts
            .into_iter()
            .find(|(_, c)| *c >= self.q)
            .map(|(n, _)| n.to_string())
    }

    /// A report from another voter (probe reply or lock reply).
    pub fn on_report(&mut self, now: Time, from: &str, report: &LockReport, out: &mut Out) {
        if from == self.me || !self.voters.iter().any(|v| v == from) {
            return;
        }
        self.reports.insert(from.to_string(), report.clone());
        if let Some(x) = &report.initialized {
            self.learn_initialized(x);
        }
        if self.recovering {
            self.try_resolve(now, out);
        }
    }

    fn learn_initialized(&mut self, x: &str) {
        if self.learned_init.is_none() {
            self.learned_init = Some(x.to_string());
        }
        // Our own init (running, done, or to be checked) is not overridden.
        if matches!(
            self.phase,
            LockPhase::Waiting
                | LockPhase::Claiming
                | LockPhase::Committing
                | LockPhase::Verifying
                | LockPhase::Blocked
        ) {
            self.phase = LockPhase::Follower;
        }
    }

    fn persist(&mut self, out: &mut Out) {
        out.push(Effect::Persist(self.persisted.clone()));
    }

    /// Uniform in `[0, max)`, from the node's seed.
    fn jitter(&mut self, max: Duration) -> Duration {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let m = u64::try_from(max.as_micros()).unwrap_or(u64::MAX).max(1);
        Duration::from_micros(z % m)
    }

    pub fn next_wakeup(&self) -> Option<Time> {
        let claimant = match self.phase {
            LockPhase::Waiting
            | LockPhase::Claiming
            | LockPhase::Committing
            | LockPhase::Verifying
            | LockPhase::Blocked => Some(self.next_send),
            LockPhase::Initialized if self.init_acks.len() < self.q => Some(self.next_send),
            _ => None,
        };
        match (claimant, self.release_wakeup()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // Periods derived from the timing profile.
    fn retry(&self) -> Duration {
        self.timing.renew_every
    }
    fn vote_ttl(&self) -> Duration {
        self.timing.lease * 10
    }
    fn round_timeout(&self) -> Duration {
        self.timing.lease * 4
    }
    fn stagger(&self) -> Duration {
        self.timing.lease / 2
    }
}

#[cfg(test)]
mod tests;
