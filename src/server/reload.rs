//! Reload (SIGHUP, or a change of the file with `watch`): read the file again, validate all of
//! it, build the new snapshot and bind new listen addresses, and only when every step succeeded
//! swap the snapshot and bring the listeners and health checks in step with it. Any failure
//! leaves the running configuration exactly as it was.
//!
//! Requests already running keep the snapshot they loaded; new requests get the new one.
//! Backends present before and after (same upstream, same address) keep their live state:
//! health and rise/fall progress, passive failures, in-flight counts, slow start, the
//! operator's runtime overrides (admin mode, weight), and, when the pool's shape is
//! unchanged, its balancers' positions (see `Pool::new`). A server removed from the file
//! leaves with its overrides.
//!
//! A runtime weight change (admin API) takes the same path from the configuration in force,
//! without reading the file (`rebuild`).

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::config::{Config, ConfigErrors, parse};
use crate::listener::Plan;
use crate::state::{Snapshot, build_snapshot};

use super::{Server, publish_gauges, start_checks};

/// How long a reload may wait for name resolution before it gives up (the old configuration
/// keeps running).
const RELOAD_RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Server {
    /// Applies the configuration file as it is now, or logs why not and changes nothing.
    /// `cause` says what asked for it (`SIGHUP`, `file changed`).
    pub(super) async fn reload(&mut self, cause: &str) {
        let old_config = Arc::clone(&self.state.load().config);
        let path = old_config.source.clone();
        tracing::info!(config = %path.display(), "{cause}: reloading the configuration");
        let text = std::fs::read_to_string(&path);
        if let Ok(text) = &text {
            // Valid or not, this content has been seen: the file watch waits for the next one.
            self.file_seen = Some(super::watch::hash(text.as_bytes()));
        }
        let prepared = async {
            let text = text.map_err(|e| {
                ConfigErrors::whole_file(&path, format!("cannot read the file: {e}"))
            })?;
            let config = Arc::new(parse(&path, &text)?);
            // Names followed already keep their answers; new ones are asked now, and one that
            // does not resolve yet is not an error.
            let (resolver, answers) = tokio::time::timeout(
                RELOAD_RESOLVE_TIMEOUT,
                crate::dns::prepare(
                    &config,
                    self.resolver.as_ref(),
                    Some(&self.latest_answers()),
                ),
            )
            .await
            .map_err(|_| {
                ConfigErrors::whole_file(&path, "name resolution did not finish in 30s")
            })??;
            let ready = self.prepare(config, Arc::new(answers)).await?;
            Ok::<_, ConfigErrors>((ready, resolver))
        };
        let ((snapshot, plan), resolver) = match prepared.await {
            Ok(ready) => ready,
            Err(errors) => {
                // One line per error (file:line:column: key: what is wrong), then the verdict.
                for e in &errors.0 {
                    tracing::error!("reload: {e}");
                }
                tracing::error!(
                    errors = errors.0.len(),
                    "reload failed; the running configuration is unchanged"
                );
                crate::metrics::reload_result(false);
                forget_unconfigured(&self.state.load());
                return;
            }
        };
        let new_config = Arc::clone(&snapshot.config);
        let old = self.install(snapshot, plan);
        self.resolver = resolver;
        self.restart_dns();
        log_changes(&old, &self.state.load());
        warn_restart_only(&old_config, &new_config);
        crate::metrics::reload_result(true);
        forget_unconfigured(&self.state.load());
        tracing::info!("configuration reloaded");
    }

    /// Builds the snapshot again from the configuration in force, without reading the file,
    /// so that a runtime weight set through the admin API takes effect (the balancers are
    /// built from the weights). Otherwise the path of a reload: names are resolved again and
    /// every backend keeps its live state and overrides. On failure nothing changes.
    pub(super) async fn rebuild(&mut self) -> Result<(), String> {
        let config = Arc::clone(&self.state.load().config);
        let answers = self.latest_answers();
        match self.prepare(config, answers).await {
            Ok((snapshot, plan)) => {
                self.install(snapshot, plan);
                forget_unconfigured(&self.state.load());
                tracing::info!("runtime change applied: pools rebuilt");
                Ok(())
            }
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!("rebuild: {e}");
                }
                forget_unconfigured(&self.state.load());
                Err(errors.to_string())
            }
        }
    }

    /// The snapshot for `config` with the `resolve = true` names' `answers` (backends
    /// carried over from the running one) and the listener sockets it needs.
    pub(super) async fn prepare(
        &self,
        config: Arc<Config>,
        answers: Arc<crate::dns::Answers>,
    ) -> Result<(Snapshot, Plan), ConfigErrors> {
        let path = config.source.clone();
        let current = self.state.load_full();
        let mut snapshot = tokio::time::timeout(
            RELOAD_RESOLVE_TIMEOUT,
            build_snapshot(Arc::clone(&config), Some(&current), answers),
        )
        .await
        .map_err(|_| ConfigErrors::whole_file(&path, "name resolution did not finish in 30s"))??;
        let plan = self
            .listeners
            .plan(&config)
            .map_err(|e| ConfigErrors::whole_file(&path, e.to_string()))?;
        snapshot.set_addresses(self.listeners.addresses(&plan));
        Ok((snapshot, plan))
    }

    /// Publishes `snapshot`, brings the listeners in step with `plan` and restarts the health
    /// checks; returns the snapshot it replaced.
    pub(super) fn install(&mut self, snapshot: Snapshot, plan: Plan) -> Arc<Snapshot> {
        let drain_timeout = snapshot.config.drain_timeout;
        let old = self.state.swap(Arc::new(snapshot));
        publish_gauges(&self.state.load());
        self.listeners.apply(plan, drain_timeout, &self.state);
        self.update_ready_file();
        // The checks restart on the new backends; their rise/fall state is in the backends'
        // live state, carried over for every unchanged address.
        self.checks.cancel();
        self.checks = self.stop.child_token();
        start_checks(&self.state.load(), &self.checks);
        old
    }
}

/// Takes the series of every listener, upstream, backend and limit that `snapshot` (the running one)
/// does not have out of the metrics: those this reload removed, and those a failed reload
/// registered for a snapshot it dropped.
pub(super) fn forget_unconfigured(snapshot: &Snapshot) {
    let mut configured = crate::metrics::Configured::default();
    configured
        .listeners
        .extend(snapshot.config.listeners.keys().map(String::as_str));
    for (name, pool) in &snapshot.pools {
        configured.upstreams.insert(name.as_str());
        configured.backends.extend(
            pool.backends()
                .iter()
                .map(|b| (name.as_str(), b.label.as_str())),
        );
    }
    configured
        .limits
        .extend(snapshot.limits.keys().map(String::as_str));
    crate::metrics::forget_unconfigured(&configured);
}

impl Server {
    /// Rewrites the ready file when the bound listeners changed; a failure is logged, and the
    /// reload stands.
    fn update_ready_file(&mut self) {
        let Some(file) = &mut self.ready_file else {
            return;
        };
        let snapshot = self.state.load();
        let listeners = super::ready_file::bound(
            snapshot
                .listeners
                .values()
                .flat_map(|l| l.addresses.iter().map(|a| (&*l.name, *a))),
        );
        if let Err(e) = file.update(listeners) {
            tracing::error!(path = %file.path().display(), error = %e, "reload: cannot rewrite the ready file");
        }
    }
}

/// One info line per listener and backend added, removed or changed; or that nothing did.
fn log_changes(old: &Snapshot, new: &Snapshot) {
    let mut changes = 0;
    let (before, after) = (&old.config.listeners, &new.config.listeners);
    for name in before.keys().chain(after.keys()).collect::<BTreeSet<_>>() {
        match (before.get(name), after.get(name)) {
            (None, Some(l)) => {
                tracing::info!(listener = %name, listen = ?l.listen, upstream = ?l.upstream, routes = l.routes.len(), "reload: listener added");
            }
            (Some(_), None) => {
                tracing::info!(listener = %name, "reload: listener removed");
            }
            (Some(a), Some(b)) if a != b => {
                tracing::info!(listener = %name, listen = ?b.listen, upstream = ?b.upstream, routes = b.routes.len(), "reload: listener changed");
            }
            _ => continue,
        }
        changes += 1;
    }
    let (before, after) = (&old.config.upstreams, &new.config.upstreams);
    for name in before.keys().chain(after.keys()).collect::<BTreeSet<_>>() {
        match (before.get(name), after.get(name)) {
            (None, Some(_)) => {
                tracing::info!(upstream = %name, "reload: upstream added");
            }
            (Some(_), None) => {
                tracing::info!(upstream = %name, "reload: upstream removed");
            }
            (Some(a), Some(b)) if a != b => {
                if a.balance != b.balance {
                    tracing::info!(upstream = %name, from = a.balance.name(), to = b.balance.name(), "reload: balancing policy changed");
                }
                let servers = backend_changes(name, &old.pools, &new.pools);
                if servers == 0 && a.balance == b.balance {
                    tracing::info!(upstream = %name, "reload: upstream settings changed");
                }
                changes += servers;
            }
            _ => continue,
        }
        changes += 1;
    }
    if changes == 0 {
        tracing::info!("reload: nothing changed");
    }
}

/// Logs the backends of upstream `name` added, removed or changed; returns how many.
fn backend_changes(
    name: &str,
    before: &std::collections::HashMap<String, Arc<crate::upstream::Pool>>,
    after: &std::collections::HashMap<String, Arc<crate::upstream::Pool>>,
) -> usize {
    let (Some(old), Some(new)) = (before.get(name), after.get(name)) else {
        return 0;
    };
    let mut n = 0;
    for b in new.backends() {
        match old.backends().iter().find(|o| o.addr == b.addr) {
            None => {
                tracing::info!(upstream = %name, backend = %b.label, weight = b.weight, backup = b.backup, down = b.down, "reload: backend added");
            }
            Some(o) if (o.weight, o.backup, o.down) != (b.weight, b.backup, b.down) => {
                tracing::info!(upstream = %name, backend = %b.label, weight = b.weight, backup = b.backup, down = b.down, "reload: backend changed (its state is kept)");
            }
            Some(_) => continue,
        }
        n += 1;
    }
    for o in old.backends() {
        if !new.backends().iter().any(|b| b.addr == o.addr) {
            tracing::info!(upstream = %name, backend = %o.label, in_flight = o.live.in_flight(), "reload: backend removed; its requests in progress finish");
            n += 1;
        }
    }
    n
}

/// Settings read once at start: a reload that changes them says they wait for a restart.
fn warn_restart_only(old: &Config, new: &Config) {
    let pending = [
        ("admin", old.admin != new.admin),
        ("log", old.log != new.log),
        ("workers", old.workers != new.workers),
        ("log_level", old.log_level != new.log_level),
        ("pid_file", old.pid_file != new.pid_file),
    ];
    for (key, changed) in pending {
        if changed {
            tracing::warn!(
                key,
                "reload: `{key}` changed; it takes effect at the next restart (or `rproxy -s upgrade`)"
            );
        }
    }
}
