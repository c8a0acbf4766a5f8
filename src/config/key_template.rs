//! Hash key templates, written as in nginx: literal text and variables such as
//! `"$remote_addr"`, `"$request_uri"`, `"$http_x_user_id"`, `"$cookie_session"`.

use std::fmt;

/// One piece of a key template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    Literal(String),
    /// The client address (after the trusted-proxy rule).
    RemoteAddr,
    /// Path and query, as requested.
    RequestUri,
    /// The path alone.
    Uri,
    /// The query string alone.
    Args,
    /// The `Host` of the request.
    Host,
    /// A request header, named in lower case with `-` (from `$http_x_user_id`).
    Header(String),
    /// A cookie's value.
    Cookie(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    pub text: String,
    pub parts: Vec<KeyPart>,
}

impl fmt::Display for KeyTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

pub(super) const VARIABLES: &str =
    "$remote_addr, $request_uri, $uri, $args, $host, $http_NAME, $cookie_NAME";

impl KeyTemplate {
    /// Parses a template; the error names the first unknown variable.
    pub fn parse(text: &str) -> Result<KeyTemplate, String> {
        let parts = split(
            text,
            |literal| Ok(KeyPart::Literal(literal.to_string())),
            |name| {
                Ok(match name {
                    "remote_addr" => KeyPart::RemoteAddr,
                    "request_uri" => KeyPart::RequestUri,
                    "uri" => KeyPart::Uri,
                    "args" => KeyPart::Args,
                    "host" => KeyPart::Host,
                    _ => match (name.strip_prefix("http_"), name.strip_prefix("cookie_")) {
                        (Some(h), _) if !h.is_empty() => KeyPart::Header(header_of_variable(h)),
                        (_, Some(c)) if !c.is_empty() => KeyPart::Cookie(c.to_string()),
                        _ => return Err(format!("unknown variable `${name}`; known: {VARIABLES}")),
                    },
                })
            },
        )?;
        if parts.is_empty() {
            return Err("an empty key would send every request to one backend".into());
        }
        Ok(KeyTemplate {
            text: text.to_string(),
            parts,
        })
    }
}

/// The header a `$http_NAME` variable reads, as nginx maps it: lower case, `_` for `-`.
pub(super) fn header_of_variable(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// Splits a template into literal text and `$name` variables (a name runs over letters, digits
/// and `_`), in order, empty literals left out; `literal` and `variable` make each piece or
/// say what is wrong with it. Hash keys and header rules both read their templates with it.
pub(super) fn split<P>(
    text: &str,
    mut literal: impl FnMut(&str) -> Result<P, String>,
    mut variable: impl FnMut(&str) -> Result<P, String>,
) -> Result<Vec<P>, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        if dollar > 0 {
            parts.push(literal(&rest[..dollar])?);
        }
        let after = &rest[dollar + 1..];
        let len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        parts.push(variable(&after[..len])?);
        rest = &after[len..];
    }
    if !rest.is_empty() {
        parts.push(literal(rest)?);
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_variables_and_literals() {
        let t = KeyTemplate::parse("u:$http_X_User_Id/$cookie_session$request_uri").expect("valid");
        assert_eq!(
            t.parts,
            vec![
                KeyPart::Literal("u:".into()),
                KeyPart::Header("x-user-id".into()),
                KeyPart::Literal("/".into()),
                KeyPart::Cookie("session".into()),
                KeyPart::RequestUri,
            ]
        );
        assert!(
            KeyTemplate::parse("$nope")
                .expect_err("unknown variable")
                .contains("unknown variable `$nope`")
        );
        assert!(KeyTemplate::parse("").is_err());
        assert!(KeyTemplate::parse("$http_").is_err());
    }
}
