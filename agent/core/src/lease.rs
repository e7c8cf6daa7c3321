//! The VIP lease (docs/PROTOCOL.md, "VIP lease").
//!
//! Voters grant one holder at a time for `timing.lease` of their own clock;
//! a candidate holds the VIP while a majority of voters' grants are valid by
//! its own, shrunk, reckoning. [`voter::LeaseVoter`] and
//! [`candidate::LeaseCandidate`] are the two halves; [`crate::node::Node`]
//! wires them to messages and effects.

use std::time::Duration;

use crate::time::Time;
use crate::timing::MAX_DRIFT_PPM;

pub mod candidate;
pub mod cloud;
pub mod voter;

pub use candidate::{DropReason as VipDropReason, LeaseCandidate, Wish};
pub use cloud::{Assignment, CloudFault, CloudGuard, CloudStatus, CloudTiming};
pub use voter::LeaseVoter;

/// Votes needed out of `voters`: a strict majority.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// A stable fingerprint of a (sorted) voter list, carried by every request
/// so that nodes whose lists differ never count each other: two different
/// lists need not have intersecting majorities.
pub fn voters_digest(voters: &[String]) -> u64 {
    // FNV-1a: stable across builds and platforms, unlike `DefaultHasher`.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in voters {
        for b in v.as_bytes().iter().chain(std::iter::once(&0u8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// How long after *sending* a request a candidate may count a grant of a
/// voter whose grants last `voter_lease`: the lease shrunk by the worst
/// drift both ways, minus the actuation guard (same rule as
/// [`crate::timing::Timing::holder_lease`], for the voter's lease length).
pub fn holder_validity(voter_lease: Duration, guard: Duration) -> Duration {
    let lease_us = u64::try_from(voter_lease.as_micros()).unwrap_or(u64::MAX / 2);
    let shrunk = u128::from(lease_us) * u128::from(1_000_000 - MAX_DRIFT_PPM)
        / u128::from(1_000_000 + MAX_DRIFT_PPM);
    Duration::from_micros(u64::try_from(shrunk).unwrap_or(u64::MAX)).saturating_sub(guard)
}

/// The last instant before which at least `q` of `deadlines` are still in
/// the future: the `q`-th largest. `None` with fewer than `q` values.
pub fn quorum_deadline(deadlines: impl IntoIterator<Item = Time>, q: usize) -> Option<Time> {
    if q == 0 {
        return None;
    }
    let mut v: Vec<Time> = deadlines.into_iter().collect();
    if v.len() < q {
        return None;
    }
    v.sort_unstable_by(|a, b| b.cmp(a));
    Some(v[q - 1])
}

/// `d` stretched by the worst drift, plus a millisecond: used to wait for
/// something another node measured on its own clock.
pub(crate) fn stretch(d: Duration) -> Duration {
    let us = d.as_micros().min(u128::from(u32::MAX));
    let us = us + us * u128::from(2 * MAX_DRIFT_PPM) / 1_000_000 + 1_000;
    Duration::from_micros(us as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timing::Timing;

    #[test]
    fn majority_math() {
        assert_eq!(quorum(1), 1);
        assert_eq!(quorum(2), 2);
        assert_eq!(quorum(3), 2);
        assert_eq!(quorum(4), 3);
        assert_eq!(quorum(5), 3);
        // Any two majorities intersect.
        for n in 1..10 {
            assert!(2 * quorum(n) > n);
        }
        let t = |ms| Time::from_millis(ms);
        assert_eq!(quorum_deadline([t(5), t(9), t(7)], 2), Some(t(7)));
        assert_eq!(quorum_deadline([t(5), t(9), t(7)], 3), Some(t(5)));
        assert_eq!(quorum_deadline([t(5)], 2), None);
        assert_eq!(
            quorum_deadline([t(5), t(5), t(1), t(9), t(2)], 3),
            Some(t(5))
        );
    }

    #[test]
    fn holder_validity_matches_timing() {
        for t in [Timing::DEFAULT, Timing::FAST] {
            assert_eq!(
                holder_validity(t.lease, t.actuation_guard),
                t.holder_lease()
            );
        }
        assert_eq!(
            holder_validity(Duration::ZERO, Duration::from_millis(5)),
            Duration::ZERO
        );
    }

    #[test]
    fn digest_separates_lists() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            voters_digest(&l(&["a", "b"])),
            voters_digest(&l(&["a", "b"]))
        );
        assert_ne!(voters_digest(&l(&["a", "b"])), voters_digest(&l(&["ab"])));
        assert_ne!(
            voters_digest(&l(&["a", "b"])),
            voters_digest(&l(&["a", "b", "c"]))
        );
    }
}
