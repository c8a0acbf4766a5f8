//! The access log: one line per request, written when the response has been sent (or the
//! client went away), so it carries the bytes really sent and the total time.
//!
//! Where it goes and how it looks is `[log]` in the configuration: stdout (the default, as in
//! nginx's container images), stderr, a file, or off; nginx's `combined` format followed by
//! rproxy's own fields, or JSON. Request threads only format a line and append it to a
//! shared buffer (`writer`): one writer thread writes it out every 100 ms and reopens the file
//! on SIGUSR1 (for logrotate), so no request waits on the disk.
//!
//! At the side: imports only `config` and `header_text`; the listener writes a record for each
//! request it answers.

use std::io::{self, Write};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Version, header};
use serde::Serialize;
use tokio::time::Instant;

use crate::config::{AccessFormat, AccessTarget, LogConfig};
use crate::header_text::ip_text;

mod writer;

use writer::Writer;

struct Sink {
    writer: Writer,
    format: AccessFormat,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Starts the access log as configured. Without this call (a library user, the demo) no
/// access lines are built at all.
pub fn init(config: &LogConfig) -> io::Result<()> {
    if config.access == AccessTarget::Off {
        return Ok(());
    }
    let writer = Writer::start(open(&config.access)?, config.access.clone())?;
    let _ = SINK.set(Sink {
        writer,
        format: config.format,
    });
    Ok(())
}

/// Reopens the access log file (SIGUSR1).
pub fn reopen() {
    if let Some(sink) = SINK.get() {
        sink.writer.reopen();
    }
}

/// Writes out every line so far (at exit).
pub fn flush() {
    if let Some(sink) = SINK.get() {
        sink.writer.flush();
    }
}

fn open(target: &AccessTarget) -> io::Result<Box<dyn Write + Send>> {
    Ok(match target {
        AccessTarget::Stdout | AccessTarget::Off => Box::new(io::stdout()),
        AccessTarget::Stderr => Box::new(io::stderr()),
        AccessTarget::File(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
    })
}

#[derive(Debug)]
pub struct AccessRecord {
    pub listener: Arc<str>,
    pub client: IpAddr,
    /// `None` for a request head refused before it was read whole (400, 414, 431): the line
    /// then shows the request as `-`, as nginx's does for a request line it could not parse.
    pub method: Option<Method>,
    /// Path and query, as requested.
    pub target: String,
    pub version: Version,
    pub referer: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    pub status: u16,
    /// The backend's address (`10.0.0.1:80`, `unix:/run/app.sock`), as text made once per
    /// backend.
    pub backend: Option<Arc<str>>,
    pub upstream_time: Option<Duration>,
    pub started: Instant,
    /// The `X-Request-Id` sent to the backend.
    pub request_id: Option<HeaderValue>,
}

impl AccessRecord {
    /// Starts a record for a request, or `None` when the access log is off (then nothing is
    /// allocated for it).
    pub fn start(
        listener: &Arc<str>,
        client: IpAddr,
        parts: &http::request::Parts,
    ) -> Option<Box<Self>> {
        SINK.get()?;
        // Boxed: the record rides in every response body, which is moved several times on
        // its way to hyper; a pointer moves for less than the record's 270 bytes.
        Some(Box::new(AccessRecord {
            listener: Arc::clone(listener),
            client,
            method: Some(parts.method.clone()),
            target: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string()),
            version: parts.version,
            referer: parts.headers.get(header::REFERER).cloned(),
            user_agent: parts.headers.get(header::USER_AGENT).cloned(),
            status: 0,
            backend: None,
            upstream_time: None,
            started: Instant::now(),
            request_id: None,
        }))
    }

    /// A record for a request head answered `status` before it was read whole (hyper's 400
    /// and 431, rproxy's early 414), or `None` when the access log is off.
    pub fn refused(listener: &Arc<str>, client: IpAddr, status: u16) -> Option<Box<Self>> {
        SINK.get()?;
        Some(Box::new(AccessRecord {
            listener: Arc::clone(listener),
            client,
            method: None,
            target: String::new(),
            version: Version::HTTP_11,
            referer: None,
            user_agent: None,
            status,
            backend: None,
            upstream_time: None,
            started: Instant::now(),
            request_id: None,
        }))
    }

    pub fn emit(self, bytes: u64, complete: bool) {
        let Some(sink) = SINK.get() else {
            return;
        };
        let line = match sink.format {
            AccessFormat::Combined => self.combined(bytes, complete),
            AccessFormat::Json => self.json(bytes, complete),
        };
        sink.writer.push(&line);
    }

    /// nginx's `combined` (`client - - [time] "request" status bytes "referer" "agent"`), then
    /// rproxy's own fields as `key=value`. Written piece by piece into one string, without
    /// `core::fmt`: formatting the two addresses and the numbers through it took about 4,000
    /// instructions a line, a tenth of what proxying the request costs.
    fn combined(&self, bytes: u64, complete: bool) -> String {
        // Quotes inside a quoted field are escaped (as nginx does), or %-encoded in the target.
        fn quoted(out: &mut String, v: Option<&HeaderValue>) {
            match v.and_then(|v| v.to_str().ok()) {
                Some(text) => push_escaped(out, text, "\\\""),
                None => out.push('-'),
            }
        }
        fn push_escaped(out: &mut String, text: &str, quote: &str) {
            for (i, part) in text.split('"').enumerate() {
                if i > 0 {
                    out.push_str(quote);
                }
                out.push_str(part);
            }
        }
        let mut numbers = itoa::Buffer::new();
        let mut out = String::with_capacity(256 + self.target.len());
        out.push_str(ip_text(self.client).to_str().unwrap_or("-"));
        out.push_str(" - - [");
        CLF_TIME.with_borrow_mut(|cached| out.push_str(cached.now()));
        out.push_str("] \"");
        match &self.method {
            Some(method) => {
                out.push_str(method.as_str());
                out.push(' ');
                push_escaped(&mut out, &self.target, "%22");
                out.push(' ');
                out.push_str(version_text(self.version));
            }
            None => out.push('-'),
        }
        out.push_str("\" ");
        out.push_str(numbers.format(self.status));
        out.push(' ');
        out.push_str(numbers.format(bytes));
        out.push_str(" \"");
        quoted(&mut out, self.referer.as_ref());
        out.push_str("\" \"");
        quoted(&mut out, self.user_agent.as_ref());
        out.push_str("\" listener=");
        out.push_str(&self.listener);
        out.push_str(" backend=");
        out.push_str(self.backend.as_deref().unwrap_or("-"));
        out.push_str(" upstream_time=");
        match self.upstream_time {
            Some(d) => push_seconds(&mut out, d),
            None => out.push('-'),
        }
        out.push_str(" request_time=");
        push_seconds(&mut out, self.started.elapsed());
        out.push_str(if complete {
            " complete=true"
        } else {
            " complete=false"
        });
        out.push_str(" request_id=");
        let request_id = self.request_id.as_ref().and_then(|v| v.to_str().ok());
        out.push_str(request_id.unwrap_or("-"));
        out.push('\n');
        out
    }

    fn json(&self, bytes: u64, complete: bool) -> String {
        #[derive(Serialize)]
        struct Line<'a> {
            time: String,
            listener: &'a str,
            client: &'a str,
            method: Option<&'a str>,
            target: Option<&'a str>,
            protocol: Option<&'static str>,
            status: u16,
            bytes: u64,
            referer: Option<&'a str>,
            user_agent: Option<&'a str>,
            backend: Option<&'a str>,
            upstream_time: Option<f64>,
            request_time: f64,
            complete: bool,
            request_id: Option<&'a str>,
        }
        let client = ip_text(self.client);
        let line = Line {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            listener: &self.listener,
            client: client.to_str().unwrap_or("-"),
            method: self.method.as_ref().map(Method::as_str),
            target: self.method.as_ref().map(|_| self.target.as_str()),
            protocol: self.method.as_ref().map(|_| version_text(self.version)),
            status: self.status,
            bytes,
            referer: self.referer.as_ref().and_then(|v| v.to_str().ok()),
            user_agent: self.user_agent.as_ref().and_then(|v| v.to_str().ok()),
            backend: self.backend.as_deref(),
            upstream_time: self.upstream_time.map(|d| d.as_secs_f64()),
            request_time: self.started.elapsed().as_secs_f64(),
            complete,
            request_id: self.request_id.as_ref().and_then(|v| v.to_str().ok()),
        };
        // Serializing plain strings and numbers cannot fail.
        let mut text = serde_json::to_string(&line).unwrap_or_default();
        text.push('\n');
        text
    }
}

thread_local! {
    /// The CLF time, formatted once per second per thread: at thousands of lines a second
    /// the formatting showed in profiles.
    static CLF_TIME: std::cell::RefCell<CachedClfTime> = const {
        std::cell::RefCell::new(CachedClfTime { second: u64::MAX, text: String::new() })
    };
}

struct CachedClfTime {
    second: u64,
    text: String,
}

impl CachedClfTime {
    fn now(&mut self) -> &str {
        let now = SystemTime::now();
        let second = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.second != second {
            self.second = second;
            self.text = clf_time(now);
        }
        &self.text
    }
}

/// `21/Nov/2026:15:40:01 +0000`, the Common Log Format time, in UTC.
fn clf_time(now: SystemTime) -> String {
    // "2026-11-21T15:40:01Z"
    let iso = humantime::format_rfc3339_seconds(now).to_string();
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = iso
        .get(5..7)
        .and_then(|m| m.parse::<usize>().ok())
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)))
        .unwrap_or(&"Jan");
    match (iso.get(0..4), iso.get(8..10), iso.get(11..19)) {
        (Some(y), Some(d), Some(t)) => format!("{d}/{month}/{y}:{t} +0000"),
        _ => iso,
    }
}

/// `d` in seconds with three decimals, rounded to the millisecond, as nginx writes
/// `$request_time`. Integer arithmetic: formatting an `f64` showed in profiles.
fn push_seconds(out: &mut String, d: Duration) {
    let ms = u64::try_from((d.as_micros() + 500) / 1000).unwrap_or(u64::MAX);
    out.push_str(itoa::Buffer::new().format(ms / 1000));
    out.push('.');
    let frac = ms % 1000;
    for digit in [frac / 100, frac / 10 % 10, frac % 10] {
        out.push(char::from(b'0' + digit as u8));
    }
}

/// How `{:?}` prints a version, without the formatting machinery.
fn version_text(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_with_three_decimals() {
        let text = |micros| {
            let mut out = String::new();
            push_seconds(&mut out, Duration::from_micros(micros));
            out
        };
        assert_eq!(text(0), "0.000");
        assert_eq!(text(2_000), "0.002");
        assert_eq!(text(1_234_567), "1.235");
        assert_eq!(text(999_600), "1.000");
        assert_eq!(text(61_000_499), "61.000");
    }

    #[test]
    fn common_log_format_time() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_276_801);
        assert_eq!(clf_time(t), "21/Nov/2026:16:00:01 +0000");
    }

    #[test]
    fn lines_in_both_formats() {
        let (parts, ()) = http::Request::get("/p?q=1")
            .header("user-agent", "curl/8 \"x\"")
            .body(())
            .expect("request")
            .into_parts();
        let record = || AccessRecord {
            listener: Arc::from("web"),
            client: "192.0.2.1".parse().expect("ip"),
            method: Some(parts.method.clone()),
            target: "/p?q=1".into(),
            version: Version::HTTP_11,
            referer: None,
            user_agent: parts.headers.get(header::USER_AGENT).cloned(),
            status: 200,
            backend: Some(Arc::from("127.0.0.1:3001")),
            upstream_time: Some(Duration::from_millis(2)),
            started: Instant::now(),
            request_id: Some(HeaderValue::from_static("abc")),
        };
        let combined = record().combined(12, true);
        assert!(combined.starts_with("192.0.2.1 - - ["), "{combined}");
        assert!(combined.contains("] \"GET /p?q=1 HTTP/1.1\" 200 12 \"-\" \"curl/8 \\\"x\\\"\" listener=web backend=127.0.0.1:3001 upstream_time=0.002 "), "{combined}");
        assert!(
            combined.ends_with("complete=true request_id=abc\n"),
            "{combined}"
        );
        let mut quoted = record();
        quoted.target = "/a\"b".into();
        quoted.backend = None;
        quoted.upstream_time = None;
        let line = quoted.combined(0, false);
        assert!(line.contains("\"GET /a%22b HTTP/1.1\" 200 0 "), "{line}");
        assert!(line.contains(" backend=- upstream_time=- "), "{line}");
        // A head refused before it was read: the request is `-`, in JSON null.
        let mut refused = quoted;
        refused.method = None;
        refused.status = 414;
        let line = refused.combined(17, true);
        assert!(line.contains("] \"-\" 414 17 \"-\" "), "{line}");
        let json: serde_json::Value = serde_json::from_str(&refused.json(17, true)).expect("json");
        assert_eq!(
            (&json["method"], &json["target"], &json["protocol"]),
            (
                &serde_json::Value::Null,
                &serde_json::Value::Null,
                &serde_json::Value::Null
            )
        );
        let json: serde_json::Value = serde_json::from_str(&record().json(12, true)).expect("json");
        assert_eq!(json["target"], "/p?q=1");
        assert_eq!(json["status"], 200);
        assert_eq!(json["user_agent"], "curl/8 \"x\"");
        assert_eq!(json["request_id"], "abc");
        assert_eq!(json["backend"], "127.0.0.1:3001");
        assert_eq!(json["protocol"], "HTTP/1.1");
        for v in [
            Version::HTTP_09,
            Version::HTTP_10,
            Version::HTTP_11,
            Version::HTTP_2,
            Version::HTTP_3,
        ] {
            assert_eq!(version_text(v), format!("{v:?}"));
        }
    }
}
