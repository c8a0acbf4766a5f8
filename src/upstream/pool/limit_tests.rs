//! `max_conns` and the queue on the paused clock: who gets a freed slot, in what order, and
//! what a full queue, a wait that runs out and a waiter that leaves do.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::task::JoinHandle;

use super::{InFlightGuard, NoSlot, Pick, Pool, Slot, limit::Want};
use crate::balancer::{PickContext, Tried};

const CTX: PickContext<'static> = PickContext {
    client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
    key: b"",
};

/// A pool of `servers` (TOML array items) with the upstream's `extra` keys.
fn pool(servers: &str, extra: &str) -> Arc<Pool> {
    Arc::new(super::test_pool(servers, extra))
}

fn taken(slot: Slot) -> (usize, InFlightGuard) {
    match slot {
        Slot::Taken(i, guard) => (i, guard),
        other => panic!("expected a slot, got {other:?}"),
    }
}

fn in_flight(pool: &Pool, i: usize) -> u64 {
    pool.backends()[i].live.in_flight()
}

/// Lets the spawned waiters run until `n` of them wait in the queue.
async fn until_queued(pool: &Pool, n: usize) {
    for _ in 0..1000 {
        if pool.queued() == n {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{} waiting, expected {n}", pool.queued());
}

/// A request that waits for `want` and, once it has a slot, notes `name` in `served` and
/// holds the slot until its task ends.
fn waiter(
    pool: &Arc<Pool>,
    want: Want,
    name: &'static str,
    served: &Arc<Mutex<Vec<(&'static str, usize)>>>,
) -> JoinHandle<Result<(usize, InFlightGuard), NoSlot>> {
    let (pool, served) = (Arc::clone(pool), Arc::clone(served));
    tokio::spawn(async move {
        let got = pool.wait_for_slot(&CTX, &Tried::default(), want).await;
        if let Ok((i, _)) = &got {
            served.lock().push((name, *i));
        }
        got
    })
}

const ONE_SLOT: &str = r#"{ addr = "127.0.0.1:1", max_conns = 1 }"#;

#[tokio::test(start_paused = true)]
async fn a_freed_slot_goes_to_the_waiters_first_in_first_out() {
    let p = pool(ONE_SLOT, "queue = { size = 10, timeout = \"10s\" }");
    let (_, first) = taken(p.take_slot(None, &CTX, &Tried::default()));
    assert!(matches!(
        p.take_slot(None, &CTX, &Tried::default()),
        Slot::Busy(Want::Any)
    ));
    let served = Arc::default();
    let mut waiters = Vec::new();
    for (n, name) in ["a", "b", "c"].into_iter().enumerate() {
        waiters.push(waiter(&p, Want::Any, name, &served));
        until_queued(&p, n + 1).await;
    }
    drop(first);
    for (n, w) in waiters.into_iter().enumerate() {
        let (i, guard) = w.await.expect("task").expect("a slot");
        assert_eq!(i, 0);
        assert_eq!(
            in_flight(&p, 0),
            1,
            "a handed-over slot keeps the count at 1"
        );
        assert_eq!(p.queued(), 2 - n);
        drop(guard);
    }
    assert_eq!(*served.lock(), vec![("a", 0), ("b", 0), ("c", 0)]);
    assert_eq!(in_flight(&p, 0), 0, "the last slot came back");
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_at_once_and_a_long_wait_runs_out() {
    let p = pool(ONE_SLOT, "queue = { size = 1, timeout = \"5s\" }");
    let (_, held) = taken(p.take_slot(None, &CTX, &Tried::default()));
    let served = Arc::default();
    let first = waiter(&p, Want::Any, "first", &served);
    until_queued(&p, 1).await;
    let start = tokio::time::Instant::now();
    let refused = p.wait_for_slot(&CTX, &Tried::default(), Want::Any).await;
    assert_eq!(refused.err(), Some(NoSlot::Busy));
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "a full queue answers at once"
    );
    let timed_out = first.await.expect("task");
    assert_eq!(timed_out.err(), Some(NoSlot::Busy));
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
        "the queue's timeout, not {waited:?}"
    );
    assert_eq!(p.queued(), 0);
    assert_eq!(in_flight(&p, 0), 1, "only the held slot");
    drop(held);
    assert_eq!(in_flight(&p, 0), 0);
}

#[tokio::test(start_paused = true)]
async fn without_a_queue_a_busy_pool_refuses_at_once() {
    let p = pool(ONE_SLOT, "");
    let (_, _held) = taken(p.take_slot(None, &CTX, &Tried::default()));
    let refused = p.wait_for_slot(&CTX, &Tried::default(), Want::Any).await;
    assert_eq!(refused.err(), Some(NoSlot::Busy));
    assert_eq!(p.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_that_leaves_gives_up_its_place_and_no_slot() {
    let p = pool(ONE_SLOT, "queue = { size = 10, timeout = \"10s\" }");
    let (_, held) = taken(p.take_slot(None, &CTX, &Tried::default()));
    let served = Arc::default();
    let gone = waiter(&p, Want::Any, "gone", &served);
    until_queued(&p, 1).await;
    let stays = waiter(&p, Want::Any, "stays", &served);
    until_queued(&p, 2).await;
    gone.abort();
    assert!(gone.await.expect_err("aborted").is_cancelled());
    assert_eq!(p.queued(), 1, "the one that left is out of the queue");
    drop(held);
    let (_, guard) = stays.await.expect("task").expect("a slot");
    assert_eq!(*served.lock(), vec![("stays", 0)]);
    drop(guard);
    assert_eq!(in_flight(&p, 0), 0);
}

#[tokio::test(start_paused = true)]
async fn a_pinned_waiter_waits_for_its_own_backend() {
    let p = pool(
        r#"{ addr = "127.0.0.1:1", max_conns = 1 }, { addr = "127.0.0.1:2", max_conns = 1 }"#,
        "queue = { size = 10 }",
    );
    let (a, on_a) = taken(p.take_slot(None, &CTX, &Tried::default()));
    let (b, on_b) = taken(p.take_slot(None, &CTX, &Tried::default()));
    assert_ne!(a, b);
    let served = Arc::default();
    // First in the queue, but pinned to `b`: a slot freed on `a` goes to the next.
    let pinned = waiter(&p, Want::Only(b), "pinned", &served);
    until_queued(&p, 1).await;
    let any = waiter(&p, Want::Any, "any", &served);
    until_queued(&p, 2).await;
    drop(on_a);
    let (i, _on_a) = any.await.expect("task").expect("a slot");
    assert_eq!(i, a);
    assert_eq!(p.queued(), 1, "the pinned one still waits");
    drop(on_b);
    let (i, _on_b) = pinned.await.expect("task").expect("a slot");
    assert_eq!(i, b);
    assert_eq!(*served.lock(), vec![("any", a), ("pinned", b)]);
}

#[tokio::test(start_paused = true)]
async fn busy_primaries_keep_requests_from_the_backups() {
    let p = pool(
        r#"{ addr = "127.0.0.1:1", max_conns = 1 }, { addr = "127.0.0.1:2", backup = true }"#,
        "",
    );
    let (i, _held) = taken(p.take_slot(None, &CTX, &Tried::default()));
    assert_eq!(i, 0);
    assert_eq!(p.select(&CTX, &Tried::default()), Pick::Busy);
    // Once the primary has failed the request, the backup serves it.
    let mut tried = Tried::default();
    tried.insert(0);
    assert_eq!(p.select(&CTX, &tried), Pick::Backend(1));
}

#[tokio::test(start_paused = true)]
async fn a_hashed_key_waits_for_its_backend_rather_than_moving() {
    let p = pool(
        r#"{ addr = "127.0.0.1:1", max_conns = 1 }, { addr = "127.0.0.1:2", max_conns = 1 }"#,
        "balance = \"ip_hash\"",
    );
    let (i, _held) = taken(p.take_slot(None, &CTX, &Tried::default()));
    assert!(matches!(
        p.take_slot(None, &CTX, &Tried::default()),
        Slot::Busy(Want::Only(j)) if j == i
    ));
    // A round-robin pool sends the next request to the other backend instead.
    let p = pool(
        r#"{ addr = "127.0.0.1:1", max_conns = 1 }, { addr = "127.0.0.1:2", max_conns = 1 }"#,
        "",
    );
    let (i, _held) = taken(p.take_slot(None, &CTX, &Tried::default()));
    let (j, _also) = taken(p.take_slot(None, &CTX, &Tried::default()));
    assert_ne!(i, j);
}

#[tokio::test(start_paused = true)]
async fn no_limit_never_refuses() {
    let p = pool(r#""127.0.0.1:1""#, "");
    let guards: Vec<_> = (0..100)
        .map(|_| taken(p.take_slot(None, &CTX, &Tried::default())).1)
        .collect();
    assert_eq!(in_flight(&p, 0), 100);
    drop(guards);
    assert_eq!(in_flight(&p, 0), 0);
    assert_eq!(p.queued(), 0);
}
