//! Typed reads from the spanned TOML tree, collecting every error with its place.
//!
//! serde stops at the first error, so rproxy walks `toml::de::DeTable` itself: each getter
//! records what is wrong (with file, line, column and key path) and returns `None`, and the
//! caller carries on, so one run reports every problem in the file.

use std::borrow::Cow;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::{ConfigError, LineIndex};
use super::model::Origin;

/// The longest any duration key may be. Far beyond any sensible timeout or interval, and short
/// enough that a deadline (now plus the duration) can always be computed: a duration near
/// `Duration::MAX` made that addition overflow and panic while a request waited.
pub(crate) const DURATION_MAX: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

pub(crate) type Table<'i> = DeTable<'i>;
pub(crate) type Value<'i> = Spanned<DeValue<'i>>;

pub(crate) struct Reader<'a> {
    file: &'a Path,
    lines: LineIndex<'a>,
    pub(crate) errors: Vec<ConfigError>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(file: &'a Path, src: &'a str) -> Self {
        Reader {
            file,
            lines: LineIndex::new(src),
            errors: Vec::new(),
        }
    }

    /// The file being read.
    pub(crate) fn file(&self) -> &'a Path {
        self.file
    }

    pub(crate) fn origin(&self, key: &str, span: Range<usize>) -> Origin {
        let (line, column) = self.lines.locate(span.start);
        Origin {
            key: key.to_string(),
            line,
            column,
        }
    }

    pub(crate) fn error(&mut self, key: &str, span: Range<usize>, message: impl Into<String>) {
        let origin = self.origin(key, span);
        self.error_at(&origin, message);
    }

    pub(crate) fn error_at(&mut self, origin: &Origin, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line: origin.line,
            column: origin.column,
            key: origin.key.clone(),
            message: message.into(),
        });
    }

    /// Reports every key of `table` that is not in `known`, suggesting the closest known one.
    pub(crate) fn check_keys(&mut self, table: &Table<'_>, path: &str, known: &[&str]) {
        for (key, _) in table.iter() {
            let name: &str = key.get_ref();
            if known.contains(&name) {
                continue;
            }
            let message = match did_you_mean(name, known) {
                Some(close) => format!("unknown key `{name}`; did you mean `{close}`?"),
                None => format!(
                    "unknown key `{name}`; expected one of: {}",
                    known.join(", ")
                ),
            };
            self.error(&join(path, name), key.span(), message);
        }
    }

    pub(crate) fn string<'v>(&mut self, v: &'v Value<'_>, key: &str) -> Option<&'v str> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            other => {
                self.wrong_type(v, key, "a string", other);
                None
            }
        }
    }

    pub(crate) fn boolean(&mut self, v: &Value<'_>, key: &str) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                self.wrong_type(v, key, "true or false", other);
                None
            }
        }
    }

    /// An integer in `min..=max`.
    pub(crate) fn integer(&mut self, v: &Value<'_>, key: &str, min: u64, max: u64) -> Option<u64> {
        let DeValue::Integer(int) = v.get_ref() else {
            self.wrong_type(v, key, "an integer", v.get_ref());
            return None;
        };
        match i128::from_str_radix(int.as_str(), int.radix()) {
            Ok(n) if n >= i128::from(min) && n <= i128::from(max) => u64::try_from(n).ok(),
            _ => {
                self.error(
                    key,
                    v.span(),
                    format!("must be between {min} and {max}, got {}", int.as_str()),
                );
                None
            }
        }
    }

    /// A number, integer or float.
    pub(crate) fn number(&mut self, v: &Value<'_>, key: &str) -> Option<f64> {
        match v.get_ref() {
            DeValue::Float(f) => f
                .as_str()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .or_else(|| {
                    self.error(key, v.span(), "expected a finite number");
                    None
                }),
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|n| n as f64),
            other => {
                self.wrong_type(v, key, "a number", other);
                None
            }
        }
    }

    /// A duration written as a string: `"500ms"`, `"10s"`, `"2m"`, `"1h 30m"`, at most
    /// `DURATION_MAX`.
    pub(crate) fn duration(&mut self, v: &Value<'_>, key: &str) -> Option<Duration> {
        self.duration_at_most(v, key, DURATION_MAX)
    }

    /// A duration, as `duration` reads it, of at most `max`.
    pub(crate) fn duration_at_most(
        &mut self,
        v: &Value<'_>,
        key: &str,
        max: Duration,
    ) -> Option<Duration> {
        if let DeValue::Integer(_) = v.get_ref() {
            self.error(
                key,
                v.span(),
                "durations are strings with a unit, such as \"500ms\", \"10s\" or \"2m\"",
            );
            return None;
        }
        let text = self.string(v, key)?;
        match humantime::parse_duration(text) {
            Ok(d) if d > max => {
                self.error(
                    key,
                    v.span(),
                    format!("`{text}` is too long: at most \"{}\"", days_text(max)),
                );
                None
            }
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.error(key, v.span(), "must be longer than zero");
                None
            }
            Err(e) => {
                self.error(
                    key,
                    v.span(),
                    format!("`{text}` is not a duration ({e}); write for example \"500ms\", \"10s\" or \"2m\""),
                );
                None
            }
        }
    }

    /// A size in bytes: an integer, or a string with a binary unit (`"32k"`, `"1m"`, `"2g"`).
    pub(crate) fn size(&mut self, v: &Value<'_>, key: &str, min: u64, max: u64) -> Option<u64> {
        if let DeValue::Integer(_) = v.get_ref() {
            return self.integer(v, key, min, max);
        }
        let text = self.string(v, key)?;
        let lower = text.trim().to_ascii_lowercase();
        let (digits, unit) = match lower.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
            Some((i, _)) => lower.split_at(i),
            None => (lower.as_str(), ""),
        };
        let factor: u64 = match unit.trim().trim_end_matches("ib").trim_end_matches('b') {
            "" => 1,
            "k" => 1 << 10,
            "m" => 1 << 20,
            "g" => 1 << 30,
            _ => 0,
        };
        match digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(factor))
        {
            Some(n) if factor > 0 && n >= min && n <= max => Some(n),
            Some(n) if factor > 0 => {
                self.error(
                    key,
                    v.span(),
                    format!("must be between {min} and {max} bytes, got {n}"),
                );
                None
            }
            _ => {
                self.error(
                    key,
                    v.span(),
                    format!("`{text}` is not a size; write bytes as a number, or \"32k\", \"1m\", \"2g\""),
                );
                None
            }
        }
    }

    pub(crate) fn table<'v, 'i>(&mut self, v: &'v Value<'i>, key: &str) -> Option<&'v Table<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                self.wrong_type(v, key, "a table", other);
                None
            }
        }
    }

    pub(crate) fn array<'v, 'i>(&mut self, v: &'v Value<'i>, key: &str) -> Option<&'v [Value<'i>]> {
        match v.get_ref() {
            DeValue::Array(a) => Some(a),
            other => {
                self.wrong_type(v, key, "an array", other);
                None
            }
        }
    }

    fn wrong_type(&mut self, v: &Value<'_>, key: &str, expected: &str, found: &DeValue<'_>) {
        self.error(
            key,
            v.span(),
            format!("expected {expected}, found {}", found.type_str()),
        );
    }
}

/// An optional boolean key; absent is `false`.
pub(crate) fn flag(r: &mut Reader<'_>, t: &Table<'_>, path: &str, key: &str) -> Option<bool> {
    flag_or(r, t, path, key, false)
}

/// An optional boolean key; absent is `default`.
pub(crate) fn flag_or(
    r: &mut Reader<'_>,
    t: &Table<'_>,
    path: &str,
    key: &str,
    default: bool,
) -> Option<bool> {
    match get(t, key) {
        Some(v) => r.boolean(v, &join(path, key)),
        None => Some(default),
    }
}

/// A whole number of days as a config would write it (`"49d"`); anything else as humantime
/// prints it.
fn days_text(d: Duration) -> String {
    const DAY: u64 = 24 * 3600;
    if d.subsec_nanos() == 0 && d.as_secs().is_multiple_of(DAY) {
        format!("{}d", d.as_secs() / DAY)
    } else {
        humantime::format_duration(d).to_string()
    }
}

/// An optional duration key; absent (or invalid, which is reported) is `default`.
pub(crate) fn duration_or(
    r: &mut Reader<'_>,
    t: &Table<'_>,
    path: &str,
    key: &str,
    default: std::time::Duration,
) -> std::time::Duration {
    duration_at_most_or(r, t, path, key, DURATION_MAX, default)
}

/// `duration_or` for a key with a shorter ceiling than `DURATION_MAX`.
pub(crate) fn duration_at_most_or(
    r: &mut Reader<'_>,
    t: &Table<'_>,
    path: &str,
    key: &str,
    max: Duration,
    default: Duration,
) -> Duration {
    match get(t, key) {
        // On error the default stands in so validation can go on; the error still fails the load.
        Some(v) => r
            .duration_at_most(v, &join(path, key), max)
            .unwrap_or(default),
        None => default,
    }
}

/// Looks a key up in a spanned table.
pub(crate) fn get<'t, 'i>(table: &'t Table<'i>, key: &str) -> Option<&'t Value<'i>> {
    table
        .iter()
        .find(|(k, _)| k.get_ref() == key)
        .map(|(_, v)| v)
}

/// Entries of a table with their key spans, in file order.
pub(crate) fn entries<'t, 'i>(
    table: &'t Table<'i>,
) -> Vec<(&'t Spanned<Cow<'i, str>>, &'t Value<'i>)> {
    let mut all: Vec<_> = table.iter().collect();
    all.sort_by_key(|(k, _)| k.span().start);
    all
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The closest candidate to a misspelt name, if it is close enough to be the likely intent.
pub(crate) fn did_you_mean<'c>(name: &str, candidates: &[&'c str]) -> Option<&'c str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(name, c), *c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            did_you_mean("wieght", &["weight", "addr", "backup"]),
            Some("weight")
        );
        assert_eq!(
            did_you_mean("upstrem", &["listen", "upstream"]),
            Some("upstream")
        );
        assert_eq!(did_you_mean("zzz", &["weight", "addr"]), None);
    }
}
