//! Header text that several rooms read or write: comma-separated token lists (`Connection`,
//! `Upgrade`, `Transfer-Encoding`) and an IP address as a header value.
//!
//! Ground floor: the listener validates heads with it, upstream rewrites them, the access log
//! prints addresses; it imports nothing of rproxy.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The items of one comma-separated header line (`Connection`, `Upgrade`, `TE`,
/// `Transfer-Encoding`), trimmed, empty ones skipped. Byte-wise: the tokens compared are
/// ASCII, and a token that is not a valid name is simply not one rproxy acts on. (Going
/// through `to_str`, `split` and `trim` on every request showed in profiles.)
pub fn items(line: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    line.as_bytes()
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|item| !item.is_empty())
}

/// Whether the comma-separated header `name` lists `token` (compared without case).
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .any(|line| items(line).any(|t| t.eq_ignore_ascii_case(token.as_bytes())))
}

/// `ip` as a header value. Formatting an address showed in profiles, and a connection's
/// requests (often a thread's) come from one address, so each thread keeps the last one.
pub fn ip_text(ip: IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((cached, text)) if *cached == ip => text.clone(),
        _ => {
            // An address prints as digits, dots, colons and hex: always a valid value.
            let text = HeaderValue::try_from(ip.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
            *last = Some((ip, text.clone()));
            text
        }
    })
}

#[cfg(test)]
mod tests {
    use http::header;

    use super::*;

    #[test]
    fn a_token_is_found_in_any_line_without_case_or_spaces() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.append(
            header::CONNECTION,
            HeaderValue::from_static(" x-a ,  Close ,"),
        );
        assert!(has_token(&h, &header::CONNECTION, "close"));
        assert!(has_token(&h, &header::CONNECTION, "keep-alive"));
        assert!(!has_token(&h, &header::CONNECTION, "clos"));
        assert!(!has_token(&h, &header::CONNECTION, ""));
        assert!(!has_token(&h, &header::UPGRADE, "websocket"));
    }
}
