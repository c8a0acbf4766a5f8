//! The PROXY protocol (HAProxy's, versions 1 and 2) on the way in: the header a load balancer
//! in front of a listener sends to tell the client's address. (The header rproxy itself sends
//! a backend is written in `upstream`.)

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::upstream::PROXY_V2_SIGNATURE as V2_SIGNATURE;

/// The longest v1 line: "PROXY TCP6 " + two addresses + two ports + "\r\n".
const V1_MAX: usize = 107;

/// Reads one PROXY header (v1 or v2) from the start of `stream`, leaving the bytes after it
/// unread; returns the client address it names (`None` for `UNKNOWN` / `LOCAL`).
pub(super) async fn read_header(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<Option<SocketAddr>, String> {
    tokio::time::timeout(timeout, read(stream))
        .await
        .unwrap_or_else(|_| Err(format!("no PROXY header within {timeout:?}")))
}

async fn read(stream: &mut TcpStream) -> Result<Option<SocketAddr>, String> {
    let mut peeked = [0u8; V1_MAX];
    let n = loop {
        let n = stream.peek(&mut peeked).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before a PROXY header".into());
        }
        let enough = peeked[..n].contains(&b'\n') || n >= 16 || n == V1_MAX;
        if enough {
            break n;
        }
        // Not all of it has arrived yet (rare: it is one small packet). Peeking does not clear
        // readiness, so wait a moment rather than spin on it.
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    if peeked[..n.min(12)] == V2_SIGNATURE[..n.min(12)] && n >= 16 {
        let len = usize::from(u16::from_be_bytes([peeked[14], peeked[15]]));
        let mut whole = vec![0u8; 16 + len];
        stream
            .read_exact(&mut whole)
            .await
            .map_err(|e| e.to_string())?;
        return parse_v2(&whole);
    }
    if peeked.starts_with(b"PROXY ") {
        let end = peeked[..n]
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("PROXY v1 line longer than 107 bytes or not ended by CRLF")?;
        let mut line = vec![0u8; end + 2];
        stream
            .read_exact(&mut line)
            .await
            .map_err(|e| e.to_string())?;
        return parse_v1(&line[..end]);
    }
    Err("the connection does not start with a PROXY protocol header".into())
}

fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, String> {
    let text = std::str::from_utf8(line).map_err(|_| "PROXY v1 line is not text")?;
    let fields: Vec<&str> = text.split(' ').collect();
    match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(None),
        ["PROXY", "TCP4" | "TCP6", src, _dst, sport, _dport] => {
            let ip: IpAddr = src.parse().map_err(|_| format!("bad source `{src}`"))?;
            let port: u16 = sport.parse().map_err(|_| format!("bad port `{sport}`"))?;
            Ok(Some(SocketAddr::new(ip, port)))
        }
        _ => Err(format!("malformed PROXY v1 line `{text}`")),
    }
}

fn parse_v2(header: &[u8]) -> Result<Option<SocketAddr>, String> {
    let (command, family, body) = (header[12], header[13], &header[16..]);
    if command >> 4 != 2 {
        return Err("PROXY v2 header with an unknown version".into());
    }
    if command & 0x0F == 0 {
        return Ok(None); // LOCAL: a health check from the balancer itself
    }
    match family {
        0x11 if body.len() >= 12 => {
            let ip = std::net::Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Ok(Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([body[8], body[9]]),
            )))
        }
        0x21 if body.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            let ip = std::net::Ipv6Addr::from(octets);
            let port = u16::from_be_bytes([body[32], body[33]]);
            Ok(Some(SocketAddr::new(ip.to_canonical(), port)))
        }
        _ => Ok(None), // UNSPEC or a family without an address we use
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::proxy_header as header;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn v1_round_trips() {
        let h = header(1, addr("203.0.113.7:4000"), addr("10.0.0.1:6432"));
        assert_eq!(h, b"PROXY TCP4 203.0.113.7 10.0.0.1 4000 6432\r\n");
        let line = &h[..h.len() - 2];
        assert_eq!(parse_v1(line), Ok(Some(addr("203.0.113.7:4000"))));
        let h6 = header(1, addr("[2001:db8::1]:5"), addr("127.0.0.1:6"));
        assert!(h6.starts_with(b"PROXY TCP6 2001:db8::1 ::ffff:127.0.0.1 5 6"));
        assert_eq!(parse_v1(b"PROXY UNKNOWN"), Ok(None));
        assert!(parse_v1(b"PROXY TCP4 nonsense").is_err());
    }

    #[test]
    fn v2_round_trips() {
        for (client, server) in [
            ("203.0.113.7:4000", "10.0.0.1:6432"),
            ("[2001:db8::7]:4000", "[2001:db8::1]:443"),
        ] {
            let h = header(2, addr(client), addr(server));
            assert_eq!(&h[..12], V2_SIGNATURE);
            let len = usize::from(u16::from_be_bytes([h[14], h[15]]));
            assert_eq!(h.len(), 16 + len);
            assert_eq!(parse_v2(&h), Ok(Some(addr(client))));
        }
        let mut local = header(2, addr("1.2.3.4:5"), addr("5.6.7.8:9"));
        local[12] = 0x20;
        assert_eq!(parse_v2(&local), Ok(None));
    }
}
