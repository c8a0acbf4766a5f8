//! Sticky sessions as a user meets them: the first answer sets a cookie; with it, every request
//! goes to the same backend; a forged value is ignored and replaced; when the pinned backend
//! dies the request is served elsewhere, without an error, and the cookie re-issued; and a
//! second rproxy process with the same servers (in another order) honours the same cookie.

mod common;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;

use common::*;

const STICKY: &str = "[upstreams.app.sticky]\ncookie = \"route\"\nmax_age = \"1h\"\n";

async fn get_with_cookie(addr: std::net::SocketAddr, cookie: Option<&str>) -> Answer {
    let mut req = Request::get(format!("http://{addr}/"));
    if let Some(c) = cookie {
        req = req.header("cookie", format!("theme=dark; {c}"));
    }
    send(
        &client(),
        req.body(Full::<Bytes>::default()).expect("request"),
    )
    .await
}

/// The `route=...` pair from a response's Set-Cookie, if any.
fn route_cookie(ans: &Answer) -> Option<String> {
    ans.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("route="))
        .map(|v| v.split(';').next().unwrap_or(v).to_string())
}

async fn three_backends() -> Vec<Backend> {
    let mut v = Vec::new();
    for name in ["a", "b", "c"] {
        v.push(Backend::start(name).await);
    }
    v
}

fn servers(backends: &[Backend], order: &[usize]) -> String {
    order
        .iter()
        .map(|&i| format!("\"{}\"", backends[i].addr))
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test]
async fn a_cookie_pins_the_client_and_survives_another_instance() {
    let backends = three_backends().await;
    let config =
        |order: &[usize]| format!("{}{STICKY}", config_with(&servers(&backends, order), ""));
    let proxy = Proxy::start(&config(&[0, 1, 2]));

    let first = get_with_cookie(proxy.addr(), None).await;
    assert_eq!(first.status, 200);
    let cookie = route_cookie(&first).expect("the first answer sets the cookie");
    let set = first.headers["set-cookie"]
        .to_str()
        .expect("text")
        .to_string();
    assert!(
        set.contains("Max-Age=3600") && set.contains("HttpOnly") && set.contains("SameSite=Lax"),
        "{set}"
    );
    for b in &backends {
        assert!(
            !cookie.contains(&b.addr.port().to_string()),
            "the cookie shows an address: {cookie}"
        );
    }
    let home = first.backend().to_string();
    for _ in 0..9 {
        let ans = get_with_cookie(proxy.addr(), Some(&cookie)).await;
        assert_eq!(
            ans.backend(),
            home,
            "round-robin would have moved the client"
        );
        assert_eq!(route_cookie(&ans), None, "no new cookie while pinned");
    }

    // Another rproxy process, the servers listed in another order: the same backend.
    let other = Proxy::start(&config(&[2, 0, 1]));
    for _ in 0..3 {
        assert_eq!(
            get_with_cookie(other.addr(), Some(&cookie)).await.backend(),
            home
        );
    }
}

#[tokio::test]
async fn a_forged_value_is_ignored_and_replaced() {
    let backends = three_backends().await;
    let proxy = Proxy::start(&format!(
        "{}{STICKY}",
        config_with(&servers(&backends, &[0, 1, 2]), "")
    ));
    for forged in [
        "route=0123456789abcdef01234567",
        "route=a",
        "route=../../etc",
        "route=",
    ] {
        let ans = get_with_cookie(proxy.addr(), Some(forged)).await;
        assert_eq!(ans.status, 200, "{forged}");
        let fresh = route_cookie(&ans).expect("a replacement cookie");
        assert_ne!(fresh, forged);
    }
}

#[tokio::test]
async fn when_the_pinned_backend_dies_the_client_is_redispatched_without_an_error() {
    let mut backends = three_backends().await;
    let proxy = Proxy::start(&format!(
        "{}{STICKY}",
        config_with(&servers(&backends, &[0, 1, 2]), "")
    ));
    let first = get_with_cookie(proxy.addr(), None).await;
    let cookie = route_cookie(&first).expect("cookie");
    let home = first.backend().to_string();
    let index = backends
        .iter()
        .position(|b| b.name == home)
        .expect("home backend");
    backends.remove(index).stop().await;

    let moved = get_with_cookie(proxy.addr(), Some(&cookie)).await;
    assert_eq!(
        moved.status, 200,
        "the client never sees its backend go away"
    );
    assert_ne!(moved.backend(), home);
    let new_cookie = route_cookie(&moved).expect("the cookie is re-issued");
    assert_ne!(new_cookie, cookie);
    // And the new cookie pins to the new backend.
    for _ in 0..5 {
        assert_eq!(
            get_with_cookie(proxy.addr(), Some(&new_cookie))
                .await
                .backend(),
            moved.backend()
        );
    }
}

#[tokio::test]
async fn a_secret_makes_other_instances_values_unusable() {
    let backends = three_backends().await;
    let open = Proxy::start(&format!(
        "{}{STICKY}",
        config_with(&servers(&backends, &[0, 1, 2]), "")
    ));
    let signed = Proxy::start(&format!(
        "{}{STICKY}secret = \"a-long-enough-secret\"\n",
        config_with(&servers(&backends, &[0, 1, 2]), "")
    ));
    let unsigned_cookie = route_cookie(&get_with_cookie(open.addr(), None).await).expect("cookie");
    let ans = get_with_cookie(signed.addr(), Some(&unsigned_cookie)).await;
    let replaced = route_cookie(&ans).expect("the unsigned value is not honoured");
    assert_ne!(replaced, unsigned_cookie);
}
