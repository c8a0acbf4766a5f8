//! One backend's candidacy: whether it may take requests now, and why not.
//!
//! Everything that decides it lives here: the file's `down`, the active checks' verdict
//! (published by the check task from the rise/fall machine), passive health (failures of real
//! requests), the slow-start ramp of a backend that came back, and the operator's admin mode
//! (drain, disable: set through the admin API, `admin.rs`), read beside `down` so that every
//! reader sees it through [`BackendHealth::is_candidate`]. The pool and its balancers only
//! read it.
//!
//! It sits in an `Arc` keyed by pool and address: a reload that keeps the address keeps it,
//! rise/fall progress included, and restarted check tasks go on where the last ones stopped.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;

use crate::config::PassiveHealth;
use crate::metrics::BackendMetrics;

use super::admin::{AdminControl, AdminMode, Override};
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
    /// The operator's runtime overrides: admin mode and weight.
    admin: AdminControl,
}

impl BackendHealth {
    /// May take new requests now: not `down` in the file, active (neither draining nor
    /// disabled), and healthy. `metrics` are the backend's, where a change this call notices
    /// is published.
    pub fn is_candidate(&self, down: bool, metrics: &BackendMetrics) -> bool {
        self.in_service(down) && self.is_healthy(metrics)
    }

    /// May take a request a sticky cookie pins to it: as [`Self::is_candidate`], but a
    /// draining backend still may (HAProxy's `drain`); a disabled one may not.
    pub fn takes_pinned(&self, down: bool, metrics: &BackendMetrics) -> bool {
        !down && self.admin.mode() != AdminMode::Disabled && self.is_healthy(metrics)
    }

    /// Neither `down` in the file nor taken out by the operator, healthy or not: what the
    /// all-unhealthy (fail-open) rule may still send to.
    pub fn in_service(&self, down: bool) -> bool {
        !down && self.admin.mode() == AdminMode::Active
    }

    /// The operator's mode for this backend.
    pub fn admin_mode(&self) -> AdminMode {
        self.admin.mode()
    }

    /// Sets the admin mode (`None`: back to the file's state) and returns the one it replaced.
    /// A backend that comes back to active from draining or disabled begins its slow-start
    /// ramp, as HAProxy's does (the ramp only matters where `slow_start` is configured).
    pub fn set_admin_mode(
        &self,
        mode: Option<AdminMode>,
        by: &str,
        metrics: &BackendMetrics,
    ) -> AdminMode {
        let before = self.admin.set_mode(mode, by);
        self.admin_changed(before, metrics);
        before
    }

    /// Sets the runtime weight (`None`: the file's) and returns the one it replaced. Takes
    /// effect when the pool is next built: the caller rebuilds it.
    pub fn set_weight_override(&self, weight: Option<NonZeroU32>, by: &str) -> Option<NonZeroU32> {
        self.admin.set_weight(weight, by)
    }

    /// Drops every runtime override (mode and weight); returns the mode it had.
    pub fn reset_overrides(&self, metrics: &BackendMetrics) -> AdminMode {
        let before = self.admin.reset();
        self.admin_changed(before, metrics);
        before
    }

    /// The runtime weight, if the operator set one.
    pub fn weight_override(&self) -> Option<NonZeroU32> {
        self.admin.weight()
    }

    /// What the operator overrode, when and by whom; `None` when the file rules.
    pub fn runtime_override(&self) -> Option<Override> {
        self.admin.record()
    }

    fn admin_changed(&self, before: AdminMode, metrics: &BackendMetrics) {
        let now = self.admin.mode();
        metrics.admin_state.set(now.gauge());
        if before != AdminMode::Active && now == AdminMode::Active {
            self.slow_start.begin();
        }
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

    /// Whether the active checks have it out now: what a binary upgrade hands to the new
    /// process, so that a backend known down gets no burst of requests at take-over.
    pub fn failing_checks(&self) -> bool {
        self.unhealthy.load(Ordering::Acquire)
    }

    /// In the new process of a binary upgrade, before any request: the old process's verdict
    /// of the active checks (the checks go on from it, with the pool's rise and fall) and the
    /// operator's override, if it had one. A runtime weight takes effect when the pool is next
    /// built: the caller rebuilds it.
    pub fn carry_over(
        &self,
        failing_checks: bool,
        over: Option<Override>,
        metrics: &BackendMetrics,
    ) {
        if failing_checks {
            // The check task keeps a machine that exists (its thresholds are set there).
            *self.machine.lock() = Some(HealthMachine::new(false, 1, 1));
            self.set_verdict(false, metrics);
        }
        if let Some(over) = over {
            self.admin.restore(over);
            metrics.admin_state.set(self.admin.mode().gauge());
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn enable_after_a_drain_begins_the_slow_start_ramp_and_down_stays_down() {
        let (h, m) = (BackendHealth::default(), BackendMetrics::new("u", "b:1"));
        let ramp = Duration::from_secs(30);
        assert!(h.is_candidate(false, &m));
        h.set_admin_mode(Some(AdminMode::Draining), "a", &m);
        assert!(!h.is_candidate(false, &m));
        assert!(
            h.takes_pinned(false, &m),
            "draining keeps its sticky clients"
        );
        assert_eq!(h.slow_start.share(ramp), None);
        h.set_admin_mode(None, "a", &m);
        assert!(h.is_candidate(false, &m));
        assert_eq!(
            h.slow_start.share(ramp),
            Some(crate::health::SLOW_START_MIN_SHARE)
        );
        // The file's `down` wins over everything the operator does.
        assert!(!h.is_candidate(true, &m) && !h.takes_pinned(true, &m));
        h.set_admin_mode(Some(AdminMode::Disabled), "a", &m);
        assert!(!h.takes_pinned(false, &m));
        assert!(!h.in_service(false));
    }
}
