//! Binding listen sockets with the options a server needs.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

const BACKLOG: i32 = 1024;

/// Binds `addr` for accepting: `SO_REUSEADDR` so a restart does not wait for old sockets in
/// TIME_WAIT, and IPv6 sockets are IPv6-only so `0.0.0.0:80` and `[::]:80` can both be listed.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Connections waiting in a listening socket's accept queue, from `/proc/net/tcp` (the
/// receive-queue column of a listening socket is its accept backlog). `None` where that is not
/// available.
pub(super) fn accept_queue_len(addr: SocketAddr) -> Option<u64> {
    let (table, local) = match addr {
        SocketAddr::V4(a) => (
            "/proc/net/tcp",
            format!(
                "{:08X}:{:04X}",
                u32::from_le_bytes(a.ip().octets()),
                a.port()
            ),
        ),
        SocketAddr::V6(a) => {
            let o = a.ip().octets();
            let words: String = o
                .chunks(4)
                .map(|w| format!("{:08X}", u32::from_le_bytes([w[0], w[1], w[2], w[3]])))
                .collect();
            ("/proc/net/tcp6", format!("{words}:{:04X}", a.port()))
        }
    };
    let text = std::fs::read_to_string(table).ok()?;
    text.lines().skip(1).find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_slot, addr, _remote, state, queues) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        // State 0A is LISTEN; queues are "tx:rx" in hex.
        if addr != local || state != "0A" {
            return None;
        }
        u64::from_str_radix(queues.split(':').nth(1)?, 16).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_the_accept_queue_of_a_listening_socket() {
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        assert_eq!(accept_queue_len(addr), Some(0));
        let _waiting = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut n = None;
        for _ in 0..200 {
            n = accept_queue_len(addr);
            if n == Some(1) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(n, Some(1));
    }
}
