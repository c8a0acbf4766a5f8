//! Test helpers: real backends on 127.0.0.1:0, the real `rproxy` binary on a temporary config,
//! and real HTTP clients. Each test owns its servers; nothing uses a fixed port or sleeps to
//! wait for a condition (everything polls with a deadline).
#![allow(dead_code, unreachable_pub)] // Each test file uses a different part of this.

pub mod certs;
pub mod dns;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `cond` until it holds or the deadline passes.
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What a backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body_len: u64,
}

/// A real HTTP/1.1 backend that answers with its name and records what it saw.
///
/// Paths: `/slow/MS` answers after MS milliseconds; `/download/N` streams N bytes;
/// `/stall` sends headers and a first chunk, then nothing; anything else answers the name
/// (the request body is read and counted).
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub connections: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// What `/health` answers: 200 while true, 503 while false.
    pub healthy: Arc<std::sync::atomic::AtomicBool>,
    stop: tokio_util::sync::CancellationToken,
    tasks: tokio_util::task::TaskTracker,
}

impl Drop for Backend {
    /// Stops like a crashed process: the listener and every open connection close.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Backend {
    /// Stops and waits until the listener and every connection are closed.
    pub async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    pub async fn start(name: &str) -> Backend {
        Backend::start_with_delay(name, Duration::ZERO).await
    }

    /// A backend that waits `delay` before every answer (a slow app process).
    pub async fn start_with_delay(name: &str, delay: Duration) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        Backend::serve(listener, name, delay)
    }

    /// A backend on `addr` (another loopback address, say), or `None` when it cannot be bound.
    pub async fn start_at(name: &str, addr: SocketAddr) -> Option<Backend> {
        let listener = TcpListener::bind(addr).await.ok()?;
        Some(Backend::serve(listener, name, Duration::ZERO))
    }

    fn serve(listener: TcpListener, name: &str, delay: Duration) -> Backend {
        let addr = listener.local_addr().expect("backend addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (c, s, n) = (connections.clone(), seen.clone(), name.to_string());
        let h = healthy.clone();
        let stop = tokio_util::sync::CancellationToken::new();
        let stopped = stop.clone();
        let tasks = tokio_util::task::TaskTracker::new();
        let tracker = tasks.clone();
        tasks.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stopped.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((stream, _)) = accepted else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (s, n, stopped, h) = (s.clone(), n.clone(), stopped.clone(), h.clone());
                tracker.spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (n, s, h) = (n.clone(), s.clone(), h.clone());
                        async move {
                            if req.uri().path() == "/health" {
                                let ok = h.load(Ordering::SeqCst);
                                let mut resp = Response::new(
                                    Full::new(Bytes::from_static(if ok { b"ok" } else { b"sick" }))
                                        .boxed(),
                                );
                                *resp.status_mut() = if ok {
                                    StatusCode::OK
                                } else {
                                    StatusCode::SERVICE_UNAVAILABLE
                                };
                                return Ok::<_, hyper::Error>(resp);
                            }
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            answer(req, n, s).await
                        }
                    });
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = stopped.cancelled() => {}
                        _ = conn => {}
                    }
                });
            }
        });
        Backend {
            addr,
            name: name.to_string(),
            connections,
            seen,
            healthy,
            stop,
            tasks,
        }
    }

    /// Requests received, health checks not counted (they answer without being recorded).
    pub fn requests(&self) -> usize {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .expect("lock")
            .last()
            .cloned()
            .expect("backend saw a request")
    }
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(
    req: Request<Incoming>,
    name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<TestBody>, hyper::Error> {
    let (parts, body) = req.into_parts();
    let mut body_len = 0u64;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame?.data_ref() {
            body_len += d.len() as u64;
        }
    }
    seen.lock().unwrap_or_else(|e| e.into_inner()).push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        version: parts.version,
        headers: parts.headers.clone(),
        body_len,
    });
    let path = parts.uri.path();
    let mut resp = if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        Response::new(Full::new(Bytes::from(name.clone())).boxed())
    } else if let Some(n) = path.strip_prefix("/download/") {
        let total: u64 = n.parse().unwrap_or(0);
        let stream = byte_stream(b'x', 64 * 1024, total);
        let mut r = Response::new(StreamBody::new(stream).boxed());
        r.headers_mut().insert("content-length", total.into());
        r
    } else if let Some(ms) = path.strip_prefix("/late-body/") {
        // "first" at once, "rest" after `ms`, then the end.
        let ms = ms.parse().unwrap_or(0);
        let stream = futures_util::stream::unfold(0u8, move |step| async move {
            let data: &'static [u8] = match step {
                0 => b"first",
                1 => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    b"rest"
                }
                _ => return None,
            };
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(data))),
                step + 1,
            ))
        });
        Response::new(StreamBody::new(stream).boxed())
    } else if path == "/stall" {
        let stream = futures_util::stream::unfold(0u8, |step| async move {
            if step > 0 {
                std::future::pending::<()>().await;
            }
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"first"))),
                1,
            ))
        });
        Response::new(StreamBody::new(stream).boxed())
    } else {
        Response::new(Full::new(Bytes::from(name.clone())).boxed())
    };
    resp.headers_mut()
        .insert("x-backend", name.parse().expect("header value"));
    resp.headers_mut().insert("x-body-len", body_len.into());
    // Hop-by-hop headers a proxy must not pass on to its client.
    resp.headers_mut()
        .insert("connection", "x-private".parse().expect("value"));
    resp.headers_mut()
        .insert("x-private", "secret".parse().expect("value"));
    Ok(resp)
}

/// A stream of `total` bytes of `fill`, in frames of `chunk` bytes.
pub fn byte_stream(
    fill: u8,
    chunk: usize,
    total: u64,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + 'static {
    let chunk = Bytes::from(vec![fill; chunk]);
    futures_util::stream::unfold(total, move |left| {
        let chunk = chunk.clone();
        async move {
            (left > 0).then(|| {
                let n = left.min(chunk.len() as u64);
                (Ok(Frame::data(chunk.slice(..n as usize))), left - n)
            })
        }
    })
}

/// An address on which nothing listens: connecting to it is refused.
///
/// The port stays bound (by a socket that never listens) for the rest of the test process:
/// a port merely closed again could be handed to another test's server meanwhile, and the
/// "dead" backend would answer.
pub fn refused_addr() -> SocketAddr {
    static HELD: Mutex<Vec<socket2::Socket>> = Mutex::new(Vec::new());
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    let addr = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("an IPv4 address");
    HELD.lock().unwrap_or_else(|e| e.into_inner()).push(socket);
    addr
}

/// The running `rproxy` binary.
///
/// Everything a test learns about it comes from facts: the bound addresses from the ready file
/// (`--ready-file`), its state from the admin listener's `/status` and `/metrics`, and how it
/// ended from its exit status. Its output is kept only to print when a test fails.
pub struct Proxy {
    child: Child,
    pub listeners: HashMap<String, Vec<SocketAddr>>,
    /// The admin listener's address, when the config has `[admin]`.
    pub admin: Option<SocketAddr>,
    /// stderr and stdout lines as they come, for diagnosis.
    logs: Arc<Mutex<Vec<String>>>,
    /// stdout lines only: the access log when it goes to stdout (the default).
    stdout: Arc<Mutex<Vec<String>>>,
    /// How many lines rproxy wrote to stderr (its diagnostic log).
    stderr_lines: Arc<AtomicUsize>,
    pub config_path: PathBuf,
    pub ready_path: PathBuf,
    _dir: tempfile::TempDir,
    stdout_reader: Option<std::thread::JoinHandle<()>>,
}

pub fn rproxy_bin() -> &'static str {
    env!("CARGO_BIN_EXE_rproxy")
}

/// What `--ready-file` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub pid: u32,
    pub listeners: HashMap<String, Vec<SocketAddr>>,
    pub admin: Option<SocketAddr>,
}

/// Reads the ready file at `path`: `None` while it does not exist. Written by a rename, it is
/// never seen half-written, so anything unreadable in it fails the test.
pub fn read_ready(path: &std::path::Path) -> Option<Ready> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("read {}: {e}", path.display()),
    };
    let doc: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("ready file {text:?}: {e}"));
    let addr = |v: &serde_json::Value| -> SocketAddr {
        v.as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("an address in the ready file: {text}"))
    };
    let listeners = doc["listeners"]
        .as_object()
        .unwrap_or_else(|| panic!("listeners in the ready file: {text}"))
        .iter()
        .map(|(name, addrs)| {
            let addrs = addrs.as_array().map(|a| a.iter().map(addr).collect());
            (name.clone(), addrs.unwrap_or_default())
        })
        .collect();
    Some(Ready {
        pid: doc["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or_else(|| panic!("pid in the ready file: {text}")),
        listeners,
        admin: (!doc["admin"].is_null()).then(|| addr(&doc["admin"])),
    })
}

/// `config` with an admin listener on an ephemeral port appended (as the last table, so it
/// cannot capture top-level keys). For tests that read `/status` and `/metrics`.
pub fn with_admin(config: &str) -> String {
    format!("{config}\n[admin]\nlisten = \"127.0.0.1:0\"\n")
}

/// Polls the async `cond` until it holds or the deadline passes.
pub async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !cond().await {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Proxy {
    /// Starts rproxy with `config` and waits until its ready file says where it listens.
    pub fn start(config: &str) -> Proxy {
        Proxy::start_binary(std::path::Path::new(rproxy_bin()), config)
    }

    /// `start`, with the rproxy binary at `binary` (a copy elsewhere, for the binary upgrade).
    pub fn start_binary(binary: &std::path::Path, config: &str) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("upstream.toml");
        std::fs::write(&config_path, config).expect("write config");
        Proxy::launch(binary, dir, config_path, &[])
    }

    /// Starts rproxy on the file at `config_path` (prepared by the test, in `dir`, which the
    /// proxy keeps until it is dropped) with `args` added to the command line.
    pub fn start_in(dir: tempfile::TempDir, config_path: PathBuf, args: &[&str]) -> Proxy {
        Proxy::launch(std::path::Path::new(rproxy_bin()), dir, config_path, args)
    }

    fn launch(
        binary: &std::path::Path,
        dir: tempfile::TempDir,
        config_path: PathBuf,
        args: &[&str],
    ) -> Proxy {
        let ready_path = dir.path().join("ready.json");
        let mut child = Command::new(binary)
            .arg("-c")
            .arg(&config_path)
            .arg("--ready-file")
            .arg(&ready_path)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rproxy");
        let stderr = child.stderr.take().expect("stderr");
        // The access log (stdout by default) joins the same list of lines.
        let stdout = child.stdout.take().expect("stdout");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stdout_lines = Arc::new(Mutex::new(Vec::new()));
        let (sink, access, only_stdout) = (logs.clone(), logs.clone(), stdout_lines.clone());
        let stderr_count = Arc::new(AtomicUsize::new(0));
        let counter = stderr_count.clone();
        let stdout_reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                only_stdout
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(line.clone());
                access.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        // Owned by a `Proxy` from here on: if starting fails below, its drop ends the child.
        let mut proxy = Proxy {
            child,
            listeners: HashMap::new(),
            admin: None,
            logs,
            stdout: stdout_lines,
            stderr_lines: stderr_count,
            config_path,
            ready_path,
            _dir: dir,
            stdout_reader: Some(stdout_reader),
        };
        let start = std::time::Instant::now();
        let ready = loop {
            if let Some(ready) = read_ready(&proxy.ready_path) {
                break ready;
            }
            if let Some(status) = proxy.child.try_wait().expect("try_wait") {
                panic!("rproxy exited at start ({status}): {:#?}", proxy.logs());
            }
            assert!(
                start.elapsed() < DEADLINE,
                "rproxy wrote no ready file: {:#?}",
                proxy.logs()
            );
            // A blocking wait: `start` is not async, and nothing of the test runs meanwhile.
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(ready.pid, proxy.child.id(), "the ready file's pid");
        assert!(!ready.listeners.is_empty(), "no listener in {ready:?}");
        proxy.listeners = ready.listeners;
        proxy.admin = ready.admin;
        proxy
    }

    /// What the ready file says now (`None` once rproxy removed it at shutdown).
    pub fn ready(&self) -> Option<Ready> {
        read_ready(&self.ready_path)
    }

    /// After the process exited: waits until everything it wrote to stdout has been read.
    pub async fn stdout_done(&mut self) {
        if let Some(reader) = self.stdout_reader.take() {
            tokio::task::spawn_blocking(move || reader.join())
                .await
                .expect("join")
                .expect("stdout reader");
        }
    }

    /// The first address of the only (or first) listener.
    pub fn addr(&self) -> SocketAddr {
        let mut names: Vec<_> = self.listeners.keys().collect();
        names.sort();
        self.listeners[names[0]][0]
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything rproxy wrote to stderr and stdout so far: for failure messages.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The lines rproxy wrote to stdout: the access log, where it goes by default.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many lines rproxy has written to stderr so far, whatever they say: for tests of how
    /// much it logs (a problem reported once, not once per request).
    pub fn stderr_line_count(&self) -> usize {
        self.stderr_lines.load(Ordering::SeqCst)
    }

    /// Waits until a line of the access log on stdout contains every one of `needles`.
    pub async fn wait_for_access_line(&self, needles: &[&str]) -> String {
        let mut found = None;
        wait_until(&format!("an access log line with {needles:?}"), || {
            found = self
                .stdout_lines()
                .into_iter()
                .find(|l| needles.iter().all(|n| l.contains(n)));
            std::future::ready(found.is_some())
        })
        .await;
        found.expect("found")
    }

    /// Waits until a log line contains every one of `needles`, and returns it. Log wording is
    /// not a fact to test: new tests read the ready file, `/status`, `/metrics` or the exit
    /// status instead. Kept for tests/idle_connections.rs until it moves off it.
    pub async fn wait_for_log(&self, needles: &[&str]) -> String {
        let start = std::time::Instant::now();
        loop {
            if let Some(line) = self
                .logs()
                .into_iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return line;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "no log line with {needles:?} in {:#?}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The admin listener's address; the config must have `[admin]`.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .expect("this test's config has an [admin] listener")
    }

    /// `/status` from the admin listener, parsed.
    pub async fn status(&self) -> serde_json::Value {
        let body = get(&client(), self.admin_addr(), "/status").await.body;
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status {body:?}: {e}"))
    }

    /// `/metrics` from the admin listener.
    pub async fn scrape(&self) -> String {
        scrape_admin(self.admin_addr()).await
    }

    /// The value of one series in `/metrics` (labels as rendered, in order); 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        metric(&self.scrape().await, series).unwrap_or(0.0)
    }

    /// Waits until the series' value satisfies `ok`, and returns it.
    pub async fn wait_for_metric(&self, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let cell = std::cell::Cell::new(0.0);
        let (last, ok) = (&cell, &ok);
        wait_until(
            &format!("{series} to reach its value"),
            move || async move {
                last.set(self.metric(series).await);
                ok(last.get())
            },
        )
        .await;
        cell.get()
    }

    /// The backend at `addr` of upstream `upstream` in `/status`.
    pub async fn backend_status(&self, upstream: &str, addr: SocketAddr) -> serde_json::Value {
        let status = self.status().await;
        backend_in(&status, upstream, addr)
            .unwrap_or_else(|| panic!("{upstream}/{addr} in /status: {status:#}"))
    }

    /// Waits until `/status` shows backend `addr` of `upstream` in `state` (`up`,
    /// `unhealthy`, `down`).
    pub async fn wait_for_backend_state(&self, upstream: &str, addr: SocketAddr, state: &str) {
        wait_until(
            &format!("{upstream}/{addr} to be {state}"),
            move || async move { self.backend_status(upstream, addr).await["state"] == state },
        )
        .await;
    }

    /// Reloads (reloads counted by result in `/metrics`, so the config needs `[admin]`):
    /// sends SIGHUP and waits for the outcome. Returns whether it succeeded.
    pub async fn reload(&self) -> bool {
        let reloads = |result: &str| format!("rproxy_config_reloads_total{{result=\"{result}\"}}");
        let (ok, failed) = (reloads("success"), reloads("failure"));
        let metrics = self.scrape().await;
        let before = |series: &str| metric(&metrics, series).unwrap_or(0.0);
        let (ok_before, failed_before) = (before(&ok), before(&failed));
        self.signal("HUP");
        let cell = std::cell::Cell::new(None);
        let (outcome, ok, failed) = (&cell, &ok, &failed);
        wait_until("the reload's outcome in /metrics", move || async move {
            let m = self.scrape().await;
            let now = |series: &str| metric(&m, series).unwrap_or(0.0);
            if now(ok) > ok_before {
                outcome.set(Some(true));
            } else if now(failed) > failed_before {
                outcome.set(Some(false));
            }
            outcome.get().is_some()
        })
        .await;
        cell.get().expect("an outcome")
    }

    /// Writes `config` to the config file and reloads it (see `reload`).
    pub async fn reload_with(&self, config: &str) -> bool {
        std::fs::write(&self.config_path, config).expect("write config");
        self.reload().await
    }

    pub fn signal(&self, sig: &str) {
        // The shell's built-in `kill`: no dependency on procps being installed.
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -{sig} {}", self.child.id()))
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -{sig} failed");
    }

    /// Whether the process has exited (without waiting).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits for the process to exit, up to the deadline.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(start.elapsed() < DEADLINE, "rproxy did not exit");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.proc_status_kib("VmHWM:")
    }

    /// Resident memory now (VmRSS) in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.proc_status_kib("VmRSS:")
    }

    fn proc_status_kib(&self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{key} in /proc status"))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Only our own child, by its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("rproxy's output:\n{}", self.logs().join("\n"));
        }
    }
}

/// The backend at `addr` of upstream `upstream` in a `/status` document.
pub fn backend_in(
    status: &serde_json::Value,
    upstream: &str,
    addr: SocketAddr,
) -> Option<serde_json::Value> {
    status["upstreams"]
        .as_array()?
        .iter()
        .find(|u| u["name"] == upstream)?["backends"]
        .as_array()?
        .iter()
        .find(|b| b["address"] == addr.to_string().as_str())
        .cloned()
}

/// The series `name{upstream="UPSTREAM",backend="ADDR"EXTRA}` as `/metrics` renders it, for a
/// backend written as its address. `extra` is further labels with their leading comma.
pub fn backend_series(name: &str, upstream: &str, addr: SocketAddr, extra: &str) -> String {
    format!("{name}{{upstream=\"{upstream}\",backend=\"{addr}\"{extra}}}")
}

/// The JSON lines of an access log file (`format = "json"`) written so far; a last line
/// still being written (no newline yet) is left for the next read.
pub fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("access log line {l:?}: {e}")))
        .collect()
}

/// A keep-alive HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 prior-knowledge (cleartext) client.
pub fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn backend(&self) -> &str {
        self.headers
            .get("x-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Answer {
    let resp = tokio::time::timeout(DEADLINE, client.request(req))
        .await
        .expect("response in time")
        .expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub async fn get(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    path: &str,
) -> Answer {
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Full::default())
        .expect("request");
    send(client, req).await
}

/// GET `/stall` (a body that sends "first" and then nothing) through the proxy at `addr`:
/// the response body once its first chunk has been read.
pub async fn stalled_body(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
) -> Incoming {
    let resp = client
        .get(format!("http://{addr}/stall").parse().expect("uri"))
        .await
        .expect("response head");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.expect("a frame").expect("first chunk");
    assert_eq!(first.into_data().ok(), Some(Bytes::from_static(b"first")));
    body
}

/// The value of the series `name{labels}` (labels as rendered, in order) in a `/metrics`
/// scrape, if present.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// `/metrics` from the admin listener at `admin`.
pub async fn scrape_admin(admin: SocketAddr) -> String {
    get(&client(), admin, "/metrics").await.body
}

/// A config with one listener on an ephemeral port in front of `servers` (TOML array items).
/// `backends` as the items of a `servers = [...]` list: `"127.0.0.1:1", "127.0.0.1:2"`.
pub fn list(backends: &[&Backend]) -> String {
    backends
        .iter()
        .map(|b| format!("\"{}\"", b.addr))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn config_with(servers: &str, upstream_extra: &str) -> String {
    format!(
        r#"
[listeners.web]
listen = "127.0.0.1:0"
upstream = "app"

[upstreams.app]
servers = [{servers}]
{upstream_extra}
"#
    )
}

/// A hand-written HTTP/1.1 backend for behaviours hyper's server will not show: closing a
/// kept-alive connection right after answering without saying so, scripted raw answers
/// (malformed on purpose), floods of 1xx, and holding a request unanswered. It records every
/// byte it receives and how many connections are open right now.
pub struct RawBackend {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    pub open: Arc<AtomicUsize>,
    pub answered: Arc<AtomicUsize>,
    pub received: Arc<Mutex<Vec<u8>>>,
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawMode {
    /// Answer every request head with `200 ok`, keep the connection open.
    Answer,
    /// Close each connection right after its first response, although the response does not
    /// say `Connection: close` (like a backend whose keep-alive timer fired just then).
    CloseAfterAnswer,
    /// Read the request head, then close without answering (a process that crashed on it).
    DropRequest,
    /// Answer a connection's first request; close it, unanswered, when a second one arrives
    /// (a backend whose keep-alive timer fired just as rproxy reused the connection).
    DropSecondRequest,
    /// Answer each request head with these exact bytes, then close if `close` is set.
    Script { bytes: Vec<u8>, close: bool },
    /// Answer each request head with an endless stream of `100 Continue`.
    InformationalFlood,
    /// Read the request head and never answer.
    Hold,
}

impl RawBackend {
    pub async fn start(mode: RawMode) -> RawBackend {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let (acc, op, ans, rec, stopped) = (
            accepted.clone(),
            open.clone(),
            answered.clone(),
            received.clone(),
            stop.clone(),
        );
        let mode = Arc::new(mode);
        tokio::spawn(async move {
            loop {
                let accept = tokio::select! {
                    _ = stopped.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((mut stream, _)) = accept else {
                    continue;
                };
                acc.fetch_add(1, Ordering::SeqCst);
                op.fetch_add(1, Ordering::SeqCst);
                let (op, ans, rec, stopped, mode) = (
                    op.clone(),
                    ans.clone(),
                    rec.clone(),
                    stopped.clone(),
                    mode.clone(),
                );
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let mut heads = 0;
                    'conn: loop {
                        let n = tokio::select! {
                            _ = stopped.cancelled() => break,
                            n = stream.read(&mut chunk) => n.unwrap_or(0),
                        };
                        if n == 0 {
                            break;
                        }
                        rec.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .extend_from_slice(&chunk[..n]);
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            heads += 1;
                            let reply: &[u8] = match &*mode {
                                RawMode::DropRequest => break 'conn,
                                RawMode::DropSecondRequest if heads > 1 => break 'conn,
                                RawMode::Hold => continue,
                                RawMode::InformationalFlood => loop {
                                    let flood = b"HTTP/1.1 100 Continue\r\n\r\n";
                                    tokio::select! {
                                        _ = stopped.cancelled() => break 'conn,
                                        w = stream.write_all(flood) => if w.is_err() { break 'conn },
                                    }
                                },
                                RawMode::Script { bytes, .. } => bytes,
                                RawMode::Answer
                                | RawMode::CloseAfterAnswer
                                | RawMode::DropSecondRequest => {
                                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-backend: raw\r\n\r\nok"
                                }
                            };
                            if stream.write_all(reply).await.is_err() {
                                break 'conn;
                            }
                            ans.fetch_add(1, Ordering::SeqCst);
                            if matches!(&*mode, RawMode::Script { close: true, .. }) {
                                break 'conn;
                            }
                        }
                        if *mode == RawMode::CloseAfterAnswer && buf.is_empty() {
                            break;
                        }
                    }
                    op.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        RawBackend {
            addr,
            accepted,
            open,
            answered,
            received,
            stop,
        }
    }

    /// Everything received so far, as text.
    pub fn received_text(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap_or_else(|e| e.into_inner()))
            .into_owned()
    }

    /// How many request heads were received (request lines seen).
    pub fn request_heads(&self) -> usize {
        self.received_text().matches(" HTTP/1.1\r\n").count()
    }
}

/// Reads until the server closes `s` (EOF or reset) and returns what arrived, or `None` if
/// it is still open at the deadline.
async fn read_to_close(s: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(DEADLINE, read).await.ok()?;
    Some(all)
}

/// What arrived before the server closed `s`; panics if it does not close in time.
pub async fn read_until_closed(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    read_to_close(s)
        .await
        .expect("the server closed the connection in time")
}

/// Whether the server closes `s` within the deadline.
pub async fn closed_by_server(s: &mut tokio::net::TcpStream) -> bool {
    read_to_close(s).await.is_some()
}

/// Sends raw bytes on a new connection and reads one HTTP/1.1 response as text.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    read_response(&mut s).await
}

/// Reads one HTTP/1.1 response (head and `Content-Length` body; interim 1xx heads are
/// skipped) as text, or what arrived before the server closed.
pub async fn read_response(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            let text = String::from_utf8_lossy(&buf).into_owned();
            let mut start = 0;
            // Skip complete 1xx heads.
            while text[start..].starts_with("HTTP/1.1 1") {
                match text[start..].find("\r\n\r\n") {
                    Some(end) => start += end + 4,
                    None => break,
                }
            }
            if let Some(end) = text[start..].find("\r\n\r\n") {
                let head = &text[start..start + end];
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if buf.len() >= start + end + 4 + len {
                    return;
                }
            }
            let n = s.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("response in time");
    String::from_utf8_lossy(&buf).into_owned()
}

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A decision log recorded from real nginx (`tests/conformance/`): the `server` lines
/// (address, parameters such as `weight=3 down`) and the rows (request or key, backend).
pub struct Recording {
    pub servers: Vec<(String, String)>,
    pub rows: Vec<(String, String)>,
}

pub fn recording(name: &str) -> Recording {
    let path = format!("{}/tests/conformance/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).expect("recording");
    let mut servers = Vec::new();
    let mut rows = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# server ") {
            let (addr, params) = rest.split_once(' ').unwrap_or((rest, ""));
            servers.push((addr.to_string(), params.to_string()));
        } else if !line.starts_with('#')
            && !line.ends_with(",backend")
            && let Some((k, v)) = line.split_once(',')
        {
            rows.push((k.to_string(), v.to_string()));
        }
    }
    assert!(!rows.is_empty(), "{name} has rows");
    Recording { servers, rows }
}

/// One test backend per recorded server, named by the recorded address, and the servers as a
/// TOML list with the recorded weights and flags.
pub async fn backends_for(servers: &[(String, String)]) -> (Vec<Backend>, String) {
    let mut backends = Vec::new();
    let mut items = Vec::new();
    for (recorded, params) in servers {
        let b = Backend::start(recorded).await;
        let mut item = format!("addr = \"{}\"", b.addr);
        for p in params.split_whitespace() {
            if let Some(w) = p.strip_prefix("weight=") {
                item.push_str(&format!(", weight = {w}"));
            } else if p == "down" || p == "backup" {
                item.push_str(&format!(", {p} = true"));
            }
        }
        items.push(format!("{{ {item} }}"));
        backends.push(b);
    }
    (backends, items.join(", "))
}

/// A WebSocket backend that answers each text message with `NAME: message`.
pub async fn websocket_echo_backend(name: &'static str) -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Text(text) = msg
                        && ws
                            .send(Message::text(format!("{name}: {text}")))
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// `rproxy -t -c PATH`: the configuration check, as an operator runs it.
pub fn rproxy_check(path: impl AsRef<std::path::Path>) -> std::process::Output {
    Command::new(rproxy_bin())
        .args(["-t", "-c"])
        .arg(path.as_ref())
        .output()
        .expect("run rproxy -t")
}

/// The path of `promtool`, or `None` when it is not installed (then the caller skips its
/// check; under CI, which installs it, that is a failure).
pub fn promtool() -> Option<String> {
    let found = Command::new("sh")
        .args(["-c", "command -v promtool"])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
    if path.is_empty() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install promtool (Debian package prometheus)"
        );
        eprintln!("skipped: promtool is not installed (apt-get install prometheus)");
        return None;
    }
    Some(path)
}

/// `promtool check metrics` on a scrape: the test fails with what promtool said if it refuses.
pub fn check_with_promtool(promtool: &str, text: &str) {
    use std::io::Write;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- metrics ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
