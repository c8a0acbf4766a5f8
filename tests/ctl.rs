//! `rproxy ctl` through the real binary against a running rproxy: what it prints and its exit
//! codes (0 done, 1 refused or unreachable or the wait ran out, 2 usage).

mod common;

use std::time::Duration;

use common::*;

const TOKEN: &str = "ctl-test-token-0123";

/// `rproxy ctl ARGS...` with `env` set: exit code, stdout, stderr.
fn ctl(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = std::process::Command::new(rproxy_bin())
        .arg("ctl")
        .args(args)
        .env_remove("RPROXY_ADMIN_TOKEN")
        .envs(env.iter().copied())
        .output()
        .expect("run rproxy ctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `backend`'s object in `GET /api/upstreams` of upstream `app`, read with the token.
async fn server(p: &Proxy, backend: std::net::SocketAddr) -> serde_json::Value {
    let req = http::Request::get(format!("http://{}/api/upstreams/app", p.admin_addr()))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(http_body_util::Full::default())
        .expect("request");
    let ans = send(&client(), req).await;
    let doc: serde_json::Value = serde_json::from_str(&ans.body).expect("json");
    let servers = doc["servers"].as_array().cloned().unwrap_or_default();
    servers
        .into_iter()
        .find(|s| s["addr"] == backend.to_string())
        .unwrap_or_else(|| panic!("no {backend} in {}", ans.body))
}

fn proxy(token: Option<&str>, servers: &str) -> Proxy {
    let token = token.map_or_else(String::new, |t| format!("token = \"{t}\"\n"));
    Proxy::start(&format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n{token}",
        config_with(servers, "")
    ))
}

#[tokio::test]
async fn each_action_prints_one_line_and_exits_0() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let p = proxy(Some(TOKEN), &format!("\"{}\", \"{}\"", a.addr, b.addr));
    let admin = format!("http://{}", p.admin_addr());
    let env = [("RPROXY_ADMIN_TOKEN", TOKEN)];
    let a_addr = a.addr.to_string();
    let run = |args: &[&str]| {
        let mut all = vec!["--admin", admin.as_str()];
        all.extend_from_slice(args);
        ctl(&all, &env)
    };
    let (code, out, err) = run(&["drain", "app", &a_addr, "--wait", "5s"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        format!("app {a_addr}: draining; no request in flight")
    );
    let (code, out, _) = run(&["status"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("UPSTREAM"), "{out}");
    let a_line = lines
        .iter()
        .find(|l| l.contains(&a_addr))
        .expect("a's line");
    assert!(a_line.contains("draining"), "{out}");
    let (code, out, _) = run(&["weight", "app", &a_addr, "4"]);
    assert_eq!(
        (code, out.trim()),
        (0, format!("app {a_addr}: draining, weight 4").as_str())
    );
    let (code, out, _) = run(&["enable", "app", &a_addr]);
    assert_eq!(
        (code, out.trim()),
        (0, format!("app {a_addr}: active, weight 4").as_str())
    );
    let (code, out, _) = run(&["reset", "app", &a_addr]);
    assert_eq!(
        (code, out.trim()),
        (0, format!("app {a_addr}: active, weight 1").as_str())
    );
    let (code, _, _) = run(&["disable", "app", &a_addr]);
    assert_eq!(code, 0);
    assert_eq!(server(&p, a.addr).await["admin_state"], "disabled");
}

#[tokio::test]
async fn refusals_and_a_drain_that_runs_out_exit_1() {
    let slow = Backend::start_with_delay("slow", Duration::from_secs(3)).await;
    let p = proxy(Some(TOKEN), &format!("\"{}\"", slow.addr));
    let admin = format!("http://{}", p.admin_addr());
    let slow_addr = slow.addr.to_string();

    let (code, _, err) = ctl(&["--admin", &admin, "disable", "app", &slow_addr], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("refused (401)"), "{err}");
    let env = [("RPROXY_ADMIN_TOKEN", TOKEN)];
    let (code, _, err) = ctl(&["--admin", &admin, "drain", "apps", &slow_addr], &env);
    assert_eq!(code, 1);
    assert!(err.contains("known: app"), "{err}");

    // A request in flight for 3 s outlasts a 200 ms wait.
    let addr = p.addr();
    let request = tokio::spawn(async move { get(&client(), addr, "/slow").await.status });
    wait_until("the slow request in flight", || async {
        server(&p, slow.addr).await["in_flight"] == 1
    })
    .await;
    let (code, _, err) = ctl(
        &[
            "--admin", &admin, "drain", "app", &slow_addr, "--wait", "200ms",
        ],
        &env,
    );
    assert_eq!(code, 1);
    assert!(err.contains("1 request(s) in flight"), "{err}");
    assert_eq!(
        request.await.expect("join"),
        200,
        "the request in flight finished"
    );

    // Without a token configured, writes are refused, saying how to enable them.
    let open = proxy(None, &format!("\"{}\"", slow.addr));
    let admin = format!("http://{}", open.admin_addr());
    let (code, _, err) = ctl(&["--admin", &admin, "enable", "app", &slow_addr], &env);
    assert_eq!(code, 1);
    assert!(
        err.contains("refused (403)") && err.contains("token"),
        "{err}"
    );
}

#[tokio::test]
async fn usage_errors_and_an_unreachable_admin_listener() {
    let (code, _, err) = ctl(&["drain", "app"], &[]);
    assert_eq!(code, 2, "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("upstream.toml");
    std::fs::write(&file, config_with("\"127.0.0.1:1\"", "")).expect("write");
    let file = file.to_string_lossy().into_owned();
    let (code, _, err) = ctl(&["-c", &file, "status"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("no [admin] section"), "{err}");
    let dead = refused_addr();
    let (code, _, err) = ctl(&["--admin", &format!("http://{dead}"), "status"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach the admin API"), "{err}");
}
