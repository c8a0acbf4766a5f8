//! Unix-socket backends (`"unix:/path"`) through the real binary, with real servers on sockets
//! in a temporary directory: balanced with a TCP backend, kept-alive connections reused over
//! the socket, the client's `Host` and `X-Forwarded-For` passed as to a TCP backend, `/status`,
//! `/metrics` and the access log naming `unix:/...`, health checks that follow the socket going
//! and coming back (missing at start is not an error), layer 4 over a socket with a PROXY
//! header, `rproxy ctl drain` naming the server by its `unix:` address, and the `-t` errors.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use common::*;

/// An HTTP/1.1 server on a Unix socket (gunicorn, puma or Node behind nginx): answers its name
/// (in the body and `x-backend`), `/health` with 200, and records each request's headers.
struct UnixBackend {
    path: PathBuf,
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<http::HeaderMap>>>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl UnixBackend {
    fn start(path: &Path, name: &'static str) -> UnixBackend {
        let listener = UnixListener::bind(path).expect("bind the Unix socket");
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
        let (count, record, stopped, tracker) = (
            connections.clone(),
            seen.clone(),
            stop.clone(),
            tasks.clone(),
        );
        tasks.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = stopped.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((stream, _)) = accepted else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let (record, stopped) = (record.clone(), stopped.clone());
                tracker.spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        if req.uri().path() != "/health" {
                            record
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(req.headers().clone());
                        }
                        async move {
                            let mut resp = Response::new(Full::new(Bytes::from(name)));
                            resp.headers_mut()
                                .insert("x-backend", name.parse().expect("name"));
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        () = stopped.cancelled() => {}
                        _ = conn => {}
                    }
                });
            }
        });
        UnixBackend {
            path: path.to_path_buf(),
            connections,
            seen,
            stop,
            tasks,
        }
    }

    /// Stops like a crashed process (listener and connections closed), and the socket file
    /// goes, as a restarting app server removes it.
    async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        std::fs::remove_file(&self.path).expect("remove the socket file");
    }

    fn requests(&self) -> Vec<http::HeaderMap> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// `unix:PATH`, as written in the configuration and shown everywhere.
fn unix(path: &Path) -> String {
    format!("unix:{}", path.display())
}

/// The backend written as `address` in upstream `app` of `/status`.
async fn status_of(proxy: &Proxy, address: &str) -> serde_json::Value {
    let status = proxy.status().await;
    status["upstreams"][0]["backends"]
        .as_array()
        .and_then(|all| all.iter().find(|b| b["address"] == address).cloned())
        .unwrap_or_else(|| panic!("{address} in /status: {status:#}"))
}

async fn wait_for_state(proxy: &Proxy, address: &str, state: &str) {
    wait_until(&format!("{address} to be {state}"), || async {
        status_of(proxy, address).await["state"] == state
    })
    .await;
}

#[tokio::test]
async fn requests_are_balanced_across_a_unix_and_a_tcp_backend_on_kept_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("app.sock");
    let u = UnixBackend::start(&sock, "u");
    let t = Backend::start("t").await;
    let proxy = Proxy::start(&with_admin(&config_with(
        &format!("\"{}\", \"{}\"", unix(&sock), t.addr),
        "",
    )));
    let c = client();
    let mut by_backend = std::collections::HashMap::<String, usize>::new();
    for _ in 0..100 {
        let answer = get(&c, proxy.addr(), "/").await;
        assert_eq!(answer.status, 200);
        *by_backend.entry(answer.backend().to_string()).or_default() += 1;
    }
    assert_eq!((by_backend["u"], by_backend["t"]), (50, 50));
    let conns = u.connections.load(Ordering::SeqCst);
    assert!(
        conns <= 2,
        "50 sequential requests used {conns} connections"
    );

    // The client's Host and address reach the app as they reach a TCP backend.
    let seen = u.requests();
    assert_eq!(seen.len(), 50);
    let host = proxy.addr().to_string();
    assert_eq!(seen[0]["host"], host.as_str());
    assert_eq!(seen[0]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(t.last().headers["host"], host.as_str());

    let address = unix(&sock);
    let s = status_of(&proxy, &address).await;
    assert_eq!(
        (s["state"].as_str(), s["requests"].as_u64()),
        (Some("up"), Some(50)),
        "{s}"
    );
    let series = format!(
        "rproxy_upstream_requests_total{{upstream=\"app\",backend=\"{address}\",code=\"2xx\"}}"
    );
    assert_eq!(
        proxy.metric(&series).await,
        50.0,
        "{}",
        proxy.scrape().await
    );
    proxy
        .wait_for_access_line(&[&format!("backend={address} ")])
        .await;
}

#[tokio::test]
async fn a_reload_keeps_a_unix_backend_its_numbers_and_kept_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("app.sock");
    let u = UnixBackend::start(&sock, "u");
    let t = Backend::start("t").await;
    let address = unix(&sock);
    let config = |weight: u32| {
        with_admin(&config_with(
            &format!(
                "\"{address}\", {{ addr = \"{}\", weight = {weight} }}",
                t.addr
            ),
            // Longer than a reload may take on a busy machine: the idle connection stays.
            "keepalive_timeout = \"60s\"",
        ))
    };
    let proxy = Proxy::start(&config(1));
    let c = client();
    for _ in 0..4 {
        assert_eq!(get(&c, proxy.addr(), "/").await.status, 200);
    }
    assert!(proxy.reload_with(&config(2)).await, "reloaded");
    for _ in 0..3 {
        assert_eq!(get(&c, proxy.addr(), "/").await.status, 200);
    }
    // 2 before and 1 after (weights 1:2): one backend throughout, on the same connection.
    assert_eq!(u.requests().len(), 3);
    assert_eq!(status_of(&proxy, &address).await["requests"], 3);
    assert_eq!(u.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn health_checks_follow_the_socket_going_and_coming_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("later.sock");
    let t = Backend::start("t").await;
    let address = unix(&sock);
    // The app is not up yet: rproxy starts anyway, and the backend is merely down.
    let proxy = Proxy::start(&with_admin(&format!(
        "{}[upstreams.app.health_check]\npath = \"/health\"\ninterval = \"50ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1\n",
        config_with(&format!("\"{address}\", \"{}\"", t.addr), "")
    )));
    let up = format!("rproxy_backend_up{{upstream=\"app\",backend=\"{address}\"}}");
    wait_for_state(&proxy, &address, "unhealthy").await;
    proxy.wait_for_metric(&up, |v| v == 0.0).await;
    let c = client();
    for _ in 0..6 {
        assert_eq!(get(&c, proxy.addr(), "/").await.backend(), "t");
    }

    for round in 0..2 {
        let u = UnixBackend::start(&sock, "u");
        wait_for_state(&proxy, &address, "up").await;
        proxy.wait_for_metric(&up, |v| v == 1.0).await;
        let mut reached = false;
        for _ in 0..6 {
            reached |= get(&c, proxy.addr(), "/").await.backend() == "u";
        }
        assert!(
            reached,
            "round {round}: no request reached the Unix backend"
        );
        u.stop().await;
        wait_for_state(&proxy, &address, "unhealthy").await;
        for _ in 0..6 {
            let answer = get(&c, proxy.addr(), "/").await;
            assert_eq!((answer.status.as_u16(), answer.backend()), (200, "t"));
        }
    }
}

#[tokio::test]
async fn a_missing_socket_is_a_refused_backend_and_the_request_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let address = unix(&dir.path().join("gone.sock"));
    let t = Backend::start("t").await;
    // No health checks: only the failed connects (passive health) tell.
    let proxy = Proxy::start(&with_admin(&config_with(
        &format!("\"{address}\", \"{}\"", t.addr),
        "max_fails = 1\nfail_timeout = \"30s\"",
    )));
    let c = client();
    for _ in 0..6 {
        let answer = get(&c, proxy.addr(), "/").await;
        assert_eq!((answer.status.as_u16(), answer.backend()), (200, "t"));
    }
    let refused = format!(
        "rproxy_upstream_errors_total{{upstream=\"app\",backend=\"{address}\",kind=\"connect\"}}"
    );
    assert_eq!(
        proxy.metric(&refused).await,
        1.0,
        "left out after one failure"
    );
    assert_eq!(status_of(&proxy, &address).await["state"], "unhealthy");
}

#[tokio::test]
async fn an_h2_upstream_speaks_http2_over_the_socket_and_names_localhost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("grpc.sock");
    let listener = UnixListener::bind(&sock).expect("bind the Unix socket");
    let authorities = Arc::new(Mutex::new(Vec::new()));
    let record = authorities.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = record.clone();
            let svc = service_fn(move |req: Request<Incoming>| {
                record
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((req.version(), req.uri().authority().map(|a| a.to_string())));
                async { Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from("h2")))) }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc),
            );
        }
    });
    let address = unix(&sock);
    let proxy = Proxy::start(&with_admin(&format!(
        "{}[upstreams.app.health_check]\npath = \"/health\"\ninterval = \"50ms\"\n",
        config_with(&format!("\"{address}\""), "h2 = true")
    )));
    let answer = get(&client(), proxy.addr(), "/").await;
    assert_eq!((answer.status.as_u16(), answer.body.as_str()), (200, "h2"));
    let checks = format!(
        "rproxy_health_checks_total{{upstream=\"app\",backend=\"{address}\",result=\"pass\"}}"
    );
    proxy.wait_for_metric(&checks, |v| v >= 1.0).await;
    // A request and a check, both HTTP/2 and both naming `localhost`: a socket has no host.
    let seen = authorities
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(
        seen.iter()
            .all(|(v, a)| *v == http::Version::HTTP_2 && a.as_deref() == Some("localhost")),
        "{seen:?}"
    );
}

/// A WebSocket app on a Unix socket (or TCP): answers each text message with `NAME: message`.
fn ws_echo<S>(name: &'static str, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use futures_util::{SinkExt, StreamExt};
    tokio::spawn(async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
            return;
        };
        while let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) = ws.next().await {
            let answer = tokio_tungstenite::tungstenite::Message::text(format!("{name}: {text}"));
            if ws.send(answer).await.is_err() {
                return;
            }
        }
    });
}

#[tokio::test]
async fn a_websocket_reaches_a_unix_backend_and_its_sticky_cookie_keeps_it_there() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("ws.sock");
    let unix_listener = UnixListener::bind(&sock).expect("bind the Unix socket");
    tokio::spawn(async move {
        while let Ok((s, _)) = unix_listener.accept().await {
            ws_echo("u", s);
        }
    });
    let tcp_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let tcp = tcp_listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = tcp_listener.accept().await {
            ws_echo("t", s);
        }
    });
    let proxy = Proxy::start(&format!(
        "{}[upstreams.app.sticky]\ncookie = \"route\"\n",
        config_with(&format!("\"{}\", \"{tcp}\"", unix(&sock)), "")
    ));
    let url = format!("ws://{}/chat", proxy.addr());
    let exchange = |req: http::Request<()>| async {
        let (mut ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .expect("websocket");
        ws.send(Message::text("hi")).await.expect("send");
        let answer = match tokio::time::timeout(DEADLINE, ws.next()).await {
            Ok(Some(Ok(Message::Text(answer)))) => answer.to_string(),
            other => panic!("no answer: {other:?}"),
        };
        let cookie = resp.headers().get("set-cookie").map(|c| {
            let c = c.to_str().expect("ascii");
            c.split(';').next().unwrap_or(c).to_string()
        });
        (answer, cookie)
    };
    // Round-robin: one of the first two reaches the socket, and gets its cookie.
    let mut unix_cookie = None;
    for _ in 0..2 {
        let (answer, cookie) = exchange(url.as_str().into_client_request().expect("request")).await;
        if answer == "u: hi" {
            unix_cookie = cookie;
        }
    }
    let cookie = unix_cookie.expect("a WebSocket through the Unix backend, with a cookie");
    for _ in 0..4 {
        let mut req = url.as_str().into_client_request().expect("request");
        req.headers_mut()
            .insert("cookie", cookie.parse().expect("header"));
        assert_eq!(exchange(req).await.0, "u: hi");
    }
}

/// A layer-4 app on a Unix socket: sends back the PROXY header line it got, then echoes.
fn echo_server(path: &Path) {
    let listener = UnixListener::bind(path).expect("bind the Unix socket");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                let mut header = String::new();
                if r.read_line(&mut header).await.is_err()
                    || w.write_all(header.as_bytes()).await.is_err()
                {
                    return;
                }
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
}

#[tokio::test]
async fn a_tcp_listener_forwards_to_a_unix_backend_with_its_proxy_header() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("echo.sock");
    echo_server(&sock);
    let address = unix(&sock);
    let proxy = Proxy::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[listeners.tcp]\nlisten = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nupstream = \"app\"\nproxy_protocol = \"v1\"\n[upstreams.app]\nservers = [\"{address}\"]\n[upstreams.app.health_check]\ntype = \"tcp\"\ninterval = \"50ms\"\n"
    ));
    let mut conn = TcpStream::connect(proxy.addr()).await.expect("connect");
    let client = conn.local_addr().expect("client address");
    conn.write_all(b"hello").await.expect("write");
    conn.shutdown().await.expect("half-close");
    let mut answer = String::new();
    tokio::time::timeout(DEADLINE, conn.read_to_string(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    // The header describes the client's connection, whatever the backend's transport (as
    // nginx and HAProxy send it to a Unix socket).
    assert_eq!(
        answer,
        format!(
            "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\nhello",
            client.port(),
            proxy.addr().port()
        )
    );
    let checks = format!(
        "rproxy_health_checks_total{{upstream=\"app\",backend=\"{address}\",result=\"pass\"}}"
    );
    proxy.wait_for_metric(&checks, |v| v >= 1.0).await;
    let conns = format!(
        "rproxy_tcp_connections_total{{listener=\"tcp\",upstream=\"app\",backend=\"{address}\"}}"
    );
    assert_eq!(proxy.metric(&conns).await, 1.0, "{}", proxy.scrape().await);
}

#[tokio::test]
async fn ctl_drains_a_unix_backend_named_by_its_address() {
    const TOKEN: &str = "unix-test-token-0123";
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("app.sock");
    let u = UnixBackend::start(&sock, "u");
    let t = Backend::start("t").await;
    let address = unix(&sock);
    let proxy = Proxy::start(&format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n",
        config_with(&format!("\"{address}\", \"{}\"", t.addr), "")
    ));
    let admin = format!("http://{}", proxy.admin_addr());
    let ctl = |args: &[&str]| {
        std::process::Command::new(rproxy_bin())
            .args(["ctl", "--admin", &admin])
            .args(args)
            .env("RPROXY_ADMIN_TOKEN", TOKEN)
            .output()
            .expect("run rproxy ctl")
    };
    let out = ctl(&["drain", "app", &address]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with(&format!("app {address}: draining")),
        "{text}"
    );
    let out = ctl(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(&address))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("draining"), "{text}");
    let c = client();
    for _ in 0..6 {
        assert_eq!(get(&c, proxy.addr(), "/").await.backend(), "t");
    }
    assert!(u.requests().is_empty());
    assert_eq!(ctl(&["enable", "app", &address]).status.code(), Some(0));
    let mut reached = false;
    for _ in 0..6 {
        reached |= get(&c, proxy.addr(), "/").await.backend() == "u";
    }
    assert!(reached, "enabled again, it takes requests");
}

#[test]
fn bad_socket_paths_and_tls_are_config_errors_and_a_missing_socket_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let too_long = format!("/{}", "s".repeat(107));
    let text = format!(
        r#"[listeners.web]
listen = "127.0.0.1:0"
upstream = "app"

[upstreams.app]
servers = ["unix:run/app.sock", {{ addr = "unix:{too_long}" }}, "unix:"]

[upstreams.secure]
servers = ["unix:/run/app.sock"]
tls = {{ insecure_skip_verify = true }}
"#
    );
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).expect("write");
    let out = rproxy_check(&path);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let p = path.display();
    for expected in [
        format!(
            "{p}:6:12: upstreams.app.servers[0]: `unix:run/app.sock`: the socket path must be absolute"
        ),
        format!(
            "{p}:6:42: upstreams.app.servers[1].addr: `unix:{too_long}`: the socket path is 108 bytes; the system takes at most 107"
        ),
        format!("{p}:6:161: upstreams.app.servers[2]: `unix:` needs a socket path"),
        format!(
            "{p}:9:12: upstreams.secure.servers[0]: `unix:/run/app.sock` is a Unix socket, and this upstream has `tls`"
        ),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
    }

    // A socket that does not exist (yet) is the app's business at run time, not an error.
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        config_with(&format!("\"{}\"", unix(&dir.path().join("none.sock"))), ""),
    )
    .expect("write");
    let out = rproxy_check(&good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
