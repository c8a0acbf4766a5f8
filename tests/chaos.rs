//! Chaos under load: 64 keep-alive clients send GETs through rproxy to three backends, each a
//! separate process, while one of them is killed (SIGKILL: the process gone, its port
//! refusing) or frozen (SIGSTOP: connections accepted by the kernel, never answered) and later
//! brought back. Every client request must succeed; the backend must leave rotation within
//! `interval * fall` plus one interval and come back within `interval * rise` plus one
//! interval, and its share must then ramp up over `slow_start`.
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
/// How far the checks' timing may run behind their schedule on a busy 2-core machine.
const SCHEDULING_SLACK: Duration = Duration::from_millis(750);

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

/// Runs load while `disrupt` takes backend `b` out and `restore` brings it back; checks the
/// timings, zero failures, and the slow-start ramp.
async fn chaos(extra: &str, disrupt: &str, restore: fn(&mut ProcessBackend)) {
    // One scenario at a time: two would share the 2 cores and blur each other's timings.
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
    tokio::time::sleep(Duration::from_secs(2)).await;

    let b_addr = backends[1].addr.to_string();
    backends[1].signal(disrupt);
    let out_at = start.elapsed();
    proxy.wait_for_log(&["backend is unhealthy", &b_addr]).await;
    let ejected_after = start.elapsed() - out_at;
    tokio::time::sleep(Duration::from_secs(1)).await;

    restore(&mut backends[1]);
    let back_at = start.elapsed();
    proxy
        .wait_for_log(&["backend is healthy again", &b_addr])
        .await;
    let healthy_at = start.elapsed();
    let returned_after = healthy_at - back_at;
    // /status shows the ramp while it runs.
    let status = get(&client(), proxy.admin.expect("admin"), "/status")
        .await
        .body;
    let status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    let ramp = status["upstreams"][0]["backends"]
        .as_array()
        .and_then(|all| all.iter().find(|b| b["address"] == b_addr.as_str()))
        .and_then(|b| b["slow_start_share"].as_f64());
    assert!(
        ramp.is_some_and(|r| r > 0.0 && r < 0.5),
        "slow start in /status: {ramp:?}"
    );
    tokio::time::sleep(SLOW_START + Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let outcomes = finish(tasks).await;

    let failed = outcomes.iter().filter(|(_, b)| b.is_none()).count();
    let second = Duration::from_secs(1);
    let (early, n_early) = share(&outcomes, "b", healthy_at, healthy_at + second);
    let ramp_end = healthy_at + SLOW_START;
    let (full, n_full) = share(&outcomes, "b", ramp_end, ramp_end + second);
    eprintln!(
        "{disrupt}: {} requests, {failed} failed; ejected after {ejected_after:?}, healthy again after {returned_after:?}; b's share: {early:.3} in the first second of slow start ({n_early} requests), {full:.3} after it ({n_full} requests)",
        outcomes.len()
    );
    assert_eq!(failed, 0, "every GET succeeds");
    let interval = Duration::from_millis(INTERVAL_MS);
    assert!(
        ejected_after <= interval * (FALL as u32 + 1) + SCHEDULING_SLACK,
        "ejected after {ejected_after:?}"
    );
    assert!(
        returned_after <= interval * (RISE as u32 + 1) + SCHEDULING_SLACK,
        "back after {returned_after:?}"
    );
    // A third of the traffic at full weight; in the first second of a 4 s ramp at most a
    // quarter of that (the ramp's average there is under 1/6).
    assert!(n_early > 100 && n_full > 100, "too little traffic to judge");
    assert!(early < 0.12, "b took {early:.3} right after coming back");
    assert!(full > 0.25, "b took only {full:.3} after its ramp");
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
