//! `watch = true` and `--watch`, with the real binary: a change to the configuration file is
//! applied without any signal (edited in place, written beside it and renamed over it, removed
//! and put back, its folder removed and made again, or a Kubernetes ConfigMap volume whose
//! `..data` link is swapped), a wrong file changes nothing until it is fixed, and each change
//! makes exactly one reload (counted in `/metrics`).

mod common;

use std::path::Path;

use common::*;

const RELOADED: &str = "rproxy_config_reloads_total{result=\"success\"}";
const REJECTED: &str = "rproxy_config_reloads_total{result=\"failure\"}";

/// A config in front of `backend`, with an admin listener; `top` goes at the top level.
fn config(top: &str, backend: &Backend) -> String {
    with_admin(&format!("{top}\n{}", config_with(&list(&[backend]), "")))
}

/// Waits until a request through the proxy is answered by backend `name`.
async fn wait_served_by(proxy: &Proxy, name: &str) {
    let (c, addr) = (client(), proxy.addr());
    let c = &c;
    wait_until(&format!("{name} to answer"), move || async move {
        let answer = get(c, addr, "/").await;
        assert_eq!(answer.status, 200, "every request is served meanwhile");
        answer.backend() == name
    })
    .await;
}

/// Waits until the reload counters read `ok` successes and `failed` failures.
async fn wait_reloads(proxy: &Proxy, ok: f64, failed: f64) {
    let cell = std::cell::Cell::new((0.0, 0.0));
    let seen = &cell;
    wait_until(
        &format!("{ok} successful and {failed} failed reloads"),
        move || async move {
            let m = proxy.scrape().await;
            let now = (
                metric(&m, RELOADED).unwrap_or(0.0),
                metric(&m, REJECTED).unwrap_or(0.0),
            );
            seen.set(now);
            assert!(
                now.0 <= ok && now.1 <= failed,
                "more reloads than changes: {now:?}"
            );
            now == (ok, failed)
        },
    )
    .await;
}

/// Writes `text` next to `path` and renames it over `path`, as editors and config tools do.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[tokio::test]
async fn edits_apply_without_a_signal_one_reload_each() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let proxy = Proxy::start(&config("watch = true", &a));
    wait_served_by(&proxy, "a").await;
    assert_eq!(proxy.metric(RELOADED).await, 0.0);

    // In place: truncated and written.
    std::fs::write(&proxy.config_path, config("watch = true", &b)).expect("write");
    wait_served_by(&proxy, "b").await;
    wait_reloads(&proxy, 1.0, 0.0).await;

    // Written beside and renamed over.
    replace(&proxy.config_path, &config("watch = true", &c));
    wait_served_by(&proxy, "c").await;
    wait_reloads(&proxy, 2.0, 0.0).await;

    // A SIGHUP for the same content is a reload of its own; the watch adds none for it.
    std::fs::write(&proxy.config_path, config("watch = true", &a)).expect("write");
    wait_served_by(&proxy, "a").await;
    wait_reloads(&proxy, 3.0, 0.0).await;
    assert!(proxy.reload().await);
    wait_reloads(&proxy, 4.0, 0.0).await;
    assert_eq!(proxy.ready().map(|r| r.pid), Some(proxy.pid()));
}

#[tokio::test]
async fn a_wrong_edit_changes_nothing_until_it_is_fixed() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let proxy = Proxy::start(&config("watch = true", &a));
    wait_served_by(&proxy, "a").await;

    std::fs::write(&proxy.config_path, "[listeners.web\nlisten = ").expect("write");
    wait_reloads(&proxy, 0.0, 1.0).await;
    assert_eq!(
        proxy.metric("rproxy_config_last_reload_successful").await,
        0.0
    );
    for _ in 0..5 {
        let answer = get(&client(), proxy.addr(), "/").await;
        assert_eq!((answer.status.as_u16(), answer.backend()), (200, "a"));
    }
    assert_eq!(
        backend_in(&proxy.status().await, "app", a.addr).map(|b| b["state"].clone()),
        Some("up".into()),
        "the old configuration is the one in /status"
    );

    // Valid TOML, wrong configuration: the same.
    let unknown = config("watch = true", &b).replace("upstream = \"app\"", "upstream = \"nope\"");
    std::fs::write(&proxy.config_path, unknown).expect("write");
    wait_reloads(&proxy, 0.0, 2.0).await;
    assert_eq!(get(&client(), proxy.addr(), "/").await.backend(), "a");

    std::fs::write(&proxy.config_path, config("watch = true", &b)).expect("write");
    wait_served_by(&proxy, "b").await;
    wait_reloads(&proxy, 1.0, 2.0).await;
    assert_eq!(
        proxy.metric("rproxy_config_last_reload_successful").await,
        1.0
    );
}

#[tokio::test]
async fn a_removed_file_keeps_serving_and_is_reloaded_when_it_is_back() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let mut proxy = Proxy::start(&config("watch = true", &a));
    wait_served_by(&proxy, "a").await;

    std::fs::remove_file(&proxy.config_path).expect("remove");
    for _ in 0..5 {
        let answer = get(&client(), proxy.addr(), "/").await;
        assert_eq!((answer.status.as_u16(), answer.backend()), (200, "a"));
    }
    assert!(proxy.exited().is_none(), "rproxy still runs");

    // Back with the same content: nothing to reload. Then a change: reloaded.
    replace(&proxy.config_path, &config("watch = true", &a));
    std::fs::remove_file(&proxy.config_path).expect("remove");
    replace(&proxy.config_path, &config("watch = true", &b));
    wait_served_by(&proxy, "b").await;
    wait_reloads(&proxy, 1.0, 0.0).await;
    assert!(proxy.exited().is_none(), "rproxy still runs");
}

/// Kubernetes' update of a ConfigMap volume, as the kubelet does it: the new files in a new
/// folder, a new `..data_tmp` link to it renamed over `..data`, then the old folder removed.
fn configmap_update(dir: &Path, version: &str, text: &str) {
    let data = dir.join(version);
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::write(data.join("upstream.toml"), text).expect("write");
    let old = std::fs::read_link(dir.join("..data")).ok();
    std::os::unix::fs::symlink(version, dir.join("..data_tmp")).expect("symlink");
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("rename");
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).expect("remove the old version");
    }
}

#[tokio::test]
async fn a_configmap_volume_update_is_followed_with_the_watch_flag() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let mount = tmp.path().join("config");
    std::fs::create_dir(&mount).expect("mkdir");
    // No `watch` in the file: `--watch` turns it on.
    configmap_update(&mount, "..2026_12_06_20_00_00.1", &config("", &a));
    std::os::unix::fs::symlink("..data/upstream.toml", mount.join("upstream.toml"))
        .expect("symlink");
    let proxy = Proxy::start_in(tmp, mount.join("upstream.toml"), &["--watch"]);
    wait_served_by(&proxy, "a").await;

    configmap_update(&mount, "..2026_12_06_20_01_00.2", &config("", &b));
    wait_served_by(&proxy, "b").await;
    wait_reloads(&proxy, 1.0, 0.0).await;

    // The second update lands in a folder the first did not have: still followed.
    configmap_update(&mount, "..2026_12_06_20_02_00.3", &config("", &c));
    wait_served_by(&proxy, "c").await;
    wait_reloads(&proxy, 2.0, 0.0).await;
}

#[tokio::test]
async fn a_removed_folder_is_followed_again_once_it_is_back() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let tmp = tempfile::tempdir().expect("tempdir");
    let folder = tmp.path().join("etc");
    std::fs::create_dir(&folder).expect("mkdir");
    let path = folder.join("upstream.toml");
    std::fs::write(&path, config("watch = true", &a)).expect("write");
    let proxy = Proxy::start_in(tmp, path.clone(), &[]);
    wait_served_by(&proxy, "a").await;

    // The folder's watch ends with it; the new folder is found by reading the file again.
    std::fs::remove_dir_all(&folder).expect("remove the folder");
    std::fs::create_dir(&folder).expect("mkdir");
    replace(&path, &config("watch = true", &b));
    wait_served_by(&proxy, "b").await;
    wait_reloads(&proxy, 1.0, 0.0).await;
}

#[tokio::test]
async fn watch_turned_on_by_a_reload_follows_the_next_edit() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let proxy = Proxy::start(&config("", &a));
    assert!(proxy.reload_with(&config("watch = true", &a)).await);

    std::fs::write(&proxy.config_path, config("watch = true", &b)).expect("write");
    wait_served_by(&proxy, "b").await;
    wait_reloads(&proxy, 2.0, 0.0).await;
}

#[test]
fn watch_must_be_a_boolean() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("upstream.toml");
    let text = config_with("\"127.0.0.1:1\"", "");
    for (top, ok) in [("watch = true", true), ("watch = \"yes\"", false)] {
        std::fs::write(&path, format!("{top}\n{text}")).expect("write");
        let out = rproxy_check(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), ok, "{top}: {stderr}");
        if !ok {
            assert!(stderr.contains("upstream.toml:1:9: watch:"), "{stderr}");
        }
    }
}
