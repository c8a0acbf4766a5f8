//! `max_conns`: a backend takes at most this many requests and TCP connections at once,
//! counted for the whole process in its in-flight count (the one the load-aware balancers
//! read, carried across reloads by address). Health checks have their own connections and do
//! not count.
//!
//! A request takes a slot with a compare-and-swap that never moves the count past the limit,
//! so two requests racing for the last slot cannot both win. When a slot's guard drops and a
//! request is waiting for that backend (`queue.rs`), the slot passes straight to the first such
//! request: the count does not move, so no newcomer can take it in between and the queue stays
//! first in, first out. With no limit configured nothing here runs: a pick costs one branch.
//!
//! `take_slot` is the request path's one entry: pick a backend (the pool's policy, pinned or
//! not) and take a slot on it, or say why there is none.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::balancer::{PickContext, Tried};
use crate::config::BackendAddr;

use super::backend::InFlightGuard;
use super::queue::WaitQueue;
use super::{Pick, Pool};

/// A backend's `max_conns`, with what its guards need to hand a freed slot on.
#[derive(Debug)]
pub(crate) struct Limit {
    max: u64,
    addr: BackendAddr,
    queue: Arc<WaitQueue>,
}

/// What became of the slot of a guard that dropped.
pub(crate) enum HandOver {
    /// A waiting request has it now: the count did not move.
    Given,
    /// No request waits for it (or the backend is above a limit that a reload lowered): the
    /// count went down.
    Freed,
    /// It was handed to a request that left meanwhile; this guard holds it now.
    Undelivered(InFlightGuard),
}

impl Limit {
    pub(crate) fn new(max: NonZeroU32, addr: BackendAddr, queue: Arc<WaitQueue>) -> Self {
        Limit {
            max: u64::from(max.get()),
            addr,
            queue,
        }
    }

    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    pub(crate) fn addr(&self) -> &BackendAddr {
        &self.addr
    }

    /// Takes one slot of `in_flight` unless all `max` are taken.
    pub(crate) fn try_acquire(&self, in_flight: &AtomicU64) -> bool {
        try_acquire(in_flight, self.max)
    }

    /// `guard`'s slot, as the guard drops: to the first request waiting for this backend, if
    /// any. Decided under the queue's lock, which a request also holds while it looks for a
    /// slot and joins the queue: a slot freed before that is seen by it, one freed after
    /// finds it waiting.
    pub(crate) fn hand_over(self: &Arc<Self>, guard: &InFlightGuard) -> HandOver {
        if guard.in_flight() > self.max {
            // Still at the limit or above once freed: no waiter could have had it.
            guard.free();
            return HandOver::Freed;
        }
        self.queue
            .hand_over(&self.addr, || guard.successor(self), || guard.free())
    }
}

/// Takes one of `max` slots counted by `in_flight`, unless all are taken: a compare-and-swap
/// loop, so concurrent callers never take more than `max` between them.
pub(crate) fn try_acquire(in_flight: &AtomicU64, max: u64) -> bool {
    let mut now = in_flight.load(Ordering::Relaxed);
    loop {
        if now >= max {
            return false;
        }
        match in_flight.compare_exchange_weak(now, now + 1, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(seen) => now = seen,
        }
    }
}

/// What a request found when it asked its pool for a backend slot.
#[derive(Debug)]
pub(crate) enum Slot {
    /// A slot on this backend, held by the guard.
    Taken(usize, InFlightGuard),
    /// The backends it may go to are all at their `max_conns`: it may wait in the queue.
    Busy(Want),
    /// No backend is left to try.
    Nothing,
}

/// Which backend a waiting request waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// Its own: pinned by a sticky cookie or by the hash of its key.
    Only(usize),
    /// Any the pool's policy would pick.
    Any,
}

impl Pool {
    /// A backend for a request and a slot on it: `pin` (a sticky cookie's backend) if given,
    /// else the policy's pick among the backends that have room, as `select` makes it.
    #[inline]
    pub(crate) fn take_slot(
        &self,
        pin: Option<usize>,
        ctx: &PickContext<'_>,
        tried: &Tried,
    ) -> Slot {
        let index = match pin {
            Some(i) => i,
            None => match self.select(ctx, tried) {
                Pick::Backend(i) => i,
                Pick::Busy => return Slot::Busy(Want::Any),
                Pick::Nothing => return Slot::Nothing,
            },
        };
        match self.backends.get(index).and_then(|b| b.try_start()) {
            Some(guard) => Slot::Taken(index, guard),
            // A pinned request, or one whose key hashes to this backend, waits for it.
            None if pin.is_some() || self.keyed => Slot::Busy(Want::Only(index)),
            // Another request took its last slot since the pick: the queue looks again.
            None => Slot::Busy(Want::Any),
        }
    }

    /// `want` again, for a request that waits: `None` when it is busy still.
    pub(super) fn retake_slot(&self, want: Want, ctx: &PickContext<'_>, tried: &Tried) -> Slot {
        match want {
            Want::Only(i) => match self.backends.get(i).and_then(|b| b.try_start()) {
                Some(guard) => Slot::Taken(i, guard),
                None => Slot::Busy(want),
            },
            Want::Any => match self.take_slot(None, ctx, tried) {
                // Its pick's last slot went to another request since: it waits for any.
                Slot::Busy(_) => Slot::Busy(Want::Any),
                found => found,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::try_acquire;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn takes_slots_up_to_the_limit_and_no_further() {
        let n = AtomicU64::new(0);
        assert!(try_acquire(&n, 2));
        assert!(try_acquire(&n, 2));
        assert!(!try_acquire(&n, 2), "both slots are taken");
        assert_eq!(
            n.load(Ordering::Relaxed),
            2,
            "a refusal leaves the count alone"
        );
        n.fetch_sub(1, Ordering::Relaxed);
        assert!(try_acquire(&n, 2), "a freed slot can be taken again");
        // Above a limit that a reload lowered: nothing is taken until it is below again.
        let n = AtomicU64::new(5);
        assert!(!try_acquire(&n, 3));
        assert_eq!(n.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn racing_threads_never_hold_more_than_the_limit() {
        const MAX: u64 = 3;
        let n = Arc::new(AtomicU64::new(0));
        let peak = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (n, peak) = (Arc::clone(&n), Arc::clone(&peak));
                std::thread::spawn(move || {
                    let mut taken = 0u32;
                    for _ in 0..20_000 {
                        if try_acquire(&n, MAX) {
                            taken += 1;
                            peak.fetch_max(n.load(Ordering::Relaxed), Ordering::Relaxed);
                            n.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                    taken
                })
            })
            .collect();
        let taken: u32 = threads.into_iter().map(|t| t.join().expect("thread")).sum();
        assert!(taken > 0);
        assert!(peak.load(Ordering::Relaxed) <= MAX, "at most {MAX} at once");
        assert_eq!(n.load(Ordering::Relaxed), 0, "every slot came back");
    }
}
