//! The rproxy schema: turns the spanned TOML tree into a validated [`Config`].
//!
//! Every section is read with `Reader`, which records problems instead of stopping; the
//! listener and upstream sections have files of their own. Cross-references (a listener naming
//! an unknown upstream, an address used twice) are checked here.
//! Keys and defaults are documented in `config/upstream.toml` and the README.

use std::collections::BTreeMap;
use std::path::Path;

use toml::de::{DeTable, DeValue};

use super::error::ConfigErrors;
use super::listener_section::{check_listen_addrs, listener};
use super::model::{AccessFormat, AccessTarget, AdminConfig, Config, LogConfig, defaults};
use super::rate_limit_section::{attach_rate_limits, rate_limit};
use super::reader::{Reader, Table, Value, duration_or, entries, get, join};
use super::resolver_section::resolver;
use super::tcp_section::check_tcp_upstream;
use super::upstream_section::upstream;

const TOP_KEYS: &[&str] = &[
    "workers",
    "log_level",
    "pid_file",
    "watch",
    "drain_timeout",
    "trusted_proxies",
    "listeners",
    "upstreams",
    "admin",
    "log",
    "resolver",
    "limits",
];
const ADMIN_KEYS: &[&str] = &["listen", "token"];
const LOG_KEYS: &[&str] = &["access", "format"];

/// Parses and validates configuration text. `file` is only used to name it in errors.
pub fn parse(file: &Path, src: &str) -> Result<Config, ConfigErrors> {
    let mut r = Reader::new(file, src);
    let (doc, syntax_errors) = DeTable::parse_recoverable(src);
    if !syntax_errors.is_empty() {
        // A partly parsed tree would only add confusing follow-on errors: report syntax alone.
        for e in syntax_errors {
            let span = e.span().unwrap_or(0..0);
            r.error("", span, format!("TOML syntax: {}", e.message().trim_end()));
        }
        r.errors.dedup();
        return Err(ConfigErrors(r.errors));
    }
    let root = doc.get_ref();
    r.check_keys(root, "", TOP_KEYS);

    let workers = get(root, "workers")
        .and_then(|v| r.integer(v, "workers", 1, 1024))
        .map(|n| n as usize);
    let log_level = get(root, "log_level").and_then(|v| log_level(&mut r, v));
    let drain_timeout = duration_or(&mut r, root, "", "drain_timeout", defaults::DRAIN_TIMEOUT);
    let pid_file = get(root, "pid_file").and_then(|v| pid_file(&mut r, file, v));
    let watch = get(root, "watch")
        .and_then(|v| r.boolean(v, "watch"))
        .unwrap_or(false);
    let trusted_proxies = get(root, "trusted_proxies")
        .map(|v| trusted_proxies(&mut r, v))
        .unwrap_or_default();

    // Names as written, so an upstream with errors of its own still counts as defined.
    let upstream_names: Vec<String> = match get(root, "upstreams").map(|v| v.get_ref()) {
        Some(DeValue::Table(t)) => t.iter().map(|(k, _)| k.get_ref().to_string()).collect(),
        _ => Vec::new(),
    };
    let admin = get(root, "admin").and_then(|v| admin(&mut r, v));
    let log = get(root, "log").map_or(Some(LogConfig::default()), |v| log(&mut r, v));
    let resolver = get(root, "resolver").map_or(Some(Default::default()), |v| resolver(&mut r, v));
    let upstreams = read_section(&mut r, root, "upstreams", upstream);
    let limit_names: Vec<String> = match get(root, "limits").map(|v| v.get_ref()) {
        Some(DeValue::Table(t)) => t.iter().map(|(k, _)| k.get_ref().to_string()).collect(),
        _ => Vec::new(),
    };
    let rate_limits = read_section(&mut r, root, "limits", rate_limit);
    let mut listeners = read_section(&mut r, root, "listeners", |r, path, t, whole| {
        listener(r, path, t, whole, &upstream_names)
    });
    check_listen_addrs(&mut r, root, &listeners);
    attach_rate_limits(&mut r, root, &mut listeners, &limit_names);
    for draft in listeners.values() {
        if let (Some(_), Some(origin), Some(upstream)) = (
            draft.config.tcp,
            &draft.upstream_origin,
            draft
                .config
                .upstream
                .as_ref()
                .and_then(|u| upstreams.get(u)),
        ) {
            check_tcp_upstream(&mut r, origin, upstream);
        }
    }

    if !r.errors.is_empty() {
        r.errors.sort_by_key(|e| (e.line, e.column));
        r.errors.dedup();
        return Err(ConfigErrors(r.errors));
    }
    Ok(Config {
        source: file.to_path_buf(),
        workers,
        log_level,
        drain_timeout,
        pid_file,
        watch,
        trusted_proxies,
        listeners: listeners.into_iter().map(|(k, d)| (k, d.config)).collect(),
        upstreams,
        admin,
        log: log.unwrap_or_default(),
        resolver: resolver.unwrap_or_default(),
        rate_limits,
    })
}

/// `pid_file = "rproxy.pid"`: a relative path is taken from the configuration file's folder,
/// so `rproxy -s reload -c FILE` finds it from anywhere.
fn pid_file(r: &mut Reader<'_>, file: &Path, v: &Value<'_>) -> Option<std::path::PathBuf> {
    let text = r.string(v, "pid_file")?;
    if text.is_empty() {
        r.error("pid_file", v.span(), "must not be empty");
        return None;
    }
    let path = Path::new(text);
    Some(match file.parent() {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    })
}

/// Reads `[section.NAME]` tables with `read`, keyed by NAME.
fn read_section<T>(
    r: &mut Reader<'_>,
    root: &Table<'_>,
    section: &str,
    mut read: impl FnMut(&mut Reader<'_>, &str, &Table<'_>, &Value<'_>) -> Option<T>,
) -> BTreeMap<String, T> {
    let mut out = BTreeMap::new();
    let Some(v) = get(root, section) else {
        return out;
    };
    let Some(table) = r.table(v, section) else {
        return out;
    };
    for (name, value) in entries(table) {
        let path = join(section, name.get_ref());
        if !valid_name(name.get_ref()) {
            r.error(
                &path,
                name.span(),
                "names may use only letters, digits, '-' and '_'",
            );
        }
        let Some(t) = r.table(value, &path) else {
            continue;
        };
        if let Some(item) = read(r, &path, t, value) {
            out.insert(name.get_ref().to_string(), item);
        }
    }
    out
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn admin(r: &mut Reader<'_>, v: &Value<'_>) -> Option<AdminConfig> {
    let t = r.table(v, "admin")?;
    r.check_keys(t, "admin", ADMIN_KEYS);
    let listen = match get(t, "listen") {
        Some(l) => {
            let text = r.string(l, "admin.listen")?;
            match text.parse::<std::net::SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    r.error(
                        "admin.listen",
                        l.span(),
                        format!(
                            "`{text}` is not an IP address and port, such as \"127.0.0.1:9090\""
                        ),
                    );
                    None
                }
            }
        }
        None => {
            r.error("admin", v.span(), "missing key `listen` (\"host:port\")");
            None
        }
    };
    let token = match get(t, "token") {
        Some(tv) => {
            let text = r.string(tv, "admin.token")?;
            if text.len() < 16 || !text.bytes().all(|b| b.is_ascii_graphic()) {
                r.error(
                    "admin.token",
                    tv.span(),
                    "a token needs at least 16 visible ASCII characters",
                );
                return None;
            }
            Some(text.to_string())
        }
        None => None,
    };
    Some(AdminConfig {
        listen: listen?,
        token,
    })
}

fn log(r: &mut Reader<'_>, v: &Value<'_>) -> Option<LogConfig> {
    let t = r.table(v, "log")?;
    r.check_keys(t, "log", LOG_KEYS);
    let access = match get(t, "access") {
        None => Some(AccessTarget::default()),
        Some(a) => {
            let text = r.string(a, "log.access")?;
            match text {
                "stdout" => Some(AccessTarget::Stdout),
                "stderr" => Some(AccessTarget::Stderr),
                "off" => Some(AccessTarget::Off),
                "" => {
                    r.error(
                        "log.access",
                        a.span(),
                        "expected \"stdout\", \"stderr\", \"off\" or a file path",
                    );
                    None
                }
                path => {
                    let path = std::path::PathBuf::from(path);
                    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
                    if dir.is_some_and(|d| !d.is_dir()) {
                        r.error(
                            "log.access",
                            a.span(),
                            format!(
                                "directory {} does not exist",
                                dir.map_or(String::new(), |d| d.display().to_string())
                            ),
                        );
                        None
                    } else {
                        Some(AccessTarget::File(path))
                    }
                }
            }
        }
    };
    let format = match get(t, "format") {
        None => Some(AccessFormat::default()),
        Some(f) => match r.string(f, "log.format")? {
            "combined" => Some(AccessFormat::Combined),
            "json" => Some(AccessFormat::Json),
            other => {
                r.error(
                    "log.format",
                    f.span(),
                    format!("unknown format `{other}`; expected \"combined\" or \"json\""),
                );
                None
            }
        },
    };
    Some(LogConfig {
        access: access?,
        format: format?,
    })
}

fn log_level(r: &mut Reader<'_>, v: &Value<'_>) -> Option<String> {
    let text = r.string(v, "log_level")?;
    match tracing_subscriber::EnvFilter::builder().parse(text) {
        Ok(_) => Some(text.to_string()),
        Err(e) => {
            r.error(
                "log_level",
                v.span(),
                format!(
                    "`{text}` is not a log filter ({e}); use error, warn, info, debug or trace"
                ),
            );
            None
        }
    }
}

fn trusted_proxies(r: &mut Reader<'_>, v: &Value<'_>) -> Vec<ipnet::IpNet> {
    let Some(items) = r.array(v, "trusted_proxies") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = format!("trusted_proxies[{i}]");
        let Some(text) = r.string(item, &key) else {
            continue;
        };
        // A bare address is a /32 or /128.
        let net = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match net {
            Ok(net) => out.push(net.trunc()),
            Err(_) => r.error(
                &key,
                item.span(),
                format!("`{text}` is not a CIDR block or an IP address, such as \"10.0.0.0/8\""),
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BalancePolicy, ForwardedHeaders};

    const EXAMPLE: &str = include_str!("../../config/upstream.toml");

    #[test]
    fn the_shipped_example_parses_to_the_documented_values() {
        let c = parse(Path::new("upstream.toml"), EXAMPLE).expect("example is valid");
        let app = &c.upstreams["app"];
        assert_eq!(app.servers.len(), 4);
        assert_eq!(app.servers[1].weight.get(), 2);
        assert!(app.servers[2].backup && app.servers[3].down);
        assert_eq!(app.keepalive_timeout, defaults::UPSTREAM_KEEPALIVE_TIMEOUT);
        assert_eq!(c.listeners["web"].listen.len(), 2);
        assert_eq!(c.drain_timeout, defaults::DRAIN_TIMEOUT);
    }

    fn listener_with(extra: &str) -> Result<Config, ConfigErrors> {
        let text = format!(
            "[listeners.l]\nlisten = \"127.0.0.1:0\"\nupstream = \"u\"\n{extra}\n[upstreams.u]\nservers = [\"127.0.0.1:1\"]\n"
        );
        parse(Path::new("t.toml"), &text)
    }

    #[test]
    fn sizes_take_bytes_or_binary_units() {
        let c = listener_with(
            "max_body_size = \"10m\"\nmax_header_size = 16384\nmax_uri_length = \"4KiB\"",
        )
        .expect("valid sizes");
        let limits = c.listeners["l"].limits;
        assert_eq!(limits.max_body_size, Some(10 << 20));
        assert_eq!(limits.max_header_size, 16384);
        assert_eq!(limits.max_uri_length, 4096);
        assert_eq!(
            listener_with("").expect("defaults").listeners["l"]
                .limits
                .max_body_size,
            None
        );
        let errors = listener_with("max_body_size = \"ten\"\nmax_header_size = \"1k\"")
            .expect_err("invalid");
        let text = errors.to_string();
        assert!(
            text.contains("t.toml:4:17: listeners.l.max_body_size: `ten` is not a size"),
            "{text}"
        );
        assert!(
            text.contains(
                "listeners.l.max_header_size: must be between 8192 and 1048576 bytes, got 1024"
            ),
            "{text}"
        );
    }

    #[test]
    fn forwarded_headers_and_request_id() {
        let l = listener_with("").expect("defaults").listeners["l"].clone();
        assert_eq!(
            (l.forwarded_headers, l.request_id),
            (ForwardedHeaders::ALL, true)
        );
        let l = listener_with(
            "forwarded_headers = [\"X-Forwarded-For\", \"x-forwarded-proto\"]\nrequest_id = false",
        )
        .expect("valid")
        .listeners["l"]
            .clone();
        let want = ForwardedHeaders::NONE
            .and(ForwardedHeaders::FOR)
            .and(ForwardedHeaders::PROTO);
        assert_eq!((l.forwarded_headers, l.request_id), (want, false));
        let none = listener_with("forwarded_headers = []").expect("valid");
        assert_eq!(
            none.listeners["l"].forwarded_headers,
            ForwardedHeaders::NONE
        );
        let errors = listener_with(
            "forwarded_headers = [\"x-forwarded-for\", \"x-forwarded-prto\", 7]\nrequest_id = \"no\"",
        )
        .expect_err("invalid")
        .to_string();
        assert!(
            errors.contains(
                "t.toml:4:41: listeners.l.forwarded_headers[1]: `x-forwarded-prto` is not a \
                 forwarding header rproxy writes (x-forwarded-for, x-real-ip, x-forwarded-proto, \
                 x-forwarded-host); did you mean `x-forwarded-proto`?"
            ),
            "{errors}"
        );
        assert!(
            errors.contains("listeners.l.forwarded_headers[2]: expected a string"),
            "{errors}"
        );
        assert!(
            errors.contains("t.toml:5:14: listeners.l.request_id: expected true or false"),
            "{errors}"
        );
        let errors = listener_with("forwarded_headers = \"x-real-ip\"")
            .expect_err("not a list")
            .to_string();
        assert!(
            errors.contains("listeners.l.forwarded_headers: expected an array"),
            "{errors}"
        );
    }

    #[test]
    fn log_section() {
        let c = parse(Path::new("t.toml"), EXAMPLE).expect("example");
        assert_eq!(c.log, LogConfig::default());
        let text = |extra: &str| {
            format!(
                "{extra}\n[listeners.l]\nlisten = \"127.0.0.1:0\"\nupstream = \"u\"\n[upstreams.u]\nservers = [\"127.0.0.1:1\"]\n"
            )
        };
        let c = parse(
            Path::new("t.toml"),
            &text("[log]\naccess = \"/tmp/a.log\"\nformat = \"json\""),
        )
        .expect("valid");
        assert_eq!(c.log.access, AccessTarget::File("/tmp/a.log".into()));
        assert_eq!(c.log.format, AccessFormat::Json);
        let errors = parse(
            Path::new("t.toml"),
            &text("[log]\naccess = \"/no/such/dir/a.log\"\nformat = \"xml\""),
        )
        .expect_err("invalid")
        .to_string();
        assert!(
            errors.contains("t.toml:2:10: log.access: directory /no/such/dir does not exist"),
            "{errors}"
        );
        assert!(
            errors.contains("t.toml:3:10: log.format: unknown format `xml`"),
            "{errors}"
        );
    }

    #[test]
    fn balance_policies() {
        let policy = |extra: &str| {
            parse(
                Path::new("t.toml"),
                &format!("[listeners.l]\nlisten = \"127.0.0.1:0\"\nupstream = \"u\"\n[upstreams.u]\nservers = [\"127.0.0.1:1\"]\n{extra}\n"),
            )
            .map(|c| c.upstreams["u"].balance.clone())
            .map_err(|e| e.to_string())
        };
        assert_eq!(policy("balance = \"ip_hash\""), Ok(BalancePolicy::IpHash));
        let hashed = policy("hash = { key = \"$request_uri\", consistent = true }").expect("hash");
        assert!(matches!(
            hashed,
            BalancePolicy::Hash {
                consistent: true,
                ..
            }
        ));
        let bounded = policy("hash = { key = \"$uri\", consistent = true, balance_factor = 1.25 }")
            .expect("bounded");
        assert!(
            matches!(bounded, BalancePolicy::Hash { balance_factor: Some(f), .. } if f.get() == 1.25)
        );
        let e =
            policy("hash = { key = \"$uri\", balance_factor = 2 }").expect_err("not consistent");
        assert!(e.contains("bounded loads need consistent = true"), "{e}");
        let e = policy("hash = { key = \"$uri\", consistent = true, balance_factor = 0.5 }")
            .expect_err("too low");
        assert!(e.contains("must be above 1"), "{e}");
        let e = policy("balance = \"hash\"").expect_err("no key");
        assert!(
            e.contains("t.toml:6:11: upstreams.u.balance: `hash` needs its key"),
            "{e}"
        );
        let e = policy("hash = { key = \"$nope\" }").expect_err("bad variable");
        assert!(
            e.contains("upstreams.u.hash.key: unknown variable `$nope`"),
            "{e}"
        );
        let e = policy("balance = \"ip_hash\"\nhash = { key = \"$uri\" }").expect_err("mixed");
        assert!(
            e.contains("`hash` settings do not apply to balance = \"ip_hash\""),
            "{e}"
        );
        let e = policy("balance = \"ip-hash\"").expect_err("typo");
        assert!(e.contains("did you mean `ip_hash`?"), "{e}");
    }

    #[test]
    fn sticky_section() {
        let load = |sticky: &str| {
            parse(
                Path::new("t.toml"),
                &format!(
                    "[listeners.l]\nlisten = \"127.0.0.1:0\"\nupstream = \"u\"\n[upstreams.u]\nservers = [\"127.0.0.1:1\"]\n[upstreams.u.sticky]\n{sticky}\n"
                ),
            )
        };
        let c =
            load("cookie = \"route\"\nmax_age = \"2h\"\nsame_site = \"Strict\"").expect("valid");
        let s = c.upstreams["u"].sticky.clone().expect("sticky");
        assert_eq!(
            (s.cookie.as_str(), s.same_site.as_str(), s.http_only),
            ("route", "Strict", true)
        );
        assert_eq!(s.max_age, Some(std::time::Duration::from_secs(7200)));
        let e = load(
            "max_age = \"1h\"\nsecret = \"short\"\nsame_site = \"sideways\"\ncookie = \"a b\"",
        )
        .expect_err("invalid")
        .to_string();
        for wanted in [
            "upstreams.u.sticky.secret: a secret needs at least 16 characters",
            "upstreams.u.sticky.same_site: `sideways` is not one of lax, strict, none",
            "upstreams.u.sticky.cookie: `a b` may use only letters, digits and -_.",
        ] {
            assert!(e.contains(wanted), "{wanted} in {e}");
        }
        assert!(
            load("max_age = \"1h\"")
                .expect_err("no cookie")
                .to_string()
                .contains("missing key `cookie`")
        );
    }

    #[test]
    fn health_check_section() {
        let load = |hc: &str, extra: &str| {
            parse(
                Path::new("t.toml"),
                &format!(
                    "[listeners.l]\nlisten = \"127.0.0.1:0\"\nupstream = \"u\"\n[upstreams.u]\nservers = [\"127.0.0.1:1\"]\n{extra}\n[upstreams.u.health_check]\n{hc}\n"
                ),
            )
        };
        let c = load(
            "path = \"/health\"\nexpect_status = [200, \"300-302\"]\nrise = 1",
            "all_unhealthy = \"503\"",
        )
        .expect("valid");
        let u = &c.upstreams["u"];
        let hc = u.health_check.clone().expect("checks");
        let http = hc.http.expect("an HTTP check");
        assert_eq!(
            (http.path.as_str(), http.expect_status),
            ("/health", vec![(200, 200), (300, 302)])
        );
        assert_eq!((hc.rise, hc.fall, hc.interval.as_secs()), (1, 3, 2));
        assert!(!u.fail_open);
        let tcp = load("type = \"tcp\"", "").expect("tcp");
        assert!(
            tcp.upstreams["u"]
                .health_check
                .clone()
                .expect("checks")
                .http
                .is_none()
        );
        assert!(tcp.upstreams["u"].fail_open, "fail_open is the default");
        let e = load(
            "type = \"tcp\"\npath = \"/x\"\nexpect_status = \"2xx\"\nfall = 0\ninitial = \"maybe\"",
            "all_unhealthy = \"panic\"",
        )
        .expect_err("invalid")
        .to_string();
        for wanted in [
            "upstreams.u.health_check.path: applies to HTTP checks only",
            "upstreams.u.health_check.fall: must be between 1 and 100, got 0",
            "upstreams.u.health_check.initial: `maybe` is not",
            "upstreams.u.all_unhealthy: `panic` is not \"fail_open\" or \"503\"",
        ] {
            assert!(e.contains(wanted), "{wanted} in {e}");
        }
        let with_headers = load("headers = { \"X-Check\" = \"rproxy\" }", "").expect("headers");
        let http = with_headers.upstreams["u"]
            .health_check
            .clone()
            .and_then(|h| h.http);
        assert_eq!(
            http.map(|h| h.headers.len()),
            Some(1),
            "one extra header for the check"
        );
        let e = load("headers = { \"bad name\" = \"x\" }", "")
            .expect_err("bad header")
            .to_string();
        assert!(e.contains("`bad name` is not a valid header name"), "{e}");
        let e = load("expect_status = \"2xx\"", "")
            .expect_err("bad status")
            .to_string();
        assert!(e.contains("`2xx` is not a status or a range"), "{e}");
    }

    #[test]
    fn never_panics_on_damaged_input() {
        // Every prefix, and every single-byte replacement at a range of positions, of the
        // example: parse may fail but must not panic.
        let bytes = EXAMPLE.as_bytes();
        for end in 0..bytes.len() {
            let text = String::from_utf8_lossy(&bytes[..end]);
            let _ = parse(Path::new("t.toml"), &text);
        }
        for pos in (0..bytes.len()).step_by(3) {
            for b in [b'"', b'[', b']', b'=', b'\n', b'{', b'0', 0xff] {
                let mut m = bytes.to_vec();
                m[pos] = b;
                let text = String::from_utf8_lossy(&m);
                let _ = parse(Path::new("t.toml"), &text);
            }
        }
    }
}
