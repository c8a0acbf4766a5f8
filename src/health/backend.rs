//! One backend's candidacy: whether it may take requests now, and why not.
//!
//! Everything that decides it lives here: the file's `down`, the active checks' verdict
//! (published by the check task from the rise/fall machine), passive health (failures of real
//! requests), and the slow-start ramp of a backend that came back. The pool and its balancers
//! only read it. Runtime admin states (drain, disable: set through the admin API) belong here
//! too, beside `down`, so that every reader sees them through [`BackendHealth::is_candidate`].
//!
//! It sits in an `Arc` keyed by pool and address: a reload that keeps the address keeps it,
//! rise/fall progress included, and restarted check tasks go on where the last ones stopped.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;

use crate::config::PassiveHealth;
use crate::metrics::BackendMetrics;

use super::passive::{Passive, PassiveState};
use super::slow_start::SlowStart;
use super::state::HealthMachine;

#[derive(Debug, Default)]
pub struct BackendHealth {
    /// Failed its active checks (healthy by default).
    unhealthy: AtomicBool,
    passive: PassiveState,
    /// When the candidacy last changed (Unix seconds; 0: never).
    state_since: AtomicU64,
    /// The last check's result: 0 none yet, 1 passed, 2 failed.
    last_check: AtomicU8,
    /// Where the backend is in its slow-start ramp, if in one.
    pub slow_start: SlowStart,
    /// The active checks' rise/fall progress; `None` while the pool has no checks.
    pub(super) machine: Mutex<Option<HealthMachine>>,
}

impl BackendHealth {
    /// May take requests now: not `down` in the file, and healthy. `metrics` are the
    /// backend's, where a change this call notices is published.
    pub fn is_candidate(&self, down: bool, metrics: &BackendMetrics) -> bool {
        !down && self.is_healthy(metrics)
    }

    /// Neither failing its active checks nor left out by passive health. Called for every
    /// candidate of every pick; the call that sees a passive time out over publishes that,
    /// and starts the backend's slow-start ramp.
    pub fn is_healthy(&self, metrics: &BackendMetrics) -> bool {
        if self.unhealthy.load(Ordering::Acquire) {
            return false;
        }
        match self.passive.check() {
            Passive::In => true,
            Passive::Out => false,
            Passive::Returned => {
                self.slow_start.begin();
                self.publish(true, metrics);
                true
            }
        }
    }

    /// The active checks' verdict: published when it changes the backend's candidacy.
    pub(crate) fn set_verdict(&self, healthy: bool, metrics: &BackendMetrics) {
        let was_unhealthy = self.unhealthy.swap(!healthy, Ordering::AcqRel);
        let passive_out = if healthy && was_unhealthy {
            // Passing its checks (a rise) brings a backend back whatever passive health said.
            self.passive.clear()
        } else {
            self.passive.is_out()
        };
        let was_in = !was_unhealthy && !passive_out;
        let is_in = healthy && (was_unhealthy || !passive_out);
        if was_in != is_in {
            self.publish(is_in, metrics);
        }
    }

    /// A request to it failed (connect, timeout, reset, or a `fail_on_status`). True when
    /// that took it out for `fail_timeout`; a backend already out by its checks does not
    /// leave the rotation again.
    pub fn passive_failure(&self, passive: &PassiveHealth, metrics: &BackendMetrics) -> bool {
        let out = self.passive.failure(passive);
        if out && !self.unhealthy.load(Ordering::Acquire) {
            self.publish(false, metrics);
        }
        out
    }

    /// A request to it succeeded: its passive failure count starts over.
    pub fn passive_success(&self) {
        self.passive.success();
    }

    /// It entered or left the rotation: one state change in the metrics, the `up` gauge, and
    /// the time on `/status`. Never called for a backend the file marks `down`: those have
    /// no checks and take no requests.
    fn publish(&self, in_rotation: bool, metrics: &BackendMetrics) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.state_since.store(now, Ordering::Relaxed);
        metrics.state_change(in_rotation);
        metrics.up.set(if in_rotation { 1.0 } else { 0.0 });
    }

    /// When the candidacy last changed, in Unix seconds, if it ever did.
    pub fn state_since(&self) -> Option<u64> {
        Some(self.state_since.load(Ordering::Relaxed)).filter(|&s| s > 0)
    }

    /// The last active check's result, if one ran.
    pub fn last_check(&self) -> Option<bool> {
        match self.last_check.load(Ordering::Relaxed) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }

    pub(super) fn record_check(&self, passed: bool) {
        self.last_check
            .store(if passed { 1 } else { 2 }, Ordering::Relaxed);
    }
}
