//! The runtime snapshot: everything a request needs, built from one validated configuration
//! and published behind one `ArcSwap`.
//!
//! A request loads the snapshot once and keeps that `Arc` to its end, so a later swap (reload)
//! never changes the rules under a request in progress. There is exactly one swappable value:
//! several updated one after another would let a request see half of a change.
//!
//! Owns what a request reads: listeners (their routes, settings, bound addresses and connection
//! budget) and pools. Imports `router`, `limit`, `upstream`, `tls`, `dns` (the resolved names'
//! answers) and `config`; never `listener`, which
//! reads it, nor `server`, which publishes it.

mod build;
mod connections;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use fnv::FnvBuildHasher;
use ipnet::IpNet;

use crate::config::{Config, ListenerConfig};
use crate::dns::Answers;
use crate::limit::Limiter;
use crate::router::RouteTable;
use crate::upstream::{HeaderPlan, Pool};

pub use build::build_snapshot;
pub use connections::ConnectionLimit;

/// The one swappable runtime state.
pub type SharedState = Arc<ArcSwap<Snapshot>>;

#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    /// Looked up by name on every request: FNV rather than the default SipHash, which cost
    /// about 170 instructions a request for a short name (the keys come from the file, so
    /// there is no flood of chosen keys to resist).
    pub listeners: HashMap<String, Arc<ListenerRuntime>, FnvBuildHasher>,
    pub pools: HashMap<String, Arc<Pool>>,
    pub trusted_proxies: Vec<IpNet>,
    /// What the resolver knew of the `resolve = true` names when this was built.
    pub dns: Arc<Answers>,
    /// `[limits.NAME]`, by name; a reload keeps those whose definition is unchanged.
    pub limits: HashMap<String, Arc<Limiter>>,
}

/// What a listener's connections and requests read on every use.
#[derive(Debug)]
pub struct ListenerRuntime {
    pub name: Arc<str>,
    /// Which pool each request goes to, by host and path; the listener's `upstream` is its
    /// default.
    pub routes: RouteTable<RouteTo>,
    /// The listener's own header rules, for the answers it makes without a route (404, a
    /// refused request); `None` when it has none.
    pub headers: Option<HeaderPlan>,
    /// Timeouts and limits, as validated.
    pub settings: ListenerConfig,
    /// For an https listener: its certificates, read when this snapshot was built.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The addresses its sockets are bound to (a configured port 0 is the port the system
    /// chose), set before the snapshot is published.
    pub addresses: Vec<SocketAddr>,
    /// Its connection budget, carried over from the previous snapshot by name.
    pub connections: ConnectionLimit,
    /// The rate and concurrency limits of requests no route (or a route without its own
    /// `limits`) decides: the listener's `limits`.
    pub rate_limits: Box<[Arc<Limiter>]>,
    /// Per route, in file order, the limits its requests are held to; empty when no route
    /// names its own (all then take `rate_limits`).
    pub route_rate_limits: Box<[Box<[Arc<Limiter>]>]>,
}

impl ListenerRuntime {
    /// The limits of a request that `route` (the router's match; `None`: the default) takes:
    /// an empty slice for a listener without any, which is all it costs.
    pub fn limits_for(&self, route: Option<usize>) -> &[Arc<Limiter>] {
        match route.and_then(|i| self.route_rate_limits.get(i)) {
            Some(limits) => limits,
            None => &self.rate_limits,
        }
    }
}

/// Where a route leads: its pool, and the header rules of the route, that pool and the
/// listener merged once for it.
#[derive(Debug)]
pub struct RouteTo {
    pub pool: Arc<Pool>,
    /// `None` when none of the three has a header rule.
    pub headers: Option<HeaderPlan>,
}

impl Snapshot {
    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerRuntime>> {
        self.listeners.get(name)
    }

    /// Records the bound addresses of each listener, before the snapshot is published (the
    /// listeners' sockets are bound after it is built). A listener missing from `bound` has
    /// none.
    pub fn set_addresses(&mut self, mut bound: HashMap<String, Vec<SocketAddr>>) {
        for (name, listener) in &mut self.listeners {
            // Only the builder holds the snapshot's listeners until it is published, so this
            // always finds them unshared; were it not so, redirects and /status would lack the
            // addresses, which is worth saying rather than a panic.
            match Arc::get_mut(listener) {
                Some(l) => l.addresses = bound.remove(name).unwrap_or_default(),
                None => {
                    tracing::error!(listener = %name, "bug: a published listener's addresses cannot be set");
                }
            }
        }
    }
}
