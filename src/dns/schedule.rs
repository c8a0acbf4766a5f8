//! When a name is asked again: when its records expire (their TTL within sane bounds, or the
//! `[resolver]`'s `valid`), and after a failure with a backoff that starts at 1 s, doubles,
//! and never waits longer than `valid` when that is set. Pure arithmetic, tested on tokio's
//! paused clock.

use std::time::Duration;

/// A TTL below this (0 is common with Consul) is read as this: at most one query a second
/// per name.
pub const TTL_MIN: Duration = Duration::from_secs(1);
/// A TTL above this (a day is common) is read as this, so a moved backend is followed
/// within minutes.
pub const TTL_MAX: Duration = Duration::from_secs(300);
/// The first retry after a failure.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between retries when `valid` is not set.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How long a good answer with records' `ttl` is used before the name is asked again.
pub fn refresh_after(ttl: Duration, valid: Option<Duration>) -> Duration {
    valid.unwrap_or_else(|| ttl.clamp(TTL_MIN, TTL_MAX))
}

/// How long to wait after the `failures`-th failure in a row (1 for the first).
pub fn retry_after(failures: u32, valid: Option<Duration>) -> Duration {
    let doubled = BACKOFF_FIRST.saturating_mul(1 << failures.saturating_sub(1).min(16));
    let cap = valid.map_or(BACKOFF_MAX, |v| v.min(BACKOFF_MAX));
    doubled.min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn ttl_is_clamped_unless_valid_overrides_it() {
        assert_eq!(refresh_after(S(0), None), S(1), "TTL 0: once a second");
        assert_eq!(refresh_after(S(30), None), S(30));
        assert_eq!(refresh_after(S(86_400), None), S(300));
        assert_eq!(refresh_after(S(0), Some(S(1))), S(1), "valid as given");
        assert_eq!(refresh_after(S(30), Some(S(3600))), S(3600));
    }

    #[test]
    fn backoff_doubles_from_one_second_and_stays_within_valid() {
        let waits: Vec<u64> = (1..=8).map(|n| retry_after(n, None).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        let waits: Vec<u64> = (1..=4)
            .map(|n| retry_after(n, Some(S(3))).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 3, 3]);
        assert_eq!(retry_after(u32::MAX, None), BACKOFF_MAX, "no overflow");
    }

    /// The schedule drives a real timer: on the paused clock, retries after 1, 2 and 4 s
    /// land at 1, 3 and 7 s.
    #[tokio::test(start_paused = true)]
    async fn retries_on_the_clock() {
        let start = tokio::time::Instant::now();
        let mut at = Vec::new();
        for failures in 1..=3 {
            tokio::time::sleep(retry_after(failures, None)).await;
            at.push(start.elapsed().as_secs());
        }
        assert_eq!(at, [1, 3, 7]);
    }
}
