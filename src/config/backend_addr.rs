//! Where a backend listens once its server line is resolved: a TCP address, or a Unix socket
//! path (`unix:/run/app.sock`, nginx's spelling). Plain data: the pools key their backends by
//! it, the metrics, `/status` and the access log show it as text, and the upstream client and
//! the health checks connect to it (`backend_socket.rs`, at the top of `src`).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// The prefix that marks a Unix socket path in a server address, as in nginx.
pub(super) const UNIX_PREFIX: &str = "unix:";

/// The longest socket path the system takes: `sun_path` holds 108 bytes on Linux, one of them
/// the terminating NUL.
pub const UNIX_PATH_MAX: usize = 107;

/// A backend's address: `1.2.3.4:80`, `[::1]:80` or `unix:/run/app.sock` as text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendAddr {
    Tcp(SocketAddr),
    /// An absolute path no longer than [`UNIX_PATH_MAX`] (checked when the file is read).
    Unix(PathBuf),
}

impl BackendAddr {
    /// The TCP address, when it is one.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            BackendAddr::Tcp(addr) => Some(*addr),
            BackendAddr::Unix(_) => None,
        }
    }
}

impl From<SocketAddr> for BackendAddr {
    fn from(addr: SocketAddr) -> Self {
        BackendAddr::Tcp(addr)
    }
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendAddr::Tcp(addr) => write!(f, "{addr}"),
            BackendAddr::Unix(path) => write!(f, "{UNIX_PREFIX}{}", path.display()),
        }
    }
}

/// The text `Display` writes, back: how the admin API finds a server named by its address.
impl FromStr for BackendAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix(UNIX_PREFIX) {
            Some(path) => unix_path(path).map(BackendAddr::Unix),
            None => s
                .parse::<SocketAddr>()
                .map(BackendAddr::Tcp)
                .map_err(|_| format!("`{s}` is not an address")),
        }
    }
}

/// The path after `unix:`, checked: absolute (rproxy may be started from any directory, and
/// a reload must mean the same socket), no NUL, and short enough for `sun_path`.
pub(super) fn unix_path(path: &str) -> Result<PathBuf, String> {
    if path.is_empty() {
        return Err(format!(
            "`{UNIX_PREFIX}` needs a socket path, such as \"unix:/run/app.sock\""
        ));
    }
    if !path.starts_with('/') {
        return Err(format!(
            "`{UNIX_PREFIX}{path}`: the socket path must be absolute (start with `/`)"
        ));
    }
    if path.contains('\0') {
        return Err(format!(
            "`{UNIX_PREFIX}{}`: the socket path contains a NUL byte",
            path.escape_debug()
        ));
    }
    if path.len() > UNIX_PATH_MAX {
        return Err(format!(
            "`{UNIX_PREFIX}{path}`: the socket path is {} bytes; the system takes at most {UNIX_PATH_MAX}",
            path.len()
        ));
    }
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_prints_as_it_is_written_and_parses_back() {
        for text in ["127.0.0.1:80", "[::1]:8080", "unix:/run/app.sock"] {
            let addr: BackendAddr = text.parse().expect("an address");
            assert_eq!(addr.to_string(), text);
        }
        assert_eq!(
            "unix:/run/app.sock".parse::<BackendAddr>().ok(),
            Some(BackendAddr::Unix(PathBuf::from("/run/app.sock")))
        );
        assert_eq!(
            BackendAddr::from(SocketAddr::from(([10, 0, 0, 1], 3000))).tcp(),
            Some(SocketAddr::from(([10, 0, 0, 1], 3000)))
        );
    }

    #[test]
    fn a_socket_path_must_be_absolute_and_fit_sun_path() {
        assert!(unix_path("run/app.sock").is_err());
        assert!(unix_path("").is_err());
        assert!(unix_path("/a\0b").is_err());
        let longest = format!("/{}", "a".repeat(UNIX_PATH_MAX - 1));
        assert!(unix_path(&longest).is_ok());
        let over = format!("{longest}a");
        assert!(unix_path(&over).is_err_and(|e| e.contains("108 bytes")));
        assert!("app.sock".parse::<BackendAddr>().is_err());
    }
}
