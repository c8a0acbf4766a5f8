//! Reload on SIGHUP and `rproxy -s reload`, with the real binary under load: valid files take
//! effect, invalid ones change nothing, no request fails, and what was learned about the
//! backends (health, in-flight counts) survives the swap.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;

/// Writes `config` and sends SIGHUP; waits for the reload's outcome (counted in `/metrics`)
/// and returns whether it succeeded and, if it did, how long it took to take effect: from
/// the signal to the success time rproxy records, so a slow scrape under load does not count.
async fn reload(proxy: &Proxy, config: &str) -> (bool, Duration) {
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64()
    };
    let sent = unix_now();
    if !proxy.reload_with(config).await {
        return (false, Duration::ZERO);
    }
    let applied = proxy
        .metric("rproxy_config_last_reload_success_timestamp_seconds")
        .await;
    assert!(
        applied <= unix_now(),
        "the success time is not in the future"
    );
    (true, Duration::from_secs_f64((applied - sent).max(0.0)))
}

/// `rproxy -t` on `config`: its exit status and what it printed on stderr.
fn check(proxy: &Proxy, config: &str) -> (bool, String) {
    let path = proxy.config_path.with_file_name("check.toml");
    std::fs::write(&path, config).expect("write");
    let out = rproxy_check(&path);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_reloads_under_load_lose_no_request() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = held.local_addr().expect("addr");
    // Valid variants: add and remove backends, change weights and policies. Invalid ones: a
    // syntax error, a reference to no upstream, and a listen address already in use.
    let valid = [
        (config_with(&list(&[&a, &b]), ""), vec!["a", "b"]),
        (
            config_with(
                &format!(
                    r#"{{ addr = "{}", weight = 3 }}, "{}", "{}""#,
                    a.addr, b.addr, c.addr
                ),
                "balance = \"least_conn\"",
            ),
            vec!["a", "b", "c"],
        ),
        (
            config_with(&list(&[&b, &c]), "balance = \"random_two\""),
            vec!["b", "c"],
        ),
        (
            config_with(&list(&[&c, &a]), "balance = \"ip_hash\""),
            vec!["a", "c"],
        ),
    ];
    let invalid = [
        "[listeners.web\nlisten = ".to_string(),
        config_with(&list(&[&a]), "").replace("upstream = \"app\"", "upstream = \"nope\""),
        format!(
            "{}\n[listeners.other]\nlisten = \"{taken}\"\nupstream = \"app\"\n",
            config_with(&list(&[&a]), "")
        ),
    ];
    // The access log is off: 64 clients fill it faster than the test reads its lines. The
    // admin listener counts the reloads.
    let quiet = |config: &str| with_admin(&format!("[log]\naccess = \"off\"\n{config}"));
    let valid = valid.map(|(config, names)| (quiet(&config), names));
    let invalid = invalid.map(|config| quiet(&config));
    let proxy = Proxy::start(&valid[0].0);
    let addr = proxy.addr();

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..64 {
        let (stop, failures, served) = (stop.clone(), failures.clone(), served.clone());
        clients.push(tokio::spawn(async move {
            let c = client();
            // Bounded in count as well as in time.
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let req = hyper::Request::get(format!("http://{addr}/"))
                    .body(http_body_util::Full::default())
                    .expect("request");
                match tokio::time::timeout(DEADLINE, c.request(req)).await {
                    Ok(Ok(resp)) if resp.status() == 200 => {
                        served.fetch_add(1, Ordering::Relaxed);
                        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                    }
                    other => {
                        eprintln!("failed: {other:?}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    let probe = client();
    let mut current = &valid[0].1;
    let mut slowest = Duration::ZERO;
    let (mut applied, mut rejected) = (0, 0);
    for i in 0..100 {
        let (text, expected_ok) = if i % 4 == 3 {
            (invalid[(i / 4) % invalid.len()].clone(), false)
        } else {
            let v = &valid[(i + 1) % valid.len()];
            (v.0.clone(), true)
        };
        let (ok, took) = reload(&proxy, &text).await;
        assert_eq!(ok, expected_ok, "reload {i}");
        if ok {
            applied += 1;
            slowest = slowest.max(took);
            current = &valid[(i + 1) % valid.len()].1;
        } else {
            rejected += 1;
        }
        // New requests see exactly the configuration in effect (the old one after a failure).
        for _ in 0..6 {
            let ans = get(&probe, addr, "/").await;
            assert_eq!(ans.status, 200);
            assert!(
                current.contains(&ans.backend()),
                "reload {i}: {} answered; expected one of {current:?}",
                ans.backend()
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }
    let served = served.load(Ordering::Relaxed);
    eprintln!(
        "{applied} reloads applied, {rejected} rejected, slowest took effect in {slowest:?}; {served} requests served under load, {} failed",
        failures.load(Ordering::Relaxed)
    );
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no request failed");
    assert!(served > 1000, "the load ran: {served}");
    assert!(
        slowest < Duration::from_secs(1),
        "slowest reload {slowest:?}"
    );
    // Every outcome was counted; the rejected files are the ones `rproxy -t` rejects, naming
    // the file and what is wrong (the third one is valid until a socket is bound).
    let m = proxy.scrape().await;
    let reloads = |result: &str| {
        metric(
            &m,
            &format!("rproxy_config_reloads_total{{result=\"{result}\"}}"),
        )
    };
    assert_eq!(
        (reloads("success"), reloads("failure")),
        (Some(f64::from(applied)), Some(f64::from(rejected)))
    );
    let (ok, err) = check(&proxy, &invalid[0]);
    assert!(
        !ok && err.contains("check.toml") && err.contains("TOML syntax"),
        "{err}"
    );
    let (ok, err) = check(&proxy, &invalid[1]);
    assert!(
        !ok && err.contains("listeners.web.upstream") && err.contains("no upstream named `nope`"),
        "{err}"
    );
    // The listener never moved, and `other`, whose address was in use, never came.
    let ready = proxy.ready().expect("the ready file");
    assert_eq!(ready.listeners.len(), 1, "{ready:?}");
    assert_eq!(ready.listeners["web"], [addr]);
    let status = proxy.status().await;
    assert_eq!(status["listeners"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        status["listeners"][0]["addresses"][0],
        addr.to_string().as_str()
    );
    drop(held);
}

#[tokio::test]
async fn health_and_in_flight_counts_survive_a_reload() {
    let (busy, leaving, sick) = (
        Backend::start("busy").await,
        Backend::start("leaving").await,
        Backend::start("sick").await,
    );
    let idle = Backend::start("idle").await;
    let checks = "\n[upstreams.app.health_check]\npath = \"/health\"\ninterval = \"100ms\"\nrise = 2\nfall = 2\n";
    let config = |servers: &str| {
        with_admin(&format!(
            "{}{checks}",
            config_with(servers, "balance = \"least_conn\"\nmax_fails = 0")
        ))
    };
    let proxy = Proxy::start(&config(&list(&[&busy, &leaving, &sick])));
    sick.healthy.store(false, Ordering::SeqCst);
    proxy
        .wait_for_backend_state("app", sick.addr, "unhealthy")
        .await;

    // Four slow requests: least_conn puts two on `busy` and two on `leaving`.
    let addr = proxy.addr();
    let mut slow = Vec::new();
    for _ in 0..4 {
        slow.push(tokio::spawn(async move {
            get(&client(), addr, "/slow/2000").await
        }));
    }
    wait_for("the slow requests to reach their backends", || {
        busy.requests() + leaving.requests() >= 4
    })
    .await;
    assert_eq!((busy.requests(), leaving.requests()), (2, 2));

    // Reload: `leaving` goes, `idle` comes, `busy` changes weight (its state is kept).
    let servers = format!(
        r#"{{ addr = "{}", weight = 2 }}, {}"#,
        busy.addr,
        list(&[&idle, &sick])
    );
    let (ok, _) = reload(&proxy, &config(&servers)).await;
    assert!(ok, "the reload succeeded");
    // /status: `busy` has its new weight and kept its two requests in flight, `leaving` is
    // gone, `idle` came, and `sick` is still unhealthy.
    let status = proxy.status().await;
    let kept = backend_in(&status, "app", busy.addr).expect("busy in /status");
    assert_eq!(
        (&kept["weight"], &kept["in_flight"]),
        (&2.into(), &2.into())
    );
    assert_eq!(backend_in(&status, "app", leaving.addr), None, "{status:#}");
    assert_eq!(
        backend_in(&status, "app", idle.addr).map(|b| b["in_flight"].clone()),
        Some(0.into())
    );
    assert_eq!(
        backend_in(&status, "app", sick.addr).map(|b| b["state"].clone()),
        Some("unhealthy".into())
    );

    // least_conn still sees busy's two requests in flight (2 per weight 2 is more than 0), so
    // quick requests all go to `idle`; had the counts been lost they would alternate. The
    // unhealthy backend is still out.
    let c = client();
    let mut to = Vec::new();
    for _ in 0..10 {
        to.push(get(&c, addr, "/").await.backend().to_string());
    }
    assert!(
        to.iter().all(|b| b == "idle"),
        "least_conn forgot the in-flight requests: {to:?}"
    );
    assert_eq!(sick.requests(), 0, "the unhealthy backend got traffic");

    // Every slow request completes, the two on the removed backend included.
    let mut by = Vec::new();
    for s in slow {
        let ans = s.await.expect("slow request");
        assert_eq!(ans.status, 200, "{}", ans.body);
        by.push(ans.backend().to_string());
    }
    by.sort();
    assert_eq!(by, ["busy", "busy", "leaving", "leaving"]);
}

#[tokio::test]
async fn a_keepalive_connection_opened_before_a_reload_keeps_working() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let proxy = Proxy::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        config_with(&list(&[&a, &b]), "")
    ));
    let mut conn = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    conn.write_all(request).await.expect("write");
    assert!(read_response(&mut conn).await.starts_with("HTTP/1.1 200"));

    // Drop `a`, keep `b`: the open connection stays, and is served by the new config.
    let (ok, _) = reload(
        &proxy,
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n{}",
            config_with(&list(&[&b]), "")
        ),
    )
    .await;
    assert!(ok);
    for _ in 0..3 {
        conn.write_all(request).await.expect("write after reload");
        let answer = read_response(&mut conn).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("x-backend: b"), "{answer}");
    }

    // The removed backend's series left /metrics; the reload was counted.
    let metrics = scrape_admin(proxy.admin.expect("admin")).await;
    assert!(!metrics.contains(&a.addr.to_string()), "{metrics}");
    assert!(metrics.contains(&b.addr.to_string()));
    assert!(
        metrics.contains("rproxy_config_reloads_total{result=\"success\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("rproxy_config_last_reload_successful 1"));

    // A bad file is counted, and the last reload shows as failed; traffic goes on.
    let (ok, _) = reload(&proxy, "[listeners.web]\nlisten = 5\n").await;
    assert!(!ok);
    let metrics = scrape_admin(proxy.admin.expect("admin")).await;
    assert!(
        metrics.contains("rproxy_config_reloads_total{result=\"failure\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("rproxy_config_last_reload_successful 0"));
    conn.write_all(request)
        .await
        .expect("write after a failed reload");
    assert!(read_response(&mut conn).await.starts_with("HTTP/1.1 200"));
}

/// The series of what a reload removed leave `/metrics`; a backend added back starts from zero.
#[tokio::test]
async fn removed_backends_upstreams_and_listeners_leave_the_metrics() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = held.local_addr().expect("addr");
    let admin = "[admin]\nlisten = \"127.0.0.1:0\"\n";
    let side = format!(
        "[listeners.side]\nlisten = \"127.0.0.1:0\"\nupstream = \"spare\"\n\
         [upstreams.spare]\nservers = [{}]\n",
        list(&[&c])
    );
    let proxy = Proxy::start(&format!(
        "{admin}{}{side}",
        config_with(&list(&[&a, &b]), "")
    ));
    let web = proxy.listeners["web"][0];
    let scrape = || scrape_admin(proxy.admin.expect("admin"));
    let ok_2xx = |backend: &Backend| {
        format!(
            "rproxy_upstream_requests_total{{upstream=\"app\",backend=\"{}\",code=\"2xx\"}}",
            backend.addr
        )
    };
    for _ in 0..4 {
        assert_eq!(get(&client(), web, "/").await.status, 200);
    }
    assert_eq!(
        get(&client(), proxy.listeners["side"][0], "/")
            .await
            .backend(),
        "c"
    );
    let start = Instant::now();
    loop {
        let text = scrape().await;
        let counted = |b: &Backend| metric(&text, &ok_2xx(b)) == Some(b.requests() as f64);
        if counted(&a) && counted(&b) {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "requests never counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // `a`, the listener `side` and its upstream `spare` (with `c`) go.
    let (ok, _) = reload(&proxy, &format!("{admin}{}", config_with(&list(&[&b]), ""))).await;
    assert!(ok);
    let text = scrape().await;
    for gone in [
        a.addr.to_string(),
        c.addr.to_string(),
        "\"side\"".into(),
        "\"spare\"".into(),
    ] {
        assert!(!text.contains(&gone), "{gone} still in:\n{text}");
    }
    assert_eq!(
        metric(&text, &ok_2xx(&b)),
        Some(b.requests() as f64),
        "{text}"
    );

    // A reload that fails after building its snapshot (a listen address in use) shows
    // nothing of the backend it would have added.
    let (ok, _) = reload(
        &proxy,
        &format!(
            "{admin}{}[listeners.other]\nlisten = \"{taken}\"\nupstream = \"app\"\n",
            config_with(&list(&[&b, &c]), "")
        ),
    )
    .await;
    assert!(!ok);
    drop(held);
    let text = scrape().await;
    assert!(!text.contains(&c.addr.to_string()), "{text}");

    // `a` comes back: its series start from zero, and count only what it answers now.
    let (ok, _) = reload(
        &proxy,
        &format!("{admin}{}", config_with(&list(&[&a, &b]), "")),
    )
    .await;
    assert!(ok);
    let text = scrape().await;
    assert_eq!(metric(&text, &ok_2xx(&a)), Some(0.0), "{text}");
    let seconds = format!(
        "rproxy_upstream_response_seconds_count{{upstream=\"app\",backend=\"{}\"}}",
        a.addr
    );
    assert_eq!(metric(&text, &seconds), Some(0.0), "{text}");
    let before = a.requests();
    for _ in 0..4 {
        assert_eq!(get(&client(), web, "/").await.status, 200);
    }
    let answered = (a.requests() - before) as f64;
    assert!(answered > 0.0);
    let start = Instant::now();
    while metric(&scrape().await, &ok_2xx(&a)) != Some(answered) {
        assert!(start.elapsed() < DEADLINE, "a's new requests never counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_reload_adds_and_removes_listeners() {
    let a = Backend::start("a").await;
    let base = config_with(&list(&[&a]), "");
    let proxy = Proxy::start(&with_admin(&base));
    let web = proxy.addr();
    let extra =
        format!("{base}\n[listeners.extra]\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\n");
    let (ok, _) = reload(&proxy, &with_admin(&extra)).await;
    assert!(ok);
    // The ready file is rewritten with the new listener's address.
    let ready = proxy.ready().expect("the ready file");
    assert_eq!(ready.pid, proxy.pid());
    assert_eq!(
        ready.listeners["web"],
        [web],
        "the kept listener did not move"
    );
    let extra_addr = ready.listeners["extra"][0];
    assert_eq!(get(&client(), extra_addr, "/").await.backend(), "a");

    let (ok, _) = reload(&proxy, &with_admin(&base)).await;
    assert!(ok);
    let ready = proxy.ready().expect("the ready file");
    assert_eq!(
        ready.listeners,
        [("web".to_string(), vec![web])].into(),
        "extra left the ready file"
    );
    wait_for("the removed listener to refuse connections", || {
        std::net::TcpStream::connect(extra_addr).is_err()
    })
    .await;
    assert_eq!(get(&client(), proxy.addr(), "/").await.backend(), "a");
}

#[tokio::test]
async fn rproxy_s_reload_signals_through_the_pid_file() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let config = |servers: &[&Backend]| {
        with_admin(&format!(
            "pid_file = \"rproxy.pid\"\n{}",
            config_with(&list(servers), "")
        ))
    };
    let mut proxy = Proxy::start(&config(&[&a]));
    let pid_file = proxy.config_path.with_file_name("rproxy.pid");
    let written = std::fs::read_to_string(&pid_file).expect("pid file written at start");
    assert_eq!(written.trim(), proxy.pid().to_string());

    std::fs::write(&proxy.config_path, config(&[&b])).expect("write");
    let out = std::process::Command::new(rproxy_bin())
        .args(["-s", "reload", "-c"])
        .arg(&proxy.config_path)
        .output()
        .expect("run rproxy -s reload");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("sent reload to process"));
    proxy
        .wait_for_metric("rproxy_config_reloads_total{result=\"success\"}", |n| {
            n == 1.0
        })
        .await;
    assert_eq!(get(&client(), proxy.addr(), "/").await.backend(), "b");

    // Without a pid_file the command says what is missing.
    let plain = proxy.config_path.with_file_name("plain.toml");
    std::fs::write(&plain, config_with(&list(&[&a]), "")).expect("write");
    let out = std::process::Command::new(rproxy_bin())
        .args(["-s", "reload", "-c"])
        .arg(&plain)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no `pid_file`"));

    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit().await.code(), Some(0));
    assert!(!pid_file.exists(), "the pid file is removed at exit");
    assert_eq!(proxy.ready(), None, "the ready file is removed at exit");
}

#[tokio::test]
async fn a_reload_that_fails_after_building_leaves_the_running_gauges_alone() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&with_admin(&config_with(&format!("\"{}\"", a.addr), "")));
    let up = backend_series("rproxy_backend_up", "app", a.addr, "");
    assert_eq!(proxy.metric(&up).await, 1.0);
    // The new file marks the server down, and adds a listener on an address in use: the
    // snapshot is built, then binding fails, and the reload is refused.
    let taken = proxy.admin_addr();
    let refused = format!(
        "{}\n[listeners.clash]\nlisten = \"{taken}\"\nupstream = \"app\"\n",
        with_admin(&config_with(
            &format!("{{ addr = \"{}\", down = true }}", a.addr),
            ""
        ))
    );
    assert!(!proxy.reload_with(&refused).await, "the reload must fail");
    assert_eq!(
        proxy.metric(&up).await,
        1.0,
        "the running configuration's server is still up"
    );
    assert_eq!(get(&client(), proxy.addr(), "/").await.status, 200);
}
