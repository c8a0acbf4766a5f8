//! Balancing policies: given the candidates a pool allows, pick one backend.
//!
//! Sits between the router (which chose the pool) and the upstream client (which sends the
//! request). Policies are pure: no I/O, no clocks, so they are unit-tested and benchmarked
//! alone. The pool filters out what may not be chosen (down, already tried, later unhealthy)
//! through `eligible`; what happens when nothing is left (backups, 503) is decided by the pool.
//!
//! Imports nothing of rproxy but `config`'s plain types; `upstream::pool` is its only caller.

mod hash;
mod ip_hash;
mod least_conn;
mod round_robin;
mod tried;

#[cfg(test)]
mod laws;

#[cfg(test)]
mod conformance_tests;

use std::net::IpAddr;

pub use hash::{ConsistentHash, KeyHash};
pub use ip_hash::IpHash;
pub use least_conn::{LeastConn, Loads, RandomTwo};
pub use round_robin::RoundRobin;
pub use tried::Tried;

/// What a policy may look at about the request. Grows with the policies that need it.
#[derive(Debug, Clone, Copy)]
pub struct PickContext<'a> {
    /// The client address as rproxy determined it (after trusted-proxy processing).
    pub client_ip: IpAddr,
    /// The hash key built from the pool's `hash.key` template; empty for other policies.
    pub key: &'a [u8],
}

/// One balancing policy over a fixed list of backends, identified by their index in that list.
pub trait Balancer: Send + Sync + std::fmt::Debug {
    /// Picks the index of one backend for which `eligible` holds, or `None` if there is none.
    fn pick(&self, ctx: &PickContext<'_>, eligible: &dyn Fn(usize) -> bool) -> Option<usize>;
}
