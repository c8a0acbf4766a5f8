//! Passive health (nginx's `max_fails` within `fail_timeout`): failures of real requests take
//! a backend out for `fail_timeout`, without any check traffic.
//!
//! Lock-free: requests on every thread count failures against one backend at once, and
//! exactly one of those that reach `max_fails` takes it out. Times are milliseconds on a
//! process-wide monotonic clock, so the state fits in atomics.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::PassiveHealth;

/// One backend's failures in the current window, and until when it is left out.
#[derive(Debug, Default)]
pub(super) struct PassiveState {
    fails: AtomicU64,
    /// When the current window began.
    window: AtomicU64,
    /// Until when the backend is left out (0: not out).
    out_until: AtomicU64,
}

/// What [`PassiveState::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Passive {
    In,
    Out,
    /// In, and this call ended a time out.
    Returned,
}

/// Milliseconds on a process-wide monotonic clock (never 0, so 0 can mean "not out").
pub(super) fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    u64::try_from(
        START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
    .saturating_add(1)
}

impl PassiveState {
    /// Whether the backend is left out now, read without the clock unless it actually is.
    pub(super) fn check(&self) -> Passive {
        let until = self.out_until.load(Ordering::Acquire);
        if until == 0 {
            return Passive::In;
        }
        if until > now_ms() {
            return Passive::Out;
        }
        // Its time out is over: clear it, so later picks skip the clock again. Of the callers
        // racing here, one reports the return.
        if self
            .out_until
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            return Passive::Returned;
        }
        Passive::In
    }

    /// Whether the backend is left out now (without clearing an ended time out).
    pub(super) fn is_out(&self) -> bool {
        self.out_until.load(Ordering::Acquire) > now_ms()
    }

    /// Ends a time out at once (its active checks passed); true when one was running.
    pub(super) fn clear(&self) -> bool {
        self.out_until.swap(0, Ordering::AcqRel) > now_ms()
    }

    /// A request to this backend failed. Returns true when that left the backend out for
    /// `fail_timeout`: once per time out, however many requests that were already on their
    /// way to it fail with it.
    pub(super) fn failure(&self, passive: &PassiveHealth) -> bool {
        if passive.max_fails == 0 {
            return false;
        }
        let now = now_ms();
        let window = u64::try_from(passive.fail_timeout.as_millis()).unwrap_or(u64::MAX);
        let out_until = now.saturating_add(window);
        let mut until = self.out_until.load(Ordering::Acquire);
        if until > now {
            // Already out: a request that chose it before then failed too. As in nginx, the
            // time out counts again from this failure, but it is not a new one.
            self.out_until.fetch_max(out_until, Ordering::AcqRel);
            return false;
        }
        let start = self.window.load(Ordering::Acquire);
        if now.saturating_sub(start) > window {
            // A new window: earlier failures are forgotten.
            self.window.store(now, Ordering::Release);
            self.fails.store(0, Ordering::Release);
        }
        let fails = self.fails.fetch_add(1, Ordering::AcqRel) + 1;
        if fails < u64::from(passive.max_fails) {
            return false;
        }
        self.fails.store(0, Ordering::Release);
        // Of failures racing to this point, one takes the backend out and reports it.
        loop {
            match self.out_until.compare_exchange(
                until,
                out_until,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                // Another failure took it out meanwhile.
                Err(actual) if actual > now => return false,
                // A time out that ended was cleared meanwhile: try again from what is there.
                Err(actual) => until = actual,
            }
        }
    }

    /// A request succeeded: the failure count starts over (nginx does the same).
    pub(super) fn success(&self) {
        if self.fails.load(Ordering::Relaxed) > 0 {
            self.fails.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn passive(max_fails: u32) -> PassiveHealth {
        PassiveHealth {
            max_fails,
            fail_timeout: Duration::from_secs(30),
            fail_on_status: Vec::new(),
        }
    }

    #[test]
    fn a_backend_goes_out_once_however_many_requests_fail_with_it() {
        let s = PassiveState::default();
        let p = passive(2);
        assert!(!s.failure(&p));
        assert!(s.failure(&p), "the second failure takes it out");
        assert_eq!(s.check(), Passive::Out);
        // Requests that chose it before it went out fail too: no second time out.
        for _ in 0..10 {
            assert!(!s.failure(&p));
        }
        assert_eq!(s.check(), Passive::Out);
    }

    #[test]
    fn max_fails_zero_never_takes_a_backend_out() {
        let s = PassiveState::default();
        for _ in 0..10 {
            assert!(!s.failure(&passive(0)));
        }
        assert_eq!(s.check(), Passive::In);
    }

    #[test]
    fn a_success_between_failures_starts_the_count_over() {
        let s = PassiveState::default();
        let p = passive(2);
        assert!(!s.failure(&p));
        s.success();
        assert!(!s.failure(&p), "one failure since the success");
        assert!(s.failure(&p));
    }

    #[test]
    fn a_time_out_that_is_over_returns_the_backend_once() {
        let s = PassiveState::default();
        let p = PassiveHealth {
            max_fails: 1,
            fail_timeout: Duration::ZERO,
            fail_on_status: Vec::new(),
        };
        assert!(s.failure(&p));
        // A zero time out is over at once (the clock is in milliseconds: wait for the next).
        let start = now_ms();
        while now_ms() <= start {
            std::hint::spin_loop();
        }
        assert_eq!(s.check(), Passive::Returned);
        assert_eq!(s.check(), Passive::In, "reported once");
    }
}
