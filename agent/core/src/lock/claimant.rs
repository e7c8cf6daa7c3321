//! The claimant's half of the bootstrap lock: claim, commit, verify, init.

use super::{InitRecord, Lock, LockCtx, LockPhase};
use crate::node::{Job, Out};
use crate::time::Time;
use crate::wire::{ClaimId, LockOp, LockReply, LockRequest, LockWithdraw, PeerMsg, Refusal};

impl Lock {
    pub(crate) fn current_id(&self) -> ClaimId {
        ClaimId {
            name: self.me.clone(),
            incarnation: self.incarnation,
            round: self.round,
        }
    }

    /// The shell found no cluster on this node and wants one: start
    /// claiming (after a stagger by rank, so that the first control plane
    /// usually wins without a duel).
    pub fn want_init(&mut self, now: Time, ctx: &LockCtx) {
        if self.phase != LockPhase::Idle {
            return;
        }
        if self.persisted.initialized.is_some() || self.learned_init.is_some() {
            self.phase = LockPhase::Follower;
            return;
        }
        self.phase = LockPhase::Waiting;
        let j = self.jitter(self.stagger() / 4);
        self.next_send = now + self.stagger() * ctx.rank as u32 + j;
    }

    /// The outcome of RunInit (or, after a restart, of the shell's
    /// inspection of what a previous attempt left).
    pub fn init_finished(&mut self, now: Time, ok: bool, left_artifacts: bool, out: &mut Out) {
        if !matches!(
            self.phase,
            LockPhase::Initializing | LockPhase::CheckNeeded | LockPhase::Failed
        ) {
            return;
        }
        if ok {
            self.persisted.init = Some(InitRecord::Done);
            if self.persisted.initialized.is_none() {
                self.persisted.initialized = Some(self.me.clone());
            }
            self.persist(out);
            self.phase = LockPhase::Initialized;
            self.init_acks.clear();
            self.next_send = now;
            self.send_initialized(now, out);
        } else if left_artifacts {
            // Safety first: the attempt may have produced a cluster. The
            // lock stays here; an operator cleans up (`kubeadm reset -f`)
            // and restarts the agent, whose check then reports clean.
            self.persisted.init = Some(InitRecord::Failed);
            self.persist(out);
            self.phase = LockPhase::Failed;
        } else {
            // Nothing was left behind: no cluster exists. Try again later
            // with a new round (the voters keep their vote for this node).
            self.persisted.init = None;
            self.persist(out);
            self.phase = LockPhase::Waiting;
            self.next_send = now + self.timing.lease * 2;
        }
    }

    pub fn claimant_tick(&mut self, now: Time, ctx: &LockCtx, out: &mut Out) {
        match self.phase {
            LockPhase::Waiting if now >= self.next_send => {
                if ctx.cluster_elsewhere.is_some() {
                    self.phase = LockPhase::Blocked;
                    self.blocked_by = ctx.cluster_elsewhere.clone();
                    self.next_send = now + self.retry() * 5;
                } else {
                    self.start_round(now, out);
                }
            }
            LockPhase::Blocked if now >= self.next_send => {
                if ctx.cluster_elsewhere.is_none() {
                    self.phase = LockPhase::Waiting;
                    self.next_send = now + self.stagger() * ctx.rank as u32;
                } else {
                    self.blocked_by = ctx.cluster_elsewhere.clone();
                    self.next_send = now + self.retry() * 5;
                }
            }
            LockPhase::Claiming | LockPhase::Committing | LockPhase::Verifying => {
                if now >= self.round_started + self.round_timeout() {
                    self.abandon(now, ctx, out);
                } else if now >= self.next_send {
                    self.resend(out);
                    self.next_send = now + self.retry();
                }
            }
            LockPhase::Initialized if self.init_acks.len() < self.q && now >= self.next_send => {
                self.send_initialized(now, out);
            }
            _ => {}
        }
    }

    fn start_round(&mut self, now: Time, out: &mut Out) {
        self.round += 1;
        self.votes.clear();
        self.against.clear();
        self.commits.clear();
        self.verified.clear();
        self.phase = LockPhase::Claiming;
        self.round_started = now;
        self.next_send = now + self.retry();
        for v in self.voters.clone() {
            self.send_op(&v, LockOp::Claim, out);
        }
    }

    fn send_op(&self, to: &str, op: LockOp, out: &mut Out) {
        out.send(
            to,
            PeerMsg::LockRequest(LockRequest {
                from: self.me.clone(),
                op,
                id: self.current_id(),
                voters: self.digest,
                attempt: self.verify_round,
            }),
        );
    }

    fn resend(&mut self, out: &mut Out) {
        for v in self.voters.clone() {
            let op = match self.phase {
                // Voters that refused are asked again: the claimant they
                // voted for may have withdrawn meanwhile.
                LockPhase::Claiming if !self.votes.contains(&v) => Some(LockOp::Claim),
                LockPhase::Committing if !self.commits.contains_key(&v) => {
                    if self.votes.contains(&v) {
                        Some(LockOp::Commit)
                    } else {
                        Some(LockOp::Claim)
                    }
                }
                LockPhase::Verifying
                    if self.commits.contains_key(&v) && !self.verified.contains(&v) =>
                {
                    Some(LockOp::Verify)
                }
                _ => None,
            };
            if let Some(op) = op {
                self.send_op(&v, op, out);
            }
        }
    }

    /// Give up this round: it will never be acted on, so the voters may
    /// forget our votes (even committed ones).
    fn abandon(&mut self, now: Time, ctx: &LockCtx, out: &mut Out) {
        let id = self.current_id();
        for v in &self.voters {
            out.send(
                v,
                PeerMsg::LockWithdraw(LockWithdraw {
                    from: self.me.clone(),
                    id: id.clone(),
                }),
            );
        }
        self.phase = LockPhase::Waiting;
        let j = self.jitter(self.timing.lease);
        self.next_send = now + self.timing.lease + self.stagger() * ctx.rank as u32 + j;
    }

    fn send_initialized(&mut self, now: Time, out: &mut Out) {
        for v in self.voters.clone() {
            if !self.init_acks.contains(&v) {
                self.send_op(&v, LockOp::Initialized, out);
            }
        }
        self.next_send = now + self.retry() * 5;
    }

    pub fn on_reply(&mut self, now: Time, reply: &LockReply, ctx: &LockCtx, out: &mut Out) {
        self.on_report(now, &reply.from, &reply.report, out);
        let from = reply.from.clone();
        if reply.refusal == Some(Refusal::InitReleased) && reply.id.name == self.me {
            self.on_released_me(out);
            return;
        }
        if reply.op == LockOp::Initialized {
            if reply.ok && reply.id.name == self.me {
                self.init_acks.insert(from);
            }
            return;
        }
        if reply.id != self.current_id() {
            return;
        }
        match (self.phase, reply.op, reply.ok) {
            (LockPhase::Claiming, LockOp::Claim, true) => {
                self.against.remove(&from);
                self.votes.insert(from);
                if self.votes.len() >= self.q {
                    self.phase = LockPhase::Committing;
                    for v in self.votes.clone() {
                        self.send_op(&v, LockOp::Commit, out);
                    }
                }
            }
            (LockPhase::Committing, LockOp::Claim, true) => {
                self.against.remove(&from);
                self.votes.insert(from.clone());
                self.send_op(&from, LockOp::Commit, out);
            }
            (LockPhase::Committing, LockOp::Commit, true) => {
                self.commits.insert(from, reply.voter_incarnation);
                if self.commits.len() >= self.q {
                    // Every verify goes out after every counted commit ack
                    // came in, so the verified voters all held the committed
                    // vote at one instant (the send of the first verify).
                    self.phase = LockPhase::Verifying;
                    self.verified.clear();
                    self.verify_round += 1;
                    for v in self.commits.keys().cloned().collect::<Vec<_>>() {
                        self.send_op(&v, LockOp::Verify, out);
                    }
                }
            }
            (LockPhase::Verifying, LockOp::Verify, _) if reply.attempt != self.verify_round => {
                // An answer to an earlier verify round: it may predate a
                // commit counted now, so it proves nothing.
            }
            (LockPhase::Verifying, LockOp::Verify, ok) => {
                if ok && self.commits.get(&from) == Some(&reply.voter_incarnation) {
                    self.verified.insert(from);
                    if self.verified.len() >= self.q {
                        self.decide(now, ctx, out);
                    }
                } else {
                    // That voter restarted or lost the vote: commit again.
                    self.commits.remove(&from);
                    self.verified.clear();
                    self.phase = LockPhase::Committing;
                    let op = if self.votes.contains(&from) {
                        LockOp::Commit
                    } else {
                        LockOp::Claim
                    };
                    self.send_op(&from, op, out);
                }
            }
            (LockPhase::Claiming | LockPhase::Committing, _, false)
                if reply.refusal == Some(Refusal::Taken)
                    && !reply.report.committed
                    && reply.report.vote.as_ref().is_some_and(|v| v.name < self.me) =>
            {
                // The voter is for a claimant that sorts before us (as the
                // rank stagger orders them), and not committed yet: give
                // way at once, so that two claimants never keep half the
                // voters each while they wait for one that is gone. A
                // committed vote may be a stale one (its withdraw lost):
                // the others may still make a majority.
                self.abandon(now, ctx, out);
            }
            (LockPhase::Claiming | LockPhase::Committing, _, false)
                if reply.refusal == Some(Refusal::Taken) =>
            {
                self.votes.remove(&from);
                self.against.insert(from);
                let have = if self.phase == LockPhase::Claiming {
                    self.votes.len()
                } else {
                    self.commits.len()
                };
                let decided = have + self.against.len();
                let possible = have + self.voters.len().saturating_sub(decided);
                if possible < self.q {
                    self.abandon(now, ctx, out);
                }
            }
            _ => {}
        }
    }

    /// A verified majority: this node runs init, unless gossip shows a
    /// cluster elsewhere. "Init started" is persisted before RunInit.
    fn decide(&mut self, now: Time, ctx: &LockCtx, out: &mut Out) {
        if ctx.cluster_elsewhere.is_some() {
            self.phase = LockPhase::Blocked;
            self.blocked_by = ctx.cluster_elsewhere.clone();
            self.next_send = now + self.retry() * 5;
            return;
        }
        self.persisted.init = Some(InitRecord::Started {
            id: self.current_id(),
        });
        self.persist(out);
        out.start_job(Job::RunInit);
        self.phase = LockPhase::Initializing;
    }
}
