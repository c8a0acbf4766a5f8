//! Binary upgrade through the real binary (issue 24): `rproxy -s upgrade` starts the binary at
//! rproxy's path with every listening socket; the old process drains once the new one serves.
//! Under load, twice in a row: no connection refused, no request failed, the slow request
//! finishes on the old process, a WebSocket open on the old process gets a close frame at its
//! drain timeout, the pid file names the new process, and the old one exits 0. A failed
//! upgrade (an invalid file, a binary that exits at once) leaves the old process serving. And
//! sockets passed by systemd's socket activation are used.
//!
//! Only the first rproxy is the test's child: its exit status is read. The later generations
//! are its descendants; they are followed by pid (ready file, pid file, `kill(pid, 0)`), their
//! exit 0 is not observable here, and the test kills the last one by pid.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use common::*;

/// Bounds of the load: clients stop at this count or time, whichever comes first.
const MAX_REQUESTS_PER_CLIENT: usize = 4000;
const MAX_LOAD_TIME: Duration = Duration::from_secs(60);
const DRAIN: Duration = Duration::from_secs(3);

/// Kills, at the end of a test whatever its outcome, the rproxy generations it did not spawn
/// itself (by pid: only processes this test started, directly or through an upgrade).
#[derive(Default)]
struct Descendants(std::sync::Mutex<Vec<u32>>);

impl Descendants {
    fn add(&self, pid: u32) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
    }
}

impl Drop for Descendants {
    fn drop(&mut self) {
        for pid in self.0.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if let Some(pid) = rustix::process::Pid::from_raw(*pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

fn alive(pid: u32) -> bool {
    rustix::process::Pid::from_raw(pid as i32)
        .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn websocket(addr: SocketAddr) -> Ws {
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{addr}/chat"))
        .await
        .expect("websocket through rproxy");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hello")).await.expect("send");
    match tokio::time::timeout(DEADLINE, ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => assert_eq!(t.as_str(), "echo: hello"),
        other => panic!("no echo: {other:?}"),
    }
    ws
}

/// Waits for the end of `ws` and returns when it ended and whether with a close frame.
fn watch_close(mut ws: Ws) -> tokio::task::JoinHandle<(Instant, Option<u16>)> {
    tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let next = tokio::time::timeout_at(deadline.into(), ws.next()).await;
            match next {
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return (Instant::now(), frame.map(|f| u16::from(f.code)));
                }
                Ok(Some(Ok(_))) => continue,
                // An end without a close frame (a reset or a bare end of stream).
                _ => return (Instant::now(), None),
            }
        }
    })
}

fn config(dir: &Path, http: SocketAddr, ws: SocketAddr) -> String {
    config_with_more(dir, http, ws, "")
}

/// `config`, with more listeners (`more`, TOML tables before the upstreams).
fn config_with_more(dir: &Path, http: SocketAddr, ws: SocketAddr, more: &str) -> String {
    with_admin(&format!(
        r#"pid_file = "{pid}"
drain_timeout = "{drain}s"

[listeners.web]
listen = "127.0.0.1:0"
upstream = "app"

[listeners.ws]
listen = "127.0.0.1:0"
upstream = "chat"
{more}

[upstreams.app]
servers = ["{http}"]

[upstreams.chat]
servers = ["{ws}"]
"#,
        pid = dir.join("rproxy.pid").display(),
        drain = DRAIN.as_secs(),
    ))
}

/// Counts of the load.
#[derive(Default)]
struct Load {
    ok: AtomicUsize,
    refused: AtomicUsize,
    failed: AtomicUsize,
    /// Keep-alive requests sent again after their reused connection closed without an answer
    /// (what browsers and curl do for a GET; each connection is closed at most once per drain).
    retried: AtomicUsize,
    stop: AtomicBool,
    /// What each failure was, for the failure message.
    failures: std::sync::Mutex<Vec<String>>,
}

impl Load {
    /// Waits until 100 more requests succeeded (`what` names that stretch), stops `clients`
    /// and checks that none was refused or failed.
    async fn finish(&self, what: &str, clients: Vec<tokio::task::JoinHandle<()>>) {
        let ok_before = self.ok.load(Ordering::Relaxed);
        wait_for(what, || self.ok.load(Ordering::Relaxed) >= ok_before + 100).await;
        self.stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.await.expect("client");
        }
        assert_eq!(self.refused.load(Ordering::Relaxed), 0);
        assert_eq!(self.failed.load(Ordering::Relaxed), 0);
    }

    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(what);
    }
}

/// 16 clients: 8 on keep-alive connections (a pooled client each), 8 opening a connection per
/// request. Each stops at its count or time bound, or when `load.stop` is set.
fn start_load(addr: SocketAddr, load: &Arc<Load>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let load = Arc::clone(load);
        tasks.push(tokio::spawn(async move {
            let client = client();
            let start = Instant::now();
            for _ in 0..MAX_REQUESTS_PER_CLIENT {
                if load.stop.load(Ordering::Relaxed) || start.elapsed() > MAX_LOAD_TIME {
                    return;
                }
                let uri: http::Uri = format!("http://{addr}/").parse().expect("uri");
                let mut answer = tokio::time::timeout(DEADLINE, client.get(uri.clone())).await;
                if matches!(answer, Ok(Err(ref e)) if !e.is_connect()) {
                    load.retried.fetch_add(1, Ordering::Relaxed);
                    answer = tokio::time::timeout(DEADLINE, client.get(uri)).await;
                }
                match answer {
                    Ok(Ok(resp)) if resp.status() == 200 => {
                        use http_body_util::BodyExt;
                        match resp.into_body().collect().await {
                            Ok(_) => {
                                load.ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => load.fail(format!("keep-alive body: {e:?}")),
                        }
                    }
                    Ok(Err(e)) if e.is_connect() => {
                        load.refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(resp)) => load.fail(format!("keep-alive: status {}", resp.status())),
                    Ok(Err(e)) => load.fail(format!("keep-alive: {e:?}")),
                    Err(_) => load.fail("keep-alive: no answer in time".to_string()),
                }
            }
        }));
    }
    for _ in 0..8 {
        let load = Arc::clone(load);
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            for _ in 0..MAX_REQUESTS_PER_CLIENT {
                if load.stop.load(Ordering::Relaxed) || start.elapsed() > MAX_LOAD_TIME {
                    return;
                }
                let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                    load.refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let exchange = async {
                    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                        .await?;
                    let mut answer = Vec::new();
                    s.read_to_end(&mut answer).await?;
                    Ok::<_, std::io::Error>(answer)
                };
                match tokio::time::timeout(DEADLINE, exchange).await {
                    Ok(Ok(answer)) if answer.starts_with(b"HTTP/1.1 200") => {
                        load.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(answer)) => load.fail(format!(
                        "new connection: {:?}",
                        String::from_utf8_lossy(&answer[..answer.len().min(60)])
                    )),
                    Ok(Err(e)) => load.fail(format!("new connection: {e}")),
                    Err(_) => load.fail("new connection: no answer in time".to_string()),
                }
            }
        }));
    }
    tasks
}

/// One GET over TLS (SNI front.test) to `addr`: whether it was answered 200.
async fn over_tls(ca: &common::certs::Ca, addr: SocketAddr) -> bool {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("front.test").expect("name");
    let mut tls = tokio::time::timeout(DEADLINE, ca.client(&[b"http/1.1"]).connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: front.test\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    // A TLS peer may end without close_notify; what was read is what counts.
    let _ = tokio::time::timeout(DEADLINE, tls.read_to_end(&mut answer)).await;
    answer.starts_with(b"HTTP/1.1 200")
}

/// One GET through the TCP (layer 4) listener at `addr`: whether it was answered 200.
async fn over_tcp(addr: SocketAddr) -> bool {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    String::from_utf8_lossy(&read_until_closed(&mut s).await).starts_with("HTTP/1.1 200")
}

/// Runs `rproxy -s upgrade -c config`; its exit code.
fn signal_upgrade(config: &Path) -> Option<i32> {
    std::process::Command::new(rproxy_bin())
        .args(["-s", "upgrade", "-c"])
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run rproxy -s upgrade")
        .code()
}

/// Waits until the ready file names a process other than `old`; returns its pid.
async fn wait_for_new_pid(proxy: &Proxy, old: u32) -> u32 {
    let mut new = None;
    wait_for("the new process's ready file", || {
        new = proxy.ready().map(|r| r.pid).filter(|p| *p != old);
        new.is_some()
    })
    .await;
    new.unwrap_or_default()
}

fn pid_file(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("rproxy.pid"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_upgrades_under_load_refuse_nothing_and_fail_nothing() {
    let descendants = Descendants::default();
    let backend = Backend::start("b").await;
    let chat = websocket_echo_backend("echo").await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Every kind of listening socket is handed over: HTTP, HTTPS, TCP and the admin listener.
    let ca = common::certs::Ca::new();
    let (cert, key, _) = ca.leaf("front", &["front.test"]);
    let more = format!(
        "[listeners.https]\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n\n[listeners.tcp]\nlisten = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nupstream = \"app\"\n",
        cert.display(),
        key.display()
    );
    let mut proxy = Proxy::start(&config_with_more(dir.path(), backend.addr, chat, &more));
    let (web, ws_addr) = (proxy.listeners["web"][0], proxy.listeners["ws"][0]);
    let (https, tcp) = (proxy.listeners["https"][0], proxy.listeners["tcp"][0]);
    let bound = proxy.ready().expect("ready file");
    let first = proxy.pid();
    assert_eq!(pid_file(dir.path()), Some(first));

    let load = Arc::new(Load::default());
    let clients = start_load(web, &load);
    wait_for("load through the first process", || {
        load.ok.load(Ordering::Relaxed) >= 200
    })
    .await;

    let mut pids = vec![first];
    for generation in 1..=2 {
        let old = *pids.last().unwrap_or(&first);
        // Open on the old process: a WebSocket and a slow request.
        let ws = watch_close(websocket(ws_addr).await);
        let seen = backend.requests();
        let slow = tokio::spawn(async move { get(&client(), web, "/slow/1500").await });
        wait_for("the slow request to reach the backend", || {
            backend.seen.lock().unwrap_or_else(|e| e.into_inner())[seen..]
                .iter()
                .any(|s| s.uri.starts_with("/slow/"))
        })
        .await;

        let ok_before = load.ok.load(Ordering::Relaxed);
        assert_eq!(
            signal_upgrade(&proxy.config_path),
            Some(0),
            "rproxy -s upgrade"
        );
        let new = wait_for_new_pid(&proxy, old).await;
        descendants.add(new);
        let took_over = Instant::now();
        assert_eq!(
            pid_file(dir.path()),
            Some(new),
            "the pid file names the new process"
        );

        let answer = slow.await.expect("slow client");
        assert_eq!(
            (answer.status.as_u16(), answer.body.as_str()),
            (200, "b"),
            "the slow request finished on the old process (generation {generation})"
        );
        let (closed_at, code) = ws.await.expect("websocket watcher");
        assert_eq!(
            code,
            Some(1001),
            "the WebSocket ended with a close frame (going away)"
        );
        let open_for = closed_at.duration_since(took_over);
        assert!(
            open_for >= DRAIN - Duration::from_millis(300) && open_for < DRAIN * 4,
            "the WebSocket closed {open_for:?} after the take-over; the drain timeout is {DRAIN:?}"
        );

        if generation == 1 {
            // The test's own child: its exit status is known.
            assert_eq!(
                proxy.wait_exit().await.code(),
                Some(0),
                "the old process exits 0"
            );
        } else {
            let start = Instant::now();
            while alive(old) {
                assert!(start.elapsed() < DEADLINE, "process {old} did not exit");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        assert_eq!(
            pid_file(dir.path()),
            Some(new),
            "the old one left the pid file"
        );
        let ready = proxy.ready().expect("ready file");
        assert_eq!(ready.pid, new, "and the ready file");
        assert_eq!(
            (ready.listeners, ready.admin),
            (bound.listeners.clone(), bound.admin),
            "every socket, the admin listener's included, kept its address"
        );
        assert!(over_tls(&ca, https).await, "HTTPS through the new process");
        assert!(over_tcp(tcp).await, "TCP through the new process");
        wait_for("load through the new process", || {
            load.ok.load(Ordering::Relaxed) >= ok_before + 200
        })
        .await;
        pids.push(new);
    }

    load.stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }
    let (ok, refused, failed, retried) = (
        load.ok.load(Ordering::Relaxed),
        load.refused.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed),
        load.retried.load(Ordering::Relaxed),
    );
    eprintln!("load: {ok} ok, {refused} refused, {failed} failed, {retried} keep-alive retries");
    let failures = load
        .failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert!(failures.is_empty(), "failures: {failures:#?}");
    assert_eq!(refused, 0, "refused connections");
    assert_eq!(failed, 0, "failed requests");
    assert!(
        retried <= 16,
        "{retried} retries: at most one per keep-alive connection per drain"
    );
    // The last generation serves, and says so.
    let last = *pids.last().unwrap_or(&first);
    assert!(alive(last));
    let admin = proxy.ready().and_then(|r| r.admin).expect("admin address");
    let status = get(&client(), admin, "/status").await;
    assert_eq!(status.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invalid_file_fails_the_upgrade_and_the_old_process_serves_on() {
    let _descendants = Descendants::default();
    let backend = Backend::start("b").await;
    let chat = websocket_echo_backend("echo").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let good = config(dir.path(), backend.addr, chat);
    let proxy = Proxy::start(&good);
    let web = proxy.listeners["web"][0];
    let load = Arc::new(Load::default());
    let clients = start_load(web, &load);
    wait_for("load", || load.ok.load(Ordering::Relaxed) >= 100).await;

    std::fs::write(
        &proxy.config_path,
        good.replace("[upstreams.chat]", "[upstreams.chat]\nbogus = 1"),
    )
    .expect("write");
    // `-s upgrade` checks the file first, and refuses.
    assert_eq!(signal_upgrade(&proxy.config_path), Some(1));
    // The signal itself: the new process reads the file, fails and exits.
    proxy.signal("USR2");
    proxy
        .wait_for_metric("rproxy_upgrades_total{result=\"failed\"}", |v| v == 1.0)
        .await;
    load.finish("load after the failed upgrade", clients).await;
    assert_eq!(
        load.retried.load(Ordering::Relaxed),
        0,
        "no connection was closed"
    );
    assert_eq!(pid_file(dir.path()), Some(proxy.pid()));
    assert_eq!(proxy.ready().map(|r| r.pid), Some(proxy.pid()));
    assert_eq!(
        proxy.metric("rproxy_upgrades_total{result=\"ok\"}").await,
        0.0
    );
}

/// Writes `content` at `path` as a new file renamed over the old one, as an install does (a
/// running binary cannot be written in place).
fn install(path: &Path, content: &[u8]) {
    let temp = path.with_extension("new");
    std::fs::write(&temp, content).expect("write");
    std::fs::set_permissions(&temp, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    std::fs::rename(&temp, path).expect("rename");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_binary_that_exits_at_once_fails_the_upgrade_then_the_real_one_takes_over() {
    let descendants = Descendants::default();
    let backend = Backend::start("b").await;
    let chat = websocket_echo_backend("echo").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bin: PathBuf = dir.path().join("rproxy");
    let real = std::fs::read(rproxy_bin()).expect("read the rproxy binary");
    install(&bin, &real);
    let mut proxy = Proxy::start_binary(&bin, &config(dir.path(), backend.addr, chat));
    let web = proxy.listeners["web"][0];
    let load = Arc::new(Load::default());
    let clients = start_load(web, &load);
    wait_for("load", || load.ok.load(Ordering::Relaxed) >= 100).await;

    install(&bin, b"#!/bin/sh\nexit 1\n");
    assert_eq!(signal_upgrade(&proxy.config_path), Some(0));
    proxy
        .wait_for_metric("rproxy_upgrades_total{result=\"failed\"}", |v| v == 1.0)
        .await;
    let ok_before = load.ok.load(Ordering::Relaxed);
    wait_for("load after the failed upgrade", || {
        load.ok.load(Ordering::Relaxed) >= ok_before + 100
    })
    .await;
    assert_eq!(load.failed.load(Ordering::Relaxed), 0);
    assert_eq!(pid_file(dir.path()), Some(proxy.pid()));
    assert_eq!(proxy.exited(), None);

    // The real binary back: the upgrade goes through.
    install(&bin, &real);
    let old = proxy.pid();
    assert_eq!(signal_upgrade(&proxy.config_path), Some(0));
    let new = wait_for_new_pid(&proxy, old).await;
    descendants.add(new);
    assert_eq!(proxy.wait_exit().await.code(), Some(0));
    assert_eq!(pid_file(dir.path()), Some(new));
    load.finish("load through the new process", clients).await;
}

/// The next datagram on systemd's notification socket (blocking, bounded by the deadline).
fn next_notification(socket: &std::os::unix::net::UnixDatagram) -> String {
    socket.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("a notification");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn sockets_from_systemd_socket_activation_are_used_and_systemd_follows_an_upgrade() {
    let descendants = Descendants::default();
    let (_backend, dir, socket, config_path) = systemd_socket_and_config().await;
    let addr = socket.local_addr().expect("addr");
    let ready = dir.path().join("ready.json");
    let notify_path = dir.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    // As systemd does: the socket is fd 3 and LISTEN_PID is the pid that runs rproxy (the
    // shell's, kept by `exec`).
    let mut command = std::process::Command::new("sh");
    command
        .arg("-c")
        .arg("export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=web; exec \"$0\" -c \"$1\" --ready-file \"$2\"")
        .arg(rproxy_bin())
        .arg(&config_path)
        .arg(&ready)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = spawn_with_fd3(command, &socket);
    descendants.add(child.id());
    wait_for("the ready file", || {
        read_ready(&ready).is_some() || child.try_wait().ok().flatten().is_some()
    })
    .await;
    assert_eq!(child.try_wait().expect("try_wait"), None, "rproxy runs");
    assert_eq!(read_ready(&ready).map(|r| r.pid), Some(child.id()));
    assert_eq!(next_notification(&notify), "READY=1");
    for _ in 0..5 {
        let answer = get(&client(), addr, "/").await;
        assert_eq!((answer.status.as_u16(), answer.body.as_str()), (200, "b"));
    }
    drop(socket);

    // An upgrade hands systemd's socket on, and the new process tells systemd it is the main
    // process now (Type=notify, NotifyAccess=all), before the old one exits 0.
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::USR2).expect("SIGUSR2");
    let told = next_notification(&notify);
    let mut new = None;
    wait_for("the new process's ready file", || {
        new = read_ready(&ready)
            .map(|r| r.pid)
            .filter(|p| *p != child.id());
        new.is_some()
    })
    .await;
    let new = new.unwrap_or_default();
    descendants.add(new);
    assert_eq!(told, format!("MAINPID={new}\nREADY=1"));
    let start = Instant::now();
    let exit = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(start.elapsed() < DEADLINE, "the old process did not exit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(exit.code(), Some(0));
    for _ in 0..5 {
        let answer = get(&client(), addr, "/").await;
        assert_eq!((answer.status.as_u16(), answer.body.as_str()), (200, "b"));
    }
}

#[tokio::test]
async fn sockets_passed_for_another_pid_are_not_taken() {
    let (_backend, _dir, socket, config_path) = systemd_socket_and_config().await;
    // LISTEN_PID names another process (variables inherited by mistake): fd 3 is not taken, so
    // rproxy binds the address itself, which this process holds: it exits 1.
    let mut command = std::process::Command::new(rproxy_bin());
    command
        .arg("-c")
        .arg(&config_path)
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDS", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = spawn_with_fd3(command, &socket);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("rproxy took the socket passed for another pid and ran");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(status.code(), Some(1));
    drop(socket);
}

const TOKEN: &str = "upgrade-token-0123456789";

/// An admin API write with the token: its status.
async fn admin_call(admin: SocketAddr, method: http::Method, path: &str, body: &str) -> u16 {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{admin}{path}"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .expect("request");
    send(&client(), req).await.status.as_u16()
}

/// Server `addr` of upstream `app` in `/status`, read with the token.
async fn status_of(admin: SocketAddr, addr: SocketAddr) -> serde_json::Value {
    let req = http::Request::get(format!("http://{admin}/status"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(http_body_util::Full::default())
        .expect("request");
    let answer = send(&client(), req).await;
    let status: serde_json::Value = serde_json::from_str(&answer.body).expect("/status JSON");
    backend_in(&status, "app", addr).unwrap_or_else(|| panic!("{addr} in {status}"))
}

/// Requests other than health checks that `b` saw.
fn served(b: &Backend) -> usize {
    b.seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|s| s.uri != "/health")
        .count()
}

#[tokio::test]
async fn the_new_process_keeps_a_down_backend_out_and_the_operators_overrides() {
    let descendants = Descendants::default();
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    b.healthy.store(false, Ordering::SeqCst);
    let dir = tempfile::tempdir().expect("tempdir");
    // Checks every 3 s: the new process's first check of b comes at a random point of its
    // first 3 s, so only the carried verdict keeps b out of the first requests.
    let config = format!(
        r#"pid_file = "{pid}"
[log]
access = "off"

[listeners.web]
listen = "127.0.0.1:0"
upstream = "app"

[upstreams.app]
servers = ["{a}", "{b}", "{c}"]
max_fails = 0

[upstreams.app.health_check]
path = "/health"
interval = "3s"
fall = 1
rise = 1

[admin]
listen = "127.0.0.1:0"
token = "{TOKEN}"
"#,
        pid = dir.path().join("rproxy.pid").display(),
        a = a.addr,
        b = b.addr,
        c = c.addr,
    );
    let mut proxy = Proxy::start(&config);
    let (web, admin) = (proxy.addr(), proxy.admin_addr());
    wait_until("b to fail its check", || async {
        status_of(admin, b.addr).await["state"] == "unhealthy"
    })
    .await;
    let server = |addr: SocketAddr| format!("/api/upstreams/app/servers/{addr}");
    assert_eq!(
        admin_call(
            admin,
            http::Method::POST,
            &format!("{}/disable", server(c.addr)),
            ""
        )
        .await,
        200
    );
    assert_eq!(
        admin_call(
            admin,
            http::Method::PUT,
            &format!("{}/weight", server(a.addr)),
            "{\"weight\": 7}"
        )
        .await,
        200
    );
    let before = status_of(admin, c.addr).await["override"].clone();
    let (b_before, c_before) = (served(&b), served(&c));

    let old = proxy.pid();
    assert_eq!(signal_upgrade(&proxy.config_path), Some(0));
    let new = wait_for_new_pid(&proxy, old).await;
    descendants.add(new);
    // At once, before the new process's first check of b can have run.
    for _ in 0..40 {
        let answer = get(&client(), web, "/").await;
        assert_eq!((answer.status.as_u16(), answer.body.as_str()), (200, "a"));
    }
    assert_eq!(
        served(&b),
        b_before,
        "the backend known down got no request"
    );
    assert_eq!(served(&c), c_before, "the disabled backend got no request");
    assert_eq!(proxy.wait_exit().await.code(), Some(0));
    // The new process's /status (the admin socket was handed over too).
    let c_now = status_of(admin, c.addr).await;
    assert_eq!(c_now["admin_state"], "disabled");
    assert_eq!(c_now["override"], before, "with its time and author");
    let a_now = status_of(admin, a.addr).await;
    assert_eq!(a_now["effective_weight"], 7);
    assert_eq!(status_of(admin, b.addr).await["state"], "unhealthy");
}

/// A backend, a folder, the socket systemd would have bound, and a file in the folder whose
/// listener `web` listens on that socket's address. rproxy could not bind the address again
/// while this process holds it (no SO_REUSEPORT), so serving on it proves it was adopted.
async fn systemd_socket_and_config() -> (
    Backend,
    tempfile::TempDir,
    std::net::TcpListener,
    std::path::PathBuf,
) {
    let backend = Backend::start("b").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = socket.local_addr().expect("addr");
    let config_path = dir.path().join("upstream.toml");
    std::fs::write(
        &config_path,
        format!(
            "[listeners.web]\nlisten = \"{addr}\"\nupstream = \"app\"\n\n[upstreams.app]\nservers = [\"{}\"]\n",
            backend.addr
        ),
    )
    .expect("write config");
    (backend, dir, socket, config_path)
}

/// Starts `command` with a copy of `socket` as its fd 3, as systemd passes a socket.
fn spawn_with_fd3(
    mut command: std::process::Command,
    socket: &std::net::TcpListener,
) -> std::process::Child {
    command_fds::CommandFdExt::fd_mappings(
        &mut command,
        vec![command_fds::FdMapping {
            parent_fd: socket.try_clone().expect("dup").into(),
            child_fd: 3,
        }],
    )
    .expect("fd mapping");
    // `command` (and the copy it holds) is dropped on return: only the child keeps it open.
    command.spawn().expect("spawn rproxy")
}
