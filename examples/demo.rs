//! A self-contained demo: three app-server processes (simulated in-process on loopback, with
//! weights 2, 1, 1) behind rproxy, a few requests sent through it to show the smooth weighted
//! rotation, then rproxy keeps serving so you can try it with curl. Ctrl-C stops it.
//!
//!     cargo run --release --example demo            # keeps serving until Ctrl-C
//!     cargo run --release --example demo -- --once  # shows the rotation and exits

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// One demo app server: answers every request with its name.
async fn demo_backend(name: &'static str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                    let text = format!("hello from {name} (you asked for {})\n", req.uri());
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                });
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    eprintln!("{name}: connection error: {e}");
                }
            });
        }
    });
    Ok(addr)
}

fn config_text(listen: &str, backends: &[SocketAddr]) -> String {
    format!(
        r#"[listeners.web]
listen = "{listen}"
upstream = "app"

[upstreams.app]
balance = "round_robin"
servers = [
  {{ addr = "{}", weight = 2 }},
  "{}",
  "{}",
]
"#,
        backends[0], backends[1], backends[2]
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let once = std::env::args().any(|a| a == "--once");
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    let signals = rproxy::Signals::install()?;
    let backends = vec![
        demo_backend("app-1").await?,
        demo_backend("app-2").await?,
        demo_backend("app-3").await?,
    ];
    // Port 8080 if it is free, otherwise any free port.
    let mut text = config_text("127.0.0.1:8080", &backends);
    let server =
        match rproxy::Server::bind(rproxy::config::parse(Path::new("demo.toml"), &text)?).await {
            Ok(server) => server,
            Err(_) => {
                text = config_text("127.0.0.1:0", &backends);
                rproxy::Server::bind(rproxy::config::parse(Path::new("demo.toml"), &text)?).await?
            }
        };
    let addr = server.local_addrs()[0].1;
    println!("rproxy demo: three app servers, app-1 with weight 2, behind rproxy on {addr}\n");
    println!("The configuration it runs:\n\n{text}");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run_until(signals, async move {
        let _ = stop_rx.await;
    }));

    println!("Eight requests through rproxy (smooth weighted round-robin):");
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    for i in 1..=8 {
        let resp = client
            .get(format!("http://{addr}/demo/{i}").parse()?)
            .await?;
        let body = resp.into_body().collect().await?.to_bytes();
        print!("  request {i} -> {}", String::from_utf8_lossy(&body));
    }
    if once {
        let _ = stop_tx.send(());
    } else {
        println!("\nTry it yourself:  curl -s http://{addr}/   (Ctrl-C to stop)");
    }
    serving.await?;
    Ok(())
}
