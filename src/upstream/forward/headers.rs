//! Header rewriting on the way to a backend and back.
//!
//! Hop-by-hop headers, and every header the `Connection` header names, belong to one connection
//! and are removed in both directions *before* rproxy adds its own, so a client cannot make
//! rproxy drop `X-Forwarded-For` by listing it in `Connection`. The forwarding headers are
//! replaced unless the peer is a trusted proxy, in which case its chain is extended and the
//! client is the right-most address in it that is not itself a trusted proxy.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue, OccupiedEntry};
use ipnet::IpNet;

use crate::config::ForwardedHeaders;
use crate::header_text::{ip_text, items};

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Which of the headers rproxy acts on a head carries, from one pass over its names: a test
/// or removal of an absent header then costs nothing, where a map lookup hashes the name, and
/// most heads carry none of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Present(u16);

impl Present {
    // Bits 0 to 6 are the hop-by-hop headers, in the order of `HOP_BY_HOP`.
    pub(crate) const CONNECTION: u16 = 1;
    pub(crate) const TE: u16 = 1 << 3;
    pub(crate) const TRANSFER_ENCODING: u16 = 1 << 5;
    pub(crate) const UPGRADE: u16 = 1 << 6;
    pub(crate) const EXPECT: u16 = 1 << 7;
    pub(crate) const FORWARDED: u16 = 1 << 8;
    pub(crate) const X_FORWARDED_FOR: u16 = 1 << 9;
    pub(crate) const X_REAL_IP: u16 = 1 << 10;
    pub(crate) const X_FORWARDED_PROTO: u16 = 1 << 11;
    pub(crate) const X_FORWARDED_HOST: u16 = 1 << 12;
    const ANY_HOP_BY_HOP: u16 = (1 << 7) - 1;

    pub fn of(headers: &HeaderMap) -> Self {
        Present(headers.keys().fold(0, |bits, name| bits | bit(name)))
    }

    pub(crate) fn has(self, bits: u16) -> bool {
        self.0 & bits != 0
    }
}

fn bit(name: &HeaderName) -> u16 {
    // Names are stored lowercase, so a plain comparison finds them. (A filter on the name's
    // length before comparing was tried: it cost 12 instructions a request more.)
    match name.as_str() {
        "connection" => Present::CONNECTION,
        "keep-alive" => 1 << 1,
        "proxy-connection" => 1 << 2,
        "te" => Present::TE,
        "trailer" => 1 << 4,
        "transfer-encoding" => Present::TRANSFER_ENCODING,
        "upgrade" => Present::UPGRADE,
        "expect" => Present::EXPECT,
        "forwarded" => Present::FORWARDED,
        "x-forwarded-for" => Present::X_FORWARDED_FOR,
        "x-real-ip" => Present::X_REAL_IP,
        "x-forwarded-proto" => Present::X_FORWARDED_PROTO,
        "x-forwarded-host" => Present::X_FORWARDED_HOST,
        _ => 0,
    }
}

/// Removes hop-by-hop headers and the headers named in `Connection`; `present` is what the
/// head carries. This runs twice per request, and most requests carry no hop-by-hop header,
/// most responses one or two.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, present: Present) {
    if !present.has(Present::ANY_HOP_BY_HOP) {
        return;
    }
    // HOP_BY_HOP[0] is `Connection`: taken out with its lines in one lookup, and the headers
    // it names go too (those that are hop-by-hop anyway, like `keep-alive`, go below).
    if present.has(Present::CONNECTION)
        && let Entry::Occupied(connection) = headers.entry(header::CONNECTION)
    {
        // Most heads that carry it carry one line naming no other header (a backend's
        // `keep-alive`): taken out at once, with no token scan and no drain of its lines.
        let mut lines = connection.iter();
        let lone_option = matches!(
            (lines.next(), lines.next()),
            (Some(only), None) if only.as_bytes().eq_ignore_ascii_case(b"keep-alive")
                || only.as_bytes().eq_ignore_ascii_case(b"close")
        );
        if lone_option {
            connection.remove();
        } else {
            for name in named_by(connection) {
                headers.remove(name);
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate().skip(1) {
        if present.has(1 << i) {
            headers.remove(name);
        }
    }
}

/// Takes `Connection` out and returns the headers its lines name, but for the hop-by-hop
/// ones, which go anyway.
fn named_by(connection: OccupiedEntry<'_, HeaderValue>) -> Vec<HeaderName> {
    let mut named = Vec::new();
    for line in connection.remove_entry_mult().1 {
        named.extend(
            items(&line)
                .filter(|token| {
                    !token.eq_ignore_ascii_case(b"close")
                        && !HOP_BY_HOP
                            .iter()
                            .any(|hop| token.eq_ignore_ascii_case(hop.as_str().as_bytes()))
                })
                .filter_map(|token| HeaderName::from_bytes(token).ok()),
        );
    }
    named
}

/// Sets the forwarding headers that `writes` names and returns the client address as rproxy
/// determined it. `present`: what the head carried before.
// Inlined into `forward`, its one caller on the request path: called out of line (as the
// compiler chose with a plain `#[inline]`) it cost about 60 instructions a request more.
#[inline(always)]
pub fn set_forwarding(
    headers: &mut HeaderMap,
    present: Present,
    peer: SocketAddr,
    trusted: &[IpNet],
    proto: &'static str,
    writes: ForwardedHeaders,
) -> IpAddr {
    let peer_ip = peer.ip().to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let peer_trusted = is_trusted(&peer_ip);
    let chain = if peer_trusted {
        joined(headers, &X_FORWARDED_FOR)
    } else {
        None
    };

    let client = match &chain {
        Some(chain) => client_from_chain(chain, peer_ip, is_trusted),
        None => peer_ip,
    };
    // A header rproxy does not write still does not pass from a peer it does not trust: a
    // backend reading it would believe a forgery. (From a trusted peer it passes as sent.)
    let forged = |headers: &mut HeaderMap, bit: u16, name: &HeaderName| {
        if !peer_trusted && present.has(bit) {
            headers.remove(name);
        }
    };
    // The peer's address is usually both headers' value.
    let peer_text = ip_text(peer_ip);
    if writes.writes(ForwardedHeaders::REAL_IP) {
        let real_ip = if client == peer_ip {
            Ok(peer_text.clone())
        } else {
            HeaderValue::try_from(client.to_string())
        };
        if let Ok(v) = real_ip {
            headers.insert(X_REAL_IP.clone(), v);
        }
    } else {
        forged(headers, Present::X_REAL_IP, &X_REAL_IP);
    }
    if writes.writes(ForwardedHeaders::FOR) {
        let xff = match chain {
            Some(chain) => HeaderValue::try_from(format!("{chain}, {peer_ip}")),
            None => Ok(peer_text),
        };
        if let Ok(v) = xff {
            headers.insert(X_FORWARDED_FOR.clone(), v);
        }
    } else {
        forged(headers, Present::X_FORWARDED_FOR, &X_FORWARDED_FOR);
    }
    if !writes.writes(ForwardedHeaders::PROTO) {
        forged(headers, Present::X_FORWARDED_PROTO, &X_FORWARDED_PROTO);
    } else if !(peer_trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if !writes.writes(ForwardedHeaders::HOST) {
        forged(headers, Present::X_FORWARDED_HOST, &X_FORWARDED_HOST);
    } else if !(peer_trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        match headers.get(header::HOST).cloned() {
            Some(host) => headers.insert(X_FORWARDED_HOST.clone(), host),
            None => headers.remove(&X_FORWARDED_HOST),
        };
    }
    // rproxy does not write `Forwarded`; an untrusted client's is a forgery.
    forged(headers, Present::FORWARDED, &header::FORWARDED);
    client
}

/// The client address as `set_forwarding` determines it, leaving the head as it is: for what
/// is decided before a request is forwarded (a rate limit keyed by `$remote_addr`).
pub fn client_address(headers: &HeaderMap, peer: SocketAddr, trusted: &[IpNet]) -> IpAddr {
    let peer_ip = peer.ip().to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer_ip) {
        return peer_ip;
    }
    match joined(headers, &X_FORWARDED_FOR) {
        Some(chain) => client_from_chain(&chain, peer_ip, is_trusted),
        None => peer_ip,
    }
}

/// All values of a header joined with ", ", or `None` if it is absent or not text.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut out: Option<String> = None;
    for v in headers.get_all(name) {
        let text = v.to_str().ok()?.trim();
        if text.is_empty() {
            continue;
        }
        match &mut out {
            Some(s) => {
                s.push_str(", ");
                s.push_str(text);
            }
            None => out = Some(text.to_string()),
        }
    }
    out
}

/// Walks the chain from the right, skipping trusted proxies; the first other address is the
/// client. An entry that is not an address ends the walk at the last good one.
fn client_from_chain(chain: &str, peer: IpAddr, is_trusted: impl Fn(&IpAddr) -> bool) -> IpAddr {
    let mut client = peer;
    for hop in chain.rsplit(',') {
        let Some(ip) = parse_hop(hop.trim()) else {
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// HTTP/2 may split `Cookie` into several fields; HTTP/1.1 needs them as one (RFC 9113 8.2.3).
pub(super) fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let parts: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    let joined = parts.join(&b"; "[..]);
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().expect("ip"), 5555)
    }

    #[test]
    fn connection_cannot_remove_forwarding_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Forwarded-For, x-secret"),
            ("x-secret", "1"),
            ("x-forwarded-for", "6.6.6.6"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("host", "example.com"),
        ]);
        let present = Present::of(&h);
        remove_hop_by_hop(&mut h, present);
        let client = set_forwarding(
            &mut h,
            present,
            peer("192.0.2.7"),
            &[],
            "http",
            ForwardedHeaders::ALL,
        );
        assert_eq!(client, "192.0.2.7".parse::<IpAddr>().expect("ip"));
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-real-ip"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com");
        for gone in ["connection", "x-secret", "te", "upgrade"] {
            assert!(!h.contains_key(gone), "{gone} must be removed");
        }
    }

    #[test]
    fn every_hop_by_hop_header_goes_and_the_rest_stays() {
        for hop in HOP_BY_HOP.iter().map(HeaderName::as_str) {
            let mut h = map(&[(hop, "x"), ("host", "a"), ("x-app", "1")]);
            let present = Present::of(&h);
            remove_hop_by_hop(&mut h, present);
            assert!(!h.contains_key(hop), "{hop} must be removed");
            assert_eq!(
                (h["host"].as_bytes(), h["x-app"].as_bytes()),
                (&b"a"[..], &b"1"[..])
            );
        }
        let mut none = map(&[("host", "a"), ("x-app", "1"), ("x-app", "2")]);
        let before = none.clone();
        let present = Present::of(&none);
        remove_hop_by_hop(&mut none, present);
        assert_eq!(none, before, "nothing to remove, nothing changed");
        // One line naming a header: that header goes too.
        let mut one_line = map(&[("connection", "X-Private"), ("x-private", "1"), ("a", "1")]);
        let present = Present::of(&one_line);
        remove_hop_by_hop(&mut one_line, present);
        assert_eq!(
            one_line.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
            ["a"]
        );
        // One line with the usual option alone, in any case.
        for option in ["keep-alive", "Keep-Alive", "close", "CLOSE"] {
            let mut h = map(&[
                ("connection", option),
                ("keep-alive", "timeout=5"),
                ("a", "1"),
            ]);
            let present = Present::of(&h);
            remove_hop_by_hop(&mut h, present);
            assert_eq!(h.keys().map(HeaderName::as_str).collect::<Vec<_>>(), ["a"]);
        }
        let mut named = map(&[
            ("connection", "close"),
            ("connection", "Keep-Alive , X-Private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("x-public", "1"),
        ]);
        let present = Present::of(&named);
        remove_hop_by_hop(&mut named, present);
        assert_eq!(
            named.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
            ["x-public"]
        );
    }

    #[test]
    fn present_finds_each_header_it_tracks_whatever_the_case_written() {
        let tracked = [
            ("Connection", Present::CONNECTION),
            ("Keep-Alive", 1 << 1),
            ("Proxy-Connection", 1 << 2),
            ("TE", Present::TE),
            ("Trailer", 1 << 4),
            ("Transfer-Encoding", Present::TRANSFER_ENCODING),
            ("Upgrade", Present::UPGRADE),
            ("Expect", Present::EXPECT),
            ("Forwarded", Present::FORWARDED),
            ("X-Forwarded-For", Present::X_FORWARDED_FOR),
            ("X-Real-IP", Present::X_REAL_IP),
            ("X-Forwarded-Proto", Present::X_FORWARDED_PROTO),
            ("X-Forwarded-Host", Present::X_FORWARDED_HOST),
        ];
        for (name, bit) in tracked {
            let present = Present::of(&map(&[("host", "a"), (name, "x")]));
            assert!(present.has(bit), "{name}");
            assert_eq!(present, Present(bit), "{name} alone");
        }
        // Also names of the same lengths as tracked ones.
        let untracked = map(&[
            ("host", "a"),
            ("accept-language", "en"),
            ("x-forwarded-port", "80"),
            ("accept", "*"),
            ("user-agent", "x"),
            ("ab", "x"),
            ("referer", "x"),
            ("x-long-name-of-thirty-two-bytes!", "x"),
        ]);
        assert_eq!(Present::of(&untracked), Present(0));
    }

    #[test]
    fn the_peer_address_is_the_same_on_every_request() {
        for ip in ["192.0.2.7", "192.0.2.8", "192.0.2.7", "2001:db8::1"] {
            let mut h = HeaderMap::new();
            let present = Present::of(&h);
            set_forwarding(
                &mut h,
                present,
                peer(ip),
                &[],
                "http",
                ForwardedHeaders::ALL,
            );
            assert_eq!(
                (
                    h["x-forwarded-for"].to_str().ok(),
                    h["x-real-ip"].to_str().ok()
                ),
                (Some(ip), Some(ip))
            );
        }
    }

    #[test]
    fn untrusted_peer_cannot_forge_anything() {
        let forged = [
            ("x-forwarded-for", "1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
            ("forwarded", "for=1.2.3.4"),
        ];
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let (h, _) = forwarded(&forged, "192.0.2.7", &trusted, ForwardedHeaders::ALL);
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-real-ip"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key("x-forwarded-host"));
        assert!(!h.contains_key("forwarded"));
    }

    #[test]
    fn trusted_peer_chain_is_extended_and_client_is_rightmost_untrusted() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let sent = [
            ("x-forwarded-for", "203.0.113.9, 198.51.100.1"),
            ("x-forwarded-for", "10.1.1.1"),
            ("x-forwarded-proto", "https"),
        ];
        let (h, client) = forwarded(&sent, "10.0.0.2", &trusted, ForwardedHeaders::ALL);
        assert_eq!(client, "198.51.100.1".parse::<IpAddr>().expect("ip"));
        assert_eq!(
            h["x-forwarded-for"],
            "203.0.113.9, 198.51.100.1, 10.1.1.1, 10.0.0.2"
        );
        assert_eq!(h["x-real-ip"], "198.51.100.1");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn trusted_chain_with_garbage_stops_at_last_good_hop() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let sent = [("x-forwarded-for", "not-an-ip, 10.9.9.9")];
        let (_, client) = forwarded(&sent, "10.0.0.2", &trusted, ForwardedHeaders::ALL);
        assert_eq!(client, "10.9.9.9".parse::<IpAddr>().expect("ip"));
    }

    /// The head `pairs` as rproxy forwards it from `from`, writing `writes`, and the client
    /// address it determined.
    fn forwarded(
        pairs: &[(&str, &str)],
        from: &str,
        trusted: &[IpNet],
        writes: ForwardedHeaders,
    ) -> (HeaderMap, IpAddr) {
        let mut h = map(pairs);
        let present = Present::of(&h);
        let client = set_forwarding(&mut h, present, peer(from), trusted, "http", writes);
        (h, client)
    }

    #[test]
    fn a_header_left_out_is_not_written_nor_believed_from_an_untrusted_peer() {
        let forged = [
            ("x-forwarded-for", "6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
            ("host", "shop.example"),
        ];
        let only_for = ForwardedHeaders::NONE.and(ForwardedHeaders::FOR);
        let (h, client) = forwarded(&forged, "192.0.2.7", &[], only_for);
        assert_eq!(client, "192.0.2.7".parse::<IpAddr>().expect("ip"));
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        for gone in ["x-real-ip", "x-forwarded-proto", "x-forwarded-host"] {
            assert!(!h.contains_key(gone), "{gone} must not pass");
        }
        // None written: the forgeries still go, the rest of the head stays.
        let (h, _) = forwarded(&forged, "192.0.2.7", &[], ForwardedHeaders::NONE);
        assert_eq!(
            h.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
            ["host"]
        );
        // Nothing forged, nothing written: the head is as it came.
        let plain = [("host", "shop.example")];
        let (h, _) = forwarded(&plain, "192.0.2.7", &[], ForwardedHeaders::NONE);
        assert_eq!(h, map(&plain));
    }

    #[test]
    fn a_header_left_out_passes_as_sent_from_a_trusted_peer() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let sent = [
            ("x-forwarded-for", "203.0.113.9"),
            ("x-real-ip", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "shop.example"),
        ];
        let only_real_ip = ForwardedHeaders::NONE.and(ForwardedHeaders::REAL_IP);
        let (h, client) = forwarded(&sent, "10.0.0.2", &trusted, only_real_ip);
        // The chain still names the client, though it is not extended.
        assert_eq!(client, "203.0.113.9".parse::<IpAddr>().expect("ip"));
        assert_eq!(h, map(&sent));
    }

    #[test]
    fn cookies_are_joined_for_http1() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2")]);
        join_cookies(&mut h);
        assert_eq!(h["cookie"], "a=1; b=2");
        assert_eq!(h.get_all("cookie").iter().count(), 1);
    }
}
