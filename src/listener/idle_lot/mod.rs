//! The idle lot: where plain-TCP HTTP/1 client connections wait between requests, without a
//! task of their own.
//!
//! Beside `http1` in the listener. When `http1` parks an idle connection, a TLS one keeps
//! waiting in its task, but a plain one leaves it and comes here as its socket, its listener,
//! its peer, its settings, its keep-alive deadline and its place in the connection budget:
//! about 150 bytes, where a waiting task with tokio's registration of its socket is about
//! 850. An idle keep-alive connection is the most common kind a front door holds, so this
//! sets what 10,000 of them cost.
//!
//! One lot serves every listener (`sockets::ListenerSet` starts it), watched by one thread of
//! its own that waits on an epoll instance (mio's `Poll`) for any of these sockets to become
//! readable. That connection leaves the lot and is served again on a new task
//! (`http1::resume`). Moving in and out costs four `epoll_ctl` calls and a task: nothing
//! beside the 100 ms a connection has already been idle before it is parked. A connection
//! whose keep-alive time runs out is closed here, and those of a listener that drains
//! (shutdown, or a reload that removed it) are closed at once: what a parked task does too,
//! so nothing a client sees changes. A thread rather than a tokio task because registering
//! the epoll instance with tokio needs `unsafe` (`AsyncFd::register`); the thread sleeps in
//! `epoll_wait` and costs nothing while nothing happens.

mod slots;

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use mio::{Events, Interest, Poll, Registry, Token, Waker};
use tokio::net::TcpStream;

use super::activity::ConnActivity;
use super::client_conn::{ClientConn, ConnSettings, OpenConn};
use super::http::ListenerCtx;
use super::io::Protocol;

use slots::Slots;

/// Events read from the epoll instance at a time.
const EVENTS_PER_POLL: usize = 256;

/// The token of the lot's waker; every other token is a slot's index.
const WAKE: Token = Token(usize::MAX);

/// The lot. Connections are put in by their tasks (`park`) and taken out by the lot's thread.
#[derive(Debug)]
pub(super) struct IdleLot {
    registry: Registry,
    /// Wakes the thread: for a deadline earlier than all others, or to stop.
    waker: Waker,
    lot: Mutex<Lot>,
}

/// An idle connection in the lot: what it needs to be served again.
#[derive(Debug)]
pub(super) struct Parked {
    stream: mio::net::TcpStream,
    ctx: Arc<ListenerCtx>,
    peer: SocketAddr,
    settings: ConnSettings,
    open: OpenConn,
}

impl Parked {
    /// `stream` leaves tokio (its registration is freed).
    pub(super) fn new(
        stream: TcpStream,
        ctx: Arc<ListenerCtx>,
        peer: SocketAddr,
        settings: ConnSettings,
        open: OpenConn,
    ) -> io::Result<Self> {
        Ok(Parked {
            stream: mio::net::TcpStream::from_std(stream.into_std()?),
            ctx,
            peer,
            settings,
            open,
        })
    }

    /// The connection out of the lot, as an HTTP/1 connection idle after a request, with its
    /// socket back in tokio (on the runtime of the caller).
    pub(super) fn into_conn(self) -> io::Result<(ClientConn, TcpStream, OpenConn)> {
        let stream = TcpStream::from_std(std::net::TcpStream::from(self.stream))?;
        let conn = ClientConn {
            ctx: self.ctx,
            peer: self.peer,
            over_tls: false,
            protocol: Protocol::Http1,
            activity: ConnActivity::resumed(),
            settings: self.settings,
        };
        Ok((conn, stream, self.open))
    }
}

/// What the lock guards.
#[derive(Debug)]
struct Lot {
    slots: Slots<Parked>,
    /// Set when rproxy stops: nothing more is parked, and the thread ends.
    closed: bool,
}

impl IdleLot {
    /// A lot and its thread, which hands each connection with something to read to `resume`.
    pub(super) fn start(resume: impl Fn(Parked) + Send + 'static) -> io::Result<Arc<IdleLot>> {
        let poll = Poll::new()?;
        let lot = Arc::new(IdleLot {
            registry: poll.registry().try_clone()?,
            waker: Waker::new(poll.registry(), WAKE)?,
            lot: Mutex::new(Lot {
                slots: Slots::new(),
                closed: false,
            }),
        });
        let watched = Arc::clone(&lot);
        std::thread::Builder::new()
            .name("rproxy-idle".into())
            .spawn(move || watched.watch(poll, resume))?;
        Ok(lot)
    }

    fn lock(&self) -> MutexGuard<'_, Lot> {
        // Nothing panics while holding the lock; a poisoned lot is still consistent.
        self.lot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts `conn` in the lot until its socket has something to read or `deadline` passes.
    /// Refused, and the connection closed (it is idle, so that is allowed), once its listener
    /// drains or rproxy stops, or if the socket cannot be registered.
    pub(super) fn park(&self, mut conn: Parked, deadline: Instant) -> io::Result<()> {
        // (`conn`, declared first, is dropped after the lock on every early return.)
        let mut lot = self.lock();
        // Checked under the lock that `close_drained` takes after the listener's drain token
        // is cancelled: a connection is either refused here or closed there.
        if lot.closed || conn.ctx.shutdown.is_cancelled() {
            return Err(io::Error::other("shutting down"));
        }
        let Some(index) = lot.slots.vacant() else {
            return Err(io::Error::other("the idle lot is full"));
        };
        // Registered while the lock is held, so an event for it finds it in its slot.
        if let Err(e) = self
            .registry
            .register(&mut conn.stream, token(index), Interest::READABLE)
        {
            lot.slots.release(index);
            return Err(e);
        }
        let earliest = lot.slots.next_deadline().is_none_or(|next| deadline < next);
        lot.slots.put(index, deadline, conn);
        drop(lot);
        if earliest {
            // The thread sleeps until the earliest deadline it knew of.
            self.wake();
        }
        Ok(())
    }

    /// Closes the connections of every listener whose drain token has been cancelled.
    pub(super) fn close_drained(&self) {
        let closed = self
            .lock()
            .slots
            .take_where(|conn| conn.ctx.shutdown.is_cancelled());
        drop(closed);
    }

    /// Closes every connection in the lot and ends its thread; nothing is parked after.
    pub(super) fn close(&self) {
        let mut lot = self.lock();
        lot.closed = true;
        let all = std::mem::replace(&mut lot.slots, Slots::new());
        drop(lot);
        drop(all);
        self.wake();
    }

    fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            tracing::error!(error = %e, "cannot wake the idle-connection thread");
        }
    }

    /// The thread: waits for sockets to become readable (each leaves for `resume`) or for the
    /// earliest deadline (those due are closed), until `close`.
    fn watch(&self, mut poll: Poll, resume: impl Fn(Parked)) {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        loop {
            let next = self.lock().slots.next_deadline();
            let timeout = next.map(|at| at.saturating_duration_since(Instant::now()));
            match poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(error = %e, "waiting on idle connections failed; closing them");
                    self.close();
                    return;
                }
            }
            let (ready, expired) = {
                let mut lot = self.lock();
                if lot.closed {
                    return;
                }
                let ready: Vec<Parked> = events
                    .iter()
                    .filter_map(|event| self.take_ready(&mut lot.slots, event.token()))
                    .collect();
                (ready, lot.slots.expired(Instant::now()))
            };
            // Closing an expired socket takes it out of the epoll instance too.
            drop(expired);
            ready.into_iter().for_each(&resume);
        }
    }

    /// The connection registered as `token`, out of the lot and its epoll instance (before
    /// its slot can be used again, which needs the lock held here).
    fn take_ready(&self, slots: &mut Slots<Parked>, token: Token) -> Option<Parked> {
        let index = u32::try_from(token.0).ok()?;
        let mut conn = slots.take(index)?;
        if let Err(e) = self.registry.deregister(&mut conn.stream) {
            tracing::debug!(error = %e, "idle connection not deregistered");
        }
        Some(conn)
    }
}

/// The token a slot's socket is registered with.
fn token(index: u32) -> Token {
    Token(index as usize)
}
