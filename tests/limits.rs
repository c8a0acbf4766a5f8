//! `max_conns` and `[upstreams.NAME.queue]` through the real binary, against backends that
//! count how many requests they hold at once: a backend with `max_conns = 1` never holds two
//! under ten concurrent clients and every request is answered when the queue is large enough;
//! a full queue answers 503 with `Retry-After` at once; a wait that runs out answers 503; with
//! no queue a busy backend means 503 at once; a client that leaves while queued is never sent;
//! a reload keeps the count and the waiters; TCP connections count against the limit too.
//! `/status` shows each server's limit and the queue.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use common::*;

/// An HTTP backend that counts the requests it holds at once and records each one's path and
/// body. Gated, a request waits for a permit the test gives (`release`); otherwise it answers
/// after `delay`. `/health` answers at once and is not counted.
struct Counting {
    addr: SocketAddr,
    now: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    health_checks: Arc<AtomicUsize>,
    seen: Arc<std::sync::Mutex<Vec<(String, Bytes)>>>,
    gate: Option<Arc<Semaphore>>,
}

impl Counting {
    async fn start(delay: Duration, gated: bool) -> Counting {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let backend = Counting {
            addr: listener.local_addr().expect("addr"),
            now: Arc::default(),
            peak: Arc::default(),
            health_checks: Arc::default(),
            seen: Arc::default(),
            gate: gated.then(|| Arc::new(Semaphore::new(0))),
        };
        let (now, peak, checks, seen, gate) = (
            backend.now.clone(),
            backend.peak.clone(),
            backend.health_checks.clone(),
            backend.seen.clone(),
            backend.gate.clone(),
        );
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (now, peak, checks, seen, gate) = (
                    now.clone(),
                    peak.clone(),
                    checks.clone(),
                    seen.clone(),
                    gate.clone(),
                );
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (now, peak, checks, seen, gate) = (
                            now.clone(),
                            peak.clone(),
                            checks.clone(),
                            seen.clone(),
                            gate.clone(),
                        );
                        async move {
                            if req.uri().path() == "/health" {
                                checks.fetch_add(1, Ordering::SeqCst);
                                return Ok::<_, hyper::Error>(Response::new(Full::new(
                                    Bytes::from_static(b"ok"),
                                )));
                            }
                            let held = now.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(held, Ordering::SeqCst);
                            let path = req.uri().path().to_string();
                            let body = req.into_body().collect().await?.to_bytes();
                            seen.lock().expect("lock").push((path.clone(), body));
                            match &gate {
                                Some(gate) => gate.acquire().await.expect("gate").forget(),
                                None => tokio::time::sleep(delay).await,
                            }
                            now.fetch_sub(1, Ordering::SeqCst);
                            Ok(Response::new(Full::new(Bytes::from(path))))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        backend
    }

    /// Lets `n` held requests answer.
    fn release(&self, n: usize) {
        if let Some(gate) = &self.gate {
            gate.add_permits(n);
        }
    }

    fn paths(&self) -> Vec<String> {
        let seen = self.seen.lock().expect("lock");
        seen.iter().map(|(p, _)| p.clone()).collect()
    }

    async fn until_holding(&self, n: usize) {
        wait_for(&format!("{n} requests held"), || {
            self.now.load(Ordering::SeqCst) == n
        })
        .await;
    }
}

/// rproxy with an admin listener, one listener and upstream `app` over `servers`.
fn proxy(servers: &str, upstream_extra: &str) -> Proxy {
    Proxy::start(&config(servers, upstream_extra))
}

fn config(servers: &str, upstream_extra: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = \"off\"\n{}",
        config_with(servers, upstream_extra)
    )
}

fn admin(proxy: &Proxy) -> SocketAddr {
    proxy.admin.expect("admin listener")
}

async fn metric_value(proxy: &Proxy, series: &str) -> f64 {
    metric(&scrape_admin(admin(proxy)).await, series).unwrap_or(0.0)
}

/// Polls `/metrics` until `series` reads `value`.
async fn until_metric(proxy: &Proxy, series: &str, value: f64) {
    let start = Instant::now();
    loop {
        let now = metric_value(proxy, series).await;
        if now == value {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{series} stayed {now}, expected {value}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const QUEUE_LENGTH: &str = "rproxy_upstream_queue_length{upstream=\"app\"}";

fn rejections(reason: &str) -> String {
    format!("rproxy_upstream_queue_rejections_total{{upstream=\"app\",reason=\"{reason}\"}}")
}

/// A GET of `path` in its own task, for requests that will wait.
fn spawn_get(addr: SocketAddr, path: &str) -> tokio::task::JoinHandle<Answer> {
    let path = path.to_string();
    tokio::spawn(async move { get(&client(), addr, &path).await })
}

#[tokio::test]
async fn one_slot_never_holds_two_requests_and_the_queue_serves_every_client() {
    let backend = Counting::start(Duration::from_millis(20), false).await;
    let proxy = proxy(
        &format!(r#"{{ addr = "{}", max_conns = 1 }}"#, backend.addr),
        "[upstreams.app.queue]\nsize = 100\ntimeout = \"20s\"\n\
         [upstreams.app.health_check]\npath = \"/health\"\ninterval = \"50ms\"",
    );
    let addr = proxy.addr();
    let clients: Vec<_> = (0..10)
        .map(|c| {
            tokio::spawn(async move {
                let client = client();
                let mut statuses = Vec::new();
                for r in 0..5 {
                    let req = if r % 2 == 0 {
                        Request::get(format!("http://{addr}/get/{c}/{r}"))
                            .body(Full::default())
                            .expect("request")
                    } else {
                        Request::post(format!("http://{addr}/post/{c}/{r}"))
                            .body(Full::new(Bytes::from(format!("body {c} {r}"))))
                            .expect("request")
                    };
                    statuses.push(send(&client, req).await.status);
                }
                statuses
            })
        })
        .collect();
    for c in clients {
        for status in c.await.expect("client") {
            assert_eq!(status, StatusCode::OK);
        }
    }
    assert_eq!(backend.peak.load(Ordering::SeqCst), 1, "never two at once");
    let seen = backend.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 50, "every request reached the backend once");
    for (path, body) in &seen {
        if let Some(rest) = path.strip_prefix("/post/") {
            let expected = format!("body {}", rest.replace('/', " "));
            assert_eq!(body, expected.as_bytes(), "{path}");
        }
    }
    // Health checks kept running past the limit: they have their own connections and slots.
    assert!(backend.health_checks.load(Ordering::SeqCst) > 0);
    let text = scrape_admin(admin(&proxy)).await;
    let waited = metric(
        &text,
        "rproxy_upstream_queue_wait_seconds_count{upstream=\"app\"}",
    )
    .unwrap_or(0.0);
    assert!(waited > 0.0, "requests waited in the queue:\n{text}");
    for reason in ["full", "timeout", "no_queue"] {
        assert_eq!(metric(&text, &rejections(reason)), Some(0.0), "{reason}");
    }
    assert_eq!(metric(&text, QUEUE_LENGTH), Some(0.0));
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after_at_once() {
    let backend = Counting::start(Duration::ZERO, true).await;
    let proxy = proxy(
        &format!(r#"{{ addr = "{}", max_conns = 1 }}"#, backend.addr),
        "queue = { size = 2, timeout = \"30s\" }",
    );
    let addr = proxy.addr();
    let held = spawn_get(addr, "/held");
    backend.until_holding(1).await;
    let queued = [spawn_get(addr, "/q1"), spawn_get(addr, "/q2")];
    until_metric(&proxy, QUEUE_LENGTH, 2.0).await;
    let status: serde_json::Value =
        serde_json::from_str(&get(&client(), admin(&proxy), "/status").await.body)
            .expect("status JSON");
    let app = &status["upstreams"][0];
    assert_eq!(
        app["queue"],
        serde_json::json!({ "length": 2, "size": 2, "timeout_ms": 30_000 })
    );
    assert_eq!(app["backends"][0]["max_conns"], 1);
    assert_eq!(app["backends"][0]["in_flight"], 1);

    let start = Instant::now();
    let refused = get(&client(), addr, "/refused").await;
    let took = start.elapsed();
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers["retry-after"], "1");
    assert!(
        took < Duration::from_secs(5),
        "answered at once, not after the queue's 30 s: {took:?}"
    );
    assert_eq!(metric_value(&proxy, &rejections("full")).await, 1.0);

    backend.release(3);
    assert_eq!(held.await.expect("task").status, StatusCode::OK);
    for q in queued {
        assert_eq!(q.await.expect("task").status, StatusCode::OK);
    }
    assert_eq!(backend.peak.load(Ordering::SeqCst), 1);
    let mut paths = backend.paths();
    paths.sort();
    assert_eq!(paths, ["/held", "/q1", "/q2"], "the refused one never went");
    until_metric(&proxy, QUEUE_LENGTH, 0.0).await;
}

/// The time to the backend's answer (the access log's `upstream_time`, and what the balancer's
/// latency window records) starts when the request is sent, not when it began waiting for a
/// slot: the queue is rproxy's time, not the backend's.
#[tokio::test]
async fn a_queued_request_s_upstream_time_leaves_out_its_wait() {
    let backend = Counting::start(Duration::ZERO, true).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let proxy = Proxy::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = \"{}\"\nformat = \"json\"\n{}",
        log.display(),
        config_with(
            &format!(r#"{{ addr = "{}", max_conns = 1 }}"#, backend.addr),
            "queue = { size = 5, timeout = \"30s\" }",
        )
    ));
    let addr = proxy.addr();
    let held = spawn_get(addr, "/held");
    backend.until_holding(1).await;
    let queued = spawn_get(addr, "/queued");
    until_metric(&proxy, QUEUE_LENGTH, 1.0).await;
    // The slot stays taken a while: part of the scenario, not a wait for a condition.
    tokio::time::sleep(Duration::from_millis(300)).await;
    backend.release(2);
    assert_eq!(held.await.expect("task").status, StatusCode::OK);
    assert_eq!(queued.await.expect("task").status, StatusCode::OK);

    let mut line = None;
    wait_for("/queued in the access log", || {
        line = json_lines(&log)
            .into_iter()
            .find(|l| l["target"] == "/queued");
        line.is_some()
    })
    .await;
    let line = line.expect("found");
    let (request, upstream) = (
        line["request_time"].as_f64().expect("request_time"),
        line["upstream_time"].as_f64().expect("upstream_time"),
    );
    assert!(request >= 0.3, "it waited at least 300 ms: {line}");
    assert!(
        request - upstream >= 0.25,
        "the wait is not the backend's time: {line}"
    );
}

#[tokio::test]
async fn a_wait_that_runs_out_answers_503() {
    let backend = Counting::start(Duration::ZERO, true).await;
    let proxy = proxy(
        &format!(r#"{{ addr = "{}", max_conns = 1 }}"#, backend.addr),
        "queue = { size = 5, timeout = \"300ms\" }",
    );
    let addr = proxy.addr();
    let held = spawn_get(addr, "/held");
    backend.until_holding(1).await;
    let start = Instant::now();
    let late = get(&client(), addr, "/late").await;
    assert_eq!(late.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(late.headers["retry-after"], "1");
    assert!(start.elapsed() >= Duration::from_millis(300), "it waited");
    assert_eq!(metric_value(&proxy, &rejections("timeout")).await, 1.0);
    backend.release(1);
    assert_eq!(held.await.expect("task").status, StatusCode::OK);
    assert_eq!(backend.paths(), ["/held"]);
}

#[tokio::test]
async fn without_a_queue_a_busy_backend_answers_503_at_once() {
    let busy = Counting::start(Duration::ZERO, true).await;
    let proxy = proxy(
        &format!(r#"{{ addr = "{}", max_conns = 1 }}"#, busy.addr),
        "",
    );
    let addr = proxy.addr();
    let held = spawn_get(addr, "/held");
    busy.until_holding(1).await;
    let refused = get(&client(), addr, "/refused").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers["retry-after"], "1");
    assert_eq!(metric_value(&proxy, &rejections("no_queue")).await, 1.0);
    busy.release(1);
    assert_eq!(held.await.expect("task").status, StatusCode::OK);
    assert_eq!(busy.paths(), ["/held"]);
}

#[tokio::test]
async fn a_busy_backend_sends_requests_to_one_with_room() {
    let busy = Counting::start(Duration::ZERO, true).await;
    let free = Counting::start(Duration::ZERO, false).await;
    let proxy = proxy(
        &format!(
            r#"{{ addr = "{}", max_conns = 1 }}, "{}""#,
            busy.addr, free.addr
        ),
        "",
    );
    let addr = proxy.addr();
    // Round-robin's first pick is the first server; while it holds that request, every
    // other goes to the second rather than waiting or failing.
    let held = spawn_get(addr, "/held");
    busy.until_holding(1).await;
    for _ in 0..6 {
        assert_eq!(get(&client(), addr, "/other").await.status, StatusCode::OK);
    }
    assert_eq!(free.paths(), ["/other"; 6]);
    busy.release(1);
    assert_eq!(held.await.expect("task").status, StatusCode::OK);
    assert_eq!(busy.paths(), ["/held"]);
}

#[tokio::test]
async fn a_client_that_leaves_while_queued_is_never_sent() {
    let backend = Counting::start(Duration::ZERO, true).await;
    let proxy = proxy(
        &format!(r#"{{ addr = "{}", max_conns = 1 }}"#, backend.addr),
        "queue = { size = 5, timeout = \"60s\" }",
    );
    let addr = proxy.addr();
    let held = spawn_get(addr, "/held");
    backend.until_holding(1).await;
    let mut leaving = TcpStream::connect(addr).await.expect("connect");
    leaving
        .write_all(b"GET /left HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    until_metric(&proxy, QUEUE_LENGTH, 1.0).await;
    drop(leaving);
    // The place is given up when the client goes, not when the 60 s wait runs out.
    until_metric(&proxy, QUEUE_LENGTH, 0.0).await;
    backend.release(2);
    assert_eq!(held.await.expect("task").status, StatusCode::OK);
    assert_eq!(get(&client(), addr, "/after").await.status, StatusCode::OK);
    assert_eq!(backend.paths(), ["/held", "/after"]);
}

#[tokio::test]
async fn a_reload_keeps_the_count_and_the_waiters() {
    let backend = Counting::start(Duration::ZERO, true).await;
    let servers = format!(r#"{{ addr = "{}", max_conns = 1 }}"#, backend.addr);
    let proxy = proxy(&servers, "queue = { size = 5, timeout = \"30s\" }");
    let addr = proxy.addr();
    let held = spawn_get(addr, "/held");
    backend.until_holding(1).await;
    let before = spawn_get(addr, "/before");
    until_metric(&proxy, QUEUE_LENGTH, 1.0).await;

    std::fs::write(
        &proxy.config_path,
        config(&servers, "queue = { size = 6, timeout = \"30s\" }"),
    )
    .expect("write config");
    proxy.signal("HUP");
    until_metric(
        &proxy,
        "rproxy_config_reloads_total{result=\"success\"}",
        1.0,
    )
    .await;
    // The new snapshot sees the request still held: this one queues behind the first.
    let after = spawn_get(addr, "/after");
    until_metric(&proxy, QUEUE_LENGTH, 2.0).await;
    assert_eq!(backend.now.load(Ordering::SeqCst), 1);

    backend.release(3);
    for h in [held, before, after] {
        assert_eq!(h.await.expect("task").status, StatusCode::OK);
    }
    assert_eq!(backend.peak.load(Ordering::SeqCst), 1);
    assert_eq!(backend.paths(), ["/held", "/before", "/after"], "in order");
}

/// A TCP backend that counts open connections (and the most at once) and echoes.
async fn tcp_echo() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (open, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (o, p) = (open.clone(), peak.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (o, p) = (o.clone(), p.clone());
            tokio::spawn(async move {
                p.fetch_max(o.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, open, peak)
}

async fn echoed(s: &mut TcpStream, text: &[u8]) -> bool {
    s.write_all(text).await.expect("write");
    let mut back = vec![0u8; text.len()];
    matches!(
        tokio::time::timeout(DEADLINE, s.read_exact(&mut back)).await,
        Ok(Ok(_)) if back == text
    )
}

#[tokio::test]
async fn tcp_connections_count_against_max_conns() {
    let (backend, open, peak) = tcp_echo().await;
    let proxy = Proxy::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = \"off\"\n\
         [listeners.tcp]\nlisten = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nupstream = \"app\"\n\
         [upstreams.app]\nservers = [{{ addr = \"{backend}\", max_conns = 1 }}]\n\
         queue = {{ size = 1, timeout = \"30s\" }}\n"
    ));
    let addr = proxy.addr();
    let mut first = TcpStream::connect(addr).await.expect("connect");
    assert!(echoed(&mut first, b"one").await);
    // The second connection waits for the first's slot, with its bytes held back.
    let mut second = TcpStream::connect(addr).await.expect("connect");
    second.write_all(b"two").await.expect("write");
    until_metric(&proxy, QUEUE_LENGTH, 1.0).await;
    // The queue is full: a third is closed at once, without reaching the backend.
    let mut third = TcpStream::connect(addr).await.expect("connect");
    assert!(read_until_closed(&mut third).await.is_empty());
    assert_eq!(metric_value(&proxy, &rejections("full")).await, 1.0);
    assert_eq!(open.load(Ordering::SeqCst), 1);

    drop(first);
    let mut back = [0u8; 3];
    tokio::time::timeout(DEADLINE, second.read_exact(&mut back))
        .await
        .expect("in time")
        .expect("echo");
    assert_eq!(&back, b"two");
    assert_eq!(
        peak.load(Ordering::SeqCst),
        1,
        "never two connections at once"
    );
}
