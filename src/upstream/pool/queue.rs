//! `[upstreams.NAME.queue]`: where a request (or TCP connection) waits when every backend it
//! may go to is at its `max_conns` (nginx Plus's `queue`, HAProxy's `timeout queue`).
//!
//! Waiters are served first in, first out: a slot freed on a backend goes to the first waiter
//! that wants that backend (`limit.rs` hands it over as its guard drops), a pinned request
//! waiting for its own backend only, any other for any backend it has not tried. A request
//! answered 503 is one that found the queue full, waited `timeout`, or had no queue to wait
//! in; one whose client left while waiting leaves its place and is never sent.
//!
//! One queue per pool, for every backend with a limit; a reload that keeps the upstream keeps
//! the queue and its waiters, as it keeps each backend's in-flight count.

use std::collections::VecDeque;

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::balancer::{PickContext, Tried};
use crate::config::BackendAddr;
use crate::metrics::{QueueMetrics, QueueRejection};

use super::Pool;
use super::backend::InFlightGuard;
use super::limit::{HandOver, Slot, Want};

/// The requests of one pool waiting for a backend slot.
#[derive(Debug)]
pub(crate) struct WaitQueue {
    waiters: Mutex<Waiters>,
    metrics: QueueMetrics,
}

/// In the order they came (by ticket): a request that turned down the slot it was handed
/// (see `accepts`) goes back to its own place.
#[derive(Debug, Default)]
struct Waiters {
    queue: VecDeque<Waiter>,
    next_ticket: u64,
}

#[derive(Debug)]
struct Waiter {
    ticket: u64,
    wants: Wants,
    slot: oneshot::Sender<InFlightGuard>,
}

/// The backends a waiter takes a slot of, by address: a reload may rebuild the pool, and a
/// slot freed by a request of the rebuilt one serves a waiter of the old one alike.
#[derive(Debug, Clone)]
enum Wants {
    Only(BackendAddr),
    /// Any but those it was already sent to.
    AnyBut(Vec<BackendAddr>),
}

impl Wants {
    fn takes(&self, addr: &BackendAddr) -> bool {
        match self {
            Wants::Only(a) => a == addr,
            Wants::AnyBut(tried) => !tried.contains(addr),
        }
    }
}

/// Why a request got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoSlot {
    /// No backend is left to try (they went down while it waited).
    Nothing,
    /// Every backend it may go to stayed at its `max_conns`: answered 503 (counted).
    Busy,
}

impl WaitQueue {
    pub(crate) fn new(upstream: &str) -> Self {
        WaitQueue {
            waiters: Mutex::new(Waiters::default()),
            metrics: QueueMetrics::new(upstream),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Waiters> {
        self.waiters.lock()
    }

    /// A slot on `addr` that a request finished with, to the first waiter that takes it;
    /// `slot` makes that waiter's guard. With no such waiter, `free` gives the slot back.
    /// Both under the lock that a request holds while it looks for a slot and joins the
    /// queue: it sees a slot freed before, or is in the queue when one is freed. And a waiter
    /// that finds itself out of the queue once it holds the lock finds the slot sent.
    pub(crate) fn hand_over(
        &self,
        addr: &BackendAddr,
        slot: impl FnOnce() -> InFlightGuard,
        free: impl FnOnce(),
    ) -> HandOver {
        let mut waiters = self.lock();
        let Some(tx) = waiters.take_first(addr) else {
            free();
            return HandOver::Freed;
        };
        self.metrics.length.set(waiters.queue.len() as f64);
        match tx.send(slot()) {
            Ok(()) => HandOver::Given,
            // A waiter leaves the queue under the lock before its receiver goes, so this does
            // not happen; if it did, the slot is offered again once the lock is released.
            Err(successor) => HandOver::Undelivered(successor),
        }
    }

    /// Requests waiting now.
    pub(crate) fn len(&self) -> usize {
        self.waiters.lock().queue.len()
    }

    fn rejected(&self, why: QueueRejection) {
        self.metrics.rejected(why);
    }
}

impl Waiters {
    /// The first waiter that takes a slot on `addr`, out of the queue: where its slot goes.
    fn take_first(&mut self, addr: &BackendAddr) -> Option<oneshot::Sender<InFlightGuard>> {
        let at = self.queue.iter().position(|w| w.wants.takes(addr))?;
        self.queue.remove(at).map(|w| w.slot)
    }

    fn insert(&mut self, waiter: Waiter) {
        let at = self.queue.partition_point(|w| w.ticket < waiter.ticket);
        self.queue.insert(at, waiter);
    }

    fn remove(&mut self, ticket: u64) -> bool {
        match self.queue.iter().position(|w| w.ticket == ticket) {
            Some(at) => self.queue.remove(at).is_some(),
            None => false,
        }
    }
}

/// A request's place in the queue, from its first wait to its last. Dropped early (the
/// client left), it leaves the queue, and a slot it was handed meanwhile goes on.
struct Place<'q> {
    queue: &'q WaitQueue,
    ticket: Option<u64>,
    since: Instant,
    slot: Option<oneshot::Receiver<InFlightGuard>>,
}

impl Place<'_> {
    /// Out of the queue, with the slot it was handed if it was (after the lock is released,
    /// so that the caller may drop it).
    fn leave(&mut self) -> Option<InFlightGuard> {
        let ticket = self.ticket?;
        let mut rx = self.slot.take()?;
        let mut waiters = self.queue.lock();
        let removed = waiters.remove(ticket);
        self.queue.metrics.length.set(waiters.queue.len() as f64);
        drop(waiters);
        // Not in the queue any more: a slot was sent before the lock was let go.
        if removed { None } else { rx.try_recv().ok() }
    }

    /// It leaves the queue for good: how long it waited is recorded once.
    fn done(&mut self) {
        if self.ticket.take().is_some() {
            self.queue
                .metrics
                .wait
                .record(self.since.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let handed = self.leave();
        self.done();
        // Released here, with the queue unlocked: the slot goes to the next waiter.
        drop(handed);
    }
}

impl Pool {
    /// Waits in the pool's queue for a slot on `want`, first in, first out, up to the queue's
    /// `timeout`. Refused at once (503, counted) when the queue is full or the pool has none.
    pub(crate) async fn wait_for_slot(
        &self,
        ctx: &PickContext<'_>,
        tried: &Tried,
        want: Want,
    ) -> Result<(usize, InFlightGuard), NoSlot> {
        let Some(queue) = self.waiting.as_deref() else {
            return Err(NoSlot::Busy);
        };
        let Some(config) = self.queue else {
            queue.rejected(QueueRejection::NoQueue);
            return Err(NoSlot::Busy);
        };
        let wants = match want {
            Want::Only(i) => Wants::Only(self.backends[i].addr.clone()),
            Want::Any => Wants::AnyBut(
                self.backends
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| tried.contains(*i))
                    .map(|(_, b)| b.addr.clone())
                    .collect(),
            ),
        };
        let mut place = Place {
            queue,
            ticket: None,
            since: Instant::now(),
            slot: None,
        };
        let deadline = place.since + config.timeout;
        loop {
            // A slot freed before the lock is taken is found here; one freed later finds this
            // request in the queue.
            {
                let mut waiters = queue.lock();
                match self.retake_slot(want, ctx, tried) {
                    Slot::Taken(i, guard) => {
                        drop(waiters);
                        place.done();
                        return Ok((i, guard));
                    }
                    Slot::Nothing => {
                        drop(waiters);
                        place.done();
                        return Err(NoSlot::Nothing);
                    }
                    Slot::Busy(_) => {}
                }
                if place.ticket.is_none() && waiters.queue.len() >= config.size.get() as usize {
                    drop(waiters);
                    queue.rejected(QueueRejection::Full);
                    return Err(NoSlot::Busy);
                }
                let ticket = *place.ticket.get_or_insert_with(|| {
                    waiters.next_ticket += 1;
                    waiters.next_ticket
                });
                let (tx, rx) = oneshot::channel();
                waiters.insert(Waiter {
                    ticket,
                    wants: wants.clone(),
                    slot: tx,
                });
                queue.metrics.length.set(waiters.queue.len() as f64);
                place.slot = Some(rx);
            }
            let handed = match place.slot.as_mut() {
                Some(rx) => tokio::time::timeout_at(deadline, rx).await,
                None => continue,
            };
            let guard = match handed {
                // The slot's last holder took this request out of the queue.
                Ok(Ok(guard)) => {
                    place.slot = None;
                    guard
                }
                // Taken out without a slot: does not happen (see `Limit::hand_over`); look again.
                Ok(Err(_)) => {
                    place.slot = None;
                    continue;
                }
                Err(_) => match place.leave() {
                    Some(guard) => guard,
                    None => {
                        place.done();
                        queue.rejected(QueueRejection::Timeout);
                        tracing::debug!(upstream = %self.name, "waited the queue's timeout for a backend under max_conns");
                        return Err(NoSlot::Busy);
                    }
                },
            };
            if let Some(i) = self.accepts(&guard, want, tried) {
                self.backends[i].live.record_request();
                place.done();
                return Ok((i, guard));
            }
            // Not one this request may go to (a backup while primaries serve, one gone out of
            // rotation): the slot goes on as this guard drops, and the request waits again in
            // its own place.
            drop(guard);
        }
    }

    /// The index of the backend whose slot `guard` holds, if a request waiting for `want`
    /// (after trying `tried`) may go there now.
    fn accepts(&self, guard: &InFlightGuard, want: Want, tried: &Tried) -> Option<usize> {
        let addr = guard.limited_addr()?;
        let i = self.backends.iter().position(|b| b.addr == *addr)?;
        match want {
            Want::Only(j) => (i == j).then_some(i),
            Want::Any => {
                let backend = &self.backends[i];
                let primary_left = || {
                    (0..self.primaries)
                        .any(|p| !tried.contains(p) && self.backends[p].in_rotation())
                };
                (!tried.contains(i)
                    && backend.in_rotation()
                    && (i < self.primaries || !primary_left()))
                .then_some(i)
            }
        }
    }

    /// Requests waiting for a backend slot now.
    pub fn queued(&self) -> usize {
        self.waiting.as_ref().map_or(0, |q| q.len())
    }
}
