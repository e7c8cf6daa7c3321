//! The node's clocks, read in one place.
//!
//! The decision core runs on [`now`]: CLOCK_BOOTTIME, which is monotonic and,
//! unlike CLOCK_MONOTONIC, keeps counting while the machine is suspended — a
//! suspended VIP holder must not wake up believing its lease is still young.
//! Frames carry the wall clock ([`unix_ms`]) only for the replay window.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kubeha_core::time::Time;
use nix::time::{ClockId, clock_gettime};

pub fn now() -> Time {
    let ts = clock_gettime(ClockId::CLOCK_BOOTTIME)
        .expect("CLOCK_BOOTTIME is always available on Linux");
    Time::from_micros(ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1_000)
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// How long from `now()` until `t` (zero if past).
pub fn until(t: Time) -> Duration {
    t.saturating_since(now())
}
