//! The pooled client that carries requests to one pool's backends: HTTP/1.1, or HTTP/2 for an
//! `h2` pool, over plain TCP or TLS.
//!
//! One client per pool, so each pool's keep-alive and TLS settings apply to its own backends
//! and connections are never shared across trust settings. hyper-util keys idle connections
//! by URI authority, which is the backend address, so reuse is per backend. The idle timeout
//! stays below the backend's own keep-alive (Node.js: 5 s) so a pooled connection is normally
//! closed by us first; when a backend closes one anyway just before reuse, hyper-util sends the
//! unwritten request again on a new connection (`retry_canceled_requests`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio_util::either::Either;
use tower::Service;

use crate::config::UpstreamConfig;

use super::backend_tls::BackendTls;
use super::fair_io::UpstreamIo;
use super::request_body::UpstreamRequestBody;

pub(crate) type UpstreamClient = Client<UpstreamConnector, UpstreamRequestBody>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// hyper-util's TCP connector, then TLS when the pool has it; connections wrapped so they
/// yield (see `fair_io`).
#[derive(Debug, Clone)]
pub(crate) struct UpstreamConnector {
    tcp: HttpConnector,
    tls: Option<Arc<BackendTls>>,
}

impl Service<Uri> for UpstreamConnector {
    type Response = UpstreamIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.tcp.call(uri);
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            let stream = match tls {
                Some(tls) => {
                    let ip = tcp.peer_addr()?.ip();
                    tls.connect(ip, tcp).await?
                }
                None => Either::Left(tcp),
            };
            Ok(UpstreamIo::new(stream))
        })
    }
}

pub(crate) fn build_client(
    config: &UpstreamConfig,
    tls: Option<Arc<BackendTls>>,
) -> UpstreamClient {
    let mut tcp = HttpConnector::new();
    tcp.set_connect_timeout(Some(config.connect_timeout));
    tcp.set_nodelay(true);
    tcp.set_keepalive(Some(std::time::Duration::from_secs(60)));
    // The URIs say http://; TLS is the connector's business, not the scheme's.
    tcp.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .http2_only(config.h2)
        .pool_idle_timeout(config.keepalive_timeout)
        .pool_max_idle_per_host(config.keepalive_connections)
        // Without a timer, idle connections are only dropped when next checked out.
        .pool_timer(TokioTimer::new())
        // The client's own Host header is forwarded, not one made from the backend address.
        .set_host(false)
        .retry_canceled_requests(true)
        .build(UpstreamConnector { tcp, tls })
}
