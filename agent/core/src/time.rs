//! Time as an input.
//!
//! The core never reads a clock. Every state machine takes `now: Time`, a
//! reading of the node's own monotonic clock (the agent uses CLOCK_BOOTTIME so
//! that a suspended VM does not stop the clock). Readings of different nodes
//! are not comparable: clocks start at different points and run at slightly
//! different rates (see `timing::MAX_DRIFT_PPM`).

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

/// A reading of one node's local monotonic clock, in microseconds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(u64);

impl Time {
    pub const ZERO: Time = Time(0);

    pub const fn from_micros(us: u64) -> Time {
        Time(us)
    }

    pub const fn from_millis(ms: u64) -> Time {
        Time(ms * 1000)
    }

    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// `self - earlier`, or zero when `earlier` is later.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }

    pub fn checked_sub(self, d: Duration) -> Option<Time> {
        self.0.checked_sub(micros(d)).map(Time)
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time(self.0.saturating_add(micros(d)))
    }
}

impl Sub<Duration> for Time {
    type Output = Time;
    fn sub(self, d: Duration) -> Time {
        Time(self.0.saturating_sub(micros(d)))
    }
}

impl fmt::Debug for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}s", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Time::from_millis(5);
        assert_eq!(t - Duration::from_millis(10), Time::ZERO);
        assert_eq!(t.saturating_since(Time::from_millis(9)), Duration::ZERO);
        assert_eq!((t + Duration::from_micros(1)).as_micros(), 5001);
        assert_eq!(format!("{:?}", Time::from_micros(1_500_001)), "1.500001s");
    }
}
