//! `/status` as JSON after known traffic, and the HTML status page in a real browser
//! (headless Chromium): rendered, and driven through the DevTools protocol to drain a server
//! with its buttons. Skipped, saying so, when Chromium is not installed, except under CI.

mod browser;
mod common;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;

use common::*;

const TOKEN: &str = "status-token-0123456789";

async fn status_json(admin: std::net::SocketAddr) -> serde_json::Value {
    let req = Request::get(format!("http://{admin}/status"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::<Bytes>::default())
        .expect("request");
    let ans = send(&client(), req).await;
    assert_eq!(ans.status, 200);
    assert_eq!(ans.headers["content-type"], "application/json");
    serde_json::from_str(&ans.body).expect("JSON")
}

async fn proxy_with_traffic() -> (Vec<Backend>, std::net::SocketAddr, Proxy) {
    let backends = vec![
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let dead = refused_addr();
    let servers = format!(
        r#""{}", {{ addr = "{}", weight = 2 }}, {{ addr = "{}", down = true }}, {{ addr = "{dead}", backup = true }}"#,
        backends[0].addr, backends[1].addr, backends[2].addr
    );
    let proxy = Proxy::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n{}",
        config_with(&servers, "")
    ));
    let c = client();
    for _ in 0..30 {
        assert_eq!(get(&c, proxy.addr(), "/").await.status, 200);
    }
    (backends, dead, proxy)
}

#[tokio::test]
async fn status_reports_every_listener_and_backend() {
    let (backends, dead, proxy) = proxy_with_traffic().await;
    let s = status_json(proxy.admin.expect("admin")).await;
    assert_eq!(s["listeners"][0]["name"], "web");
    assert_eq!(s["listeners"][0]["addresses"][0], proxy.addr().to_string());
    let list = s["upstreams"][0]["backends"].as_array().expect("backends");
    assert_eq!(list.len(), 4);
    let find = |addr: String| {
        list.iter()
            .find(|b| b["address"] == addr.as_str())
            .unwrap_or_else(|| panic!("{addr} missing in {s}"))
    };
    let (a, b, c, d) = (
        find(backends[0].addr.to_string()),
        find(backends[1].addr.to_string()),
        find(backends[2].addr.to_string()),
        find(dead.to_string()),
    );
    assert_eq!(
        (a["requests"].as_u64(), b["requests"].as_u64()),
        (Some(10), Some(20))
    );
    assert_eq!(b["weight"], 2);
    assert_eq!(
        (
            c["state"].as_str(),
            c["down"].as_bool(),
            c["requests"].as_u64()
        ),
        (Some("down"), Some(true), Some(0))
    );
    assert_eq!(
        (d["backup"].as_bool(), d["state"].as_str()),
        (Some(true), Some("up"))
    );
    for x in [a, b] {
        assert_eq!(x["in_flight"], 0);
        assert_eq!(x["errors"], 0);
        assert!(x["latency_p50_ms"].as_f64().is_some_and(|v| v > 0.0), "{x}");
        assert!(
            x["latency_p99_ms"].as_f64() >= x["latency_p50_ms"].as_f64(),
            "{x}"
        );
    }
    assert!(d["latency_p50_ms"].is_null());
}

/// Loads `url` in headless Chromium, lets its scripts run, and returns the DOM; with
/// `screenshot`, also writes a PNG there.
fn render_in_chromium(browser: &str, url: &str, screenshot: Option<&std::path::Path>) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut cmd = std::process::Command::new(browser);
    cmd.args(browser::FLAGS)
        .arg("--virtual-time-budget=5000")
        .arg(format!("--user-data-dir={}", profile.path().display()));
    match screenshot {
        Some(path) => cmd.arg(format!("--screenshot={}", path.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).output().expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn the_status_page_shows_every_backend_in_a_browser() {
    let Some(browser) = browser::chromium() else {
        eprintln!("skipped: chromium is not installed (apt-get install chromium)");
        return;
    };
    let (backends, dead, proxy) = proxy_with_traffic().await;
    let url = format!("http://{}/?token={TOKEN}", proxy.admin.expect("admin"));
    let dom = tokio::task::spawn_blocking({
        let (browser, url) = (browser.clone(), url.clone());
        move || render_in_chromium(&browser, &url, None)
    })
    .await
    .expect("chromium task");
    assert!(dom.contains("upstream app (round_robin)"), "{dom}");
    for addr in backends.iter().map(|b| b.addr).chain([dead]) {
        assert!(
            dom.contains(&format!("data-backend=\"{addr}\"")),
            "{addr} not in the page:\n{dom}"
        );
    }
    assert_eq!(
        dom.matches("<tr class=\"down\"").count(),
        1,
        "one backend is down"
    );
    assert!(
        dom.contains("<span id=\"error\"></span>"),
        "the page reports an error:\n{dom}"
    );
    // Every server has its buttons, each named for a screen reader, and the token has a field.
    for addr in backends.iter().map(|b| b.addr).chain([dead]) {
        for action in ["drain", "disable", "enable"] {
            let label = format!("aria-label=\"{action} {addr} in upstream app\"");
            assert!(dom.contains(&label), "no {label} in the page:\n{dom}");
        }
    }
    assert!(
        dom.contains("<input id=\"token\" type=\"password\""),
        "{dom}"
    );

    // A screenshot, as the README shows it (RPROXY_SCREENSHOT=path to keep it).
    let shot = std::env::var_os("RPROXY_SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("rproxy-status-{}.png", std::process::id()))
        });
    let target = shot.clone();
    tokio::task::spawn_blocking(move || render_in_chromium(&browser, &url, Some(&target)))
        .await
        .expect("chromium task");
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
}

/// The server's admin state as `GET /api/upstreams` says it.
async fn admin_state(admin: std::net::SocketAddr, addr: std::net::SocketAddr) -> String {
    let req = Request::get(format!("http://{admin}/api/upstreams"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::<Bytes>::default())
        .expect("request");
    let ans = send(&client(), req).await;
    assert_eq!(ans.status, 200, "{}", ans.body);
    let doc: serde_json::Value = serde_json::from_str(&ans.body).expect("JSON");
    doc["upstreams"][0]["servers"]
        .as_array()
        .and_then(|list| list.iter().find(|s| s["addr"] == addr.to_string().as_str()))
        .and_then(|s| s["admin_state"].as_str())
        .unwrap_or_else(|| panic!("{addr} in {doc}"))
        .to_string()
}

/// Types `token` into the page's token field, as a person would (the field's `input` event).
async fn type_token(page: &mut browser::Browser, token: &str) {
    let expression = format!(
        "(() => {{ const t = document.getElementById('token'); t.value = {}; \
         t.dispatchEvent(new Event('input')); }})()",
        serde_json::json!(token)
    );
    page.eval(&expression).await;
}

/// `document.querySelector` of the row of `addr`, as a JavaScript expression.
fn row(addr: std::net::SocketAddr) -> String {
    format!("document.querySelector('tr[data-backend=\"{addr}\"]')")
}

#[tokio::test]
async fn the_page_drains_a_server_once_the_token_is_typed() {
    let Some(binary) = browser::chromium() else {
        eprintln!("skipped: chromium is not installed (apt-get install chromium)");
        return;
    };
    let (backends, _dead, proxy) = proxy_with_traffic().await;
    let admin = proxy.admin.expect("admin");
    let (a, b) = (backends[0].addr, backends[1].addr);
    let mut page = browser::Browser::start(&binary).await;
    // The URL's token reads the page; it does not let a click write.
    page.navigate(&format!("http://{admin}/?token={TOKEN}"))
        .await;
    let drain = format!("{}?.querySelector('button[data-action=drain]')", row(a));
    page.wait_for("a's drain button", &format!("{drain} != null"))
        .await;

    // No token typed: the click is refused with the API's own words, and nothing changes.
    page.eval(&format!("{drain}.click()")).await;
    let refusal = page
        .wait_for(
            "the refusal on the page",
            "document.querySelector('#action.refused')?.textContent",
        )
        .await;
    let refusal = refusal.as_str().unwrap_or_default();
    assert!(
        refusal.contains(&format!("drain {a} refused (401)"))
            && refusal.contains("missing or wrong token"),
        "{refusal}"
    );
    assert_eq!(admin_state(admin, a).await, "active");

    // Typed: kept for this tab only (sessionStorage, not localStorage nor a cookie).
    type_token(&mut page, TOKEN).await;
    assert_eq!(
        page.eval("sessionStorage.getItem('rproxy.admin.token')")
            .await,
        TOKEN
    );
    assert_eq!(
        page.eval("localStorage.length + document.cookie.length")
            .await,
        0
    );
    page.eval(&format!("{drain}.click()")).await;
    wait_until("a to be draining in /api/upstreams", move || async move {
        admin_state(admin, a).await == "draining"
    })
    .await;
    assert_eq!(admin_state(admin, b).await, "active", "only a was drained");
    let shown = page
        .wait_for(
            "the page to show a draining",
            &format!(
                "{row}.dataset.admin === 'draining' && {drain}.disabled && \
                 {row}.querySelector('td.admin').textContent",
                row = row(a)
            ),
        )
        .await;
    let shown = shown.as_str().unwrap_or_default();
    assert!(
        shown.starts_with("draining set ") && shown.contains(" by 127.0.0.1:"),
        "{shown}"
    );

    // The sparkline: traffic sent after the sampler's first reading shows in b's history
    // (5-second intervals), then as points above the baseline of b's line.
    let listener = proxy.addr();
    wait_until("requests in b's history", move || async move {
        assert_eq!(get(&client(), listener, "/").await.status, 200);
        let status = status_json(admin).await;
        let history = &backend_in(&status, "app", b).expect("b in /status")["history"];
        assert_eq!(history["interval_s"], 5);
        history["requests"]
            .as_array()
            .is_some_and(|points| points.iter().any(|n| n.as_u64() > Some(0)))
    })
    .await;
    page.wait_for(
        "b's sparkline to rise",
        &format!(
            "{}.querySelector('svg.spark polyline.req').getAttribute('points').split(' ')\
             .some((p) => Number(p.split(',')[1]) < 25)",
            row(b)
        ),
    )
    .await;
    let label = page
        .eval(&format!(
            "{}.querySelector('svg.spark').getAttribute('aria-label')",
            row(b)
        ))
        .await;
    assert!(
        label
            .as_str()
            .is_some_and(|l| l.starts_with("last 5 minutes: ")),
        "{label}"
    );
}

#[tokio::test]
async fn the_page_says_how_to_enable_writes_when_no_token_is_configured() {
    let Some(binary) = browser::chromium() else {
        eprintln!("skipped: chromium is not installed (apt-get install chromium)");
        return;
    };
    let backend = Backend::start("a").await;
    let proxy = Proxy::start(&with_admin(&config_with(
        &format!("\"{}\"", backend.addr),
        "",
    )));
    let admin = proxy.admin.expect("admin");
    let mut page = browser::Browser::start(&binary).await;
    page.navigate(&format!("http://{admin}/")).await;
    let drain = format!(
        "{}?.querySelector('button[data-action=drain]')",
        row(backend.addr)
    );
    page.wait_for("the drain button", &format!("{drain} != null"))
        .await;
    type_token(&mut page, "any-token-at-all-here").await;
    page.eval(&format!("{drain}.click()")).await;
    let refusal = page
        .wait_for(
            "the refusal on the page",
            "document.querySelector('#action.refused')?.textContent",
        )
        .await;
    let refusal = refusal.as_str().unwrap_or_default();
    assert!(
        refusal.contains("refused (403)") && refusal.contains("set `token` under [admin]"),
        "{refusal}"
    );
    assert_eq!(
        proxy.backend_status("app", backend.addr).await["admin_state"],
        "active"
    );
}
