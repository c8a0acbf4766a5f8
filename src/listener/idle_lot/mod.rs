//! The idle lot: where idle client sockets wait for their next bytes without a task of their
//! own.
//!
//! A leaf beside `http1` in the listener: it knows sockets, deadlines and tokio, nothing of
//! HTTP or of listeners. A socket comes in (`park`) with its deadline and an opaque handle `R`,
//! whatever its owner needs to serve it again, and leaves in one of two ways: once it has
//! something to read, the lot gives `(socket, R)` back to the function it was started with;
//! when its peer closed it with nothing left to read, at its deadline, when its handle says it
//! is drained (`close_drained`), or when the lot closes, the socket is closed and `R` dropped.
//! A client that goes away is the common end of an idle connection, and its owner would only
//! read the end and close: closed here, it costs no task (when 10,000 clients left at once,
//! the tasks given them took about 7 MB that the allocator then kept). `http1` parks idle
//! plain HTTP/1 connections here and serves each one given back on a new task.
//!
//! Why: a socket waiting here costs its slot (the socket, its deadline and `R`: 96 bytes with
//! `http1`'s handle) and 8 bytes in the deadline heap, about 110 bytes in all, where a task
//! waiting on the socket, with tokio's registration of it and a timer, is about 850. An idle
//! keep-alive connection is the most common kind a front door holds, so this sets what 10,000
//! of them cost.
//!
//! How: the sockets are registered with an epoll instance of the lot's own (mio's `Poll`),
//! and one tokio task (`start`) waits on that instance through `AsyncFd` (an epoll instance is
//! readable while one of its sockets is) and on the earliest deadline with `tokio::time`, so
//! the lot keeps tokio's clock and its tests run on the paused one. Moving in and out costs
//! four `epoll_ctl` calls (out of tokio's epoll and into this one, and back) and a task for
//! the owner: nothing beside the time a connection has already been idle before it is
//! parked. A socket that already has bytes to read when it is registered is reported at once
//! (epoll looks when a socket is added), so none arriving just before parking are missed.

mod slots;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io::{self, ErrorKind};
use std::net::TcpStream;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use mio::{Events, Interest, Poll, Registry, Token};
use parking_lot::{Mutex, MutexGuard};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tokio::time::Instant;

use slots::{Due, Slots};

/// Events read from the epoll instance at a time; more wait for the next turn of the task.
const EVENTS_PER_POLL: usize = 256;

/// How old the start of the lot's clock may grow before it is moved forward. Deadlines are
/// kept as `u32` milliseconds from it, which reach 49.7 days: a keep-alive timeout (at most 49
/// days) set up to this long after the start still fits.
const REBASE_AFTER: Duration = Duration::from_secs(8 * 3600);

/// What the lot asks of the handle a socket is parked with.
pub(super) trait ResumeHandle: Send + 'static {
    /// Whether the socket is to close rather than wait (its owner drains): checked when it is
    /// parked, and by `close_drained`.
    fn drained(&self) -> bool;
}

/// The lot. Sockets are put in by their owners (`park`) and taken out by the lot's task.
pub(super) struct IdleLot<R> {
    registry: Registry,
    /// Wakes the task: for a deadline earlier than all others, or to stop.
    changed: Notify,
    lot: Mutex<Lot<R>>,
}

/// A socket in the lot, with its deadline and what its owner needs to serve it again.
struct Parked<R> {
    /// Milliseconds on the lot's clock (`Lot::epoch`); beside the socket's 4 bytes, it takes
    /// no room of its own.
    due: u32,
    stream: mio::net::TcpStream,
    handle: R,
}

impl<R> Due for Parked<R> {
    fn due(&self) -> u32 {
        self.due
    }

    fn due_mut(&mut self) -> &mut u32 {
        &mut self.due
    }
}

/// What the lock guards.
struct Lot<R> {
    slots: Slots<Parked<R>>,
    /// The start of the lot's clock, on tokio's: deadlines are counted in milliseconds from it.
    epoch: Instant,
    /// Set when the lot closes: nothing more is parked, and the task ends.
    closed: bool,
}

impl<R> Lot<R> {
    /// `deadline` on the lot's clock, rounded up to the millisecond (never early), after
    /// moving the clock's start forward if it has grown old.
    fn due(&mut self, deadline: Instant) -> u32 {
        let age = Instant::now().saturating_duration_since(self.epoch);
        if age >= REBASE_AFTER {
            let by = millis(age);
            self.slots.rebase(by);
            self.epoch += Duration::from_millis(by.into());
        }
        let nanos = deadline.saturating_duration_since(self.epoch).as_nanos();
        u32::try_from(nanos.div_ceil(1_000_000)).unwrap_or(u32::MAX)
    }

    /// `now` on the lot's clock, rounded down: what is due then has passed its deadline.
    fn now(&self, now: Instant) -> u32 {
        millis(now.saturating_duration_since(self.epoch))
    }

    /// The instant of `due`, on tokio's clock.
    fn at(&self, due: u32) -> Instant {
        self.epoch + Duration::from_millis(due.into())
    }
}

/// Whole milliseconds in `d`, at most `u32::MAX`.
fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl<R> fmt::Debug for IdleLot<R> {
    /// The count only: a handle may lead back to what holds the lot.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdleLot")
            .field("parked", &self.lock().slots.len())
            .finish_non_exhaustive()
    }
}

impl<R: ResumeHandle> IdleLot<R> {
    /// A lot, and the future that runs it: spawn that on the tokio runtime that is to serve
    /// the sockets given back (it needs the runtime's I/O driver and clock). It gives every
    /// socket with something to read, and its handle, to `resume`. It ends once `close` was
    /// called, or with the error that stopped it; either way every socket still in the lot is
    /// closed then, and nothing more is parked.
    pub(super) fn start(
        resume: impl FnMut(TcpStream, R) + Send + 'static,
    ) -> io::Result<(
        Arc<Self>,
        impl Future<Output = io::Result<()>> + Send + 'static,
    )> {
        let poll = Poll::new()?;
        let lot = Arc::new(IdleLot {
            registry: poll.registry().try_clone()?,
            changed: Notify::new(),
            lot: Mutex::new(Lot {
                slots: Slots::new(),
                epoch: Instant::now(),
                closed: false,
            }),
        });
        let run = Arc::clone(&lot).run(poll, resume);
        Ok((lot, run))
    }

    /// Puts `stream` in the lot until it has something to read or `deadline` passes.
    /// Refused, and the socket closed with its handle dropped (what is parked is idle, so that
    /// is allowed), when the handle says it is drained, once the lot has closed, or if the
    /// socket cannot be registered.
    pub(super) fn park(&self, stream: TcpStream, deadline: Instant, handle: R) -> io::Result<()> {
        let mut conn = Parked {
            due: 0,
            stream: mio::net::TcpStream::from_std(stream),
            handle,
        };
        // (`conn`, declared first, is dropped after the lock on every early return.)
        let mut lot = self.lock();
        // Checked under the lock that `close_drained` takes after the owner marked its
        // handles drained: a socket is either refused here or closed there.
        if lot.closed || conn.handle.drained() {
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
        conn.due = lot.due(deadline);
        let earliest = lot.slots.next_deadline().is_none_or(|next| conn.due < next);
        lot.slots.put(index, conn);
        drop(lot);
        if earliest {
            // The task sleeps until the earliest deadline it knew of.
            self.changed.notify_one();
        }
        Ok(())
    }

    /// Closes every socket whose handle says it is drained.
    pub(super) fn close_drained(&self) {
        let closed = self.lock().slots.take_where(|conn| conn.handle.drained());
        drop(closed);
    }

    /// Closes every socket in the lot and ends its task; nothing is parked after.
    pub(super) fn close(&self) {
        let mut lot = self.lock();
        lot.closed = true;
        let all = std::mem::replace(&mut lot.slots, Slots::new());
        drop(lot);
        drop(all);
        self.changed.notify_one();
    }

    /// The task: `watch`, then whatever ended it, the lot closed.
    async fn run(
        self: Arc<Self>,
        poll: Poll,
        mut resume: impl FnMut(TcpStream, R),
    ) -> io::Result<()> {
        let watched = self.watch(poll, &mut resume).await;
        self.close();
        watched
    }

    /// Waits for sockets to become readable (each leaves for `resume`) or for the earliest
    /// deadline (those due are closed), until `close`.
    async fn watch(&self, poll: Poll, resume: &mut impl FnMut(TcpStream, R)) -> io::Result<()> {
        // tokio 1.53.3 deprecated this constructor for an `unsafe` one (tokio#8587): it trusts
        // `as_raw_fd` to name a descriptor the value owns, open and the same for its whole
        // life, which a type could break. mio's `Poll` keeps its epoll descriptor as an
        // `OwnedFd` from creation to drop, so that promise holds here, and the crate forbids
        // `unsafe` code.
        #[expect(
            deprecated,
            reason = "safe for mio's Poll (above); the replacement is unsafe"
        )]
        let mut poll = AsyncFd::with_interest(poll, tokio::io::Interest::READABLE)?;
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        let mut expiry = pin!(tokio::time::sleep_until(Instant::now()));
        loop {
            let next = {
                let lot = self.lock();
                if lot.closed {
                    return Ok(());
                }
                lot.slots.next_deadline().map(|due| lot.at(due))
            };
            if let Some(at) = next
                && at != expiry.deadline()
            {
                expiry.as_mut().reset(at);
            }
            tokio::select! {
                ready = poll.readable_mut() => {
                    let mut ready = ready?;
                    match ready.get_inner_mut().poll(&mut events, Some(Duration::ZERO)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    }
                    if events.is_empty() {
                        // Read to its end: wait for tokio to see the instance readable again.
                        ready.clear_ready();
                        continue;
                    }
                    let sockets: Vec<(Parked<R>, bool)> = {
                        let mut lot = self.lock();
                        events
                            .iter()
                            .filter_map(|event| {
                                let conn = self.take_ready(&mut lot.slots, event.token())?;
                                Some((conn, event.is_read_closed() || event.is_error()))
                            })
                            .collect()
                    };
                    for (conn, closing) in sockets {
                        if closing && peer_gone(&conn.stream) {
                            // Closed, and its handle dropped, here.
                            continue;
                        }
                        resume(conn.stream.into(), conn.handle);
                    }
                }
                () = &mut expiry, if next.is_some() => {
                    // Closing an expired socket takes it out of the epoll instance too.
                    let expired = {
                        let mut lot = self.lock();
                        let now = lot.now(Instant::now());
                        lot.slots.expired(now)
                    };
                    drop(expired);
                }
                () = self.changed.notified() => {}
            }
        }
    }

    /// The socket registered as `token`, out of the lot and its epoll instance (before its
    /// slot can be used again, which needs the lock held here).
    fn take_ready(&self, slots: &mut Slots<Parked<R>>, token: Token) -> Option<Parked<R>> {
        let index = u32::try_from(token.0).ok()?;
        let mut conn = slots.take(index)?;
        // Cannot fail: EPOLL_CTL_DEL fails only for a descriptor that is closed, not
        // pollable or not in the instance, and this one is open and registered here. (Were it
        // to, the socket would stay registered until it closes, and an event of it could at
        // worst hand back for nothing the socket that took its slot: its owner would find
        // nothing to read and park it again.)
        let _cannot_fail = self.registry.deregister(&mut conn.stream);
        Some(conn)
    }
}

impl<R> IdleLot<R> {
    fn lock(&self) -> MutexGuard<'_, Lot<R>> {
        self.lot.lock()
    }
}

/// Whether the peer of a socket it signalled as closed has left nothing to read: one `recv`
/// that peeks. A request sent just before the peer closed its side is still served.
fn peer_gone(stream: &mio::net::TcpStream) -> bool {
    match stream.peek(&mut [0u8; 1]) {
        Ok(n) => n == 0,
        // Nothing to read after all (or a signal came): its owner waits for it as usual. Any
        // other error (a reset) would end the connection there too.
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted),
    }
}

/// The token a slot's socket is registered with.
fn token(index: u32) -> Token {
    Token(index as usize)
}
