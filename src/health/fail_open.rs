//! The all-unhealthy rule (`all_unhealthy = "fail_open"`, Envoy's panic mode): when every
//! backend of a pool fails its checks, a broken health endpoint must not black-hole a working
//! pool, so requests go to the unhealthy backends anyway; with `"fail_closed"` they get 503.
//!
//! The pool asks this only after its balancer found no healthy backend; each episode is
//! logged and counted once.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::metrics::PoolMetrics;

#[derive(Debug)]
pub struct FailOpen {
    /// Send to unhealthy backends when no healthy one is left (true), or find none (false).
    enabled: bool,
    /// Whether the pool is in a fail-open episode, so it is logged once per episode.
    failing_open: AtomicBool,
}

impl FailOpen {
    pub fn new(enabled: bool) -> Self {
        FailOpen {
            enabled,
            failing_open: AtomicBool::new(false),
        }
    }

    /// A healthy backend was found: an episode, if one was running, is over.
    /// Runs on every pick: inlined, with the rare end of an episode out of line.
    #[inline]
    pub fn healthy_found(&self, pool: &str) {
        if self.failing_open.load(Ordering::Relaxed) {
            self.end_episode(pool);
        }
    }

    #[cold]
    #[inline(never)]
    fn end_episode(&self, pool: &str) {
        if self.failing_open.swap(false, Ordering::Relaxed) {
            tracing::info!(upstream = %pool, "healthy backends again; fail-open ended");
        }
    }

    /// No healthy backend is left. `unhealthy_left` says whether some backend that is not
    /// `down` (and not yet tried) is left out only by its health. True when the request may
    /// go to those anyway.
    pub fn send_anyway(&self, pool: &str, unhealthy_left: bool, metrics: &PoolMetrics) -> bool {
        if !unhealthy_left || !self.enabled {
            return false;
        }
        if !self.failing_open.swap(true, Ordering::Relaxed) {
            tracing::warn!(upstream = %pool, "every backend is unhealthy: sending requests to them anyway (all_unhealthy = \"fail_open\")");
            metrics.fail_open.increment(1);
        }
        true
    }
}
