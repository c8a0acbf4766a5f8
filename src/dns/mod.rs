//! DNS re-resolution for servers written with `resolve = true` (and SRV `service`s).
//!
//! Where it sits: beside the request path, not on it. A background task (`task.rs`) asks the
//! `[resolver]`'s servers (`lookup.rs`, hickory-resolver) for each name when its records
//! expire (`schedule.rs`), and when an answer changes it hands the new [`Answers`] to the
//! server, which rebuilds the snapshot from the configuration in force plus these answers,
//! exactly as a reload does: an address that stays keeps its live state, a new one becomes a
//! backend, one that went gets no new requests while its requests in progress finish.
//! `targets.rs` turns answers into backends (sorted, so every rproxy instance with the same
//! file orders them alike). A failing DNS server never empties a pool: the last good answer
//! stays until the name is answered again (or said not to exist).
//!
//! Imports `config` and `metrics` (the ground floor); `state` reads its answers, `server`
//! runs its task.

mod lookup;
mod schedule;
mod targets;
mod task;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use tokio::time::Instant;

use crate::config::{Config, ServerAddr};

pub use lookup::{Outcome, Resolver};
pub use schedule::{BACKOFF_FIRST, BACKOFF_MAX, TTL_MAX, TTL_MIN, refresh_after, retry_after};
pub use targets::{changes, expand, servers};
pub use task::{DnsTask, first_answers, prepare, unresolved_warnings};

/// One name the resolver follows: the addresses of a host, or SRV records.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Query {
    Host(String),
    Srv(String),
}

impl Query {
    /// The query a server line needs, when it has `resolve = true`.
    pub fn of(addr: &ServerAddr) -> Option<Query> {
        match addr {
            ServerAddr::Ip(_) | ServerAddr::Unix(_) => None,
            ServerAddr::Name { host, .. } => Some(Query::Host(host.clone())),
            ServerAddr::Srv { name } => Some(Query::Srv(name.clone())),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Query::Host(n) | Query::Srv(n) => n,
        }
    }
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Query::Host(name) => write!(f, "{name}"),
            Query::Srv(name) => write!(f, "{name} (SRV)"),
        }
    }
}

/// What a name resolved to, sorted and without duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Records {
    Hosts(Vec<IpAddr>),
    Srv(Vec<SrvTarget>),
}

impl Records {
    pub fn len(&self) -> usize {
        match self {
            Records::Hosts(v) => v.len(),
            Records::Srv(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One address of an SRV record's target, with the record's priority, weight and port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SrvTarget {
    pub ip: IpAddr,
    pub port: u16,
    pub priority: u16,
    pub weight: u16,
}

/// The resolver's knowledge of one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The last good answer; `None` while the name has never resolved, or since the DNS
    /// server said it does not exist (or has no such records).
    pub records: Option<Records>,
    /// Why the last query did not give an answer, when it did not.
    pub error: Option<String>,
    /// Queries failed in a row, for the retry backoff.
    pub failures: u32,
    /// When to ask again.
    pub refresh: Instant,
}

/// Every followed name's answer: plain data, kept in the snapshot so that a reload or a
/// runtime change rebuilds pools with the addresses known now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answers(pub BTreeMap<Query, Answer>);

impl Answers {
    pub fn get(&self, query: &Query) -> Option<&Answer> {
        self.0.get(query)
    }

    /// The names with no address now, for warnings (`-t`) and `/status`.
    pub fn unresolved(&self) -> impl Iterator<Item = (&Query, &Answer)> {
        self.0
            .iter()
            .filter(|(_, a)| a.records.as_ref().is_none_or(Records::is_empty))
    }
}

/// Every name `config` follows (its `resolve = true` servers), each once.
pub fn queries(config: &Config) -> std::collections::BTreeSet<Query> {
    config
        .upstreams
        .values()
        .flat_map(|u| &u.servers)
        .filter(|s| s.resolve)
        .filter_map(|s| Query::of(&s.addr))
        .collect()
}
