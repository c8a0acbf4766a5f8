//! Building a request's hash key from the pool's template (`balance = "hash"`).

use std::io::Write;
use std::net::IpAddr;

use http::header;
use http::request::Parts;

use crate::config::{KeyPart, KeyTemplate};

/// The key for `parts` as the template describes it. Variables that are absent add nothing,
/// as in nginx; a key that ends up empty falls back to round-robin.
pub(crate) fn build(template: &KeyTemplate, parts: &Parts, client: IpAddr) -> Vec<u8> {
    let mut key = Vec::with_capacity(64);
    for part in &template.parts {
        match part {
            KeyPart::Literal(text) => key.extend_from_slice(text.as_bytes()),
            // Writing to a Vec cannot fail.
            KeyPart::RemoteAddr => drop(write!(key, "{client}")),
            KeyPart::RequestUri => key.extend_from_slice(
                parts
                    .uri
                    .path_and_query()
                    .map_or(parts.uri.path(), |p| p.as_str())
                    .as_bytes(),
            ),
            KeyPart::Uri => key.extend_from_slice(parts.uri.path().as_bytes()),
            KeyPart::Args => key.extend_from_slice(parts.uri.query().unwrap_or("").as_bytes()),
            KeyPart::Host => {
                if let Some(host) = parts.headers.get(header::HOST) {
                    key.extend_from_slice(host.as_bytes());
                }
            }
            KeyPart::Header(name) => {
                if let Some(v) = parts.headers.get(name.as_str()) {
                    key.extend_from_slice(v.as_bytes());
                }
            }
            KeyPart::Cookie(name) => {
                if let Some(v) = cookie(parts, name) {
                    key.extend_from_slice(v);
                }
            }
        }
    }
    key
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie<'p>(parts: &'p Parts, name: &str) -> Option<&'p [u8]> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let (k, v) = pair.split_at(pair.iter().position(|b| *b == b'=')?);
            (k == name.as_bytes()).then(|| &v[1..])
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_keys_from_request_parts() {
        let (parts, ()) = http::Request::get("/a/b?x=1")
            .header("host", "shop.example")
            .header("x-user-id", "u42")
            .header("cookie", "theme=dark; session=abc123")
            .body(())
            .expect("request")
            .into_parts();
        let key = |t: &str| {
            let t = KeyTemplate::parse(t).expect("template");
            String::from_utf8(build(&t, &parts, "192.0.2.9".parse().expect("ip"))).expect("utf8")
        };
        assert_eq!(key("$request_uri"), "/a/b?x=1");
        assert_eq!(key("$uri|$args|$host"), "/a/b|x=1|shop.example");
        assert_eq!(key("$remote_addr"), "192.0.2.9");
        assert_eq!(key("$http_x_user_id"), "u42");
        assert_eq!(key("s:$cookie_session"), "s:abc123");
        assert_eq!(key("$cookie_missing$http_missing"), "");
    }
}
