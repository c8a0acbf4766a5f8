//! Load tools for the benchmark scripts: single-stream TCP throughput
//! (`benches/tcp_throughput.sh`) and idle keep-alive connections, plain or HTTPS
//! (`benches/compare/run.sh`, `benches/idle_tls.sh`).
//!
//!     tcp_bench serve              # a sink on 127.0.0.1:0: prints `listening ADDR`, then for
//!                                  # each connection reads to the end and answers the count
//!     tcp_bench send ADDR BYTES    # sends BYTES on one connection, waits for the count,
//!                                  # prints `BYTES SECONDS MiB/s`
//!     tcp_bench port               # prints a free port on 127.0.0.1
//!     tcp_bench idle ADDR N [CA] [--silent]
//!                                  # opens N keep-alive HTTP connections, one GET on each,
//!                                  # prints `ready` and holds them until killed; with CA (a PEM
//!                                  # file) they are HTTPS to `localhost`, trusting that cert;
//!                                  # with --silent no GET (HTTPS: the handshake only), as a
//!                                  # browser's preconnect or a port scanner leaves them
//!     tcp_bench cert DIR           # writes a self-signed cert for localhost to DIR: cert.pem,
//!                                  # key.pem, and both.pem (the two together, for HAProxy)

use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve().await,
        Some("send") => {
            let addr = args
                .get(1)
                .ok_or_else(|| anyhow::anyhow!("send ADDR BYTES"))?;
            let bytes: u64 = args
                .get(2)
                .ok_or_else(|| anyhow::anyhow!("send ADDR BYTES"))?
                .parse()?;
            send(addr, bytes).await
        }
        Some("port") => {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            println!("{}", l.local_addr()?.port());
            Ok(())
        }
        Some("idle") => {
            let addr = args.get(1).ok_or_else(|| anyhow::anyhow!("idle ADDR N"))?;
            let n: usize = args
                .get(2)
                .ok_or_else(|| anyhow::anyhow!("idle ADDR N"))?
                .parse()?;
            let rest = &args[3.min(args.len())..];
            let silent = rest.iter().any(|a| a == "--silent");
            let ca = rest.iter().find(|a| *a != "--silent").map(String::as_str);
            idle(addr, n, ca, silent).await
        }
        Some("cert") => cert(args.get(1).ok_or_else(|| anyhow::anyhow!("cert DIR"))?),
        _ => anyhow::bail!(
            "usage: tcp_bench serve | send ADDR BYTES | port | idle ADDR N [CA] [--silent] | cert DIR"
        ),
    }
}

async fn serve() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("listening {}", listener.local_addr()?);
    loop {
        let (mut s, _) = listener.accept().await?;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0u64;
            loop {
                match s.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(_) => return,
                }
            }
            let _ = s.write_all(format!("{total}\n").as_bytes()).await;
        });
    }
}

async fn send(addr: &str, bytes: u64) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let chunk = vec![0x5au8; 256 * 1024];
    let started = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    s.shutdown().await?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).await?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        answer.trim() == bytes.to_string(),
        "the sink counted {answer:?}, not {bytes}"
    );
    println!(
        "{bytes} {seconds:.3} {:.0}",
        bytes as f64 / seconds / 1_048_576.0
    );
    Ok(())
}

/// Opens `n` connections, each answering one keep-alive GET, then holds them all open. With
/// `ca`, each is HTTPS (a full TLS handshake) to a server whose certificate is that file.
/// `silent`: no GET, the connection (and handshake) only.
async fn idle(addr: &str, n: usize, ca: Option<&str>, silent: bool) -> anyhow::Result<()> {
    let tls = ca.map(connector).transpose()?;
    let (mut plain, mut secure) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let tcp = TcpStream::connect(addr).await?;
        // As browsers and curl do: without it, the request written after the client's
        // Finished waits for a delayed ACK (40 ms) under Nagle's algorithm.
        tcp.set_nodelay(true)?;
        match &tls {
            None if silent => plain.push(tcp),
            None => plain.push(answered(tcp).await?),
            Some(tls) => {
                let name = ServerName::try_from("localhost")?;
                let s = tls.connect(name, tcp).await?;
                secure.push(if silent { s } else { answered(s).await? });
            }
        }
    }
    println!("ready {}", plain.len() + secure.len());
    std::future::pending::<()>().await;
    Ok(())
}

/// `s` after one GET on it was answered with the backends' 12-byte body.
async fn answered<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> anyhow::Result<S> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        .await?;
    let mut buf = [0u8; 1024];
    let mut got = Vec::new();
    // Read until the 12-byte body has arrived after the head.
    while !got.ends_with(b"hello world\n") {
        let k = s.read(&mut buf).await?;
        anyhow::ensure!(k > 0, "closed before an answer");
        got.extend_from_slice(&buf[..k]);
    }
    Ok(s)
}

/// A TLS client trusting only the certificate in the PEM file `ca`.
fn connector(ca: &str) -> anyhow::Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(ca)?)?;
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A self-signed certificate for `localhost` and its key, as PEM files in `dir`.
fn cert(dir: &str) -> anyhow::Result<()> {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let (cert, key) = (cert.pem(), signing_key.serialize_pem());
    std::fs::write(format!("{dir}/cert.pem"), &cert)?;
    std::fs::write(format!("{dir}/key.pem"), &key)?;
    std::fs::write(format!("{dir}/both.pem"), cert + &key)?;
    Ok(())
}
