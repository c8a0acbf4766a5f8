//! What a client connection is doing, for the timeouts hyper does not enforce the way a proxy
//! needs them.
//!
//! hyper's HTTP/1 header timeout starts as soon as a keep-alive connection goes idle, so it
//! cannot tell "slow request head" from "idle between requests". rproxy tracks both here:
//! requests in progress (a guard per request), when the connection last became idle, and when
//! the first byte of a new request head arrived. A watchdog task per connection reads this.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::ListenerMetrics;

const NONE: u64 = u64::MAX;

#[derive(Debug)]
pub struct ConnActivity {
    epoch: Instant,
    active: AtomicU64,
    requests: AtomicU64,
    /// Milliseconds since `epoch` when the connection last became idle.
    idle_since: AtomicU64,
    /// Milliseconds since `epoch` of the first byte read while idle, or `NONE`.
    head_started: AtomicU64,
    /// What `HeadScan` found in the raw head of the request now arriving.
    head_flags: AtomicU8,
    /// Whether the last request left the connection at a clean message boundary, so that it
    /// may be parked while idle (see `http1`).
    parkable: AtomicBool,
}

/// Held while a request is in progress (until its response body is done or dropped).
#[derive(Debug)]
pub struct ActiveRequest(Arc<ConnActivity>);

/// What ends with a request's response: the connection's activity guard and the listener's
/// request metrics, recorded with the time from the request's arrival.
#[derive(Debug)]
pub struct RequestEnd {
    _active: ActiveRequest,
    /// The listener's metrics and when the request arrived; `None` when no metrics are
    /// recorded: then nothing needs the duration (two clock reads) or the handles.
    timed: Option<(Arc<ListenerMetrics>, Instant)>,
}

impl RequestEnd {
    pub(crate) fn new(active: ActiveRequest, metrics: &Arc<ListenerMetrics>) -> Self {
        RequestEnd {
            _active: active,
            timed: crate::metrics::recording().then(|| (Arc::clone(metrics), Instant::now())),
        }
    }

    /// Records the request as answered with `status` (the activity guard goes with `self`).
    pub(crate) fn finish(self, status: u16) {
        if let Some((metrics, started)) = self.timed {
            metrics.request(status, started.elapsed());
        }
    }
}

/// Why the watchdog wants the connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A request head (or the first bytes of a new connection) did not arrive in time.
    HeaderTimeout,
    /// The connection sat idle between requests for the keep-alive timeout.
    Idle,
}

impl ConnActivity {
    pub fn new() -> Arc<Self> {
        Arc::new(ConnActivity {
            epoch: Instant::now(),
            active: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(NONE),
            head_flags: AtomicU8::new(0),
            parkable: AtomicBool::new(false),
        })
    }

    /// The activity of a connection served again after waiting in the idle lot: idle after
    /// a request, from now.
    pub fn resumed() -> Arc<Self> {
        let activity = Self::new();
        activity.requests.store(1, Ordering::Relaxed);
        activity.parkable.store(true, Ordering::Relaxed);
        activity
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    pub fn begin(self: &Arc<Self>) -> ActiveRequest {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(NONE, Ordering::Release);
        ActiveRequest(Arc::clone(self))
    }

    /// Called by the connection's reader after bytes arrived. True when these bytes begin a
    /// new request head (the connection was idle and nothing of a head had arrived yet).
    pub fn bytes_read(&self) -> bool {
        let starts_head = self.active.load(Ordering::Acquire) == 0
            && self.head_started.load(Ordering::Relaxed) == NONE;
        if starts_head {
            self.head_started.store(self.now_ms(), Ordering::Release);
        }
        starts_head
    }

    pub(crate) fn add_head_flags(&self, flags: u8) {
        self.head_flags.fetch_or(flags, Ordering::AcqRel);
    }

    /// What the raw head of the request now starting carried (see `head_scan`); clears it.
    pub(crate) fn take_head_flags(&self) -> u8 {
        self.head_flags.swap(0, Ordering::AcqRel)
    }

    /// Whether the connection may be parked now: no request in progress, nothing of a new
    /// head read, and the last request left it `parkable`.
    pub(crate) fn idle(&self) -> bool {
        self.active.load(Ordering::Acquire) == 0
            && self.head_started.load(Ordering::Acquire) == NONE
            && self.parkable.load(Ordering::Acquire)
    }

    /// Says whether the request now in progress leaves the connection parkable once answered.
    pub(crate) fn set_parkable(&self, parkable: bool) {
        self.parkable.store(parkable, Ordering::Release);
    }

    /// When a parked connection (idle after a request, nothing of a new head read: see
    /// `http1`) is closed: what `watch` would wait for in that state, as one deadline.
    pub(crate) fn keepalive_deadline(&self, keepalive: Duration) -> Instant {
        let idle = self.idle_since.load(Ordering::Acquire);
        self.at(idle.saturating_add(ms(keepalive)))
    }

    /// The instant `ms` milliseconds after `epoch`, as the timestamps here count.
    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Resolves when the connection should be closed: a request head took longer than
    /// `header_timeout` (HTTP/1 only: on HTTP/2 bytes between requests are control frames),
    /// or no request was in progress for `keepalive` (before the first request, for
    /// `header_timeout`).
    pub async fn watch(
        &self,
        header_timeout: Duration,
        keepalive: Duration,
        http1: bool,
    ) -> Expiry {
        loop {
            let now = self.now_ms();
            let (deadline, expiry) = if self.active.load(Ordering::Acquire) > 0 {
                // Busy: body timeouts guard the request itself; look again later.
                (now + ms(keepalive.min(header_timeout)), None)
            } else {
                let head = self.head_started.load(Ordering::Acquire);
                let idle = self.idle_since.load(Ordering::Acquire);
                if http1 && head != NONE {
                    (
                        head.saturating_add(ms(header_timeout)),
                        Some(Expiry::HeaderTimeout),
                    )
                } else if self.requests() == 0 {
                    (
                        idle.saturating_add(ms(header_timeout)),
                        Some(Expiry::HeaderTimeout),
                    )
                } else {
                    (idle.saturating_add(ms(keepalive)), Some(Expiry::Idle))
                }
            };
            if let Some(expiry) = expiry
                && now >= deadline
            {
                return expiry;
            }
            // Idle between HTTP/1 requests, look again at least every header timeout: a head
            // that starts meanwhile is noticed by then and timed from its first byte, so it
            // gets exactly the header timeout, not what is left of the keep-alive one.
            let wake = if http1 && expiry == Some(Expiry::Idle) {
                deadline.min(now.saturating_add(ms(header_timeout)))
            } else {
                deadline
            };
            tokio::time::sleep_until(self.at(wake)).await;
        }
    }
}

/// Milliseconds, as the timestamps above count them (a duration too long for them stays far
/// off rather than wrapping).
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(NONE / 2)
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        let conn = &self.0;
        conn.idle_since.store(conn.now_ms(), Ordering::Release);
        conn.active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `watch` has still not ended after `wait`.
    async fn still_waiting(watch: &mut (impl Future + Unpin), wait: Duration) -> bool {
        tokio::time::timeout(wait, watch).await.is_err()
    }

    #[tokio::test(start_paused = true)]
    async fn silent_new_connection_hits_the_header_timeout() {
        let a = ConnActivity::new();
        let t0 = Instant::now();
        let e = a
            .watch(Duration::from_secs(10), Duration::from_secs(75), true)
            .await;
        assert_eq!(e, Expiry::HeaderTimeout);
        assert_eq!(t0.elapsed().as_secs(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_after_a_request_uses_keepalive_and_a_started_head_the_header_timeout() {
        let a = ConnActivity::new();
        drop(a.begin());
        let t0 = Instant::now();
        let e = a
            .watch(Duration::from_secs(10), Duration::from_secs(75), true)
            .await;
        assert_eq!((e, t0.elapsed().as_secs()), (Expiry::Idle, 75));
        // A parked connection's deadline is the same.
        assert_eq!(
            a.keepalive_deadline(Duration::from_secs(75)),
            t0 + Duration::from_secs(75)
        );

        let a = ConnActivity::new();
        drop(a.begin());
        tokio::time::advance(Duration::from_secs(30)).await;
        a.bytes_read();
        let t0 = Instant::now();
        let e = a
            .watch(Duration::from_secs(10), Duration::from_secs(75), true)
            .await;
        assert_eq!((e, t0.elapsed().as_secs()), (Expiry::HeaderTimeout, 10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_starts_while_the_watchdog_waits_gets_the_header_timeout() {
        let a = ConnActivity::new();
        drop(a.begin());
        let t0 = Instant::now();
        let watch = a.watch(Duration::from_secs(10), Duration::from_secs(75), true);
        tokio::pin!(watch);
        // The watchdog is already waiting when the first byte of the next head arrives.
        assert!(still_waiting(&mut watch, Duration::from_secs(33)).await);
        a.bytes_read();
        assert_eq!(watch.await, Expiry::HeaderTimeout);
        assert_eq!(t0.elapsed().as_secs(), 43);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_progress_is_never_timed_out_here() {
        let a = ConnActivity::new();
        let req = a.begin();
        let watch = a.watch(Duration::from_secs(1), Duration::from_secs(1), true);
        tokio::pin!(watch);
        assert!(still_waiting(&mut watch, Duration::from_secs(3600)).await);
        drop(req);
        let t0 = Instant::now();
        assert_eq!(watch.await, Expiry::Idle);
        assert!(t0.elapsed() <= Duration::from_secs(2));
    }
}
