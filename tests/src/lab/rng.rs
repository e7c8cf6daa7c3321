//! splitmix64: the fault schedules of `bench` and `soak`, reproducible from
//! a seed.

use std::time::Duration;

pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, d)` (zero for a zero `d`), in microseconds.
    pub(crate) fn below(&mut self, d: Duration) -> Duration {
        let us = d.as_micros() as u64;
        if us == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(self.next() % us)
    }

    /// Uniform in `[a, b)` seconds.
    pub(crate) fn secs(&mut self, a: f64, b: f64) -> f64 {
        a + (self.next() >> 11) as f64 / (1u64 << 53) as f64 * (b - a)
    }

    /// Uniform in `0..n`.
    pub(crate) fn pick(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproducible_and_bounded() {
        let (mut a, mut b) = (Rng(7), Rng(7));
        for _ in 0..1000 {
            let x = a.below(Duration::from_millis(250));
            assert_eq!(x, b.below(Duration::from_millis(250)));
            assert!(x < Duration::from_millis(250));
            let s = a.secs(10.0, 30.0);
            assert_eq!(s, b.secs(10.0, 30.0));
            assert!((10.0..30.0).contains(&s), "{s}");
            assert!(a.pick(6) < 6);
            b.pick(6);
        }
        assert_eq!(a.below(Duration::ZERO), Duration::ZERO);
    }
}
