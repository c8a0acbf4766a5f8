//! The admin listener, at the side of the request path: `/metrics` for Prometheus, `/healthz`
//! for liveness, `/readyz` for readiness, `/status` as JSON, `/` as a self-refreshing HTML
//! status page, and the runtime admin API under `/api/` (drain, disable, enable, weight,
//! reset: `api.rs`). A listener of its own: admin paths are never served on a proxy listener,
//! whatever Host or path a client sends there. With `token` set, every request needs
//! `Authorization: Bearer <token>` (or `?token=`, so a browser can open the page); API writes
//! always need it, in the header.
//!
//! Reads the published snapshot (`state`) and the metrics, and sets the operator's overrides
//! on backends through `health`; nothing imports it but `server`, which answers its
//! [`RebuildRequest`]s. While it serves, a sampler keeps each backend's recent traffic for
//! the page's sparklines (`history.rs`).

mod api;
mod history;
mod status;
mod view;

pub use api::RebuildRequest;
pub use history::HistoryView;
pub use status::Status;
pub use view::OverrideView;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Recorder, render_process_metrics};
use crate::state::SharedState;

use history::History;

/// What the admin endpoints answer from.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub token: Option<Arc<str>>,
    pub metrics: Option<Recorder>,
    /// True while every listener is bound and serving; false during shutdown.
    pub ready: Arc<AtomicBool>,
    pub state: SharedState,
    pub started: SystemTime,
    /// Where a runtime weight change asks the server to rebuild the pools.
    pub rebuild: tokio::sync::mpsc::Sender<RebuildRequest>,
}

const PAGE: &str = include_str!("page.html");

const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves admin requests until `shutdown`; open admin connections are closed gracefully.
pub async fn serve_admin(listener: TcpListener, state: AdminState, shutdown: CancellationToken) {
    let history = Arc::new(History::default());
    tokio::spawn(history::sample(
        Arc::clone(&history),
        Arc::clone(&state.state),
        shutdown.clone(),
    ));
    let state = Arc::new(state);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let (state, history) = (Arc::clone(&state), Arc::clone(&history));
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let stopping = shutdown.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let (state, history) = (Arc::clone(&state), Arc::clone(&history));
                let stopping = stopping.clone();
                async move {
                    Ok::<_, Infallible>(if req.uri().path().starts_with("/api/") {
                        api::handle(&state, req, peer, &stopping).await
                    } else {
                        answer(&state, &history, &req)
                    })
                }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(client = %peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}

fn answer(state: &AdminState, history: &History, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if let Some(token) = &state.token
        && !authorized(req, token)
    {
        let mut resp = text(StatusCode::UNAUTHORIZED, "401 Unauthorized\n");
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed\n");
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match req.uri().path() {
        "/metrics" => match &state.metrics {
            Some(recorder) => {
                let mut body = recorder.render();
                body.push_str(&render_process_metrics());
                let mut resp = Response::new(Full::new(Bytes::from(body)));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                resp
            }
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "metrics recorder not installed\n",
            ),
        },
        "/status" => {
            let status = status::build(&state.state.load(), state.started, history);
            match serde_json::to_vec_pretty(&status) {
                Ok(json) => typed(json.into(), "application/json"),
                Err(e) => {
                    tracing::error!(error = %e, "cannot render /status");
                    text(StatusCode::INTERNAL_SERVER_ERROR, "cannot render status\n")
                }
            }
        }
        "/" => typed(
            Bytes::from_static(PAGE.as_bytes()),
            "text/html; charset=utf-8",
        ),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if state.ready.load(Ordering::Acquire) => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => text(StatusCode::NOT_FOUND, "404 Not Found\n"),
    }
}

/// `Authorization: Bearer <token>` or a `token` query parameter, compared in constant time so
/// response timing does not reveal how much of a guess was right.
fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    let from_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    let from_query = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .map(str::as_bytes)
    });
    let Some(given) = from_header.or(from_query) else {
        return false;
    };
    same_secret(given, token.as_bytes())
}

/// `given == expected`, in time that does not depend on where they differ.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn typed(body: Bytes, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
