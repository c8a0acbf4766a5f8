//! Giving memory back to the system once many client connections have closed.
//!
//! Beside the flow, like `workers`: the listener tells it when a client connection opens and
//! closes (`listener::client_conn::OpenConn`), and it counts them per worker thread.
//!
//! Why it is needed: mimalloc, the `rproxy` binary's allocator, hands memory freed on a thread
//! back to the system lazily. A freed page is purged (madvise) once it has been free for 10 ms,
//! but only when that thread next passes through the allocator's slower paths. After a burst of
//! connections closes and the worker goes quiet, nothing comes to run those purges: 15 s after
//! 9,900 idle HTTPS connections had all closed, rproxy still held 86.6 of the 87.3 MB they had
//! taken (measured as `benches/idle_tls.sh` does; 2.1 MB with `MIMALLOC_PURGE_DELAY=0`, which
//! purges every freed page at once, a system call each). So when a worker has lost at least
//! half of its connections since its highest count, and at least [`MIN_CLOSED`], it asks the
//! allocator to collect its heap, once, [`SETTLE`] later: by then the closes of the same burst
//! have happened too. One collect at a time per worker, nothing on the request path, and
//! nothing while connections sit idle.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Fewer closed connections on a worker than this leave too little behind to be worth a
/// collect (an HTTPS connection takes about 9 KB, a plain one a few hundred bytes once idle);
/// a collect after 10,000 took 9 ms.
const MIN_CLOSED: usize = 256;

/// How long after the drop that calls for it the collect runs.
const SETTLE: Duration = Duration::from_secs(1);

/// One worker's count. Atomics rather than `Cell`s because the collect task resets it, and on
/// the work-stealing runtime (`RPROXY_RUNTIME=work_stealing`) that task, like a connection's
/// end, may run on another thread; on the thread-per-core workers everything here stays on one.
#[derive(Debug, Default)]
struct WorkerCount {
    open: AtomicUsize,
    /// The highest `open` since the last collect.
    peak: AtomicUsize,
    collect_pending: AtomicBool,
}

thread_local! {
    static COUNT: Arc<WorkerCount> = Arc::default();
}

/// A client connection opened on this thread.
pub(crate) fn opened() {
    COUNT.with(|count| {
        let open = count.open.fetch_add(1, Ordering::Relaxed) + 1;
        count.peak.fetch_max(open, Ordering::Relaxed);
    });
}

/// A client connection closed on this thread: schedules a collect when enough have.
pub(crate) fn closed() {
    COUNT.with(|count| {
        // Saturating: on the work-stealing runtime a connection may end on another thread
        // than the one it opened on.
        let open = count
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1)))
            .map_or(0, |n| n.saturating_sub(1));
        let peak = count.peak.load(Ordering::Relaxed);
        if !calls_for_collect(open, peak) || count.collect_pending.swap(true, Ordering::Relaxed)
        {
            return;
        }
        // Outside a runtime (a runtime being torn down drops its connections), nothing is
        // scheduled, and nothing needs to be: the process or thread is ending.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            count.collect_pending.store(false, Ordering::Relaxed);
            return;
        };
        let count = Arc::clone(count);
        runtime.spawn(async move {
            tokio::time::sleep(SETTLE).await;
            let started = std::time::Instant::now();
            collect();
            let open = count.open.load(Ordering::Relaxed);
            count.peak.store(open, Ordering::Relaxed);
            count.collect_pending.store(false, Ordering::Relaxed);
            tracing::debug!(open, peak, took = ?started.elapsed(), "freed memory handed back to the system");
        });
    });
}

/// Whether a worker down to `open` connections from `peak` should collect.
fn calls_for_collect(open: usize, peak: usize) -> bool {
    peak.saturating_sub(open) >= MIN_CLOSED && open <= peak / 2
}

/// Asks the allocator to purge this thread's freed pages now.
#[cfg(feature = "mimalloc")]
#[allow(unsafe_code)] // The crate denies `unsafe` everywhere else (Cargo.toml): one FFI call.
fn collect() {
    // SAFETY: `mi_collect` takes no pointers and may be called on any thread at any time; it
    // works on the calling thread's heap (and returns at once when the thread has none, as
    // when mimalloc is not the global allocator, in the tests that link this library).
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Without mimalloc (`--no-default-features`) the system allocator keeps to its own ways.
#[cfg(not(feature = "mimalloc"))]
fn collect() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_collect_is_called_for_by_a_large_drop_to_half_or_less() {
        assert!(calls_for_collect(0, MIN_CLOSED));
        assert!(calls_for_collect(MIN_CLOSED, 2 * MIN_CLOSED));
        assert!(calls_for_collect(5000, 10_000));
        // Too few closed, however large the share.
        assert!(!calls_for_collect(0, MIN_CLOSED - 1));
        // Many closed, but more than half still open.
        assert!(!calls_for_collect(5001, 10_000));
        assert!(!calls_for_collect(0, 0));
    }
}
