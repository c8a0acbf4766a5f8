//! A small Pingora proxy, for `benches/compare/run.sh` and `benches/instructions.sh`: the Rust
//! proxy framework users would pick instead of rproxy, set up as the other systems there are.
//!
//!     pingora_peer [--tls CERT KEY TLS_LISTEN] LISTEN BACKEND BACKEND
//!     pingora_peer --tcp LISTEN BACKEND
//!
//! A `ProxyHttp` with a `LoadBalancer<RoundRobin>` over the backends, kept-alive upstream
//! connections (Pingora's pool, made big enough for 200 requests in flight), `X-Forwarded-For`
//! appended, one worker thread, no daemon, no health checks; HTTP/1 and cleartext HTTP/2 with
//! prior knowledge on the one port, as rproxy serves them. With `--tls` (the `rustls` feature:
//! `benches/compare/build_pingora.sh tls`) it also serves HTTPS on TLS_LISTEN: rustls with its
//! `ring` provider, TLS 1.2 and 1.3, ALPN h2 and http/1.1. With `--tcp`, a layer-4 pass-through
//! to one backend instead (tcp.rs). `PINGORA_THREADS=N` gives it N worker threads (Pingora's
//! work-stealing runtime, its default) for the harness's two-worker rows; 1 when unset. Built by
//! `benches/compare/build_pingora.sh`. Not a product; a measuring stick.

mod tcp;

use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::http::RequestHeader;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::prelude::{HttpPeer, Result, Server};
use pingora::proxy::{ProxyHttp, ProxyServiceBuilder, Session};
use pingora::server::configuration::ServerConf;

struct Lb(Arc<LoadBalancer<RoundRobin>>);

#[async_trait]
impl ProxyHttp for Lb {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        // Round-robin ignores the key; with no health checks every backend is a candidate, so
        // one iteration always finds one.
        let backend = self.0.select(b"", 1).ok_or_else(|| {
            pingora::Error::explain(pingora::ErrorType::ConnectNoRoute, "no backend")
        })?;
        Ok(Box::new(HttpPeer::new(backend, false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        let Some(client) = session.client_addr().and_then(|a| a.as_inet()) else {
            return Ok(());
        };
        let client = client.ip().to_string();
        // Appended to what the client sent, as nginx's $proxy_add_x_forwarded_for does.
        let value = match upstream_request.headers.get("x-forwarded-for") {
            Some(sent) => format!("{}, {client}", String::from_utf8_lossy(sent.as_bytes())),
            None => client,
        };
        upstream_request.insert_header("x-forwarded-for", value)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let conf = server_conf();
    if let [flag, listen, backend] = args.as_slice() {
        if flag == "--tcp" {
            let service = match tcp::service(listen, backend) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("pingora_peer: {e}");
                    std::process::exit(2);
                }
            };
            let mut server = Server::new_with_opt_and_conf(None, conf);
            server.bootstrap();
            server.add_service(service);
            server.run_forever();
        }
    }
    let (tls, rest) = match args.as_slice() {
        [flag, cert, key, tls_listen, rest @ ..] if flag == "--tls" => {
            (Some((cert, key, tls_listen)), rest)
        }
        rest => (None, rest),
    };
    let [listen, b1, b2] = rest else {
        eprintln!(
            "usage: pingora_peer [--tls CERT KEY TLS_LISTEN] LISTEN BACKEND BACKEND\n       pingora_peer --tcp LISTEN BACKEND"
        );
        std::process::exit(2);
    };
    let upstreams = match LoadBalancer::try_from_iter([b1.as_str(), b2.as_str()]) {
        Ok(lb) => lb,
        Err(e) => {
            eprintln!("pingora_peer: backends {b1} {b2}: {e}");
            std::process::exit(2);
        }
    };

    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    let mut proxy = ProxyServiceBuilder::new(&server.configuration, Lb(Arc::new(upstreams)))
        .server_options(options)
        .build();
    proxy.add_tcp(listen);
    if let Some((cert, key, tls_listen)) = tls {
        add_tls(&mut proxy, tls_listen, cert, key);
    }
    server.add_service(proxy);
    server.run_forever();
}

/// The server's settings, the same for every mode.
fn server_conf() -> ServerConf {
    let mut conf = ServerConf::default();
    // One worker thread, as every system in the harness has, unless PINGORA_THREADS asks for
    // more (run.sh's two-worker rows). Pingora adds threads of its own: the main one waiting for
    // signals on a runtime of one thread ("Server"), and pingora-timeout's "Timer thread", which
    // wakes every 10 ms, loaded or idle (benches/census.sh counts its sleeps).
    conf.threads = match std::env::var("PINGORA_THREADS") {
        Err(_) => 1,
        Ok(n) => match n.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("pingora_peer: PINGORA_THREADS={n}: not a thread count");
                std::process::exit(2);
            }
        },
    };
    // Pingora's pool holds 128 idle upstream connections by default, fewer than 200 requests in
    // flight need; 512 as nginx's `keepalive 512` in the harness.
    conf.upstream_keepalive_pool_size = 512;
    // SIGTERM ends the process at once (the default grace period is 5 minutes), so that the
    // harness and valgrind (benches/instructions.sh) see it exit.
    conf.grace_period_seconds = Some(0);
    conf.graceful_shutdown_timeout_seconds = Some(1);
    conf
}

/// An HTTPS listener on LISTEN. Pingora reads CERT and KEY when the service starts and panics if
/// it cannot, so that they exist is checked here first, for a plain error instead.
#[cfg(feature = "rustls")]
fn add_tls<A>(
    proxy: &mut pingora::services::listening::Service<A>,
    listen: &str,
    cert: &str,
    key: &str,
) {
    for file in [cert, key] {
        if let Err(e) = std::fs::metadata(file) {
            eprintln!("pingora_peer: {file}: {e}");
            std::process::exit(2);
        }
    }
    let mut settings = match pingora::listeners::tls::TlsSettings::intermediate(cert, key) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pingora_peer: {cert} {key}: {e}");
            std::process::exit(2);
        }
    };
    settings.enable_h2();
    proxy.add_tls_with_settings(listen, None, settings);
}

#[cfg(not(feature = "rustls"))]
fn add_tls<A>(_: &mut pingora::services::listening::Service<A>, _: &str, _: &str, _: &str) {
    eprintln!(
        "pingora_peer: --tls needs the rustls feature (benches/compare/build_pingora.sh tls)"
    );
    std::process::exit(2);
}
