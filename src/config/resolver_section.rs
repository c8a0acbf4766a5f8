//! The top-level `[resolver]` section: which DNS servers `resolve = true` servers are asked,
//! and how their answers are used (nginx's `resolver` directive).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::model::ResolverConfig;
use super::reader::{Reader, Value, duration_or, get};

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
    let ipv4 = match get(t, "ipv4") {
        Some(b) => r.boolean(b, "resolver.ipv4"),
        None => Some(true),
    };
    let ipv6 = match get(t, "ipv6") {
        Some(b) => r.boolean(b, "resolver.ipv6"),
        None => Some(true),
    };
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
    text.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53))
}

#[cfg(test)]
mod tests {
    use super::nameserver;

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
