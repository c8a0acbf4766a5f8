//! Configuration: the TOML file as the operator wrote it, turned into validated plain data.
//!
//! `load` reads and validates a file (all errors at once, each naming file, line, column and key);
//! `resolve` turns server names into addresses. The result feeds `state::Snapshot::build`.
//!
//! Ground floor: imports nothing else of rproxy; everything may import it.

mod backend_addr;
mod error;
mod header_rules;
mod headers_section;
mod health_section;
mod key_template;
mod limits_section;
mod listener_section;
mod model;
mod parse;
mod rate_limit_section;
mod reader;
mod resolve;
mod resolver_section;
mod retry_section;
mod route_section;
mod tcp_section;
mod tls_section;
mod upstream_section;

use std::path::Path;

pub use backend_addr::{BackendAddr, UNIX_PATH_MAX};
pub use error::{ConfigError, ConfigErrors};
pub use header_rules::{HeaderAction, HeaderRule, HeaderRules, ValuePart, ValueTemplate};
pub use key_template::{KeyPart, KeyTemplate};
pub use model::{
    AccessFormat, AccessTarget, AdminConfig, BackendTlsConfig, BalanceFactor, BalancePolicy,
    CertFiles, Config, ForwardedHeaders, HealthCheckConfig, HttpCheck, ListenerConfig, LogConfig,
    Origin, PassiveHealth, QueueConfig, RequestLimits, ResolverConfig, RetryPolicy, RouteConfig,
    ServerAddr, ServerConfig, StickyConfig, TcpSettings, TlsConfig, UpstreamConfig, defaults,
};
pub use parse::parse;
pub use rate_limit_section::{DEFAULT_MAX_KEYS, DEFAULT_STATUS, Rate, RateLimitConfig};
pub use resolve::{ResolvedServer, resolve_servers};

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let src = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::whole_file(path, format!("cannot read the file: {e}")))?;
    parse(path, &src)
}
