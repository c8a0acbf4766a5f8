//! The threads that serve: `workers = N` is N threads, each running a single-threaded tokio
//! runtime of its own, as nginx's worker processes and Pingora's non-stealing mode do.
//!
//! Beside the flow rather than in it: the listener (`listener/sockets.rs`) runs an accept loop
//! for every socket on every worker, so a connection is accepted, served, parked in the idle
//! lot and proxied on one thread from start to end; the upstream keep-alive cache
//! (`upstream/client/keepalive.rs`) keeps one shelf per worker, so a request takes a backend
//! connection whose task runs on its own thread. What must be exact across the process stays
//! shared: the snapshot with the balancers' state (nginx's round-robin order, least_conn
//! counts), health, limits and metrics.
//!
//! Why not tokio's multi-threaded runtime: its shared scheduler cost about 700 instructions a
//! request more, and it woke the peers (clients, backends) three to four times as often, each
//! a cross-CPU interrupt (`benches/RESULTS.md`, "Thread per core" and the census): 13-18% less
//! CPU per request over kept-alive connections, though 4-10% more when each request opens a
//! connection (see `listener/sockets.rs`; `RPROXY_RUNTIME=work_stealing`, read in `main.rs`,
//! goes back). The main thread is worker 0: it also runs what is not per connection (signals,
//! reloads, health checks, the admin listener, DNS), so `workers = 1` is one thread doing
//! everything, as one nginx worker.
//!
//! A worker is known by a thread-local index, 0 on the main thread and on any thread that is
//! not a worker (tests, the blocking pool).

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// How many workers this process runs (1 until `start` says otherwise).
static COUNT: AtomicUsize = AtomicUsize::new(1);

/// This thread's worker, `0..count()`.
#[inline]
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// How many workers there are: the keep-alive cache keeps a shelf for each.
pub fn count() -> usize {
    COUNT.load(Ordering::Relaxed)
}

/// The workers beyond the main thread, running until `stop`.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    threads: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

impl Workers {
    /// Starts workers 1 to `n - 1`, each on a thread of its own with a single-threaded runtime
    /// (the caller's thread is worker 0). Called once, before anything is built that keeps a
    /// shelf per worker.
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let n = n.max(1);
        COUNT.store(n, Ordering::Relaxed);
        let stop = CancellationToken::new();
        let mut workers = Workers {
            handles: Vec::with_capacity(n - 1),
            threads: Vec::with_capacity(n - 1),
            stop: stop.clone(),
        };
        for index in 1..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            workers.handles.push(runtime.handle().clone());
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("rproxy-worker-{index}"))
                .spawn(move || {
                    INDEX.with(|i| i.set(index));
                    runtime.block_on(stop.cancelled());
                    // Whatever is left (connections past the drain timeout) is dropped here.
                    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
                })?;
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// The runtimes of workers 1 to N - 1, in order.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// Ends the workers once the server has drained: their runtimes drop what is left.
    pub fn stop(self) {
        self.stop.cancel();
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Runs `f` as worker `index` would see it (the keep-alive cache's tests).
#[cfg(test)]
pub(crate) fn as_worker<T>(index: usize, f: impl FnOnce() -> T) -> T {
    let before = INDEX.with(|i| i.replace(index));
    let out = f();
    INDEX.with(|i| i.set(before));
    out
}
