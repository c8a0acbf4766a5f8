//! Building a snapshot from a validated configuration: resolve names, make pools and their
//! clients, attach each listener to its pool.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, ConfigErrors, HeaderRules, resolve_servers};
use crate::dns::Answers;
use crate::limit::Limiter;
use crate::router::RouteTable;
use crate::tls::BackendTls;
use crate::upstream::{HeaderPlan, Pool};

use super::{ConnectionLimit, ListenerRuntime, RouteTo, Snapshot};

/// Builds the runtime state for `config`. Fails only when a server name cannot be resolved;
/// every such failure is reported, not just the first.
///
/// On a reload, `previous` is the running snapshot: backends in both keep their live state.
/// `dns` is what the resolver knows of the `resolve = true` servers' names (a name without
/// an answer gives no backends, not an error).
pub async fn build_snapshot(
    config: Arc<Config>,
    previous: Option<&Snapshot>,
    dns: Arc<Answers>,
) -> Result<Snapshot, ConfigErrors> {
    let mut pools = HashMap::new();
    let mut errors = Vec::new();
    for (name, upstream) in &config.upstreams {
        match resolve_servers(&config, upstream).await {
            Ok(statics) => {
                let servers = crate::dns::servers(upstream, statics, &dns);
                if !servers.is_empty() && servers.iter().all(|s| s.config.down) {
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
    let limits: HashMap<String, Arc<Limiter>> = config
        .rate_limits
        .iter()
        .map(|(name, c)| {
            let before = previous.and_then(|p| p.limits.get(name));
            (name.clone(), Limiter::carry(c, before))
        })
        .collect();
    let mut listeners = HashMap::default();
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
        // Validation guarantees every limit named exists, as for upstreams.
        let resolve = |names: &[String]| -> Result<Box<[Arc<Limiter>]>, ConfigErrors> {
            names
                .iter()
                .map(|n| {
                    limits.get(n).map(Arc::clone).ok_or_else(|| {
                        ConfigErrors::whole_file(
                            &config.source,
                            format!("listeners.{name}: no limit named `{n}`"),
                        )
                    })
                })
                .collect()
        };
        let rate_limits = resolve(&l.rate_limits)?;
        let route_rate_limits = if l.routes.iter().any(|r| r.rate_limits.is_some()) {
            l.routes
                .iter()
                .map(|r| match &r.rate_limits {
                    Some(own) => resolve(own),
                    None => Ok(rate_limits.clone()),
                })
                .collect::<Result<_, _>>()?
        } else {
            Box::default()
        };
        listeners.insert(
            name.clone(),
            Arc::new(ListenerRuntime {
                rate_limits,
                route_rate_limits,
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
        dns,
        limits,
    })
}
