//! The lot against real socket pairs on 127.0.0.1, on tokio's paused clock: a deadline passes
//! only when the test runtime has nothing else to do, so "not before" is exact.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{IdleLot, Parked, ResumeHandle};

/// A test handle: its number, and a flag its owner sets to drain it.
#[derive(Debug)]
struct Handle {
    id: u32,
    drained: Arc<AtomicBool>,
}

impl ResumeHandle for Handle {
    fn drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }
}

fn handle(id: u32) -> Handle {
    Handle {
        id,
        drained: Arc::new(AtomicBool::new(false)),
    }
}

type Given = mpsc::UnboundedReceiver<(std::net::TcpStream, Handle)>;

/// A lot whose task runs on the test's runtime, and what it gives back.
fn lot() -> (Arc<IdleLot<Handle>>, Given, JoinHandle<std::io::Result<()>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (lot, run) = IdleLot::start(move |stream, handle| {
        tx.send((stream, handle))
            .expect("the test holds the receiver");
    })
    .expect("start the lot");
    (lot, rx, tokio::spawn(run))
}

/// A connected pair: the server side (what is parked) and the client.
async fn pair(listener: &TcpListener) -> (std::net::TcpStream, TcpStream) {
    let addr = listener.local_addr().expect("addr");
    let client = TcpStream::connect(addr).await.expect("connect");
    let (server, _) = listener.accept().await.expect("accept");
    (server.into_std().expect("into std"), client)
}

async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("bind")
}

/// Whether the peer of `client` closed it (the read sees the end) within an hour of the
/// paused clock, rather than sending something or leaving it open.
async fn closed(client: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(3600), client.read(&mut buf)).await;
    matches!(read, Ok(Ok(0) | Err(_)))
}

/// The next socket given back, within an hour of the paused clock.
async fn recv(given: &mut Given) -> (std::net::TcpStream, Handle) {
    tokio::time::timeout(Duration::from_secs(3600), given.recv())
        .await
        .expect("given back in time")
        .expect("the lot holds the sender")
}

/// That `secs` seconds have passed since `t0` on the paused clock (timers fire on whole
/// milliseconds, so up to one later).
fn assert_at(t0: Instant, secs: u64) {
    let elapsed = t0.elapsed();
    let at = Duration::from_secs(secs);
    assert!(
        elapsed >= at && elapsed <= at + Duration::from_millis(1),
        "{elapsed:?}, not {at:?}"
    );
}

/// Still waiting `after` from now: nothing given back, and the client's socket still open.
async fn still_waiting(given: &mut Given, client: &mut TcpStream, after: Duration) {
    let mut buf = [0u8; 16];
    assert!(
        tokio::time::timeout(after, client.read(&mut buf))
            .await
            .is_err(),
        "closed or answered while parked"
    );
    assert!(given.try_recv().is_err(), "given back with nothing to read");
}

#[tokio::test(start_paused = true)]
async fn a_socket_comes_back_with_its_handle_when_it_has_bytes_to_read() {
    let (lot, mut given, _run) = lot();
    let l = listener().await;
    let (server, mut client) = pair(&l).await;
    let t0 = Instant::now();
    lot.park(server, t0 + Duration::from_secs(60), handle(7))
        .expect("parked");
    still_waiting(&mut given, &mut client, Duration::from_secs(30)).await;
    client.write_all(b"GET /").await.expect("write");
    let (stream, handle) = recv(&mut given).await;
    assert_eq!(handle.id, 7);
    // Given back at once: no more time passed.
    assert_at(t0, 30);
    // The bytes are still in the socket, for its owner to read.
    let mut stream = TcpStream::from_std(stream).expect("back in tokio");
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"GET /");
    assert_eq!(format!("{lot:?}"), "IdleLot { parked: 0, .. }");
}

#[tokio::test(start_paused = true)]
async fn bytes_sent_before_parking_bring_the_socket_back_at_once() {
    let (lot, mut given, _run) = lot();
    let l = listener().await;
    let (server, mut client) = pair(&l).await;
    client.write_all(b"x").await.expect("write");
    let t0 = Instant::now();
    lot.park(server, t0 + Duration::from_secs(60), handle(1))
        .expect("parked");
    let (_, handle) = recv(&mut given).await;
    assert_eq!(handle.id, 1);
    assert_at(t0, 0);
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_closes_has_its_socket_closed_in_the_lot() {
    // Its owner would only read the end and let the connection go (and its place with it):
    // the lot does that itself, dropping the handle, and gives nothing back.
    let (lot, mut given, _run) = lot();
    let l = listener().await;
    let (server, client) = pair(&l).await;
    let h = handle(3);
    let held = Arc::clone(&h.drained);
    lot.park(server, Instant::now() + Duration::from_secs(60), h)
        .expect("parked");
    drop(client);
    let t0 = Instant::now();
    while Arc::strong_count(&held) > 1 {
        assert!(t0.elapsed() < Duration::from_secs(1), "the handle was kept");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(given.try_recv().is_err(), "given back with nothing to read");
    assert_eq!(format!("{lot:?}"), "IdleLot { parked: 0, .. }");
}

#[tokio::test(start_paused = true)]
async fn a_request_sent_just_before_the_peer_closed_comes_back() {
    let (lot, mut given, _run) = lot();
    let l = listener().await;
    let (server, mut client) = pair(&l).await;
    lot.park(server, Instant::now() + Duration::from_secs(60), handle(4))
        .expect("parked");
    client.write_all(b"GET /").await.expect("write");
    client.shutdown().await.expect("shutdown");
    let (stream, handle) = recv(&mut given).await;
    assert_eq!(handle.id, 4);
    let mut stream = TcpStream::from_std(stream).expect("back in tokio");
    let mut got = Vec::new();
    stream.read_to_end(&mut got).await.expect("read");
    assert_eq!(got, b"GET /");
}

#[tokio::test(start_paused = true)]
async fn a_socket_is_closed_at_its_deadline_and_not_before() {
    let (lot, mut given, _run) = lot();
    let l = listener().await;
    let (late, mut late_client) = pair(&l).await;
    let (early, mut early_client) = pair(&l).await;
    let t0 = Instant::now();
    let drained = Arc::new(AtomicBool::new(false));
    let counted = Handle {
        id: 1,
        drained: Arc::clone(&drained),
    };
    lot.park(late, t0 + Duration::from_secs(60), counted)
        .expect("parked");
    // Parked after, with an earlier deadline: the lot's task must wake for it.
    lot.park(early, t0 + Duration::from_secs(5), handle(2))
        .expect("parked");
    assert!(closed(&mut early_client).await);
    assert_at(t0, 5);
    still_waiting(&mut given, &mut late_client, Duration::from_secs(54)).await;
    assert_eq!(
        Arc::strong_count(&drained),
        2,
        "the late one's handle is kept"
    );
    assert!(closed(&mut late_client).await);
    assert_at(t0, 60);
    assert_eq!(Arc::strong_count(&drained), 1, "its handle was dropped");
    assert!(given.try_recv().is_err());
}

#[tokio::test(start_paused = true)]
async fn drained_sockets_close_at_once_and_the_others_stay() {
    let (lot, mut given, _run) = lot();
    let l = listener().await;
    let (a, mut a_client) = pair(&l).await;
    let (b, mut b_client) = pair(&l).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let a_handle = handle(1);
    let a_drained = Arc::clone(&a_handle.drained);
    lot.park(a, deadline, a_handle).expect("parked");
    lot.park(b, deadline, handle(2)).expect("parked");
    a_drained.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    lot.close_drained();
    assert!(closed(&mut a_client).await);
    assert_at(t0, 0);
    // One whose owner drains already is refused, and closed.
    let (c, mut c_client) = pair(&l).await;
    let c_handle = handle(3);
    c_handle.drained.store(true, Ordering::Relaxed);
    assert!(lot.park(c, deadline, c_handle).is_err());
    assert!(closed(&mut c_client).await);
    // The other one waits on, and comes back.
    b_client.write_all(b"x").await.expect("write");
    let (_, handle) = recv(&mut given).await;
    assert_eq!(handle.id, 2);
}

#[tokio::test(start_paused = true)]
async fn closing_the_lot_closes_every_socket_and_ends_its_task() {
    let (lot, _given, run) = lot();
    let l = listener().await;
    let (a, mut a_client) = pair(&l).await;
    let (b, mut b_client) = pair(&l).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    lot.park(a, deadline, handle(1)).expect("parked");
    lot.park(b, deadline, handle(2)).expect("parked");
    let t0 = Instant::now();
    lot.close();
    assert!(closed(&mut a_client).await);
    assert!(closed(&mut b_client).await);
    run.await.expect("the task").expect("ended without error");
    assert_at(t0, 0);
    let (c, mut c_client) = pair(&l).await;
    assert!(
        lot.park(c, deadline, handle(3)).is_err(),
        "parked after close"
    );
    assert!(closed(&mut c_client).await);
}

#[tokio::test(start_paused = true)]
async fn more_sockets_ready_than_one_poll_reads_all_come_back() {
    // More than a chunk of slots, and more events at once than one poll reads.
    const N: u32 = 300;
    let (lot, mut given, _run) = lot();
    let l = listener().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut clients = Vec::new();
    for id in 0..N {
        let (server, client) = pair(&l).await;
        lot.park(server, deadline, handle(id)).expect("parked");
        clients.push(client);
    }
    for client in &mut clients {
        client.write_all(b"x").await.expect("write");
    }
    let mut ids = Vec::new();
    for _ in 0..N {
        ids.push(recv(&mut given).await.1.id);
    }
    ids.sort_unstable();
    assert_eq!(ids, (0..N).collect::<Vec<u32>>());
    assert_eq!(format!("{lot:?}"), "IdleLot { parked: 0, .. }");
}

/// Whether the peer of `client` closed it within `days` of the paused clock.
async fn closed_within_days(client: &mut TcpStream, days: u64) -> bool {
    let mut buf = [0u8; 16];
    let within = Duration::from_secs(days * DAY);
    let read = tokio::time::timeout(within, client.read(&mut buf)).await;
    matches!(read, Ok(Ok(0) | Err(_)))
}

const DAY: u64 = 86_400;

#[tokio::test(start_paused = true)]
async fn deadlines_stay_exact_over_weeks_of_uptime() {
    // Deadlines are kept as milliseconds from a start the lot moves forward now and then:
    // across those moves, and at the longest keep-alive timeout, each is still met exactly.
    let (lot, _given, _run) = lot();
    let l = listener().await;
    let (a, mut a_client) = pair(&l).await;
    let t0 = Instant::now();
    lot.park(a, t0 + Duration::from_secs(30 * DAY), handle(1))
        .expect("parked");
    tokio::time::advance(Duration::from_secs(9 * 3600)).await;
    let (b, mut b_client) = pair(&l).await;
    let t1 = Instant::now();
    lot.park(b, t1 + Duration::from_secs(5), handle(2))
        .expect("parked");
    assert!(closed(&mut b_client).await);
    assert_at(t1, 5);
    assert!(closed_within_days(&mut a_client, 31).await);
    assert_at(t0, 30 * DAY);
    let (c, mut c_client) = pair(&l).await;
    let t2 = Instant::now();
    lot.park(c, t2 + Duration::from_secs(49 * DAY), handle(3))
        .expect("parked");
    assert!(closed_within_days(&mut c_client, 50).await);
    assert_at(t2, 49 * DAY);
}

#[test]
fn a_slot_takes_8_bytes_beside_its_handle() {
    // A socket and a deadline, 4 bytes each (a debug build of mio adds 8 to the socket), and
    // the socket's descriptor, never -1, leaves room to mark an empty slot: with `http1`'s
    // handle of 88 bytes, the 96 the docs count.
    let socket = std::mem::size_of::<mio::net::TcpStream>();
    assert_eq!(
        std::mem::size_of::<Option<Parked<[u64; 11]>>>(),
        (4 + socket).next_multiple_of(8) + 88
    );
}
