//! One DNS lookup of a followed name with hickory-resolver (it gives the records' TTLs, which
//! getaddrinfo does not), classified for the schedule, the logs and
//! `rproxy_dns_queries_total`.
//!
//! The resolver keeps no cache of its own (every refresh asks the server) and does not read
//! `/etc/hosts` (as nginx's resolver). Without `[resolver] addrs`, the name servers and search
//! domains of `/etc/resolv.conf` are used.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig as HickoryConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData};

use crate::config::ResolverConfig;

use super::{Query, Records, SrvTarget};

/// Where `/etc/resolv.conf` is, for the default name servers.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// What one lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Records, with the shortest TTL among them.
    Found { records: Records, ttl: Duration },
    /// The DNS server says the name has no such records (`nxdomain` or `no_answer`): the
    /// name's backends go.
    Gone { result: &'static str, why: String },
    /// No answer (`timeout`, or `error`: SERVFAIL, refused, unreachable): the last good
    /// addresses stay.
    Failed { result: &'static str, why: String },
}

impl Outcome {
    /// Its `result` label.
    pub fn result(&self) -> &'static str {
        match self {
            Outcome::Found { .. } => "ok",
            Outcome::Gone { result, .. } | Outcome::Failed { result, .. } => result,
        }
    }
}

/// The `[resolver]`'s client.
#[derive(Clone)]
pub struct Resolver {
    /// What it was built from: a reload with the same `[resolver]` keeps it.
    config: ResolverConfig,
    inner: TokioResolver,
    timeout: Duration,
    /// Names are asked as written with search domains (from resolv.conf), else as absolute.
    search: bool,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// A client for `config`; fails only when it names no server and `/etc/resolv.conf`
    /// has none either.
    pub fn new(config: &ResolverConfig) -> Result<Resolver, String> {
        let (servers, search) = if config.addrs.is_empty() {
            let text = std::fs::read_to_string(RESOLV_CONF).map_err(|e| {
                format!("resolver: cannot read {RESOLV_CONF} ({e}); set [resolver] addrs")
            })?;
            let (servers, search) = resolv_conf(&text);
            if servers.is_empty() {
                return Err(format!(
                    "resolver: {RESOLV_CONF} names no nameserver; set [resolver] addrs"
                ));
            }
            (servers, search)
        } else {
            (config.addrs.clone(), Vec::new())
        };
        let name_servers = servers
            .iter()
            .map(|addr| {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                ns
            })
            .collect();
        let search_names: Vec<Name> = search
            .iter()
            .filter_map(|s| Name::from_ascii(s).ok())
            .collect();
        let has_search = !search_names.is_empty();
        let hickory = HickoryConfig::from_parts(None, search_names, name_servers);
        let mut opts = ResolverOpts::default();
        opts.timeout = config.timeout;
        opts.attempts = 1;
        opts.cache_size = 0;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.ip_strategy = match (config.ipv4, config.ipv6) {
            (true, false) => LookupIpStrategy::Ipv4Only,
            (false, true) => LookupIpStrategy::Ipv6Only,
            _ => LookupIpStrategy::Ipv4AndIpv6,
        };
        let inner = TokioResolver::builder_with_config(hickory, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| format!("resolver: {e}"))?;
        Ok(Resolver {
            config: config.clone(),
            inner,
            timeout: config.timeout,
            search: has_search,
        })
    }

    pub fn config(&self) -> &ResolverConfig {
        &self.config
    }

    /// Looks `query` up once, and counts it by result.
    pub async fn lookup(&self, query: &Query) -> Outcome {
        let outcome = match query {
            Query::Host(name) => match self.ips(name).await {
                Ok((ips, ttl)) => Outcome::Found {
                    records: Records::Hosts(ips),
                    ttl,
                },
                Err(e) => e,
            },
            Query::Srv(name) => self.srv(name).await,
        };
        crate::metrics::dns_query(outcome.result());
        outcome
    }

    fn name(&self, name: &str) -> String {
        if self.search || name.ends_with('.') {
            name.to_string()
        } else {
            format!("{name}.")
        }
    }

    /// The addresses of `name`, sorted, and their shortest TTL.
    async fn ips(&self, name: &str) -> Result<(Vec<IpAddr>, Duration), Outcome> {
        let found = tokio::time::timeout(self.timeout, self.inner.lookup_ip(self.name(name)))
            .await
            .map_err(|_| timed_out(self.timeout))?
            .map_err(|e| classify(&e))?;
        let ttl = found
            .as_lookup()
            .answers()
            .iter()
            .filter(|r| matches!(r.data, RData::A(_) | RData::AAAA(_)))
            .map(|r| r.ttl)
            .min();
        let mut ips: Vec<IpAddr> = found.iter().collect();
        ips.sort();
        ips.dedup();
        match ttl {
            Some(ttl) if !ips.is_empty() => Ok((ips, Duration::from_secs(u64::from(ttl)))),
            _ => Err(Outcome::Gone {
                result: "no_answer",
                why: "no address records".into(),
            }),
        }
    }

    /// SRV records of `name`, each target resolved to its addresses.
    async fn srv(&self, name: &str) -> Outcome {
        let found = match tokio::time::timeout(self.timeout, self.inner.srv_lookup(self.name(name)))
            .await
        {
            Err(_) => return timed_out(self.timeout),
            Ok(Err(e)) => return classify(&e),
            Ok(Ok(found)) => found,
        };
        let mut ttl = u32::MAX;
        let mut records = Vec::new();
        for r in found.answers() {
            if let RData::SRV(srv) = &r.data {
                ttl = ttl.min(r.ttl);
                records.push(srv.clone());
            }
        }
        let mut targets = Vec::new();
        let mut seen_min = Duration::from_secs(u64::from(ttl));
        for srv in &records {
            // "." as target: the service is decidedly not available there (RFC 2782).
            if srv.target.is_root() {
                continue;
            }
            let target = srv.target.to_ascii();
            match self.ips(&target).await {
                Ok((ips, t)) => {
                    seen_min = seen_min.min(t);
                    targets.extend(ips.into_iter().map(|ip| SrvTarget {
                        ip,
                        port: srv.port,
                        priority: srv.priority,
                        weight: srv.weight,
                    }));
                }
                Err(Outcome::Gone { why, .. }) => {
                    tracing::debug!(srv = %name, %target, why, "dns: an SRV target has no address; left out");
                }
                Err(failed) => return failed,
            }
        }
        targets.sort();
        targets.dedup_by_key(|t| SocketAddr::new(t.ip, t.port));
        if targets.is_empty() {
            return Outcome::Gone {
                result: "no_answer",
                why: "no SRV record with a target that has an address".into(),
            };
        }
        Outcome::Found {
            records: Records::Srv(targets),
            ttl: seen_min,
        }
    }
}

fn timed_out(after: Duration) -> Outcome {
    Outcome::Failed {
        result: "timeout",
        why: format!("no answer within {after:?}"),
    }
}

fn classify(e: &NetError) -> Outcome {
    if e.is_nx_domain() {
        return Outcome::Gone {
            result: "nxdomain",
            why: "no such name (NXDOMAIN)".into(),
        };
    }
    match e {
        NetError::Dns(DnsError::NoRecordsFound(no))
            if no.response_code == ResponseCode::NoError =>
        {
            Outcome::Gone {
                result: "no_answer",
                why: "no records of that type".into(),
            }
        }
        NetError::Timeout => Outcome::Failed {
            result: "timeout",
            why: e.to_string(),
        },
        _ => Outcome::Failed {
            result: "error",
            why: e.to_string(),
        },
    }
}

/// The `nameserver` addresses (port 53) and `search` (or `domain`) names of a resolv.conf.
fn resolv_conf(text: &str) -> (Vec<SocketAddr>, Vec<String>) {
    let mut servers = Vec::new();
    let mut search = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                // A scoped IPv6 address (fe80::1%eth0) is left out: it cannot be parsed here.
                if let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) {
                    servers.push(SocketAddr::new(ip, 53));
                }
            }
            Some("search" | "domain") => {
                search = words.map(str::to_string).collect();
            }
            _ => {}
        }
    }
    (servers, search)
}

#[cfg(test)]
mod tests {
    use super::resolv_conf;

    #[test]
    fn resolv_conf_gives_nameservers_and_search_domains() {
        let (servers, search) = resolv_conf(
            "# Docker\nnameserver 127.0.0.11\nnameserver ::1\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5\n",
        );
        assert_eq!(
            servers,
            ["127.0.0.11:53".parse().ok(), "[::1]:53".parse().ok()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
        );
        assert_eq!(search, ["default.svc.cluster.local", "svc.cluster.local"]);
    }
}
