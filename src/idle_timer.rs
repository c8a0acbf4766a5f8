//! A timer for "no progress for this long", re-armed in place: one allocation for the life of
//! what it watches, however often progress resets it. Used for the body timeouts (upstream
//! bodies) and the send timeout (client writes).

use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

#[derive(Debug)]
pub(crate) struct IdleTimer {
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl IdleTimer {
    pub(crate) fn new(timeout: Duration) -> Self {
        IdleTimer {
            timeout,
            sleep: None,
            armed: false,
        }
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Call when what is watched made progress.
    pub(crate) fn progressed(&mut self) {
        self.armed = false;
    }

    /// Call when what is watched is pending: true once it has been pending for `timeout`
    /// without progress. Registers the task to be woken when the timeout passes.
    pub(crate) fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = Instant::now() + self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            sleep.as_mut().reset(deadline);
            self.armed = true;
        }
        sleep.as_mut().poll(cx).is_ready()
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
}
