//! The limits on tokio's paused clock: the exact numbers nginx gives.
//!
//! The reference case is the one nginx's documentation of `limit_req` describes (rate 10r/s,
//! burst 5; "Syntax: limit_req zone=name [burst=number] [nodelay | delay=number]"), worked
//! through `ngx_http_limit_req_lookup` / `_account` in ngx_http_limit_req_module.c: a new key's
//! first request stores excess 0 and passes; each further request at the same millisecond adds
//! 1000 (one request); 2 to 6 reach 1000..5000, within burst*1000 = 5000, and wait
//! excess*1000/rate = 100..500 ms without `nodelay`; the 7th would reach 6000 and is refused,
//! as is every later one in that millisecond.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use http::StatusCode;
use tokio::time::Instant;

use super::*;
use crate::config::{KeyTemplate, Rate};

fn limit(name: &str, rate: Option<(u32, bool)>, burst: u32, nodelay: bool) -> RateLimitConfig {
    RateLimitConfig {
        name: name.to_string(),
        rate: rate.map(|(requests, per_minute)| Rate {
            requests,
            per_minute,
        }),
        burst,
        nodelay,
        key: KeyTemplate::parse("$remote_addr").expect("template"),
        status: 429,
        conns: None,
        max_keys: NonZeroU32::new(100_000).expect("non-zero"),
    }
}

fn parts() -> Parts {
    http::Request::get("/")
        .body(())
        .expect("request")
        .into_parts()
        .0
}

fn ip(n: u32) -> IpAddr {
    IpAddr::from(n.to_be_bytes())
}

/// Sends `n` requests from `client` at once; for each, the time it was let through after
/// (from the start), or its refusal.
async fn burst_of(
    limits: &[Arc<Limiter>],
    client: IpAddr,
    n: usize,
) -> Vec<Result<Duration, Refusal>> {
    let start = Instant::now();
    let parts = parts();
    let all =
        (0..n).map(|_| async { admit(limits, &parts, client).await.map(|_| start.elapsed()) });
    join_all(all).await
}

fn passed_after(results: &[Result<Duration, Refusal>]) -> Vec<u64> {
    results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|d| d.as_millis() as u64))
        .collect()
}

fn refusals(results: &[Result<Duration, Refusal>]) -> Vec<Refusal> {
    results.iter().filter_map(|r| r.err()).collect()
}

const TOO_MANY: Refusal = Refusal {
    status: StatusCode::TOO_MANY_REQUESTS,
    retry_after: Some(1),
};

#[tokio::test(start_paused = true)]
async fn ten_per_second_burst_five_nodelay_passes_six_and_refuses_fourteen() {
    let api = vec![Arc::new(Limiter::new(&limit(
        "api",
        Some((10, false)),
        5,
        true,
    )))];
    let results = burst_of(&api, ip(1), 20).await;
    assert_eq!(passed_after(&results), [0; 6]);
    assert_eq!(refusals(&results), [TOO_MANY; 14]);
}

#[tokio::test(start_paused = true)]
async fn ten_per_second_burst_five_delays_five_at_100_ms_steps() {
    let api = vec![Arc::new(Limiter::new(&limit(
        "api",
        Some((10, false)),
        5,
        false,
    )))];
    let results = burst_of(&api, ip(1), 20).await;
    let mut passed = passed_after(&results);
    passed.sort_unstable();
    assert_eq!(passed, [0, 100, 200, 300, 400, 500]);
    assert_eq!(refusals(&results), [TOO_MANY; 14]);
}

#[tokio::test(start_paused = true)]
async fn the_bucket_refills_at_the_rate() {
    let api = vec![Arc::new(Limiter::new(&limit(
        "api",
        Some((10, false)),
        5,
        true,
    )))];
    assert_eq!(passed_after(&burst_of(&api, ip(1), 7).await).len(), 6);
    // 99 ms leak 990 thousandths: not yet one request.
    tokio::time::advance(Duration::from_millis(99)).await;
    assert_eq!(passed_after(&burst_of(&api, ip(1), 1).await).len(), 0);
    // At 100 ms one request has leaked: one passes, the next is refused.
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(passed_after(&burst_of(&api, ip(1), 2).await).len(), 1);
    // A second later the bucket is empty: 1 + burst pass again.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(passed_after(&burst_of(&api, ip(1), 10).await).len(), 6);
    // Another client was never limited.
    assert_eq!(passed_after(&burst_of(&api, ip(2), 6).await).len(), 6);
}

#[tokio::test(start_paused = true)]
async fn per_minute_rates() {
    // 6r/m: one request every 10 s; burst 0.
    let slow = vec![Arc::new(Limiter::new(&limit(
        "slow",
        Some((6, true)),
        0,
        false,
    )))];
    let first = burst_of(&slow, ip(1), 2).await;
    assert_eq!(passed_after(&first), [0]);
    assert_eq!(
        refusals(&first),
        [Refusal {
            status: StatusCode::TOO_MANY_REQUESTS,
            retry_after: Some(10)
        }]
    );
    tokio::time::advance(Duration::from_millis(9_999)).await;
    assert_eq!(passed_after(&burst_of(&slow, ip(1), 1).await).len(), 0);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(passed_after(&burst_of(&slow, ip(1), 1).await), [0]);
    // With a burst, the extra requests wait 10 s each.
    let spaced = vec![Arc::new(Limiter::new(&limit(
        "s",
        Some((6, true)),
        2,
        false,
    )))];
    let mut passed = passed_after(&burst_of(&spaced, ip(1), 4).await);
    passed.sort_unstable();
    assert_eq!(passed, [0, 10_000, 20_000]);
}

#[tokio::test(start_paused = true)]
async fn a_refusal_by_one_limit_charges_none() {
    let wide = Arc::new(Limiter::new(&limit("wide", Some((100, false)), 10, true)));
    let narrow = Arc::new(Limiter::new(&limit("narrow", Some((1, false)), 0, true)));
    let both = vec![Arc::clone(&wide), Arc::clone(&narrow)];
    let results = burst_of(&both, ip(1), 5).await;
    assert_eq!(passed_after(&results).len(), 1, "narrow lets one through");
    // `wide` was charged for one request only: 11 more pass it alone (1 + burst 10 in all).
    let wide_only = vec![wide];
    assert_eq!(
        passed_after(&burst_of(&wide_only, ip(1), 20).await).len(),
        10
    );
}

#[tokio::test(start_paused = true)]
async fn the_longest_delay_of_several_limits_is_waited() {
    let fast = Arc::new(Limiter::new(&limit("fast", Some((10, false)), 5, false)));
    let slow = Arc::new(Limiter::new(&limit("slow", Some((2, false)), 5, false)));
    let mut passed = passed_after(&burst_of(&[fast, slow], ip(1), 3).await);
    passed.sort_unstable();
    assert_eq!(passed, [0, 500, 1000], "2r/s spaces them by 500 ms");
}

#[tokio::test(start_paused = true)]
async fn conns_count_requests_in_progress_per_key() {
    let mut one = limit("one", None, 0, false);
    one.conns = NonZeroU32::new(2);
    let limits = vec![Arc::new(Limiter::new(&one))];
    let p = parts();
    let a = admit(&limits, &p, ip(1)).await.expect("first");
    let b = admit(&limits, &p, ip(1)).await.expect("second");
    assert!(a.holds() && b.holds());
    assert_eq!(
        admit(&limits, &p, ip(1)).await.err(),
        Some(Refusal {
            status: StatusCode::TOO_MANY_REQUESTS,
            retry_after: None
        })
    );
    let other = admit(&limits, &p, ip(2)).await.expect("another key");
    drop(a);
    let c = admit(&limits, &p, ip(1))
        .await
        .expect("a slot was given back");
    drop((b, c, other));
    assert!(admit(&limits, &p, ip(1)).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_delayed_request_takes_its_conn_slot_after_the_delay() {
    // As in nginx, limit_req runs first: a request waiting out its delay holds no conn slot.
    let mut both = limit("both", Some((10, false)), 5, false);
    both.conns = NonZeroU32::new(1);
    let limits = vec![Arc::new(Limiter::new(&both))];
    let p = parts();
    let first = admit(&limits, &p, ip(1)).await.expect("first");
    // The second is delayed 100 ms, then finds the first still in progress.
    assert_eq!(
        admit(&limits, &p, ip(1)).await.err().map(|r| r.retry_after),
        Some(None)
    );
    drop(first);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(admit(&limits, &p, ip(1)).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn keys_from_request_variables_and_empty_keys_are_not_limited() {
    let mut by_user = limit("user", Some((1, false)), 0, true);
    by_user.key = KeyTemplate::parse("$http_x_user").expect("template");
    let limits = vec![Arc::new(Limiter::new(&by_user))];
    let with = |user: Option<&str>| {
        let mut b = http::Request::get("/");
        if let Some(u) = user {
            b = b.header("x-user", u);
        }
        b.body(()).expect("request").into_parts().0
    };
    let alice = with(Some("alice"));
    assert!(admit(&limits, &alice, ip(1)).await.is_ok());
    assert!(
        admit(&limits, &alice, ip(2)).await.is_err(),
        "same user, other address"
    );
    assert!(admit(&limits, &with(Some("bob")), ip(1)).await.is_ok());
    let anonymous = with(None);
    for _ in 0..5 {
        assert!(admit(&limits, &anonymous, ip(1)).await.is_ok(), "empty key");
    }
}

/// A million distinct client addresses through a limit of the default 100 000 keys: the keys
/// remembered and the memory they take stay at the bound.
#[tokio::test(start_paused = true)]
async fn a_million_clients_stay_within_max_keys() {
    let l = Arc::new(Limiter::new(&limit("api", Some((10, false)), 5, true)));
    let limits = [Arc::clone(&l)];
    let p = parts();
    let max = l.config.max_keys.get() as usize;
    for n in 0..1_000_000u32 {
        let hash = l.key_hash(&p, ip(n));
        assert!(account_rates(&limits, &[hash]).is_ok(), "a new key passes");
        if n % 50_000 == 0 {
            assert!(l.key_count() <= max);
        }
    }
    assert_eq!(l.key_count(), max);
    let bytes = l.heap_bytes();
    assert!(
        bytes <= max * BYTES_PER_KEY,
        "{bytes} bytes for {max} keys, bound {}",
        max * BYTES_PER_KEY
    );
    // The most recent clients are remembered: the last one is limited, an early one is new.
    assert!(
        burst_of(&limits, ip(999_999), 6)
            .await
            .iter()
            .any(|r| r.is_err())
    );
    assert!(burst_of(&limits, ip(0), 6).await.iter().all(|r| r.is_ok()));
}

#[test]
fn a_reload_keeps_an_unchanged_limit_and_renews_a_changed_one() {
    let config = limit("api", Some((10, false)), 5, true);
    let running = Arc::new(Limiter::new(&config));
    assert!(Arc::ptr_eq(
        &Limiter::carry(&config, Some(&running)),
        &running
    ));
    let mut changed = config;
    changed.burst = 6;
    assert!(!Arc::ptr_eq(
        &Limiter::carry(&changed, Some(&running)),
        &running
    ));
}
