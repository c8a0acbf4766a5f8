//! The command line: `-t` on good and bad files, the default config path, help, version,
//! usage errors and a `--ready-file` that cannot be written, as a user runs them.

mod common;

use std::process::{Command, Output};

use common::rproxy_bin;

fn run(args: &[&str], dir: Option<&std::path::Path>) -> Output {
    let mut cmd = Command::new(rproxy_bin());
    cmd.args(args);
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    cmd.output().expect("run rproxy")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).expect("write");
    p.to_string_lossy().into_owned()
}

#[test]
fn test_flag_accepts_every_shipped_config_without_binding() {
    // The listen address is taken by someone else: `-t` must not try to bind it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dir = tempfile::tempdir().expect("tempdir");
    let shipped = ["config/upstream.toml", "config/minimal.toml"];
    for path in shipped {
        let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
        let o = run(&["-t", "-c", &full], None);
        assert!(o.status.success(), "{path}: {}", stderr(&o));
        assert!(String::from_utf8_lossy(&o.stdout).starts_with("ok"));
    }
    let text = format!(
        "[listeners.web]\nlisten = \"{}\"\nupstream = \"app\"\n[upstreams.app]\nservers = [\"localhost:3000\"]\n",
        taken.local_addr().expect("addr")
    );
    let path = write(&dir, "taken.toml", &text);
    let o = run(&["--test", "--config", &path], None);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn test_flag_lists_every_error_with_file_line_column_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        &dir,
        "bad.toml",
        r#"[listeners.web]
listen = "127.0.0.1:8080"
upstream = "ap"
keepalive_timout = "5s"

[upstreams.app]
servers = [
  "127.0.0.1:3001",
  { addr = "127.0.0.1:3002", wieght = 2 },
  { addr = "127.0.0.1:3003", weight = 0 },
  "127.0.0.1:3001",
]
connect_timeout = 5
"#,
    );
    let o = run(&["-t", "-c", &path], None);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    let expected = [
        format!(
            "{path}:3:12: listeners.web.upstream: no upstream named `ap` is defined; did you mean `app`?"
        ),
        format!(
            "{path}:4:1: listeners.web.keepalive_timout: unknown key `keepalive_timout`; did you mean `keepalive_timeout`?"
        ),
        format!(
            "{path}:9:30: upstreams.app.servers[1].wieght: unknown key `wieght`; did you mean `weight`?"
        ),
        format!(
            "{path}:10:39: upstreams.app.servers[2].weight: must be between 1 and 1000000, got 0"
        ),
        format!(
            "{path}:11:3: upstreams.app.servers[3]: `127.0.0.1:3001` is already listed at upstreams.app.servers[0]"
        ),
        format!("{path}:13:19: upstreams.app.connect_timeout: durations are strings with a unit"),
    ];
    for e in &expected {
        assert!(err.contains(e.as_str()), "missing {e:?} in:\n{err}");
    }
    assert!(err.contains("has 6 errors"), "{err}");
}

#[test]
fn structural_errors_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("empty.toml", "", "no listeners"),
        (
            "nopool.toml",
            "[listeners.a]\nlisten = \"127.0.0.1:1\"\nupstream = \"u\"\n[upstreams.u]\nservers = []\n",
            "upstreams.u.servers: an upstream needs at least one server",
        ),
        ("syntax.toml", "[listeners.a\nlisten = 1", ":1:"),
        (
            "dup.toml",
            "[listeners.a]\nlisten = \"127.0.0.1:9\"\nupstream = \"u\"\n[listeners.b]\nlisten = \"127.0.0.1:9\"\nupstream = \"u\"\n[upstreams.u]\nservers = [\"127.0.0.1:1\"]\n",
            "also used by listener `a`",
        ),
        ("bin.toml", "\u{0}\u{1}\u{2}", "TOML syntax"),
        (
            // Once accepted, and panicked on overflow when a request waited this long.
            "forever.toml",
            "[listeners.a]\nlisten = \"127.0.0.1:9\"\nupstream = \"u\"\n[upstreams.u]\nservers = [\"127.0.0.1:1\"]\nresponse_timeout = \"500000000000y\"\n",
            "upstreams.u.response_timeout: `500000000000y` is too long: at most \"3650d\"",
        ),
        (
            // Connections keep these in 32-bit milliseconds; once silently cut to 49 days.
            "keepalive.toml",
            "[listeners.a]\nlisten = \"127.0.0.1:9\"\nupstream = \"u\"\nkeepalive_timeout = \"50d\"\n[upstreams.u]\nservers = [\"127.0.0.1:1\"]\n",
            "listeners.a.keepalive_timeout: `50d` is too long: at most \"49d\"",
        ),
    ];
    for (name, text, needle) in cases {
        let path = write(&dir, name, text);
        let o = run(&["-t", "-c", &path], None);
        assert_eq!(o.status.code(), Some(1), "{name}");
        let err = stderr(&o);
        assert!(err.contains(needle), "{name}: {err}");
        assert!(err.contains(&path), "{name} names the file: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
    let o = run(&["-t", "-c", "/nonexistent/rproxy.toml"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/nonexistent/rproxy.toml: cannot read the file"));
}

#[test]
fn unresolvable_server_name_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        &dir,
        "dns.toml",
        "[listeners.a]\nlisten = \"127.0.0.1:0\"\nupstream = \"u\"\n[upstreams.u]\nservers = [\"no-such-host.invalid:80\"]\n",
    );
    let o = run(&["-t", "-c", &path], None);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "{path}:5:12: upstreams.u.servers[0]: cannot resolve `no-such-host.invalid`"
        )),
        "{err}"
    );
}

#[test]
fn without_c_it_reads_upstream_toml_in_the_working_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = run(&["-t"], Some(dir.path()));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("upstream.toml: cannot read the file"));
    write(
        &dir,
        "upstream.toml",
        "[listeners.a]\nlisten = \"127.0.0.1:0\"\nupstream = \"u\"\n[upstreams.u]\nservers = [\"127.0.0.1:1\"]\n",
    );
    let o = run(&["-t"], Some(dir.path()));
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn help_version_and_usage_errors() {
    let o = run(&["--help"], None);
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(
        help.contains("--config <FILE>") && help.contains("--test"),
        "{help}"
    );
    let o = run(&["--version"], None);
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("rproxy {}", env!("CARGO_PKG_VERSION"))
    );
    let o = run(&["--no-such-flag"], None);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&["-c"], None);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn a_ready_file_that_cannot_be_written_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write(
        &dir,
        "u.toml",
        "pid_file = \"rproxy.pid\"\n[listeners.a]\nlisten = \"127.0.0.1:0\"\nupstream = \"u\"\n[upstreams.u]\nservers = [\"127.0.0.1:1\"]\n",
    );
    let ready = dir.path().join("no-such-folder").join("ready.json");
    let ready = ready.to_string_lossy();
    let o = run(&["-c", &config, "--ready-file", &ready], None);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("ready file") && err.contains(&*ready), "{err}");
    assert!(
        !dir.path().join("rproxy.pid").exists(),
        "a failed start leaves no pid file behind"
    );
    let o = run(&["--help"], None);
    assert!(String::from_utf8_lossy(&o.stdout).contains("--ready-file <FILE>"));
}
