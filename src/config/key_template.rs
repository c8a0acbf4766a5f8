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
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(dollar) = rest.find('$') {
            literal.push_str(&rest[..dollar]);
            let after = &rest[dollar + 1..];
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let name = &after[..len];
            let part = match name {
                "remote_addr" => KeyPart::RemoteAddr,
                "request_uri" => KeyPart::RequestUri,
                "uri" => KeyPart::Uri,
                "args" => KeyPart::Args,
                "host" => KeyPart::Host,
                _ => match (name.strip_prefix("http_"), name.strip_prefix("cookie_")) {
                    (Some(h), _) if !h.is_empty() => {
                        KeyPart::Header(h.to_ascii_lowercase().replace('_', "-"))
                    }
                    (_, Some(c)) if !c.is_empty() => KeyPart::Cookie(c.to_string()),
                    _ => return Err(format!("unknown variable `${name}`; known: {VARIABLES}")),
                },
            };
            if !literal.is_empty() {
                parts.push(KeyPart::Literal(std::mem::take(&mut literal)));
            }
            parts.push(part);
            rest = &after[len..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(KeyPart::Literal(literal));
        }
        if parts.is_empty() {
            return Err("an empty key would send every request to one backend".into());
        }
        Ok(KeyTemplate {
            text: text.to_string(),
            parts,
        })
    }
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
