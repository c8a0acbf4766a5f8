//! The check loop: one task per checked backend for the whole process, on its own timer with
//! a little jitter, feeding the rise/fall machine and publishing the backend's state.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::HealthCheckConfig;
use crate::upstream::{Backend, Pool};

use super::check::probe;
use super::state::HealthMachine;

/// Starts the checks of every pool that has them; they stop with `stop`.
pub fn spawn_checks<'p>(pools: impl IntoIterator<Item = &'p Arc<Pool>>, stop: &CancellationToken) {
    for pool in pools {
        let Some(config) = pool.health_check.clone() else {
            continue;
        };
        for backend in pool.backends().iter().filter(|b| !b.down) {
            tokio::spawn(check_loop(
                Arc::clone(&pool.name),
                Arc::clone(backend),
                config.clone(),
                stop.clone(),
            ));
        }
    }
}

async fn check_loop(
    upstream: Arc<str>,
    backend: Arc<Backend>,
    config: HealthCheckConfig,
    stop: CancellationToken,
) {
    let mut machine = HealthMachine::new(config.initially_healthy, config.rise, config.fall);
    backend.set_healthy(machine.healthy());
    // The first check comes at a random point of the first interval, so a pool's checks spread
    // out instead of all firing together; later ones add up to a tenth of jitter.
    let mut wait = Duration::from_millis(fastrand::u64(..=millis(config.interval)));
    // Slow start applies to a backend seen failing, not to one merely assumed unhealthy at
    // start (`initial = "unhealthy"`) that passes its first checks.
    let mut failed_before = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let began = tokio::time::Instant::now();
        let result = probe(backend.addr, &config).await;
        // Checks start every interval (HAProxy's `inter`), however long one took: a backend
        // whose checks time out is judged as fast as one that refuses.
        wait = (config.interval
            + Duration::from_millis(fastrand::u64(..=millis(config.interval) / 10)))
        .saturating_sub(began.elapsed());
        backend.metrics.check(result.is_ok());
        backend.live.record_check(result.is_ok());
        failed_before |= result.is_err();
        if let Some(healthy) = machine.observe(result.is_ok()) {
            backend.set_healthy(healthy);
            match &result {
                Ok(()) => {
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
