//! Kept-alive connections to one backend, waiting for the next request: nginx's `keepalive`
//! cache, one per backend.
//!
//! The client (`client/mod.rs`) takes a connection from here before it opens one, and a
//! response whose body the client received to the end gives its HTTP/1 connection back
//! (`Reuse`). The most recently used connection goes out first, so under light load a few warm
//! connections carry everything and the rest age out; when the cache is full the longest idle
//! one is closed. An HTTP/2 connection stays here while it is in use, shared by every request.
//!
//! The store sits in the `Backend`, so a request finds it without a lookup, and a reload that
//! keeps the client settings keeps it too. Idle connections are closed after the pool's
//! `keepalive_timeout` by a small task that runs only while some are idle.
//!
//! It keeps one shelf per worker thread (`crate::workers`), each with the whole
//! `keepalive_connections`, as each nginx worker process has its own `keepalive` cache: a
//! connection's hyper task runs on the worker that opened it, and a request on that worker
//! takes it, so a request and its backend connection never wake each other across threads.
//!
//! The cache is generic over what it keeps ([`Poolable`], as hyper-util's pool is), so its
//! rules are tested on stand-in connections without a network.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use parking_lot::{Mutex, MutexGuard};
use tokio::time::Instant;

use super::request_body::UpstreamRequestBody;

pub(crate) type H1Sender = http1::SendRequest<UpstreamRequestBody>;
pub(crate) type H2Sender = http2::SendRequest<UpstreamRequestBody>;

/// What the cache needs of a connection.
pub(crate) trait Poolable: Sized + Send + 'static {
    /// The peer closed it (or it failed): it must not be handed out.
    fn is_closed(&self) -> bool;
    /// A handle for one more request while the connection stays in the cache (HTTP/2, which
    /// carries many requests at once); `None` when a request takes it out (HTTP/1).
    fn share(&self) -> Option<Self>;
}

/// A connection's request side; hyper's task for the connection keeps it open while this (or a
/// clone, for HTTP/2) exists and closes it when the last one is dropped.
#[derive(Debug)]
pub(crate) enum Sender {
    H1(H1Sender),
    H2(H2Sender),
}

impl Poolable for Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    fn share(&self) -> Option<Self> {
        match self {
            Sender::H1(_) => None,
            Sender::H2(s) => Some(Sender::H2(s.clone())),
        }
    }
}

/// One backend's idle connections, with the pool's limits.
#[derive(Debug)]
pub(crate) struct Keepalive<C = Sender> {
    /// One shelf per worker, indexed by `workers::current()`.
    shelves: Box<[Mutex<Idle<C>>]>,
    /// How many idle connections are kept (`keepalive_connections`; 0: none).
    max: usize,
    /// How long one may stay idle (`keepalive_timeout`).
    timeout: Duration,
}

#[derive(Debug)]
struct Idle<C> {
    /// Oldest first; each with when it was last used.
    list: VecDeque<(C, Instant)>,
    /// Whether the task closing timed-out connections is running.
    reaping: bool,
}

impl<C: Poolable> Keepalive<C> {
    pub(crate) fn new(max: usize, timeout: Duration) -> Arc<Self> {
        Self::with_shelves(crate::workers::count(), max, timeout)
    }

    fn with_shelves(shelves: usize, max: usize, timeout: Duration) -> Arc<Self> {
        let shelves = (0..shelves.max(1))
            .map(|_| {
                Mutex::new(Idle {
                    list: VecDeque::new(),
                    reaping: false,
                })
            })
            .collect();
        Arc::new(Keepalive {
            shelves,
            max,
            timeout,
        })
    }

    /// This worker's shelf (a thread that is not a worker uses the first).
    #[inline]
    fn shelf(&self) -> (usize, MutexGuard<'_, Idle<C>>) {
        let i = crate::workers::current();
        let i = if i < self.shelves.len() { i } else { 0 };
        (i, self.shelves[i].lock())
    }

    /// A connection for the next request, if one is open: an HTTP/1 one is taken out (it
    /// carries one request at a time), an HTTP/2 one is shared and stays.
    pub(crate) fn checkout(&self) -> Option<C> {
        let (_, mut idle) = self.shelf();
        loop {
            let (conn, used) = idle.list.back_mut()?;
            if conn.is_closed() {
                // The backend closed it while it was idle.
                idle.list.pop_back();
                continue;
            }
            if let Some(shared) = conn.share() {
                *used = Instant::now();
                return Some(shared);
            }
            return idle.list.pop_back().map(|(conn, _)| conn);
        }
    }

    /// Keeps `conn` for a later request, closing the longest idle one if the cache is full.
    pub(crate) fn put(self: &Arc<Self>, conn: C) {
        if self.max == 0 || conn.is_closed() {
            return;
        }
        let (shelf, mut idle) = self.shelf();
        if idle.list.len() >= self.max {
            idle.list.pop_front();
        }
        idle.list.push_back((conn, Instant::now()));
        if !idle.reaping {
            idle.reaping = true;
            tokio::spawn(reap(Arc::downgrade(self), shelf));
        }
    }

    /// How many connections are idle (or, for HTTP/2, open) now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shelves.iter().map(|s| s.lock().list.len()).sum()
    }

    /// Closes the connections of `shelf` idle for the timeout; returns when the next one will
    /// be, if any is left.
    fn close_timed_out(&self, shelf: usize) -> Option<Instant> {
        let mut idle = self.shelves[shelf].lock();
        let now = Instant::now();
        idle.list
            .retain(|(conn, used)| !conn.is_closed() && now < *used + self.timeout);
        let next = idle.list.iter().map(|(_, used)| *used + self.timeout).min();
        if next.is_none() {
            idle.reaping = false;
        }
        next
    }
}

/// Closes one shelf's idle connections as they time out, on that shelf's worker, and ends
/// when none is left (`put` starts it again) or the backend is gone.
async fn reap<C: Poolable>(keepalive: Weak<Keepalive<C>>, shelf: usize) {
    loop {
        let Some(next) = keepalive.upgrade().and_then(|k| k.close_timed_out(shelf)) else {
            return;
        };
        tokio::time::sleep_until(next).await;
    }
}

/// An HTTP/1 connection lent to one request, given back when the response body has been read
/// to its end (and dropped with the connection otherwise: a response cut short leaves the
/// connection in an unknown state).
#[derive(Debug)]
pub(crate) struct Reuse {
    sender: H1Sender,
    keepalive: Arc<Keepalive>,
}

impl Reuse {
    pub(crate) fn new(sender: H1Sender, keepalive: &Arc<Keepalive>) -> Self {
        Reuse {
            sender,
            keepalive: Arc::clone(keepalive),
        }
    }

    /// The response was read to its end: the connection may carry another request.
    pub(crate) fn release(self) {
        let Reuse {
            mut sender,
            keepalive,
        } = self;
        if sender.is_ready() {
            keepalive.put(Sender::H1(sender));
            return;
        }
        // hyper has not yet finished with the exchange (the request body still being
        // written, say): wait for it rather than hand a busy connection to the next request.
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                keepalive.put(Sender::H1(sender));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    /// A stand-in connection: which one it is, whether its peer closed it, whether it is
    /// shared (HTTP/2), and a count of its handles still alive (a connection is closed when
    /// its last handle is dropped, as hyper's are).
    #[derive(Debug)]
    struct Conn {
        id: u32,
        closed: Arc<AtomicBool>,
        shared: bool,
        handles: Arc<AtomicUsize>,
    }

    impl Conn {
        fn new(id: u32, shared: bool) -> (Self, Arc<AtomicBool>, Arc<AtomicUsize>) {
            let closed = Arc::new(AtomicBool::new(false));
            let handles = Arc::new(AtomicUsize::new(1));
            let conn = Conn {
                id,
                closed: Arc::clone(&closed),
                shared,
                handles: Arc::clone(&handles),
            };
            (conn, closed, handles)
        }
    }

    impl Drop for Conn {
        fn drop(&mut self) {
            self.handles.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl Poolable for Conn {
        fn is_closed(&self) -> bool {
            self.closed.load(Ordering::SeqCst)
        }

        fn share(&self) -> Option<Self> {
            self.shared.then(|| {
                self.handles.fetch_add(1, Ordering::SeqCst);
                Conn {
                    id: self.id,
                    closed: Arc::clone(&self.closed),
                    shared: true,
                    handles: Arc::clone(&self.handles),
                }
            })
        }
    }

    fn alive(handles: &AtomicUsize) -> bool {
        handles.load(Ordering::SeqCst) > 0
    }

    #[tokio::test]
    async fn most_recent_first_and_the_oldest_closed_when_full() {
        let k = Keepalive::new(2, Duration::from_secs(60));
        let mut handles = Vec::new();
        for id in 0..3 {
            let (c, _, h) = Conn::new(id, false);
            handles.push(h);
            k.put(c);
        }
        assert_eq!(k.len(), 2, "the cache holds at most max");
        assert!(!alive(&handles[0]), "the oldest was closed");
        let out = k.checkout().expect("a kept connection");
        assert_eq!(out.id, 2, "the newest goes out first");
        assert_eq!(k.len(), 1, "an HTTP/1 connection leaves the cache");
    }

    #[tokio::test]
    async fn connections_the_backend_closed_are_not_handed_out() {
        let k = Keepalive::new(4, Duration::from_secs(60));
        let (old, _, _) = Conn::new(1, false);
        let (new, closed, handles) = Conn::new(2, false);
        k.put(old);
        k.put(new);
        closed.store(true, Ordering::SeqCst);
        let out = k.checkout().expect("the open one");
        assert_eq!(out.id, 1, "the closed one was passed over");
        assert!(!alive(&handles), "and dropped");
        assert_eq!(k.len(), 0);
        // A connection already closed is not kept at all.
        let (gone, closed, handles) = Conn::new(3, false);
        closed.store(true, Ordering::SeqCst);
        k.put(gone);
        assert_eq!((k.len(), alive(&handles)), (0, false));
    }

    #[tokio::test]
    async fn a_shared_connection_stays_while_it_serves() {
        let k = Keepalive::new(4, Duration::from_secs(60));
        let (h2, _, handles) = Conn::new(7, true);
        k.put(h2);
        let a = k.checkout().expect("shared");
        let b = k.checkout().expect("shared again");
        assert_eq!((a.id, b.id, k.len()), (7, 7, 1));
        assert_eq!(handles.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_time_out() {
        let k = Keepalive::new(4, Duration::from_secs(5));
        let (c, _, handles) = Conn::new(1, false);
        k.put(c);
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(k.len(), 1, "still within the timeout");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(k.len(), 0, "closed after the timeout");
        assert!(!alive(&handles));
        // A later put starts the reaper again.
        let (c, _, handles) = Conn::new(2, false);
        k.put(c);
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!((k.len(), alive(&handles)), (0, false));
    }

    #[tokio::test]
    async fn zero_keeps_nothing() {
        let k = Keepalive::new(0, Duration::from_secs(60));
        let (c, _, handles) = Conn::new(1, false);
        k.put(c);
        assert!(k.checkout().is_none());
        assert!(!alive(&handles), "closed at once");
    }

    /// Each worker takes the connections it gave back, each shelf holds `max`, and each times
    /// out on its own.
    #[tokio::test(start_paused = true)]
    async fn a_shelf_per_worker() {
        use crate::workers::as_worker;
        let k = Keepalive::with_shelves(2, 1, Duration::from_secs(5));
        let (a, _, a_alive) = Conn::new(1, false);
        let (b, _, b_alive) = Conn::new(2, false);
        as_worker(0, || k.put(a));
        as_worker(1, || k.put(b));
        assert_eq!(k.len(), 2, "one each: the limit is per shelf");
        let from_1 = as_worker(1, || k.checkout()).map(|c| c.id);
        assert_eq!(from_1, Some(2));
        assert!(
            as_worker(1, || k.checkout()).is_none(),
            "worker 0's is not lent to 1"
        );
        // A worker index past the shelves (a thread that is no worker) uses the first.
        assert_eq!(as_worker(7, || k.checkout()).map(|c| c.id), Some(1));
        let (c, _, c_alive) = Conn::new(3, false);
        as_worker(1, || k.put(c));
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(k.len(), 0, "the second shelf's reaper closed it");
        assert!(!alive(&c_alive));
        drop((a_alive, b_alive));
    }
}
