//! Slow start: a backend that comes back after failing receives a growing share of requests
//! instead of its full share at once, so a process that just restarted (cold caches, a JIT not
//! yet warm, connection pools still empty) is not flattened the moment it returns.
//!
//! Consulted by the pool after its balancer picked a backend. A backend in its ramp keeps the
//! pick with probability `share` and otherwise gives the request to the next pick, so its share
//! of requests grows linearly from `MIN_SHARE` of its normal share to all of it over
//! `slow_start`. That works the same over every non-hashing policy and keeps the balancers
//! pure. The ramp begins when active checks bring a backend back after it failed, or when its
//! passive-health time out ends; never at process start (HAProxy's rule, which keeps a restart
//! of rproxy itself from starving every backend).

use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The share a backend starts its ramp with: HAProxy's first step (1/16 of the weight).
pub const MIN_SHARE: f64 = 1.0 / 16.0;

/// Where one backend is in its ramp. Part of the backend's live state, kept across reloads.
#[derive(Debug, Default)]
pub struct SlowStart {
    /// Set while a ramp may be running, so the common case (no ramp) costs one load.
    ramping: AtomicBool,
    since: Mutex<Option<Instant>>,
}

impl SlowStart {
    /// The backend came back now: its ramp starts over.
    pub fn begin(&self) {
        *self.since.lock() = Some(Instant::now());
        self.ramping.store(true, Ordering::Release);
    }

    /// The backend's share of its normal traffic for a ramp of `ramp`: `None` when it is not
    /// ramping (its full share), else a fraction in `[MIN_SHARE, 1)`.
    pub fn share(&self, ramp: Duration) -> Option<f64> {
        if !self.ramping.load(Ordering::Acquire) {
            return None;
        }
        let mut since = self.since.lock();
        let share = since.map(|s| ramp_share(s.elapsed(), ramp));
        match share {
            Some(s) if s < 1.0 => Some(s),
            _ => {
                // The ramp is over: later picks skip the lock.
                *since = None;
                self.ramping.store(false, Ordering::Release);
                None
            }
        }
    }
}

/// Linear ramp: `elapsed / ramp`, at least `MIN_SHARE`, reaching 1 at the end.
pub fn ramp_share(elapsed: Duration, ramp: Duration) -> f64 {
    if elapsed >= ramp || ramp.is_zero() {
        return 1.0;
    }
    (elapsed.as_secs_f64() / ramp.as_secs_f64()).max(MIN_SHARE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ramp_is_linear_from_a_small_share() {
        let ramp = Duration::from_secs(30);
        assert_eq!(ramp_share(Duration::ZERO, ramp), MIN_SHARE);
        assert_eq!(ramp_share(Duration::from_secs(1), ramp), MIN_SHARE);
        assert!((ramp_share(Duration::from_secs(15), ramp) - 0.5).abs() < 1e-9);
        assert!((ramp_share(Duration::from_secs(27), ramp) - 0.9).abs() < 1e-9);
        assert_eq!(ramp_share(ramp, ramp), 1.0);
        assert_eq!(ramp_share(Duration::from_secs(3600), ramp), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_ramp_follows_the_clock_and_ends() {
        let ramp = Duration::from_secs(30);
        let s = SlowStart::default();
        assert_eq!(s.share(ramp), None, "no ramp before a comeback");
        s.begin();
        assert_eq!(s.share(ramp), Some(MIN_SHARE));
        tokio::time::advance(Duration::from_secs(10)).await;
        let third = s.share(ramp).expect("ramping");
        assert!((third - 1.0 / 3.0).abs() < 1e-6, "{third}");
        tokio::time::advance(Duration::from_secs(15)).await;
        let most = s.share(ramp).expect("ramping");
        assert!((most - 25.0 / 30.0).abs() < 1e-6, "{most}");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(s.share(ramp), None, "full share once the ramp is over");
        assert!(!s.ramping.load(Ordering::Relaxed));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_comeback_restarts_the_ramp() {
        let ramp = Duration::from_secs(10);
        let s = SlowStart::default();
        s.begin();
        tokio::time::advance(Duration::from_secs(8)).await;
        assert!(s.share(ramp).expect("ramping") > 0.7);
        s.begin();
        assert_eq!(s.share(ramp), Some(MIN_SHARE));
    }
}
