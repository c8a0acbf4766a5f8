//! One backend of a pool: its address and settings from the configuration, its live numbers
//! (in-flight count, requests, failures, latency) and its candidacy (`health::BackendHealth`),
//! both in `Arc`s so that a rebuilt pool (reload) carries them over for the same address.
//! A request or TCP connection holds an [`InFlightGuard`] on it while in flight; with
//! `max_conns`, the guard is one of its slots (`limit.rs`).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::uri::Authority;

use crate::config::{BackendAddr, PassiveHealth, ResolvedServer};
use crate::health::BackendHealth;
use crate::metrics::BackendMetrics;
use crate::upstream::client::Keepalive;

use super::latency::LatencyWindow;
use super::limit::{HandOver, Limit};
use super::queue::WaitQueue;

/// One backend address of a pool.
#[derive(Debug)]
pub struct Backend {
    pub addr: BackendAddr,
    /// `addr` as text, made once: what the access log shows for a request it answered.
    pub addr_text: Arc<str>,
    /// The server as written in the configuration (a name or an address).
    pub written: String,
    /// Its server has `resolve = true`: the address came from DNS and may go.
    pub resolve: bool,
    /// Its `backend` label in the metrics: `written`, with the address when a name has several.
    pub label: String,
    /// The weight it is balanced with: the operator's runtime weight if set, else the file's.
    pub weight: u32,
    /// The weight the file gives it.
    pub configured_weight: u32,
    pub backup: bool,
    pub down: bool,
    /// Requests and TCP connections in flight to it at most (process-wide); `None`: no limit.
    pub max_conns: Option<NonZeroU32>,
    /// With `max_conns`: the limit its in-flight count is held to, and where a freed slot goes.
    limit: Option<Arc<Limit>>,
    /// `addr` as a URI authority, built once for every HTTP/2 request's URI (`:authority`);
    /// `localhost` for a Unix socket, which has no host (nginx's choice too).
    pub authority: Authority,
    pub live: Arc<BackendLive>,
    /// Whether it may take requests now, and why not.
    pub health: Arc<BackendHealth>,
    pub metrics: Arc<BackendMetrics>,
    /// Its idle upstream connections.
    pub(crate) keepalive: Arc<Keepalive>,
}

impl Backend {
    /// May take requests now (see `BackendHealth::is_candidate`).
    pub fn in_rotation(&self) -> bool {
        self.health.is_candidate(self.down, &self.metrics)
    }

    /// May take a request a sticky cookie pins to it (a draining backend still may).
    pub fn takes_pinned(&self) -> bool {
        self.health.takes_pinned(self.down, &self.metrics)
    }

    /// Neither `down` in the file nor drained or disabled by the operator, healthy or not.
    pub fn in_service(&self) -> bool {
        self.health.in_service(self.down)
    }

    /// Neither failing its active checks nor left out by passive health.
    pub fn healthy(&self) -> bool {
        self.health.is_healthy(&self.metrics)
    }

    /// A request to it failed: counts towards passive health. True when that took it out.
    pub(crate) fn passive_failure(&self, passive: &PassiveHealth) -> bool {
        self.health.passive_failure(passive, &self.metrics)
    }

    /// Sets its `up` and admin-state gauges from its state now: done when the snapshot it
    /// belongs to is put in force, not when it is built (a reload that fails after building
    /// must not change what the running one's series say).
    pub fn publish_gauges(&self) {
        let up = self.in_rotation();
        self.metrics.up.set(if up { 1.0 } else { 0.0 });
        self.metrics
            .admin_state
            .set(self.health.admin_mode().gauge());
    }

    /// Counts a request as started on this backend; the count drops again when the guard is
    /// dropped, whatever way the request ends. `None` when it is at its `max_conns`: with no
    /// limit this never fails and costs one branch more than counting.
    #[inline]
    pub(crate) fn try_start(&self) -> Option<InFlightGuard> {
        let limit = match &self.limit {
            None => {
                self.live.in_flight.fetch_add(1, Ordering::Relaxed);
                None
            }
            Some(limit) => {
                if !limit.try_acquire(&self.live.in_flight) {
                    return None;
                }
                Some(Arc::clone(limit))
            }
        };
        self.live.requests.fetch_add(1, Ordering::Relaxed);
        self.metrics.in_flight.increment(1.0);
        Some(InFlightGuard {
            live: Arc::clone(&self.live),
            metrics: Arc::clone(&self.metrics),
            limit,
        })
    }

    /// Whether a request started now would stay within its `max_conns`.
    pub fn has_room(&self) -> bool {
        self.limit
            .as_ref()
            .is_none_or(|l| self.live.in_flight() < l.max())
    }
}

/// Numbers that change while traffic flows; shared across threads and kept across reloads.
#[derive(Debug, Default)]
pub struct BackendLive {
    /// Shared with the load-aware balancers.
    pub(crate) in_flight: Arc<AtomicU64>,
    requests: AtomicU64,
    failures: AtomicU64,
    /// Time to response head over the last minute.
    pub latency: LatencyWindow,
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

    /// A request started on a slot handed over from one that ended (`limit.rs`).
    pub(super) fn record_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
}

/// One request (or TCP connection) in flight on a backend, for as long as it lives.
#[derive(Debug)]
pub(crate) struct InFlightGuard {
    live: Arc<BackendLive>,
    metrics: Arc<BackendMetrics>,
    /// The backend's `max_conns`, when it has one: the slot this guard holds goes to the
    /// first request waiting for it when the guard drops.
    limit: Option<Arc<Limit>>,
}

impl InFlightGuard {
    /// The backend whose slot this is, when it has a `max_conns`.
    pub(super) fn limited_addr(&self) -> Option<&BackendAddr> {
        self.limit.as_ref().map(|l| l.addr())
    }

    /// A guard for the same slot, for the request it is handed to: the count does not move.
    pub(super) fn successor(&self, limit: &Arc<Limit>) -> InFlightGuard {
        InFlightGuard {
            live: Arc::clone(&self.live),
            metrics: Arc::clone(&self.metrics),
            limit: Some(Arc::clone(limit)),
        }
    }

    pub(super) fn in_flight(&self) -> u64 {
        self.live.in_flight()
    }

    /// Its slot back to the backend: the in-flight count goes down.
    pub(super) fn free(&self) {
        self.live.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.metrics.in_flight.decrement(1.0);
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        match &self.limit {
            None => self.free(),
            Some(limit) => {
                // The waiter it was handed to is gone: the new guard holds the slot, and
                // dropping it (with the queue unlocked by now) offers the slot again.
                if let HandOver::Undelivered(successor) = limit.hand_over(self) {
                    drop(successor);
                }
            }
        }
    }
}

/// A backend for a new pool. `previous` is the same address in the pool this one replaces
/// (reload): its live state carries over, runtime overrides (admin mode, weight) included,
/// and its metric series if the label is unchanged.
/// `keepalive` is its idle connections: the previous ones when the client settings did not
/// change. `waiting` is the pool's queue, present when any of its backends has a limit.
pub(crate) fn backend(
    upstream: &str,
    s: ResolvedServer,
    previous: Option<&Backend>,
    keepalive: Arc<Keepalive>,
    waiting: Option<&Arc<WaitQueue>>,
) -> Backend {
    let addr_text: Arc<str> = Arc::from(s.addr.to_string());
    let authority = match &s.addr {
        // A SocketAddr always prints as a valid authority ("1.2.3.4:80" or "[::1]:80").
        BackendAddr::Tcp(_) => Authority::try_from(&*addr_text)
            .unwrap_or_else(|_| Authority::from_static("invalid.backend")),
        BackendAddr::Unix(_) => Authority::from_static("localhost"),
    };
    // The label is the server as written; a name with several addresses gets one series per
    // address, so those carry the address instead.
    let label = if *s.written == *addr_text || s.sole_address {
        s.written.clone()
    } else {
        format!("{} ({})", s.written, s.addr)
    };
    let live = previous.map_or_else(Arc::default, |p| Arc::clone(&p.live));
    let health = previous.map_or_else(Arc::default, |p| Arc::clone(&p.health));
    let metrics = match previous {
        Some(p) if p.label == label => Arc::clone(&p.metrics),
        _ => BackendMetrics::new(upstream, &label),
    };
    let weight = health.weight_override().unwrap_or(s.config.weight);
    let limit = s
        .config
        .max_conns
        .zip(waiting)
        .map(|(max, queue)| Arc::new(Limit::new(max, s.addr.clone(), Arc::clone(queue))));
    Backend {
        max_conns: s.config.max_conns,
        limit,
        label,
        addr: s.addr,
        resolve: s.config.resolve,
        addr_text,
        written: s.written,
        weight: weight.get(),
        configured_weight: s.config.weight.get(),
        backup: s.config.backup,
        down: s.config.down,
        authority,
        live,
        health,
        metrics,
        keepalive,
    }
}

#[cfg(test)]
mod tests {
    /// A pool of two backends balanced by `policy`, built as a snapshot builds it.
    fn pool_of_two(policy: &str) -> crate::upstream::pool::Pool {
        crate::upstream::pool::test_pool(
            "\"127.0.0.1:1\", \"127.0.0.1:2\"",
            &format!("balance = \"{policy}\""),
        )
    }

    /// What the pool picks for a new request, `n` times.
    fn picks(pool: &crate::upstream::pool::Pool, n: usize) -> Vec<usize> {
        let ctx = crate::balancer::PickContext {
            client_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            key: b"",
        };
        let tried = crate::balancer::Tried::default();
        (0..n)
            .map(|_| match pool.select(&ctx, &tried) {
                crate::upstream::pool::Pick::Backend(i) => i,
                other => panic!("no backend picked: {other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_started_request_is_counted_where_the_balancer_looks_until_it_ends() {
        for policy in ["least_conn", "random_two"] {
            let pool = pool_of_two(policy);
            let busy = &pool.backends()[0];
            let in_flight = || busy.live.in_flight();
            let guard = busy.try_start().expect("no limit: a start always succeeds");
            assert_eq!((in_flight(), busy.live.requests()), (1, 1), "{policy}");
            assert_eq!(picks(&pool, 8), [1; 8], "{policy}: the busy one is avoided");

            // However the request ends, the count goes back down and the backend is picked
            // again: its guard is dropped when the request completes...
            drop(guard);
            assert_eq!(in_flight(), 0, "{policy}");
            // 64 picks: `random_two` between two idle backends picks each half the time, so
            // 8 missed backend 0 once in 256 runs.
            assert!(picks(&pool, 64).contains(&0), "{policy}");

            // ...when what holds it is dropped half-way (the client went away)...
            let guard = busy.try_start().expect("no limit: a start always succeeds");
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
            let guard = busy.try_start().expect("no limit: a start always succeeds");
            let task = tokio::spawn(async move {
                let _guard = guard;
                panic!("a request that panics");
            });
            assert!(task.await.is_err_and(|e| e.is_panic()));
            assert_eq!(in_flight(), 0, "{policy}: a panicked request");
            assert_eq!(busy.live.requests(), 3, "{policy}: requests only count up");
            assert!(picks(&pool, 64).contains(&0), "{policy}");
        }
    }

    #[tokio::test]
    async fn every_policy_balances_a_unix_backend_as_it_does_a_tcp_one() {
        let policies = [
            "",
            "balance = \"least_conn\"",
            "balance = \"random_two\"",
            "balance = \"ip_hash\"",
            "hash = { key = \"$request_uri\" }",
            "hash = { key = \"$request_uri\", consistent = true }",
        ];
        for policy in policies {
            let pool =
                crate::upstream::pool::test_pool("\"unix:/run/app.sock\", \"127.0.0.1:2\"", policy);
            assert_eq!(pool.backends()[0].label, "unix:/run/app.sock");
            let tried = crate::balancer::Tried::default();
            let mut picked = [0; 2];
            for i in 0..64u8 {
                let key = [b'/', i];
                let ctx = crate::balancer::PickContext {
                    client_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, i, 0, 1)),
                    key: &key,
                };
                let pick = || pool.select(&ctx, &tried).backend().expect("a pick");
                let first = pick();
                if policy.contains("hash") {
                    assert_eq!(pick(), first, "{policy}: one key, one backend");
                }
                picked[first] += 1;
            }
            assert!(picked[0] > 0 && picked[1] > 0, "{policy}: {picked:?}");
        }
    }
}
