//! The admin API's answers: JSON with `Cache-Control: no-store`, and refusals as
//! `{"error": ..., "known": [...]}` with their status.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;

pub(super) type Answer = Response<Full<Bytes>>;

/// An answer that is not the happy path, as `{"error": ..., "known": [...]}`.
#[derive(Debug, Serialize)]
pub(super) struct Refusal {
    #[serde(skip)]
    status: StatusCode,
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    known: Option<Vec<String>>,
}

impl Refusal {
    pub(super) fn answer(self) -> Answer {
        json(self.status, &self)
    }
}

pub(super) fn json(status: StatusCode, value: &impl Serialize) -> Answer {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            *resp.status_mut() = status;
            let headers = resp.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot render an admin API answer");
            let mut resp = Response::new(Full::new(Bytes::from_static(b"cannot render\n")));
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            resp
        }
    }
}

pub(super) fn refusal(status: StatusCode, error: &str, known: Option<Vec<String>>) -> Refusal {
    Refusal {
        status,
        error: error.to_string(),
        known,
    }
}

pub(super) fn refuse(status: StatusCode, error: &str, known: Option<Vec<String>>) -> Answer {
    refusal(status, error, known).answer()
}

pub(super) fn unauthorized(error: &str) -> Answer {
    let mut resp = refuse(StatusCode::UNAUTHORIZED, error, None);
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

pub(super) fn method_not_allowed(allow: &'static str) -> Answer {
    let mut resp = refuse(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("method not allowed here; use {allow}"),
        None,
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

pub(super) fn not_found_endpoint() -> Answer {
    refuse(
        StatusCode::NOT_FOUND,
        "no such endpoint: GET /api/upstreams[/{upstream}[/servers/{addr}]], POST .../servers/{addr}/drain|disable|enable|reset, PUT .../servers/{addr}/weight",
        None,
    )
}
