//! Single-stream TCP throughput, for `benches/tcp_throughput.sh`.
//!
//!     tcp_bench serve              # a sink on 127.0.0.1:0: prints `listening ADDR`, then for
//!                                  # each connection reads to the end and answers the count
//!     tcp_bench send ADDR BYTES    # sends BYTES on one connection, waits for the count,
//!                                  # prints `BYTES SECONDS MiB/s`
//!     tcp_bench port               # prints a free port on 127.0.0.1
//!     tcp_bench idle ADDR N        # opens N keep-alive HTTP connections, one GET on each,
//!                                  # prints `ready` and holds them until killed

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
            idle(addr, n).await
        }
        _ => anyhow::bail!("usage: tcp_bench serve | send ADDR BYTES | port | idle ADDR N"),
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

/// Opens `n` connections, each answering one keep-alive GET, then holds them all open.
async fn idle(addr: &str, n: usize) -> anyhow::Result<()> {
    let mut open = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await?;
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
        open.push(s);
    }
    println!("ready {}", open.len());
    std::future::pending::<()>().await;
    Ok(())
}
