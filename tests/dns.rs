//! `resolve = true` against a real DNS server (dnsmasq, `tests/common/dns.rs`): traffic follows
//! a changed record without a reload; a name missing at start is served once it appears; the
//! DNS server stopped keeps the last addresses serving; a request in flight to a removed
//! address completes; SRV weights and priorities apply; and two rproxy instances whose DNS
//! servers answer in different orders send the same keys and cookies to the same backends.

mod common;

use std::time::{Duration, Instant};

use common::dns::{Dnsmasq, backends_on_loopbacks};
use common::{
    Answer, Proxy, check_with_promtool, client, config_with, get, metric, promtool, send,
    wait_until, with_admin,
};

/// The records have a TTL of 1 s: a change is followed within this (TTL, one query, and a
/// generous margin for a loaded machine).
const FOLLOW_WITHIN: Duration = Duration::from_secs(6);

fn config(dns: &Dnsmasq, resolver_extra: &str, servers: &str, upstream_extra: &str) -> String {
    with_admin(&format!(
        "{}{}",
        dns.resolver_section(resolver_extra),
        config_with(servers, upstream_extra)
    ))
}

/// `app.test`, with `resolve = true`, as the one server: its text for a servers array.
fn app_test(port: u16) -> String {
    format!("{{ addr = \"app.test:{port}\", resolve = true }}")
}

/// dnsmasq answering from `hosts`, backends "two" and "three" on 127.0.0.2 and 127.0.0.3,
/// and rproxy following `app.test` (`resolver_extra` added to its `[resolver]`). `None` where
/// dnsmasq is not installed, outside CI.
async fn following_app_test(
    hosts: &str,
    resolver_extra: &str,
) -> Option<(Dnsmasq, Vec<common::Backend>, Proxy)> {
    let dns = Dnsmasq::start(hosts, &[])?;
    let (port, backends) = backends_on_loopbacks(&["two", "three"]).await;
    let proxy = Proxy::start(&config(&dns, resolver_extra, &app_test(port), ""));
    Some((dns, backends, proxy))
}

async fn hit(proxy: &Proxy, path: &str) -> Answer {
    get(&client(), proxy.addr(), path).await
}

/// Polls until a request is answered 200 by `backend`; returns how long that took.
async fn until_served_by(proxy: &Proxy, backend: &str) -> Duration {
    let start = Instant::now();
    wait_until(&format!("requests served by {backend}"), || async {
        let a = hit(proxy, "/").await;
        a.status == 200 && a.backend() == backend
    })
    .await;
    start.elapsed()
}

fn upstream_status(status: &serde_json::Value) -> serde_json::Value {
    status["upstreams"][0].clone()
}

#[tokio::test]
async fn traffic_follows_a_changed_record_without_a_reload() {
    let Some((dns, backends, proxy)) = following_app_test("127.0.0.2 app.test\n", "").await else {
        return;
    };
    let port = backends[0].addr.port();
    for _ in 0..5 {
        let a = hit(&proxy, "/").await;
        assert_eq!((a.status.as_u16(), a.backend()), (200, "two"));
    }
    dns.set_hosts("127.0.0.3 app.test\n");
    let took = until_served_by(&proxy, "three").await;
    assert!(took < FOLLOW_WITHIN, "followed after {took:?}");
    for _ in 0..5 {
        let a = hit(&proxy, "/").await;
        assert_eq!((a.status.as_u16(), a.backend()), (200, "three"));
    }
    let metrics = proxy.scrape().await;
    let series = |ip: &str| {
        format!(
            "rproxy_upstream_requests_total{{upstream=\"app\",backend=\"app.test:{port} (127.0.0.{ip}:{port})\",code=\"2xx\"}}"
        )
    };
    assert!(
        metric(&metrics, &series("3")).is_some_and(|n| n >= 5.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, &series("2")),
        None,
        "the old address's series left"
    );
    assert!(metric(&metrics, "rproxy_dns_queries_total{result=\"ok\"}").is_some_and(|n| n >= 2.0));
    assert!(backends[1].requests() >= 5);
    // Help text for the DNS counter, per-address series.
    if let Some(promtool) = promtool() {
        check_with_promtool(&promtool, &metrics);
    }
}

#[tokio::test]
async fn a_name_missing_at_start_is_served_once_it_appears() {
    let Some(dns) = Dnsmasq::start("", &[]) else {
        return;
    };
    let (port, _backends) = backends_on_loopbacks(&["two"]).await;
    let text = config(&dns, "", &app_test(port), "");
    // `-t` warns and passes: rproxy would start.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("upstream.toml");
    std::fs::write(&file, &text).expect("write config");
    let checked = std::process::Command::new(common::rproxy_bin())
        .arg("-t")
        .arg("-c")
        .arg(&file)
        .output()
        .expect("run rproxy -t");
    assert!(checked.status.success(), "{checked:?}");

    let proxy = Proxy::start(&text);
    assert_eq!(hit(&proxy, "/").await.status, 503, "no address yet");
    let up = upstream_status(&proxy.status().await);
    assert_eq!(up["resolve"][0]["state"], "unresolved", "{up}");
    assert_eq!(up["backends"].as_array().map(Vec::len), Some(0), "{up}");
    assert!(
        proxy
            .metric("rproxy_dns_queries_total{result=\"nxdomain\"}")
            .await
            >= 1.0
    );

    dns.set_hosts("127.0.0.2 app.test\n");
    // Retried with a backoff from 1 s: the second retry is at most 3 s after start.
    let took = until_served_by(&proxy, "two").await;
    assert!(took < FOLLOW_WITHIN, "served after {took:?}");
    let up = upstream_status(&proxy.status().await);
    assert_eq!(up["resolve"][0]["state"], "resolved", "{up}");
}

/// A reload adding a name that does not resolve is applied (not refused), and a name followed
/// before the reload keeps its addresses through it.
#[tokio::test]
async fn a_reload_with_a_name_that_does_not_resolve_is_applied() {
    let Some(dns) = Dnsmasq::start("127.0.0.2 app.test\n", &[]) else {
        return;
    };
    let (port, _backends) = backends_on_loopbacks(&["two", "three"]).await;
    let app = app_test(port);
    let proxy = Proxy::start(&config(&dns, "", &app, ""));
    assert_eq!(hit(&proxy, "/").await.backend(), "two");
    let more = format!("{app}, {{ addr = \"later.test:{port}\", resolve = true }}");
    assert!(
        proxy.reload_with(&config(&dns, "", &more, "")).await,
        "reload applied"
    );
    let up = upstream_status(&proxy.status().await);
    assert_eq!(up["resolve"][1]["state"], "unresolved", "{up}");
    for _ in 0..4 {
        assert_eq!(hit(&proxy, "/").await.backend(), "two");
    }
    dns.set_hosts("127.0.0.2 app.test\n127.0.0.3 later.test\n");
    until_served_by(&proxy, "three").await;
}

#[tokio::test]
async fn the_dns_server_stopped_keeps_the_last_addresses_serving() {
    let hosts = "127.0.0.2 app.test\n127.0.0.3 app.test\n";
    let Some((mut dns, backends, proxy)) = following_app_test(hosts, "timeout = \"200ms\"").await
    else {
        return;
    };
    assert_eq!(hit(&proxy, "/").await.status, 200);
    dns.stop();
    wait_until("a failed query", || async {
        proxy
            .metric("rproxy_dns_queries_total{result=\"timeout\"}")
            .await
            + proxy
                .metric("rproxy_dns_queries_total{result=\"error\"}")
                .await
            >= 2.0
    })
    .await;
    let mut names = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let a = hit(&proxy, "/").await;
        assert_eq!(a.status, 200);
        names.insert(a.backend().to_string());
    }
    assert_eq!(names.len(), 2, "both addresses kept: {names:?}");
    assert!(backends.iter().all(|b| b.requests() >= 5));
}

#[tokio::test]
async fn a_request_in_flight_to_a_removed_address_completes() {
    let Some((dns, backends, proxy)) = following_app_test("127.0.0.2 app.test\n", "").await else {
        return;
    };
    let addr = proxy.addr();
    let slow = tokio::spawn(async move { get(&client(), addr, "/slow/3000").await });
    common::wait_for("the slow request at its backend", || {
        backends[0].requests() == 1
    })
    .await;
    dns.set_hosts("127.0.0.3 app.test\n");
    until_served_by(&proxy, "three").await;
    let up = upstream_status(&proxy.status().await);
    assert_eq!(up["backends"].as_array().map(Vec::len), Some(1), "{up}");
    let a = slow.await.expect("slow request task");
    assert_eq!(
        (a.status.as_u16(), a.backend(), a.body.as_str()),
        (200, "two", "two")
    );
}

#[tokio::test]
async fn srv_weights_and_priorities_apply() {
    let (port, mut backends) = backends_on_loopbacks(&["a", "b", "c"]).await;
    let srv = [
        format!("_http._tcp.app.test,a.test,{port},0,3"),
        format!("_http._tcp.app.test,b.test,{port},0,1"),
        format!("_http._tcp.app.test,c.test,{port},1,1"),
    ];
    let srv: Vec<&str> = srv.iter().map(String::as_str).collect();
    let Some(dns) = Dnsmasq::start(
        "127.0.0.2 a.test\n127.0.0.3 b.test\n127.0.0.4 c.test\n",
        &srv,
    ) else {
        return;
    };
    let proxy = Proxy::start(&config(
        &dns,
        "",
        "{ addr = \"app.test\", service = \"http\", resolve = true }",
        "",
    ));
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..40 {
        let a = hit(&proxy, "/").await;
        assert_eq!(a.status, 200);
        *counts.entry(a.backend().to_string()).or_insert(0) += 1;
    }
    assert_eq!(
        counts,
        [("a".to_string(), 30), ("b".to_string(), 10)].into(),
        "weights 3:1 from the records; the priority-1 target is a backup"
    );
    let up = upstream_status(&proxy.status().await);
    let backup_of = |ip: &str| {
        up["backends"]
            .as_array()
            .and_then(|v| v.iter().find(|b| b["address"] == format!("{ip}:{port}")))
            .map(|b| (b["weight"].clone(), b["backup"].clone()))
    };
    assert_eq!(
        backup_of("127.0.0.4"),
        Some((1.into(), true.into())),
        "{up}"
    );
    assert_eq!(
        backup_of("127.0.0.2"),
        Some((3.into(), false.into())),
        "{up}"
    );

    // With both primaries gone, the backup serves.
    let c = backends.pop().expect("c");
    for b in backends {
        b.stop().await;
    }
    for _ in 0..10 {
        let a = hit(&proxy, "/").await;
        assert_eq!((a.status.as_u16(), a.backend()), (200, "c"));
    }
    assert!(c.requests() >= 10);
}

/// Two rproxy instances, each with a DNS server answering the same three addresses in another
/// order: the same key goes to the same backend in both (plain and consistent hashing), and a
/// sticky cookie from one is honoured by the other.
#[tokio::test]
async fn instances_agree_whatever_order_dns_answers_in() {
    let forward = "127.0.0.2 app.test\n127.0.0.3 app.test\n127.0.0.4 app.test\n";
    let backward = "127.0.0.4 app.test\n127.0.0.3 app.test\n127.0.0.2 app.test\n";
    let (Some(dns_a), Some(dns_b)) = (Dnsmasq::start(forward, &[]), Dnsmasq::start(backward, &[]))
    else {
        return;
    };
    assert_ne!(
        answer_order(&dns_a).await,
        answer_order(&dns_b).await,
        "the two DNS servers answer in different orders"
    );
    let (port, _backends) = backends_on_loopbacks(&["two", "three", "four"]).await;
    for hash in [
        "hash = { key = \"$request_uri\" }",
        "hash = { key = \"$request_uri\", consistent = true }",
    ] {
        let extra = format!("{hash}\n[upstreams.app.sticky]\ncookie = \"route\"\n");
        let servers = app_test(port);
        let a = Proxy::start(&config(&dns_a, "", &servers, &extra));
        let b = Proxy::start(&config(&dns_b, "", &servers, &extra));
        let mut seen = std::collections::BTreeMap::new();
        for i in 0..60 {
            let path = format!("/key/{i}");
            let (x, y) = (hit(&a, &path).await, hit(&b, &path).await);
            assert_eq!((x.status.as_u16(), y.status.as_u16()), (200, 200));
            assert_eq!(x.backend(), y.backend(), "{hash}: key {path}");
            let cookie = x
                .headers
                .get("set-cookie")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .map(str::to_string)
                .expect("a sticky cookie");
            seen.insert(x.backend().to_string(), cookie);
        }
        assert_eq!(seen.len(), 3, "{hash}: keys spread over every backend");
        for (backend, cookie) in &seen {
            // Another key, so only the cookie can choose the backend.
            let req = http::Request::get(format!("http://{}/other", b.addr()))
                .header("cookie", cookie.as_str())
                .body(Default::default())
                .expect("request");
            let y = send(&client(), req).await;
            assert_eq!(y.backend(), backend, "{hash}: cookie {cookie}");
        }
    }
}

/// The addresses of app.test in the order `dns` answers them.
async fn answer_order(dns: &Dnsmasq) -> Vec<std::net::IpAddr> {
    use hickory_resolver::config::{NameServerConfig, ResolverConfig};
    let mut ns = NameServerConfig::udp(dns.addr.ip());
    for c in &mut ns.connections {
        c.port = dns.addr.port();
    }
    let resolver = hickory_resolver::TokioResolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![ns]),
        hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
    )
    .build()
    .expect("a resolver");
    let found = resolver
        .ipv4_lookup("app.test.")
        .await
        .expect("app.test resolves");
    found
        .answers()
        .iter()
        .filter_map(|r| match r.data {
            hickory_resolver::proto::rr::RData::A(a) => Some(std::net::IpAddr::V4(a.0)),
            _ => None,
        })
        .collect()
}
