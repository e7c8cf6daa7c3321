//! The cloud assignment as an input of the lease (provider `digitalocean`).
//!
//! With a cloud VIP the lease decides who *should* receive the traffic and
//! the provider moves the cloud's address there afterwards. When that move
//! keeps failing (a revoked token: 401/403; a Reserved IP that is gone: 404;
//! an API failing for longer than a bound) the holder keeps a lease that
//! serves nobody, while every standby waits. [`CloudGuard`] turns the
//! provider's reports into a *cloud fault*: the node lets the lease go, stands
//! aside for a while, and a standby takes over.
//!
//! Hysteresis, so that a flapping API does not bounce the lease:
//! - only the assignment of the current hold counts: once the cloud has
//!   confirmed it (`Assigned`), later failures (a periodic re-check that gets
//!   a 5xx) are not faults, the IP is routed here already;
//! - transient failures are faults only when the assignment has not
//!   completed `assign_timeout` after the hold began; a permanent failure
//!   (401, 403, 404) is one at once, as a retry cannot fix it;
//! - after a fault the node stands aside for `assign_timeout` × 2^(k-1)
//!   (k faults in a row, at most [`MAX_HOLD_FACTOR`] × `assign_timeout`), and
//!   until an assignment succeeds again it asks with priority 0, so it never
//!   preempts a holder whose assignment works; one that is free it takes.
//!
//! S1 is about the lease and does not change: a fault only makes the node
//! let go (`RemoveVip` before its release leaves, as for any let-go).

use std::time::Duration;

use crate::time::Time;

/// The stand-aside after a fault doubles with each fault in a row, up to
/// this many `assign_timeout`s.
pub const MAX_HOLD_FACTOR: u32 = 4;

/// What the provider says about this node's assignment (the shell's
/// `Input::VipAssignment`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assignment {
    /// This node does not want the cloud address (not holding).
    Idle,
    /// Assigning: waiting for metadata, an action, a retry.
    Pending,
    /// The cloud routes the address to this node.
    Assigned,
    /// The last call failed and the provider keeps retrying. `permanent`:
    /// 401, 403, 404 or another answer a retry does not change.
    Failing { permanent: bool },
}

/// Bounds of the cloud guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloudTiming {
    /// A hold whose assignment has not completed after this is a fault.
    pub assign_timeout: Duration,
}

impl CloudTiming {
    pub const DEFAULT: CloudTiming = CloudTiming {
        assign_timeout: Duration::from_secs(60),
    };
}

/// Why the node stood aside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloudFault {
    /// Not assigned `assign_timeout` after the hold began.
    Timeout,
    /// A permanent failure (401, 403, 404).
    Permanent,
}

impl CloudFault {
    pub fn as_str(self) -> &'static str {
        match self {
            CloudFault::Timeout => "timeout",
            CloudFault::Permanent => "permanent",
        }
    }
}

/// The cloud guard's view, for status and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloudStatus {
    /// The provider's last report.
    pub assignment: Assignment,
    /// The last fault, while it still counts (faults in a row > 0).
    pub fault: Option<CloudFault>,
    /// Faults in a row (reset by a completed assignment).
    pub faults: u32,
    /// Standing aside (no VIP candidate) until this.
    pub out_until: Option<Time>,
    /// Asking with priority 0 until an assignment succeeds.
    pub demoted: bool,
    /// Faults since start.
    pub faults_total: u64,
}

#[derive(Clone, Debug)]
pub struct CloudGuard {
    timing: CloudTiming,
    report: Assignment,
    /// When the current hold began (`None`: not holding).
    hold_since: Option<Time>,
    /// The cloud confirmed the assignment during the current hold.
    confirmed: bool,
    faults: u32,
    fault: Option<CloudFault>,
    out_until: Time,
    faults_total: u64,
}

impl CloudGuard {
    pub fn new(timing: CloudTiming) -> Self {
        CloudGuard {
            timing,
            report: Assignment::Idle,
            hold_since: None,
            confirmed: false,
            faults: 0,
            fault: None,
            out_until: Time::ZERO,
            faults_total: 0,
        }
    }

    /// The provider's latest report.
    pub fn on_report(&mut self, a: Assignment) {
        self.report = a;
        if a == Assignment::Assigned && self.hold_since.is_some() {
            self.confirmed = true;
            self.faults = 0;
            self.fault = None;
        }
    }

    /// Call after each step with whether the node holds the lease now.
    /// Returns the fault that fires now, if any: the node must let go.
    pub fn observe(&mut self, now: Time, holding: bool) -> Option<CloudFault> {
        if !holding {
            self.hold_since = None;
            self.confirmed = false;
            return None;
        }
        let since = match self.hold_since {
            Some(t) => t,
            None => {
                // A new hold: what the provider said before is about the
                // previous one (the shell reports again once it has acted).
                self.hold_since = Some(now);
                self.report = Assignment::Pending;
                now
            }
        };
        if self.confirmed {
            return None;
        }
        let fault = match self.report {
            Assignment::Failing { permanent: true } => Some(CloudFault::Permanent),
            _ if now >= since + self.timing.assign_timeout => Some(CloudFault::Timeout),
            _ => None,
        }?;
        self.faults = self.faults.saturating_add(1);
        self.faults_total += 1;
        self.fault = Some(fault);
        let factor = 1u32
            .checked_shl(self.faults - 1)
            .unwrap_or(u32::MAX)
            .min(MAX_HOLD_FACTOR);
        self.out_until = now + self.timing.assign_timeout * factor;
        self.hold_since = None;
        Some(fault)
    }

    /// May be a VIP candidate (not standing aside).
    pub fn eligible(&self, now: Time) -> bool {
        now >= self.out_until
    }

    /// Ask with priority 0: a fault is on record and no assignment has
    /// succeeded since.
    pub fn demoted(&self) -> bool {
        self.faults > 0
    }

    pub fn next_wakeup(&self, now: Time) -> Option<Time> {
        let mut w = Vec::new();
        if self.out_until > now {
            w.push(self.out_until);
        }
        if let Some(s) = self.hold_since
            && !self.confirmed
        {
            w.push(s + self.timing.assign_timeout);
        }
        w.into_iter().min()
    }

    pub fn status(&self, now: Time) -> CloudStatus {
        CloudStatus {
            assignment: self.report,
            fault: self.fault,
            faults: self.faults,
            out_until: (self.out_until > now).then_some(self.out_until),
            demoted: self.demoted(),
            faults_total: self.faults_total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: u64) -> Time {
        Time::from_millis(v * 1000)
    }

    fn guard() -> CloudGuard {
        CloudGuard::new(CloudTiming {
            assign_timeout: Duration::from_secs(60),
        })
    }

    #[test]
    fn an_assignment_that_never_completes_is_a_fault_at_the_bound() {
        let mut g = guard();
        assert_eq!(g.observe(s(10), true), None);
        g.on_report(Assignment::Pending);
        g.on_report(Assignment::Failing { permanent: false });
        assert_eq!(g.next_wakeup(s(10)), Some(s(70)));
        assert_eq!(g.observe(s(69), true), None);
        assert_eq!(g.observe(s(70), true), Some(CloudFault::Timeout));
        assert!(!g.eligible(s(70)));
        assert!(!g.eligible(s(129)));
        assert!(g.eligible(s(130)));
        assert!(g.demoted());
        assert_eq!(g.next_wakeup(s(70)), Some(s(130)));
    }

    #[test]
    fn a_permanent_failure_is_a_fault_at_once() {
        let mut g = guard();
        g.observe(s(0), true);
        g.on_report(Assignment::Failing { permanent: true });
        assert_eq!(g.observe(s(1), true), Some(CloudFault::Permanent));
        assert_eq!(g.status(s(1)).fault, Some(CloudFault::Permanent));
    }

    #[test]
    fn failures_after_a_confirmed_assignment_are_no_fault() {
        let mut g = guard();
        g.observe(s(0), true);
        g.on_report(Assignment::Assigned);
        g.on_report(Assignment::Failing { permanent: true });
        assert_eq!(g.observe(s(1), true), None);
        assert_eq!(g.observe(s(600), true), None);
        assert_eq!(g.next_wakeup(s(600)), None);
    }

    #[test]
    fn a_flapping_api_that_completes_within_the_bound_is_no_fault() {
        let mut g = guard();
        g.observe(s(0), true);
        for t in 0..50 {
            g.on_report(Assignment::Failing { permanent: false });
            assert_eq!(g.observe(s(t), true), None);
            g.on_report(Assignment::Pending);
        }
        g.on_report(Assignment::Assigned);
        assert_eq!(g.observe(s(59), true), None);
        assert_eq!(g.observe(s(61), true), None);
        assert!(!g.demoted());
    }

    #[test]
    fn the_stand_aside_doubles_and_a_success_resets_it() {
        let mut g = guard();
        let mut t = 0;
        let mut holds = Vec::new();
        for _ in 0..6 {
            g.observe(s(t), true);
            g.on_report(Assignment::Failing { permanent: false });
            t += 60;
            assert!(g.observe(s(t), true).is_some());
            let out = g.status(s(t)).out_until.unwrap();
            holds.push(out.saturating_since(s(t)).as_secs());
            t = out.saturating_since(Time::ZERO).as_secs();
            g.observe(s(t), false);
            g.on_report(Assignment::Idle);
        }
        assert_eq!(holds, [60, 120, 240, 240, 240, 240]);
        assert_eq!(g.status(s(t)).faults_total, 6);
        // A hold that works: no longer demoted, the next fault starts at 60 s.
        g.observe(s(t), true);
        g.on_report(Assignment::Assigned);
        assert!(!g.demoted());
        g.observe(s(t + 1), false);
        g.observe(s(t + 2), true);
        g.on_report(Assignment::Failing { permanent: true });
        assert!(g.observe(s(t + 3), true).is_some());
        assert_eq!(g.status(s(t + 3)).out_until, Some(s(t + 63)));
    }

    #[test]
    fn a_report_from_the_previous_hold_does_not_count() {
        let mut g = guard();
        g.on_report(Assignment::Failing { permanent: true });
        assert_eq!(g.observe(s(0), true), None, "stale: before this hold");
        assert_eq!(g.status(s(0)).assignment, Assignment::Pending);
    }

    #[test]
    fn a_new_hold_starts_its_own_clock() {
        let mut g = guard();
        g.observe(s(0), true);
        g.on_report(Assignment::Assigned);
        g.observe(s(10), false);
        g.on_report(Assignment::Idle);
        // Held again: the earlier confirmation does not carry over.
        g.observe(s(100), true);
        g.on_report(Assignment::Pending);
        assert_eq!(g.observe(s(159), true), None);
        assert_eq!(g.observe(s(160), true), Some(CloudFault::Timeout));
    }
}
