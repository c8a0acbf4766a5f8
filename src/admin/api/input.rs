//! Reading an admin API request: the path's percent-escapes, `?wait=`, the weight body and
//! the bearer token.

use std::num::NonZeroU32;
use std::time::Duration;

use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::config::defaults::MAX_WEIGHT;

use super::Action;
use super::answer::{Refusal, refusal};

/// The longest body `PUT .../weight` reads (`{"weight": 1000000}` is 20 bytes).
const MAX_BODY: usize = 1024;
/// The longest `?wait=`.
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// `?wait=30s` on drain and disable: how long to wait for the server's in-flight requests to
/// finish.
pub(super) fn wait_param(
    req: &Request<Incoming>,
    action: Action,
) -> Result<Option<Duration>, Refusal> {
    let Some(text) = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("wait=")))
    else {
        return Ok(None);
    };
    if !matches!(action, Action::Drain | Action::Disable) {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            "`wait` is for drain and disable",
            None,
        ));
    }
    let text = percent_decode(text).unwrap_or_default();
    match humantime::parse_duration(&text) {
        Ok(d) if d <= MAX_WAIT => Ok(Some(d)),
        _ => Err(refusal(
            StatusCode::BAD_REQUEST,
            &format!(
                "`wait={text}`: expected a duration with a unit, such as \"30s\" or \"2m\", at most \"24h\""
            ),
            None,
        )),
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightBody {
    weight: u64,
}

/// The body of `PUT .../weight`: `{"weight": N}`, N from 1 to the file's maximum.
pub(super) async fn weight_body(body: Incoming) -> Result<NonZeroU32, Refusal> {
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Err(refusal(
                StatusCode::BAD_REQUEST,
                &format!(
                    "the body must be JSON such as {{\"weight\": 3}}, at most {MAX_BODY} bytes"
                ),
                None,
            ));
        }
    };
    let parsed: WeightBody = serde_json::from_slice(&bytes).map_err(|e| {
        refusal(
            StatusCode::BAD_REQUEST,
            &format!("the body must be JSON such as {{\"weight\": 3}}: {e}"),
            None,
        )
    })?;
    u32::try_from(parsed.weight)
        .ok()
        .filter(|w| *w <= MAX_WEIGHT)
        .and_then(NonZeroU32::new)
        .ok_or_else(|| {
            refusal(
                StatusCode::BAD_REQUEST,
                &format!(
                    "weight {} is out of range: 1 to {MAX_WEIGHT} (to stop sending new requests to a server, drain it)",
                    parsed.weight
                ),
                None,
            )
        })
}

/// `Authorization: Bearer <token>` only (the query form is for reading the page).
pub(super) fn bearer(req: &Request<Incoming>, token: &str) -> bool {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|given| super::super::same_secret(given, token.as_bytes()))
}

/// `%XX` escapes decoded (a path segment such as `%5B%3A%3A1%5D%3A3000` for `[::1]:3000`);
/// `None` for a bad escape or bytes that are not UTF-8.
pub(super) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode("%5B%3A%3A1%5D%3A3000").as_deref(),
            Some("[::1]:3000")
        );
        assert_eq!(
            percent_decode("127.0.0.1:80").as_deref(),
            Some("127.0.0.1:80")
        );
        assert_eq!(percent_decode("%5"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None, "not UTF-8");
    }
}
