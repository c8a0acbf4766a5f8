//! `[limits.NAME]`: request rate and concurrency limits per client key (nginx's `limit_req_zone`
//! with `limit_req`, and `limit_conn_zone` with `limit_conn`, in one named table), and the
//! `limits = ["NAME", ...]` lists of listeners and routes that apply them.
//!
//! Not to be confused with `limits_section.rs`, which reads an upstream's `max_conns` (how many
//! requests one backend takes at once). What these limits do at run time is in `limit/`.

use std::num::NonZeroU32;

use toml::de::DeValue;

use super::key_template::KeyTemplate;
use super::listener_section::ListenerDraft;
use super::reader::{Reader, Table, Value, did_you_mean, flag, get, join};

const KEYS: &[&str] = &[
    "rate", "burst", "nodelay", "key", "status", "conns", "max_keys",
];

/// Keys remembered per limit when none is given.
pub const DEFAULT_MAX_KEYS: u32 = 100_000;
/// nginx's `limit_req_status` and `limit_conn_status` default.
pub const DEFAULT_STATUS: u16 = 503;
/// Requests per second or per minute at most: beyond, the arithmetic in thousandths of a
/// request (nginx's) would not fit the integers it is done in.
const MAX_RATE: u64 = 1_000_000;
const MAX_BURST: u64 = 1_000_000;
/// Ten million keys is some 800 MB (see `limit::table`): far beyond a sensible limit.
const MAX_KEYS: u64 = 10_000_000;

/// One `[limits.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub name: String,
    /// Requests per key are delayed or refused beyond this rate; `None`: only `conns`.
    pub rate: Option<Rate>,
    /// Requests beyond the rate that are still let through (delayed, or at once with
    /// `nodelay`); more are refused.
    pub burst: u32,
    /// Pass the requests within `burst` at once instead of spacing them to the rate.
    pub nodelay: bool,
    /// What a client is: `$remote_addr` by default. A request whose key is empty is not limited.
    pub key: KeyTemplate,
    /// The answer to a refused request (nginx: 503).
    pub status: u16,
    /// Requests of one key in progress at once at most (nginx's `limit_conn`).
    pub conns: Option<NonZeroU32>,
    /// Keys remembered at most; the least recently seen is forgotten for a new one.
    pub max_keys: NonZeroU32,
}

/// `"10r/s"` or `"30r/m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub requests: u32,
    pub per_minute: bool,
}

impl Rate {
    /// The rate in thousandths of a request per second, computed as nginx does
    /// (`rate * 1000 / scale`, in integers: `1r/m` is 16).
    pub fn milli_per_second(self) -> u64 {
        u64::from(self.requests) * 1000 / if self.per_minute { 60 } else { 1 }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = if self.per_minute { 'm' } else { 's' };
        write!(f, "{}r/{unit}", self.requests)
    }
}

/// Reads one `[limits.NAME]` table.
pub(super) fn rate_limit(
    r: &mut Reader<'_>,
    path: &str,
    t: &Table<'_>,
    whole: &Value<'_>,
) -> Option<RateLimitConfig> {
    r.check_keys(t, path, KEYS);
    let rate = match get(t, "rate") {
        Some(v) => rate(r, &join(path, "rate"), v).map(Some),
        None => Some(None),
    };
    let number = |r: &mut Reader<'_>, key: &str, min: u64, max: u64| {
        get(t, key).map(|v| {
            r.integer(v, &join(path, key), min, max)
                .and_then(|n| u32::try_from(n).ok())
        })
    };
    let burst = number(r, "burst", 0, MAX_BURST);
    let conns = number(r, "conns", 1, 1_000_000);
    let max_keys = number(r, "max_keys", 1, MAX_KEYS);
    let status = number(r, "status", 400, 599);
    let nodelay = flag(r, t, path, "nodelay");
    let key = match get(t, "key") {
        Some(v) => {
            let key_path = join(path, "key");
            let parsed = r.string(v, &key_path).map(|text| {
                if text.is_empty() {
                    Err("an empty key would limit no request; a fixed text (\"all\") limits everyone as one client".to_string())
                } else {
                    KeyTemplate::parse(text)
                }
            });
            match parsed? {
                Ok(k) => Some(k),
                Err(e) => {
                    r.error(&key_path, v.span(), e);
                    None
                }
            }
        }
        None => KeyTemplate::parse("$remote_addr").ok(),
    };
    if let Some(None) = rate {
        if get(t, "conns").is_none() {
            r.error(
                path,
                whole.span(),
                "a limit needs `rate` (such as \"10r/s\"), `conns`, or both",
            );
        }
        for k in ["burst", "nodelay"] {
            if let Some(v) = get(t, k) {
                r.error(
                    &join(path, k),
                    v.span(),
                    "applies to a request rate: set `rate` too",
                );
            }
        }
    }
    Some(RateLimitConfig {
        name: path.trim_start_matches("limits.").to_string(),
        rate: rate?,
        burst: burst.unwrap_or(Some(0))?,
        nodelay: nodelay?,
        key: key?,
        status: status
            .unwrap_or(Some(u32::from(DEFAULT_STATUS)))
            .and_then(|s| u16::try_from(s).ok())?,
        conns: conns.map_or(Some(None), |c| c.and_then(NonZeroU32::new).map(Some))?,
        max_keys: NonZeroU32::new(max_keys.unwrap_or(Some(DEFAULT_MAX_KEYS))?)?,
    })
}

fn rate(r: &mut Reader<'_>, key: &str, v: &Value<'_>) -> Option<Rate> {
    let text = r.string(v, key)?;
    let parsed = text
        .strip_suffix("r/s")
        .map(|n| (n, false))
        .or_else(|| text.strip_suffix("r/m").map(|n| (n, true)))
        .and_then(|(n, per_minute)| {
            let n: u64 = n
                .parse()
                .ok()
                .filter(|_| n.bytes().all(|b| b.is_ascii_digit()))?;
            Some((n, per_minute))
        });
    match parsed {
        Some((n, per_minute)) if (1..=MAX_RATE).contains(&n) => Some(Rate {
            requests: u32::try_from(n).ok()?,
            per_minute,
        }),
        Some(_) => {
            r.error(
                key,
                v.span(),
                format!("`{text}`: the number of requests must be between 1 and {MAX_RATE}"),
            );
            None
        }
        None => {
            r.error(
                key,
                v.span(),
                format!("`{text}` is not a rate; write requests per second or per minute, such as \"10r/s\" or \"30r/m\""),
            );
            None
        }
    }
}

/// Reads the `limits = [...]` lists of every HTTP listener and of its routes (after the
/// listeners themselves), checking that each name is a `[limits.NAME]`.
pub(super) fn attach_rate_limits(
    r: &mut Reader<'_>,
    root: &Table<'_>,
    listeners: &mut std::collections::BTreeMap<String, ListenerDraft>,
    limit_names: &[String],
) {
    let Some(DeValue::Table(all)) = get(root, "listeners").map(|v| v.get_ref()) else {
        return;
    };
    for (name, draft) in listeners.iter_mut() {
        if draft.config.tcp.is_some() {
            continue; // `limits` is an HTTP-only key: already reported
        }
        let Some(DeValue::Table(t)) = get(all, name).map(|v| v.get_ref()) else {
            continue;
        };
        let path = format!("listeners.{name}");
        if let Some(v) = get(t, "limits")
            && let Some(names) = names(r, &join(&path, "limits"), v, limit_names)
        {
            draft.config.rate_limits = names;
        }
        let Some(DeValue::Array(routes)) = get(t, "routes").map(|v| v.get_ref()) else {
            continue;
        };
        for (i, (item, route)) in routes.iter().zip(&mut draft.config.routes).enumerate() {
            if let DeValue::Table(rt) = item.get_ref()
                && let Some(v) = get(rt, "limits")
            {
                let key = format!("{path}.routes[{i}].limits");
                route.rate_limits = names(r, &key, v, limit_names);
            }
        }
    }
}

/// `limits = ["api", "login"]`: names of `[limits.NAME]` tables, each once.
fn names(
    r: &mut Reader<'_>,
    key: &str,
    v: &Value<'_>,
    limit_names: &[String],
) -> Option<Vec<String>> {
    let items = r.array(v, key)?;
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let item_key = format!("{key}[{i}]");
        let Some(name) = r.string(item, &item_key) else {
            ok = false;
            continue;
        };
        if !limit_names.iter().any(|n| n == name) {
            let known: Vec<&str> = limit_names.iter().map(String::as_str).collect();
            let hint = did_you_mean(name, &known)
                .map(|c| format!("; did you mean `{c}`?"))
                .unwrap_or_default();
            r.error(
                &item_key,
                item.span(),
                format!("no limit named `{name}` is defined (as [limits.{name}]){hint}"),
            );
            ok = false;
        } else if out.iter().any(|n| n == name) {
            r.error(&item_key, item.span(), format!("`{name}` is listed twice"));
            ok = false;
        } else {
            out.push(name.to_string());
        }
    }
    ok.then_some(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigErrors, parse};

    fn load(limits: &str, listener: &str) -> Result<Config, ConfigErrors> {
        parse(
            Path::new("t.toml"),
            &format!(
                "[listeners.l]\nlisten = \"127.0.0.1:0\"\nupstream = \"u\"\n{listener}\n[upstreams.u]\nservers = [\"127.0.0.1:1\"]\n{limits}\n"
            ),
        )
    }

    #[test]
    fn a_limit_with_its_defaults() {
        let c = load(
            "[limits.api]\nrate = \"10r/s\"\n[limits.one]\nconns = 2\nkey = \"$http_x_user\"",
            "limits = [\"api\", \"one\"]",
        )
        .expect("valid");
        let api = &c.rate_limits["api"];
        assert_eq!(api.rate.map(|r| r.milli_per_second()), Some(10_000));
        assert_eq!((api.burst, api.nodelay, api.status), (0, false, 503));
        assert_eq!(api.key.text, "$remote_addr");
        assert_eq!((api.conns, api.max_keys.get()), (None, 100_000));
        let one = &c.rate_limits["one"];
        assert_eq!((one.rate, one.conns.map(|c| c.get())), (None, Some(2)));
        assert_eq!(c.listeners["l"].rate_limits, ["api", "one"]);
    }

    #[test]
    fn rates_per_minute_use_nginx_integer_arithmetic() {
        let c = load(
            "[limits.slow]\nrate = \"1r/m\"\nburst = 3\nnodelay = true\nstatus = 429\nmax_keys = 10",
            "",
        )
        .expect("valid");
        let slow = &c.rate_limits["slow"];
        assert_eq!(slow.rate.map(|r| r.milli_per_second()), Some(16));
        assert_eq!(slow.rate.map(|r| r.to_string()).as_deref(), Some("1r/m"));
        assert!(slow.nodelay);
        assert_eq!((slow.burst, slow.status, slow.max_keys.get()), (3, 429, 10));
    }

    #[test]
    fn routes_inherit_unless_they_name_their_own() {
        let c = load(
            "[limits.a]\nrate = \"1r/s\"\n[limits.b]\nrate = \"2r/s\"",
            "limits = [\"a\"]\n[[listeners.l.routes]]\npath_prefix = \"/x\"\nupstream = \"u\"\nlimits = [\"b\"]\n[[listeners.l.routes]]\npath_prefix = \"/y\"\nupstream = \"u\"\n[[listeners.l.routes]]\npath_prefix = \"/z\"\nupstream = \"u\"\nlimits = []",
        )
        .expect("valid");
        let routes = &c.listeners["l"].routes;
        assert_eq!(routes[0].rate_limits, Some(vec!["b".to_string()]));
        assert_eq!(routes[1].rate_limits, None);
        assert_eq!(routes[2].rate_limits, Some(vec![]));
    }

    #[test]
    fn mistakes_name_file_line_and_key() {
        let e = load(
            "[limits.api]\nrate = \"10 r/s\"\nburst = -1\nstatus = 200\nkey = \"$nope\"\n[limits.empty]\nnodelay = true\n[limits.big]\nrate = \"0r/s\"\nmax_keys = 0",
            "limits = [\"apx\", \"api\", \"api\"]\n[[listeners.l.routes]]\nupstream = \"u\"\nlimits = [\"nothing\"]",
        )
        .expect_err("invalid")
        .to_string();
        for wanted in [
            "t.toml:4:11: listeners.l.limits[0]: no limit named `apx` is defined (as [limits.apx]); did you mean `api`?",
            "t.toml:4:25: listeners.l.limits[2]: `api` is listed twice",
            "t.toml:7:11: listeners.l.routes[0].limits[0]: no limit named `nothing` is defined",
            "t.toml:11:8: limits.api.rate: `10 r/s` is not a rate",
            "t.toml:12:9: limits.api.burst: must be between 0 and 1000000, got -1",
            "t.toml:13:10: limits.api.status: must be between 400 and 599, got 200",
            "t.toml:14:7: limits.api.key: unknown variable `$nope`",
            "limits.empty: a limit needs `rate`",
            "limits.empty.nodelay: applies to a request rate: set `rate` too",
            "limits.big.rate: `0r/s`: the number of requests must be between 1 and 1000000",
            "limits.big.max_keys: must be between 1 and 10000000, got 0",
        ] {
            assert!(e.contains(wanted), "{wanted} in\n{e}");
        }
        let e = load("[limits.a]\nrate = \"1r/s\"\nkey = \"\"", "")
            .expect_err("empty key")
            .to_string();
        assert!(
            e.contains("limits.a.key: an empty key would limit no request"),
            "{e}"
        );
    }

    #[test]
    fn the_commented_example_is_valid() {
        let example = include_str!("../../config/upstream.toml");
        let uncommented: String = example
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.starts_with("limits =") || rest.starts_with("[limits.") => {
                    rest.to_string()
                }
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        // The keys of the [limits.api] example, uncommented too.
        let uncommented = uncommented
            .split_once("\n[limits.api]\n")
            .map(|(before, after)| {
                // Up to the example's end: the next blank line.
                let keys: Vec<&str> = after
                    .lines()
                    .take_while(|l| l.starts_with('#'))
                    .filter_map(|l| l.strip_prefix("# "))
                    .filter(|l| !l.starts_with(' '))
                    .collect();
                format!("{before}\n[limits.api]\n{}\n", keys.join("\n"))
            })
            .expect("the example has [limits.api]");
        let c = parse(Path::new("upstream.toml"), &uncommented).expect("valid");
        let api = &c.rate_limits["api"];
        assert_eq!(
            (
                api.burst,
                api.nodelay,
                api.status,
                api.conns.map(|c| c.get())
            ),
            (20, true, 429, Some(10))
        );
        assert_eq!(c.listeners["web"].rate_limits, ["api"]);
    }

    #[test]
    fn a_tcp_listener_takes_no_limits() {
        let e = parse(
            Path::new("t.toml"),
            "[listeners.t]\nlisten = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nupstream = \"u\"\nlimits = [\"a\"]\n[upstreams.u]\nservers = [\"127.0.0.1:1\"]\n[limits.a]\nconns = 1\n",
        )
        .expect_err("tcp")
        .to_string();
        assert!(
            e.contains("listeners.t.limits: applies to HTTP listeners only"),
            "{e}"
        );
    }
}
