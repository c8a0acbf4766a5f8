//! Answers to backends: every address of a `resolve = true` server becomes a backend with the
//! server's settings; SRV records give each target's port, weight (the record's) and tier (the
//! lowest priority number serves, the others are backups, as nginx's `service=`). Pure.
//!
//! Backends come sorted by address, whatever order the DNS server answered in: the balancers'
//! positions (hash rings, `ip_hash`) and sticky ids then agree across rproxy instances.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::num::NonZeroU32;

use crate::config::{BackendAddr, ResolvedServer, ServerConfig, UpstreamConfig};

use super::{Answers, Query, Records};

/// The backends of a `resolve = true` server from its `records`.
pub fn expand(server: &ServerConfig, records: &Records) -> Vec<ResolvedServer> {
    let written = server.addr.to_string();
    let one = |addr: SocketAddr, config: ServerConfig| ResolvedServer {
        addr: addr.into(),
        written: written.clone(),
        // Always labelled with the address: its series stay the same as others come and go.
        sole_address: false,
        config,
    };
    let mut out: Vec<ResolvedServer> = match (records, &server.addr) {
        (Records::Hosts(ips), crate::config::ServerAddr::Name { port, .. }) => ips
            .iter()
            .map(|ip| one(SocketAddr::new(*ip, *port), server.clone()))
            .collect(),
        (Records::Srv(targets), _) => {
            let Some(first) = targets.iter().map(|t| t.priority).min() else {
                return Vec::new();
            };
            targets
                .iter()
                // A `backup` server's SRV records of the first priority are its backups, and
                // the others are not used (nginx).
                .filter(|t| !server.backup || t.priority == first)
                .map(|t| {
                    let config = ServerConfig {
                        // Weight 0 (RFC 2782: "very small chance") is the smallest weight.
                        weight: NonZeroU32::new(u32::from(t.weight)).unwrap_or(NonZeroU32::MIN),
                        backup: server.backup || t.priority != first,
                        ..server.clone()
                    };
                    one(SocketAddr::new(t.ip, t.port), config)
                })
                .collect()
        }
        // Host records for an SRV server (or the reverse) cannot be asked for: `Query::of`
        // matches the address kind.
        (Records::Hosts(_), _) => Vec::new(),
    };
    out.sort_by(|a, b| a.addr.cmp(&b.addr));
    out.dedup_by(|a, b| a.addr == b.addr);
    out
}

/// The resolved servers of `upstream` in file order: `statics` (the servers without
/// `resolve`, resolved at load, in file order) with the backends of each `resolve = true`
/// server from `answers` put in its place. An address already taken by an earlier server of
/// the upstream is left out (a name may point at a backend also listed by address).
pub fn servers(
    upstream: &UpstreamConfig,
    statics: Vec<ResolvedServer>,
    answers: &Answers,
) -> Vec<ResolvedServer> {
    let mut statics = statics.into_iter().peekable();
    let mut out: Vec<ResolvedServer> = Vec::new();
    let mut taken: BTreeSet<BackendAddr> = BTreeSet::new();
    for server in &upstream.servers {
        if !server.resolve {
            while let Some(s) = statics.next_if(|s| s.config.origin == server.origin) {
                taken.insert(s.addr.clone());
                out.push(s);
            }
            continue;
        }
        let records = Query::of(&server.addr)
            .and_then(|q| answers.get(&q))
            .and_then(|a| a.records.as_ref());
        for s in records.map(|r| expand(server, r)).unwrap_or_default() {
            if taken.insert(s.addr.clone()) {
                out.push(s);
            } else {
                tracing::debug!(upstream = %upstream.name, server = %s.written, addr = %s.addr, "dns: address already a backend of this upstream; left out");
            }
        }
    }
    out
}

/// The addresses `after` has that `before` had not (added), and those it lost (removed).
pub fn changes(before: Option<&Records>, after: Option<&Records>) -> (Vec<String>, Vec<String>) {
    let set = |r: Option<&Records>| -> BTreeSet<String> {
        match r {
            None => BTreeSet::new(),
            Some(Records::Hosts(ips)) => ips.iter().map(ToString::to_string).collect(),
            Some(Records::Srv(targets)) => targets
                .iter()
                .map(|t| {
                    format!(
                        "{} (priority {}, weight {})",
                        SocketAddr::new(t.ip, t.port),
                        t.priority,
                        t.weight
                    )
                })
                .collect(),
        }
    };
    let (b, a) = (set(before), set(after));
    (
        a.difference(&b).cloned().collect(),
        b.difference(&a).cloned().collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::{Answer, SrvTarget};
    use super::*;
    use crate::config::parse;
    use std::net::IpAddr;
    use std::path::Path;

    fn upstream(servers: &str) -> UpstreamConfig {
        let text = format!(
            "[listeners.l]\nlisten = \"127.0.0.1:0\"\nupstream = \"u\"\n[upstreams.u]\nservers = [{servers}]\n"
        );
        let config = parse(Path::new("t.toml"), &text).expect("valid test config");
        config.upstreams["u"].clone()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an IP")
    }

    fn answer(records: Records) -> Answer {
        Answer {
            records: Some(records),
            error: None,
            failures: 0,
            refresh: tokio::time::Instant::now(),
        }
    }

    fn srv(ip_text: &str, port: u16, priority: u16, weight: u16) -> SrvTarget {
        SrvTarget {
            ip: ip(ip_text),
            port,
            priority,
            weight,
        }
    }

    fn summary(servers: &[ResolvedServer]) -> Vec<(String, u32, bool)> {
        servers
            .iter()
            .map(|s| (s.addr.to_string(), s.config.weight.get(), s.config.backup))
            .collect()
    }

    #[test]
    fn every_address_is_a_backend_sorted_whatever_the_answer_order() {
        let up = upstream(r#"{ addr = "app.test:8080", resolve = true, weight = 3 }"#);
        let a = expand(
            &up.servers[0],
            &Records::Hosts(vec![ip("10.0.0.3"), ip("10.0.0.1"), ip("10.0.0.2")]),
        );
        let b = expand(
            &up.servers[0],
            &Records::Hosts(vec![ip("10.0.0.2"), ip("10.0.0.3"), ip("10.0.0.1")]),
        );
        assert_eq!(summary(&a), summary(&b));
        assert_eq!(
            summary(&a),
            [
                ("10.0.0.1:8080".into(), 3, false),
                ("10.0.0.2:8080".into(), 3, false),
                ("10.0.0.3:8080".into(), 3, false)
            ]
        );
        assert!(
            a.iter()
                .all(|s| s.written == "app.test:8080" && !s.sole_address)
        );
    }

    #[test]
    fn srv_weights_are_weights_and_higher_priorities_are_backups() {
        let up = upstream(
            r#"{ addr = "app.test", service = "http", resolve = true }, { addr = "old.test", service = "_http._tcp", resolve = true, backup = true }"#,
        );
        let records = Records::Srv(vec![
            srv("10.0.0.2", 81, 10, 1),
            srv("10.0.0.1", 80, 10, 3),
            srv("10.0.0.3", 82, 20, 0),
        ]);
        assert_eq!(
            summary(&expand(&up.servers[0], &records)),
            [
                ("10.0.0.1:80".into(), 3, false),
                ("10.0.0.2:81".into(), 1, false),
                ("10.0.0.3:82".into(), 1, true)
            ]
        );
        assert_eq!(up.servers[0].addr.to_string(), "_http._tcp.app.test");
        // A backup server: its first-priority records are backups, the rest unused.
        assert_eq!(
            summary(&expand(&up.servers[1], &records)),
            [
                ("10.0.0.1:80".into(), 3, true),
                ("10.0.0.2:81".into(), 1, true)
            ]
        );
    }

    #[test]
    fn resolved_servers_take_their_place_in_file_order_without_duplicates() {
        let up = upstream(
            r#""127.0.0.1:1", { addr = "app.test:1", resolve = true }, { addr = "gone.test:1", resolve = true }, "127.0.0.9:1""#,
        );
        let statics: Vec<ResolvedServer> = [0, 3]
            .iter()
            .map(|&i| {
                let s = &up.servers[i];
                ResolvedServer {
                    addr: match &s.addr {
                        crate::config::ServerAddr::Ip(a) => (*a).into(),
                        _ => unreachable!("IPs"),
                    },
                    written: s.addr.to_string(),
                    sole_address: true,
                    config: s.clone(),
                }
            })
            .collect();
        let mut answers = Answers::default();
        answers.0.insert(
            Query::Host("app.test".into()),
            answer(Records::Hosts(vec![ip("127.0.0.5"), ip("127.0.0.1")])),
        );
        let got: Vec<String> = servers(&up, statics, &answers)
            .iter()
            .map(|s| s.addr.to_string())
            .collect();
        assert_eq!(
            got,
            ["127.0.0.1:1", "127.0.0.5:1", "127.0.0.9:1"],
            "127.0.0.1:1 is listed by address already; gone.test has no answer"
        );
    }

    #[test]
    fn changes_are_the_difference_of_address_sets() {
        let before = Records::Hosts(vec![ip("10.0.0.1"), ip("10.0.0.2")]);
        let after = Records::Hosts(vec![ip("10.0.0.3"), ip("10.0.0.2")]);
        assert_eq!(
            changes(Some(&before), Some(&after)),
            (vec!["10.0.0.3".into()], vec!["10.0.0.1".into()])
        );
        assert_eq!(
            changes(None, Some(&before)),
            (vec!["10.0.0.1".into(), "10.0.0.2".into()], vec![])
        );
        assert_eq!(changes(Some(&before), Some(&before)), (vec![], vec![]));
    }
}
