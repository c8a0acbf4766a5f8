//! The least a hyper-based HTTP/1 proxy does, for `benches/compare/run.sh`: the floor under
//! rproxy's cost per request, since rproxy is built on the same hyper server and client.
//!
//!     hyper_floor LISTEN BACKEND [BACKEND ...]
//!
//! Round-robin over the backends, kept-alive upstream connections, `X-Forwarded-For` set,
//! nothing else: no timeouts, no health, no retries, no limits, no metrics, no header
//! hygiene. Not a product; a measuring stick.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

// The same allocator as `rproxy`.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Backend {
    addr: SocketAddr,
    idle: Mutex<Vec<SendRequest<Incoming>>>,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, backends) = args
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("usage: hyper_floor LISTEN BACKEND [BACKEND ...]"))?;
    let listen: SocketAddr = listen.parse()?;
    let backends: Vec<Backend> = backends
        .iter()
        .map(|b| {
            Ok(Backend {
                addr: b.parse()?,
                idle: Mutex::new(Vec::new()),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(!backends.is_empty(), "no backend");
    let backends = Arc::new(backends);
    let next = Arc::new(AtomicUsize::new(0));
    // The same runtime as `rproxy` with `workers = 1` (thread per core: tokio's
    // single-threaded runtime); FLOOR_RUNTIME=multi_thread for the multi-threaded one with one
    // worker, as `rproxy` ran before.
    let mut runtime = if std::env::var("FLOOR_RUNTIME").as_deref() == Ok("multi_thread") {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(1);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    runtime.enable_all().build()?.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        loop {
            let (stream, peer) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let (backends, next) = (Arc::clone(&backends), Arc::clone(&next));
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let i = next.fetch_add(1, Ordering::Relaxed) % backends.len();
                    proxy(Arc::clone(&backends), i, peer, req)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

async fn proxy(
    backends: Arc<Vec<Backend>>,
    i: usize,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> anyhow::Result<Response<Incoming>> {
    let backend = &backends[i];
    if let Ok(v) = HeaderValue::try_from(peer.ip().to_string()) {
        req.headers_mut().insert("x-forwarded-for", v);
    }
    let pooled = backend.idle.lock().ok().and_then(|mut idle| idle.pop());
    let mut sender = match pooled {
        Some(s) if !s.is_closed() => s,
        _ => {
            let tcp = TcpStream::connect(backend.addr).await?;
            tcp.set_nodelay(true)?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            sender
        }
    };
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    // Given back at once: the next request waits in `ready` until this body is through.
    if let Ok(mut idle) = backend.idle.lock() {
        idle.push(sender);
    }
    Ok(resp)
}
