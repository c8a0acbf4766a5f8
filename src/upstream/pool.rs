//! A pool of backends (one `[upstreams.NAME]`): who may be chosen, and in which tier.
//!
//! The router hands a request to a pool; the pool asks its balancer for a primary backend and,
//! when no primary is left (all down or already tried), for a backup. That decision, and the
//! "nothing left" outcome, live here and nowhere else. Per-backend live numbers sit in an `Arc`
//! keyed by the backend's address so that a rebuilt pool (reload) can carry them over.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use http::uri::Authority;

use crate::balancer::{
    Balancer, ConsistentHash, IpHash, KeyHash, LeastConn, Loads, PickContext, RandomTwo,
    RoundRobin, Tried,
};
use crate::config::{
    BalancePolicy, HealthCheckConfig, KeyTemplate, PassiveHealth, ResolvedServer, UpstreamConfig,
};
use crate::metrics::{BackendMetrics, PoolMetrics};

use super::client::{UpstreamClient, build_client};
use super::latency::LatencyWindow;
use super::retry::RetryRules;
use super::slow_start::SlowStart;
use super::sticky::Sticky;

/// One backend address of a pool.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    /// The server as written in the configuration (a name or an address).
    pub written: String,
    pub weight: u32,
    pub backup: bool,
    pub down: bool,
    /// `addr` as a URI authority, built once for every request's URI.
    pub authority: Authority,
    pub live: Arc<BackendLive>,
    pub metrics: Arc<BackendMetrics>,
}

impl Backend {
    /// May take requests now: not `down` in the configuration, and healthy.
    pub fn in_rotation(&self) -> bool {
        !self.down && self.live.healthy()
    }

    /// Publishes the active checks' verdict (rotation, `rproxy_backend_up`, `/status`).
    pub(crate) fn set_healthy(&self, healthy: bool) {
        if healthy {
            // Passing its checks brings a backend back whatever passive health said.
            self.live.passive_out_until.store(0, Ordering::Release);
        }
        let was = self.live.unhealthy.swap(!healthy, Ordering::AcqRel);
        if was == healthy {
            // A change (was unhealthy, now healthy, or the reverse).
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.live.state_since.store(now, Ordering::Relaxed);
            self.metrics.state_change(healthy);
        }
        self.metrics
            .up
            .set(if healthy && !self.down { 1.0 } else { 0.0 });
    }

    /// Counts a request as started on this backend; the count drops again when the guard is
    /// dropped, whatever way the request ends.
    pub(crate) fn start(&self) -> InFlightGuard {
        self.live.in_flight.fetch_add(1, Ordering::Relaxed);
        self.live.requests.fetch_add(1, Ordering::Relaxed);
        self.metrics.in_flight.increment(1.0);
        InFlightGuard {
            live: Arc::clone(&self.live),
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// Numbers that change while traffic flows; shared across threads and kept across reloads.
#[derive(Debug, Default)]
pub struct BackendLive {
    /// Shared with the load-aware balancers.
    in_flight: Arc<AtomicU64>,
    requests: AtomicU64,
    failures: AtomicU64,
    /// Time to response head over the last minute.
    pub latency: LatencyWindow,
    /// Failed its active checks (healthy by default).
    unhealthy: AtomicBool,
    /// When the health state last changed (Unix seconds; 0: never).
    state_since: AtomicU64,
    /// The last check's result: 0 none yet, 1 passed, 2 failed.
    last_check: AtomicU8,
    /// Passive health: failures in the current window, when the window began, and until when
    /// the backend is left out (milliseconds on the process clock; 0: not out).
    passive_fails: AtomicU64,
    passive_window: AtomicU64,
    passive_out_until: AtomicU64,
    /// Where the backend is in its slow-start ramp, if in one.
    pub slow_start: SlowStart,
}

/// Milliseconds on a process-wide monotonic clock, for passive-health windows.
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    u64::try_from(
        START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
    .saturating_add(1)
}

impl BackendLive {
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub(crate) fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Neither failing its active checks nor left out by passive health. Called for every
    /// candidate of every pick, so the clock is read only while a backend is actually out.
    pub fn healthy(&self) -> bool {
        if self.unhealthy.load(Ordering::Acquire) {
            return false;
        }
        let until = self.passive_out_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        if until > now_ms() {
            return false;
        }
        // Its time out is over: clear it, so later picks skip the clock again, and let it
        // ramp up (when the pool has a slow start) rather than take its full share at once.
        if self
            .passive_out_until
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.slow_start.begin();
        }
        true
    }

    /// A request to this backend failed (connect, timeout, reset, or a `fail_on_status`).
    /// Returns true when that left the backend out for `fail_timeout`.
    pub(crate) fn passive_failure(&self, passive: &PassiveHealth) -> bool {
        if passive.max_fails == 0 {
            return false;
        }
        let now = now_ms();
        let window = u64::try_from(passive.fail_timeout.as_millis()).unwrap_or(u64::MAX);
        let start = self.passive_window.load(Ordering::Acquire);
        if now.saturating_sub(start) > window {
            // A new window: earlier failures are forgotten.
            self.passive_window.store(now, Ordering::Release);
            self.passive_fails.store(0, Ordering::Release);
        }
        let fails = self.passive_fails.fetch_add(1, Ordering::AcqRel) + 1;
        if fails < u64::from(passive.max_fails) {
            return false;
        }
        self.passive_fails.store(0, Ordering::Release);
        self.passive_out_until
            .store(now.saturating_add(window), Ordering::Release);
        true
    }

    /// A request succeeded: the failure count starts over (nginx does the same).
    pub(crate) fn passive_success(&self) {
        if self.passive_fails.load(Ordering::Relaxed) > 0 {
            self.passive_fails.store(0, Ordering::Release);
        }
    }

    /// When the health state last changed, in Unix seconds, if it ever did.
    pub fn state_since(&self) -> Option<u64> {
        Some(self.state_since.load(Ordering::Relaxed)).filter(|&s| s > 0)
    }

    /// The last active check's result, if one ran.
    pub fn last_check(&self) -> Option<bool> {
        match self.last_check.load(Ordering::Relaxed) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }

    pub(crate) fn record_check(&self, passed: bool) {
        self.last_check
            .store(if passed { 1 } else { 2 }, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct InFlightGuard {
    live: Arc<BackendLive>,
    metrics: Arc<BackendMetrics>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.live.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.metrics.in_flight.decrement(1.0);
    }
}

/// Per-pool timeouts, read on every request.
#[derive(Debug, Clone, Copy)]
pub struct PoolTimeouts {
    pub response: Duration,
    pub body: Duration,
}

#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    /// Primaries first, then backups, each in file order. Indices into this are what `Tried`
    /// holds for one request; they are never kept beyond it.
    backends: Vec<Arc<Backend>>,
    primaries: usize,
    primary_balancer: Box<dyn Balancer>,
    backup_balancer: Box<dyn Balancer>,
    pub(crate) client: UpstreamClient,
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
    /// When every backend is unhealthy: send to them anyway (true) or find none (503).
    fail_open: bool,
    /// Whether the pool is in a fail-open episode, so it is logged once per episode.
    failing_open: AtomicBool,
    /// How long a backend that comes back ramps up its share of requests.
    pub slow_start: Option<Duration>,
    /// When a failed request goes to another backend, and the budget for that.
    pub(crate) retry: RetryRules,
}

impl Pool {
    pub fn new(config: &UpstreamConfig, servers: Vec<ResolvedServer>) -> Self {
        let (primary, backup): (Vec<_>, Vec<_>) =
            servers.into_iter().partition(|s| !s.config.backup);
        let primaries = primary.len();
        let backends: Vec<Arc<Backend>> = primary
            .into_iter()
            .chain(backup)
            .map(|s| Arc::new(backend(&config.name, s)))
            .collect();
        let policy = |tier: &[Arc<Backend>]| -> Box<dyn Balancer> {
            let weights = tier.iter().map(|b| b.weight);
            // Round-robin leaves `down` servers out of its cycle, as nginx does; the hashes
            // count them (nginx hashes over the whole list) and skip them when picked.
            let rr_weights = tier.iter().map(|b| if b.down { 0 } else { b.weight });
            match &config.balance {
                BalancePolicy::RoundRobin => Box::new(RoundRobin::new(rr_weights)),
                BalancePolicy::LeastConn => {
                    Box::new(LeastConn::new(rr_weights.collect(), loads(tier)))
                }
                BalancePolicy::RandomTwo => {
                    Box::new(RandomTwo::new(rr_weights.collect(), loads(tier)))
                }
                BalancePolicy::IpHash => Box::new(IpHash::new(weights)),
                BalancePolicy::Hash {
                    consistent: false, ..
                } => Box::new(KeyHash::new(weights)),
                BalancePolicy::Hash {
                    consistent: true,
                    balance_factor,
                    ..
                } => {
                    let ring =
                        ConsistentHash::new(tier.iter().map(|b| (b.written.as_str(), b.weight)));
                    Box::new(match balance_factor {
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
            .map(|c| Sticky::new(c, backends.iter().map(|b| b.addr)));
        Pool {
            name: Arc::from(config.name.as_str()),
            primary_balancer: policy(&backends[..primaries]),
            backup_balancer: policy(&backends[primaries..]),
            backends,
            primaries,
            client: build_client(config),
            metrics: PoolMetrics::new(&config.name),
            sticky,
            health_check: config.health_check.clone(),
            passive: config.passive.clone(),
            fail_open: config.fail_open,
            failing_open: AtomicBool::new(false),
            slow_start: config.slow_start,
            retry: RetryRules::new(&config.retry),
            hash_key: match &config.balance {
                BalancePolicy::Hash { key, .. } => Some(key.clone()),
                _ => None,
            },
            timeouts: PoolTimeouts {
                response: config.response_timeout,
                body: config.body_timeout,
            },
        }
    }

    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// Whether backend `index` may take a request now (a pinned one, say).
    pub fn available(&self, index: usize) -> bool {
        self.backends.get(index).is_some_and(|b| b.in_rotation())
    }

    /// The next backend for a request that has already been sent to `tried`: a primary if
    /// one is eligible, else a backup, else `None`.
    pub fn select(&self, ctx: &PickContext<'_>, tried: &Tried) -> Option<usize> {
        if let Some(i) = self.select_among(ctx, tried, true) {
            let i = self.slow_started(ctx, tried, i);
            if self.failing_open.swap(false, Ordering::Relaxed) {
                tracing::info!(upstream = %self.name, "healthy backends again; fail-open ended");
            }
            return Some(i);
        }
        // Nothing healthy is left. If that is only because the checks fail everywhere, a broken
        // health endpoint must not black-hole a working pool (Envoy's panic mode): send to the
        // backends anyway, unless the pool is set to answer 503.
        let unhealthy_left = self
            .backends
            .iter()
            .enumerate()
            .any(|(i, b)| !b.down && !tried.contains(i) && !b.live.healthy());
        if !unhealthy_left || !self.fail_open {
            return None;
        }
        if !self.failing_open.swap(true, Ordering::Relaxed) {
            tracing::warn!(upstream = %self.name, "every backend is unhealthy: sending requests to them anyway (all_unhealthy = \"fail_open\")");
            self.metrics.fail_open.increment(1);
        }
        self.select_among(ctx, tried, false)
    }

    fn select_among(
        &self,
        ctx: &PickContext<'_>,
        tried: &Tried,
        healthy_only: bool,
    ) -> Option<usize> {
        self.select_in_tier(ctx, tried, healthy_only, false)
            .or_else(|| self.select_in_tier(ctx, tried, healthy_only, true))
    }

    /// A pick among the primaries, or among the backups.
    fn select_in_tier(
        &self,
        ctx: &PickContext<'_>,
        tried: &Tried,
        healthy_only: bool,
        backups: bool,
    ) -> Option<usize> {
        let (balancer, offset, tier) = if backups {
            (
                &self.backup_balancer,
                self.primaries,
                &self.backends[self.primaries..],
            )
        } else {
            (&self.primary_balancer, 0, &self.backends[..self.primaries])
        };
        let eligible = |i: usize| {
            let b = &tier[i];
            (if healthy_only {
                b.in_rotation()
            } else {
                !b.down
            }) && !tried.contains(offset + i)
        };
        balancer.pick(ctx, &eligible).map(|i| offset + i)
    }

    /// Slow start: a backend in its ramp keeps the pick `i` with the probability of its share;
    /// otherwise the request goes to another pick of the same tier (backups stay for when no
    /// primary can serve). If nothing else is eligible the ramping backend serves it.
    fn slow_started(&self, ctx: &PickContext<'_>, tried: &Tried, i: usize) -> usize {
        let Some(ramp) = self.slow_start else {
            return i;
        };
        let Some(share) = self.backends[i].live.slow_start.share(ramp) else {
            return i;
        };
        if fastrand::f64() < share {
            return i;
        }
        let mut others = tried.clone();
        others.insert(i);
        self.select_in_tier(ctx, &others, true, i >= self.primaries)
            .unwrap_or(i)
    }
}

fn loads(tier: &[Arc<Backend>]) -> Loads {
    tier.iter().map(|b| Arc::clone(&b.live.in_flight)).collect()
}

fn backend(upstream: &str, s: ResolvedServer) -> Backend {
    // A SocketAddr always prints as a valid authority ("1.2.3.4:80" or "[::1]:80").
    let authority = Authority::try_from(s.addr.to_string().as_str())
        .unwrap_or_else(|_| Authority::from_static("invalid.backend"));
    // The label is the server as written; a name with several addresses gets one series per
    // address, so those carry the address instead.
    let label = if s.written == s.addr.to_string() || s.sole_address {
        s.written.clone()
    } else {
        format!("{} ({})", s.written, s.addr)
    };
    let metrics = BackendMetrics::new(upstream, &label);
    metrics.up.set(if s.config.down { 0.0 } else { 1.0 });
    Backend {
        addr: s.addr,
        written: s.written,
        weight: s.config.weight.get(),
        backup: s.config.backup,
        down: s.config.down,
        authority,
        live: Arc::default(),
        metrics,
    }
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
        let text = format!(
            "[listeners.l]\nlisten = \"127.0.0.1:0\"\nupstream = \"u\"\n[upstreams.u]\nservers = [{servers}]\n"
        );
        let config = parse(Path::new("t.toml"), &text).expect("valid test config");
        let up = &config.upstreams["u"];
        let resolved = up
            .servers
            .iter()
            .map(|s| ResolvedServer {
                addr: match s.addr {
                    crate::config::ServerAddr::Ip(a) => a,
                    crate::config::ServerAddr::Name { .. } => unreachable!("tests use IPs"),
                },
                written: s.addr.to_string(),
                sole_address: true,
                config: s.clone(),
            })
            .collect();
        Pool::new(up, resolved)
    }

    fn port(p: &Pool, i: usize) -> u16 {
        p.backends()[i].addr.port()
    }

    #[tokio::test]
    async fn backups_only_after_every_primary_is_tried() {
        let p = pool(
            r#""127.0.0.1:1", { addr = "127.0.0.1:2", backup = true }, "127.0.0.1:3", { addr = "127.0.0.1:4", down = true }"#,
        );
        let mut tried = Tried::default();
        let mut order = Vec::new();
        while let Some(i) = p.select(&CTX, &tried) {
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
    async fn all_down_leaves_nothing() {
        let p = pool(r#"{ addr = "127.0.0.1:1", down = true }"#);
        assert_eq!(p.select(&CTX, &Tried::default()), None);
    }
}
