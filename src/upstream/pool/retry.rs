//! Retries: after an attempt failed, whether the request goes to another backend.
//!
//! The forwarder asks after every failed attempt; the pool's balancer then picks a backend not
//! yet tried. A retry must be safe, fit the pool's bounds, and be affordable:
//! - safe: nothing reached the backend (refused, connect timeout), or the method is idempotent
//!   (or `retry_non_idempotent` is set) and no response started; in both cases the whole body
//!   must still be at hand (not read yet, or kept within `retry_buffer`);
//! - bounded: at most `tries` attempts, all within `try_timeout`;
//! - affordable: the pool's retry budget (`retry_budget`) lets retries add at most a share of
//!   the request rate, plus a small floor so that a quiet pool can still retry, which keeps a
//!   failing pool from being hammered by its own retries.

use std::time::Duration;

use http::Method;
use tokio::time::Instant;

use crate::config::RetryPolicy;
use crate::metrics::RetryRefusal;

use crate::upstream::client::UpstreamError;

use super::retry_budget::RetryBudget;

/// Retries a pool allows regardless of its request rate, per second.
const MIN_RETRIES_PER_SECOND: u64 = 10;

/// One pool's retry rules and its budget, shared by all its requests.
#[derive(Debug)]
pub(crate) struct RetryRules {
    policy: RetryPolicy,
    budget: Option<RetryBudget>,
}

impl RetryRules {
    pub(crate) fn new(policy: &RetryPolicy) -> Self {
        RetryRules {
            budget: policy
                .budget
                .map(|ratio| RetryBudget::new(ratio, MIN_RETRIES_PER_SECOND)),
            policy: policy.clone(),
        }
    }

    /// A request starts: it adds to the budget, and its attempts are bounded from now.
    pub(crate) fn start(&self, method: &Method) -> Attempts<'_> {
        if let Some(budget) = &self.budget {
            budget.deposit();
        }
        Attempts {
            rules: self,
            made: 0,
            deadline: self.policy.try_timeout.map(|t| Instant::now() + t),
            may_resend: self.policy.non_idempotent || is_idempotent(method),
        }
    }

    /// How much of a request body to keep for sending it again: none for a request that will
    /// never be resent after reaching a backend.
    pub(crate) fn body_to_keep(&self, method: &Method) -> usize {
        if self.policy.non_idempotent || is_idempotent(method) {
            self.policy.buffer
        } else {
            0
        }
    }
}

/// The attempts of one request.
#[derive(Debug)]
pub(crate) struct Attempts<'a> {
    rules: &'a RetryRules,
    made: u32,
    deadline: Option<Instant>,
    may_resend: bool,
}

impl Attempts<'_> {
    /// Starts an attempt; returns how long it may wait for the response head: the pool's
    /// `response` timeout, cut to what is left of `try_timeout`.
    pub(crate) fn begin(&mut self, response: Duration) -> Duration {
        self.made += 1;
        match self.deadline {
            Some(deadline) => response.min(deadline.saturating_duration_since(Instant::now())),
            None => response,
        }
    }

    /// Whether any attempt after the first could be made: not under `tries = 1`.
    pub(crate) fn may_follow(&self) -> bool {
        self.rules.policy.tries.is_none_or(|t| t > 1)
    }

    /// After a failed attempt: `Ok` if the request may go to another backend (the budget has
    /// then paid for it), else why not.
    pub(crate) fn retry(
        &self,
        failure: &UpstreamError,
        body_at_hand: bool,
    ) -> Result<(), RetryRefusal> {
        if !body_at_hand || (failure.reached_backend() && !self.may_resend) {
            return Err(RetryRefusal::Unsafe);
        }
        if self.rules.policy.tries.is_some_and(|t| self.made >= t) {
            return Err(RetryRefusal::Tries);
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(RetryRefusal::TryTimeout);
        }
        if let Some(budget) = &self.rules.budget
            && !budget.withdraw()
        {
            return Err(RetryRefusal::Budget);
        }
        Ok(())
    }
}

/// Methods that RFC 9110 defines as idempotent: sending them twice has the effect of once.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::defaults;

    /// A failed connect: nothing reached the backend.
    fn not_sent() -> UpstreamError {
        UpstreamError::connect(
            &"127.0.0.1:1".parse().expect("addr"),
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        )
    }

    /// No answer in time: the request may have reached the backend.
    fn no_answer() -> UpstreamError {
        UpstreamError::timed_out(Duration::from_secs(1))
    }

    fn rules(f: impl FnOnce(&mut RetryPolicy)) -> RetryRules {
        let mut policy = RetryPolicy {
            tries: None,
            try_timeout: None,
            non_idempotent: false,
            buffer: defaults::RETRY_BUFFER,
            budget: None,
        };
        f(&mut policy);
        RetryRules::new(&policy)
    }

    #[test]
    fn only_safe_failures_are_retried() {
        let r = rules(|_| {});
        let mut post = r.start(&Method::POST);
        post.begin(Duration::from_secs(1));
        assert_eq!(post.retry(&not_sent(), true), Ok(()));
        assert_eq!(post.retry(&no_answer(), true), Err(RetryRefusal::Unsafe));
        assert_eq!(r.body_to_keep(&Method::POST), 0);
        let mut get = r.start(&Method::GET);
        get.begin(Duration::from_secs(1));
        assert_eq!(get.retry(&no_answer(), true), Ok(()));
        assert_eq!(
            get.retry(&no_answer(), false),
            Err(RetryRefusal::Unsafe),
            "a body that left and was not kept cannot be sent again"
        );
        let r = rules(|p| p.non_idempotent = true);
        let post = r.start(&Method::POST);
        assert_eq!(post.retry(&no_answer(), true), Ok(()));
        assert_eq!(r.body_to_keep(&Method::PATCH), defaults::RETRY_BUFFER);
    }

    #[test]
    fn tries_count_the_first_attempt() {
        let r = rules(|p| p.tries = Some(2));
        let mut a = r.start(&Method::GET);
        a.begin(Duration::from_secs(1));
        assert_eq!(a.retry(&not_sent(), true), Ok(()));
        a.begin(Duration::from_secs(1));
        assert_eq!(a.retry(&not_sent(), true), Err(RetryRefusal::Tries));
    }

    /// `forward` keeps no copy of the head when no attempt can follow the first: that must
    /// be exactly when `retry` can never say yes.
    #[test]
    fn no_attempt_follows_the_first_under_one_try() {
        let one = rules(|p| p.tries = Some(1));
        let mut a = one.start(&Method::GET);
        assert!(!a.may_follow());
        a.begin(Duration::from_secs(1));
        assert_eq!(a.retry(&not_sent(), true), Err(RetryRefusal::Tries));
        for tries in [None, Some(2)] {
            let r = rules(|p| p.tries = tries);
            let mut a = r.start(&Method::GET);
            assert!(a.may_follow(), "tries = {tries:?}");
            a.begin(Duration::from_secs(1));
            assert_eq!(a.retry(&not_sent(), true), Ok(()));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn try_timeout_bounds_every_attempt_and_the_retries() {
        let r = rules(|p| p.try_timeout = Some(Duration::from_secs(5)));
        let mut a = r.start(&Method::GET);
        assert_eq!(a.begin(Duration::from_secs(3)), Duration::from_secs(3));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(a.retry(&no_answer(), true), Ok(()));
        assert_eq!(
            a.begin(Duration::from_secs(3)),
            Duration::from_secs(2),
            "the second attempt gets what is left"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(a.retry(&no_answer(), true), Err(RetryRefusal::TryTimeout));
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_caps_retries_at_a_share_of_requests() {
        let r = rules(|p| p.budget = Some(0.2));
        // The floor: MIN_RETRIES_PER_SECOND over the window, whatever the traffic.
        let floor = MIN_RETRIES_PER_SECOND * 10;
        let mut allowed = 0;
        for _ in 0..1000 {
            let a = r.start(&Method::GET);
            if a.retry(&not_sent(), true).is_ok() {
                allowed += 1;
            }
        }
        // 1000 requests allow 20% of them on top of the floor, and no more.
        assert_eq!(allowed, floor + 200);
        let a = r.start(&Method::GET);
        assert_eq!(a.retry(&not_sent(), true), Err(RetryRefusal::Budget));
    }

    /// Whether a request with `method` that reached a backend which then failed without
    /// answering goes to another one, and how much of its body is kept for that.
    fn resent(r: &RetryRules, method: &Method) -> (bool, usize) {
        let mut a = r.start(method);
        a.begin(Duration::from_secs(1));
        (a.retry(&no_answer(), true).is_ok(), r.body_to_keep(method))
    }

    #[test]
    fn every_idempotent_method_is_resent_and_no_other() {
        let r = rules(|_| {});
        let keep = defaults::RETRY_BUFFER;
        // RFC 9110's idempotent methods.
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::TRACE,
            Method::PUT,
            Method::DELETE,
        ] {
            assert_eq!(resent(&r, &m), (true, keep), "{m}");
        }
        // nginx's non-idempotent methods (POST, LOCK, PATCH), CONNECT, and methods rproxy does
        // not know: sending them twice may do twice what they do.
        let unknown = |name: &str| Method::from_bytes(name.as_bytes()).expect("a method");
        for m in [
            Method::POST,
            Method::PATCH,
            unknown("LOCK"),
            Method::CONNECT,
            unknown("PURGE"),
        ] {
            assert_eq!(resent(&r, &m), (false, 0), "{m}");
            // Nothing reached the backend: safe whatever the method.
            let mut a = r.start(&m);
            a.begin(Duration::from_secs(1));
            assert_eq!(a.retry(&not_sent(), true), Ok(()), "{m}");
            // Unless told they may be resent.
            let anyway = rules(|p| p.non_idempotent = true);
            assert_eq!(resent(&anyway, &m), (true, keep), "{m}");
        }
    }
}
