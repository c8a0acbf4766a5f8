//! systemd's readiness notifications (`sd_notify`), beside the request path: with
//! `Type=notify` systemd counts the service started when rproxy says `READY=1` (every listener
//! serving), and hears `STOPPING=1` when it drains. With `NotifyAccess=all`, the new process of
//! a binary upgrade says `MAINPID=` with its own pid when it takes over, so systemd follows it
//! rather than taking the old process's exit for the end of the service (and stopping the
//! new one with it). Without `NOTIFY_SOCKET` in the environment (not under systemd) nothing is
//! sent.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (`KEY=value` lines) to systemd, if it listens; a failure is logged.
pub(super) fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|socket| {
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            // An abstract socket: its name follows the `@`.
            Some(name) => {
                let addr =
                    <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr)
            }
            None => socket.send_to(state.as_bytes(), &path),
        }
    });
    if let Err(e) = sent {
        tracing::warn!(socket = ?path, error = %e, "cannot notify systemd");
    }
}
