//! The runtime state a binary upgrade hands to the new process, beside the sockets: what the
//! file does not say and a fresh start would forget. Read by the new process before its
//! first request (`Server::bind`), so no request sees the file's state instead.
//!
//! - The active checks' verdict of each backend failing them: a backend known down stays out
//!   of rotation at take-over instead of taking a burst of requests until its checks fail
//!   again; the checks go on from there (the rise threshold brings it back). Healthy ones need
//!   no record: a backend is healthy until its checks say otherwise. Passive health (failures
//!   of real requests) is short-lived and starts over.
//! - The operator's overrides set through the admin API (drain, disable, weight), with when
//!   and by whom.
//!
//! Backends are matched by upstream name and address, as a reload matches them; one the new
//! file no longer has is dropped with its state.

use std::num::NonZeroU32;

use crate::health::{AdminMode, Override};
use crate::state::Snapshot;

/// The state of every backend that differs from a fresh start.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct Carried {
    backends: Vec<CarriedBackend>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct CarriedBackend {
    upstream: String,
    /// As `/status` writes it: `ip:port` or `unix:/path`.
    addr: String,
    #[serde(default)]
    failing_checks: bool,
    #[serde(default)]
    admin: Option<CarriedOverride>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct CarriedOverride {
    /// `draining` or `disabled`; none: the file's.
    state: Option<String>,
    weight: Option<NonZeroU32>,
    since_unix: u64,
    by: String,
}

impl Carried {
    /// What `snapshot` (the running one) knows beyond its file.
    pub(super) fn collect(snapshot: &Snapshot) -> Carried {
        let mut backends = Vec::new();
        for (name, pool) in &snapshot.pools {
            for b in pool.backends() {
                let failing_checks = b.health.failing_checks();
                let admin = b.health.runtime_override().map(|o| CarriedOverride {
                    state: o.state.map(|s| s.name().to_string()),
                    weight: o.weight,
                    since_unix: o.since_unix,
                    by: o.by,
                });
                if failing_checks || admin.is_some() {
                    backends.push(CarriedBackend {
                        upstream: name.clone(),
                        addr: b.addr_text.to_string(),
                        failing_checks,
                        admin,
                    });
                }
            }
        }
        Carried { backends }
    }

    /// Sets the carried state on the backends of `snapshot` (not yet serving). True when a
    /// runtime weight was set: the pools must be built again to balance with it.
    pub(super) fn apply(&self, snapshot: &Snapshot) -> bool {
        let mut weights = false;
        for carried in &self.backends {
            let Some(b) = snapshot
                .pools
                .get(&carried.upstream)
                .and_then(|p| p.backends().iter().find(|b| *b.addr_text == *carried.addr))
            else {
                tracing::info!(upstream = %carried.upstream, addr = %carried.addr, "upgrade: backend no longer configured; its runtime state is dropped");
                continue;
            };
            let over = carried.admin.as_ref().map(|o| Override {
                state: match o.state.as_deref() {
                    Some("draining") => Some(AdminMode::Draining),
                    Some("disabled") => Some(AdminMode::Disabled),
                    _ => None,
                },
                weight: o.weight,
                since_unix: o.since_unix,
                by: o.by.clone(),
            });
            weights |= over.as_ref().is_some_and(|o| o.weight.is_some());
            b.health
                .carry_over(carried.failing_checks, over, &b.metrics);
        }
        if !self.backends.is_empty() {
            tracing::info!(
                backends = self.backends.len(),
                "upgrade: runtime state carried over (active-check verdicts, admin overrides)"
            );
        }
        weights
    }
}
