//! The JSON the runtime admin API answers with: every upstream and, per server, its weights,
//! the operator's admin state and override, health and in-flight count. `GET /api/upstreams`
//! lists them; every write answers with the server's object after the change. `/status`
//! shows the same override object per backend.

use serde::Serialize;

use crate::health::Override;
use crate::state::Snapshot;
use crate::upstream::{Backend, Pool};

#[derive(Debug, Serialize)]
pub(super) struct UpstreamsView {
    pub upstreams: Vec<UpstreamView>,
}

#[derive(Debug, Serialize)]
pub(super) struct UpstreamView {
    pub name: String,
    pub balance: &'static str,
    /// The upstream's request queue (`[upstreams.NAME.queue]`): `null`, as rproxy has no
    /// queue yet; the per-backend limits fill it in.
    pub queue: Option<serde_json::Value>,
    pub servers: Vec<ServerView>,
}

#[derive(Debug, Serialize)]
pub(super) struct ServerView {
    /// The resolved address requests go to.
    pub addr: String,
    /// The server as written in the file.
    pub written: String,
    pub backup: bool,
    pub weight: WeightView,
    /// `active`, `draining` or `disabled`.
    pub admin_state: &'static str,
    /// `runtime` while an override is in force, else `file`.
    pub source: &'static str,
    #[serde(rename = "override")]
    pub runtime_override: Option<OverrideView>,
    /// `up`, `unhealthy` (failing its checks or left out by passive health) or `down` (in the
    /// file).
    pub health: &'static str,
    /// Requests and TCP connections in progress on it.
    pub in_flight: u64,
    /// Its connection limit: `null`, as rproxy has no per-backend limit yet.
    pub max_conns: Option<u64>,
}

#[derive(Debug, Serialize)]
pub(super) struct WeightView {
    /// The file's.
    pub configured: u32,
    /// What it is balanced with now: the runtime weight when one is set.
    pub effective: u32,
}

/// What the operator changed at run time; `null` fields follow the file.
#[derive(Debug, Serialize)]
pub struct OverrideView {
    /// `draining` or `disabled`, or `null`.
    pub state: Option<&'static str>,
    pub weight: Option<u32>,
    /// When it was last changed (Unix seconds).
    pub since_unix: u64,
    /// The admin client that changed it.
    pub by: String,
}

impl OverrideView {
    pub(super) fn of(o: Override) -> Self {
        OverrideView {
            state: o.state.map(|s| s.name()),
            weight: o.weight.map(|w| w.get()),
            since_unix: o.since_unix,
            by: o.by,
        }
    }
}

/// Every upstream, sorted by name, with its servers in the pool's order (primaries, then
/// backups).
pub(super) fn upstreams(snapshot: &Snapshot) -> UpstreamsView {
    let mut upstreams: Vec<UpstreamView> = snapshot
        .pools
        .values()
        .map(|p| upstream(snapshot, p))
        .collect();
    upstreams.sort_by(|a, b| a.name.cmp(&b.name));
    UpstreamsView { upstreams }
}

pub(super) fn upstream(snapshot: &Snapshot, pool: &Pool) -> UpstreamView {
    UpstreamView {
        name: pool.name.to_string(),
        balance: snapshot
            .config
            .upstreams
            .get(&*pool.name)
            .map_or("round_robin", |u| u.balance.name()),
        queue: None,
        servers: pool.backends().iter().map(|b| server(b)).collect(),
    }
}

pub(super) fn server(b: &Backend) -> ServerView {
    let runtime_override = b.health.runtime_override();
    ServerView {
        addr: b.addr.to_string(),
        written: b.written.clone(),
        backup: b.backup,
        weight: WeightView {
            configured: b.configured_weight,
            effective: b.weight,
        },
        admin_state: b.health.admin_mode().name(),
        source: if runtime_override.is_some() {
            "runtime"
        } else {
            "file"
        },
        runtime_override: runtime_override.map(OverrideView::of),
        health: health(b),
        in_flight: b.live.in_flight(),
        max_conns: None,
    }
}

/// `down` (in the file), `up`, or `unhealthy`, as `/status` says it.
pub(super) fn health(b: &Backend) -> &'static str {
    match (b.down, b.healthy()) {
        (true, _) => "down",
        (false, true) => "up",
        (false, false) => "unhealthy",
    }
}
