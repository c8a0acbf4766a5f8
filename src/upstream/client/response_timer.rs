//! The response timeout (how long an attempt waits for the backend's response head), on
//! timers that each pool reuses from one attempt to the next.
//!
//! `forward` bounds every attempt by it. A fresh tokio timer per attempt goes into the
//! runtime's timer wheel on its first poll and out again when dropped, each time under the
//! wheel's lock: about 800 instructions per request (callgrind, h2load -c50), 2% of all rproxy
//! spends on one. Here an attempt takes a timer an earlier attempt of the pool left, still
//! registered and set for that attempt's deadline. One pool's deadlines are now plus the same
//! timeout, so the old one is usually earlier: the timer is left as it is, wakes the attempt
//! early if it is still waiting then, and is moved to the attempt's own deadline only at that
//! point. A later old deadline (this attempt cut short by `try_timeout`) is moved at once.
//! Measured the same way, this costs 482 instructions per request fewer than a fresh timer.
//! A kept timer still holds the waker of the attempt that last used it, so when its deadline
//! passes with no attempt on it, that attempt's connection task is woken once for nothing.

use std::pin::Pin;
use std::task::{Context, Poll};

use parking_lot::Mutex;
use tokio::time::{Instant, Sleep};

/// Timers kept beyond this many are dropped: more attempts in flight at once than a pool is
/// likely to see again.
const KEPT_MAX: usize = 4096;

/// One pool's timers not in use.
#[derive(Debug, Default)]
pub(crate) struct ResponseTimers {
    kept: Mutex<Vec<Pin<Box<Sleep>>>>,
}

/// The backend sent no response head in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimedOut;

impl ResponseTimers {
    /// `attempt`, ended with `TimedOut` at `due` if it has not finished by then.
    pub(crate) fn bound<F: Future>(&self, due: Instant, attempt: F) -> Bounded<'_, F> {
        Bounded {
            attempt,
            due,
            timer: None,
            timers: self,
        }
    }

    /// A kept timer, set for whatever its last attempt left (see `Bounded::poll`), or a new
    /// one set for `due`.
    fn take(&self, due: Instant) -> Pin<Box<Sleep>> {
        let kept = self.kept.lock().pop();
        kept.unwrap_or_else(|| Box::pin(tokio::time::sleep_until(due)))
    }

    fn give_back(&self, timer: Pin<Box<Sleep>>) {
        let mut kept = self.kept.lock();
        if kept.len() < KEPT_MAX {
            kept.push(timer);
        }
        // A timer over the limit is dropped at the end, after the guard (locals drop in
        // reverse order): dropping a timer takes the timer wheel's lock, not to be held
        // under this one.
    }
}

pin_project_lite::pin_project! {
    /// An attempt bounded by the response timeout; its timer goes back to the pool when it
    /// ends, however it ends.
    pub(crate) struct Bounded<'a, F> {
        #[pin]
        attempt: F,
        due: Instant,
        // Taken on the first poll that finds the attempt pending: an attempt answered at once
        // needs none.
        timer: Option<Pin<Box<Sleep>>>,
        timers: &'a ResponseTimers,
    }

    impl<F> PinnedDrop for Bounded<'_, F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(timer) = this.timer.take() {
                this.timers.give_back(timer);
            }
        }
    }
}

impl<F: Future> Future for Bounded<'_, F> {
    type Output = Result<F::Output, TimedOut>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(done) = this.attempt.poll(cx) {
            return Poll::Ready(Ok(done));
        }
        let due = *this.due;
        let timers = *this.timers;
        let timer = this.timer.get_or_insert_with(|| timers.take(due));
        loop {
            if timer.deadline() > due {
                // Set for later than this attempt may wait: moved (under the wheel's lock).
                timer.as_mut().reset(due);
            }
            match timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if timer.deadline() == due => return Poll::Ready(Err(TimedOut)),
                // An earlier attempt's deadline: the timer wakes this one early, once, and is
                // moved on to its deadline only then. Moving it for every attempt would cost
                // more than this wake does, which happens at most once per timeout per timer.
                Poll::Ready(()) => timer.as_mut().reset(due),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn kept(timers: &ResponseTimers) -> usize {
        timers.kept.lock().len()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Waits on an attempt that never answers, bounded at `due`; returns when it ended.
    async fn ended(timers: &ResponseTimers, due: Instant) -> Instant {
        let outcome = timers.bound(due, std::future::pending::<()>()).await;
        assert_eq!(outcome, Err(TimedOut));
        Instant::now()
    }

    /// An attempt bounded at `due` that is dropped after a second (its answer came, or the
    /// client left): its timer goes back still set for `due`.
    async fn cut_short(timers: &ResponseTimers, due: Instant) {
        let attempt = timers.bound(due, std::future::pending::<()>());
        assert!(tokio::time::timeout(secs(1), attempt).await.is_err());
    }

    /// Not before `due`, and not later than the timer wheel's millisecond rounding.
    fn on_time(ended: Instant, due: Instant) -> bool {
        ended >= due && ended < due + Duration::from_millis(2)
    }

    #[tokio::test(start_paused = true)]
    async fn each_attempt_ends_at_its_own_deadline_whatever_its_timer_was_set_for() {
        let timers = ResponseTimers::default();
        // Moved earlier: a timer set for 30 s serves an attempt due in 5.
        cut_short(&timers, Instant::now() + secs(30)).await;
        assert_eq!(kept(&timers), 1, "its timer came back");
        let due = Instant::now() + secs(5);
        assert!(on_time(ended(&timers, due).await, due));
        // Moved later (the usual case): set for 10 s, it must not end an attempt due in 30.
        cut_short(&timers, Instant::now() + secs(10)).await;
        let due = Instant::now() + secs(30);
        assert!(on_time(ended(&timers, due).await, due));
        // A timer that fired long ago.
        tokio::time::sleep(secs(60)).await;
        let due = Instant::now() + secs(5);
        assert!(on_time(ended(&timers, due).await, due));
        assert_eq!(kept(&timers), 1, "one timer served every attempt");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_in_time_wins_and_attempts_at_once_get_timers_of_their_own() {
        let timers = ResponseTimers::default();
        let due = Instant::now() + secs(10);
        let answer = || async {
            tokio::time::sleep(secs(3)).await;
            "answer"
        };
        let both = tokio::join!(timers.bound(due, answer()), timers.bound(due, answer()));
        assert_eq!(both, (Ok("answer"), Ok("answer")));
        assert_eq!(kept(&timers), 2);
        assert_eq!(timers.bound(due, std::future::ready(1)).await, Ok(1));
        assert_eq!(
            kept(&timers),
            2,
            "an attempt answered at once takes no timer"
        );
    }
}
