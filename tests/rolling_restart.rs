//! A rolling restart of app workers through rproxy, as the README's "Deploying app workers
//! without errors" script does it: for each worker, `rproxy ctl drain app ADDR --wait 30s`,
//! stop and start it again on the same port, wait until its health path answers, then
//! `rproxy ctl enable app ADDR`. Three workers answer in 50-200 ms; 16 clients send GETs and
//! POSTs with bodies all along. With draining: no client error, and every POST body arrives
//! at a worker exactly once. The same restarts without draining lose POSTs (the proof that the
//! test can fail).

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const TOKEN: &str = "rolling-restart-token";
const CLIENTS: usize = 16;

/// What every incarnation of every worker received: POST bodies by id, with counts.
#[derive(Default)]
struct Received {
    posts: Mutex<HashMap<String, usize>>,
}

/// One incarnation of an app worker on a fixed address: answers after 50-200 ms, records
/// POST bodies, and answers `/health`. Stopping it is a process exit: the listener and every
/// connection close, requests in progress included.
struct Worker {
    addr: SocketAddr,
    stop: CancellationToken,
    tasks: TaskTracker,
    /// POSTs being handled right now.
    posts_in_progress: Arc<AtomicUsize>,
}

impl Worker {
    /// A worker on `addr` (`127.0.0.1:0` for a new port); `Worker::addr` says which.
    async fn start(addr: SocketAddr, received: Arc<Received>) -> Worker {
        // Again on the previous incarnation's port: it may take a moment to be free again.
        let listener = {
            let start = std::time::Instant::now();
            loop {
                match TcpListener::bind(addr).await {
                    Ok(l) => break l,
                    Err(e) => {
                        assert!(
                            start.elapsed() < Duration::from_secs(10),
                            "rebind {addr}: {e}"
                        );
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        };
        let addr = listener.local_addr().expect("worker addr");
        let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
        let posts_in_progress = Arc::new(AtomicUsize::new(0));
        let (stopped, tracker, in_progress) =
            (stop.clone(), tasks.clone(), Arc::clone(&posts_in_progress));
        tasks.spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = stopped.cancelled() => return,
                    a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => continue },
                };
                let (received, in_progress) = (Arc::clone(&received), Arc::clone(&in_progress));
                let stopped = stopped.clone();
                tracker.spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (received, in_progress) =
                            (Arc::clone(&received), Arc::clone(&in_progress));
                        async move { Ok::<_, Infallible>(answer(req, &received, &in_progress).await) }
                    });
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = stopped.cancelled() => {}
                        _ = conn => {}
                    }
                });
            }
        });
        Worker {
            addr,
            stop,
            tasks,
            posts_in_progress,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

async fn answer(
    req: Request<Incoming>,
    received: &Received,
    in_progress: &AtomicUsize,
) -> Response<Full<Bytes>> {
    if req.uri().path() == "/health" {
        return Response::new(Full::new(Bytes::from_static(b"ok")));
    }
    let post = req.method() == http::Method::POST;
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let Ok(body) = body else {
        let mut resp = Response::new(Full::default());
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        return resp;
    };
    if post {
        in_progress.fetch_add(1, Ordering::SeqCst);
    }
    tokio::time::sleep(Duration::from_millis(fastrand::u64(50..=200))).await;
    if post {
        // Recorded once handled: a POST cut short by the worker's exit is not counted, as a
        // crashed worker would not have committed it.
        let id = String::from_utf8_lossy(&body).into_owned();
        *received
            .posts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_default() += 1;
        in_progress.fetch_sub(1, Ordering::SeqCst);
    }
    Response::new(Full::new(Bytes::from_static(b"done")))
}

/// What the clients saw.
#[derive(Default)]
struct Seen {
    ok: AtomicUsize,
    errors: Mutex<Vec<String>>,
    /// Ids of POSTs answered 200.
    posted: Mutex<Vec<String>>,
}

/// 16 clients, alternating GETs and POSTs (each POST's body a unique id), until `done`.
fn clients(
    proxy: SocketAddr,
    done: &Arc<AtomicBool>,
    seen: &Arc<Seen>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..CLIENTS)
        .map(|c| {
            let (done, seen) = (Arc::clone(done), Arc::clone(seen));
            tokio::spawn(async move {
                let http = client();
                // Bounded: a run lasts seconds; this is far more than it needs.
                for n in 0..5_000 {
                    if done.load(Ordering::SeqCst) {
                        return;
                    }
                    let id = format!("c{c}-r{n}");
                    let req = if n % 2 == 0 {
                        Request::get(format!("http://{proxy}/page/{id}")).body(Full::default())
                    } else {
                        Request::post(format!("http://{proxy}/orders"))
                            .body(Full::new(Bytes::from(id.clone())))
                    }
                    .expect("request");
                    let ans = send(&http, req).await;
                    if ans.status == StatusCode::OK {
                        seen.ok.fetch_add(1, Ordering::SeqCst);
                        if n % 2 == 1 {
                            seen.posted
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(id);
                        }
                    } else {
                        seen.errors
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(format!("{id}: {}", ans.status));
                    }
                }
            })
        })
        .collect()
}

/// `rproxy ctl ARGS...` against `proxy`'s admin listener: its exit code and output. (The file
/// says port 0, so the address comes from the ready file, as `--admin`.)
async fn ctl(proxy: &Proxy, args: &[&str]) -> (i32, String) {
    let mut cmd = std::process::Command::new(rproxy_bin());
    cmd.arg("ctl")
        .arg("--admin")
        .arg(format!("http://{}", proxy.admin_addr()))
        .args(args)
        .env("RPROXY_ADMIN_TOKEN", TOKEN);
    // Blocking, on a thread of its own: a drain's wait must not stall the clients' runtime.
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run rproxy ctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Waits until the worker at `addr` answers its health path directly.
async fn wait_healthy(addr: SocketAddr) {
    let http = client();
    wait_until("the restarted worker's health path", || {
        let http = http.clone();
        async move {
            let req = Request::get(format!("http://{addr}/health")).body(Full::default());
            match tokio::time::timeout(Duration::from_secs(1), http.request(req.expect("request")))
                .await
            {
                Ok(Ok(resp)) => resp.status() == StatusCode::OK,
                _ => false,
            }
        }
    })
    .await;
}

/// Runs three workers behind rproxy with clients on them, restarts each worker in turn
/// (draining it first when `drain`), and returns what the clients saw and what the workers
/// received.
async fn rolling_restart(drain: bool) -> (Arc<Seen>, Arc<Received>) {
    let received = Arc::new(Received::default());
    let mut addrs = Vec::new();
    let mut workers = Vec::new();
    for _ in 0..3 {
        let worker =
            Worker::start(SocketAddr::from(([127, 0, 0, 1], 0)), Arc::clone(&received)).await;
        addrs.push(worker.addr);
        workers.push(Some(worker));
    }
    let servers: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    let config = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n",
        config_with(&servers.join(", "), "")
    );
    let proxy = Proxy::start(&config);
    let (done, seen) = (Arc::new(AtomicBool::new(false)), Arc::new(Seen::default()));
    let running = clients(proxy.addr(), &done, &seen);
    wait_until("traffic on every worker", || {
        let seen = Arc::clone(&seen);
        async move { seen.ok.load(Ordering::SeqCst) >= 60 }
    })
    .await;

    for (i, addr) in addrs.iter().enumerate() {
        let addr_text = addr.to_string();
        let Some(worker) = workers[i].take() else {
            unreachable!("each worker is restarted once");
        };
        if drain {
            let (code, out) = ctl(&proxy, &["drain", "app", &addr_text, "--wait", "30s"]).await;
            assert_eq!(code, 0, "drain: {out}");
        } else {
            // Stopped while it handles a POST, as a deploy that does not drain would.
            let busy = Arc::clone(&worker.posts_in_progress);
            wait_until("a POST in progress on the worker", || {
                let busy = Arc::clone(&busy);
                async move { busy.load(Ordering::SeqCst) > 0 }
            })
            .await;
        }
        worker.stop().await;
        workers[i] = Some(Worker::start(*addr, Arc::clone(&received)).await);
        wait_healthy(*addr).await;
        if drain {
            let (code, out) = ctl(&proxy, &["enable", "app", &addr_text]).await;
            assert_eq!(code, 0, "enable: {out}");
        }
        // Some traffic on the restarted worker before the next one goes.
        let before = seen.ok.load(Ordering::SeqCst);
        wait_until("traffic after the restart", || {
            let seen = Arc::clone(&seen);
            async move { seen.ok.load(Ordering::SeqCst) >= before + 30 }
        })
        .await;
    }
    done.store(true, Ordering::SeqCst);
    for c in running {
        c.await.expect("client task");
    }
    for w in workers.into_iter().flatten() {
        w.stop().await;
    }
    (seen, received)
}

/// POST ids answered 200 that no worker handled exactly once, and ids handled more than once.
fn posts_not_exactly_once(seen: &Seen, received: &Received) -> (Vec<String>, Vec<String>) {
    let got = received.posts.lock().unwrap_or_else(|e| e.into_inner());
    let posted = seen.posted.lock().unwrap_or_else(|e| e.into_inner());
    let missing = posted
        .iter()
        .filter(|id| got.get(*id) != Some(&1))
        .cloned()
        .collect();
    let twice = got
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id.clone())
        .collect();
    (missing, twice)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_each_worker_first_loses_no_request() {
    let (seen, received) = rolling_restart(true).await;
    let errors = seen
        .errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert!(errors.is_empty(), "client errors: {errors:?}");
    let (missing, twice) = posts_not_exactly_once(&seen, &received);
    assert!(
        missing.is_empty(),
        "POSTs answered but not received once: {missing:?}"
    );
    assert!(twice.is_empty(), "POSTs received twice: {twice:?}");
    assert!(seen.posted.lock().unwrap_or_else(|e| e.into_inner()).len() >= 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_restarts_without_draining_fail_requests() {
    let (seen, received) = rolling_restart(false).await;
    let errors = seen
        .errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    // Each worker was stopped with a POST in progress: such a POST cannot be sent again.
    assert!(!errors.is_empty(), "no client error without draining");
    let (_, twice) = posts_not_exactly_once(&seen, &received);
    assert!(twice.is_empty(), "POSTs received twice: {twice:?}");
}
