//! Metric handles, resolved once per listener, pool and backend when a snapshot is built.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};

use super::IDLE_PARKED_CONNECTIONS;
use super::{
    BACKEND_ADMIN_STATE, BACKEND_IN_FLIGHT, BACKEND_STATE_CHANGES_TOTAL, BACKEND_UP,
    CONNECTIONS_OPEN, CONNECTIONS_TOTAL, HEALTH_CHECKS_TOTAL, HTTP_REQUEST_DURATION_SECONDS,
    HTTP_REQUESTS_TOTAL, STATUS_CLASSES, UPSTREAM_ERRORS_TOTAL, UPSTREAM_FAIL_OPEN_TOTAL,
    UPSTREAM_QUEUE_LENGTH, UPSTREAM_QUEUE_REJECTIONS_TOTAL, UPSTREAM_QUEUE_WAIT_SECONDS,
    UPSTREAM_REQUESTS_TOTAL, UPSTREAM_RESPONSE_SECONDS, UPSTREAM_RETRIES_REFUSED_TOTAL,
    UPSTREAM_RETRIES_TOTAL, class_index,
};

/// Why a request to a backend failed, as counted in `rproxy_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Refused, unreachable, or not connected within the connect timeout.
    Connect,
    /// No response head within the response timeout.
    Timeout,
    /// The connection broke after the request was sent.
    Reset,
    /// The backend's answer was malformed or not allowed.
    Protocol,
}

impl ErrorKind {
    const ALL: [ErrorKind; 4] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Reset,
        ErrorKind::Protocol,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::Protocol => "protocol",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    requests: [Counter; 5],
    duration: Histogram,
    pub connections_open: Gauge,
    pub connections_total: Counter,
    /// Idle HTTP/1 connections parked (in the idle lot, or TLS ones in their tasks).
    pub idle_parked: Gauge,
}

impl ListenerMetrics {
    pub fn new(listener: &str) -> Self {
        let l = listener.to_string();
        ListenerMetrics {
            requests: STATUS_CLASSES.map(|code| {
                metrics::counter!(HTTP_REQUESTS_TOTAL, "listener" => l.clone(), "code" => code)
            }),
            duration: metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, "listener" => l.clone()),
            connections_open: metrics::gauge!(CONNECTIONS_OPEN, "listener" => l.clone()),
            connections_total: metrics::counter!(CONNECTIONS_TOTAL, "listener" => l.clone()),
            idle_parked: metrics::gauge!(IDLE_PARKED_CONNECTIONS, "listener" => l),
        }
    }

    pub fn request(&self, status: u16, duration: Duration) {
        self.requests[class_index(status)].increment(1);
        self.duration.record(duration.as_secs_f64());
    }

    /// A request head answered before it became a request: hyper's 400 (it did not parse) or
    /// 431 (too large), rproxy's early 414 (`listener/io.rs`). Counted as a 4xx, as nginx
    /// counts its 400 and 414; not in the duration histogram, since nothing was served.
    pub fn head_refused(&self) {
        self.requests[class_index(400)].increment(1);
    }
}

#[derive(Debug, Clone)]
pub struct PoolMetrics {
    pub retries: Counter,
    /// Episodes of every backend unhealthy.
    pub fail_open: Counter,
    /// Retries refused: unsafe, tries, try_timeout, budget.
    retries_refused: [Counter; 4],
}

impl PoolMetrics {
    pub fn new(upstream: &str) -> Self {
        PoolMetrics {
            retries: metrics::counter!(UPSTREAM_RETRIES_TOTAL, "upstream" => upstream.to_string()),
            fail_open: metrics::counter!(UPSTREAM_FAIL_OPEN_TOTAL, "upstream" => upstream.to_string()),
            retries_refused: RetryRefusal::ALL.map(|why| {
                metrics::counter!(UPSTREAM_RETRIES_REFUSED_TOTAL, "upstream" => upstream.to_string(), "reason" => why.label())
            }),
        }
    }

    pub fn retry_refused(&self, why: RetryRefusal) {
        self.retries_refused[why as usize].increment(1);
    }
}

/// Why a failed request was not sent to another backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryRefusal {
    /// It may have taken effect on the backend (a POST that reached it, a body not kept).
    Unsafe = 0,
    /// `tries` attempts were made.
    Tries = 1,
    /// `try_timeout` is used up.
    TryTimeout = 2,
    /// The pool's retry budget is spent.
    Budget = 3,
}

impl RetryRefusal {
    const ALL: [RetryRefusal; 4] = [
        RetryRefusal::Unsafe,
        RetryRefusal::Tries,
        RetryRefusal::TryTimeout,
        RetryRefusal::Budget,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RetryRefusal::Unsafe => "unsafe",
            RetryRefusal::Tries => "tries",
            RetryRefusal::TryTimeout => "try_timeout",
            RetryRefusal::Budget => "budget",
        }
    }
}

/// An upstream's queue of requests waiting for a backend under its `max_conns`.
#[derive(Debug, Clone)]
pub struct QueueMetrics {
    pub length: Gauge,
    pub wait: Histogram,
    rejections: [Counter; 3],
}

impl QueueMetrics {
    pub fn new(upstream: &str) -> Self {
        let u = upstream.to_string();
        QueueMetrics {
            length: metrics::gauge!(UPSTREAM_QUEUE_LENGTH, "upstream" => u.clone()),
            wait: metrics::histogram!(UPSTREAM_QUEUE_WAIT_SECONDS, "upstream" => u.clone()),
            rejections: QueueRejection::ALL.map(|why| {
                metrics::counter!(UPSTREAM_QUEUE_REJECTIONS_TOTAL, "upstream" => u.clone(), "reason" => why.label())
            }),
        }
    }

    pub fn rejected(&self, why: QueueRejection) {
        self.rejections[why as usize].increment(1);
    }
}

/// Why a request found no backend slot and was answered 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRejection {
    /// The queue already held `size` requests.
    Full = 0,
    /// It waited the queue's `timeout`.
    Timeout = 1,
    /// The upstream has no queue.
    NoQueue = 2,
}

impl QueueRejection {
    const ALL: [QueueRejection; 3] = [
        QueueRejection::Full,
        QueueRejection::Timeout,
        QueueRejection::NoQueue,
    ];

    pub fn label(self) -> &'static str {
        match self {
            QueueRejection::Full => "full",
            QueueRejection::Timeout => "timeout",
            QueueRejection::NoQueue => "no_queue",
        }
    }
}

#[derive(Debug)]
pub struct BackendMetrics {
    responses: [Counter; 5],
    response_seconds: Histogram,
    errors: [Counter; 4],
    pub in_flight: Gauge,
    pub up: Gauge,
    /// The operator's admin mode: 0 active, 1 draining, 2 disabled.
    pub admin_state: Gauge,
    /// Health checks: passed, failed.
    checks: [Counter; 2],
    /// State changes: to up, to down.
    changes: [Counter; 2],
}

impl BackendMetrics {
    /// `backend` is the label: the server's address as written in the configuration.
    pub fn new(upstream: &str, backend: &str) -> Arc<Self> {
        let (u, b) = (upstream.to_string(), backend.to_string());
        let m = BackendMetrics {
            responses: STATUS_CLASSES.map(|code| {
                metrics::counter!(UPSTREAM_REQUESTS_TOTAL, "upstream" => u.clone(), "backend" => b.clone(), "code" => code)
            }),
            response_seconds: metrics::histogram!(UPSTREAM_RESPONSE_SECONDS, "upstream" => u.clone(), "backend" => b.clone()),
            errors: ErrorKind::ALL.map(|kind| {
                metrics::counter!(UPSTREAM_ERRORS_TOTAL, "upstream" => u.clone(), "backend" => b.clone(), "kind" => kind.label())
            }),
            in_flight: metrics::gauge!(BACKEND_IN_FLIGHT, "upstream" => u.clone(), "backend" => b.clone()),
            up: metrics::gauge!(BACKEND_UP, "upstream" => u.clone(), "backend" => b.clone()),
            admin_state: metrics::gauge!(BACKEND_ADMIN_STATE, "upstream" => u.clone(), "backend" => b.clone()),
            checks: ["pass", "fail"].map(|result| {
                metrics::counter!(HEALTH_CHECKS_TOTAL, "upstream" => u.clone(), "backend" => b.clone(), "result" => result)
            }),
            changes: ["up", "down"].map(|to| {
                metrics::counter!(BACKEND_STATE_CHANGES_TOTAL, "upstream" => u.clone(), "backend" => b.clone(), "to" => to)
            }),
        };
        Arc::new(m)
    }

    pub fn response(&self, status: u16, time_to_head: Duration) {
        self.responses[class_index(status)].increment(1);
        self.response_seconds.record(time_to_head.as_secs_f64());
    }

    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].increment(1);
    }

    pub fn check(&self, passed: bool) {
        self.checks[usize::from(!passed)].increment(1);
    }

    pub fn state_change(&self, healthy: bool) {
        self.changes[usize::from(!healthy)].increment(1);
    }
}
