//! The check loop: one task per checked backend for the whole process, on its own timer with
//! a little jitter, feeding the rise/fall machine and publishing the backend's state.
//!
//! A reload stops every task and starts those of the new snapshot. The rise/fall machine lives
//! in the backend's live state, which the reload carries over for an unchanged address, so a
//! restarted task goes on where the last one stopped; only the timing starts afresh.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::HealthCheckConfig;
use crate::upstream::{Backend, BackendTls, Pool};

use super::check::probe;
use super::state::HealthMachine;

/// Starts the checks of every pool that has them; they stop with `stop`. Backends of pools
/// without checks (after a reload removed them) are released from any earlier verdict.
pub fn spawn_checks<'p>(pools: impl IntoIterator<Item = &'p Arc<Pool>>, stop: &CancellationToken) {
    for pool in pools {
        let Some(config) = pool.health_check.clone() else {
            for backend in pool.backends() {
                if backend.live.health.lock().take().is_some() {
                    backend.set_healthy(true);
                }
            }
            continue;
        };
        for backend in pool.backends().iter().filter(|b| !b.down) {
            tokio::spawn(check_loop(
                Arc::clone(&pool.name),
                Arc::clone(backend),
                config.clone(),
                pool.tls.clone(),
                stop.clone(),
            ));
        }
    }
}

async fn check_loop(
    upstream: Arc<str>,
    backend: Arc<Backend>,
    config: HealthCheckConfig,
    tls: Option<Arc<BackendTls>>,
    stop: CancellationToken,
) {
    let healthy = {
        let mut machine = backend.live.health.lock();
        let machine = machine.get_or_insert_with(|| {
            HealthMachine::new(config.initially_healthy, config.rise, config.fall)
        });
        machine.set_thresholds(config.rise, config.fall);
        machine.healthy()
    };
    backend.set_healthy(healthy);
    // The first check comes at a random point of the first interval, so a pool's checks spread
    // out instead of all firing together; later ones add up to a tenth of jitter.
    let mut wait = Duration::from_millis(fastrand::u64(..=millis(config.interval)));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let began = tokio::time::Instant::now();
        let result = probe(backend.addr, &config, tls.as_deref()).await;
        // Checks start every interval (HAProxy's `inter`), however long one took: a backend
        // whose checks time out is judged as fast as one that refuses.
        wait = (config.interval
            + Duration::from_millis(fastrand::u64(..=millis(config.interval) / 10)))
        .saturating_sub(began.elapsed());
        backend.metrics.check(result.is_ok());
        backend.live.record_check(result.is_ok());
        let (change, failed_before) = match backend.live.health.lock().as_mut() {
            Some(machine) => (machine.observe(result.is_ok()), machine.has_failed()),
            None => (None, false),
        };
        if let Some(healthy) = change {
            backend.set_healthy(healthy);
            match &result {
                Ok(()) => {
                    // Slow start applies to a backend seen failing, not to one merely assumed
                    // unhealthy at start (`initial = "unhealthy"`) that passes its checks.
                    if failed_before {
                        backend.live.slow_start.begin();
                    }
                    tracing::warn!(upstream = %upstream, backend = %backend.addr, rise = config.rise, "backend is healthy again");
                }
                Err(reason) => {
                    tracing::warn!(upstream = %upstream, backend = %backend.addr, fall = config.fall, reason = %reason, "backend is unhealthy; taken out of rotation");
                }
            }
        } else if let Err(reason) = &result {
            tracing::debug!(upstream = %upstream, backend = %backend.addr, reason = %reason, "health check failed");
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
