//! The operator's way out of a bootstrap lock held by a node that is gone
//! for good (docs/PROTOCOL.md §3.7): `kubeha-ctl bootstrap release NODE`.
//!
//! The lock never moves by itself while its holder may have produced a
//! cluster. When the holder died mid-init and will never come back (its
//! droplet destroyed), only an operator can say so. The agent the command
//! runs on checks what it can ([`Lock::check_release`]) and sends
//! [`LockRelease`] to every voter until a majority acked. A voter releases
//! only while no init is recorded and the holder is not alive in its own
//! gossip view: it clears its vote for the holder (committed or not) and
//! records the name in `released` (persisted before the reply), so that
//! node's later claims and `Initialized` records are refused.

use std::collections::{BTreeMap, BTreeSet};

use super::{InitRecord, Lock, LockPhase};
use crate::node::Out;
use crate::time::Time;
use crate::wire::{LockRelease, LockReleaseReply, PeerMsg, ReleaseRefusal};

/// A release this node sends, and what the voters answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseProgress {
    pub holder: String,
    pub acked: BTreeSet<String>,
    /// Voters that refused, with their latest reason.
    pub refused: BTreeMap<String, ReleaseRefusal>,
    pub started: Time,
    next_send: Time,
}

impl ReleaseProgress {
    /// A majority of the voters released the holder.
    pub fn done(&self, q: usize) -> bool {
        self.acked.len() >= q
    }
}

/// Why `kubeha-ctl bootstrap release` was refused on this node.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error("{0} is this node: run the command on another control plane")]
    SelfRelease(String),
    #[error("the cluster is initialized (by {0}): there is no lock to release")]
    Initialized(String),
    #[error(
        "{holder} holds no committed bootstrap lock vote as far as this node knows (init node: {current})"
    )]
    NotHolder { holder: String, current: String },
    #[error(
        "{0} is alive in this node's gossip view: only a node that is gone for good can be released"
    )]
    Alive(String),
}

impl Lock {
    /// Whether `holder`'s lock may be released from this node now: not
    /// this node, no init recorded, `holder` is the init node as far as
    /// this node knows, and not alive.
    pub fn check_release(&self, holder: &str, holder_alive: bool) -> Result<(), ReleaseError> {
        if holder == self.me {
            return Err(ReleaseError::SelfRelease(holder.to_string()));
        }
        if let Some(x) = self.known_initialized() {
            return Err(ReleaseError::Initialized(x));
        }
        if self.init_node().as_deref() != Some(holder) && !self.committed_to().contains(holder) {
            return Err(ReleaseError::NotHolder {
                holder: holder.to_string(),
                current: self.init_node().unwrap_or_else(|| "none".into()),
            });
        }
        if holder_alive {
            return Err(ReleaseError::Alive(holder.to_string()));
        }
        Ok(())
    }

    /// Start sending the release (after [`Lock::check_release`]).
    pub fn start_release(&mut self, now: Time, holder: &str, out: &mut Out) {
        self.release = Some(ReleaseProgress {
            holder: holder.to_string(),
            acked: BTreeSet::new(),
            refused: BTreeMap::new(),
            started: now,
            next_send: now,
        });
        self.release_tick(now, out);
    }

    pub fn release_progress(&self) -> Option<&ReleaseProgress> {
        self.release.as_ref()
    }

    /// The claimants that hold a committed vote in this node's own report
    /// or the latest report of another voter. One such vote of a dead
    /// claimant can stall the lock for good: that claimant may have had a
    /// verified majority, so no voter ever gives the vote away by itself.
    pub fn committed_to(&self) -> BTreeSet<String> {
        let own = self.is_voter.then(|| self.report());
        self.reports
            .values()
            .chain(own.iter())
            .filter(|r| r.committed)
            .filter_map(|r| r.vote.as_ref().map(|v| v.name.clone()))
            .collect()
    }

    /// Names whose lock this voter released (persisted).
    pub fn released(&self) -> &BTreeSet<String> {
        &self.persisted.released
    }

    /// An operator released this node's lock: it never initializes.
    pub fn released_me(&self) -> bool {
        self.released_me
    }

    pub(super) fn release_wakeup(&self) -> Option<Time> {
        let r = self.release.as_ref()?;
        (!r.done(self.q) && !self.release_expired(r)).then_some(r.next_send)
    }

    fn release_expired(&self, r: &ReleaseProgress) -> bool {
        r.next_send >= r.started + self.timing.lease * 20
    }

    /// Resend to the voters that have not acked, every `renew_every`,
    /// for at most 20 leases (then status shows what is missing).
    pub fn release_tick(&mut self, now: Time, out: &mut Out) {
        let retry = self.retry();
        let Some(r) = self.release.as_ref() else {
            return;
        };
        if r.done(self.q) || now < r.next_send || self.release_expired(r) {
            return;
        }
        let holder = r.holder.clone();
        let todo: Vec<String> = self
            .voters
            .iter()
            .filter(|v| !r.acked.contains(*v))
            .cloned()
            .collect();
        for v in todo {
            out.send(
                &v,
                PeerMsg::LockRelease(LockRelease {
                    from: self.me.clone(),
                    holder: holder.clone(),
                    voters: self.digest,
                }),
            );
        }
        if let Some(r) = self.release.as_mut() {
            r.next_send = now + retry;
        }
    }

    /// A voter receives a release: `holder_alive` is the voter's own
    /// gossip view of the holder.
    pub fn on_release(&mut self, now: Time, m: &LockRelease, holder_alive: bool, out: &mut Out) {
        let refusal = if !self.is_voter {
            Some(ReleaseRefusal::NotVoter)
        } else if m.voters != self.digest {
            Some(ReleaseRefusal::VoterMismatch)
        } else if self.recovering {
            Some(ReleaseRefusal::Recovering)
        } else if self.persisted.initialized.is_some() {
            Some(ReleaseRefusal::Initialized)
        } else if holder_alive || m.holder == self.me {
            Some(ReleaseRefusal::HolderAlive)
        } else {
            None
        };
        if refusal.is_none() {
            let mut changed = self.persisted.released.insert(m.holder.clone());
            if self
                .persisted
                .vote
                .as_ref()
                .is_some_and(|v| v.id.name == m.holder)
            {
                self.persisted.vote = None;
                self.vote_since = now;
                changed = true;
            }
            if changed {
                self.persist(out);
            }
        }
        out.send(
            &m.from,
            PeerMsg::LockReleaseReply(LockReleaseReply {
                from: self.me.clone(),
                holder: m.holder.clone(),
                ok: refusal.is_none(),
                refusal,
                initialized: self.persisted.initialized.clone(),
            }),
        );
    }

    pub fn on_release_reply(&mut self, r: &LockReleaseReply) {
        if let Some(x) = &r.initialized {
            self.learn_initialized(x);
        }
        let Some(p) = self.release.as_mut() else {
            return;
        };
        if p.holder != r.holder || !self.voters.contains(&r.from) {
            return;
        }
        if r.ok {
            p.refused.remove(&r.from);
            p.acked.insert(r.from.clone());
        } else if let Some(why) = r.refusal {
            p.refused.insert(r.from.clone(), why);
        }
    }

    /// A voter answered with `InitReleased`: an operator released this
    /// node's lock. A claimant stops claiming for good (it joins whoever
    /// initializes); a node that initialized meanwhile records its init as
    /// failed, so that after `kubeadm reset -f` and a restart it joins.
    pub(super) fn on_released_me(&mut self, out: &mut Out) {
        self.released_me = true;
        match self.phase {
            LockPhase::Initialized => {
                self.persisted.init = Some(InitRecord::Failed);
                if self.persisted.initialized.as_deref() == Some(self.me.as_str()) {
                    // Our own record of our init: the voters have none.
                    self.persisted.initialized = None;
                }
                self.persist(out);
                self.phase = LockPhase::Failed;
            }
            LockPhase::Waiting
            | LockPhase::Claiming
            | LockPhase::Committing
            | LockPhase::Verifying
            | LockPhase::Blocked => {
                self.phase = LockPhase::Released;
            }
            _ => {}
        }
    }
}
