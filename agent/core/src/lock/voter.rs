//! The voter's half of the bootstrap lock, and the amnesia rule.

use std::collections::BTreeMap;

use super::{Lock, StoredVote};
use crate::node::Out;
use crate::time::Time;
use crate::wire::{ClaimId, LockOp, LockReply, LockRequest, LockWithdraw, PeerMsg, Refusal};

impl Lock {
    /// Answer a claim, commit, verify or initialized record. Any state
    /// change is persisted (an effect) before the reply is sent.
    pub fn on_request(&mut self, now: Time, req: &LockRequest, out: &mut Out) {
        let (ok, refusal) = self.vote_on(now, req, out);
        out.send(
            &req.from,
            PeerMsg::LockReply(LockReply {
                from: self.me.clone(),
                voter_incarnation: self.incarnation,
                op: req.op,
                id: req.id.clone(),
                attempt: req.attempt,
                ok,
                refusal,
                report: self.report(),
            }),
        );
    }

    fn vote_on(&mut self, now: Time, req: &LockRequest, out: &mut Out) -> (bool, Option<Refusal>) {
        if !self.is_voter {
            return (false, Some(Refusal::NotVoter));
        }
        if req.voters != self.digest {
            return (false, Some(Refusal::VoterMismatch));
        }
        if req.id.name != req.from {
            return (false, Some(Refusal::Taken));
        }
        if self.persisted.released.contains(&req.from) {
            // An operator released this node's lock: it never inits, and
            // an init it claims to have done is not the cluster's.
            return (false, Some(Refusal::InitReleased));
        }
        if req.op == LockOp::Initialized {
            // A fact, recorded even while recovering.
            if self.persisted.initialized.is_none() {
                self.persisted.initialized = Some(req.from.clone());
                self.persist(out);
            }
            return (true, None);
        }
        if self.recovering {
            return (false, Some(Refusal::Recovering));
        }
        let ttl = self.vote_ttl();
        match req.op {
            LockOp::Claim => {
                if self.persisted.initialized.is_some() {
                    return (false, Some(Refusal::Initialized));
                }
                let since = self.vote_since;
                match self.persisted.vote.as_mut() {
                    None => {
                        self.persisted.vote = Some(StoredVote {
                            id: req.id.clone(),
                            committed: false,
                        });
                    }
                    Some(v) if v.id == req.id => return (true, None),
                    Some(v) if v.id.name == req.id.name => {
                        if v.id.incarnation == req.id.incarnation && req.id.round < v.id.round {
                            // A delayed claim of a round its claimant gave up.
                            return (false, Some(Refusal::Taken));
                        }
                        // The same node again (a new round or a restarted
                        // agent): the vote stays with that node.
                        v.id = req.id.clone();
                    }
                    Some(v) if !v.committed && now >= since + ttl => {
                        // An uncommitted vote nobody followed up: a claimant
                        // that died or lost. Committed votes never lapse.
                        *v = StoredVote {
                            id: req.id.clone(),
                            committed: false,
                        };
                    }
                    Some(_) => return (false, Some(Refusal::Taken)),
                }
                self.vote_since = now;
                self.persist(out);
                (true, None)
            }
            LockOp::Commit => match self.persisted.vote.as_mut() {
                Some(v) if v.id == req.id => {
                    if !v.committed {
                        v.committed = true;
                        self.persist(out);
                    }
                    (true, None)
                }
                _ => (false, Some(Refusal::Taken)),
            },
            LockOp::Verify => match &self.persisted.vote {
                Some(v) if v.id == req.id && v.committed => (true, None),
                _ => (false, Some(Refusal::Taken)),
            },
            LockOp::Initialized => unreachable!("handled above"),
        }
    }

    /// A claimant gives up one claim round: clear our vote if it is that one.
    pub fn on_withdraw(&mut self, now: Time, w: &LockWithdraw, out: &mut Out) {
        if !self.is_voter || self.recovering || w.id.name != w.from {
            return;
        }
        if self.persisted.vote.as_ref().is_some_and(|v| v.id == w.id) {
            self.persisted.vote = None;
            self.vote_since = now;
            self.persist(out);
        }
    }

    /// The amnesia rule. A voter that started without a state file cannot
    /// tell a first boot from lost state, so it votes for nobody until it
    /// has the lock reports of `n - q + 1` other voters (taken after it
    /// started). Then, with `u` voters unheard, a claimant is *dangerous* if
    /// at least `q - 1 - u` reports show a committed vote for it: it may
    /// have a verified majority that counted our lost vote. No dangerous
    /// claimant: start afresh; exactly one: adopt its committed vote;
    /// several: stay recovering (abstain). Another voter's "recovering"
    /// report counts as an empty vote: under the assumption that at most one
    /// voter is without its state at a time, that voter never had any.
    pub(crate) fn try_resolve(&mut self, now: Time, out: &mut Out) {
        let n = self.voters.len();
        let k = self.reports.len();
        let need = n + 1 - self.q;
        if !self.recovering || k < need {
            return;
        }
        let unheard = (n - 1) - k;
        let threshold = self.q - 1 - unheard;
        let mut committed: BTreeMap<&str, (usize, &ClaimId)> = BTreeMap::new();
        for r in self.reports.values() {
            if let (false, true, Some(id)) = (r.recovering, r.committed, &r.vote) {
                let e = committed.entry(id.name.as_str()).or_insert((0, id));
                e.0 += 1;
                if id > e.1 {
                    e.1 = id;
                }
            }
        }
        let dangerous: Vec<&ClaimId> = committed
            .values()
            .filter(|(c, _)| *c >= threshold)
            .map(|(_, id)| *id)
            .collect();
        let vote = match dangerous.as_slice() {
            [] => None,
            [id] => Some(StoredVote {
                id: (*id).clone(),
                committed: true,
            }),
            _ => return,
        };
        let initialized = self.reports.values().find_map(|r| r.initialized.clone());
        self.persisted.vote = vote;
        if self.persisted.initialized.is_none() {
            self.persisted.initialized = initialized;
        }
        self.persisted.voter_ready = true;
        self.recovering = false;
        self.vote_since = now;
        self.persist(out);
    }
}
