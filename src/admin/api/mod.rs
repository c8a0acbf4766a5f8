//! The runtime admin API under `/api/`: the operator drains, disables, enables and reweights
//! servers without editing the file (HAProxy's runtime API, nginx Plus's `/api`).
//!
//! - `GET /api/upstreams`, `GET /api/upstreams/{upstream}`,
//!   `GET /api/upstreams/{upstream}/servers/{addr}`: JSON (`view.rs`).
//! - `POST .../servers/{addr}/drain[?wait=30s]`, `.../disable[?wait=]`, `.../enable`,
//!   `.../reset`, and `PUT .../servers/{addr}/weight` with `{"weight": N}`.
//!
//! Reads follow the admin listener's rule (the token when one is configured). Writes always
//! need the token, sent as `Authorization: Bearer` (never `?token=`, which ends up in logs
//! and browser history); with no token configured they answer 403 saying how to set one.
//!
//! A mode change takes effect at once through the backend's `BackendHealth` (one atomic the
//! pool reads on every pick); a weight change asks the server to rebuild the pools from the
//! running configuration (`RebuildRequest`) and answers once the new snapshot is published.
//! The overrides live in each backend's `BackendHealth`, which a reload carries over for a
//! server still in the file. Each change is logged with the admin client's address and
//! counted in `rproxy_admin_actions_total`.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::health::AdminMode;
use crate::upstream::{Backend, Pool};

use super::{AdminState, authorized, view};

mod answer;
mod input;

use answer::{
    Answer, Refusal, json, method_not_allowed, not_found_endpoint, refusal, refuse, unauthorized,
};
use input::{bearer, percent_decode, wait_param, weight_body};

/// How often a `?wait=` looks at the server's in-flight count.
const WAIT_POLL: Duration = Duration::from_millis(20);
/// How long a weight change waits for its rebuild (name resolution included) before it gives
/// up; a reload allows its resolution 30s.
const REBUILD_TIMEOUT: Duration = Duration::from_secs(45);

/// Asks the server to rebuild the snapshot from the running configuration, so that a runtime
/// weight takes effect; answered once the new snapshot is published, or with why not.
pub type RebuildRequest = oneshot::Sender<Result<(), String>>;

/// What a write does to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Drain,
    Disable,
    Enable,
    Reset,
    Weight,
}

impl Action {
    fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "drain" => Action::Drain,
            "disable" => Action::Disable,
            "enable" => Action::Enable,
            "reset" => Action::Reset,
            "weight" => Action::Weight,
            _ => return None,
        })
    }

    /// Its `action` label in `rproxy_admin_actions_total`.
    fn name(self) -> &'static str {
        match self {
            Action::Drain => "drain",
            Action::Disable => "disable",
            Action::Enable => "enable",
            Action::Reset => "reset",
            Action::Weight => "weight",
        }
    }

    fn method(self) -> Method {
        if self == Action::Weight {
            Method::PUT
        } else {
            Method::POST
        }
    }

    /// The `Allow` header when another method was used.
    fn allow(self) -> &'static str {
        if self == Action::Weight {
            "PUT"
        } else {
            "POST"
        }
    }
}

/// Answers one request under `/api/`. `peer` is the admin client (logged with each change);
/// `shutdown` ends a `?wait=` early when rproxy stops.
pub(super) async fn handle(
    state: &AdminState,
    req: Request<Incoming>,
    peer: SocketAddr,
    shutdown: &CancellationToken,
) -> Answer {
    if let Some(token) = &state.token
        && !authorized(&req, token)
    {
        return unauthorized("missing or wrong token: send Authorization: Bearer <token>");
    }
    let segments: Option<Vec<String>> = req
        .uri()
        .path()
        .trim_start_matches("/api/")
        .split('/')
        .map(percent_decode)
        .collect();
    let Some(segments) = segments else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad percent-encoding in the path",
            None,
        );
    };
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (upstream, server, action) = match segments.as_slice() {
        ["upstreams"] | ["upstreams", ""] => (None, None, None),
        ["upstreams", u] => (Some(*u), None, None),
        ["upstreams", u, "servers", a] => (Some(*u), Some(*a), None),
        ["upstreams", u, "servers", a, act] => match Action::parse(act) {
            Some(act) => (Some(*u), Some(*a), Some(act)),
            None => return not_found_endpoint(),
        },
        _ => return not_found_endpoint(),
    };
    let Some(action) = action else {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return method_not_allowed("GET, HEAD");
        }
        return read(state, upstream, server);
    };
    if req.method() != action.method() {
        return method_not_allowed(action.allow());
    }
    let Some(token) = &state.token else {
        return refuse(
            StatusCode::FORBIDDEN,
            "admin API writes are disabled: set `token` under [admin] in the configuration file (16 or more visible ASCII characters), restart rproxy, and send it as `Authorization: Bearer <token>`",
            None,
        );
    };
    if !bearer(&req, token) {
        return unauthorized("writes need the token as `Authorization: Bearer <token>`");
    }
    let (Some(upstream), Some(server)) = (upstream, server) else {
        return not_found_endpoint();
    };
    let wait = match wait_param(&req, action) {
        Ok(w) => w,
        Err(refused) => return refused.answer(),
    };
    let weight = if action == Action::Weight {
        match weight_body(req.into_body()).await {
            Ok(w) => Some(w),
            Err(refused) => return refused.answer(),
        }
    } else {
        None
    };
    let snapshot = state.state.load_full();
    let backend = match find(&snapshot, upstream, server) {
        Ok(b) => Arc::clone(b),
        Err(refused) => return refused.answer(),
    };
    let by = peer.to_string();
    let before = backend.health.admin_mode();
    match action {
        Action::Drain => {
            backend
                .health
                .set_admin_mode(Some(AdminMode::Draining), &by, &backend.metrics);
        }
        Action::Disable => {
            backend
                .health
                .set_admin_mode(Some(AdminMode::Disabled), &by, &backend.metrics);
        }
        Action::Enable => {
            backend.health.set_admin_mode(None, &by, &backend.metrics);
        }
        Action::Reset => {
            let had_weight = backend.health.weight_override().is_some();
            backend.health.reset_overrides(&backend.metrics);
            // The file's weight balances again once the pools are rebuilt; should that fail,
            // the next reload brings it.
            if had_weight && let Err(why) = rebuilt(state).await {
                tracing::error!(admin.client = %peer, upstream, backend = %backend.label, error = %why, "admin: the file's weight could not be applied yet");
            }
        }
        Action::Weight => {
            let previous = backend.health.set_weight_override(weight, &by);
            if let Err(why) = rebuilt(state).await {
                // Put the weight back, so that what the API shows is what balances.
                backend.health.set_weight_override(previous, &by);
                tracing::error!(admin.client = %peer, upstream, backend = %backend.label, error = %why, "admin: the weight change could not be applied");
                return refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("the weight could not be applied ({why}); nothing changed"),
                    None,
                );
            }
        }
    }
    crate::metrics::admin_action(action.name());
    tracing::info!(
        admin.client = %peer,
        upstream,
        backend = %backend.label,
        action = action.name(),
        from = before.name(),
        to = backend.health.admin_mode().name(),
        weight = ?weight.map(NonZeroU32::get),
        "admin: server changed at run time"
    );
    // After a rebuild the server is a new `Backend` (same live state) with the new weight.
    let current = state.state.load_full();
    let backend = find(&current, upstream, server).map_or(backend, Arc::clone);
    match wait {
        None => json(StatusCode::OK, &view::server(&backend)),
        Some(wait) => drained(&backend, wait, shutdown).await,
    }
}

/// `GET`: every upstream, one upstream, or one server.
fn read(state: &AdminState, upstream: Option<&str>, server: Option<&str>) -> Answer {
    let snapshot = state.state.load();
    match (upstream, server) {
        (None, _) => json(StatusCode::OK, &view::upstreams(&snapshot)),
        (Some(u), None) => match snapshot.pools.get(u) {
            Some(pool) => json(StatusCode::OK, &view::upstream(&snapshot, pool)),
            None => unknown_upstream(&snapshot, u).answer(),
        },
        (Some(u), Some(s)) => match find(&snapshot, u, s) {
            Ok(b) => json(StatusCode::OK, &view::server(b)),
            Err(refused) => refused.answer(),
        },
    }
}

/// The server `given` of upstream `upstream`: its address as written in the file, or one
/// resolved address (the only way to name one address of a name that has several).
fn find<'s>(
    snapshot: &'s crate::state::Snapshot,
    upstream: &str,
    given: &str,
) -> Result<&'s Arc<Backend>, Refusal> {
    let Some(pool) = snapshot.pools.get(upstream) else {
        return Err(unknown_upstream(snapshot, upstream));
    };
    let written: Vec<&Arc<Backend>> = pool
        .backends()
        .iter()
        .filter(|b| b.written == given)
        .collect();
    match written.as_slice() {
        [one] => return Ok(one),
        [] => {}
        several => {
            return Err(refusal(
                StatusCode::CONFLICT,
                &format!(
                    "`{given}` resolves to {} addresses in upstream `{upstream}`; name one of them",
                    several.len()
                ),
                Some(several.iter().map(|b| b.addr.to_string()).collect()),
            ));
        }
    }
    let parsed: Option<crate::config::BackendAddr> = given.parse().ok();
    pool.backends()
        .iter()
        .find(|b| parsed.as_ref() == Some(&b.addr))
        .ok_or_else(|| {
            refusal(
                StatusCode::NOT_FOUND,
                &format!("upstream `{upstream}` has no server `{given}`"),
                Some(known_servers(pool)),
            )
        })
}

/// How each server of `pool` can be named: as written, or by its address when its name
/// resolves to several.
fn known_servers(pool: &Pool) -> Vec<String> {
    let backends = pool.backends();
    backends
        .iter()
        .map(|b| {
            if backends.iter().filter(|o| o.written == b.written).count() == 1 {
                b.written.clone()
            } else {
                b.addr.to_string()
            }
        })
        .collect()
}

fn unknown_upstream(snapshot: &crate::state::Snapshot, upstream: &str) -> Refusal {
    let mut known: Vec<String> = snapshot.pools.keys().cloned().collect();
    known.sort();
    refusal(
        StatusCode::NOT_FOUND,
        &format!("no upstream `{upstream}`"),
        Some(known),
    )
}

/// Asks the server loop for a rebuild and waits for it.
async fn rebuilt(state: &AdminState) -> Result<(), String> {
    let (tx, rx) = oneshot::channel();
    state
        .rebuild
        .send(tx)
        .await
        .map_err(|_| "rproxy is stopping".to_string())?;
    match tokio::time::timeout(REBUILD_TIMEOUT, rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err("rproxy is stopping".to_string()),
        Err(_) => Err(format!(
            "rebuilding the pools took longer than {REBUILD_TIMEOUT:?}"
        )),
    }
}

#[derive(Debug, Serialize)]
struct Drained {
    drained: bool,
    in_flight: u64,
    waited_ms: u64,
    server: view::ServerView,
}

/// Waits up to `wait` for the server's in-flight requests and TCP connections to reach 0:
/// 200 when they did, 504 when the wait ran out (503 if rproxy began to stop).
async fn drained(backend: &Backend, wait: Duration, shutdown: &CancellationToken) -> Answer {
    let start = Instant::now();
    let deadline = start + wait;
    let status = loop {
        if backend.live.in_flight() == 0 {
            break StatusCode::OK;
        }
        let now = Instant::now();
        if now >= deadline {
            break StatusCode::GATEWAY_TIMEOUT;
        }
        tokio::select! {
            () = tokio::time::sleep(WAIT_POLL.min(deadline - now)) => {}
            () = shutdown.cancelled() => break StatusCode::SERVICE_UNAVAILABLE,
        }
    };
    let in_flight = backend.live.in_flight();
    json(
        status,
        &Drained {
            drained: status == StatusCode::OK,
            in_flight,
            waited_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
            server: view::server(backend),
        },
    )
}
