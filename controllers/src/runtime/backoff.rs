//! Retry delays: exponential backoff with a cap, and jitter that spreads many objects out.

use std::time::Duration;

/// Exponential backoff after `failures` consecutive failures: `base`, doubling, capped at `cap`.
pub fn backoff(failures: u32, base: Duration, cap: Duration) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
    base.saturating_mul(factor).min(cap)
}

/// `period` stretched by `fraction` (0 to 1) of up to a tenth, so that many objects spread out.
pub fn with_jitter(period: Duration, fraction: f64) -> Duration {
    period + period.mul_f64(fraction.clamp(0.0, 1.0) / 10.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let base = Duration::from_secs(5);
        let cap = Duration::from_secs(300);
        assert_eq!(backoff(1, base, cap), Duration::from_secs(5));
        assert_eq!(backoff(2, base, cap), Duration::from_secs(10));
        assert_eq!(backoff(4, base, cap), Duration::from_secs(40));
        assert_eq!(backoff(50, base, cap), cap);
    }

    proptest! {
        #[test]
        fn jitter_stays_within_a_tenth(secs in 1u64..100_000, fraction in 0.0f64..=1.0) {
            let period = Duration::from_secs(secs);
            let jittered = with_jitter(period, fraction);
            prop_assert!(jittered >= period);
            prop_assert!(jittered <= period + period / 10 + Duration::from_nanos(1));
        }

        #[test]
        fn backoff_is_monotonic_and_bounded(failures in 0u32..100) {
            let base = Duration::from_secs(1);
            let cap = Duration::from_secs(600);
            prop_assert!(backoff(failures, base, cap) <= cap);
            prop_assert!(backoff(failures, base, cap) <= backoff(failures + 1, base, cap));
        }
    }
}
