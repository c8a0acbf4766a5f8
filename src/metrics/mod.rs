//! Metrics, at the side of the request path: every name rproxy records, its help text and
//! buckets, the Prometheus recorder, and the handles requests record through.
//!
//! Names carry their unit and `_total` suffix explicitly so they do not change with whatever
//! renders them. Labels are bounded: listener, upstream, backend address as written,
//! status class, error kind. Handles are resolved once per listener and per backend when the
//! runtime snapshot is built, so recording a request costs atomic adds, no label allocation.
//! `admin.rs` serves the rendered text on the admin listener. A reload that removes a
//! listener, upstream or backend removes its series from the recorder (`forget_unconfigured`;
//! `recorder.rs` says why the recorder is rproxy's own).
//!
//! Ground floor: imports only `config`; every room records through it.

mod handles;
mod process;
mod recorder;

use std::sync::OnceLock;

pub use handles::{
    BackendMetrics, ErrorKind, ListenerMetrics, PoolMetrics, QueueMetrics, QueueRejection,
    RetryRefusal,
};
pub use process::render_process_metrics;
pub use recorder::{Configured, Recorder};

pub const HTTP_REQUESTS_TOTAL: &str = "rproxy_http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "rproxy_http_request_duration_seconds";
pub const UPSTREAM_REQUESTS_TOTAL: &str = "rproxy_upstream_requests_total";
pub const UPSTREAM_RESPONSE_SECONDS: &str = "rproxy_upstream_response_seconds";
pub const UPSTREAM_ERRORS_TOTAL: &str = "rproxy_upstream_errors_total";
pub const UPSTREAM_RETRIES_TOTAL: &str = "rproxy_upstream_retries_total";
pub const BACKEND_IN_FLIGHT: &str = "rproxy_backend_in_flight";
pub const BACKEND_UP: &str = "rproxy_backend_up";
pub const CONNECTIONS_OPEN: &str = "rproxy_connections_open";
pub const CONNECTIONS_TOTAL: &str = "rproxy_connections_total";
pub const IDLE_PARKED_CONNECTIONS: &str = "rproxy_idle_parked_connections";
pub const BUILD_INFO: &str = "rproxy_build_info";
pub const HEALTH_CHECKS_TOTAL: &str = "rproxy_health_checks_total";
pub const BACKEND_STATE_CHANGES_TOTAL: &str = "rproxy_backend_state_changes_total";
pub const UPSTREAM_FAIL_OPEN_TOTAL: &str = "rproxy_upstream_fail_open_total";
pub const UPSTREAM_RETRIES_REFUSED_TOTAL: &str = "rproxy_upstream_retries_refused_total";
pub const UPSTREAM_QUEUE_LENGTH: &str = "rproxy_upstream_queue_length";
pub const UPSTREAM_QUEUE_WAIT_SECONDS: &str = "rproxy_upstream_queue_wait_seconds";
pub const UPSTREAM_QUEUE_REJECTIONS_TOTAL: &str = "rproxy_upstream_queue_rejections_total";
pub const CONFIG_RELOADS_TOTAL: &str = "rproxy_config_reloads_total";
pub const TCP_CONNECTIONS_TOTAL: &str = "rproxy_tcp_connections_total";
pub const TCP_CONNECTIONS_OPEN: &str = "rproxy_tcp_connections_open";
pub const TCP_BYTES_TOTAL: &str = "rproxy_tcp_bytes_total";
pub const BACKEND_ADMIN_STATE: &str = "rproxy_backend_admin_state";
pub const ADMIN_ACTIONS_TOTAL: &str = "rproxy_admin_actions_total";
pub const CONFIG_LAST_RELOAD_SUCCESSFUL: &str = "rproxy_config_last_reload_successful";
pub const CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP: &str =
    "rproxy_config_last_reload_success_timestamp_seconds";
pub const ACCESS_LOG_LINES_LOST_TOTAL: &str = "rproxy_access_log_lines_lost_total";
pub const DNS_QUERIES_TOTAL: &str = "rproxy_dns_queries_total";
pub const LIMIT_REQUESTS_TOTAL: &str = "rproxy_limit_requests_total";
pub const LIMIT_CONNS_REFUSED_TOTAL: &str = "rproxy_limit_conns_refused_total";
pub const LIMIT_KEYS: &str = "rproxy_limit_keys";
pub const UPGRADES_TOTAL: &str = "rproxy_upgrades_total";

/// Histogram buckets for every `_seconds` metric: from 0.5 ms (a fast local backend) to 30 s
/// (beyond which a response timeout usually ends the request).
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Set once the recorder is installed. Without it every handle records nowhere, so what
/// only feeds a metric (a request's duration: two clock reads) need not be measured.
static RECORDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether metrics are recorded (`install` ran).
pub fn recording() -> bool {
    RECORDING.load(std::sync::atomic::Ordering::Relaxed)
}

/// The recorder `install` installed, for `forget_unconfigured`.
static INSTALLED: OnceLock<Recorder> = OnceLock::new();

/// Installs the process-wide Prometheus recorder. Call once, before any metric is recorded
/// (handles made earlier record nowhere).
pub fn install() -> Result<Recorder, metrics::SetRecorderError<Recorder>> {
    let recorder = Recorder::new(SECONDS_BUCKETS);
    metrics::set_global_recorder(recorder.clone())?;
    // Only the first call gets past `set_global_recorder`: this sets INSTALLED.
    let recorder = INSTALLED.get_or_init(|| recorder).clone();
    RECORDING.store(true, std::sync::atomic::Ordering::Relaxed);
    describe();
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // Every action's series exists from the start, at 0.
    for action in ADMIN_ACTIONS {
        metrics::counter!(ADMIN_ACTIONS_TOTAL, "action" => action).absolute(0);
    }
    Ok(recorder)
}

/// Removes from the installed recorder every series labelled with a listener, upstream or
/// backend that `configured` (the running configuration) does not have, so `/metrics` stops
/// showing it; one added back later starts from zero. The reload calls this after every
/// attempt: a failed one may have registered series for a snapshot it then dropped.
pub fn forget_unconfigured(configured: &Configured<'_>) {
    if let Some(recorder) = INSTALLED.get() {
        recorder.forget_unconfigured(configured);
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "Client requests answered, by listener and status class (heads refused before routing, 400, 414 and 431, included)"
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Time from a request's arrival to the end of its response, by listener"
    );
    describe_counter!(
        UPSTREAM_REQUESTS_TOTAL,
        "Responses received from backends, by upstream, backend and status class"
    );
    describe_histogram!(
        UPSTREAM_RESPONSE_SECONDS,
        metrics::Unit::Seconds,
        "Time from sending a request to a backend to its response head"
    );
    describe_counter!(
        UPSTREAM_ERRORS_TOTAL,
        "Requests to a backend that failed, by kind: connect, timeout, reset, protocol"
    );
    describe_counter!(
        UPSTREAM_RETRIES_TOTAL,
        "Requests sent again to another backend after a failure that made that safe"
    );
    describe_gauge!(
        BACKEND_IN_FLIGHT,
        "Requests sent to a backend and not yet finished"
    );
    describe_gauge!(
        BACKEND_UP,
        "1 while a backend may receive requests, 0 while it is down"
    );
    describe_gauge!(CONNECTIONS_OPEN, "Client connections open, by listener");
    describe_counter!(
        CONNECTIONS_TOTAL,
        "Client connections accepted, by listener"
    );
    describe_gauge!(
        IDLE_PARKED_CONNECTIONS,
        "Idle HTTP/1 client connections parked between requests (hyper's buffers given back), by listener"
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label says which rproxy is running"
    );
    describe_counter!(
        HEALTH_CHECKS_TOTAL,
        "Active health checks, by result: pass or fail"
    );
    describe_counter!(
        BACKEND_STATE_CHANGES_TOTAL,
        "Backends entering (up) or leaving (down) rotation, by active or passive health"
    );
    describe_counter!(
        UPSTREAM_FAIL_OPEN_TOTAL,
        "Episodes of every backend unhealthy, in which requests were sent to them anyway"
    );
    describe_counter!(
        TCP_CONNECTIONS_TOTAL,
        "TCP connections (protocol = \"tcp\" listeners) handed to each backend"
    );
    describe_gauge!(
        TCP_CONNECTIONS_OPEN,
        "TCP connections open on each protocol = \"tcp\" listener"
    );
    describe_counter!(
        TCP_BYTES_TOTAL,
        "Bytes copied by protocol = \"tcp\" listeners, by direction (up: client to backend), counted when a connection ends"
    );
    describe_counter!(
        CONFIG_RELOADS_TOTAL,
        "Configuration reloads (SIGHUP, or a change of the file with `watch`), by result: success or failure"
    );
    describe_gauge!(
        CONFIG_LAST_RELOAD_SUCCESSFUL,
        "1 if the last configuration load (start or reload) succeeded, else 0"
    );
    describe_gauge!(
        CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP,
        "When the configuration was last loaded successfully (Unix seconds)"
    );
    describe_gauge!(
        BACKEND_ADMIN_STATE,
        "The operator's admin state of a backend, set through the admin API: 0 active, 1 draining (only sticky-pinned requests), 2 disabled (no requests)"
    );
    describe_counter!(
        ADMIN_ACTIONS_TOTAL,
        "Changes made through the admin API, by action: drain, disable, enable, weight, reset"
    );
    describe_counter!(
        UPGRADES_TOTAL,
        "Binary upgrades (SIGUSR2) this process started, by result: ok (the new process took over), failed (it did not; this one goes on serving)"
    );
    describe_counter!(
        ACCESS_LOG_LINES_LOST_TOTAL,
        "Access log lines not written: the write failed (a full or gone disk), or the log fell 16 MB behind"
    );
    describe_counter!(
        UPSTREAM_RETRIES_REFUSED_TOTAL,
        "Failed requests not sent again, by reason: unsafe (the request may have taken effect), tries, try_timeout, budget"
    );
    describe_gauge!(
        UPSTREAM_QUEUE_LENGTH,
        "Requests and TCP connections waiting for a backend under its max_conns"
    );
    describe_histogram!(
        UPSTREAM_QUEUE_WAIT_SECONDS,
        metrics::Unit::Seconds,
        "Time spent waiting in an upstream's queue, whether a backend took the request or not"
    );
    describe_counter!(
        UPSTREAM_QUEUE_REJECTIONS_TOTAL,
        "Requests answered 503 because every backend was at its max_conns, by reason: full (the queue), timeout (waited too long), no_queue (none configured)"
    );
    describe_counter!(
        DNS_QUERIES_TOTAL,
        "Names of resolve = true servers looked up, by result: ok, nxdomain (no such name), no_answer (no such records), timeout, error (SERVFAIL, refused, unreachable)"
    );
    describe_counter!(
        LIMIT_REQUESTS_TOTAL,
        "Requests over a [limits.NAME] rate, by limit and result: delayed (within burst, spaced to the rate) or refused (beyond burst)"
    );
    describe_counter!(
        LIMIT_CONNS_REFUSED_TOTAL,
        "Requests refused because their key already had `conns` requests in progress, by limit"
    );
    describe_gauge!(
        LIMIT_KEYS,
        "Keys (clients) a [limits.NAME] remembers, at most its max_keys"
    );
}

/// The `action` label of `rproxy_admin_actions_total`: the admin API's writes.
pub const ADMIN_ACTIONS: [&str; 5] = ["drain", "disable", "enable", "weight", "reset"];

/// Counts a change made through the admin API (`action` is one of [`ADMIN_ACTIONS`]).
pub fn admin_action(action: &'static str) {
    metrics::counter!(ADMIN_ACTIONS_TOTAL, "action" => action).increment(1);
}

/// `"2xx"`, `"5xx"`, ...: the bounded status label, as HAProxy's exporter uses.
pub fn status_class(status: u16) -> &'static str {
    STATUS_CLASSES[class_index(status)]
}

pub(crate) const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub(crate) fn class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// Records a configuration load: at start (`true`, not counted as a reload) or a reload.
pub fn reload_result(ok: bool) {
    static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if STARTED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        let result = if ok { "success" } else { "failure" };
        metrics::counter!(CONFIG_RELOADS_TOTAL, "result" => result).increment(1);
    } else {
        // The first load: both results exist from the start, at 0.
        for result in ["success", "failure"] {
            metrics::counter!(CONFIG_RELOADS_TOTAL, "result" => result).absolute(0);
        }
    }
    metrics::gauge!(CONFIG_LAST_RELOAD_SUCCESSFUL).set(if ok { 1.0 } else { 0.0 });
    if ok {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        metrics::gauge!(CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP).set(now);
    }
}

/// Counts access log lines that were not written. Looked up per call, not held: the access
/// log's writer starts before the recorder is installed, and this runs once per write round.
pub fn access_log_lines_lost(lines: u64) {
    metrics::counter!(ACCESS_LOG_LINES_LOST_TOTAL).increment(lines);
}

/// The `result` label of `rproxy_dns_queries_total`.
pub const DNS_RESULTS: [&str; 5] = ["ok", "nxdomain", "no_answer", "timeout", "error"];

/// Counts one lookup of a `resolve = true` name (`result` is one of [`DNS_RESULTS`]).
pub fn dns_query(result: &'static str) {
    metrics::counter!(DNS_QUERIES_TOTAL, "result" => result).increment(1);
}

/// Makes every result's series exist at 0: called when names are followed at all.
pub fn dns_queries_start() {
    for result in DNS_RESULTS {
        metrics::counter!(DNS_QUERIES_TOTAL, "result" => result).increment(0);
    }
}

/// Counts a binary upgrade this process started: `Some(true)` the new process took over,
/// `Some(false)` it failed; `None` at start, so that both series exist from the start at 0.
pub fn upgrade_result(ok: Option<bool>) {
    match ok {
        Some(ok) => {
            let result = if ok { "ok" } else { "failed" };
            metrics::counter!(UPGRADES_TOTAL, "result" => result).increment(1);
        }
        None => {
            for result in ["ok", "failed"] {
                metrics::counter!(UPGRADES_TOTAL, "result" => result).absolute(0);
            }
        }
    }
}
