//! Routing: which listener rules apply to a request, and so which pool receives it.
//!
//! A pure function of the snapshot and the request's listener (host and path routes arrive
//! with virtual hosts). Sits between the listener, which accepted the request, and the
//! upstream pool, which balances it.

use std::sync::Arc;

use crate::state::{ListenerRuntime, Snapshot};

/// The rules for a request that arrived on `listener`, or `None` if the listener is no longer
/// part of the configuration.
pub fn route<'s>(snapshot: &'s Snapshot, listener: &str) -> Option<&'s Arc<ListenerRuntime>> {
    snapshot.listener(listener)
}
