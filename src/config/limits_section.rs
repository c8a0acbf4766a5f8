//! The connection-limit keys of `[upstreams.NAME]`: `max_conns` (the upstream's default, and a
//! server's own) and the `[upstreams.NAME.queue]` table.
//!
//! Read beside the rest of the upstream section; what they mean at run time is in
//! `upstream::pool` (`limit.rs`: a backend at its limit takes no new request; `queue.rs`: where
//! requests wait for a free slot).

use std::num::NonZeroU32;

use super::model::{QueueConfig, defaults};
use super::reader::{Reader, Table, Value, get, join};

pub(super) const LIMIT_KEYS: &[&str] = &["max_conns", "queue"];

/// The largest `max_conns`: far beyond what one backend process serves at once.
const MAX_CONNS: u64 = 1_000_000;
/// The largest queue: each waiting request holds its client connection and a little memory.
const MAX_QUEUE: u64 = 1_000_000;

/// `max_conns = N` on the upstream or on one server: `Some(None)` for `0`, nginx's "no limit"
/// (so one server can be exempt from the upstream's default).
pub(super) fn max_conns(
    r: &mut Reader<'_>,
    v: &Value<'_>,
    key: &str,
) -> Option<Option<NonZeroU32>> {
    r.integer(v, key, 0, MAX_CONNS)
        .map(|n| u32::try_from(n).ok().and_then(NonZeroU32::new))
}

/// The upstream's `max_conns`, the default of its servers.
pub(super) fn default_max_conns(
    r: &mut Reader<'_>,
    path: &str,
    t: &Table<'_>,
) -> Option<Option<NonZeroU32>> {
    match get(t, "max_conns") {
        Some(v) => max_conns(r, v, &join(path, "max_conns")),
        None => Some(None),
    }
}

/// `[upstreams.NAME.queue]` with `size` and `timeout`. `limited` says whether the upstream or
/// any of its servers has a `max_conns` (`None` when the servers could not be read): without
/// one nothing ever waits, so a queue is a mistake worth reporting.
pub(super) fn queue(
    r: &mut Reader<'_>,
    path: &str,
    t: &Table<'_>,
    limited: Option<bool>,
) -> Option<Option<QueueConfig>> {
    let Some(v) = get(t, "queue") else {
        return Some(None);
    };
    let key = join(path, "queue");
    let q = r.table(v, &key)?;
    r.check_keys(q, &key, &["size", "timeout"]);
    let size = match get(q, "size") {
        Some(s) => r
            .integer(s, &join(&key, "size"), 1, MAX_QUEUE)
            .and_then(|n| NonZeroU32::new(u32::try_from(n).ok()?)),
        None => {
            r.error(
                &key,
                v.span(),
                "missing key `size` (how many requests may wait at once)",
            );
            None
        }
    };
    let timeout = match get(q, "timeout") {
        Some(d) => r.duration(d, &join(&key, "timeout")),
        None => Some(defaults::QUEUE_TIMEOUT),
    };
    if limited == Some(false) {
        r.error(
            &key,
            v.span(),
            "no request ever waits here: set `max_conns` on the upstream or on its servers",
        );
        return None;
    }
    Some(Some(QueueConfig {
        size: size?,
        timeout: timeout?,
    }))
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::path::Path;
    use std::time::Duration;

    use crate::config::{Config, ConfigErrors, QueueConfig, defaults, parse};

    fn upstream(servers: &str, keys: &str) -> Result<Config, ConfigErrors> {
        parse(
            Path::new("t.toml"),
            &format!(
                "[listeners.l]\nlisten = \"127.0.0.1:0\"\nupstream = \"u\"\n[upstreams.u]\nservers = [{servers}]\n{keys}\n"
            ),
        )
    }

    fn limits(c: &Config) -> Vec<Option<u32>> {
        c.upstreams["u"]
            .servers
            .iter()
            .map(|s| s.max_conns.map(NonZeroU32::get))
            .collect()
    }

    #[test]
    fn no_limit_and_no_queue_by_default() {
        let c = upstream(r#""127.0.0.1:1""#, "").expect("valid");
        assert_eq!(limits(&c), vec![None]);
        assert_eq!(c.upstreams["u"].queue, None);
    }

    #[test]
    fn a_server_limit_overrides_the_upstreams_and_zero_means_none() {
        let c = upstream(
            r#""127.0.0.1:1", { addr = "127.0.0.1:2", max_conns = 1 }, { addr = "127.0.0.1:3", max_conns = 0 }"#,
            "max_conns = 8",
        )
        .expect("valid");
        assert_eq!(limits(&c), vec![Some(8), Some(1), None]);
        let c = upstream(
            r#"{ addr = "127.0.0.1:1", max_conns = 2 }, "127.0.0.1:2""#,
            "",
        )
        .expect("valid");
        assert_eq!(limits(&c), vec![Some(2), None]);
    }

    #[test]
    fn a_queue_has_a_size_and_a_default_timeout() {
        let c = upstream(
            r#""127.0.0.1:1""#,
            "max_conns = 1\n[upstreams.u.queue]\nsize = 100",
        )
        .expect("valid");
        assert_eq!(
            c.upstreams["u"].queue,
            Some(QueueConfig {
                size: NonZeroU32::new(100).expect("non-zero"),
                timeout: defaults::QUEUE_TIMEOUT
            })
        );
        // A limit on one server is enough, and the inline table form works too.
        let c = upstream(
            r#"{ addr = "127.0.0.1:1", max_conns = 1 }, "127.0.0.1:2""#,
            "queue = { size = 5, timeout = \"2s\" }",
        )
        .expect("valid");
        let q = c.upstreams["u"].queue.expect("a queue");
        assert_eq!((q.size.get(), q.timeout), (5, Duration::from_secs(2)));
    }

    #[test]
    fn mistakes_name_the_key() {
        let e = upstream(
            r#"{ addr = "127.0.0.1:1", max_conns = -1 }, { addr = "127.0.0.1:2", max_conns = "10" }"#,
            "max_conns = 2000000\n[upstreams.u.queue]\nsize = 0\ntimeout = \"0s\"\nlength = 3",
        )
        .expect_err("invalid")
        .to_string();
        for wanted in [
            "t.toml:5:48: upstreams.u.servers[0].max_conns: must be between 0 and 1000000, got -1",
            "upstreams.u.servers[1].max_conns: expected an integer, found string",
            "t.toml:6:13: upstreams.u.max_conns: must be between 0 and 1000000, got 2000000",
            "t.toml:8:8: upstreams.u.queue.size: must be between 1 and 1000000, got 0",
            "t.toml:9:11: upstreams.u.queue.timeout: must be longer than zero",
            "t.toml:10:1: upstreams.u.queue.length: unknown key `length`; expected one of: size, timeout",
        ] {
            assert!(e.contains(wanted), "{wanted} in {e}");
        }
        let e = upstream(
            r#""127.0.0.1:1""#,
            "max_conns = 1\nqueue = { timeout = \"5s\" }",
        )
        .expect_err("no size")
        .to_string();
        assert!(
            e.contains("t.toml:7:9: upstreams.u.queue: missing key `size`"),
            "{e}"
        );
    }

    #[test]
    fn a_queue_without_any_limit_is_refused() {
        for (servers, keys) in [
            (r#""127.0.0.1:1""#, "[upstreams.u.queue]\nsize = 10"),
            (
                r#"{ addr = "127.0.0.1:1", max_conns = 0 }"#,
                "queue = { size = 10 }",
            ),
        ] {
            let e = upstream(servers, keys)
                .expect_err("a queue nothing waits in")
                .to_string();
            assert!(
                e.contains(
                    "upstreams.u.queue: no request ever waits here: set `max_conns` on the upstream or on its servers"
                ),
                "{e}"
            );
        }
    }
}
