//! The retry keys of `[upstreams.NAME]`: `tries`, `try_timeout`, `retry_non_idempotent`,
//! `retry_buffer` and `retry_budget`, and `slow_start` for backends that come back.
//!
//! Read beside the rest of the upstream section; what they mean at run time is in
//! `upstream::pool` (the decision to try again, `retry.rs`) and `health::SlowStart` (the ramp).

use super::model::{BalancePolicy, RetryPolicy, defaults};
use super::reader::{Reader, Table, Value, flag, get, join};

pub(super) const RETRY_KEYS: &[&str] = &[
    "tries",
    "try_timeout",
    "retry_non_idempotent",
    "retry_buffer",
    "retry_budget",
    "slow_start",
];

pub(super) fn retry_policy(r: &mut Reader<'_>, path: &str, t: &Table<'_>) -> Option<RetryPolicy> {
    let tries = match get(t, "tries") {
        // nginx's `proxy_next_upstream_tries 0`: as many as there are candidates.
        Some(v) => r
            .integer(v, &join(path, "tries"), 0, 100)
            .map(|n| u32::try_from(n).ok().filter(|&n| n > 0)),
        None => Some(None),
    };
    let try_timeout = match get(t, "try_timeout") {
        Some(v) => r.duration(v, &join(path, "try_timeout")).map(Some),
        None => Some(None),
    };
    let non_idempotent = flag(r, t, path, "retry_non_idempotent");
    let buffer = match get(t, "retry_buffer") {
        Some(v) => r
            .size(v, &join(path, "retry_buffer"), 0, 16 << 20)
            .map(|n| n as usize),
        None => Some(defaults::RETRY_BUFFER),
    };
    let budget = match get(t, "retry_budget") {
        Some(v) => budget(r, &join(path, "retry_budget"), v),
        None => Some(Some(defaults::RETRY_BUDGET)),
    };
    Some(RetryPolicy {
        tries: tries?,
        try_timeout: try_timeout?,
        non_idempotent: non_idempotent?,
        buffer: buffer?,
        budget: budget?,
    })
}

/// `"20%"` (retries may add a fifth to the request rate) or `"off"`.
fn budget(r: &mut Reader<'_>, key: &str, v: &Value<'_>) -> Option<Option<f32>> {
    let text = r.string(v, key)?.trim();
    if text == "off" {
        return Some(None);
    }
    let percent = text
        .strip_suffix('%')
        .and_then(|p| p.trim().parse::<f32>().ok())
        .filter(|p| p.is_finite() && (0.0..=1000.0).contains(p));
    match percent {
        Some(p) => Some(Some(p / 100.0)),
        None => {
            r.error(
                key,
                v.span(),
                format!("`{text}` is not a percentage from \"0%\" to \"1000%\", or \"off\""),
            );
            None
        }
    }
}

/// `slow_start = "30s"`; refused with the hashing policies, whose point is that a key always
/// lands on the same backend (nginx Plus refuses the same combination).
pub(super) fn slow_start(
    r: &mut Reader<'_>,
    path: &str,
    t: &Table<'_>,
    balance: Option<&BalancePolicy>,
) -> Option<Option<std::time::Duration>> {
    let Some(v) = get(t, "slow_start") else {
        return Some(None);
    };
    let key = join(path, "slow_start");
    let ramp = r.duration(v, &key)?;
    if let Some(policy @ (BalancePolicy::IpHash | BalancePolicy::Hash { .. })) = balance {
        r.error(
            &key,
            v.span(),
            format!(
                "cannot be used with balance = \"{}\": the ramp would move keys between backends; use round_robin, least_conn or random_two",
                policy.name()
            ),
        );
        return None;
    }
    Some(Some(ramp))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::{Config, ConfigErrors, defaults, parse};

    fn upstream_with(keys: &str) -> Result<Config, ConfigErrors> {
        parse(
            Path::new("t.toml"),
            &format!(
                "[listeners.l]\nlisten = \"127.0.0.1:0\"\nupstream = \"u\"\n[upstreams.u]\nservers = [\"127.0.0.1:1\"]\n{keys}\n"
            ),
        )
    }

    #[test]
    fn defaults_retry_every_candidate_within_a_fifth_more_requests() {
        let c = upstream_with("").expect("valid");
        let u = &c.upstreams["u"];
        assert_eq!(u.retry.tries, None);
        assert_eq!(u.retry.try_timeout, None);
        assert!(!u.retry.non_idempotent);
        assert_eq!(u.retry.buffer, defaults::RETRY_BUFFER);
        assert_eq!(u.retry.budget, Some(0.2));
        assert_eq!(u.slow_start, None);
    }

    #[test]
    fn every_key_is_read() {
        let c = upstream_with(
            "tries = 2\ntry_timeout = \"3s\"\nretry_non_idempotent = true\nretry_buffer = \"1m\"\nretry_budget = \"50%\"\nslow_start = \"30s\"",
        )
        .expect("valid");
        let u = &c.upstreams["u"];
        assert_eq!(u.retry.tries, Some(2));
        assert_eq!(u.retry.try_timeout, Some(Duration::from_secs(3)));
        assert!(u.retry.non_idempotent);
        assert_eq!(u.retry.buffer, 1 << 20);
        assert_eq!(u.retry.budget, Some(0.5));
        assert_eq!(u.slow_start, Some(Duration::from_secs(30)));
        let off = upstream_with("tries = 0\nretry_budget = \"off\"").expect("valid");
        assert_eq!(off.upstreams["u"].retry.tries, None, "0: every candidate");
        assert_eq!(off.upstreams["u"].retry.budget, None);
    }

    #[test]
    fn mistakes_name_the_key() {
        let e = upstream_with(
            "tries = -1\ntry_timeout = 5\nretry_budget = \"20\"\nretry_buffer = \"lots\"\nslow_start = \"soon\"",
        )
        .expect_err("invalid")
        .to_string();
        for wanted in [
            "t.toml:6:9: upstreams.u.tries: must be between 0 and 100, got -1",
            "upstreams.u.try_timeout: durations are strings with a unit",
            "upstreams.u.retry_budget: `20` is not a percentage",
            "upstreams.u.retry_buffer: `lots` is not a size",
            "upstreams.u.slow_start: `soon` is not a duration",
        ] {
            assert!(e.contains(wanted), "{wanted} in {e}");
        }
        let e = upstream_with("balance = \"ip_hash\"\nslow_start = \"10s\"")
            .expect_err("slow start with a hash")
            .to_string();
        assert!(
            e.contains("upstreams.u.slow_start: cannot be used with balance = \"ip_hash\""),
            "{e}"
        );
    }
}
