//! The server's side of DNS re-resolution: it starts the `dns` task with the snapshot in
//! force, and when the task reports changed addresses it rebuilds the snapshot from the
//! configuration in force plus those answers, on the same path as a reload (`prepare`,
//! `install`): surviving backends keep their live state, the others come and go. Serialised
//! with reloads and runtime changes in `run_until`'s loop.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::dns::{Answers, DnsTask};
use crate::state::Snapshot;

use super::Server;
use super::reload::forget_unconfigured;

impl Server {
    /// (Re)starts following the names of the snapshot in force, from what it knows of them.
    pub(super) fn restart_dns(&mut self) {
        self.dns = None; // Dropping the running task stops it.
        if let Some(resolver) = &self.resolver {
            let snapshot = self.state.load();
            self.dns = Some(DnsTask::spawn(
                resolver.clone(),
                (*snapshot.dns).clone(),
                snapshot.config.resolver.valid,
                self.stop.child_token(),
            ));
        }
    }

    /// What the running task knows now, else what the snapshot was built with.
    pub(super) fn latest_answers(&self) -> Arc<Answers> {
        self.dns
            .as_ref()
            .map_or_else(|| Arc::clone(&self.state.load().dns), DnsTask::latest)
    }

    /// Applies changed addresses: the configuration in force, rebuilt with `answers`.
    pub(super) async fn apply_dns(&mut self, answers: Arc<Answers>) {
        let config = Arc::clone(&self.state.load().config);
        match self.prepare(config, answers).await {
            Ok((snapshot, plan)) => {
                let old = self.install(snapshot, plan);
                log_changes(&old, &self.state.load());
                forget_unconfigured(&self.state.load());
            }
            Err(errors) => {
                // Only a listener or TLS file that changed under the running configuration
                // can fail here; the pools keep the addresses they had.
                for e in &errors.0 {
                    tracing::error!("dns: cannot apply new addresses: {e}");
                }
                forget_unconfigured(&self.state.load());
            }
        }
    }
}

/// The next change the DNS task reports; never, when no name is followed.
pub(super) async fn next_change(task: &mut Option<DnsTask>) -> Arc<Answers> {
    match task {
        Some(t) => t.changed().await,
        None => std::future::pending().await,
    }
}

/// One line per backend a DNS change added or removed (`dns: app.test:80: added
/// 10.0.0.5:80`).
fn log_changes(old: &Snapshot, new: &Snapshot) {
    for (name, pool) in &new.pools {
        let before: BTreeSet<_> = old
            .pools
            .get(name)
            .map(|p| p.backends().iter().map(|b| b.addr.clone()).collect())
            .unwrap_or_default();
        let after: BTreeSet<_> = pool.backends().iter().map(|b| b.addr.clone()).collect();
        for b in pool.backends().iter().filter(|b| !before.contains(&b.addr)) {
            tracing::info!(upstream = %name, backend = %b.label, "dns: {}: added {}", b.written, b.addr);
        }
        if let Some(p) = old.pools.get(name) {
            for b in p.backends().iter().filter(|b| !after.contains(&b.addr)) {
                tracing::info!(upstream = %name, backend = %b.label, in_flight = b.live.in_flight(), "dns: {}: removed {}; its requests in progress finish", b.written, b.addr);
            }
        }
    }
}
