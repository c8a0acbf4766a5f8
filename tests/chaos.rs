//! Chaos under load: 64 keep-alive clients send GETs through rproxy to three backends, each a
//! separate process, while one of them is killed (SIGKILL: the process gone, its port
//! refusing) or frozen (SIGSTOP: connections accepted by the kernel, never answered) and later
//! brought back. Every client request must succeed; the backend must be out of rotation by its
//! `fall`-th failed check and back by its `rise`-th passed one, and its share must then ramp
//! up over `slow_start`.
//!
//! Timings are counted in health checks and judged over whole phases, not in wall-clock
//! windows, so a busy machine (2 shared cores) slows the test down but does not fail it.
//!
//! The backends are this test binary run again with `CHAOS_BACKEND` set (see
//! `backend_process`), so killing one kills a real process.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};

use common::*;

const INTERVAL_MS: u64 = 500;
const RISE: u64 = 2;
const FALL: u64 = 3;
const SLOW_START: Duration = Duration::from_secs(4);
const CLIENTS: usize = 64;

/// One backend process on a fixed address, so that it can be restarted on the same port.
struct ProcessBackend {
    name: &'static str,
    addr: SocketAddr,
    child: Option<Child>,
}

impl ProcessBackend {
    fn start(name: &'static str) -> ProcessBackend {
        // A free port, given to the child to bind with SO_REUSEADDR.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let mut b = ProcessBackend {
            name,
            addr,
            child: None,
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        use std::io::BufRead;
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["backend_process", "--exact", "--ignored", "--nocapture"])
            .env("CHAOS_BACKEND", format!("{}@{}", self.name, self.addr))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn backend process");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        // The child prints `ready` once it listens (or exits, ending the lines).
        let ready = lines.any(|l| l.is_ok_and(|l| l.contains("chaos backend ready")));
        assert!(
            ready,
            "backend {} did not start on {}",
            self.name, self.addr
        );
        self.child = Some(child);
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -{sig} {pid}"))
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -{sig} {pid} failed");
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ProcessBackend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Not a test: the body of the backend processes. Without `CHAOS_BACKEND` it returns at once.
#[test]
#[ignore = "entry point of the chaos backend processes, run by the chaos tests"]
fn backend_process() {
    let Ok(spec) = std::env::var("CHAOS_BACKEND") else {
        return;
    };
    let (name, addr) = spec.split_once('@').expect("name@addr");
    let addr: SocketAddr = addr.parse().expect("addr");
    let name: &'static str = Box::leak(name.to_string().into_boxed_str());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket.set_reuse_address(true).expect("reuseaddr");
        socket.bind(&addr.into()).expect("bind backend port");
        socket.listen(1024).expect("listen");
        socket.set_nonblocking(true).expect("nonblocking");
        let listener = tokio::net::TcpListener::from_std(socket.into()).expect("tokio listener");
        println!("chaos backend ready");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: Request<hyper::body::Incoming>| async move {
                        let body = if req.uri().path() == "/health" {
                            "ok"
                        } else {
                            name
                        };
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .header("x-backend", name)
                                .body(Full::new(Bytes::from_static(body.as_bytes())))
                                .expect("response"),
                        )
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// What one client saw: when (since the start), and which backend answered (`None`: failed).
type Outcome = (Duration, Option<String>);

/// Runs `CLIENTS` keep-alive clients until `stop`, each with its own connection.
fn load(
    proxy: SocketAddr,
    stop: &Arc<AtomicBool>,
    start: Instant,
) -> Vec<tokio::task::JoinHandle<Vec<Outcome>>> {
    (0..CLIENTS)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let c = client();
                let mut seen = Vec::new();
                // Bounded in count as well as in time.
                while !stop.load(Ordering::Relaxed) && seen.len() < 200_000 {
                    let req = Request::get(format!("http://{proxy}/"))
                        .body(Full::default())
                        .expect("request");
                    let answer = match tokio::time::timeout(DEADLINE, c.request(req)).await {
                        Ok(Ok(resp)) if resp.status() == 200 => {
                            let backend = resp
                                .headers()
                                .get("x-backend")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string);
                            resp.into_body().collect().await.ok().and(backend)
                        }
                        _ => None,
                    };
                    seen.push((start.elapsed(), answer));
                }
                seen
            })
        })
        .collect()
}

async fn finish(tasks: Vec<tokio::task::JoinHandle<Vec<Outcome>>>) -> Vec<Outcome> {
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    all
}

fn config(backends: &[ProcessBackend], extra: &str) -> String {
    let servers = backends
        .iter()
        .map(|b| format!("\"{}\"", b.addr))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}slow_start = \"{}s\"\n{extra}\n[upstreams.app.health_check]\npath = \"/health\"\ninterval = \"{INTERVAL_MS}ms\"\ntimeout = \"300ms\"\nrise = {RISE}\nfall = {FALL}\n",
        config_with(&servers, ""),
        SLOW_START.as_secs()
    )
}

/// The share of answers from `name` among those that came in `from..to`.
fn share(outcomes: &[Outcome], name: &str, from: Duration, to: Duration) -> (f64, usize) {
    let window: Vec<_> = outcomes
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .collect();
    let hits = window
        .iter()
        .filter(|(_, b)| b.as_deref() == Some(name))
        .count();
    (hits as f64 / window.len().max(1) as f64, window.len())
}

/// A backend's health as one `/metrics` scrape shows it.
#[derive(Debug, Clone, Copy)]
struct Health {
    passed: f64,
    failed: f64,
    in_rotation: bool,
}

async fn health(proxy: &Proxy, addr: SocketAddr) -> Health {
    let m = proxy.scrape().await;
    let value = |name: &str, extra: &str| metric(&m, &backend_series(name, "app", addr, extra));
    Health {
        passed: value("rproxy_health_checks_total", ",result=\"pass\"").unwrap_or(0.0),
        failed: value("rproxy_health_checks_total", ",result=\"fail\"").unwrap_or(0.0),
        in_rotation: value("rproxy_backend_up", "") == Some(1.0),
    }
}

/// Scrapes until `done` holds, and returns that scrape.
async fn health_when(
    proxy: &Proxy,
    addr: SocketAddr,
    what: &str,
    done: impl Fn(Health) -> bool,
) -> Health {
    let start = Instant::now();
    loop {
        let h = health(proxy, addr).await;
        if done(h) {
            return h;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}: {h:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs load while `disrupt` takes backend `b` out and `restore` brings it back; checks
/// zero failures, when it left and came back (in checks), and the slow-start ramp.
async fn chaos(extra: &str, disrupt: &str, restore: fn(&mut ProcessBackend)) {
    // One scenario at a time: two would share the 2 cores and slow each other down.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut backends = vec![
        ProcessBackend::start("a"),
        ProcessBackend::start("b"),
        ProcessBackend::start("c"),
    ];
    let proxy = Proxy::start(&config(&backends, extra));
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(proxy.addr(), &stop, start);
    // Traffic to all three for a while (a phase of the scenario, not a wait for a condition).
    tokio::time::sleep(Duration::from_secs(2)).await;

    let b = backends[1].addr;
    let before = health(&proxy, b).await;
    backends[1].signal(disrupt);
    let out_at = start.elapsed();
    // Its checks run one after another, each publishing its verdict before the next starts:
    // once one more than `fall` have failed, the verdict of the `fall`-th is out. By then it
    // must be out of rotation (by its checks, or sooner by passive health).
    let out = health_when(&proxy, b, "fall + 1 failed checks", |h| {
        h.failed - before.failed > FALL as f64
    })
    .await;
    let ejected_after = start.elapsed() - out_at;
    assert!(
        !out.in_rotation,
        "still in rotation after {FALL} failed checks: {out:?}"
    );
    // Out for a while, under load.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Every check fails while it is out, so the passes counted from here on all came after
    // the restore (a check caught by the freeze may pass just after it).
    let restored = health(&proxy, b).await;
    restore(&mut backends[1]);
    let back_at = start.elapsed();
    // Back in rotation once `rise` checks pass, and at the latest when one more has passed
    // (as above, the `rise`-th check's verdict is out by then). Only the checks can bring it
    // back this soon (passive health keeps it out for fail_timeout, 10 s).
    let back = health_when(&proxy, b, "back in rotation", |h| {
        h.in_rotation || h.passed - restored.passed > RISE as f64
    })
    .await;
    let healthy_at = start.elapsed();
    let returned_after = healthy_at - back_at;
    let passes = back.passed - restored.passed;
    assert!(
        back.in_rotation,
        "still out after {passes} passed checks: {back:?}"
    );
    assert!(
        passes >= RISE as f64,
        "back after {passes} passed checks: {back:?}"
    );
    // /status shows the ramp while it runs: begun since the restore, so no further along.
    let status = proxy.status().await;
    let since_restore = start.elapsed() - back_at;
    let ramp = backend_in(&status, "app", b).and_then(|b| b["slow_start_share"].as_f64());
    if since_restore < SLOW_START {
        let most = (since_restore.as_secs_f64() / SLOW_START.as_secs_f64()).max(1.0 / 16.0);
        assert!(
            ramp.is_some_and(|r| r > 0.0 && r <= most + 1e-6),
            "slow start in /status: {ramp:?}, at most {most:.3} {since_restore:?} after the restore"
        );
    }
    tokio::time::sleep(SLOW_START + Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let outcomes = finish(tasks).await;

    let failed = outcomes.iter().filter(|(_, b)| b.is_none()).count();
    let ramp_end = healthy_at + SLOW_START;
    let (during, n_during) = share(&outcomes, "b", healthy_at, ramp_end);
    let (full, n_full) = share(&outcomes, "b", ramp_end, Duration::MAX);
    eprintln!(
        "{disrupt}: {} requests, {failed} failed; ejected after {ejected_after:?} ({} failed checks), in rotation again after {returned_after:?} ({passes} passed checks); b's share: {during:.3} during slow start ({n_during} requests), {full:.3} after it ({n_full} requests)",
        outcomes.len(),
        out.failed - before.failed,
    );
    assert_eq!(failed, 0, "every GET succeeds");
    // A third of the traffic at full weight. Over a linear ramp its average share is half
    // that; the window starts when the return was seen, a little into the ramp, so allow up
    // to 0.85 of the full share. Without a ramp it would be all of it.
    assert!(
        n_during > 100 && n_full > 100,
        "too little traffic to judge"
    );
    assert!(full > 0.25, "b took only {full:.3} after its ramp");
    assert!(
        during < 0.85 * full,
        "b took {during:.3} during its ramp against {full:.3} after it"
    );
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_costs_no_request_and_ramps_back_in() {
    chaos("", "KILL", ProcessBackend::spawn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_backend_costs_no_idempotent_request() {
    // A frozen process accepts (the kernel does) and never answers: each request caught on it
    // waits out the response timeout, then goes to another backend within try_timeout.
    chaos(
        "response_timeout = \"1s\"\ntry_timeout = \"5s\"",
        "STOP",
        |b| b.signal("CONT"),
    )
    .await;
}
