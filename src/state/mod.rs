//! The runtime snapshot: everything a request needs, built from one validated configuration
//! and published behind one `ArcSwap`.
//!
//! A request loads the snapshot once and keeps that `Arc` to its end, so a later swap (reload)
//! never changes the rules under a request in progress. There is exactly one swappable value:
//! several updated one after another would let a request see half of a change.

mod build;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::IpNet;

use crate::config::{Config, ListenerConfig};
use crate::router::RouteTable;
use crate::upstream::Pool;

pub use build::build_snapshot;

/// The one swappable runtime state.
pub type SharedState = Arc<ArcSwap<Snapshot>>;

#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    pub listeners: HashMap<String, Arc<ListenerRuntime>>,
    pub pools: HashMap<String, Arc<Pool>>,
    pub trusted_proxies: Vec<IpNet>,
}

/// What a listener's connections and requests read on every use.
#[derive(Debug)]
pub struct ListenerRuntime {
    pub name: Arc<str>,
    /// Which pool each request goes to, by host and path; the listener's `upstream` is its
    /// default.
    pub routes: RouteTable<Arc<Pool>>,
    /// Timeouts and limits, as validated.
    pub settings: ListenerConfig,
    /// For an https listener: its certificates, read when this snapshot was built.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Snapshot {
    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerRuntime>> {
        self.listeners.get(name)
    }
}
