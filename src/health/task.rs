//! The check loop: one task per checked backend for the whole process, on its own timer with
//! a little jitter, feeding the rise/fall machine and publishing the backend's verdict.
//!
//! A reload stops every task and starts those of the new snapshot. The rise/fall machine lives
//! in the backend's [`BackendHealth`], which the reload carries over for an unchanged address,
//! so a restarted task goes on where the last one stopped; only the timing starts afresh.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{BackendAddr, HealthCheckConfig};
use crate::metrics::BackendMetrics;
use crate::tls::BackendTls;

use super::backend::BackendHealth;
use super::check::probe;
use super::state::HealthMachine;

/// One backend to check: what the pool knows of it that a check needs.
#[derive(Debug, Clone)]
pub struct CheckTarget {
    pub upstream: Arc<str>,
    pub addr: BackendAddr,
    /// Not `down` in the file: a backend that is gets no checks.
    pub health: Arc<BackendHealth>,
    pub metrics: Arc<BackendMetrics>,
    /// The pool's TLS to its backends; the checks use it too.
    pub tls: Option<Arc<BackendTls>>,
}

/// Starts the checks of one pool's backends (`config`, when the pool has checks); they stop
/// with `stop`. Without checks (a reload removed them), the backends are released from any
/// earlier verdict.
pub fn spawn_checks(
    config: Option<&HealthCheckConfig>,
    targets: Vec<CheckTarget>,
    stop: &CancellationToken,
) {
    let Some(config) = config else {
        for target in targets {
            if target.health.machine.lock().take().is_some() {
                target.health.set_verdict(true, &target.metrics);
            }
        }
        return;
    };
    for target in targets {
        tokio::spawn(check_loop(target, config.clone(), stop.clone()));
    }
}

async fn check_loop(target: CheckTarget, config: HealthCheckConfig, stop: CancellationToken) {
    let CheckTarget {
        upstream,
        addr,
        health,
        metrics,
        tls,
    } = target;
    let healthy = {
        let mut machine = health.machine.lock();
        let machine = machine.get_or_insert_with(|| {
            HealthMachine::new(config.initially_healthy, config.rise, config.fall)
        });
        machine.set_thresholds(config.rise, config.fall);
        machine.healthy()
    };
    health.set_verdict(healthy, &metrics);
    // The first check comes at a random point of the first interval, so a pool's checks spread
    // out instead of all firing together; later ones add up to a tenth of jitter.
    let mut wait = Duration::from_millis(fastrand::u64(..=millis(config.interval)));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let began = tokio::time::Instant::now();
        let result = probe(&addr, &config, tls.as_deref()).await;
        // Checks start every interval (HAProxy's `inter`), however long one took: a backend
        // whose checks time out is judged as fast as one that refuses.
        wait = (config.interval
            + Duration::from_millis(fastrand::u64(..=millis(config.interval) / 10)))
        .saturating_sub(began.elapsed());
        metrics.check(result.is_ok());
        health.record_check(result.is_ok());
        let (change, failed_before) = match health.machine.lock().as_mut() {
            Some(machine) => (machine.observe(result.is_ok()), machine.has_failed()),
            None => (None, false),
        };
        if let Some(healthy) = change {
            health.set_verdict(healthy, &metrics);
            match &result {
                Ok(()) => {
                    // Slow start applies to a backend seen failing, not to one merely assumed
                    // unhealthy at start (`initial = "unhealthy"`) that passes its checks.
                    if failed_before {
                        health.slow_start.begin();
                    }
                    tracing::warn!(upstream = %upstream, backend = %addr, rise = config.rise, "backend is healthy again");
                }
                Err(reason) => {
                    tracing::warn!(upstream = %upstream, backend = %addr, fall = config.fall, reason = %reason, "backend is unhealthy; taken out of rotation");
                }
            }
        } else if let Err(reason) = &result {
            tracing::debug!(upstream = %upstream, backend = %addr, reason = %reason, "health check failed");
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
