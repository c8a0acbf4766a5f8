//! Sticky sessions: a cookie that keeps a client on the backend that first served it, on top
//! of any balancing policy.
//!
//! The cookie's value names a backend by a stable id: an HMAC-SHA256 of its address as text
//! (`10.0.0.1:80`, `unix:/run/app.sock`), keyed by
//! the configured `secret` (or a built-in key without one), truncated to 96 bits. It is never
//! a position, so it survives restarts, reloads, reordering the servers, and several rproxy
//! instances with the same configuration; it does not show the address; and without the
//! secret no one can make a value for a backend they were not sent to. A value that names no
//! current backend is ignored and replaced. When the pinned backend cannot take the request,
//! the request is balanced normally and the cookie re-issued (HAProxy's redispatch).

use std::collections::HashMap;
use std::fmt::Write;

use http::HeaderValue;
use ring::hmac;

use crate::config::{BackendAddr, StickyConfig};

/// Used when no `secret` is configured: ids are stable but can be computed by anyone who
/// knows a backend's address.
const DEFAULT_KEY: &[u8] = b"rproxy sticky backend id v1";

#[derive(Debug)]
pub struct Sticky {
    cookie: String,
    /// Backend index by id.
    by_id: HashMap<String, usize>,
    /// The `Set-Cookie` value for each backend, made once: as configured, and with `Secure`
    /// for requests that came over TLS.
    set_cookie: Vec<HeaderValue>,
    set_cookie_secure: Vec<HeaderValue>,
}

impl Sticky {
    /// `addrs`: the pool's backends, in the pool's order.
    pub fn new<'a>(
        config: &StickyConfig,
        addrs: impl IntoIterator<Item = &'a BackendAddr>,
    ) -> Self {
        let key = hmac::Key::new(
            hmac::HMAC_SHA256,
            config.secret.as_deref().map_or(DEFAULT_KEY, str::as_bytes),
        );
        let mut by_id = HashMap::new();
        let mut set_cookie = Vec::new();
        let mut set_cookie_secure = Vec::new();
        let secure = StickyConfig {
            secure: true,
            ..config.clone()
        };
        for (i, addr) in addrs.into_iter().enumerate() {
            let id = backend_id(&key, addr);
            set_cookie.push(set_cookie_value(config, &id));
            set_cookie_secure.push(set_cookie_value(&secure, &id));
            by_id.insert(id, i);
        }
        Sticky {
            cookie: config.cookie.clone(),
            by_id,
            set_cookie,
            set_cookie_secure,
        }
    }

    pub fn cookie_name(&self) -> &str {
        &self.cookie
    }

    /// The backend a cookie value pins, if it names one of this pool's backends.
    pub fn pinned(&self, value: &[u8]) -> Option<usize> {
        std::str::from_utf8(value)
            .ok()
            .and_then(|v| self.by_id.get(v))
            .copied()
    }

    /// The `Set-Cookie` header that pins a client to backend `index`; over TLS it always
    /// carries `Secure`, so the cookie never leaves the encrypted connection.
    pub fn set_cookie(&self, index: usize, over_tls: bool) -> Option<&HeaderValue> {
        if over_tls {
            self.set_cookie_secure.get(index)
        } else {
            self.set_cookie.get(index)
        }
    }
}

fn backend_id(key: &hmac::Key, addr: &BackendAddr) -> String {
    let tag = hmac::sign(key, addr.to_string().as_bytes());
    tag.as_ref()[..12]
        .iter()
        .fold(String::with_capacity(24), |mut s, b| {
            // Writing to a String cannot fail.
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn set_cookie_value(config: &StickyConfig, id: &str) -> HeaderValue {
    let mut v = format!("{}={id}; Path={}", config.cookie, config.path);
    if let Some(domain) = &config.domain {
        let _ = write!(v, "; Domain={domain}");
    }
    if let Some(max_age) = config.max_age {
        let _ = write!(v, "; Max-Age={}", max_age.as_secs());
    }
    if config.secure {
        v.push_str("; Secure");
    }
    if config.http_only {
        v.push_str("; HttpOnly");
    }
    let _ = write!(v, "; SameSite={}", config.same_site);
    // Validated config: cookie name, path, domain and same_site are header-safe tokens.
    HeaderValue::try_from(v).unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(secret: Option<&str>) -> StickyConfig {
        StickyConfig {
            cookie: "route".into(),
            max_age: Some(std::time::Duration::from_secs(3600)),
            path: "/".into(),
            domain: None,
            secure: false,
            http_only: true,
            same_site: "Lax".into(),
            secret: secret.map(String::from),
        }
    }

    fn addrs(list: &[&str]) -> Vec<BackendAddr> {
        list.iter().map(|a| a.parse().expect("addr")).collect()
    }

    #[test]
    fn ids_are_stable_across_order_and_hide_the_address() {
        let a = Sticky::new(&config(None), &addrs(&["10.0.0.1:3000", "10.0.0.2:3000"]));
        let b = Sticky::new(&config(None), &addrs(&["10.0.0.2:3000", "10.0.0.1:3000"]));
        let cookie = a
            .set_cookie(0, false)
            .expect("cookie")
            .to_str()
            .expect("text")
            .to_string();
        assert!(cookie.starts_with("route="), "{cookie}");
        assert!(
            cookie.ends_with("; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax"),
            "{cookie}"
        );
        let value = &cookie["route=".len()..cookie.find(';').expect("attributes")];
        assert_eq!(value.len(), 24);
        assert!(!value.contains("10.0.0.1") && !value.contains("3000"));
        // The same backend has the same id in a pool listing the servers in another order.
        assert_eq!(a.pinned(value.as_bytes()), Some(0));
        assert_eq!(b.pinned(value.as_bytes()), Some(1));
        assert_eq!(a.pinned(b"0123456789abcdef01234567"), None);
        assert_eq!(a.pinned(b"\xff"), None);
    }

    #[test]
    fn the_secret_changes_every_id() {
        let open = Sticky::new(&config(None), &addrs(&["10.0.0.1:3000"]));
        let signed = Sticky::new(
            &config(Some("s3cret-s3cret-s3cret")),
            &addrs(&["10.0.0.1:3000"]),
        );
        let value = |s: &Sticky| {
            let c = s
                .set_cookie(0, false)
                .expect("cookie")
                .to_str()
                .expect("text")
                .to_string();
            c["route=".len()..c.find(';').expect(";")].to_string()
        };
        assert_ne!(value(&open), value(&signed));
        assert_eq!(signed.pinned(value(&open).as_bytes()), None);
    }

    #[test]
    fn ids_are_an_hmac_of_the_address_text_for_tcp_and_unix_backends_alike() {
        // Pinned: a cookie handed out before an upgrade must still name its backend after.
        let pool = Sticky::new(
            &config(None),
            &addrs(&["10.0.0.1:3000", "unix:/run/app.sock"]),
        );
        assert_eq!(pool.pinned(b"cd7e3d038d5cd54e2cba611b"), Some(0));
        assert_eq!(pool.pinned(b"b961da1105250329a6fbf0be"), Some(1));
    }
}
