//! The voter's half of the VIP lease: at most one holder at a time.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::time::Time;
use crate::wire::{Contender, HolderId, LeaseRelease, LeaseReply, LeaseRequest, Refusal};

/// How many holders' last release a voter remembers (to refuse their stale
/// requests). Forgetting one costs liveness (one lease), never safety.
const RELEASED_MEMORY: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub holder: HolderId,
    /// The highest request sequence number granted to this holder.
    pub seq: u64,
    /// End of the grant on this voter's clock.
    pub expiry: Time,
}

#[derive(Clone, Debug)]
pub struct LeaseVoter {
    me: String,
    lease: Duration,
    digest: u64,
    /// Grants nothing before this: a restarted voter may have forgotten a
    /// grant it gave, and waits for it to run out (one lease, own clock).
    quarantine_until: Time,
    quarantine_announced: bool,
    grant: Option<Grant>,
    /// Highest released sequence number per holder, and when it came.
    released: BTreeMap<HolderId, (u64, Time)>,
    /// Candidates refused recently: told when the grant is free.
    refused: BTreeMap<String, Time>,
    /// Candidates refused recently, with their priority: the best one is
    /// reported to the holder (preemption).
    contenders: BTreeMap<String, (Time, u8)>,
}

impl LeaseVoter {
    /// A voter whose agent started at `now` (with or without a state file:
    /// grants are never persisted).
    pub fn new(me: &str, lease: Duration, digest: u64, now: Time) -> LeaseVoter {
        LeaseVoter {
            me: me.to_string(),
            lease,
            digest,
            quarantine_until: now + lease,
            quarantine_announced: false,
            grant: None,
            released: BTreeMap::new(),
            refused: BTreeMap::new(),
            contenders: BTreeMap::new(),
        }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// The unexpired grant, if any.
    pub fn grant(&self, now: Time) -> Option<&Grant> {
        self.grant.as_ref().filter(|g| g.expiry > now)
    }

    pub fn in_quarantine(&self, now: Time) -> bool {
        now < self.quarantine_until
    }

    fn reply(&self, req: &LeaseRequest) -> LeaseReply {
        LeaseReply {
            from: self.me.clone(),
            candidate_incarnation: req.incarnation,
            seq: req.seq,
            granted: false,
            refusal: None,
            lease_us: micros(self.lease),
            holder: None,
            remaining_us: 0,
            contender: None,
        }
    }

    /// The best candidate refused within the last half lease.
    fn contender(&mut self, now: Time) -> Option<Contender> {
        let horizon = now - self.lease / 2;
        self.contenders.retain(|_, (at, _)| *at >= horizon);
        self.contenders
            .iter()
            .max_by(|a, b| (a.1).1.cmp(&(b.1).1).then_with(|| b.0.cmp(a.0)))
            .map(|(n, (_, p))| Contender {
                name: n.clone(),
                priority: *p,
            })
    }

    pub fn on_request(&mut self, now: Time, req: &LeaseRequest) -> LeaseReply {
        let mut r = self.reply(req);
        if req.voters != self.digest {
            r.refusal = Some(Refusal::VoterMismatch);
            return r;
        }
        if let Some(g) = self.grant(now) {
            r.holder = Some(g.holder.clone());
            r.remaining_us = micros(g.expiry.saturating_since(now));
        }
        if self.in_quarantine(now) {
            r.refusal = Some(Refusal::Quarantine);
            r.remaining_us = micros(self.quarantine_until.saturating_since(now));
            self.refused.insert(req.from.clone(), now);
            return r;
        }
        let id = HolderId {
            name: req.from.clone(),
            incarnation: req.incarnation,
        };
        if let Some(&(upto, _)) = self.released.get(&id)
            && req.seq <= upto
        {
            // Sent before a release that already arrived: granting it
            // would block others for a lease nobody uses.
            r.refusal = Some(Refusal::Released);
            return r;
        }
        match self.grant.as_mut().filter(|g| g.expiry > now) {
            Some(g) if g.holder != id => {
                r.refusal = Some(Refusal::Held);
                self.refused.insert(req.from.clone(), now);
                self.contenders
                    .insert(req.from.clone(), (now, req.priority));
                return r;
            }
            Some(g) => {
                g.seq = g.seq.max(req.seq);
                g.expiry = g.expiry.max(now + self.lease);
            }
            None => {
                self.grant = Some(Grant {
                    holder: id.clone(),
                    seq: req.seq,
                    expiry: now + self.lease,
                });
            }
        }
        self.refused.remove(&req.from);
        self.contenders.remove(&req.from);
        r.granted = true;
        r.holder = Some(id);
        r.remaining_us = micros(self.lease);
        r.contender = self.contender(now);
        r
    }

    /// Clear the grant if the release is from its holder and covers every
    /// request granted so far. Returns the candidates to tell it is free.
    pub fn on_release(&mut self, now: Time, rel: &LeaseRelease) -> Vec<String> {
        let id = HolderId {
            name: rel.from.clone(),
            incarnation: rel.incarnation,
        };
        let e = self.released.entry(id.clone()).or_insert((0, now));
        e.0 = e.0.max(rel.seq);
        e.1 = now;
        if self.released.len() > RELEASED_MEMORY
            && let Some(oldest) = self
                .released
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone())
        {
            self.released.remove(&oldest);
        }
        let clears = self
            .grant
            .as_ref()
            .is_some_and(|g| g.holder == id && g.seq <= rel.seq);
        if clears {
            self.grant = None;
            self.take_refused(now)
        } else {
            Vec::new()
        }
    }

    /// Expire the grant and end the quarantine when due. Returns the
    /// candidates to tell the grant is free.
    pub fn tick(&mut self, now: Time) -> Vec<String> {
        let mut free = false;
        if self.grant.as_ref().is_some_and(|g| g.expiry <= now) {
            self.grant = None;
            free = true;
        }
        if !self.quarantine_announced && now >= self.quarantine_until {
            self.quarantine_announced = true;
            free = true;
        }
        if free && self.grant.is_none() {
            self.take_refused(now)
        } else {
            Vec::new()
        }
    }

    pub fn next_wakeup(&self) -> Option<Time> {
        let q = (!self.quarantine_announced).then_some(self.quarantine_until);
        let g = self.grant.as_ref().map(|g| g.expiry);
        match (q, g) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn take_refused(&mut self, now: Time) -> Vec<String> {
        let horizon = now - self.lease * 2;
        let out = self
            .refused
            .iter()
            .filter(|(_, at)| **at >= horizon)
            .map(|(n, _)| n.clone())
            .collect();
        self.refused.clear();
        out
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(800);

    fn req(from: &str, inc: u64, seq: u64) -> LeaseRequest {
        LeaseRequest {
            from: from.into(),
            incarnation: inc,
            seq,
            voters: 7,
            priority: 100,
        }
    }

    fn rel(from: &str, inc: u64, seq: u64) -> LeaseRelease {
        LeaseRelease {
            from: from.into(),
            incarnation: inc,
            seq,
        }
    }

    fn ms(v: u64) -> Time {
        Time::from_millis(v)
    }

    /// A voter past its start-up quarantine.
    fn voter() -> LeaseVoter {
        let mut v = LeaseVoter::new("v", LEASE, 7, ms(0));
        assert!(v.tick(ms(800)).is_empty());
        v
    }

    #[test]
    fn quarantine_after_start() {
        let mut v = LeaseVoter::new("v", LEASE, 7, ms(1000));
        let r = v.on_request(ms(1500), &req("a", 1, 1));
        assert!(!r.granted);
        assert_eq!(r.refusal, Some(Refusal::Quarantine));
        assert_eq!(r.remaining_us, 300_000);
        assert_eq!(v.next_wakeup(), Some(ms(1800)));
        // The refused candidate is told when the quarantine ends.
        assert_eq!(v.tick(ms(1800)), vec!["a".to_string()]);
        assert!(v.on_request(ms(1800), &req("a", 1, 2)).granted);
    }

    #[test]
    fn refuses_a_second_holder_until_expiry() {
        let mut v = voter();
        let r = v.on_request(ms(1000), &req("a", 1, 1));
        assert!(r.granted);
        assert_eq!(r.lease_us, 800_000);
        let r = v.on_request(ms(1500), &req("b", 1, 1));
        assert!(!r.granted);
        assert_eq!(r.refusal, Some(Refusal::Held));
        assert_eq!(r.holder.as_ref().unwrap().name, "a");
        assert_eq!(r.remaining_us, 300_000);
        // A new incarnation of the same holder is another holder.
        assert!(!v.on_request(ms(1600), &req("a", 2, 1)).granted);
        // Expiry frees it and tells the refused.
        assert_eq!(v.next_wakeup(), Some(ms(1800)));
        let mut told = v.tick(ms(1800));
        told.sort();
        assert_eq!(told, ["a", "b"]);
        assert!(v.on_request(ms(1800), &req("b", 1, 2)).granted);
    }

    #[test]
    fn renewal_extends() {
        let mut v = voter();
        assert!(v.on_request(ms(1000), &req("a", 1, 1)).granted);
        assert!(v.on_request(ms(1200), &req("a", 1, 2)).granted);
        assert_eq!(v.grant(ms(1900)).unwrap().expiry, ms(2000));
        // An old, delayed request neither shortens nor lowers the seq.
        assert!(v.on_request(ms(1300), &req("a", 1, 1)).granted);
        let g = v.grant(ms(1300)).unwrap();
        assert_eq!((g.seq, g.expiry), (2, ms(2100)));
    }

    #[test]
    fn release_clears_only_covered_grants() {
        let mut v = voter();
        assert!(v.on_request(ms(1000), &req("a", 1, 5)).granted);
        // A delayed release from before request 5 does not clear it.
        assert!(v.on_release(ms(1010), &rel("a", 1, 4)).is_empty());
        assert!(v.grant(ms(1010)).is_some());
        // Nor does a release of another incarnation.
        v.on_release(ms(1010), &rel("a", 2, 9));
        assert!(v.grant(ms(1010)).is_some());
        // b is refused, then told when a releases.
        assert!(!v.on_request(ms(1020), &req("b", 1, 1)).granted);
        assert_eq!(
            v.on_release(ms(1030), &rel("a", 1, 5)),
            vec!["b".to_string()]
        );
        assert!(v.grant(ms(1030)).is_none());
        // Requests from before the release are refused afterwards.
        let r = v.on_request(ms(1040), &req("a", 1, 5));
        assert_eq!(r.refusal, Some(Refusal::Released));
        assert!(v.on_request(ms(1050), &req("b", 1, 2)).granted);
    }

    #[test]
    fn stale_release_after_newer_grant_is_ignored() {
        let mut v = voter();
        // Request 7 overtakes release 6 on the network.
        assert!(v.on_request(ms(1000), &req("a", 1, 7)).granted);
        v.on_release(ms(1001), &rel("a", 1, 6));
        assert_eq!(v.grant(ms(1001)).unwrap().seq, 7);
    }

    #[test]
    fn holder_hears_of_the_best_recent_contender() {
        let mut v = voter();
        assert!(v.on_request(ms(1000), &req("a", 1, 1)).granted);
        let mut b = req("b", 1, 1);
        b.priority = 150;
        let mut c = req("c", 1, 1);
        c.priority = 200;
        v.on_request(ms(1010), &b);
        v.on_request(ms(1020), &c);
        let r = v.on_request(ms(1100), &req("a", 1, 2));
        let best = r.contender.unwrap();
        assert_eq!((best.name.as_str(), best.priority), ("c", 200));
        // Contenders that stopped asking are forgotten after half a lease.
        let r = v.on_request(ms(1500), &req("a", 1, 3));
        assert_eq!(r.contender, None);
    }

    #[test]
    fn voter_list_mismatch_is_refused() {
        let mut v = voter();
        let mut r = req("a", 1, 1);
        r.voters = 8;
        let rep = v.on_request(ms(1000), &r);
        assert_eq!(rep.refusal, Some(Refusal::VoterMismatch));
        assert!(v.grant(ms(1000)).is_none());
    }

    #[test]
    fn release_memory_is_bounded() {
        let mut v = voter();
        for i in 0..200u64 {
            v.on_release(ms(1000 + i), &rel(&format!("c{i}"), i, 1));
        }
        assert!(v.released.len() <= RELEASED_MEMORY);
    }
}
