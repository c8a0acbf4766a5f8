//! The access log as an operator uses it: JSON lines in a file, reopened on SIGUSR1 after
//! logrotate moved it, nginx's combined format on stdout by default, `off`, and a full disk.

mod common;

use common::*;

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn json_lines_in_a_file_reopened_on_sigusr1() {
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let proxy = Proxy::start(&format!(
        "[log]\naccess = \"{}\"\nformat = \"json\"\n{}",
        log.display(),
        config_with(&format!("\"{}\"", b.addr), "")
    ));
    let c = client();
    for i in 0..3 {
        assert_eq!(
            get(&c, proxy.addr(), &format!("/before/{i}?x=1"))
                .await
                .status,
            200
        );
    }
    wait_for("three lines in the access log", || lines(&log).len() == 3).await;
    let first: serde_json::Value = serde_json::from_str(&lines(&log)[0]).expect("a JSON line");
    assert_eq!(first["target"], "/before/0?x=1");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["status"], 200);
    assert_eq!(first["backend"], b.addr.to_string());
    assert_eq!(first["complete"], true);
    assert_eq!(first["client"], "127.0.0.1");
    assert_eq!(first["request_id"].as_str().map(str::len), Some(32));
    // The id logged is the one the backend got.
    let third: serde_json::Value = serde_json::from_str(&lines(&log)[2]).expect("a JSON line");
    assert_eq!(
        third["request_id"].as_str().map(str::as_bytes),
        b.last().headers.get("x-request-id").map(|v| v.as_bytes())
    );
    assert!(first["request_time"].as_f64().is_some() && first["upstream_time"].as_f64().is_some());

    // logrotate: move the file away, then ask rproxy to reopen.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    proxy.signal("USR1");
    // Reopening creates the file at its path again.
    wait_for("the access log to be reopened at its path", || log.exists()).await;
    assert_eq!(get(&c, proxy.addr(), "/after").await.status, 200);
    wait_for("the new file to get the new line", || {
        lines(&log).len() == 1
    })
    .await;
    assert!(lines(&log)[0].contains("\"/after\""));
    assert_eq!(
        lines(&rotated).len(),
        3,
        "old lines stay in the rotated file"
    );
}

#[tokio::test]
async fn a_502_names_the_backend_that_failed() {
    // As nginx's `$upstream_addr`: the log of a failed request says which backend failed it,
    // and so does a response rule's `$upstream_addr`.
    let dead = refused_addr();
    let proxy = Proxy::start(&config_with(
        &format!("\"{dead}\""),
        "[upstreams.app.headers]\nresponse_set = { \"X-Up\" = \"$upstream_addr\" }\nresponse_always = true",
    ));
    let ans = get(&client(), proxy.addr(), "/gone").await;
    assert_eq!(ans.status, 502);
    assert_eq!(ans.headers["x-up"], dead.to_string().as_str());
    let line = proxy
        .wait_for_access_line(&["\"GET /gone HTTP/1.1\" 502"])
        .await;
    assert!(line.contains(&format!("backend={dead} ")), "{line}");
}

#[tokio::test]
async fn combined_on_stdout_by_default_and_nothing_when_off() {
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&config_with(&format!("\"{}\"", b.addr), ""));
    let req = hyper::Request::get(format!("http://{}/page?a=b", proxy.addr()))
        .header("user-agent", "test-agent/1.0")
        .header("referer", "http://example.test/")
        .body(http_body_util::Full::<bytes::Bytes>::default())
        .expect("request");
    assert_eq!(send(&client(), req).await.status, 200);
    let line = proxy
        .wait_for_access_line(&[
            "\"GET /page?a=b HTTP/1.1\" 200 1 \"http://example.test/\" \"test-agent/1.0\"",
        ])
        .await;
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(line.contains(&format!("backend={}", b.addr)), "{line}");

    let mut quiet = Proxy::start(&format!(
        "[log]\naccess = \"off\"\n{}",
        config_with(&format!("\"{}\"", b.addr), "")
    ));
    assert_eq!(get(&client(), quiet.addr(), "/silent").await.status, 200);
    // Stop it: whatever it would log is written before it exits, and then read to the end.
    quiet.signal("TERM");
    assert_eq!(quiet.wait_exit().await.code(), Some(0));
    quiet.stdout_done().await;
    assert!(
        !quiet.stdout_lines().iter().any(|l| l.contains("/silent")),
        "{:?}",
        quiet.stdout_lines()
    );
}

#[tokio::test]
async fn a_full_disk_is_reported_once_and_requests_go_on() {
    // Every write to /dev/full fails with ENOSPC.
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&with_admin(&format!(
        "[log]\naccess = \"/dev/full\"\n\
         [listeners.web]\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\n\
         [upstreams.app]\nservers = [\"{}\"]\n",
        b.addr
    )));
    let c = client();
    let lost = "rproxy_access_log_lines_lost_total";
    let before = proxy.stderr_line_count();
    // Requests across several of the writer's 100 ms rounds, each of which fails: every line
    // is counted as lost, and the failure is reported (a line on stderr).
    let mut sent = 0.0;
    // Two rounds of requests for 350 ms each, every line counted as lost once it is written.
    let mut rounds = async || {
        for _ in 0..2 {
            let start = std::time::Instant::now();
            while start.elapsed() < std::time::Duration::from_millis(350) {
                assert_eq!(get(&c, proxy.addr(), "/").await.status, 200);
                sent += 1.0;
            }
            proxy.wait_for_metric(lost, |n| n == sent).await;
        }
    };
    rounds().await;
    wait_for("the failure to be reported", || {
        proxy.stderr_line_count() > before
    })
    .await;
    let reported = proxy.stderr_line_count();
    // More rounds fail: not reported again (the log does not grow with the requests).
    rounds().await;
    assert_eq!(
        proxy.stderr_line_count(),
        reported,
        "reported once: {:#?}",
        proxy.logs()
    );
}
