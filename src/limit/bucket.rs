//! nginx's leaky bucket, in its own integer arithmetic (ngx_http_limit_req_module.c,
//! `ngx_http_limit_req_lookup` and `ngx_http_limit_req_account`): pure functions, so the exact
//! numbers are tested alone.
//!
//! A key's `excess` is how far its requests are ahead of the rate, in thousandths of a request.
//! Each request computes `excess - rate * ms / 1000 + 1000` (at least 0), where `rate` is in
//! thousandths of a request per second and `ms` the milliseconds since the key's last accounted
//! request. Above `burst * 1000` the request is refused and nothing is stored; otherwise the new
//! excess is stored, and without `nodelay` the request waits `excess * 1000 / rate` ms. A key
//! seen for the first time starts at excess 0: its first request passes at once.

use std::time::Duration;

use crate::config::Rate;

/// One limit's rate arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Bucket {
    /// Thousandths of a request per second (nginx's `ctx->rate`).
    rate: u64,
    /// Thousandths of a request (nginx's `limit->burst`).
    burst: u64,
    nodelay: bool,
}

impl Bucket {
    pub(super) fn new(rate: Rate, burst: u32, nodelay: bool) -> Bucket {
        Bucket {
            // Validation keeps the rate at least 1r/m, which is 16 here.
            rate: rate.milli_per_second().max(1),
            burst: u64::from(burst) * 1000,
            nodelay,
        }
    }

    /// The excess a request would bring a key to, `ms` after its last accounted request.
    /// `(excess + 1000) - leaked`, floored at 0, is nginx's `excess - leaked + 1000` in signed
    /// arithmetic clamped at 0. A saturated product only means that all has leaked.
    pub(super) fn excess(self, stored: u64, ms: u64) -> u64 {
        let leaked = self.rate.saturating_mul(ms) / 1000;
        (stored + 1000).saturating_sub(leaked)
    }

    /// Whether a request at `excess` is beyond the burst.
    pub(super) fn refuses(self, excess: u64) -> bool {
        excess > self.burst
    }

    /// How long a request at `excess` waits (none with `nodelay`).
    pub(super) fn delay(self, excess: u64) -> Duration {
        if self.nodelay {
            return Duration::ZERO;
        }
        Duration::from_millis(excess * 1000 / self.rate)
    }

    /// For a refused request at `excess`: the whole seconds until the key's bucket has leaked
    /// enough for a request to pass (`Retry-After`), at least 1.
    pub(super) fn retry_after(self, excess: u64) -> u64 {
        let over = excess.saturating_sub(self.burst);
        // The first whole millisecond at which `rate * ms / 1000` reaches `over`.
        let ms = (over * 1000).div_ceil(self.rate);
        ms.div_ceil(1000).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(requests: u32, per_minute: bool, burst: u32, nodelay: bool) -> Bucket {
        Bucket::new(
            Rate {
                requests,
                per_minute,
            },
            burst,
            nodelay,
        )
    }

    #[test]
    fn excess_leaks_at_the_rate_and_never_goes_below_zero() {
        let b = bucket(10, false, 5, false);
        assert_eq!(b.excess(0, 0), 1000);
        assert_eq!(b.excess(3000, 0), 4000);
        // 10r/s leaks 10 thousandths per ms: 100 ms leak one request.
        assert_eq!(b.excess(3000, 100), 3000);
        assert_eq!(b.excess(3000, 250), 1500);
        // nginx's signed arithmetic: 500 - 1000 + 1000 is 500, not 1000.
        assert_eq!(b.excess(500, 100), 500);
        assert_eq!(b.excess(500, 10_000), 0);
        assert_eq!(b.excess(500, u64::MAX), 0, "no overflow");
    }

    #[test]
    fn refusal_is_beyond_burst_thousandths() {
        let b = bucket(10, false, 5, false);
        assert!(!b.refuses(5000));
        assert!(b.refuses(5001));
        assert!(bucket(10, false, 0, false).refuses(1000));
        assert!(!bucket(10, false, 0, false).refuses(0));
    }

    #[test]
    fn delays_space_requests_to_the_rate() {
        let b = bucket(10, false, 5, false);
        assert_eq!(b.delay(0), Duration::ZERO);
        assert_eq!(b.delay(1000), Duration::from_millis(100));
        assert_eq!(b.delay(5000), Duration::from_millis(500));
        assert_eq!(
            bucket(10, false, 5, true).delay(5000),
            Duration::ZERO,
            "nodelay"
        );
        // 1r/m is 16 thousandths per second in nginx's integers: 62.5 s, not 60 s.
        assert_eq!(
            bucket(1, true, 5, false).delay(1000),
            Duration::from_millis(62_500)
        );
        assert_eq!(
            bucket(30, true, 5, false).delay(1000),
            Duration::from_millis(2000)
        );
    }

    #[test]
    fn retry_after_is_the_wait_for_one_request_rounded_up() {
        let b = bucket(10, false, 5, false);
        assert_eq!(b.retry_after(6000), 1, "100 ms, rounded up to 1 s");
        let slow = bucket(6, true, 0, false); // 100 thousandths per second
        assert_eq!(slow.retry_after(1000), 10);
        assert_eq!(slow.retry_after(1001), 11);
    }
}
