//! One HTTP/1.1 request to the admin listener, over a plain TCP connection (the admin listener
//! is not TLS), with the bearer token when there is one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Where to send: the admin listener's authority (`127.0.0.1:9090`) and its token.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) authority: String,
    token: Option<String>,
}

/// The admin API's answer.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) body: Vec<u8>,
}

impl Answer {
    pub(super) fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// What the API said went wrong: its JSON `error` (with what exists, when it lists it),
    /// or its text.
    pub(super) fn error_text(&self) -> String {
        if let Some(json) = self.json()
            && let Some(error) = json["error"].as_str()
        {
            return match json["known"].as_array() {
                Some(known) if !known.is_empty() => {
                    let names: Vec<&str> = known.iter().filter_map(|k| k.as_str()).collect();
                    format!("{error} (known: {})", names.join(", "))
                }
                _ => error.to_string(),
            };
        }
        String::from_utf8_lossy(&self.body).trim().to_string()
    }
}

impl Target {
    /// The file's `[admin] listen`: an unspecified address (`0.0.0.0`, `[::]`) is reached on
    /// the loopback address of its family.
    pub(super) fn from_listen(listen: SocketAddr, token: Option<String>) -> Self {
        let ip = match listen.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        Target {
            authority: SocketAddr::new(ip, listen.port()).to_string(),
            token,
        }
    }

    /// `--admin http://HOST:PORT` (the scheme may be left out).
    pub(super) fn from_url(url: &str, token: Option<String>) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").unwrap_or(url);
        if rest.starts_with("https://") || url.starts_with("https://") {
            return Err("rproxy ctl: the admin listener speaks plain HTTP: use http://".into());
        }
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') || !authority.contains(':') {
            return Err(format!(
                "rproxy ctl: --admin wants http://HOST:PORT, not `{url}`"
            ));
        }
        Ok(Target {
            authority: authority.to_string(),
            token,
        })
    }
}

/// Sends one request and reads the whole answer, all within `timeout`.
pub(super) async fn send(
    target: &Target,
    method: &str,
    path: &str,
    body: Option<String>,
    timeout: Duration,
) -> Result<Answer, String> {
    let exchange = async {
        let stream = TcpStream::connect(&target.authority)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &target.authority)
            .header(header::USER_AGENT, "rproxy-ctl");
        if let Some(token) = &target.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes()
            .to_vec();
        Ok(Answer { status, body })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

/// A path segment: letters, digits, `-._~` and `:` as they are, every other byte %-encoded
/// (an IPv6 address's brackets, a name with a space).
pub(super) fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_address_comes_from_listen_or_a_url() {
        let t = Target::from_listen("0.0.0.0:9090".parse().expect("addr"), None);
        assert_eq!(t.authority, "127.0.0.1:9090");
        let t = Target::from_listen("[::]:9090".parse().expect("addr"), None);
        assert_eq!(t.authority, "[::1]:9090");
        let t = Target::from_url("http://127.0.0.1:9090/", None).expect("url");
        assert_eq!(t.authority, "127.0.0.1:9090");
        assert!(Target::from_url("https://127.0.0.1:9090", None).is_err());
        assert!(Target::from_url("http://127.0.0.1:9090/api", None).is_err());
        assert!(Target::from_url("localhost", None).is_err());
    }
}
