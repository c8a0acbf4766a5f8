//! Building a snapshot from a validated configuration: resolve names, make pools and their
//! clients, attach each listener to its pool.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, ConfigErrors, HeaderRules, resolve_servers};
use crate::router::RouteTable;
use crate::tls::BackendTls;
use crate::upstream::{HeaderPlan, Pool};

use super::{ConnectionLimit, ListenerRuntime, RouteTo, Snapshot};

/// Builds the runtime state for `config`. Fails only when a server name cannot be resolved;
/// every such failure is reported, not just the first.
///
/// On a reload, `previous` is the running snapshot: backends in both keep their live state.
pub async fn build_snapshot(
    config: Arc<Config>,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, ConfigErrors> {
    let mut pools = HashMap::new();
    let mut errors = Vec::new();
    for (name, upstream) in &config.upstreams {
        match resolve_servers(&config, upstream).await {
            Ok(servers) => {
                if servers.iter().all(|s| s.config.down) {
                    tracing::warn!(upstream = %name, "every server of this upstream is marked down: its requests get 503");
                }
                let tls = match &upstream.tls {
                    Some(t) => match BackendTls::load(t, name, upstream.h2, &config.source) {
                        Ok(tls) => Some(Arc::new(tls)),
                        Err(e) => {
                            errors.extend(e.0);
                            continue;
                        }
                    },
                    None => None,
                };
                let before = previous.and_then(|p| p.pools.get(name)).map(|p| &**p);
                pools.insert(
                    name.clone(),
                    Arc::new(Pool::new(upstream, servers, before, tls)),
                );
            }
            Err(e) => errors.extend(e.0),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let mut listeners = HashMap::new();
    for (name, l) in &config.listeners {
        // Validation guarantees every upstream named exists; a miss here would be a bug,
        // reported as a config error rather than a panic.
        let no_rules = HeaderRules::default();
        // A route's pool with the header rules merged for it: the route's own (if a route),
        // the upstream's, the listener's.
        let pool = |upstream: &str, route: &HeaderRules| {
            let pool = pools.get(upstream).map(Arc::clone).ok_or_else(|| {
                ConfigErrors::whole_file(
                    &config.source,
                    format!("listeners.{name}: no upstream named `{upstream}`"),
                )
            })?;
            let headers = HeaderPlan::new(&[
                route,
                config
                    .upstreams
                    .get(upstream)
                    .map_or(&no_rules, |u| &u.headers),
                &l.headers,
            ]);
            Ok(RouteTo { pool, headers })
        };
        let default = l
            .upstream
            .as_deref()
            .map(|u| pool(u, &no_rules))
            .transpose()?;
        let tls = l
            .tls
            .as_ref()
            .map(|t| crate::tls::server_config(t, &config.source))
            .transpose()?;
        let routes = l
            .routes
            .iter()
            .map(|r| Ok((r.clone(), pool(&r.upstream, &r.headers)?)))
            .collect::<Result<Vec<_>, ConfigErrors>>()?;
        let connections = previous.and_then(|p| p.listener(name)).map_or_else(
            || ConnectionLimit::new(l.max_connections),
            |before| before.connections.clone(),
        );
        listeners.insert(
            name.clone(),
            Arc::new(ListenerRuntime {
                addresses: Vec::new(),
                connections,
                name: Arc::from(name.as_str()),
                routes: RouteTable::new(routes, default),
                headers: HeaderPlan::new(&[&l.headers]),
                settings: l.clone(),
                tls,
            }),
        );
    }
    Ok(Snapshot {
        trusted_proxies: config.trusted_proxies.clone(),
        config,
        listeners,
        pools,
    })
}
