//! Header rules at run time: a route's rules merged from its levels once per snapshot
//! ([`HeaderPlan`]), then applied to each of its requests on the way to the backend and to the
//! response on the way back.
//!
//! For each header the most specific level that names it wins: the route's rules, else its
//! upstream's, else its listener's. A request rule runs after rproxy's own rewriting
//! (hop-by-hop headers out, forwarding headers and `X-Request-Id` in), so a rule naming
//! `X-Forwarded-For` replaces rproxy's value; `$http_NAME` and `$host` read the head as the
//! client sent it, captured before any of that. A route without rules has no plan, and a
//! request on it pays one check of an `Option` per step.

use std::io::Write as _;
use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::Authority;
use http::{StatusCode, Uri};

use crate::config::{HeaderAction, HeaderRule, HeaderRules, ValuePart};

use super::Peer;
use super::request_id::X_REQUEST_ID;

/// One route's header rules, merged from its levels.
#[derive(Debug)]
pub struct HeaderPlan {
    request: Box<[Rule]>,
    response: Box<[Rule]>,
    /// The client headers that `$http_NAME` reads; `Part::Captured` indexes them.
    captured: Box<[HeaderName]>,
    /// Whether some value reads `$host`.
    reads_host: bool,
    /// Whether a request rule sets `Host`: an HTTP/2 backend's `:authority` then follows it.
    sets_host: bool,
}

#[derive(Debug)]
struct Rule {
    name: HeaderName,
    op: Op,
    always: bool,
}

#[derive(Debug)]
enum Op {
    Remove,
    Set(Box<[Part]>),
    Add(Box<[Part]>),
}

#[derive(Debug)]
enum Part {
    Literal(HeaderValue),
    Host,
    RemoteAddr,
    Scheme,
    ServerPort,
    RequestId,
    RequestUri,
    UpstreamAddr,
    Captured(usize),
}

impl HeaderPlan {
    /// Merges the levels, most specific first (route, upstream, listener); `None` when none
    /// of them has a rule.
    pub fn new(levels: &[&HeaderRules]) -> Option<HeaderPlan> {
        if levels.iter().all(|l| l.is_empty()) {
            return None;
        }
        let mut captured = Vec::new();
        let mut reads_host = false;
        let request = merge(
            levels.iter().map(|l| &l.request[..]),
            &mut captured,
            &mut reads_host,
        );
        let response = merge(
            levels.iter().map(|l| &l.response[..]),
            &mut captured,
            &mut reads_host,
        );
        let sets_host = request
            .iter()
            .any(|r| r.name == header::HOST && !matches!(r.op, Op::Remove));
        Some(HeaderPlan {
            request,
            response,
            captured: captured.into_boxed_slice(),
            reads_host,
            sets_host,
        })
    }

    /// Starts a request: keeps what the rules read of the client's head as it came.
    pub(crate) fn begin<'p>(&'p self, parts: &Parts, peer: Peer) -> Box<Applying<'p>> {
        let captured = self
            .captured
            .iter()
            .map(|name| joined(&parts.headers, name))
            .collect();
        Box::new(Applying {
            plan: self,
            host: if self.reads_host { host(parts) } else { None },
            captured,
            scheme: peer.scheme.as_str(),
            server_port: peer.server_port,
            client_ip: peer.addr.ip().to_canonical(),
            request_id: None,
            authority: None,
        })
    }

    /// Applies the response rules to an answer rproxy makes without a route (404, a refused
    /// request): only those with `response_always` act on such statuses.
    pub(crate) fn local_answer(
        &self,
        headers: &mut HeaderMap,
        status: StatusCode,
        parts: &Parts,
        peer: Peer,
    ) {
        self.begin(parts, peer)
            .response(headers, status, &parts.uri, None);
    }
}

/// For each header the rules of the first level that names it, compiled.
fn merge<'a>(
    levels: impl Iterator<Item = &'a [HeaderRule]>,
    captured: &mut Vec<HeaderName>,
    reads_host: &mut bool,
) -> Box<[Rule]> {
    let mut out = Vec::new();
    let mut claimed: Vec<&HeaderName> = Vec::new();
    for rules in levels {
        let more_specific = claimed.len();
        for rule in rules {
            if claimed[..more_specific].contains(&&rule.name) {
                continue;
            }
            let mut compile = |parts: &[ValuePart]| -> Box<[Part]> {
                parts
                    .iter()
                    .map(|p| part(p, captured, reads_host))
                    .collect()
            };
            let op = match &rule.action {
                HeaderAction::Remove => Op::Remove,
                HeaderAction::Set(t) => Op::Set(compile(&t.parts)),
                HeaderAction::Add(t) => Op::Add(compile(&t.parts)),
            };
            out.push(Rule {
                name: rule.name.clone(),
                op,
                always: rule.always,
            });
        }
        claimed.extend(rules.iter().map(|r| &r.name));
    }
    out.into_boxed_slice()
}

fn part(p: &ValuePart, captured: &mut Vec<HeaderName>, reads_host: &mut bool) -> Part {
    match p {
        ValuePart::Literal(v) => Part::Literal(v.clone()),
        ValuePart::Host => {
            *reads_host = true;
            Part::Host
        }
        ValuePart::RemoteAddr => Part::RemoteAddr,
        ValuePart::Scheme => Part::Scheme,
        ValuePart::ServerPort => Part::ServerPort,
        ValuePart::RequestId => Part::RequestId,
        ValuePart::RequestUri => Part::RequestUri,
        ValuePart::UpstreamAddr => Part::UpstreamAddr,
        ValuePart::Header(name) => Part::Captured(match captured.iter().position(|c| c == name) {
            Some(i) => i,
            None => {
                captured.push(name.clone());
                captured.len() - 1
            }
        }),
    }
}

/// One request's rules in progress: what they read, kept from its start to its response.
#[derive(Debug)]
pub(crate) struct Applying<'p> {
    plan: &'p HeaderPlan,
    host: Option<HeaderValue>,
    captured: Vec<Option<HeaderValue>>,
    scheme: &'static str,
    server_port: u16,
    client_ip: IpAddr,
    request_id: Option<HeaderValue>,
    /// The `Host` the rules set, as an HTTP/2 backend's `:authority`.
    authority: Option<Authority>,
}

impl Applying<'_> {
    /// Applies the request rules to the head rproxy has rewritten for the backend (with its
    /// `X-Request-Id`); `client_ip` is the client address rproxy determined.
    pub(crate) fn request(&mut self, parts: &mut Parts, client_ip: IpAddr) {
        self.client_ip = client_ip;
        self.request_id = parts.headers.get(&X_REQUEST_ID).cloned();
        for rule in &self.plan.request {
            match &rule.op {
                Op::Remove => {
                    parts.headers.remove(&rule.name);
                }
                Op::Set(value) => match self.render(value, &parts.uri, None) {
                    Some(v) => {
                        parts.headers.insert(rule.name.clone(), v);
                    }
                    // A request keeps its Host when the value comes out empty.
                    None if rule.name == header::HOST => {}
                    None => {
                        parts.headers.remove(&rule.name);
                    }
                },
                Op::Add(value) => {
                    if let Some(v) = self.render(value, &parts.uri, None) {
                        parts.headers.append(rule.name.clone(), v);
                    }
                }
            }
        }
        if self.plan.sets_host {
            self.authority = parts
                .headers
                .get(header::HOST)
                .and_then(|h| Authority::try_from(h.as_bytes()).ok());
        }
    }

    /// The `:authority` for an HTTP/2 backend, when a rule set `Host`.
    pub(crate) fn authority(&self) -> Option<&Authority> {
        self.authority.as_ref()
    }

    /// Applies the response rules to a response with `status`; `uri` is the client's request
    /// target and `upstream` the address of the backend that answered (`ip:port` or
    /// `unix:/path`), if one did.
    pub(crate) fn response(
        &self,
        headers: &mut HeaderMap,
        status: StatusCode,
        uri: &Uri,
        upstream: Option<&str>,
    ) {
        for rule in &self.plan.response {
            let value = match &rule.op {
                Op::Remove => {
                    headers.remove(&rule.name);
                    continue;
                }
                _ if !(rule.always || HeaderRule::OK_STATUSES.contains(&status.as_u16())) => {
                    continue;
                }
                Op::Set(value) | Op::Add(value) => self.render(value, uri, upstream),
            };
            match (&rule.op, value) {
                (Op::Add(_), Some(v)) => {
                    headers.append(rule.name.clone(), v);
                }
                (_, Some(v)) => {
                    headers.insert(rule.name.clone(), v);
                }
                (Op::Set(_), None) => {
                    headers.remove(&rule.name);
                }
                _ => {}
            }
        }
    }

    /// A value's text; `None` when it comes out empty.
    fn render(&self, parts: &[Part], uri: &Uri, upstream: Option<&str>) -> Option<HeaderValue> {
        let value = match parts {
            // The common cases, a literal or one header, need no new text.
            [Part::Literal(v)] => Some(v.clone()),
            [Part::Captured(i)] => self.captured.get(*i).cloned().flatten(),
            [Part::Host] => self.host.clone(),
            [Part::RequestId] => self.request_id.clone(),
            _ => {
                let mut text = Vec::with_capacity(64);
                for p in parts {
                    self.write(p, uri, upstream, &mut text).ok()?;
                }
                // Every piece is checked header text, an address, a number or a URI.
                HeaderValue::from_maybe_shared(Bytes::from(text)).ok()
            }
        };
        value.filter(|v| !v.is_empty())
    }

    fn write(
        &self,
        part: &Part,
        uri: &Uri,
        upstream: Option<&str>,
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let text: &[u8] = match part {
            Part::RemoteAddr => return write!(out, "{}", self.client_ip),
            Part::ServerPort => return write!(out, "{}", self.server_port),
            Part::Literal(v) => v.as_bytes(),
            Part::Host => bytes(&self.host),
            Part::Scheme => self.scheme.as_bytes(),
            Part::RequestId => bytes(&self.request_id),
            Part::RequestUri => uri.path_and_query().map_or(b"/", |p| p.as_str().as_bytes()),
            Part::UpstreamAddr => upstream.map_or(&b""[..], str::as_bytes),
            Part::Captured(i) => bytes(self.captured.get(*i).unwrap_or(&None)),
        };
        out.extend_from_slice(text);
        Ok(())
    }
}

/// An optional value's bytes; none for `None`.
fn bytes(v: &Option<HeaderValue>) -> &[u8] {
    v.as_ref().map_or(&b""[..], HeaderValue::as_bytes)
}

/// `$host`: the host of the request target if it names one (HTTP/2, absolute form), else of
/// `Host`; lower case, without the port (nginx's `$host`).
fn host(parts: &Parts) -> Option<HeaderValue> {
    let name = match parts.uri.host() {
        Some(h) => h,
        None => {
            let text = parts.headers.get(header::HOST)?.to_str().ok()?;
            match text.rfind(':') {
                // `[::1]:80` and `a:80` lose the port; `[::1]` has none to lose.
                Some(colon) if !text[colon..].contains(']') => &text[..colon],
                _ => text,
            }
        }
    };
    HeaderValue::from_str(&name.to_ascii_lowercase()).ok()
}

/// A client header's lines as one value, joined as nginx joins them for `$http_NAME`.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    let mut lines = headers.get_all(name).iter();
    let first = lines.next()?;
    let Some(second) = lines.next() else {
        return Some(first.clone());
    };
    let separator: &[u8] = if name == header::COOKIE { b"; " } else { b", " };
    let mut text = first.as_bytes().to_vec();
    for line in std::iter::once(second).chain(lines) {
        text.extend_from_slice(separator);
        text.extend_from_slice(line.as_bytes());
    }
    HeaderValue::from_maybe_shared(Bytes::from(text)).ok()
}

#[cfg(test)]
#[path = "header_rules_tests.rs"]
mod tests;
