//! Name resolution for backend addresses, done once when a configuration is loaded.
//!
//! As in nginx, a server written as a host name becomes one backend per address the name
//! resolves to, each with the server's weight and flags. Servers with `resolve = true` are
//! left to the `dns` module, which follows them with TTLs.
//! A Unix socket path is taken as it is: whether the socket exists yet is the health checks'
//! business, not the configuration's.

use std::net::SocketAddr;

use super::backend_addr::BackendAddr;
use super::error::{ConfigError, ConfigErrors};
use super::model::{Config, ServerAddr, ServerConfig, UpstreamConfig};

/// One backend: a resolved address with the settings of the server line it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedServer {
    pub addr: BackendAddr,
    /// As written in the file (a name, or the address itself).
    pub written: String,
    /// The only address its server line resolved to.
    pub sole_address: bool,
    pub config: ServerConfig,
}

/// Resolves every server of `upstream`; errors name the server's key in `config`'s file.
pub async fn resolve_servers(
    config: &Config,
    upstream: &UpstreamConfig,
) -> Result<Vec<ResolvedServer>, ConfigErrors> {
    let mut out = Vec::with_capacity(upstream.servers.len());
    let mut errors = Vec::new();
    for server in &upstream.servers {
        // Followed by the DNS task instead (`dns::servers` puts them in their place).
        if server.resolve {
            continue;
        }
        let addrs = match &server.addr {
            ServerAddr::Ip(addr) => Ok(vec![BackendAddr::Tcp(*addr)]),
            ServerAddr::Unix(path) => Ok(vec![BackendAddr::Unix(path.clone())]),
            // Only with `resolve` (the parser requires it): skipped above.
            ServerAddr::Srv { .. } => continue,
            ServerAddr::Name { host, port } => {
                tokio::net::lookup_host((host.as_str(), *port))
                    .await
                    .map(|it| {
                        let mut v: Vec<SocketAddr> = it.collect();
                        // Sorted so the backend order (and so the round-robin order) is stable.
                        v.sort();
                        v.dedup();
                        v.into_iter().map(BackendAddr::Tcp).collect()
                    })
                    .map_err(|e| format!("cannot resolve `{host}`: {e}"))
            }
        };
        match addrs {
            Ok(addrs) if addrs.is_empty() => {
                errors.push(error(config, server, "resolves to no address".into()));
            }
            Ok(addrs) => {
                let sole_address = addrs.len() == 1;
                for addr in addrs {
                    if let Some(dup) = out.iter().find(|s: &&ResolvedServer| s.addr == addr) {
                        errors.push(error(
                            config,
                            server,
                            format!("`{}` resolves to {addr}, which `{}` in the same upstream already is", server.addr, dup.written),
                        ));
                        continue;
                    }
                    out.push(ResolvedServer {
                        addr,
                        sole_address,
                        written: server.addr.to_string(),
                        config: server.clone(),
                    });
                }
            }
            Err(message) => errors.push(error(config, server, message)),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn error(config: &Config, server: &ServerConfig, message: String) -> ConfigError {
    ConfigError {
        file: config.source.clone(),
        line: server.origin.line,
        column: server.origin.column,
        key: server.origin.key.clone(),
        message,
    }
}
