//! `GET /status`: every listener and upstream, and per backend its settings, state and live
//! numbers, as JSON, the operator's admin state and override included. The HTML status page
//! (`page.html`) is built from the same document.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::state::Snapshot;

use super::history::{History, HistoryView};
use super::view::{self, OverrideView};

#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub started_unix: u64,
    pub uptime_seconds: f64,
    pub listeners: Vec<ListenerStatus>,
    pub upstreams: Vec<UpstreamStatus>,
}

#[derive(Debug, Serialize)]
pub struct ListenerStatus {
    pub name: String,
    /// `http`, `https` or `tcp`.
    pub protocol: &'static str,
    pub addresses: Vec<String>,
    pub upstream: String,
    pub connections_open: usize,
    pub max_connections: usize,
}

#[derive(Debug, Serialize)]
pub struct UpstreamStatus {
    pub name: String,
    pub balance: &'static str,
    /// Requests waiting for a backend under its `max_conns`; `null` without `[queue]`.
    pub queue: Option<QueueStatus>,
    pub backends: Vec<BackendStatus>,
    /// Its `resolve = true` servers and whether their names have addresses now.
    pub resolve: Vec<ResolveStatus>,
}

/// A `resolve = true` server of an upstream.
#[derive(Debug, Serialize)]
pub struct ResolveStatus {
    /// The server as written (`app.test:80`, or the SRV name).
    pub server: String,
    /// `resolved`, or `unresolved` (no address: its name is unknown or the DNS server has not
    /// answered yet; it is retried).
    pub state: &'static str,
    /// Addresses its name resolves to now.
    pub addresses: usize,
    /// Why it is unresolved; `null` when resolved.
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct QueueStatus {
    pub length: usize,
    pub size: u32,
    pub timeout_ms: u128,
}

#[derive(Debug, Serialize)]
pub struct BackendStatus {
    /// The resolved address requests go to.
    pub address: String,
    /// The server as written in the configuration.
    pub server: String,
    /// The file's weight.
    pub weight: u32,
    /// The weight it is balanced with: a runtime weight (admin API) when one is set.
    pub effective_weight: u32,
    pub backup: bool,
    pub down: bool,
    /// `up`, `unhealthy` (failing its checks) or `down` (in the configuration).
    pub state: &'static str,
    /// The operator's admin state: `active`, `draining` or `disabled`.
    pub admin_state: &'static str,
    /// What the operator changed at run time (state, weight), when and by whom; `null` when
    /// the file rules.
    #[serde(rename = "override")]
    pub runtime_override: Option<OverrideView>,
    /// When the backend entered its state (Unix seconds).
    pub since_unix: u64,
    /// The last active check: `pass`, `fail`, or `null` (none configured or none yet).
    pub last_check: Option<&'static str>,
    /// In a slow-start ramp: the share of its normal traffic it gets now (0 to 1); `null`
    /// when not ramping.
    pub slow_start_share: Option<f64>,
    pub in_flight: u64,
    /// Its `max_conns` (`null`: no limit).
    pub max_conns: Option<u32>,
    pub requests: u64,
    pub errors: u64,
    /// Time to response head over the last minute, approximate (`null` without requests).
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// Requests and errors per 5-second interval over the last 5 minutes, oldest first, for
    /// the status page's sparklines.
    pub history: HistoryView,
}

pub(super) fn build(snapshot: &Snapshot, started: SystemTime, history: &History) -> Status {
    let started_unix = started
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut listeners: Vec<ListenerStatus> = snapshot
        .listeners
        .values()
        .map(|l| ListenerStatus {
            name: l.name.to_string(),
            protocol: if l.settings.tcp.is_some() {
                "tcp"
            } else if l.tls.is_some() {
                "https"
            } else {
                "http"
            },
            addresses: l.addresses.iter().map(ToString::to_string).collect(),
            upstream: l.settings.upstream.clone().unwrap_or_default(),
            connections_open: l.connections.open(),
            max_connections: l.connections.limit(),
        })
        .collect();
    listeners.sort_by(|a, b| a.name.cmp(&b.name));
    let mut upstreams: Vec<UpstreamStatus> = snapshot
        .pools
        .values()
        .map(|pool| UpstreamStatus {
            name: pool.name.to_string(),
            balance: snapshot
                .config
                .upstreams
                .get(&*pool.name)
                .map_or("round_robin", |u| u.balance.name()),
            queue: pool.queue.map(|q| QueueStatus {
                length: pool.queued(),
                size: q.size.get(),
                timeout_ms: q.timeout.as_millis(),
            }),
            backends: pool
                .backends()
                .iter()
                .map(|b| {
                    let latency = b.live.latency.percentiles();
                    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
                    BackendStatus {
                        address: b.addr.to_string(),
                        server: b.written.clone(),
                        weight: b.configured_weight,
                        effective_weight: b.weight,
                        backup: b.backup,
                        down: b.down,
                        state: view::health(b),
                        admin_state: b.health.admin_mode().name(),
                        runtime_override: b.health.runtime_override().map(OverrideView::of),
                        since_unix: b.health.state_since().unwrap_or(started_unix),
                        last_check: b
                            .health
                            .last_check()
                            .map(|ok| if ok { "pass" } else { "fail" }),
                        slow_start_share: pool
                            .slow_start
                            .and_then(|ramp| b.health.slow_start.share(ramp)),
                        in_flight: b.live.in_flight(),
                        max_conns: b.max_conns.map(std::num::NonZeroU32::get),
                        requests: b.live.requests(),
                        errors: b.live.failures(),
                        latency_p50_ms: latency.map(|l| ms(l.0)),
                        latency_p99_ms: latency.map(|l| ms(l.1)),
                        history: history.view(&pool.name, &b.addr),
                    }
                })
                .collect(),
            resolve: resolve_status(snapshot, &pool.name),
        })
        .collect();
    upstreams.sort_by(|a, b| a.name.cmp(&b.name));
    Status {
        version: env!("CARGO_PKG_VERSION"),
        started_unix,
        uptime_seconds: started.elapsed().map_or(0.0, |d| d.as_secs_f64()),
        listeners,
        upstreams,
    }
}

/// The `resolve = true` servers of upstream `name`, from the answers the snapshot was built
/// with (a change of addresses always rebuilds it).
fn resolve_status(snapshot: &Snapshot, name: &str) -> Vec<ResolveStatus> {
    let Some(upstream) = snapshot.config.upstreams.get(name) else {
        return Vec::new();
    };
    upstream
        .servers
        .iter()
        .filter(|s| s.resolve)
        .map(|s| {
            let answer = crate::dns::Query::of(&s.addr).and_then(|q| snapshot.dns.get(&q));
            let addresses = answer
                .and_then(|a| a.records.as_ref())
                .map_or(0, crate::dns::Records::len);
            ResolveStatus {
                server: s.addr.to_string(),
                state: if addresses > 0 {
                    "resolved"
                } else {
                    "unresolved"
                },
                addresses,
                error: (addresses == 0).then(|| {
                    answer
                        .and_then(|a| a.error.clone())
                        .unwrap_or_else(|| "no records".into())
                }),
            }
        })
        .collect()
}
