//! The access log: one line per request, on its own `tracing` target (`rproxy::access`) so it
//! can be switched and routed apart from the diagnostic log (`RUST_LOG=rproxy::access=off`).
//!
//! A record is started when the request arrives and written when the response body is done
//! (or the client goes away), so the line carries the bytes really sent and the total time.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use tokio::time::Instant;

pub const TARGET: &str = "rproxy::access";

#[derive(Debug)]
pub struct AccessRecord {
    pub listener: Arc<str>,
    pub client: IpAddr,
    pub method: Method,
    pub path: String,
    pub status: u16,
    pub backend: Option<std::net::SocketAddr>,
    pub upstream_time: Option<Duration>,
    pub started: Instant,
    /// The `X-Request-Id` sent to the backend.
    pub request_id: Option<http::HeaderValue>,
}

impl AccessRecord {
    /// Starts a record for a request, or `None` when access lines are switched off (then
    /// nothing is allocated for them).
    pub fn start(
        listener: &Arc<str>,
        client: IpAddr,
        parts: &http::request::Parts,
    ) -> Option<Self> {
        tracing::enabled!(target: TARGET, tracing::Level::INFO).then(|| AccessRecord {
            listener: Arc::clone(listener),
            client,
            method: parts.method.clone(),
            path: parts.uri.path().to_string(),
            status: 0,
            backend: None,
            upstream_time: None,
            started: Instant::now(),
            request_id: None,
        })
    }

    pub fn emit(self, bytes: u64, complete: bool) {
        let backend = self
            .backend
            .map_or_else(|| "-".to_string(), |b| b.to_string());
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        tracing::info!(
            target: TARGET,
            listener = %self.listener,
            client = %self.client,
            method = %self.method,
            path = %self.path,
            status = self.status,
            backend = %backend,
            upstream_ms = self.upstream_time.map_or(-1.0, ms),
            total_ms = ms(self.started.elapsed()),
            bytes,
            complete,
            request_id = %self
                .request_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-"),
        );
    }
}
