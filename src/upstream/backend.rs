//! One backend of a pool: its address and settings from the configuration, and its live
//! state (in-flight count, health, passive failures, slow start, latency), which sits in an
//! `Arc` so that a rebuilt pool (reload) carries it over for the same address.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::uri::Authority;

use crate::config::{PassiveHealth, ResolvedServer};
use crate::health::HealthMachine;
use crate::metrics::BackendMetrics;

use super::keepalive::Keepalive;
use super::latency::LatencyWindow;
use super::slow_start::SlowStart;

/// One backend address of a pool.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    /// The server as written in the configuration (a name or an address).
    pub written: String,
    /// Its `backend` label in the metrics: `written`, with the address when a name has several.
    pub label: String,
    pub weight: u32,
    pub backup: bool,
    pub down: bool,
    /// `addr` as a URI authority, built once for every request's URI.
    pub authority: Authority,
    pub live: Arc<BackendLive>,
    pub metrics: Arc<BackendMetrics>,
    /// Its idle upstream connections.
    pub(crate) keepalive: Arc<Keepalive>,
}

impl Backend {
    /// May take requests now: not `down` in the configuration, and healthy.
    pub fn in_rotation(&self) -> bool {
        !self.down && self.healthy()
    }

    /// Neither failing its active checks nor left out by passive health. Called for every
    /// candidate of every pick; the call that sees a passive time out over publishes that.
    pub fn healthy(&self) -> bool {
        match self.live.health() {
            Health::Healthy => true,
            Health::Out => false,
            Health::Returned => {
                self.published(true);
                true
            }
        }
    }

    /// Publishes the active checks' verdict (rotation, `rproxy_backend_up`, `/status`).
    pub(crate) fn set_healthy(&self, healthy: bool) {
        let was_unhealthy = self.live.unhealthy.swap(!healthy, Ordering::AcqRel);
        let passive_out = if healthy && was_unhealthy {
            // Passing its checks (a rise) brings a backend back whatever passive health said.
            self.live.passive_out_until.swap(0, Ordering::AcqRel) > now_ms()
        } else {
            self.live.passive_out_until.load(Ordering::Acquire) > now_ms()
        };
        let was_in = !was_unhealthy && !passive_out;
        let is_in = healthy && (was_unhealthy || !passive_out);
        if was_in != is_in {
            self.published(is_in);
        }
    }

    /// A request to it failed (connect, timeout, reset, or a `fail_on_status`). True when
    /// that took it out for `fail_timeout`; a backend already out by its checks does not
    /// leave the rotation again.
    pub(crate) fn passive_failure(&self, passive: &PassiveHealth) -> bool {
        let out = self.live.passive_failure(passive);
        if out && !self.live.unhealthy.load(Ordering::Acquire) {
            self.published(false);
        }
        out
    }

    /// It entered or left the rotation, by its checks or passive health: one state change
    /// in the metrics, the `up` gauge, and the time on `/status`.
    fn published(&self, in_rotation: bool) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.live.state_since.store(now, Ordering::Relaxed);
        self.metrics.state_change(in_rotation);
        self.metrics
            .up
            .set(if in_rotation && !self.down { 1.0 } else { 0.0 });
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
    pub(super) in_flight: Arc<AtomicU64>,
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
    /// The active checks' rise/fall progress; `None` while the pool has no checks. Here rather
    /// than in the check task so that a reload, which restarts the tasks, keeps it.
    pub(crate) health: Mutex<Option<HealthMachine>>,
}

/// What `BackendLive::health` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Healthy,
    Out,
    /// Healthy, and this call ended a passive time out.
    Returned,
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

    /// Neither failing its active checks nor left out by passive health, read without the
    /// clock unless a backend is actually out.
    fn health(&self) -> Health {
        if self.unhealthy.load(Ordering::Acquire) {
            return Health::Out;
        }
        let until = self.passive_out_until.load(Ordering::Acquire);
        if until == 0 {
            return Health::Healthy;
        }
        if until > now_ms() {
            return Health::Out;
        }
        // Its time out is over: clear it, so later picks skip the clock again, and let it
        // ramp up (when the pool has a slow start) rather than take its full share at once.
        if self
            .passive_out_until
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.slow_start.begin();
            return Health::Returned;
        }
        Health::Healthy
    }

    /// A request to this backend failed (connect, timeout, reset, or a `fail_on_status`).
    /// Returns true when that left the backend out for `fail_timeout`: once per time out,
    /// however many requests that were already on their way to it fail with it.
    fn passive_failure(&self, passive: &PassiveHealth) -> bool {
        if passive.max_fails == 0 {
            return false;
        }
        let now = now_ms();
        let window = u64::try_from(passive.fail_timeout.as_millis()).unwrap_or(u64::MAX);
        let out_until = now.saturating_add(window);
        let mut until = self.passive_out_until.load(Ordering::Acquire);
        if until > now {
            // Already out: a request that chose it before then failed too. As in nginx, the
            // time out counts again from this failure, but it is not a new one.
            self.passive_out_until
                .fetch_max(out_until, Ordering::AcqRel);
            return false;
        }
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
        // Of failures racing to this point, one takes the backend out and reports it.
        loop {
            match self.passive_out_until.compare_exchange(
                until,
                out_until,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                // Another failure took it out meanwhile.
                Err(actual) if actual > now => return false,
                // A time out that ended was cleared meanwhile: try again from what is there.
                Err(actual) => until = actual,
            }
        }
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
pub(crate) struct InFlightGuard {
    live: Arc<BackendLive>,
    metrics: Arc<BackendMetrics>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.live.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.metrics.in_flight.decrement(1.0);
    }
}

/// A backend for a new pool. `previous` is the same address in the pool this one replaces
/// (reload): its live state carries over, and its metric series if the label is unchanged.
/// `keepalive` is its idle connections: the previous ones when the client settings did not
/// change.
pub(super) fn backend(
    upstream: &str,
    s: ResolvedServer,
    previous: Option<&Backend>,
    keepalive: Arc<Keepalive>,
) -> Backend {
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
    let live = previous.map_or_else(Arc::default, |p| Arc::clone(&p.live));
    let metrics = match previous {
        Some(p) if p.label == label => Arc::clone(&p.metrics),
        _ => BackendMetrics::new(upstream, &label),
    };
    let backend = Backend {
        label,
        addr: s.addr,
        written: s.written,
        weight: s.config.weight.get(),
        backup: s.config.backup,
        down: s.config.down,
        authority,
        live,
        metrics,
        keepalive,
    };
    let up = backend.in_rotation();
    backend.metrics.up.set(if up { 1.0 } else { 0.0 });
    backend
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn passive(max_fails: u32) -> PassiveHealth {
        PassiveHealth {
            max_fails,
            fail_timeout: Duration::from_secs(30),
            fail_on_status: Vec::new(),
        }
    }

    #[test]
    fn a_backend_goes_out_once_however_many_requests_fail_with_it() {
        let live = BackendLive::default();
        let p = passive(2);
        assert!(!live.passive_failure(&p));
        assert!(live.passive_failure(&p), "the second failure takes it out");
        assert_eq!(live.health(), Health::Out);
        // Requests that chose it before it went out fail too: no second time out.
        for _ in 0..10 {
            assert!(!live.passive_failure(&p));
        }
        assert_eq!(live.health(), Health::Out);
    }

    #[test]
    fn max_fails_zero_never_takes_a_backend_out() {
        let live = BackendLive::default();
        for _ in 0..10 {
            assert!(!live.passive_failure(&passive(0)));
        }
        assert_eq!(live.health(), Health::Healthy);
    }

    /// A pool of two backends balanced by `policy`, built as a snapshot builds it.
    fn pool_of_two(policy: &str) -> crate::upstream::pool::Pool {
        let text = format!(
            "[listeners.l]\nlisten = \"127.0.0.1:0\"\nupstream = \"u\"\n\
             [upstreams.u]\nservers = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\nbalance = \"{policy}\"\n"
        );
        let config =
            crate::config::parse(std::path::Path::new("t.toml"), &text).expect("valid test config");
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
        crate::upstream::pool::Pool::new(up, resolved, None, None)
    }

    /// What the pool picks for a new request, `n` times.
    fn picks(pool: &crate::upstream::pool::Pool, n: usize) -> Vec<usize> {
        let ctx = crate::balancer::PickContext {
            client_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            key: b"",
        };
        let tried = crate::balancer::Tried::default();
        (0..n)
            .map(|_| pool.select(&ctx, &tried).expect("a backend"))
            .collect()
    }

    #[tokio::test]
    async fn a_started_request_is_counted_where_the_balancer_looks_until_it_ends() {
        for policy in ["least_conn", "random_two"] {
            let pool = pool_of_two(policy);
            let busy = &pool.backends()[0];
            let in_flight = || busy.live.in_flight();
            let guard = busy.start();
            assert_eq!((in_flight(), busy.live.requests()), (1, 1), "{policy}");
            assert_eq!(picks(&pool, 8), [1; 8], "{policy}: the busy one is avoided");

            // However the request ends, the count goes back down and the backend is picked
            // again: its guard is dropped when the request completes...
            drop(guard);
            assert_eq!(in_flight(), 0, "{policy}");
            assert!(picks(&pool, 8).contains(&0), "{policy}");

            // ...when what holds it is dropped half-way (the client went away)...
            let guard = busy.start();
            let task = tokio::spawn(async move {
                let _guard = guard;
                std::future::pending::<()>().await;
            });
            tokio::task::yield_now().await;
            assert_eq!(in_flight(), 1, "{policy}");
            task.abort();
            assert!(task.await.is_err_and(|e| e.is_cancelled()));
            assert_eq!(in_flight(), 0, "{policy}: a cancelled request");

            // ...and when the code holding it panics.
            let guard = busy.start();
            let task = tokio::spawn(async move {
                let _guard = guard;
                panic!("a request that panics");
            });
            assert!(task.await.is_err_and(|e| e.is_panic()));
            assert_eq!(in_flight(), 0, "{policy}: a panicked request");
            assert_eq!(busy.live.requests(), 3, "{policy}: requests only count up");
            assert!(picks(&pool, 8).contains(&0), "{policy}");
        }
    }
}
