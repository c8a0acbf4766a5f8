//! The top-level `[resolver]` section: which DNS servers `resolve = true` servers are asked,
//! and how their answers are used (nginx's `resolver` directive).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::model::ResolverConfig;
use super::reader::{Reader, Value, duration_or, flag_or, get};

const RESOLVER_KEYS: &[&str] = &["addrs", "valid", "timeout", "ipv4", "ipv6"];

pub(super) fn resolver(r: &mut Reader<'_>, v: &Value<'_>) -> Option<ResolverConfig> {
    let t = r.table(v, "resolver")?;
    r.check_keys(t, "resolver", RESOLVER_KEYS);
    let addrs = match get(t, "addrs") {
        None => Some(Vec::new()),
        Some(list) => {
            let items = r.array(list, "resolver.addrs")?;
            if items.is_empty() {
                r.error(
                    "resolver.addrs",
                    list.span(),
                    "needs at least one address; leave the key out to use /etc/resolv.conf",
                );
            }
            let mut out = Vec::with_capacity(items.len());
            let mut ok = !items.is_empty();
            for item in items {
                match r.string(item, "resolver.addrs").map(nameserver) {
                    Some(Some(addr)) => out.push(addr),
                    Some(None) => {
                        r.error(
                            "resolver.addrs",
                            item.span(),
                            "expected an IP address, optionally with a port: \"10.0.0.2\", \"127.0.0.1:5353\" or \"[::1]:53\"",
                        );
                        ok = false;
                    }
                    None => ok = false,
                }
            }
            ok.then_some(out)
        }
    };
    let valid = match get(t, "valid") {
        None => Some(None),
        Some(v) => match r.duration(v, "resolver.valid") {
            Some(d) if d < Duration::from_secs(1) => {
                r.error("resolver.valid", v.span(), "must be at least 1s");
                None
            }
            other => other.map(Some),
        },
    };
    let timeout = duration_or(
        r,
        t,
        "resolver",
        "timeout",
        ResolverConfig::default().timeout,
    );
    let ipv4 = flag_or(r, t, "resolver", "ipv4", true);
    let ipv6 = flag_or(r, t, "resolver", "ipv6", true);
    if (ipv4, ipv6) == (Some(false), Some(false)) {
        r.error(
            "resolver",
            v.span(),
            "`ipv4` and `ipv6` are both false: no address could be found",
        );
        return None;
    }
    if timeout.is_zero() {
        r.error(
            "resolver.timeout",
            get(t, "timeout").map_or(v.span(), |x| x.span()),
            "must be above 0",
        );
        return None;
    }
    Some(ResolverConfig {
        addrs: addrs?,
        valid: valid?,
        timeout,
        ipv4: ipv4?,
        ipv6: ipv6?,
    })
}

/// `"10.0.0.2"` (port 53), `"127.0.0.1:5353"`, `"::1"` or `"[::1]:5353"`.
fn nameserver(text: &str) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return (addr.port() != 0).then_some(addr);
    }
    text.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, 53))
}

#[cfg(test)]
mod tests {
    use super::nameserver;
    use crate::config::{ConfigErrors, ServerAddr, parse};
    use std::path::Path;
    use std::time::Duration;

    fn file(top: &str, servers: &str) -> Result<crate::config::Config, ConfigErrors> {
        let text = format!(
            "{top}\n[listeners.l]\nlisten = \"127.0.0.1:0\"\nupstream = \"u\"\n[upstreams.u]\nservers = [{servers}]\n"
        );
        parse(Path::new("t.toml"), &text)
    }

    /// Each error as `line:column: key: message`.
    fn errors(top: &str, servers: &str) -> Vec<String> {
        match file(top, servers) {
            Ok(_) => Vec::new(),
            Err(e) => {
                e.0.iter()
                    .map(|e| format!("{}:{}: {}: {}", e.line, e.column, e.key, e.message))
                    .collect()
            }
        }
    }

    #[test]
    fn resolver_and_resolve_keys_parse() {
        let c = file(
            "[resolver]\naddrs = [\"127.0.0.1:5353\", \"10.0.0.2\"]\nvalid = \"1s\"\ntimeout = \"200ms\"\nipv6 = false",
            r#"{ addr = "App.Test:80", resolve = true }, { addr = "svc.test", service = "http", resolve = true }, { addr = "svc.test", service = "_grpc._udp", resolve = true }"#,
        )
        .expect("valid");
        assert_eq!(c.resolver.addrs.len(), 2);
        assert_eq!(c.resolver.valid, Some(Duration::from_secs(1)));
        assert_eq!(c.resolver.timeout, Duration::from_millis(200));
        assert!(c.resolver.ipv4 && !c.resolver.ipv6);
        let s = &c.upstreams["u"].servers;
        assert!(s.iter().all(|s| s.resolve));
        assert_eq!(
            s.iter().map(|s| s.addr.to_string()).collect::<Vec<_>>(),
            ["app.test:80", "_http._tcp.svc.test", "_grpc._udp.svc.test"]
        );
        assert!(matches!(s[1].addr, ServerAddr::Srv { .. }));
        let plain = file("", "\"127.0.0.1:1\"").expect("valid");
        assert_eq!(plain.resolver, Default::default());
    }

    #[test]
    fn mistakes_are_named_with_their_place() {
        assert_eq!(
            errors("[resolver]\nvalid = \"500ms\"", "\"127.0.0.1:1\""),
            ["2:9: resolver.valid: must be at least 1s"]
        );
        assert_eq!(
            errors("[resolver]\naddrs = [\"dns.test\"]", "\"127.0.0.1:1\"").len(),
            1
        );
        assert_eq!(
            errors("[resolver]\nipv4 = false\nipv6 = false", "\"127.0.0.1:1\"").len(),
            1
        );
        assert_eq!(
            errors("", r#"{ addr = "127.0.0.1:80", resolve = true }"#),
            [
                "6:21: upstreams.u.servers[0].addr: `resolve = true` needs a host name, not an IP address"
            ]
        );
        assert_eq!(
            errors("", r#"{ addr = "unix:/run/app.sock", resolve = true }"#),
            [
                "6:21: upstreams.u.servers[0].addr: `resolve = true` needs a host name, not a Unix socket path"
            ]
        );
        let e = errors(
            "",
            r#"{ addr = "svc.test:80", service = "http", resolve = true }"#,
        );
        assert!(
            e[0].contains("servers[0].addr") && e[0].contains("without a port"),
            "{e:?}"
        );
        let e = errors("", r#"{ addr = "svc.test", service = "http" }"#);
        assert!(
            e[0].contains("servers[0].service") && e[0].contains("resolve = true"),
            "{e:?}"
        );
        let e = errors(
            "",
            r#"{ addr = "svc.test:80", resolve = true, servcie = "http" }"#,
        );
        assert!(e[0].contains("servcie"), "{e:?}");
    }

    #[test]
    fn nameservers_default_to_port_53() {
        assert_eq!(nameserver("10.0.0.2"), "10.0.0.2:53".parse().ok());
        assert_eq!(nameserver("127.0.0.1:5353"), "127.0.0.1:5353".parse().ok());
        assert_eq!(nameserver("::1"), "[::1]:53".parse().ok());
        assert_eq!(nameserver("[::1]:5353"), "[::1]:5353".parse().ok());
        assert_eq!(nameserver("127.0.0.1:0"), None);
        assert_eq!(nameserver("dns.example"), None);
    }
}
