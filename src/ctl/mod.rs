//! `rproxy ctl`: the admin API's command-line client, for operators and deploy scripts
//! (`rproxy ctl drain app 127.0.0.1:3001 --wait 30s`, restart the worker, `rproxy ctl enable
//! app 127.0.0.1:3001`).
//!
//! It finds the admin listener and its token in the configuration file (`-c`, as the server
//! reads it), or takes `--admin URL` and `RPROXY_ADMIN_TOKEN`, sends one request and prints
//! one line (or, for `status`, a table). Exit codes: 0 done (for a drain with `--wait`:
//! drained), 1 refused, unreachable or the wait ran out, 2 a usage error.
//!
//! At the side of the request path, like `admin`: imports only `config`.

mod request;
mod table;

use std::path::PathBuf;
use std::time::Duration;

use crate::config;

use request::{Answer, Target};

/// What `rproxy ctl` is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Drain {
        upstream: String,
        addr: String,
        wait: Option<Duration>,
    },
    Disable {
        upstream: String,
        addr: String,
    },
    Enable {
        upstream: String,
        addr: String,
    },
    Weight {
        upstream: String,
        addr: String,
        weight: u32,
    },
    Reset {
        upstream: String,
        addr: String,
    },
    Status,
}

/// Where the admin listener is: from the file, or given.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    /// `--admin URL` (`http://127.0.0.1:9090`), instead of the file's `[admin] listen`.
    pub admin: Option<String>,
    /// `RPROXY_ADMIN_TOKEN`, instead of the file's `[admin] token`.
    pub token: Option<String>,
}

/// How `rproxy ctl` ended: the exit code and the line to print (stdout for 0, stderr else).
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub code: u8,
    pub message: String,
}

impl Outcome {
    fn done(message: String) -> Self {
        Outcome { code: 0, message }
    }

    fn failed(message: String) -> Self {
        Outcome { code: 1, message }
    }

    fn usage(message: String) -> Self {
        Outcome { code: 2, message }
    }
}

/// Runs one `ctl` action against the admin API.
pub async fn run(options: &Options, action: &Action) -> Outcome {
    let target = match target(options) {
        Ok(target) => target,
        Err(outcome) => return outcome,
    };
    let (method, path, body) = match action {
        Action::Status => ("GET", "/api/upstreams".to_string(), None),
        Action::Drain {
            upstream,
            addr,
            wait,
        } => {
            let query = wait.map_or_else(String::new, |w| format!("?wait={}ms", w.as_millis()));
            ("POST", server_path(upstream, addr, "drain", &query), None)
        }
        Action::Disable { upstream, addr } => {
            ("POST", server_path(upstream, addr, "disable", ""), None)
        }
        Action::Enable { upstream, addr } => {
            ("POST", server_path(upstream, addr, "enable", ""), None)
        }
        Action::Reset { upstream, addr } => {
            ("POST", server_path(upstream, addr, "reset", ""), None)
        }
        Action::Weight {
            upstream,
            addr,
            weight,
        } => (
            "PUT",
            server_path(upstream, addr, "weight", ""),
            Some(format!("{{\"weight\":{weight}}}")),
        ),
    };
    // A drain's wait is the server's to enforce; the client allows it that long and more.
    let timeout = match action {
        Action::Drain { wait: Some(w), .. } => *w + Duration::from_secs(10),
        _ => Duration::from_secs(10),
    };
    match request::send(&target, method, &path, body, timeout).await {
        Ok(answer) => outcome(action, &answer),
        Err(e) => Outcome::failed(format!(
            "rproxy ctl: cannot reach the admin API at {}: {e}",
            target.authority
        )),
    }
}

/// The admin address and token: `--admin` and `RPROXY_ADMIN_TOKEN` when given, else the
/// configuration file's `[admin]`.
fn target(options: &Options) -> Result<Target, Outcome> {
    let from_file = || {
        config::load(&options.config).map_err(|errors| {
            let first = errors
                .0
                .first()
                .map_or_else(String::new, ToString::to_string);
            Outcome::usage(format!(
                "rproxy ctl: cannot read {}: {first} (or give --admin URL)",
                options.config.display()
            ))
        })
    };
    match &options.admin {
        Some(url) => Target::from_url(url, options.token.clone()).map_err(Outcome::usage),
        None => {
            let config = from_file()?;
            let Some(admin) = &config.admin else {
                return Err(Outcome::usage(format!(
                    "rproxy ctl: {} has no [admin] section (or give --admin URL)",
                    options.config.display()
                )));
            };
            if admin.listen.port() == 0 {
                return Err(Outcome::usage(format!(
                    "rproxy ctl: {}'s [admin] listen has port 0 (the system chose one at start): give --admin URL",
                    options.config.display()
                )));
            }
            let token = options.token.clone().or_else(|| admin.token.clone());
            Ok(Target::from_listen(admin.listen, token))
        }
    }
}

fn server_path(upstream: &str, addr: &str, action: &str, query: &str) -> String {
    format!(
        "/api/upstreams/{}/servers/{}/{action}{query}",
        request::encode(upstream),
        request::encode(addr)
    )
}

/// The line (or table) for an answer, and the exit code it means.
fn outcome(action: &Action, answer: &Answer) -> Outcome {
    if answer.status == 403 || answer.status == 401 || answer.status == 404 || answer.status == 400
    {
        return Outcome::failed(format!(
            "rproxy ctl: refused ({}): {}",
            answer.status,
            answer.error_text()
        ));
    }
    match action {
        Action::Status if answer.status == 200 => match table::render(&answer.body) {
            Some(text) => Outcome::done(text),
            None => Outcome::failed(
                "rproxy ctl: the admin API's answer is not a list of upstreams".to_string(),
            ),
        },
        Action::Drain {
            upstream,
            addr,
            wait: Some(_),
        } => {
            let json = answer.json();
            let drained = json.as_ref().and_then(|j| j["drained"].as_bool());
            let in_flight = json.as_ref().and_then(|j| j["in_flight"].as_u64());
            match (answer.status, drained) {
                (200, Some(true)) => {
                    Outcome::done(format!("{upstream} {addr}: draining; no request in flight"))
                }
                (_, Some(false)) => Outcome::failed(format!(
                    "{upstream} {addr}: draining, but the wait ran out with {} request(s) in flight",
                    in_flight.unwrap_or(0)
                )),
                _ => unexpected(answer),
            }
        }
        _ if answer.status == 200 => Outcome::done(summary(action, answer)),
        _ => unexpected(answer),
    }
}

fn unexpected(answer: &Answer) -> Outcome {
    Outcome::failed(format!(
        "rproxy ctl: the admin API answered {}: {}",
        answer.status,
        answer.error_text()
    ))
}

/// One line on the server after a change: its state and weight as the API reports them.
fn summary(action: &Action, answer: &Answer) -> String {
    let (upstream, addr) = match action {
        Action::Drain { upstream, addr, .. }
        | Action::Disable { upstream, addr }
        | Action::Enable { upstream, addr }
        | Action::Weight { upstream, addr, .. }
        | Action::Reset { upstream, addr } => (upstream.as_str(), addr.as_str()),
        Action::Status => ("", ""),
    };
    let json = answer.json();
    let state = json
        .as_ref()
        .and_then(|j| j["admin_state"].as_str().map(str::to_string))
        .unwrap_or_else(|| "?".to_string());
    let weight = json
        .as_ref()
        .and_then(|j| j["weight"]["effective"].as_u64())
        .map_or_else(|| "?".to_string(), |w| w.to_string());
    format!("{upstream} {addr}: {state}, weight {weight}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            body: body.as_bytes().to_vec(),
        }
    }

    fn drain(wait: bool) -> Action {
        Action::Drain {
            upstream: "app".into(),
            addr: "127.0.0.1:3001".into(),
            wait: wait.then(|| Duration::from_secs(30)),
        }
    }

    #[test]
    fn exit_codes_follow_the_answer() {
        let drained = answer(200, r#"{"drained":true,"in_flight":0}"#);
        assert_eq!(outcome(&drain(true), &drained).code, 0);
        let ran_out = answer(504, r#"{"drained":false,"in_flight":2}"#);
        let o = outcome(&drain(true), &ran_out);
        assert_eq!(o.code, 1);
        assert!(
            o.message.contains("2 request(s) in flight"),
            "{}",
            o.message
        );
        let refused = answer(403, "writes need a token: set `token` under [admin]\n");
        let o = outcome(&drain(false), &refused);
        assert_eq!(o.code, 1);
        assert!(o.message.contains("token"), "{}", o.message);
        let unknown = answer(404, r#"{"error":"no upstream `apps`","known":["app"]}"#);
        let o = outcome(&drain(false), &unknown);
        assert_eq!(o.code, 1);
        assert!(o.message.contains("no upstream `apps`"), "{}", o.message);
        let changed = answer(
            200,
            r#"{"admin_state":"draining","weight":{"effective":3}}"#,
        );
        assert_eq!(
            outcome(&drain(false), &changed),
            Outcome::done("app 127.0.0.1:3001: draining, weight 3".into())
        );
        assert_eq!(outcome(&drain(false), &answer(500, "boom")).code, 1);
    }

    #[test]
    fn addresses_are_encoded_in_the_path() {
        assert_eq!(
            server_path("app", "[::1]:80", "drain", "?wait=1000ms"),
            "/api/upstreams/app/servers/%5B::1%5D:80/drain?wait=1000ms"
        );
    }
}
