//! `pingora_peer --tcp LISTEN BACKEND`: a layer-4 pass-through on Pingora, for
//! `benches/tcp_throughput.sh` (one TCP stream through each proxy's layer-4 mode). Pingora has no
//! ready TCP proxy, so this is the `ServerApp` of its own example (`pingora/examples/app/proxy.rs`:
//! a new upstream `Stream` from a `TransportConnector` for each client `Stream`, then copying both
//! ways) with two changes the benchmark needs. The example stops at the first end of file from
//! either side, dropping the other direction, where the benchmark's sink answers only after the
//! client half-closes; here a half-close is passed on (tokio's `copy_bidirectional` shuts the
//! other side's write half down) and the other direction goes on. And its 1 KiB buffers, a system
//! call per KiB, become 64 KiB a direction, as rproxy's `protocol = "tcp"` copies
//! (src/upstream/forward/stream.rs), so the two are compared on the same buffer size.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::connectors::TransportConnector;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora::services::listening::Service;
use pingora::upstreams::peer::BasicPeer;

/// Copy buffer per direction (rproxy's).
const BUFFER: usize = 64 * 1024;

pub struct TcpProxy {
    connector: TransportConnector,
    backend: BasicPeer,
}

#[async_trait]
impl ServerApp for TcpProxy {
    async fn process_new(
        self: &Arc<Self>,
        mut client: Stream,
        _shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // A backend that refuses, or a peer that resets, ends this connection only: nothing to
        // report to a client that speaks no protocol here.
        let mut backend = self.connector.new_stream(&self.backend).await.ok()?;
        let _ = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut backend, BUFFER, BUFFER)
            .await;
        None
    }
}

/// The service: LISTEN passed through to BACKEND, an address checked here (Pingora's
/// `BasicPeer::new` panics on one it cannot parse).
pub fn service(listen: &str, backend: &str) -> Result<Service<TcpProxy>, String> {
    backend
        .parse::<std::net::SocketAddr>()
        .map_err(|e| format!("backend {backend}: {e}"))?;
    let app = TcpProxy {
        connector: TransportConnector::new(None),
        backend: BasicPeer::new(backend),
    };
    let mut service = Service::new("TCP pass-through".to_string(), app);
    service.add_tcp(listen);
    Ok(service)
}
