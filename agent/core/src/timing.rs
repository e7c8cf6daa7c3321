//! Timing profiles (`timing = "default" | "fast"` in the config).
//!
//! One place for every period the agent runs on, so the safety margins of the
//! lease protocol (docs/PROTOCOL.md) and the failure-detection bound of the
//! membership layer (docs/operations.md) are derived from the same numbers.

use std::time::Duration;

use serde::{Deserialize, Serialize};

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

#[cfg(test)]
mod tests {
    use super::*;

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
