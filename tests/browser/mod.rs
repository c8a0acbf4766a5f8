//! Headless Chromium for the status page's tests: found on the PATH (required when `CI` is
//! set, as `.ci/run` installs it), and driven through the DevTools protocol over a WebSocket
//! (tokio-tungstenite): navigate, evaluate JavaScript, poll the page with a deadline. The
//! browser is ours alone (its own profile directory, `--remote-debugging-port=0`) and is
//! killed by its pid when the `Browser` is dropped, also when a test fails.
#![allow(unreachable_pub)] // A module of a test crate: `pub` is for the test file that uses it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const DEADLINE: Duration = Duration::from_secs(20);

/// The Chromium binary on the PATH; `None` (the caller skips, saying so) when there is none,
/// except under CI, where a missing browser fails the test.
pub fn chromium() -> Option<String> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            let out = Command::new("sh")
                .args(["-c", &format!("command -v {name}")])
                .output()
                .ok()?;
            let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (!path.is_empty()).then_some(path)
        });
    if found.is_none() && std::env::var_os("CI").is_some_and(|v| v == "true") {
        panic!(
            "chromium is not installed, and CI=true requires it (.ci/run installs it: apt-get install chromium)"
        );
    }
    found
}

/// The flags every run uses: no sandbox (tests run as root in CI), nothing fetched from the
/// network on its own, a fixed window size.
pub const FLAGS: [&str; 9] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
];

/// One headless Chromium with one page, attached through the DevTools protocol.
pub struct Browser {
    /// Held for its `Drop`, which ends the browser.
    _process: Process,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The DevTools session of our page (flat mode: its commands go over the browser's socket).
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts `binary` and opens a blank page in it.
    pub async fn start(binary: &str) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new(binary)
            .args(FLAGS)
            .arg("--remote-debugging-port=0")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chromium");
        let stderr = child.stderr.take().expect("stderr");
        let (found, endpoint) = tokio::sync::oneshot::channel();
        // Reads stderr to its end, so that chromium never blocks on a full pipe; the first
        // `DevTools listening on ws://...` line says where to connect.
        std::thread::spawn(move || {
            let mut found = Some(found);
            let mut seen = Vec::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("DevTools listening on ")
                    && let Some(found) = found.take()
                {
                    let _ = found.send(Ok(url.trim().to_string()));
                } else if found.is_some() {
                    seen.push(line);
                }
            }
            if let Some(found) = found {
                let _ = found.send(Err(seen.join("\n")));
            }
        });
        // From here on, a failure drops the guard, which ends the browser.
        let process = Process(child);
        let url = match tokio::time::timeout(DEADLINE, endpoint).await {
            Ok(Ok(Ok(url))) => url,
            Ok(Ok(Err(stderr))) => panic!("chromium exited without a DevTools endpoint:\n{stderr}"),
            Ok(Err(_)) => panic!("chromium's stderr reader ended"),
            Err(_) => panic!("no DevTools endpoint from chromium within {DEADLINE:?}"),
        };
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("connect to DevTools");
        let mut browser = Browser {
            _process: process,
            ws,
            session: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = browser
            .call("Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        browser.session = attached["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        browser.call("Page.enable", json!({})).await;
        browser
    }

    /// Sends one command (to our page once attached) and returns its result.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        self.ws
            .send(Message::text(message.to_string()))
            .await
            .expect("send to DevTools");
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} within {DEADLINE:?}"))
                .unwrap_or_else(|| panic!("DevTools closed during {method}"))
                .expect("read from DevTools");
            let Message::Text(text) = frame else { continue };
            let answer: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if answer["id"] != id {
                continue; // An event, or the answer to something else.
            }
            if !answer["error"].is_null() {
                panic!("{method} failed: {}", answer["error"]);
            }
            return answer["result"].clone();
        }
    }

    /// Opens `url` and waits until its document has loaded.
    pub async fn navigate(&mut self, url: &str) {
        let done = self.call("Page.navigate", json!({ "url": url })).await;
        assert!(done["errorText"].is_null(), "navigate to {url}: {done}");
        self.wait_for(
            &format!("{url} to load"),
            "location.href !== 'about:blank' && document.readyState === 'complete'",
        )
        .await;
    }

    /// The value of `expression` in the page (a promise is awaited).
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if !result["exceptionDetails"].is_null() {
            panic!("{expression}: {}", result["exceptionDetails"]);
        }
        result["result"]["value"].clone()
    }

    /// Polls `expression` until it is truthy (not false, null, 0 or ""), and returns it.
    pub async fn wait_for(&mut self, what: &str, expression: &str) -> Value {
        let start = Instant::now();
        loop {
            let value = self.eval(expression).await;
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what} ({expression} is {value})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The browser process, ended by its pid when dropped (a test that passed, failed or
/// panicked half-way through starting it): SIGTERM first, so that Chromium takes its own
/// helper processes down with it, then SIGKILL if it has not exited within the deadline.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let child = &mut self.0;
        if let Ok(None) = child.try_wait() {
            let pid = i32::try_from(child.id())
                .ok()
                .and_then(rustix::process::Pid::from_raw);
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            let start = Instant::now();
            while start.elapsed() < DEADLINE && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
