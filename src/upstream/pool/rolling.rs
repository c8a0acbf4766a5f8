//! Rolling windows of atomic slots, shared by the latency window (`/status`) and the retry
//! budget: each slot is marked with the period it counts, and the first writer of a new period
//! takes the slot over and clears it. No lock; a count added by another thread during the
//! takeover may be lost, which both users can afford.

use std::sync::atomic::{AtomicU64, Ordering};

/// Moves the slot whose period is in `marker` to `period`. True when this caller did the move
/// and so must clear the slot's counts before adding its own.
pub(super) fn claim(marker: &AtomicU64, period: u64) -> bool {
    let seen = marker.load(Ordering::Acquire);
    seen != period
        && marker
            .compare_exchange(seen, period, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
}
