//! Timing profiles (`timing = "default" | "fast"` in the config).
//!
//! One place for every period the agent runs on, so the safety margins of the
//! lease protocol (docs/PROTOCOL.md) and the failure-detection bound of the
//! membership layer (docs/operations.md) are derived from the same numbers.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::time::Time;

/// The largest rate difference between any node's clock and real time that
/// the lease rules tolerate, in parts per million (1 % = 10 000 ppm).
/// NTP slews at most 500 ppm; a crystal drifts ~100 ppm. 1 % leaves room for
/// badly behaved virtual clocks.
pub const MAX_DRIFT_PPM: u64 = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    #[default]
    Default,
    Fast,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Default => "default",
            Profile::Fast => "fast",
        }
    }

    pub fn timing(self) -> Timing {
        match self {
            Profile::Default => Timing::DEFAULT,
            Profile::Fast => Timing::FAST,
        }
    }
}

/// All periods of one profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a voter's grant lasts on the voter's clock.
    pub lease: Duration,
    /// How often a holder renews (and a standby re-asks).
    pub renew_every: Duration,
    /// Taken off the holder's view of its lease so that the VIP is removed
    /// before the lease ends even when removal takes a little while.
    pub actuation_guard: Duration,
    /// How long a better candidate must be seen eligible before the holder
    /// hands over to it (avoids flapping on a node that just came back).
    pub preempt_after: Duration,
    /// Gossip round period (chitchat `gossip_interval`).
    pub gossip_interval: Duration,
    /// chitchat phi-accrual threshold: a member is dead after
    /// `phi_threshold` mean heartbeat intervals without news.
    pub phi_threshold: u32,
    /// Prior for the heartbeat interval of a member just seen (chitchat
    /// `initial_interval`); set to the gossip interval so detection does not
    /// depend on how long the agent has been up.
    pub fd_initial_interval: Duration,
    /// Heartbeat intervals above this are ignored by the detector.
    pub fd_max_interval: Duration,
    /// Samples in the detector's window: small, so it adapts in seconds.
    pub fd_window: usize,
    /// A stopping agent keeps gossiping this long after announcing `leaving`.
    pub leave_flush: Duration,
}

impl Timing {
    pub const DEFAULT: Timing = Timing {
        lease: Duration::from_millis(800),
        renew_every: Duration::from_millis(200),
        actuation_guard: Duration::from_millis(100),
        preempt_after: Duration::from_secs(3),
        gossip_interval: Duration::from_millis(100),
        phi_threshold: 6,
        fd_initial_interval: Duration::from_millis(100),
        fd_max_interval: Duration::from_secs(2),
        fd_window: 100,
        leave_flush: Duration::from_millis(300),
    };

    pub const FAST: Timing = Timing {
        lease: Duration::from_millis(240),
        renew_every: Duration::from_millis(40),
        actuation_guard: Duration::from_millis(40),
        preempt_after: Duration::from_secs(2),
        ..Timing::DEFAULT
    };

    /// The part of a lease a holder may count on, measured on its own clock
    /// from the moment it *sent* the request: the voter's `lease` shrunk by
    /// the worst drift in both directions, minus the actuation guard.
    ///
    /// A voter's grant lasts at least `lease / (1 + rho)` real time after it
    /// received the request (hence after it was sent); the holder's view lasts
    /// at most `holder_lease / (1 - rho)` real time after sending. With
    /// `holder_lease = lease (1 - rho) / (1 + rho) - guard` the holder always
    /// lets go first.
    pub fn holder_lease(&self) -> Duration {
        let lease_us = self.lease.as_micros() as u64;
        let shrunk = lease_us * (1_000_000 - MAX_DRIFT_PPM) / (1_000_000 + MAX_DRIFT_PPM);
        Duration::from_micros(shrunk).saturating_sub(self.actuation_guard)
    }

    /// Upper bound on the time from a member's death to every peer seeing it
    /// dead, with a steady heartbeat stream: phi threshold times the mean
    /// interval, plus one liveness evaluation round.
    pub fn failure_detection_bound(&self) -> Duration {
        self.gossip_interval * (self.phi_threshold + 2)
    }
}

/// Up to this many members gossip runs at chitchat's full rate: its fan-out
/// of [`GOSSIP_FANOUT`] SYNs every `gossip_interval`.
pub const GOSSIP_FULL_RATE_MEMBERS: usize = 40;
/// chitchat's fan-out: live peers it sends a SYN to every round.
pub const GOSSIP_FANOUT: u32 = 3;
/// The SYN rate never falls below this share of the full rate (3/s with
/// 100 ms rounds), however large the cluster: each node then hears a digest
/// from about twice as many peers a second, which keeps heartbeats (and
/// failure detection) flowing at 1 000 members. A share of the round, not a
/// fixed rate, so the pacing stretches with the round.
pub const GOSSIP_MIN_SYN_SHARE: f64 = 0.1;

impl Timing {
    /// SYNs per second chitchat sends unpaced.
    pub fn full_syn_rate(&self) -> f64 {
        f64::from(GOSSIP_FANOUT) / self.gossip_interval.as_secs_f64()
    }

    /// Whether a node that knows `members` members paces its SYNs at all
    /// (below the knee every SYN chitchat picks goes out, as before).
    pub fn paces_gossip(&self, members: usize) -> bool {
        members > GOSSIP_FULL_RATE_MEMBERS
    }

    /// SYNs per second a node that knows `members` members sends (issue 14).
    ///
    /// Every SYN carries the sender's full digest and draws one back (a
    /// SYN-ACK with the peer's), both a few tens of bytes per member, so
    /// unpaced the bytes and CPU of every agent grow with the square of the
    /// cluster. Above [`GOSSIP_FULL_RATE_MEMBERS`] the rate falls as
    /// `1 / members`, keeping the digest entries a node sends per second
    /// constant, down to [`GOSSIP_MIN_SYN_SHARE`] of the full rate. Lease and lock traffic is
    /// direct and never paced.
    pub fn syn_rate(&self, members: usize) -> f64 {
        let full = self.full_syn_rate();
        if members <= GOSSIP_FULL_RATE_MEMBERS {
            return full;
        }
        let scaled = full * GOSSIP_FULL_RATE_MEMBERS as f64 / members as f64;
        scaled.max(full * GOSSIP_MIN_SYN_SHARE)
    }

    /// Upper bound on failure detection at `members` members: as
    /// [`failure_detection_bound`](Self::failure_detection_bound), with the
    /// round stretched to the paced mean gap between a node's SYNs times
    /// the fan-out (what one heartbeat interval becomes at an observer, which
    /// hears digests from the peers it SYNs and the peers that SYN it).
    pub fn paced_failure_detection_bound(&self, members: usize) -> Duration {
        let stretch = self.full_syn_rate() / self.syn_rate(members);
        self.failure_detection_bound().mul_f64(stretch.max(1.0))
    }
}

/// A token bucket that lets a node's SYNs through at [`Timing::syn_rate`].
/// chitchat picks the peers (at random) and the rounds; the pacer only
/// leaves some SYNs out, so every SYN sent is one chitchat chose.
#[derive(Clone, Debug, Default)]
pub struct SynPacer {
    tokens: f64,
    last: Option<Time>,
}

impl SynPacer {
    /// May a SYN go out at `now`, at `rate` per second? A burst of at most
    /// one round (the fan-out) builds up.
    pub fn admit(&mut self, now: Time, rate: f64) -> bool {
        let burst = f64::from(GOSSIP_FANOUT);
        let elapsed = self.last.map_or(burst / rate.max(f64::MIN_POSITIVE), |l| {
            now.saturating_since(l).as_secs_f64()
        });
        self.last = Some(now);
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// A peer's message came in truncated at the datagram limit: it has more
    /// state for this node, so the next SYN may go at once (catching up).
    pub fn credit(&mut self) {
        self.tokens = self.tokens.max(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_clusters_gossip_at_full_rate() {
        let t = Timing::DEFAULT;
        assert_eq!(t.full_syn_rate(), 30.0);
        assert!(!t.paces_gossip(40) && t.paces_gossip(41));
        for n in [1, 5, 20, 40] {
            assert_eq!(t.syn_rate(n), 30.0);
            assert_eq!(
                t.paced_failure_detection_bound(n),
                t.failure_detection_bound()
            );
        }
    }

    #[test]
    fn syn_rate_falls_with_members_to_a_floor() {
        let t = Timing::DEFAULT;
        assert_eq!(t.syn_rate(100), 12.0);
        assert_eq!(t.syn_rate(400), 3.0);
        assert_eq!(t.syn_rate(1000), 3.0);
        let mut prev = f64::MAX;
        for n in 1..2000 {
            let r = t.syn_rate(n);
            assert!(r <= prev && r >= 3.0, "{n}: {r}");
            prev = r;
        }
        // Digest entries sent per second stay bounded between the knee and the floor.
        for n in 41..400 {
            assert!(t.syn_rate(n) * n as f64 <= 30.0 * 40.0 + 1e-9, "{n}");
        }
        assert_eq!(t.paced_failure_detection_bound(100), Duration::from_secs(2));
        assert_eq!(
            t.paced_failure_detection_bound(1000),
            Duration::from_secs(8)
        );
        // A stretched round stretches the pacing with it.
        let slow = Timing {
            gossip_interval: t.gossip_interval * 10,
            ..t
        };
        assert!((slow.syn_rate(1000) - 0.3).abs() < 1e-9);
    }

    #[test]
    fn pacer_holds_the_rate_and_its_burst() {
        let mut p = SynPacer::default();
        let rate = 6.0;
        let mut sent = 0;
        // chitchat: 3 SYNs every 100 ms for 10 s.
        for round in 0..100u64 {
            let now = Time::from_millis(1_000 + round * 100);
            for _ in 0..3 {
                sent += u32::from(p.admit(now, rate));
            }
        }
        // One round's burst at the start, then 6 a second.
        assert!((60..=63).contains(&sent), "{sent}");
        let mut full = SynPacer::default();
        let all: u32 = (0..10u64)
            .flat_map(|r| [r; 3])
            .map(|r| u32::from(full.admit(Time::from_millis(r * 100), 30.0)))
            .sum();
        assert_eq!(all, 30, "at the full rate nothing is left out");
    }

    #[test]
    fn credit_lets_the_next_syn_go() {
        let mut p = SynPacer::default();
        let now = Time::from_millis(5_000);
        while p.admit(now, 2.0) {}
        assert!(!p.admit(now, 2.0));
        p.credit();
        assert!(p.admit(now, 2.0));
        assert!(!p.admit(now, 2.0));
    }

    #[test]
    fn holder_lets_go_before_any_voter_could_grant_again() {
        for t in [Timing::DEFAULT, Timing::FAST] {
            let rho = MAX_DRIFT_PPM as f64 / 1e6;
            let holder_real_max = t.holder_lease().as_secs_f64() / (1.0 - rho);
            let voter_real_min = t.lease.as_secs_f64() / (1.0 + rho);
            assert!(holder_real_max < voter_real_min, "{t:?}");
            // Several renewals fit in the holder's lease, so one lost datagram
            // does not cost the VIP.
            assert!(t.holder_lease() >= t.renew_every * 3, "{t:?}");
        }
    }

    #[test]
    fn fast_is_faster() {
        assert!(Timing::FAST.lease < Timing::DEFAULT.lease);
        assert_eq!(Profile::Fast.timing(), Timing::FAST);
        assert!(Timing::DEFAULT.failure_detection_bound() <= Duration::from_secs(1));
    }
}
