//! Listening sockets this process did not bind itself: handed over by the rproxy it replaces
//! (a binary upgrade, `rproxy -s upgrade`) or by systemd's socket activation. Before the
//! first request: `main` adopts them at start, and binding (`ListenerSet::plan`, the admin
//! listener) takes a matching one instead of binding the address again, so a port that is
//! handed over is never closed.
//!
//! Both hand-overs use systemd's convention: the sockets are file descriptors 3, 4, ... of
//! the new process and `LISTEN_FDS` says how many. systemd also sets `LISTEN_PID` to the pid
//! it started (an inherited variable meant for another process is ignored) and may name them
//! in `LISTEN_FDNAMES`; rproxy matches systemd's sockets to listeners by local address. A
//! binary upgrade cannot know the new pid before it runs, so it sets no `LISTEN_PID` but
//! `RPROXY_HANDOVER` instead: for each descriptor, the listener and the address as the old
//! process's file wrote it (so `127.0.0.1:0` finds its socket whatever port it got), and the
//! last descriptor is a Unix socket to the old process (the take-over channel, `channel`).
//!
//! Adopting a raw descriptor number needs `unsafe`, which this crate forbids: the `listenfd`
//! crate does it (and checks that each is a socket of the right kind).

use std::net::SocketAddr;
use std::os::unix::net::UnixStream;

/// The variable a binary upgrade describes its descriptors in (JSON, see [`Handover`]).
pub const HANDOVER_ENV: &str = "RPROXY_HANDOVER";

/// What the old process says about the descriptors it passes (fd 3 + index).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Handover {
    /// One per listening socket, in descriptor order.
    pub sockets: Vec<HandedSocket>,
    /// Whether one more descriptor follows the sockets: the take-over channel.
    pub channel: bool,
}

/// One listening socket of the old process.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HandedSocket {
    /// The listener it served; `None`: the admin listener.
    pub listener: Option<String>,
    /// Its address as the old process's file wrote it.
    pub configured: SocketAddr,
}

/// Who the socket was for, as far as the sender said.
#[derive(Debug)]
enum Origin {
    /// The old rproxy's socket for this listener (`None`: the admin listener).
    Upgrade(Option<String>, SocketAddr),
    /// systemd's, with its `FileDescriptorName=` if any.
    Systemd(Option<String>),
}

#[derive(Debug)]
struct Adopted {
    origin: Origin,
    local: SocketAddr,
    socket: std::net::TcpListener,
}

/// The sockets handed to this process and not yet taken by a listener.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: Vec<Adopted>,
    /// A binary upgrade's channel to the old process.
    pub channel: Option<UnixStream>,
}

impl Inherited {
    /// Nothing inherited: every address is bound.
    pub fn none() -> Inherited {
        Inherited::default()
    }

    /// Adopts the descriptors passed to this process, if any. Call before any thread starts:
    /// it takes the `LISTEN_*` variables out of the environment (child processes must not see
    /// them). An error names what was wrong; nothing has been served then.
    pub fn from_env() -> Result<Inherited, String> {
        let handover = match std::env::var(HANDOVER_ENV) {
            Ok(text) => Some(
                serde_json::from_str::<Handover>(&text)
                    .map_err(|e| format!("{HANDOVER_ENV}: {e}"))?,
            ),
            Err(_) => None,
        };
        let for_us = std::env::var("LISTEN_PID")
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            == Some(std::process::id());
        if handover.is_none() && !for_us {
            // Not ours (or none): systemd's variables name another process.
            return Ok(Inherited::none());
        }
        let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
            .map(|n| n.split(':').map(str::to_string).collect())
            .unwrap_or_default();
        let mut fds = listenfd::ListenFd::from_env();
        let mut out = Inherited::none();
        let handed = handover.as_ref().map_or(&[][..], |h| &h.sockets[..]);
        let sockets = if handover.is_some() {
            handed.len()
        } else {
            fds.len()
        };
        if handover.is_some() && fds.len() != sockets + usize::from(handover_channel(&handover)) {
            return Err(format!(
                "{HANDOVER_ENV} describes {} descriptors but LISTEN_FDS is {}",
                sockets + usize::from(handover_channel(&handover)),
                fds.len()
            ));
        }
        for i in 0..sockets {
            let socket = fds
                .take_tcp_listener(i)
                .map_err(|e| format!("inherited descriptor {}: {e}", i + 3))?
                .ok_or_else(|| format!("inherited descriptor {} is missing", i + 3))?;
            socket
                .set_nonblocking(true)
                .map_err(|e| format!("inherited descriptor {}: {e}", i + 3))?;
            let local = socket
                .local_addr()
                .map_err(|e| format!("inherited descriptor {}: {e}", i + 3))?;
            let origin = match handed.get(i) {
                Some(h) => Origin::Upgrade(h.listener.clone(), h.configured),
                None => Origin::Systemd(names.get(i).filter(|n| !n.is_empty()).cloned()),
            };
            out.sockets.push(Adopted {
                origin,
                local,
                socket,
            });
        }
        if handover_channel(&handover) {
            // A connected Unix stream socket passes listenfd's check for a Unix listener (it
            // only looks at the family and type); it is used as the stream it is.
            let channel = fds
                .take_unix_listener(sockets)
                .map_err(|e| format!("take-over channel (descriptor {}): {e}", sockets + 3))?
                .ok_or_else(|| "the take-over channel is missing".to_string())?;
            out.channel = Some(UnixStream::from(std::os::fd::OwnedFd::from(channel)));
        }
        Ok(out)
    }

    /// Whether anything was handed over.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty() && self.channel.is_none()
    }

    /// The inherited socket for `listener`'s address `addr`, if one was handed over.
    pub fn take_listener(
        &mut self,
        listener: &str,
        addr: SocketAddr,
    ) -> Option<std::net::TcpListener> {
        self.take(Some(listener), addr)
    }

    /// The inherited socket for the admin listener at `addr`, if one was handed over.
    pub fn take_admin(&mut self, addr: SocketAddr) -> Option<std::net::TcpListener> {
        self.take(None, addr)
    }

    /// First the old process's socket for the same listener and configured address; else any
    /// socket bound to exactly `addr` (systemd's, or an old listener's under another name).
    fn take(&mut self, listener: Option<&str>, addr: SocketAddr) -> Option<std::net::TcpListener> {
        let same = self.sockets.iter().position(|s| {
            matches!(&s.origin, Origin::Upgrade(l, c) if l.as_deref() == listener && *c == addr)
        });
        let found = same.or_else(|| {
            (addr.port() != 0)
                .then(|| self.sockets.iter().position(|s| s.local == addr))
                .flatten()
        })?;
        let adopted = self.sockets.swap_remove(found);
        tracing::info!(
            listener = listener.unwrap_or("admin"),
            addr = %adopted.local,
            from = adopted.origin.describe(),
            "listening on an inherited socket"
        );
        Some(adopted.socket)
    }

    /// Closes the sockets no listener took (the new file no longer has their address).
    pub fn close_unused(&mut self) {
        for s in self.sockets.drain(..) {
            tracing::info!(addr = %s.local, from = s.origin.describe(), "inherited socket not in the configuration; closed");
        }
    }
}

fn handover_channel(handover: &Option<Handover>) -> bool {
    handover.as_ref().is_some_and(|h| h.channel)
}

impl Origin {
    fn describe(&self) -> String {
        match self {
            Origin::Upgrade(_, _) => "the previous rproxy".to_string(),
            Origin::Systemd(Some(name)) => format!("systemd ({name})"),
            Origin::Systemd(None) => "systemd".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adopted(origin: Origin) -> Adopted {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        Adopted {
            origin,
            local: socket.local_addr().expect("addr"),
            socket,
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn an_upgrade_socket_goes_to_its_listener_and_configured_address() {
        let any = addr("127.0.0.1:0");
        let web = adopted(Origin::Upgrade(Some("web".into()), any));
        let admin = adopted(Origin::Upgrade(None, any));
        let (web_port, admin_port) = (web.local, admin.local);
        let mut inherited = Inherited {
            sockets: vec![admin, web],
            channel: None,
        };
        // Port 0 as written finds the socket by name, whatever port it got.
        let taken = inherited.take_listener("web", any).expect("web's socket");
        assert_eq!(taken.local_addr().ok(), Some(web_port));
        assert!(
            inherited.take_listener("other", any).is_none(),
            "port 0 matches no address"
        );
        let taken = inherited.take_admin(any).expect("the admin socket");
        assert_eq!(taken.local_addr().ok(), Some(admin_port));
        assert!(inherited.is_empty());
    }

    #[test]
    fn a_systemd_socket_goes_to_the_listener_with_its_address_and_the_rest_close() {
        let used = adopted(Origin::Systemd(Some("web".into())));
        let unused = adopted(Origin::Systemd(None));
        let (used_addr, unused_addr) = (used.local, unused.local);
        let mut inherited = Inherited {
            sockets: vec![used, unused],
            channel: None,
        };
        assert!(
            inherited
                .take_listener("web", addr("127.0.0.1:1"))
                .is_none()
        );
        assert!(inherited.take_listener("front", used_addr).is_some());
        inherited.close_unused();
        assert!(inherited.is_empty());
        // Closed: its address is free to bind again.
        assert!(std::net::TcpListener::bind(unused_addr).is_ok());
    }

    #[test]
    fn nothing_is_inherited_without_the_variables() {
        // The test process has neither RPROXY_HANDOVER nor a LISTEN_PID naming it.
        let inherited = Inherited::from_env().expect("no error");
        assert!(inherited.is_empty());
    }
}
