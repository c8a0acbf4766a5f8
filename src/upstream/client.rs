//! The pooled HTTP/1.1 client that carries requests to one pool's backends.
//!
//! One client per pool, so each pool's keep-alive settings apply to its own backends. hyper-util
//! keys idle connections by URI authority, which is the backend address, so reuse is per
//! backend. The idle timeout stays below the backend's own keep-alive (Node.js: 5 s) so a pooled
//! connection is normally closed by us first; when a backend closes one anyway just before
//! reuse, hyper-util sends the unwritten request again on a new connection
//! (`retry_canceled_requests`).

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tower::ServiceExt;
use tower::util::MapResponse;

use crate::config::UpstreamConfig;

use super::fair_io::UpstreamIo;
use super::request_body::UpstreamRequestBody;

/// hyper-util's connector, its connections wrapped so they yield (see `fair_io`).
pub(crate) type UpstreamConnector =
    MapResponse<HttpConnector, fn(TokioIo<TcpStream>) -> UpstreamIo>;

pub(crate) type UpstreamClient = Client<UpstreamConnector, UpstreamRequestBody>;

pub(crate) fn build_client(config: &UpstreamConfig) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.connect_timeout));
    connector.set_nodelay(true);
    connector.set_keepalive(Some(std::time::Duration::from_secs(60)));
    Client::builder(TokioExecutor::new())
        .http2_only(config.h2)
        .pool_idle_timeout(config.keepalive_timeout)
        .pool_max_idle_per_host(config.keepalive_connections)
        // Without a timer, idle connections are only dropped when next checked out.
        .pool_timer(TokioTimer::new())
        // The client's own Host header is forwarded, not one made from the backend address.
        .set_host(false)
        .retry_canceled_requests(true)
        .build(connector.map_response(UpstreamIo::new as fn(_) -> _))
}
