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
//! beside the 100 ms a connection has already been idle before it is parked. A connection whose keep-alive
//! time runs out is closed here, and those of a listener that drains (shutdown, or a reload
//! that removed it) are closed at once: what a parked task does too, so nothing a client sees
//! changes. A thread rather than a tokio task because registering the epoll instance with
//! tokio needs `unsafe` (`AsyncFd::register`); the thread sleeps in `epoll_wait` and costs
//! nothing while nothing happens.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
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
    deadline: Instant,
}

impl Parked {
    /// `stream` leaves tokio (its registration is freed) to wait until `deadline`.
    pub(super) fn new(
        stream: TcpStream,
        ctx: Arc<ListenerCtx>,
        peer: SocketAddr,
        settings: ConnSettings,
        open: OpenConn,
        deadline: tokio::time::Instant,
    ) -> io::Result<Self> {
        Ok(Parked {
            stream: mio::net::TcpStream::from_std(stream.into_std()?),
            ctx,
            peer,
            settings,
            open,
            deadline: deadline.into_std(),
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

/// The connections in the lot, in chunks of slots: their memory apart from the small
/// allocations that connections make and free while they are served, which would otherwise
/// keep the allocator's pages in use around each one. A slot's index is the token its socket
/// is registered with.
#[derive(Debug, Default)]
struct Lot {
    chunks: Vec<Box<[Option<Parked>]>>,
    free: Vec<u32>,
    parked: usize,
    /// Deadlines, earliest first. A connection that leaves early leaves its entry behind
    /// (skipped when it comes up); once those outnumber the parked, the heap is rebuilt.
    deadlines: BinaryHeap<Reverse<(Instant, u32)>>,
    /// Set when rproxy stops: nothing more is parked, and the thread ends.
    closed: bool,
}

/// Slots per chunk: 256 connections, about 30 KB.
const CHUNK: usize = 256;

impl IdleLot {
    /// A lot and its thread, which hands each connection with something to read to `resume`.
    pub(super) fn start(resume: impl Fn(Parked) + Send + 'static) -> io::Result<Arc<IdleLot>> {
        let poll = Poll::new()?;
        let lot = Arc::new(IdleLot {
            registry: poll.registry().try_clone()?,
            waker: Waker::new(poll.registry(), WAKE)?,
            lot: Mutex::default(),
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

    /// Puts `conn` in the lot until its socket has something to read or its deadline passes.
    /// Refused, and the connection closed (it is idle, so that is allowed), once its listener
    /// drains or rproxy stops, or if the socket cannot be registered.
    pub(super) fn park(&self, mut conn: Parked) -> io::Result<()> {
        // (`conn`, declared first, is dropped after the lock on every early return.)
        let mut lot = self.lock();
        // Checked under the lock that `close_drained` takes after the listener's drain token
        // is cancelled: a connection is either refused here or closed there.
        if lot.closed || conn.ctx.shutdown.is_cancelled() {
            return Err(io::Error::other("shutting down"));
        }
        let Some(index) = lot.vacant() else {
            return Err(io::Error::other("the idle lot is full"));
        };
        // Registered while the lock is held, so an event for it finds it in its slot.
        if let Err(e) = self
            .registry
            .register(&mut conn.stream, token(index), Interest::READABLE)
        {
            lot.free.push(index);
            return Err(e);
        }
        let deadline = conn.deadline;
        let earliest = lot.deadlines.peek().is_none_or(|top| deadline < top.0.0);
        lot.put(index, conn);
        lot.deadlines.push(Reverse((deadline, index)));
        if lot.deadlines.len() > 2 * lot.parked + CHUNK {
            lot.rebuild_deadlines();
        }
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
            .take_where(|conn| conn.ctx.shutdown.is_cancelled());
        drop(closed);
    }

    /// Closes every connection in the lot and ends its thread; nothing is parked after.
    pub(super) fn close(&self) {
        let mut lot = self.lock();
        let all = std::mem::take(&mut *lot);
        lot.closed = true;
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
            let next = self.lock().deadlines.peek().map(|top| top.0.0);
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
            if self.lock().closed {
                return;
            }
            for event in &events {
                if event.token() != WAKE
                    && let Some(conn) = self.take(event.token())
                {
                    resume(conn);
                }
            }
            self.expire(Instant::now());
        }
    }

    /// The connection registered as `token`, out of the lot and its epoll instance (so that
    /// the slot can be used again).
    fn take(&self, Token(index): Token) -> Option<Parked> {
        let mut lot = self.lock();
        let index = u32::try_from(index).ok()?;
        let mut conn = lot.take_if(index, |_| true)?;
        if let Err(e) = self.registry.deregister(&mut conn.stream) {
            tracing::debug!(error = %e, "idle connection not deregistered");
        }
        Some(conn)
    }

    /// Closes the connections whose deadline is `now` or past.
    fn expire(&self, now: Instant) {
        let mut expired = Vec::new();
        let mut lot = self.lock();
        while let Some(&Reverse((deadline, index))) = lot.deadlines.peek()
            && deadline <= now
        {
            lot.deadlines.pop();
            // Closing the socket takes it out of the epoll instance too.
            expired.extend(lot.take_if(index, |conn| conn.deadline <= now));
        }
        drop(lot);
        drop(expired);
    }
}

impl Lot {
    /// A free slot's index; `put` fills it, or it goes back on `free`. `None` past `u32`
    /// slots.
    fn vacant(&mut self) -> Option<u32> {
        if self.free.is_empty() {
            let first = u32::try_from(self.chunks.len() * CHUNK).ok()?;
            let end = first.checked_add(CHUNK as u32)?;
            self.chunks.push((0..CHUNK).map(|_| None).collect());
            // Lowest first, so the first chunks fill before later ones are touched.
            self.free.extend((first..end).rev());
        }
        self.free.pop()
    }

    fn slot(&mut self, index: u32) -> Option<&mut Option<Parked>> {
        let index = index as usize;
        self.chunks.get_mut(index / CHUNK)?.get_mut(index % CHUNK)
    }

    /// Fills the slot `vacant` gave.
    fn put(&mut self, index: u32, conn: Parked) {
        if let Some(slot) = self.slot(index) {
            *slot = Some(conn);
            self.parked += 1;
        }
    }

    /// The connection in slot `index`, if there is one and `pred` holds for it.
    fn take_if(&mut self, index: u32, pred: impl Fn(&Parked) -> bool) -> Option<Parked> {
        let slot = self.slot(index)?;
        if !slot.as_ref().is_some_and(pred) {
            return None;
        }
        let conn = slot.take();
        self.free.push(index);
        self.parked -= 1;
        if self.parked == 0 && self.chunks.len() > 1 {
            self.shrink();
        }
        conn
    }

    /// Every connection for which `pred` holds, out of the lot.
    fn take_where(&mut self, pred: impl Fn(&Parked) -> bool) -> Vec<Parked> {
        let mut taken = Vec::new();
        for index in 0..self.chunks.len() * CHUNK {
            if let Ok(index) = u32::try_from(index) {
                taken.extend(self.take_if(index, &pred));
            }
        }
        taken
    }

    /// Once empty after a burst of idle connections, back to one chunk: the memory the burst
    /// took goes back to the allocator.
    fn shrink(&mut self) {
        self.chunks.truncate(1);
        self.chunks.shrink_to_fit();
        self.free = (0..CHUNK as u32).rev().collect();
        self.deadlines = BinaryHeap::new();
    }

    fn rebuild_deadlines(&mut self) {
        self.deadlines = self
            .chunks
            .iter()
            .flat_map(|chunk| chunk.iter())
            .zip(0u32..)
            .filter_map(|(slot, i)| slot.as_ref().map(|conn| Reverse((conn.deadline, i))))
            .collect();
    }
}

/// The token a slot's socket is registered with.
fn token(index: u32) -> Token {
    Token(index as usize)
}
