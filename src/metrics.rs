//! Every metric name rproxy records, in one place, with its help text.
//!
//! Names carry their unit and `_total` suffix explicitly so they do not change with the
//! exporter's version. Labels are bounded: listener, upstream, backend address, status class.
//! The Prometheus exporter and `/metrics` arrive with the admin listener.

pub const REQUESTS_TOTAL: &str = "rproxy_requests_total";
pub const UPSTREAM_ERRORS_TOTAL: &str = "rproxy_upstream_errors_total";
pub const UPSTREAM_RETRIES_TOTAL: &str = "rproxy_upstream_retries_total";

/// Registers help text for every metric; called once at start-up.
pub fn describe() {
    metrics::describe_counter!(
        REQUESTS_TOTAL,
        "Requests answered, by listener, upstream and status class"
    );
    metrics::describe_counter!(
        UPSTREAM_ERRORS_TOTAL,
        "Requests to a backend that failed before a response head arrived, by kind"
    );
    metrics::describe_counter!(
        UPSTREAM_RETRIES_TOTAL,
        "Requests sent again to another backend after a failure that made that safe"
    );
}

/// `"2xx"`, `"5xx"`, ...: a bounded label for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
