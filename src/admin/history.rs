//! Recent traffic per backend, for the status page's sparklines: beside the request path, not
//! on it. A sampler task, started with the admin listener, reads every backend's request and
//! failure counters (the ones the request path keeps anyway) every 5 seconds and keeps the
//! last 5 minutes of per-interval counts per (upstream, address). `/status` shows them as each
//! backend's `history`; a backend that leaves the snapshot (reload) leaves the history at the
//! next sample.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::config::BackendAddr;
use crate::state::SharedState;
use crate::upstream::BackendLive;

/// How often the counters are read: one point of a sparkline.
pub(super) const INTERVAL: Duration = Duration::from_secs(5);
/// How many intervals are kept: 5 minutes.
pub(super) const KEPT: usize = 60;

/// The last `KEPT` intervals of every backend, keyed by upstream and address.
#[derive(Debug, Default)]
pub(super) struct History {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    series: HashMap<(String, BackendAddr), Series>,
    /// False until the first sample: the backends it finds were there before the sampler
    /// started, so their counts so far are a baseline, not the first interval.
    started: bool,
}

#[derive(Debug)]
struct Series {
    /// Whose counters these are. A server removed from the file and added back between two
    /// samples has new counters (from zero), which this tells apart from the old ones.
    live: Arc<BackendLive>,
    last_requests: u64,
    last_errors: u64,
    requests: VecDeque<u64>,
    errors: VecDeque<u64>,
}

impl Series {
    fn push(&mut self, requests: u64, errors: u64) {
        if self.requests.len() == KEPT {
            self.requests.pop_front();
            self.errors.pop_front();
        }
        self.requests.push_back(requests);
        self.errors.push_back(errors);
    }
}

/// One backend's history as `/status` shows it: requests and failed requests per interval,
/// oldest first.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct HistoryView {
    pub interval_s: u64,
    pub requests: Vec<u64>,
    pub errors: Vec<u64>,
}

impl History {
    /// Takes one sample of `backends`, every backend of the snapshot as (upstream, address,
    /// its counters); any other backend's history is dropped.
    pub(super) fn record<'a>(
        &self,
        backends: impl IntoIterator<Item = (&'a str, &'a BackendAddr, &'a Arc<BackendLive>)>,
    ) {
        let mut inner = self.inner.lock();
        let first = !inner.started;
        inner.started = true;
        let mut kept = HashMap::with_capacity(inner.series.len());
        for (upstream, addr, live) in backends {
            let key = (upstream.to_string(), addr.clone());
            let (requests, errors) = (live.requests(), live.failures());
            let series = match inner.series.remove(&key) {
                Some(mut s) if Arc::ptr_eq(&s.live, live) => {
                    s.push(
                        requests.saturating_sub(s.last_requests),
                        errors.saturating_sub(s.last_errors),
                    );
                    s
                }
                old => {
                    // New counters: they were at zero when the last sample was taken (they did
                    // not exist yet), so everything they hold happened in this interval. The
                    // same server's points from before it was removed stay.
                    let (points, error_points) =
                        old.map_or_else(Default::default, |s| (s.requests, s.errors));
                    let mut s = Series {
                        live: Arc::clone(live),
                        last_requests: 0,
                        last_errors: 0,
                        requests: points,
                        errors: error_points,
                    };
                    if !first {
                        s.push(requests, errors);
                    }
                    s
                }
            };
            kept.insert(
                key,
                Series {
                    last_requests: requests,
                    last_errors: errors,
                    ..series
                },
            );
        }
        inner.series = kept;
    }

    /// The history of `addr` in `upstream`; empty until it has been sampled twice.
    pub(super) fn view(&self, upstream: &str, addr: &BackendAddr) -> HistoryView {
        let inner = self.inner.lock();
        let series = inner.series.get(&(upstream.to_string(), addr.clone()));
        HistoryView {
            interval_s: INTERVAL.as_secs(),
            requests: series.map_or_else(Vec::new, |s| s.requests.iter().copied().collect()),
            errors: series.map_or_else(Vec::new, |s| s.errors.iter().copied().collect()),
        }
    }
}

/// Samples the published snapshot every `INTERVAL` until `stop`.
pub(super) async fn sample(history: Arc<History>, state: SharedState, stop: CancellationToken) {
    let mut tick = tokio::time::interval(INTERVAL);
    // After a stall (a suspended machine), go on from now rather than catch up in a burst of
    // empty points.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let snapshot = state.load();
        history.record(snapshot.pools.values().flat_map(|pool| {
            pool.backends()
                .iter()
                .map(|b| (&*pool.name, &b.addr, &b.live))
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use crate::state::{Snapshot, build_snapshot};
    use arc_swap::ArcSwap;
    use std::path::Path;

    async fn snapshot(servers: &str, previous: Option<&Snapshot>) -> Snapshot {
        let text = format!(
            "[listeners.web]\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\n[upstreams.app]\nservers = [{servers}]\n"
        );
        let config = parse(Path::new("t.toml"), &text).expect("valid test config");
        build_snapshot(Arc::new(config), previous, Arc::default())
            .await
            .expect("IP addresses need no resolution")
    }

    fn requests(state: &SharedState, port: u16, n: usize, failed: usize) {
        let snapshot = state.load();
        let b = snapshot.pools["app"]
            .backends()
            .iter()
            .find(|b| b.addr.tcp().map(|a| a.port()) == Some(port))
            .expect("backend in the snapshot");
        for i in 0..n {
            let _done = b.try_start().expect("no limit: a start always succeeds");
            if i < failed {
                b.live.record_failure();
            }
        }
    }

    fn addr(port: u16) -> BackendAddr {
        BackendAddr::from(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[tokio::test(start_paused = true)]
    async fn each_interval_counts_its_own_requests_and_errors() {
        let state: SharedState = Arc::new(ArcSwap::from_pointee(
            snapshot(r#""127.0.0.1:1", "127.0.0.1:2""#, None).await,
        ));
        // Counted before the sampler starts: the baseline, not a point.
        requests(&state, 1, 7, 0);
        let history = Arc::new(History::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(sample(
            Arc::clone(&history),
            Arc::clone(&state),
            stop.clone(),
        ));
        // Samples are taken at 0 s, 5 s, 10 s...: act in the middle of each interval.
        tokio::time::sleep(INTERVAL / 2).await;
        assert_eq!(history.view("app", &addr(1)).requests, Vec::<u64>::new());

        requests(&state, 1, 3, 1);
        tokio::time::sleep(INTERVAL).await;
        requests(&state, 2, 4, 4);
        tokio::time::sleep(INTERVAL).await;
        tokio::time::sleep(INTERVAL).await;
        assert_eq!(
            history.view("app", &addr(1)),
            HistoryView {
                interval_s: 5,
                requests: vec![3, 0, 0],
                errors: vec![1, 0, 0],
            }
        );
        assert_eq!(history.view("app", &addr(2)).requests, vec![0, 4, 0]);
        assert_eq!(history.view("app", &addr(2)).errors, vec![0, 4, 0]);
        assert_eq!(history.view("other", &addr(1)).requests, Vec::<u64>::new());

        stop.cancel();
        task.await.expect("sampler ends on stop");
    }

    #[tokio::test(start_paused = true)]
    async fn five_minutes_are_kept_and_removed_backends_dropped() {
        let state: SharedState = Arc::new(ArcSwap::from_pointee(
            snapshot(r#""127.0.0.1:1", "127.0.0.1:2""#, None).await,
        ));
        let history = Arc::new(History::default());
        let stop = CancellationToken::new();
        tokio::spawn(sample(
            Arc::clone(&history),
            Arc::clone(&state),
            stop.clone(),
        ));
        tokio::time::sleep(INTERVAL / 2).await;
        for i in 0..KEPT + 10 {
            requests(&state, 1, i, 0);
            tokio::time::sleep(INTERVAL).await;
        }
        let kept = history.view("app", &addr(1)).requests;
        let expected: Vec<u64> = (10..KEPT as u64 + 10).collect();
        assert_eq!(kept, expected, "the last {KEPT} intervals, oldest first");

        // A reload without :2: its history goes at the next sample; :1 keeps its counters.
        let before = state.load_full();
        let next = snapshot(r#""127.0.0.1:1""#, Some(before.as_ref())).await;
        state.store(Arc::new(next));
        requests(&state, 1, 2, 0);
        tokio::time::sleep(INTERVAL).await;
        assert!(history.view("app", &addr(2)).requests.is_empty());
        assert_eq!(history.view("app", &addr(1)).requests.last(), Some(&2));

        // :2 back, with new counters (from zero): what they hold is its first interval.
        let before = state.load_full();
        let next = snapshot(r#""127.0.0.1:1", "127.0.0.1:2""#, Some(before.as_ref())).await;
        state.store(Arc::new(next));
        requests(&state, 2, 5, 1);
        tokio::time::sleep(INTERVAL).await;
        assert_eq!(history.view("app", &addr(2)).requests, vec![5]);
        assert_eq!(history.view("app", &addr(2)).errors, vec![1]);
        stop.cancel();
    }
}
