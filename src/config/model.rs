//! The validated configuration: plain data that later stages build the runtime from.
//!
//! Nothing here can hold a value the proxy cannot use: weights are non-zero, durations are
//! `Duration`s, addresses are parsed. `parse.rs` produces these types from the TOML file;
//! `state/` turns them into the live snapshot that requests read.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::header_rules::HeaderRules;
use super::key_template::KeyTemplate;
use super::rate_limit_section::RateLimitConfig;

/// Defaults, in one place so the README, `config/upstream.toml` and the code agree.
pub mod defaults {
    use std::time::Duration;

    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
    /// The longest `header_timeout`, `keepalive_timeout` and `send_timeout` may be: each open
    /// connection keeps them as 32-bit milliseconds (see `listener::client_conn`).
    pub const CONNECTION_TIMEOUT_MAX: Duration = Duration::from_secs(49 * 24 * 3600);
    pub const CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const UPSTREAM_BODY_TIMEOUT: Duration = Duration::from_secs(60);
    /// Below Node.js's 5 s server keep-alive, so rproxy drops an idle pooled connection before
    /// the backend does and rarely meets one that the backend has just closed.
    pub const UPSTREAM_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(4);
    pub const UPSTREAM_KEEPALIVE_CONNECTIONS: usize = 32;
    pub const WEBSOCKET_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
    pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
    pub const MAX_WEIGHT: u32 = 1_000_000;
    pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);
    /// Request line plus headers, like HAProxy's default buffer.
    pub const MAX_HEADER_SIZE: usize = 32 * 1024;
    /// hyper's own default: keeping it lets hyper parse headers on the stack.
    pub const MAX_HEADERS: usize = 100;
    pub const MAX_URI_LENGTH: usize = 8 * 1024;
    pub const MAX_CONNECTIONS: usize = 10_000;
    pub const HTTP2_MAX_CONCURRENT_STREAMS: u32 = 100;
    /// Request bodies up to this size are kept for a retry.
    pub const RETRY_BUFFER: usize = 64 * 1024;
    /// Retries may add this fraction to a pool's request rate (Envoy's and linkerd's 20%).
    pub const RETRY_BUDGET: f32 = 0.2;
    /// How long a request waits in an upstream's queue for a free slot (nginx Plus's default).
    pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(60);
    /// How long one DNS query for a `resolve = true` server may take (`[resolver] timeout`).
    pub const RESOLVER_TIMEOUT: Duration = Duration::from_secs(5);
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this configuration was read from (error messages and reloads name it).
    pub source: PathBuf,
    /// Worker threads; `None` means one per core.
    pub workers: Option<usize>,
    /// `tracing` filter used when `RUST_LOG` is not set.
    pub log_level: Option<String>,
    pub drain_timeout: Duration,
    /// Where the process writes its pid (for `rproxy -s reload`); none by default.
    pub pid_file: Option<PathBuf>,
    /// Reload when the file changes, as on SIGHUP (`--watch` turns it on too).
    pub watch: bool,
    /// Peers whose `X-Forwarded-For` chain is believed and extended.
    pub trusted_proxies: Vec<IpNet>,
    pub listeners: BTreeMap<String, ListenerConfig>,
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`); none unless `[admin]` exists.
    pub admin: Option<AdminConfig>,
    pub log: LogConfig,
    /// `[resolver]`: the DNS servers asked for `resolve = true` servers.
    pub resolver: ResolverConfig,
    /// `[limits.NAME]`: request rate and concurrency limits per client, by name.
    pub rate_limits: BTreeMap<String, RateLimitConfig>,
}

/// `[resolver]`, nginx's `resolver` directive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverConfig {
    /// Name servers; empty: those of `/etc/resolv.conf`.
    pub addrs: Vec<SocketAddr>,
    /// Overrides the records' TTL (nginx's `valid=`); `None`: the TTL, within sane bounds.
    pub valid: Option<Duration>,
    /// One query's time limit.
    pub timeout: Duration,
    /// Ask for A records.
    pub ipv4: bool,
    /// Ask for AAAA records.
    pub ipv6: bool,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            addrs: Vec::new(),
            valid: None,
            timeout: defaults::RESOLVER_TIMEOUT,
            ipv4: true,
            ipv6: true,
        }
    }
}

/// `[log]`: where the access log goes and in which format.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogConfig {
    pub access: AccessTarget,
    pub format: AccessFormat,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AccessTarget {
    #[default]
    Stdout,
    Stderr,
    Off,
    /// Appended to; reopened on SIGUSR1 (for logrotate).
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessFormat {
    /// nginx's `combined`, then `key=value` fields for the backend, times and request id.
    #[default]
    Combined,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// When set, every admin request needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: Vec<SocketAddr>,
    /// The default route: the pool for requests no route matches (404 without one).
    pub upstream: Option<String>,
    /// Routes by host and path prefix, in file order.
    pub routes: Vec<RouteConfig>,
    /// HTTPS: the certificates served; `None` for plain HTTP.
    pub tls: Option<TlsConfig>,
    /// A plain listener answers every request with a 308 to the same URL over https.
    pub redirect_https: bool,
    /// Layer 4: balance raw TCP connections instead of HTTP requests.
    pub tcp: Option<TcpSettings>,
    /// Time allowed for a complete request head, from the first byte of it (or from accept).
    pub header_timeout: Duration,
    /// How long an idle client connection is kept open between requests.
    pub keepalive_timeout: Duration,
    /// Longest pause between two pieces of a request body from the client.
    pub body_timeout: Duration,
    /// Longest time a write to the client may stay blocked (a client that does not read).
    pub send_timeout: Duration,
    pub limits: RequestLimits,
    /// Open client connections at most; more wait in the kernel's accept queue.
    pub max_connections: usize,
    pub http2_max_concurrent_streams: u32,
    /// `limits = [...]`: the `[limits.NAME]` its requests are held to, unless a route names
    /// its own.
    pub rate_limits: Vec<String>,
    /// Header rules for every request of the listener (`[listeners.NAME.headers]`).
    pub headers: HeaderRules,
    /// `forwarded_headers`: the forwarding headers rproxy writes for the backend.
    pub forwarded_headers: ForwardedHeaders,
    /// `request_id`: give a request without a usable `X-Request-Id` one of rproxy's making.
    pub request_id: bool,
}

/// Which of the forwarding headers rproxy writes (`forwarded_headers`), one bit each. All of
/// them unless the listener says otherwise, as Caddy and Traefik write them; HAProxy's
/// `option forwardfor` and nginx's `proxy_set_header` lines choose them one by one instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardedHeaders(u8);

impl ForwardedHeaders {
    pub const FOR: u8 = 1;
    pub const REAL_IP: u8 = 1 << 1;
    pub const PROTO: u8 = 1 << 2;
    pub const HOST: u8 = 1 << 3;
    /// The names `forwarded_headers` takes, lowercase, with their bits.
    pub const NAMES: [(&'static str, u8); 4] = [
        ("x-forwarded-for", Self::FOR),
        ("x-real-ip", Self::REAL_IP),
        ("x-forwarded-proto", Self::PROTO),
        ("x-forwarded-host", Self::HOST),
    ];
    pub const ALL: ForwardedHeaders =
        ForwardedHeaders(Self::FOR | Self::REAL_IP | Self::PROTO | Self::HOST);
    pub const NONE: ForwardedHeaders = ForwardedHeaders(0);

    /// These headers and the one of `bit`.
    pub fn and(self, bit: u8) -> Self {
        ForwardedHeaders(self.0 | bit)
    }

    /// Whether rproxy writes the header of `bit`.
    pub fn writes(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

impl Default for ForwardedHeaders {
    fn default() -> Self {
        Self::ALL
    }
}

/// A listener's `tls`: the first certificate is the default (clients without SNI, or with a
/// name no entry lists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub certs: Vec<CertFiles>,
}

/// One certificate chain and its key, as PEM files, and the names it is chosen for by SNI
/// (exact names or `*.example.com`; empty: only as the default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub hosts: Vec<String>,
    /// Where it is in the file, for errors found when the files are read.
    pub origin: Origin,
}

/// A `protocol = "tcp"` listener's own settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSettings {
    /// Send a PROXY protocol header of this version (1 or 2) to the backend.
    pub send_proxy_protocol: Option<u8>,
    /// Read a PROXY protocol header (v1 or v2) from the client first.
    pub accept_proxy_protocol: bool,
    /// A connection with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// Move the bytes with splice(2), inside the kernel, where the system has it (Linux);
    /// through user-space buffers otherwise.
    pub splice: bool,
}

/// An upstream's `tls`: how its backends are reached over TLS and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendTlsConfig {
    /// PEM CA certificates to verify backends with; the system bundle when unset.
    pub ca: Option<PathBuf>,
    /// The name backend certificates must carry; the backend's IP address when unset.
    pub server_name: Option<String>,
    /// Accept any backend certificate (warned about at every load).
    pub insecure_skip_verify: bool,
    /// A client certificate and key for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub origin: Origin,
}

/// One `[[listeners.NAME.routes]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Lowercase, without a trailing dot; `*.example.com` for a wildcard; `None`: any host.
    pub host: Option<String>,
    /// Starts with `/`; `/` matches everything.
    pub path_prefix: String,
    pub upstream: String,
    /// Remove `path_prefix` from the path sent to the backend.
    pub strip_prefix: bool,
    /// `limits = [...]` on the route: these instead of the listener's; `None`: the listener's.
    pub rate_limits: Option<Vec<String>>,
    /// Header rules of this route (its `headers`).
    pub headers: HeaderRules,
}

/// What a client request may be, checked at the edge before anything is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Request line and headers together, in bytes (431 beyond).
    pub max_header_size: usize,
    /// Header lines (431 beyond).
    pub max_headers: usize,
    /// Request target length in bytes (414 beyond).
    pub max_uri_length: usize,
    /// Request body in bytes; `None` is unlimited (413 beyond).
    pub max_body_size: Option<u64>,
    /// Forward header names containing `_`; off by default, like nginx, because many
    /// frameworks read `X_Forwarded_For` and `X-Forwarded-For` as the same header.
    pub allow_underscores_in_headers: bool,
}

/// A bound on load relative to the average, above 1 (stored in thousandths so the config
/// stays `Eq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalanceFactor(pub u32);

impl BalanceFactor {
    pub fn get(self) -> f64 {
        f64::from(self.0) / 1000.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BalancePolicy {
    /// nginx's smooth weighted round-robin.
    RoundRobin,
    /// The fewest in-flight requests relative to weight (nginx's `least_conn`).
    LeastConn,
    /// The less loaded of two backends drawn at random by weight.
    RandomTwo,
    /// nginx's `ip_hash`: the same client address goes to the same backend.
    IpHash,
    /// nginx's `hash KEY [consistent]`, optionally with bounded loads.
    Hash {
        key: KeyTemplate,
        consistent: bool,
        /// With `consistent`: no backend takes more than this multiple of its share.
        balance_factor: Option<BalanceFactor>,
    },
}

impl BalancePolicy {
    pub const NAMES: &'static [&'static str] =
        &["round_robin", "least_conn", "random_two", "ip_hash", "hash"];

    pub fn name(&self) -> &'static str {
        match self {
            BalancePolicy::RoundRobin => "round_robin",
            BalancePolicy::LeastConn => "least_conn",
            BalancePolicy::RandomTwo => "random_two",
            BalancePolicy::IpHash => "ip_hash",
            BalancePolicy::Hash { .. } => "hash",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub name: String,
    pub balance: BalancePolicy,
    pub servers: Vec<ServerConfig>,
    pub connect_timeout: Duration,
    /// Time from sending the request to receiving the response head.
    pub response_timeout: Duration,
    /// Longest pause between two pieces of the response body from the backend.
    pub body_timeout: Duration,
    /// Idle pooled connections to a backend are closed after this long.
    pub keepalive_timeout: Duration,
    /// A WebSocket tunnel with no bytes either way for this long is closed.
    pub websocket_idle_timeout: Duration,
    /// Speak HTTP/2 to the backends, for gRPC-style services (prior knowledge, or ALPN over TLS).
    pub h2: bool,
    /// TLS to the backends.
    pub tls: Option<BackendTlsConfig>,
    /// Idle pooled connections kept per backend.
    pub keepalive_connections: usize,
    /// Sticky sessions by cookie, on top of the balancing policy.
    pub sticky: Option<StickyConfig>,
    /// Active health checks; none unless `[upstreams.NAME.health_check]` exists.
    pub health_check: Option<HealthCheckConfig>,
    /// When every backend is unhealthy: send to them anyway (`true`, the default) or answer 503.
    pub fail_open: bool,
    /// Passive health, as nginx's `max_fails` / `fail_timeout`.
    pub passive: PassiveHealth,
    /// When a failed request goes to another backend.
    pub retry: RetryPolicy,
    /// A backend that comes back ramps its share of requests up over this long.
    pub slow_start: Option<Duration>,
    /// Where requests wait when every backend they may go to is at its `max_conns`; `None`:
    /// they are answered 503 at once.
    pub queue: Option<QueueConfig>,
    /// Header rules for the requests sent to this pool (`[upstreams.NAME.headers]`).
    pub headers: HeaderRules,
}

/// `[upstreams.NAME.queue]`: requests waiting, first in first out, for a backend slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Requests (and TCP connections) waiting at most; one more is answered 503.
    pub size: NonZeroU32,
    /// A request that waited this long is answered 503.
    pub timeout: Duration,
}

/// How far a failed request may be retried on other backends.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per request, the first included; `None`: every candidate once.
    pub tries: Option<u32>,
    /// Total time across all attempts of one request; `None`: only the per-attempt timeouts.
    pub try_timeout: Option<Duration>,
    /// Retry a POST (or PATCH...) even after it reached a backend.
    pub non_idempotent: bool,
    /// A request body up to this size is kept so that the request can be sent again.
    pub buffer: usize,
    /// Retries may add at most this fraction to the request rate; `None`: no budget.
    pub budget: Option<f32>,
}

/// A backend that fails `max_fails` times within `fail_timeout` is left out for `fail_timeout`,
/// then one request probes it. `max_fails = 0` turns this off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassiveHealth {
    pub max_fails: u32,
    pub fail_timeout: Duration,
    /// Response statuses that count as failures (4xx never do).
    pub fail_on_status: Vec<u16>,
}

/// `[upstreams.NAME.health_check]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    /// `None`: a TCP connect check. `Some`: an HTTP GET of this path.
    pub http: Option<HttpCheck>,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Whether a backend counts as healthy before its first check.
    pub initially_healthy: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    pub path: String,
    /// Status ranges that pass, inclusive.
    pub expect_status: Vec<(u16, u16)>,
    pub expect_body: Option<String>,
    /// `Host` sent with the check; the backend's address when unset.
    pub host: Option<String>,
    /// Over HTTP/2, as the pool's requests are (`h2 = true` on the upstream).
    pub h2: bool,
    /// Other headers sent with the check.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// `[upstreams.NAME.sticky]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyConfig {
    pub cookie: String,
    /// `None`: a session cookie.
    pub max_age: Option<Duration>,
    pub path: String,
    pub domain: Option<String>,
    pub secure: bool,
    pub http_only: bool,
    /// `Lax`, `Strict` or `None`.
    pub same_site: String,
    /// Keys the backend ids, so values cannot be made without it.
    pub secret: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub addr: ServerAddr,
    pub weight: NonZeroU32,
    pub backup: bool,
    pub down: bool,
    /// Requests and TCP connections in flight to it at most, counted for the whole process:
    /// its own `max_conns`, else the upstream's. `None`: no limit.
    pub max_conns: Option<NonZeroU32>,
    /// `resolve = true`: the name is resolved again in the background when its records
    /// expire, with the `[resolver]`'s servers, and may resolve to nothing for a while.
    pub resolve: bool,
    /// Where the address was written, for errors found later (name resolution).
    pub origin: Origin,
}

/// A backend address as written: an IP literal, a name resolved at start (or, with
/// `resolve`, again and again), the name of SRV records (`service`, always with `resolve`), or
/// a Unix socket path (`unix:/run/app.sock`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerAddr {
    Ip(SocketAddr),
    Name {
        host: String,
        port: u16,
    },
    /// The SRV records' full name, such as `_http._tcp.app.service.consul`: targets and ports
    /// come from the records.
    Srv {
        name: String,
    },
    Unix(std::path::PathBuf),
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerAddr::Ip(addr) => write!(f, "{addr}"),
            ServerAddr::Name { host, port } => write!(f, "{host}:{port}"),
            ServerAddr::Srv { name } => write!(f, "{name}"),
            ServerAddr::Unix(path) => {
                write!(f, "{}{}", super::backend_addr::UNIX_PREFIX, path.display())
            }
        }
    }
}

/// A place in the configuration file: key path and 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    pub key: String,
    pub line: usize,
    pub column: usize,
}
