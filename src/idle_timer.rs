//! A timer for "no progress for this long", re-armed in place: one allocation for the life of
//! what it watches, however often progress resets it. Used for the body timeouts (upstream
//! bodies), the send timeout (client writes) and parking idle client connections.
//!
//! Progress happens for every chunk or request, so the timer is lazy: progress only notes
//! that the wait is over, and a new wait keeps the timer's old deadline when that is still
//! ahead. When it passes early, the owner is polled, sees the wait is not yet long enough and
//! moves the deadline then. Moving a tokio timer takes the timer driver's lock; this way it
//! happens about once per `timeout`, not once per chunk or request.

use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

#[derive(Debug)]
pub(crate) struct IdleTimer {
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// When the current wait without progress began; `None` after progress.
    since: Option<Instant>,
}

impl IdleTimer {
    pub(crate) fn new(timeout: Duration) -> Self {
        IdleTimer {
            timeout,
            sleep: None,
            since: None,
        }
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Call when what is watched made progress.
    pub(crate) fn progressed(&mut self) {
        self.since = None;
    }

    /// Call when what is watched is pending: true once it has been pending for `timeout`
    /// without progress. Registers the task to be woken by then (possibly earlier, see above).
    pub(crate) fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let now = Instant::now();
        let due = *self.since.get_or_insert(now) + self.timeout;
        if now >= due {
            return true;
        }
        match &mut self.sleep {
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(due))),
            // Passed already, or later than needed: move it.
            Some(sleep) if sleep.deadline() <= now || sleep.deadline() > due => {
                sleep.as_mut().reset(due);
            }
            // Still ahead and no later than `due`: it wakes the owner, which looks again.
            Some(_) => {}
        }
        if let Some(sleep) = &mut self.sleep {
            // Registers the waker; a deadline reached just now is seen on the next call.
            let _ = sleep.as_mut().poll(cx);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn expires_only_after_a_full_timeout_without_progress() {
        let mut t = IdleTimer::new(Duration::from_secs(10));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(!t.expired(&mut cx));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!t.expired(&mut cx));
        t.progressed();
        assert!(!t.expired(&mut cx), "progress re-arms the timer");
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!t.expired(&mut cx));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(t.expired(&mut cx));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_left_from_an_earlier_wait_wakes_the_owner_which_waits_on() {
        let mut t = IdleTimer::new(Duration::from_secs(10));
        let (waker, woken) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(!t.expired(&mut cx)); // deadline at 10s
        tokio::time::advance(Duration::from_secs(4)).await;
        t.progressed();
        assert!(!t.expired(&mut cx)); // this wait is due at 14s; the 10s deadline stays
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(woken() >= 1, "the old deadline wakes the owner");
        assert!(!t.expired(&mut cx), "at 10s this wait is 6s old, not 10s");
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(t.expired(&mut cx), "expired at 14s");
    }

    fn counting_waker() -> (std::task::Waker, impl Fn() -> usize) {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let read = Arc::clone(&count);
        (std::task::Waker::from(count), move || {
            read.0.load(Ordering::Relaxed)
        })
    }
}
