//! A pool of backends (one `[upstreams.NAME]`): who may be chosen, and in which tier.
//!
//! The router hands a request to a pool; the pool asks its balancer for a primary backend and,
//! when no primary is left (all down or already tried), for a backup. That decision, and the
//! "nothing left" outcome, live here and nowhere else. Per-backend live numbers sit in an `Arc`
//! keyed by the backend's address so that a rebuilt pool (reload) can carry them over. A
//! backend at its `max_conns` is not picked; when every one the request may go to is, the
//! request waits in the pool's queue (`limit.rs`, `queue.rs`).
//!
//! Imports `balancer`, `health` (who is a candidate) and `upstream::client` (each backend's
//! kept-alive connections); never `forward`, which calls it.

use std::sync::Arc;
use std::time::Duration;

use crate::balancer::{
    Balancer, ConsistentHash, IpHash, KeyHash, LeastConn, Loads, PickContext, RandomTwo,
    RoundRobin, Tried,
};
use crate::config::{
    BalancePolicy, HealthCheckConfig, KeyTemplate, PassiveHealth, QueueConfig, ResolvedServer,
    UpstreamConfig,
};
use crate::health::{CheckTarget, FailOpen};
use crate::metrics::PoolMetrics;

use crate::tls::BackendTls;

use super::client::{Keepalive, ResponseTimers, UpstreamClient};

mod backend;
mod latency;
mod limit;
#[cfg(test)]
mod limit_tests;
mod queue;
mod retry;
mod retry_budget;
mod rolling;
mod sticky;

pub(crate) use backend::InFlightGuard;
pub use backend::{Backend, BackendLive};
pub use latency::LatencyWindow;
pub(crate) use limit::Slot;
pub(crate) use queue::NoSlot;
pub(crate) use retry::{Attempts, RetryRules};
pub(crate) use sticky::Sticky;

use backend::backend;
use queue::WaitQueue;

/// What `select` found for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Backend(usize),
    /// Backends may take it, but every one is at its `max_conns`.
    Busy,
    /// No backend is left to try.
    Nothing,
}

impl Pick {
    /// The picked backend, if one was.
    pub fn backend(self) -> Option<usize> {
        match self {
            Pick::Backend(i) => Some(i),
            Pick::Busy | Pick::Nothing => None,
        }
    }
}

/// Per-pool timeouts, read on every request.
#[derive(Debug, Clone, Copy)]
pub struct PoolTimeouts {
    /// A TCP connection to a backend (layer 4; the HTTP client has its own copy).
    pub connect: Duration,
    pub response: Duration,
    pub body: Duration,
    /// A WebSocket tunnel with no bytes either way for this long is closed.
    pub websocket_idle: Duration,
}

#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    /// Primaries first, then backups, each in file order. Indices into this are what `Tried`
    /// holds for one request; they are never kept beyond it.
    backends: Vec<Arc<Backend>>,
    primaries: usize,
    primary_balancer: Arc<dyn Balancer>,
    backup_balancer: Arc<dyn Balancer>,
    /// What the balancers were built from; a reload with the same shape keeps them.
    shape: Shape,
    pub(crate) client: Arc<UpstreamClient>,
    client_settings: ClientSettings,
    pub timeouts: PoolTimeouts,
    pub metrics: PoolMetrics,
    /// For `balance = "hash"`: how each request's key is built.
    pub hash_key: Option<KeyTemplate>,
    /// Sticky sessions by cookie, when configured.
    pub sticky: Option<Sticky>,
    /// Active health checks, when configured (the check tasks read it).
    pub health_check: Option<HealthCheckConfig>,
    /// Passive health: what counts as a failure, and for how long it leaves a backend out.
    pub passive: PassiveHealth,
    /// When every backend is unhealthy: send to them anyway, or find none (503).
    fail_open: FailOpen,
    /// How long a backend that comes back ramps up its share of requests.
    pub slow_start: Option<Duration>,
    /// When a failed request goes to another backend, and the budget for that.
    pub(crate) retry: RetryRules,
    /// The timers that bound each attempt's wait for a response head, kept between attempts.
    pub(crate) response_timers: ResponseTimers,
    /// Requests go to the backends over HTTP/2.
    pub h2: bool,
    /// TLS to the backends (the health checks use it too).
    pub tls: Option<Arc<BackendTls>>,
    /// Some backend has a `max_conns`: picks leave out the backends at theirs.
    limited: bool,
    /// The policy hashes a key to a backend: a request whose backend is at its `max_conns`
    /// waits for it rather than moving to another.
    keyed: bool,
    /// `[queue]`: how many requests may wait for a backend slot, and for how long; `None`:
    /// 503 at once.
    pub queue: Option<QueueConfig>,
    /// The requests waiting, when some backend has a limit; kept by a reload.
    waiting: Option<Arc<WaitQueue>>,
}

impl Pool {
    /// A pool for `config` with its resolved `servers`. On a reload, `previous` is the pool of
    /// the same name being replaced: backends at the same address keep their live state, and
    /// the balancers and upstream client are kept when nothing they depend on changed, so the
    /// round-robin position and each backend's idle connections survive.
    pub fn new(
        config: &UpstreamConfig,
        servers: Vec<ResolvedServer>,
        previous: Option<&Pool>,
        tls: Option<Arc<BackendTls>>,
    ) -> Self {
        let limited = servers.iter().any(|s| s.config.max_conns.is_some());
        let waiting = limited.then(|| {
            previous
                .and_then(|p| p.waiting.clone())
                .unwrap_or_else(|| Arc::new(WaitQueue::new(&config.name)))
        });
        let (primary, backup): (Vec<_>, Vec<_>) =
            servers.into_iter().partition(|s| !s.config.backup);
        let primaries = primary.len();
        // A TLS pool always gets a new client: its CA or certificate files may have changed.
        let same_client =
            previous.filter(|p| p.client_settings == ClientSettings::of(config) && tls.is_none());
        let backends: Vec<Arc<Backend>> = primary
            .into_iter()
            .chain(backup)
            .map(|s| {
                let before = previous.and_then(|p| p.backends.iter().find(|b| b.addr == s.addr));
                let keepalive = match (same_client, before) {
                    (Some(_), Some(b)) => Arc::clone(&b.keepalive),
                    _ => Keepalive::new(config.keepalive_connections, config.keepalive_timeout),
                };
                Arc::new(backend(
                    &config.name,
                    s,
                    before.map(|b| &**b),
                    keepalive,
                    waiting.as_ref(),
                ))
            })
            .collect();
        let shape = Shape::of(config, &backends);
        let same_shape = previous.filter(|p| p.shape == shape);
        let policy = |tier: &[Arc<Backend>]| -> Arc<dyn Balancer> {
            let weights = tier.iter().map(|b| b.weight);
            // Round-robin leaves `down` servers out of its cycle, as nginx does; the hashes
            // count them (nginx hashes over the whole list) and skip them when picked.
            let rr_weights = tier.iter().map(|b| if b.down { 0 } else { b.weight });
            match &config.balance {
                BalancePolicy::RoundRobin => Arc::new(RoundRobin::new(rr_weights)),
                BalancePolicy::LeastConn => {
                    Arc::new(LeastConn::new(rr_weights.collect(), loads(tier)))
                }
                BalancePolicy::RandomTwo => {
                    Arc::new(RandomTwo::new(rr_weights.collect(), loads(tier)))
                }
                BalancePolicy::IpHash => Arc::new(IpHash::new(weights)),
                BalancePolicy::Hash {
                    consistent: false, ..
                } => Arc::new(KeyHash::new(weights)),
                BalancePolicy::Hash {
                    consistent: true,
                    balance_factor,
                    ..
                } => {
                    // A `resolve` server's addresses each get their own points (nginx's would
                    // share the name's): a backend DNS adds or removes moves only its keys.
                    let names: Vec<String> = tier
                        .iter()
                        .map(|b| {
                            if b.resolve {
                                b.addr.to_string()
                            } else {
                                b.written.clone()
                            }
                        })
                        .collect();
                    let ring = ConsistentHash::new(
                        names
                            .iter()
                            .map(String::as_str)
                            .zip(tier.iter().map(|b| b.weight)),
                    );
                    Arc::new(match balance_factor {
                        Some(f) => {
                            ring.with_balance_factor(f.get(), rr_weights.collect(), loads(tier))
                        }
                        None => ring,
                    })
                }
            }
        };
        let sticky = config
            .sticky
            .as_ref()
            .map(|c| Sticky::new(c, backends.iter().map(|b| &b.addr)));
        Pool {
            name: Arc::from(config.name.as_str()),
            primary_balancer: same_shape.map_or_else(
                || policy(&backends[..primaries]),
                |p| Arc::clone(&p.primary_balancer),
            ),
            backup_balancer: same_shape.map_or_else(
                || policy(&backends[primaries..]),
                |p| Arc::clone(&p.backup_balancer),
            ),
            client: same_client.map_or_else(
                || Arc::new(UpstreamClient::new(config, tls.clone())),
                |p| Arc::clone(&p.client),
            ),
            tls,
            client_settings: ClientSettings::of(config),
            shape,
            backends,
            primaries,
            metrics: PoolMetrics::new(&config.name),
            sticky,
            health_check: config.health_check.clone(),
            passive: config.passive.clone(),
            fail_open: FailOpen::new(config.fail_open),
            slow_start: config.slow_start,
            retry: RetryRules::new(&config.retry),
            response_timers: ResponseTimers::default(),
            h2: config.h2,
            hash_key: match &config.balance {
                BalancePolicy::Hash { key, .. } => Some(key.clone()),
                _ => None,
            },
            timeouts: PoolTimeouts {
                connect: config.connect_timeout,
                response: config.response_timeout,
                body: config.body_timeout,
                websocket_idle: config.websocket_idle_timeout,
            },
            limited,
            keyed: matches!(
                config.balance,
                BalancePolicy::IpHash | BalancePolicy::Hash { .. }
            ),
            queue: config.queue,
            waiting,
        }
    }

    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// What the health checks need of each backend that is not `down`.
    pub fn check_targets(&self) -> Vec<CheckTarget> {
        self.backends
            .iter()
            .filter(|b| !b.down)
            .map(|b| CheckTarget {
                upstream: Arc::clone(&self.name),
                addr: b.addr.clone(),
                health: Arc::clone(&b.health),
                metrics: Arc::clone(&b.metrics),
                tls: self.tls.clone(),
            })
            .collect()
    }

    /// Counts a failure towards passive health, and says so when it leaves the backend out.
    pub(crate) fn passive_failure(&self, backend: &Backend, what: &str) {
        if backend.passive_failure(&self.passive) {
            tracing::warn!(
                upstream = %self.name,
                backend = %backend.addr,
                max_fails = self.passive.max_fails,
                fail_timeout = ?self.passive.fail_timeout,
                last = what,
                "backend failed max_fails times within fail_timeout; left out for fail_timeout"
            );
        }
    }

    /// Whether backend `index` may take a request pinned to it (by a sticky cookie): as for
    /// any request, except that a draining backend still takes its pinned clients.
    pub fn available(&self, index: usize) -> bool {
        self.backends.get(index).is_some_and(|b| b.takes_pinned())
    }

    /// The next backend for a request that has already been sent to `tried`: a primary if
    /// one is eligible, else a backup; `Busy` when the tier it would come from is all at its
    /// `max_conns` (the request waits for those rather than spilling over to the backups or
    /// failing open, as HAProxy queues rather than redispatching).
    pub fn select(&self, ctx: &PickContext<'_>, tried: &Tried) -> Pick {
        match self.select_among(ctx, tried, true) {
            Pick::Backend(i) => {
                let i = self.slow_started(ctx, tried, i);
                self.fail_open.healthy_found(&self.name);
                return Pick::Backend(i);
            }
            Pick::Busy => {
                self.fail_open.healthy_found(&self.name);
                return Pick::Busy;
            }
            Pick::Nothing => {}
        }
        // Nothing healthy is left: health's fail-open rule says whether to send to the
        // unhealthy ones anyway (never to one drained or disabled by the operator).
        let unhealthy_left = self
            .backends
            .iter()
            .enumerate()
            .any(|(i, b)| b.in_service() && !tried.contains(i) && !b.healthy());
        if !self
            .fail_open
            .send_anyway(&self.name, unhealthy_left, &self.metrics)
        {
            return Pick::Nothing;
        }
        self.select_among(ctx, tried, false)
    }

    fn select_among(&self, ctx: &PickContext<'_>, tried: &Tried, healthy_only: bool) -> Pick {
        match self.select_in_tier(ctx, tried, healthy_only, false) {
            Pick::Nothing => self.select_in_tier(ctx, tried, healthy_only, true),
            found => found,
        }
    }

    /// A pick among the primaries, or among the backups.
    fn select_in_tier(
        &self,
        ctx: &PickContext<'_>,
        tried: &Tried,
        healthy_only: bool,
        backups: bool,
    ) -> Pick {
        let (balancer, offset, tier) = if backups {
            (
                &self.backup_balancer,
                self.primaries,
                &self.backends[self.primaries..],
            )
        } else {
            (&self.primary_balancer, 0, &self.backends[..self.primaries])
        };
        let candidate = |i: usize| {
            let b = &tier[i];
            (if healthy_only {
                b.in_rotation()
            } else {
                b.in_service()
            }) && !tried.contains(offset + i)
        };
        // A hashing policy picks the key's backend even when it is full: the request waits
        // for that one.
        let room_matters = self.limited && !self.keyed;
        let eligible = |i: usize| candidate(i) && (!room_matters || tier[i].has_room());
        match balancer.pick(ctx, &eligible) {
            Some(i) => Pick::Backend(offset + i),
            None if room_matters && (0..tier.len()).any(candidate) => Pick::Busy,
            None => Pick::Nothing,
        }
    }

    /// Slow start: a backend in its ramp keeps the pick `i` with the probability of its share;
    /// otherwise the request goes to another pick of the same tier (backups stay for when no
    /// primary can serve). If nothing else is eligible the ramping backend serves it.
    fn slow_started(&self, ctx: &PickContext<'_>, tried: &Tried, i: usize) -> usize {
        let Some(ramp) = self.slow_start else {
            return i;
        };
        let Some(share) = self.backends[i].health.slow_start.share(ramp) else {
            return i;
        };
        if fastrand::f64() < share {
            return i;
        }
        let mut others = tried.clone();
        others.insert(i);
        match self.select_in_tier(ctx, &others, true, i >= self.primaries) {
            Pick::Backend(other) => other,
            Pick::Busy | Pick::Nothing => i,
        }
    }
}

/// What a pool's balancers depend on: the policy and each backend's address, weight, tier and
/// `down` flag, in order.
#[derive(Debug, PartialEq)]
struct Shape {
    balance: BalancePolicy,
    backends: Vec<(crate::config::BackendAddr, u32, bool, bool)>,
}

impl Shape {
    fn of(config: &UpstreamConfig, backends: &[Arc<Backend>]) -> Self {
        Shape {
            balance: config.balance.clone(),
            backends: backends
                .iter()
                .map(|b| (b.addr.clone(), b.weight, b.backup, b.down))
                .collect(),
        }
    }
}

/// What the upstream client is built from; a reload with the same settings keeps the client
/// and the backends' idle connections.
#[derive(Debug, PartialEq)]
struct ClientSettings {
    h2: bool,
    connect: Duration,
    keepalive: Duration,
    idle_per_backend: usize,
}

impl ClientSettings {
    fn of(config: &UpstreamConfig) -> Self {
        ClientSettings {
            h2: config.h2,
            connect: config.connect_timeout,
            keepalive: config.keepalive_timeout,
            idle_per_backend: config.keepalive_connections,
        }
    }
}

fn loads(tier: &[Arc<Backend>]) -> Loads {
    tier.iter().map(|b| Arc::clone(&b.live.in_flight)).collect()
}

/// A pool of `servers` (TOML array items, addresses only) with the upstream's `extra` keys,
/// built as a snapshot builds it: for the unit tests of this folder.
#[cfg(test)]
pub(crate) fn test_pool(servers: &str, extra: &str) -> Pool {
    let text = format!(
        "[listeners.l]\nlisten = \"127.0.0.1:0\"\nupstream = \"u\"\n[upstreams.u]\nservers = [{servers}]\n{extra}\n"
    );
    let config =
        crate::config::parse(std::path::Path::new("t.toml"), &text).expect("valid test config");
    let up = &config.upstreams["u"];
    let resolved = up
        .servers
        .iter()
        .map(|s| ResolvedServer {
            addr: match &s.addr {
                crate::config::ServerAddr::Ip(a) => (*a).into(),
                crate::config::ServerAddr::Unix(path) => {
                    crate::config::BackendAddr::Unix(path.clone())
                }
                _ => unreachable!("tests use addresses"),
            },
            written: s.addr.to_string(),
            sole_address: true,
            config: s.clone(),
        })
        .collect();
    Pool::new(up, resolved, None, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use std::net::{IpAddr, Ipv4Addr};
    use std::path::Path;

    const CTX: PickContext<'static> = PickContext {
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        key: b"",
    };

    fn pool(servers: &str) -> Pool {
        test_pool(servers, "")
    }

    fn port(p: &Pool, i: usize) -> u16 {
        p.backends()[i].addr.tcp().expect("a TCP backend").port()
    }

    #[tokio::test]
    async fn backups_only_after_every_primary_is_tried() {
        let p = pool(
            r#""127.0.0.1:1", { addr = "127.0.0.1:2", backup = true }, "127.0.0.1:3", { addr = "127.0.0.1:4", down = true }"#,
        );
        let mut tried = Tried::default();
        let mut order = Vec::new();
        while let Pick::Backend(i) = p.select(&CTX, &tried) {
            tried.insert(i);
            order.push(port(&p, i));
        }
        assert_eq!(
            order,
            vec![1, 3, 2],
            "primaries, then the backup, never the down one"
        );
    }

    #[tokio::test]
    async fn drained_and_disabled_take_no_new_requests_but_drained_keeps_its_pinned_ones() {
        use crate::health::AdminMode;
        let p = pool(r#""127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3""#);
        let set = |i: usize, mode| {
            let b = &p.backends()[i];
            b.health.set_admin_mode(mode, "test", &b.metrics);
        };
        set(0, Some(AdminMode::Draining));
        set(1, Some(AdminMode::Disabled));
        for _ in 0..6 {
            assert_eq!(
                port(
                    &p,
                    p.select(&CTX, &Tried::default()).backend().expect("a pick")
                ),
                3
            );
        }
        assert!(
            p.available(0),
            "a draining backend takes its sticky clients"
        );
        assert!(!p.available(1), "a disabled one does not");
        // Taken out by the operator, they are not what fail-open sends to either.
        set(2, Some(AdminMode::Disabled));
        assert_eq!(p.select(&CTX, &Tried::default()).backend(), None);
        set(0, None);
        assert_eq!(
            port(
                &p,
                p.select(&CTX, &Tried::default()).backend().expect("a pick")
            ),
            1
        );
    }

    #[tokio::test]
    async fn a_runtime_weight_is_kept_by_the_rebuilt_pool() {
        let p = pool(r#""127.0.0.1:1", "127.0.0.1:2""#);
        let b = &p.backends()[0];
        b.health
            .set_weight_override(std::num::NonZeroU32::new(3), "test");
        let text = "[listeners.l]\nlisten = \"127.0.0.1:0\"\nupstream = \"u\"\n[upstreams.u]\nservers = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n";
        let config = parse(Path::new("t.toml"), text).expect("valid test config");
        let up = &config.upstreams["u"];
        let resolved = p
            .backends()
            .iter()
            .zip(&up.servers)
            .map(|(b, s)| ResolvedServer {
                addr: b.addr.clone(),
                written: b.written.clone(),
                sole_address: true,
                config: s.clone(),
            })
            .collect();
        let rebuilt = Pool::new(up, resolved, Some(&p), None);
        let mut counts = [0; 2];
        for _ in 0..8 {
            counts[rebuilt
                .select(&CTX, &Tried::default())
                .backend()
                .expect("a pick")] += 1;
        }
        assert_eq!(counts, [6, 2], "weights 3:1");
        assert_eq!(
            (
                rebuilt.backends()[0].weight,
                rebuilt.backends()[0].configured_weight
            ),
            (3, 1)
        );
    }

    #[tokio::test]
    async fn all_down_leaves_nothing() {
        let p = pool(r#"{ addr = "127.0.0.1:1", down = true }"#);
        assert_eq!(p.select(&CTX, &Tried::default()), Pick::Nothing);
    }
}
