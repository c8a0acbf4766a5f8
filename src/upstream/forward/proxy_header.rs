//! The PROXY protocol header (HAProxy's, versions 1 and 2) that a TCP listener's connection
//! sends its backend first (`send_proxy_protocol`), so the backend learns the client's address.
//! The listener reads the same header from a load balancer in front of it.

use std::net::{IpAddr, SocketAddr};

/// The first twelve bytes of a version 2 header.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// The header for a connection from `client` to `server` (the address the client reached).
pub fn header(version: u8, client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let (client, server) = same_family(client, server);
    if version == 1 {
        let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
        return format!(
            "PROXY {family} {} {} {} {}\r\n",
            client.ip(),
            server.ip(),
            client.port(),
            server.port()
        )
        .into_bytes();
    }
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21); // version 2, PROXY command
    match (client.ip(), server.ip()) {
        (IpAddr::V4(c), IpAddr::V4(s)) => {
            out.push(0x11); // TCP over IPv4
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&c.octets());
            out.extend_from_slice(&s.octets());
        }
        (c, s) => {
            out.push(0x21); // TCP over IPv6
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(c).octets());
            out.extend_from_slice(&v6(s).octets());
        }
    }
    out.extend_from_slice(&client.port().to_be_bytes());
    out.extend_from_slice(&server.port().to_be_bytes());
    out
}

fn v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Both addresses in one family, as the header requires: IPv6 if either is.
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if a.is_ipv4() == b.is_ipv4() {
        return (a, b);
    }
    let up = |s: SocketAddr| SocketAddr::new(IpAddr::V6(v6(s.ip())), s.port());
    (up(a), up(b))
}
