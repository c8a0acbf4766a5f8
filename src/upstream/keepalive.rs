//! Kept-alive connections to one backend, waiting for the next request: nginx's `keepalive`
//! cache, one per backend.
//!
//! The client (`client.rs`) takes a connection from here before it opens one, and a response
//! whose body the client received to the end gives its HTTP/1 connection back (`Reuse`). The
//! most recently used connection goes out first, so under light load a few warm connections
//! carry everything and the rest age out; when the cache is full the longest idle one is
//! closed. An HTTP/2 connection stays here while it is in use, shared by every request.
//!
//! The store sits in the `Backend`, so a request finds it without a lookup, and a reload that
//! keeps the client settings keeps it too. Idle connections are closed after the pool's
//! `keepalive_timeout` by a small task that runs only while some are idle.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::request_body::UpstreamRequestBody;

pub(crate) type H1Sender = http1::SendRequest<UpstreamRequestBody>;
pub(crate) type H2Sender = http2::SendRequest<UpstreamRequestBody>;

/// A connection's request side; hyper's task for the connection keeps it open while this (or a
/// clone, for HTTP/2) exists and closes it when the last one is dropped.
#[derive(Debug)]
pub(crate) enum Sender {
    H1(H1Sender),
    H2(H2Sender),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }
}

/// One backend's idle connections, with the pool's limits.
#[derive(Debug)]
pub(crate) struct Keepalive {
    idle: Mutex<Idle>,
    /// How many idle connections are kept (`keepalive_connections`; 0: none).
    max: usize,
    /// How long one may stay idle (`keepalive_timeout`).
    timeout: Duration,
}

#[derive(Debug, Default)]
struct Idle {
    /// Oldest first; each with when it was last used.
    list: VecDeque<(Sender, Instant)>,
    /// Whether the task closing timed-out connections is running.
    reaping: bool,
}

impl Keepalive {
    pub(crate) fn new(max: usize, timeout: Duration) -> Arc<Self> {
        Arc::new(Keepalive {
            idle: Mutex::new(Idle::default()),
            max,
            timeout,
        })
    }

    /// A connection for the next request, if one is open: an HTTP/1 one is taken out (it
    /// carries one request at a time), an HTTP/2 one is shared and stays.
    pub(crate) fn checkout(&self) -> Option<Sender> {
        let mut idle = self.idle.lock();
        loop {
            let (sender, used) = idle.list.back_mut()?;
            if sender.is_closed() {
                // The backend closed it while it was idle.
                idle.list.pop_back();
                continue;
            }
            if let Sender::H2(shared) = sender {
                *used = Instant::now();
                return Some(Sender::H2(shared.clone()));
            }
            return idle.list.pop_back().map(|(sender, _)| sender);
        }
    }

    /// Keeps `sender` for a later request, closing the longest idle one if the cache is full.
    pub(crate) fn put(self: &Arc<Self>, sender: Sender) {
        if self.max == 0 || sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock();
        if idle.list.len() >= self.max {
            idle.list.pop_front();
        }
        idle.list.push_back((sender, Instant::now()));
        if !idle.reaping {
            idle.reaping = true;
            tokio::spawn(reap(Arc::downgrade(self)));
        }
    }

    /// How many connections are idle (or, for HTTP/2, open) now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.idle.lock().list.len()
    }

    /// Closes connections idle for the timeout; returns when the next one will be, if any is
    /// left.
    fn close_timed_out(&self) -> Option<Instant> {
        let mut idle = self.idle.lock();
        let now = Instant::now();
        idle.list
            .retain(|(sender, used)| !sender.is_closed() && now < *used + self.timeout);
        let next = idle.list.iter().map(|(_, used)| *used + self.timeout).min();
        if next.is_none() {
            idle.reaping = false;
        }
        next
    }
}

/// Closes idle connections as they time out, and ends when none is left (`put` starts it
/// again) or the backend is gone.
async fn reap(keepalive: Weak<Keepalive>) {
    loop {
        let Some(next) = keepalive.upgrade().and_then(|k| k.close_timed_out()) else {
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
    use super::*;
    use hyper_util::rt::TokioIo;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;

    /// A sender on a real connection, and the backend's end of it.
    async fn sender() -> (H1Sender, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (sender, conn) = http1::handshake(TokioIo::new(client.expect("connect")))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        (sender, accepted.expect("accept").0)
    }

    /// Whether rproxy's side closed the connection (the backend reads end of file), waiting
    /// up to a few seconds for it.
    async fn closed(peer: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), peer.read(&mut byte)).await,
            Ok(Ok(0))
        )
    }

    #[tokio::test]
    async fn most_recent_first_and_the_oldest_closed_when_full() {
        let k = Keepalive::new(2, Duration::from_secs(60));
        let mut peers = Vec::new();
        for _ in 0..3 {
            let (s, peer) = sender().await;
            peers.push(peer);
            k.put(Sender::H1(s));
        }
        assert_eq!(k.len(), 2, "the cache holds at most max");
        assert!(closed(&mut peers[0]).await, "the oldest was closed");
        drop(k.checkout());
        assert!(closed(&mut peers[2]).await, "the newest went out first");
        assert_eq!(k.len(), 1);
    }

    #[tokio::test]
    async fn connections_the_backend_closed_are_not_handed_out() {
        let k = Keepalive::new(4, Duration::from_secs(60));
        let (s, peer) = sender().await;
        k.put(Sender::H1(s));
        drop(peer);
        let deadline = Instant::now() + Duration::from_secs(5);
        // Once hyper has seen the close, checkout must drop the connection, not hand it out.
        while let Some(s) = k.checkout() {
            assert!(
                Instant::now() < deadline,
                "closed connection still handed out"
            );
            k.put(s);
            tokio::task::yield_now().await;
        }
        assert_eq!(k.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_time_out() {
        let k = Keepalive::new(4, Duration::from_secs(5));
        let (s, _peer) = sender().await;
        k.put(Sender::H1(s));
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(k.len(), 1, "still within the timeout");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(k.len(), 0, "closed after the timeout");
        // A later put starts the reaper again.
        let (s, _peer2) = sender().await;
        k.put(Sender::H1(s));
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(k.len(), 0);
    }

    #[tokio::test]
    async fn zero_keeps_nothing() {
        let k = Keepalive::new(0, Duration::from_secs(60));
        let (s, mut peer) = sender().await;
        k.put(Sender::H1(s));
        assert!(k.checkout().is_none());
        assert!(closed(&mut peer).await);
    }
}
