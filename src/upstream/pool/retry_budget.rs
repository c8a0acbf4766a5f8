//! The retry budget: retries may add at most a share of a pool's request rate over the last
//! ten seconds, plus a small floor per second so a quiet pool can still retry (linkerd's and
//! Envoy's model).
//!
//! Every request deposits, so the deposit is on the hot path: it is one relaxed atomic add
//! into the current one-second slot (and, once a second, resetting a stale slot). tower's
//! `TpsBudget` does the same accounting but takes a mutex on every deposit, which all requests
//! of a pool would contend for. Withdrawals happen only on retries and sum the slots. The
//! count is approximate at slot boundaries, which a budget can afford.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

use super::rolling::claim;

/// Slots of one second each: the window the budget looks back over.
const SLOTS: usize = 10;

#[derive(Debug)]
pub(super) struct RetryBudget {
    /// Retries allowed per request in the window.
    ratio: f64,
    /// Retries allowed per second regardless of traffic.
    min_per_second: u64,
    start: Instant,
    slots: [Slot; SLOTS],
}

#[derive(Debug, Default)]
struct Slot {
    /// The second (since `start`) this slot counts; a slot of an older second is stale.
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    pub(super) fn new(ratio: f32, min_per_second: u64) -> Self {
        RetryBudget {
            ratio: f64::from(ratio),
            min_per_second,
            start: Instant::now(),
            slots: Default::default(),
        }
    }

    /// A request was made.
    pub(super) fn deposit(&self) {
        self.current().requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget; false when it is spent.
    pub(super) fn withdraw(&self) -> bool {
        let now = self.second();
        let (mut requests, mut retries) = (0u64, 0u64);
        for slot in &self.slots {
            if now.saturating_sub(slot.second.load(Ordering::Acquire)) < SLOTS as u64 {
                requests += slot.requests.load(Ordering::Relaxed);
                retries += slot.retries.load(Ordering::Relaxed);
            }
        }
        let allowed = self.min_per_second * SLOTS as u64 + (requests as f64 * self.ratio) as u64;
        if retries >= allowed {
            return false;
        }
        self.current().retries.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn second(&self) -> u64 {
        // Seconds are counted from 1 so that a slot never used (second 0) is always stale.
        self.start.elapsed().as_secs() + SLOTS as u64
    }

    /// This second's slot, reset first if it still holds an older second.
    fn current(&self) -> &Slot {
        let now = self.second();
        let slot = &self.slots[(now % SLOTS as u64) as usize];
        if claim(&slot.second, now) {
            // This thread moved the slot to the new second: it starts empty. A lost count
            // only makes the budget slightly stricter.
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// How long a request counts towards the budget.
    const WINDOW: Duration = Duration::from_secs(SLOTS as u64);

    #[tokio::test(start_paused = true)]
    async fn a_share_of_the_requests_plus_a_floor() {
        let budget = RetryBudget::new(0.2, 10);
        let mut allowed = 0;
        for _ in 0..1000 {
            budget.deposit();
            if budget.withdraw() {
                allowed += 1;
            }
        }
        // 10 per second over the 10 s window, plus 20% of 1000 requests.
        assert_eq!(allowed, 100 + 200);
        assert!(!budget.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn old_requests_and_retries_leave_the_window() {
        let budget = RetryBudget::new(0.0, 1);
        let spent = (0..20).filter(|_| budget.withdraw()).count();
        assert_eq!(spent, 10, "the floor alone: 1 per second over 10 s");
        tokio::time::advance(WINDOW + Duration::from_secs(1)).await;
        assert!(budget.withdraw(), "the spent retries have left the window");
    }
}
