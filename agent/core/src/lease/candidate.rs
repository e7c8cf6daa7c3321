//! The candidate's half of the VIP lease: ask, count, hold, let go.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::lease::{holder_validity, quorum, quorum_deadline, stretch};
use crate::membership::keys;
use crate::node::{Effect, Out};
use crate::time::Time;
use crate::timing::Timing;
use crate::wire::{HolderId, LeaseRelease, LeaseReply, LeaseRequest, PeerMsg, Refusal};

/// Request send times older than this many leases are forgotten: any grant
/// for them has expired in the candidate's reckoning anyway.
const SENT_MEMORY: usize = 512;

/// What the node tells the candidate at each step.
#[derive(Clone, Copy, Debug, Default)]
pub struct Wish {
    /// Healthy, undrained, not stopping.
    pub eligible: bool,
    /// Delay before asking after a voter says the grant is free, by rank.
    pub stagger: Duration,
    /// The voters report another node holding the VIP.
    pub other_holder: bool,
}

/// Why the VIP was let go, for logs and status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Fewer than a majority of grants are still valid.
    Expired,
    /// Ineligible (unhealthy, drained, stopping).
    Ineligible,
    /// Handed over to a better candidate.
    Preempted,
}

#[derive(Clone, Debug)]
struct Attempt {
    seq: u64,
    deadline: Time,
    granted: BTreeSet<String>,
    refused: BTreeSet<String>,
    /// A voter that granted us had just refused a better-ranked candidate.
    outranked: bool,
}

#[derive(Clone, Debug)]
pub struct LeaseCandidate {
    me: HolderId,
    voters: Vec<String>,
    q: usize,
    timing: Timing,
    digest: u64,
    seq: u64,
    /// Local send time of each recent request.
    sent: BTreeMap<u64, Time>,
    /// Replies to requests up to this seq are ignored: a release covering
    /// them has been sent, so the voters may have granted someone else.
    released_upto: u64,
    /// Per voter: until when its latest grant may be counted (local clock).
    validity: BTreeMap<String, Time>,
    holding: bool,
    next_request: Time,
    attempt: Option<Attempt>,
    /// Per voter: when it expects to be free for us (local clock, rough).
    free_at: BTreeMap<String, Time>,
    /// A voter said its grant is free: ask soon.
    free_hint: bool,
    /// No attempts before this (after handing over to a better candidate).
    yield_until: Time,
    /// The yield is a handover's: it ends as soon as the successor holds.
    handing_over: bool,
    last_drop: Option<DropReason>,
    priority: u8,
    /// Per voter: when it last reported a higher-priority candidate asking.
    contenders: BTreeMap<String, Time>,
    /// Since when a majority of voters report one.
    better_since: Option<Time>,
}

impl LeaseCandidate {
    pub fn new(
        me: HolderId,
        voters: Vec<String>,
        timing: Timing,
        digest: u64,
        priority: u8,
    ) -> Self {
        let q = quorum(voters.len());
        LeaseCandidate {
            me,
            voters,
            q,
            timing,
            digest,
            seq: 0,
            sent: BTreeMap::new(),
            released_upto: 0,
            validity: BTreeMap::new(),
            holding: false,
            next_request: Time::ZERO,
            attempt: None,
            free_at: BTreeMap::new(),
            free_hint: false,
            yield_until: Time::ZERO,
            handing_over: false,
            last_drop: None,
            priority,
            contenders: BTreeMap::new(),
            better_since: None,
        }
    }

    /// The VIP is up here (as far as effects go) and a majority of grants
    /// is still valid.
    pub fn holds(&self, now: Time) -> bool {
        self.holding && self.valid_until().is_some_and(|d| d > now)
    }

    /// The holding flag alone: AddVip emitted and no RemoveVip since.
    pub fn holding(&self) -> bool {
        self.holding
    }

    /// The priority sent with requests from now on (the node lowers it to 0
    /// after a cloud fault, see [`crate::lease::cloud`]).
    pub fn set_priority(&mut self, p: u8) {
        self.priority = p;
    }

    /// Preempted, staying out until the successor holds (its holding is
    /// learned from the voters' probe replies).
    pub fn handing_over(&self) -> bool {
        self.handing_over
    }

    pub fn last_drop(&self) -> Option<DropReason> {
        self.last_drop
    }

    /// Until when a majority of grants is valid in our reckoning.
    pub fn valid_until(&self) -> Option<Time> {
        quorum_deadline(self.validity.values().copied(), self.q)
    }

    /// Voters whose grant we may count at `now`.
    pub fn valid_voters(&self, now: Time) -> usize {
        self.validity.values().filter(|d| **d > now).count()
    }

    pub fn on_reply(&mut self, now: Time, reply: &LeaseReply) {
        if reply.candidate_incarnation != self.me.incarnation
            || reply.seq <= self.released_upto
            || !self.voters.contains(&reply.from)
        {
            return;
        }
        // A reply to a request we no longer remember (or never sent) is
        // not counted: we cannot know when its grant started.
        let Some(&sent_at) = self.sent.get(&reply.seq) else {
            return;
        };
        if reply.granted {
            let lease = Duration::from_micros(reply.lease_us);
            let until = sent_at + holder_validity(lease, self.timing.actuation_guard);
            let v = self.validity.entry(reply.from.clone()).or_insert(until);
            *v = (*v).max(until);
            self.free_at.insert(reply.from.clone(), now);
            match &reply.contender {
                Some(c) if c.priority > self.priority && c.name != self.me.name => {
                    self.contenders.insert(reply.from.clone(), now);
                }
                _ => {
                    self.contenders.remove(&reply.from);
                }
            }
        } else {
            match reply.refusal {
                Some(Refusal::Held) | Some(Refusal::Quarantine) => {
                    let remaining =
                        Duration::from_micros(reply.remaining_us).min(self.timing.lease * 4);
                    self.free_at
                        .insert(reply.from.clone(), sent_at + stretch(remaining));
                }
                _ => {
                    // Mismatch or not a voter: it will not be free soon.
                    self.free_at
                        .insert(reply.from.clone(), now + self.timing.lease);
                }
            }
        }
        let outranks = reply.contender.as_ref().is_some_and(|c| {
            c.name != self.me.name && outranks(c.priority, &c.name, self.priority, &self.me.name)
        });
        if let Some(a) = self.attempt.as_mut().filter(|a| a.seq == reply.seq) {
            a.outranked |= reply.granted && outranks;
            if reply.granted {
                a.granted.insert(reply.from.clone());
            } else {
                a.refused.insert(reply.from.clone());
            }
        }
    }

    /// A voter says its grant is free.
    pub fn on_free(&mut self, now: Time, voter: &str) {
        if self.voters.iter().any(|v| v == voter) {
            self.free_at.insert(voter.to_string(), now);
            self.free_hint = true;
        }
    }

    /// Let go of everything now: RemoveVip if held, then release the grants.
    pub fn stop(&mut self, now: Time, out: &mut Out) {
        self.let_go(now, DropReason::Ineligible, out);
    }

    fn let_go(&mut self, now: Time, why: DropReason, out: &mut Out) {
        if self.holding {
            self.remove_vip(why, out);
        }
        // Release only if a voter may hold a grant for a request we sent
        // since the last release.
        if self.seq > self.released_upto {
            for v in &self.voters {
                out.send(
                    v,
                    PeerMsg::LeaseRelease(LeaseRelease {
                        from: self.me.name.clone(),
                        incarnation: self.me.incarnation,
                        seq: self.seq,
                    }),
                );
            }
            self.released_upto = self.seq;
        }
        self.validity.clear();
        self.attempt = None;
        let _ = now;
    }

    fn remove_vip(&mut self, why: DropReason, out: &mut Out) {
        self.holding = false;
        self.last_drop = Some(why);
        out.push(Effect::RemoveVip);
        out.push(Effect::Publish {
            key: keys::VIP,
            value: "0".into(),
        });
    }

    /// RemoveVip now if the lease ran out. The node calls this first in
    /// every step, so that no other effect of the step delays the removal.
    pub fn drop_if_expired(&mut self, now: Time, out: &mut Out) {
        if self.holding && self.valid_until().is_none_or(|d| d <= now) {
            self.remove_vip(DropReason::Expired, out);
        }
    }

    /// Bring effects in line with the current state. Call after every input.
    pub fn step(&mut self, now: Time, wish: Wish, out: &mut Out) {
        self.prune(now);
        // 1. The lease ran out: drop the VIP at once, before any voter
        //    could grant someone else.
        self.drop_if_expired(now, out);
        // 2. Voluntary let-go: a better candidate has been asking a
        //    majority of voters for `preempt_after`.
        if self.preempt_due(now) {
            self.let_go(now, DropReason::Preempted, out);
            self.better_since = None;
            self.contenders.clear();
            self.yield_until = now + self.timing.lease * 2;
            self.handing_over = true;
            return;
        }
        // The stay-out only keeps us from grabbing the lease back before
        // the better candidate has it. Once it holds, wait as a standby
        // again: refused like the others, told when it frees, so a holder
        // that leaves soon after preempting is followed at once.
        if self.handing_over && (wish.other_holder || now >= self.yield_until) {
            self.handing_over = false;
            self.yield_until = self.yield_until.min(now);
        }
        let want = wish.eligible && now >= self.yield_until;
        if !want {
            let why = if wish.eligible {
                DropReason::Preempted
            } else {
                DropReason::Ineligible
            };
            self.let_go(now, why, out);
            self.free_hint = false;
            return;
        }
        // 3. A majority of valid grants: take the VIP.
        if !self.holding && self.valid_until().is_some_and(|d| d > now) {
            self.holding = true;
            self.attempt = None;
            self.last_drop = None;
            out.push(Effect::AddVip);
            out.push(Effect::Publish {
                key: keys::VIP,
                value: "1".into(),
            });
        }
        // 4. A standby's attempt that cannot succeed gives its grants back
        //    so that it blocks nobody.
        if !self.holding {
            if let Some(a) = &self.attempt {
                let answered = a.granted.len() + a.refused.len();
                let pending = self.voters.len().saturating_sub(answered);
                if a.granted.len() + pending < self.q || now >= a.deadline {
                    self.fail_attempt(now, wish, out);
                }
            } else if self.validity.values().any(|d| *d > now) {
                // A late grant outside any attempt: give it back.
                self.let_go(now, DropReason::Expired, out);
            }
            if self.free_hint {
                self.free_hint = false;
                if self.attempt.is_none() {
                    self.next_request = self.next_request.min(now + wish.stagger);
                }
            }
        }
        // 5. Ask: renewals while holding, attempts while standing by.
        if now >= self.next_request && (self.holding || self.attempt.is_none()) {
            self.request(now, out);
        }
    }

    /// Whether to hand over now. Equal priorities never preempt: a move
    /// costs a short outage and buys nothing. The evidence comes from the
    /// voters, not gossip: the better candidate is healthy enough to ask
    /// and can reach a majority.
    fn preempt_due(&mut self, now: Time) -> bool {
        if !self.holding {
            self.better_since = None;
            return false;
        }
        let horizon = now - self.timing.lease;
        let seen = self
            .contenders
            .values()
            .filter(|at| **at >= horizon)
            .count();
        if seen < self.q {
            self.better_since = None;
            return false;
        }
        let since = *self.better_since.get_or_insert(now);
        now >= since + self.timing.preempt_after
    }

    fn fail_attempt(&mut self, now: Time, wish: Wish, out: &mut Out) {
        // Two standbys can each hold their own voter's grant and refuse the
        // other forever (a self-grant is instant, the rival's request is
        // not). The one a voter reports outranked steps aside for half a
        // lease, so the better one gets that voter's grant. Only on a
        // failed attempt: a candidate that can win a majority never yields
        // to one that cannot.
        if self.attempt.as_ref().is_some_and(|a| a.outranked) {
            self.let_go(now, DropReason::Expired, out);
            self.yield_until = now + self.timing.lease / 2;
            self.next_request = self.yield_until;
            return;
        }
        let started = self.attempt.as_ref().map_or(now, |a| {
            a.deadline
                .checked_sub(self.attempt_timeout())
                .unwrap_or(Time::ZERO)
        });
        if self.attempt.as_ref().is_some_and(|a| !a.granted.is_empty())
            || self.validity.values().any(|d| *d > now)
        {
            self.let_go(now, DropReason::Expired, out);
        }
        self.attempt = None;
        // Next try: when a majority of voters should be free, at the latest
        // one renewal period after this attempt began.
        let mut free: Vec<Time> = self
            .voters
            .iter()
            .map(|v| self.free_at.get(v).copied().unwrap_or(now).max(now))
            .collect();
        free.sort_unstable();
        let majority_free = free[self.q - 1] + wish.stagger;
        let periodic = started + self.timing.renew_every;
        self.next_request = majority_free.min(periodic).max(now + self.min_gap());
    }

    fn request(&mut self, now: Time, out: &mut Out) {
        self.seq += 1;
        self.sent.insert(self.seq, now);
        for v in &self.voters {
            out.send(
                v,
                PeerMsg::LeaseRequest(LeaseRequest {
                    from: self.me.name.clone(),
                    incarnation: self.me.incarnation,
                    seq: self.seq,
                    voters: self.digest,
                    priority: self.priority,
                }),
            );
        }
        self.next_request = now + self.renew_gap(now);
        if !self.holding {
            self.attempt = Some(Attempt {
                seq: self.seq,
                deadline: now + self.attempt_timeout(),
                granted: BTreeSet::new(),
                refused: BTreeSet::new(),
                outranked: false,
            });
        }
    }

    /// When to renew again. Every `renew_every` while the last round came
    /// back; when less than two periods of the lease are left (a round was
    /// lost), every quarter period until one comes back, so a lossy link
    /// costs the holder a lease only if every one of several rounds is
    /// lost. Each request is a new `seq` whose validity counts from its own
    /// send time, so the schedule changes nothing about S1.
    fn renew_gap(&self, now: Time) -> Duration {
        let short = self.holding
            && self
                .valid_until()
                .is_some_and(|d| d < now + self.timing.renew_every * 2);
        if short {
            self.timing.renew_every / 4
        } else {
            self.timing.renew_every
        }
    }

    fn attempt_timeout(&self) -> Duration {
        self.timing.renew_every / 2
    }

    fn min_gap(&self) -> Duration {
        self.timing.renew_every / 8
    }

    fn prune(&mut self, now: Time) {
        let horizon = now - self.timing.lease * 2;
        while let Some((&seq, &at)) = self.sent.first_key_value() {
            if at < horizon || self.sent.len() > SENT_MEMORY {
                self.sent.remove(&seq);
            } else {
                break;
            }
        }
        self.validity.retain(|_, d| *d > horizon);
    }

    pub fn next_wakeup(&self, eligible: bool) -> Option<Time> {
        let mut w: Vec<Time> = Vec::new();
        if self.holding {
            if let Some(d) = self.valid_until() {
                w.push(d);
            }
            w.push(self.next_request);
            if let Some(s) = self.better_since {
                w.push(s + self.timing.preempt_after);
            }
        } else if eligible {
            match &self.attempt {
                Some(a) => w.push(a.deadline),
                None => w.push(self.next_request.max(self.yield_until)),
            }
        }
        w.into_iter().min()
    }
}

/// Whether candidate (`p`, `name`) ranks above (`my_p`, `me`): higher
/// priority, then the lower name (the order `MembershipView::vip_candidates`
/// uses).
fn outranks(p: u8, name: &str, my_p: u8, me: &str) -> bool {
    p > my_p || (p == my_p && name < me)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Contender;

    fn voters() -> Vec<String> {
        ["v1", "v2", "v3"].iter().map(|s| s.to_string()).collect()
    }

    fn cand() -> LeaseCandidate {
        LeaseCandidate::new(
            HolderId {
                name: "c".into(),
                incarnation: 9,
            },
            voters(),
            Timing::DEFAULT,
            1,
            100,
        )
    }

    fn ms(v: u64) -> Time {
        Time::from_millis(v)
    }

    const GO: Wish = Wish {
        eligible: true,
        stagger: Duration::ZERO,
        other_holder: false,
    };

    fn grant(from: &str, seq: u64) -> LeaseReply {
        LeaseReply {
            from: from.into(),
            candidate_incarnation: 9,
            seq,
            granted: true,
            refusal: None,
            lease_us: 800_000,
            holder: None,
            remaining_us: 800_000,
            contender: None,
        }
    }

    /// A grant from a voter that has just refused a better candidate, `a`.
    fn grant_refusing_better(from: &str, seq: u64) -> LeaseReply {
        LeaseReply {
            contender: Some(Contender {
                name: "a".into(),
                priority: 150,
            }),
            ..grant(from, seq)
        }
    }

    fn refuse(from: &str, seq: u64, remaining_ms: u64) -> LeaseReply {
        LeaseReply {
            granted: false,
            refusal: Some(Refusal::Held),
            holder: Some(HolderId {
                name: "other".into(),
                incarnation: 1,
            }),
            remaining_us: remaining_ms * 1000,
            ..grant(from, seq)
        }
    }

    fn out() -> Out {
        Out::new("c")
    }

    fn sends(out: &Out) -> Vec<(String, PeerMsg)> {
        out.effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send { to, msg } => Some((to.clone(), msg.clone())),
                _ => None,
            })
            .collect()
    }

    fn asks(out: &Out) -> bool {
        sends(out)
            .iter()
            .any(|(_, m)| matches!(m, PeerMsg::LeaseRequest(_)))
    }

    fn has(out: &Out, e: &Effect) -> bool {
        out.effects.contains(e)
    }

    fn seq_of(out: &Out) -> Option<u64> {
        sends(out).iter().find_map(|(_, m)| match m {
            PeerMsg::LeaseRequest(r) => Some(r.seq),
            _ => None,
        })
    }

    #[test]
    fn a_lost_renewal_round_makes_the_next_ones_come_sooner() {
        let mut c = cand();
        let renew = Timing::DEFAULT.renew_every;
        let mut o = out();
        c.step(ms(1000), GO, &mut o);
        c.on_reply(ms(1001), &grant("v1", 1));
        c.on_reply(ms(1001), &grant("v2", 1));
        c.step(ms(1001), GO, &mut out());
        assert!(c.holding());
        // Answered rounds: every `renew_every`.
        let mut o = out();
        c.step(ms(1200), GO, &mut o);
        let seq = seq_of(&o).unwrap();
        c.on_reply(ms(1201), &grant("v1", seq));
        c.on_reply(ms(1201), &grant("v3", seq));
        assert_eq!(c.next_wakeup(true), Some(ms(1200) + renew));
        // The 1400 round is lost; the one after it is due a quarter period
        // later, and so on until a round comes back.
        let mut o = out();
        c.step(ms(1400), GO, &mut o);
        assert!(asks(&o));
        assert_eq!(
            c.next_wakeup(true),
            Some(ms(1600)),
            "one lost round is not yet short"
        );
        let mut o = out();
        c.step(ms(1600), GO, &mut o);
        assert!(asks(&o));
        assert_eq!(c.next_wakeup(true), Some(ms(1600) + renew / 4));
        let mut o = out();
        c.step(ms(1650), GO, &mut o);
        let seq = seq_of(&o).unwrap();
        assert_eq!(c.next_wakeup(true), Some(ms(1700)));
        c.on_reply(ms(1660), &grant("v2", seq));
        c.on_reply(ms(1661), &grant("v3", seq));
        let mut o = out();
        c.step(ms(1700), GO, &mut o);
        assert!(c.holds(ms(1700)));
        assert_eq!(c.next_wakeup(true), Some(ms(1900)), "back to every period");
    }

    #[test]
    fn holds_with_a_majority_and_drops_at_its_validity() {
        let mut c = cand();
        let mut o = out();
        c.step(ms(1000), GO, &mut o);
        assert_eq!(sends(&o).len(), 3, "asks every voter");
        c.on_reply(ms(1002), &grant("v1", 1));
        let mut o = out();
        c.step(ms(1002), GO, &mut o);
        assert!(!c.holding(), "one grant is not a majority");
        c.on_reply(ms(1003), &grant("v2", 1));
        let mut o = out();
        c.step(ms(1003), GO, &mut o);
        assert!(has(&o, &Effect::AddVip));
        assert!(c.holds(ms(1003)));
        // Validity is counted from the send time, shrunk for drift, minus
        // the guard: 1000 + holder_lease.
        let until = ms(1000) + Timing::DEFAULT.holder_lease();
        assert_eq!(c.valid_until(), Some(until));
        assert_eq!(c.next_wakeup(true), Some(ms(1200)));
        // No renewal answered: the VIP goes at exactly `until`.
        let mut o = out();
        c.step(ms(1200), GO, &mut o);
        let mut o = out();
        c.step(until - Duration::from_micros(1), GO, &mut o);
        assert!(!has(&o, &Effect::RemoveVip));
        assert!(c.holds(until - Duration::from_micros(1)));
        let mut o = out();
        c.step(until, GO, &mut o);
        assert!(has(&o, &Effect::RemoveVip));
        assert!(!c.holds(until));
        assert_eq!(c.last_drop(), Some(DropReason::Expired));
    }

    #[test]
    fn the_quorum_th_largest_validity_counts() {
        let mut c = cand();
        c.step(ms(0), GO, &mut out()); // seq 1 at 0
        c.on_reply(ms(1), &grant("v1", 1));
        c.on_reply(ms(1), &grant("v2", 1));
        c.step(ms(1), GO, &mut out());
        assert!(c.holding());
        c.step(ms(200), GO, &mut out()); // seq 2 at 200
        c.on_reply(ms(201), &grant("v3", 2));
        // v3 valid until 200+h, v1 and v2 until 0+h: the 2nd largest is 0+h.
        let h = Timing::DEFAULT.holder_lease();
        assert_eq!(c.valid_until(), Some(ms(0) + h));
        c.on_reply(ms(202), &grant("v1", 2));
        assert_eq!(c.valid_until(), Some(ms(200) + h));
    }

    #[test]
    fn delayed_grants_count_from_their_own_send_time() {
        let mut c = cand();
        c.step(ms(0), GO, &mut out()); // seq 1
        c.step(ms(60), GO, &mut out()); // attempt times out at 100
        c.step(ms(100), GO, &mut out());
        c.step(ms(200), GO, &mut out()); // seq 2 at 200
        // The grant for seq 1 arrives very late: it counts from 0, not 200.
        c.on_reply(ms(600), &grant("v1", 1));
        c.on_reply(ms(600), &grant("v2", 2));
        let h = Timing::DEFAULT.holder_lease();
        assert_eq!(c.valid_until(), Some(ms(0) + h));
        // A duplicate of an unknown seq, or of another incarnation, is ignored.
        c.on_reply(ms(601), &grant("v3", 99));
        let mut other = grant("v3", 2);
        other.candidate_incarnation = 8;
        c.on_reply(ms(601), &other);
        assert_eq!(c.valid_voters(ms(601)), 2);
    }

    #[test]
    fn partial_grants_are_released() {
        let mut c = cand();
        c.step(ms(0), GO, &mut out());
        c.on_reply(ms(1), &grant("v1", 1));
        c.on_reply(ms(1), &refuse("v2", 1, 500));
        c.step(ms(1), GO, &mut out());
        c.on_reply(ms(2), &refuse("v3", 1, 500));
        let mut o = out();
        c.step(ms(2), GO, &mut o);
        let rel: Vec<_> = sends(&o)
            .into_iter()
            .filter(|(_, m)| matches!(m, PeerMsg::LeaseRelease(r) if r.seq == 1))
            .collect();
        assert_eq!(rel.len(), 3, "{o:?}");
        assert!(!c.holding());
        // A duplicate of the released grant no longer counts.
        c.on_reply(ms(3), &grant("v2", 1));
        assert_eq!(c.valid_voters(ms(3)), 0);
        // Next attempt when a majority should be free (about 500 ms), or
        // one period after the attempt began, whichever is first.
        assert_eq!(c.next_wakeup(true), Some(ms(200)));
    }

    #[test]
    fn an_outranked_standby_steps_aside_after_a_failed_attempt() {
        // Our own voter granted us but had just refused a better candidate;
        // another voter is held by that candidate; the third is silent.
        let mut c = cand();
        c.step(ms(0), GO, &mut out());
        c.on_reply(ms(1), &grant_refusing_better("v1", 1));
        c.on_reply(ms(1), &refuse("v2", 1, 700));
        c.step(ms(1), GO, &mut out());
        let mut o = out();
        c.step(ms(100), GO, &mut o); // attempt deadline
        assert!(
            sends(&o)
                .iter()
                .any(|(_, m)| matches!(m, PeerMsg::LeaseRelease(r) if r.seq == 1)),
            "the partial grant is given back: {o:?}"
        );
        // No request during half a lease, even if a voter says it is free.
        c.on_free(ms(150), "v1");
        let mut o = out();
        c.step(ms(150), GO, &mut o);
        assert!(sends(&o).is_empty(), "{o:?}");
        assert_eq!(c.next_wakeup(true), Some(ms(500)));
        let mut o = out();
        c.step(ms(500), GO, &mut o);
        assert!(asks(&o), "{o:?}");
    }

    #[test]
    fn a_standby_that_wins_a_majority_does_not_yield() {
        let mut c = cand();
        c.step(ms(0), GO, &mut out());
        c.on_reply(ms(1), &grant_refusing_better("v1", 1));
        c.on_reply(ms(1), &grant("v2", 1));
        let mut o = out();
        c.step(ms(2), GO, &mut o);
        assert!(c.holding(), "{o:?}");
        assert!(has(&o, &Effect::AddVip));
    }

    #[test]
    fn ineligible_holder_removes_then_releases() {
        let mut c = cand();
        c.step(ms(0), GO, &mut out());
        c.on_reply(ms(1), &grant("v1", 1));
        c.on_reply(ms(1), &grant("v2", 1));
        c.step(ms(1), GO, &mut out());
        assert!(c.holding());
        let mut o = out();
        c.step(
            ms(50),
            Wish {
                eligible: false,
                ..GO
            },
            &mut o,
        );
        let pos_remove = o.effects.iter().position(|e| *e == Effect::RemoveVip);
        let pos_release = o.effects.iter().position(|e| {
            matches!(
                e,
                Effect::Send {
                    msg: PeerMsg::LeaseRelease(_),
                    ..
                }
            )
        });
        assert!(pos_remove.unwrap() < pos_release.unwrap(), "{o:?}");
        assert!(!c.holding());
        // Releasing twice sends nothing new.
        let mut o = out();
        c.step(
            ms(60),
            Wish {
                eligible: false,
                ..GO
            },
            &mut o,
        );
        assert!(sends(&o).is_empty());
    }

    #[test]
    fn preempted_by_a_better_candidate_a_majority_sees() {
        let mut c = cand();
        c.step(ms(0), GO, &mut out());
        c.on_reply(ms(1), &grant("v1", 1));
        c.on_reply(ms(1), &grant("v2", 1));
        c.step(ms(1), GO, &mut out());
        assert!(c.holding());
        let better = |from: &str, seq: u64, prio: u8| LeaseReply {
            contender: Some(crate::wire::Contender {
                name: "b".into(),
                priority: prio,
            }),
            ..grant(from, seq)
        };
        // Equal priority: never.
        c.step(ms(200), GO, &mut out());
        c.on_reply(ms(201), &better("v1", 2, 100));
        c.on_reply(ms(201), &better("v2", 2, 100));
        c.step(ms(201), GO, &mut out());
        assert_eq!(c.better_since, None);
        // One voter is not enough.
        c.step(ms(400), GO, &mut out());
        c.on_reply(ms(401), &better("v1", 3, 200));
        c.on_reply(ms(401), &grant("v2", 3));
        c.step(ms(401), GO, &mut out());
        assert_eq!(c.better_since, None);
        // A majority: hand over after `preempt_after`.
        c.step(ms(600), GO, &mut out());
        c.on_reply(ms(601), &better("v1", 4, 200));
        c.on_reply(ms(601), &better("v2", 4, 200));
        c.step(ms(601), GO, &mut out());
        assert_eq!(c.better_since, Some(ms(601)));
        let due = ms(601) + Timing::DEFAULT.preempt_after;
        let mut t = 601;
        while ms(t) + Duration::from_millis(200) < due {
            t += 200;
            c.step(ms(t), GO, &mut out());
            let seq = c.seq;
            c.on_reply(ms(t + 1), &better("v1", seq, 200));
            c.on_reply(ms(t + 1), &better("v2", seq, 200));
            c.step(ms(t + 1), GO, &mut out());
            assert!(c.holding(), "not before preempt_after");
        }
        assert_eq!(
            c.next_wakeup(true).unwrap().min(due),
            c.next_wakeup(true).unwrap()
        );
        let mut o = out();
        c.step(due, GO, &mut o);
        assert!(has(&o, &Effect::RemoveVip));
        assert_eq!(c.last_drop(), Some(DropReason::Preempted));
        // No attempt while yielding, even when told the lease is free.
        c.on_free(due, "v1");
        let mut o = out();
        c.step(due, GO, &mut o);
        assert!(sends(&o).is_empty());
        assert_eq!(c.next_wakeup(true), Some(due + Timing::DEFAULT.lease * 2));
        // Still out while the voters report no other holder.
        let t = due + Duration::from_millis(100);
        let mut o = out();
        c.step(t, GO, &mut o);
        assert!(sends(&o).is_empty());
        // The successor holds: a standby again, asking (and being refused)
        // so that its voters tell it when the lease is free.
        let t = due + Duration::from_millis(300);
        let mut o = out();
        c.step(
            t,
            Wish {
                other_holder: true,
                ..GO
            },
            &mut o,
        );
        assert!(asks(&o), "{o:?}");
    }

    #[test]
    fn free_hint_brings_the_next_attempt_forward() {
        let mut c = cand();
        c.step(ms(0), GO, &mut out());
        for v in ["v1", "v2", "v3"] {
            c.on_reply(ms(1), &refuse(v, 1, 700));
        }
        c.step(ms(1), GO, &mut out());
        assert_eq!(c.next_wakeup(true), Some(ms(200)));
        c.on_free(ms(50), "v1");
        let stagger = Duration::from_millis(25);
        c.step(ms(50), Wish { stagger, ..GO }, &mut out());
        assert_eq!(c.next_wakeup(true), Some(ms(75)));
    }
}
