//! Header rules as validated data: what a listener, an upstream or a route sets, adds and
//! removes on the request to a backend and on the response to the client (nginx's
//! `proxy_set_header`, `add_header` and `proxy_hide_header`), with values written as templates
//! of literal text and variables. Read from the TOML by `headers_section`; merged per route and
//! applied by `upstream::forward`.

use std::fmt;

use http::{HeaderName, HeaderValue, StatusCode};

use super::key_template::{header_of_variable, split};

/// One level's `headers` table; empty when it has none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderRules {
    /// On the request to the backend, in the order they apply: removals, sets, adds.
    pub request: Vec<HeaderRule>,
    /// On the response to the client, in the same order.
    pub response: Vec<HeaderRule>,
}

impl HeaderRules {
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRule {
    pub name: HeaderName,
    pub action: HeaderAction,
    /// A response set or add made whatever the status, rproxy's own error answers included
    /// (nginx's `add_header ... always`); otherwise only with [`HeaderRule::OK_STATUSES`].
    pub always: bool,
}

impl HeaderRule {
    /// The statuses nginx's `add_header` acts on without `always`.
    pub const OK_STATUSES: [u16; 10] = [200, 201, 204, 206, 301, 302, 303, 304, 307, 308];

    /// Whether a response rule acts on a response with `status`. Removals always do.
    pub fn applies_to(&self, status: StatusCode) -> bool {
        self.always
            || matches!(self.action, HeaderAction::Remove)
            || Self::OK_STATUSES.contains(&status.as_u16())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderAction {
    /// Replaces every line of the header; a value that comes out empty removes it.
    Set(ValueTemplate),
    /// Appends a line; a value that comes out empty adds nothing.
    Add(ValueTemplate),
    Remove,
}

/// A header value as written: literal text and variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueTemplate {
    pub text: String,
    pub parts: Vec<ValuePart>,
}

impl fmt::Display for ValueTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One piece of a header value template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValuePart {
    /// Text as written, already checked to be valid in a header value.
    Literal(HeaderValue),
    /// `$host`: the request's host name, lower case, without the port.
    Host,
    /// `$remote_addr`: the client address (after the trusted-proxy rule).
    RemoteAddr,
    /// `$scheme`: `http` or `https`, as the client connected.
    Scheme,
    /// `$server_port`: the port the client connected to.
    ServerPort,
    /// `$request_id`: the request's `X-Request-Id`.
    RequestId,
    /// `$request_uri`: path and query, as the client asked.
    RequestUri,
    /// `$upstream_addr`: the backend that answered, or the last one tried (response rules
    /// only).
    UpstreamAddr,
    /// `$http_NAME`: a header of the client's request, as the client sent it.
    Header(HeaderName),
}

pub(super) const VARIABLES: &str = "$host, $remote_addr, $scheme, $server_port, $request_id, \
     $request_uri, $upstream_addr (responses only), $http_NAME";

impl ValueTemplate {
    /// Parses a value; `response` says whether it is for a response rule (where
    /// `$upstream_addr` is known). The error says what is wrong.
    pub fn parse(text: &str, response: bool) -> Result<ValueTemplate, String> {
        let parts = split(
            text,
            |literal| {
                HeaderValue::from_str(literal)
                    .map(ValuePart::Literal)
                    .map_err(|_| {
                        format!(
                            "`{}` is not a valid header value (control characters?)",
                            text.escape_debug()
                        )
                    })
            },
            |name| variable(name, response),
        )?;
        Ok(ValueTemplate {
            text: text.to_string(),
            parts,
        })
    }
}

fn variable(name: &str, response: bool) -> Result<ValuePart, String> {
    Ok(match name {
        "host" => ValuePart::Host,
        "remote_addr" => ValuePart::RemoteAddr,
        "scheme" => ValuePart::Scheme,
        "server_port" => ValuePart::ServerPort,
        "request_id" => ValuePart::RequestId,
        "request_uri" => ValuePart::RequestUri,
        "upstream_addr" if response => ValuePart::UpstreamAddr,
        "upstream_addr" => {
            return Err("`$upstream_addr` is known only once a backend answered: \
                 use it in response_set or response_add"
                .into());
        }
        _ => {
            let header = name
                .strip_prefix("http_")
                .filter(|h| !h.is_empty())
                .and_then(|h| HeaderName::from_bytes(header_of_variable(h).as_bytes()).ok());
            match header {
                Some(h) => ValuePart::Header(h),
                None => return Err(format!("unknown variable `${name}`; known: {VARIABLES}")),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_literals_and_variables() {
        let t = ValueTemplate::parse(
            "$scheme://$host:$server_port$request_uri (id $request_id) from $http_X_Client_Name",
            false,
        )
        .expect("valid");
        assert_eq!(
            t.parts,
            vec![
                ValuePart::Scheme,
                ValuePart::Literal(HeaderValue::from_static("://")),
                ValuePart::Host,
                ValuePart::Literal(HeaderValue::from_static(":")),
                ValuePart::ServerPort,
                ValuePart::RequestUri,
                ValuePart::Literal(HeaderValue::from_static(" (id ")),
                ValuePart::RequestId,
                ValuePart::Literal(HeaderValue::from_static(") from ")),
                ValuePart::Header(HeaderName::from_static("x-client-name")),
            ]
        );
        assert_eq!(
            ValueTemplate::parse("$remote_addr", false)
                .expect("valid")
                .parts,
            vec![ValuePart::RemoteAddr]
        );
        assert!(
            ValueTemplate::parse("", false)
                .expect("empty")
                .parts
                .is_empty()
        );
    }

    #[test]
    fn mistakes_are_named() {
        let err = |text, response| ValueTemplate::parse(text, response).expect_err(text);
        assert!(err("$nope", true).contains("unknown variable `$nope`; known: $host"));
        assert!(err("a $", true).contains("unknown variable `$`"));
        assert!(err("$http_", true).contains("unknown variable `$http_`"));
        assert!(err("$upstream_addr", false).contains("use it in response_set or response_add"));
        assert!(err("a\nb", true).contains("`a\\nb` is not a valid header value"));
        assert_eq!(
            ValueTemplate::parse("$upstream_addr", true)
                .expect("response side")
                .parts,
            vec![ValuePart::UpstreamAddr]
        );
    }

    #[test]
    fn response_sets_follow_nginx_statuses_unless_always() {
        let rule = |action, always| HeaderRule {
            name: HeaderName::from_static("x-a"),
            action,
            always,
        };
        let set = || HeaderAction::Set(ValueTemplate::parse("1", true).expect("valid"));
        for (status, plain) in [(200, true), (304, true), (404, false), (502, false)] {
            let status = StatusCode::from_u16(status).expect("status");
            assert_eq!(rule(set(), false).applies_to(status), plain, "{status}");
            assert!(rule(set(), true).applies_to(status));
            assert!(rule(HeaderAction::Remove, false).applies_to(status));
        }
    }
}
