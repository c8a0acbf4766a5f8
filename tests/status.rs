//! `/status` as JSON after known traffic, and the HTML status page rendered by a real browser
//! (headless Chromium; skipped, saying so, when Chromium is not installed).

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

fn chromium() -> Option<String> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            let out = std::process::Command::new("sh")
                .args(["-c", &format!("command -v {name}")])
                .output()
                .ok()?;
            let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (!path.is_empty()).then_some(path)
        })
}

/// Loads `url` in headless Chromium, lets its scripts run, and returns the DOM; with
/// `screenshot`, also writes a PNG there.
fn render_in_chromium(browser: &str, url: &str, screenshot: Option<&std::path::Path>) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut cmd = std::process::Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=5000",
        "--window-size=1400,900",
    ])
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
    let Some(browser) = chromium() else {
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
