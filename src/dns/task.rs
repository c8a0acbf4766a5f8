//! The background task that asks each followed name again when its answer is due, and tells
//! the server (through a `watch` channel) when some name's addresses changed. It also owns
//! the first resolution at start and reload, which never fails: a name that does not resolve
//! yet just has no addresses and is retried with the backoff.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, ConfigErrors};

use super::lookup::{Outcome, Resolver};
use super::schedule::{refresh_after, retry_after};
use super::{Answer, Answers, Query, Records, queries};

/// The running task: its latest answers, and a way to stop it.
#[derive(Debug)]
pub struct DnsTask {
    answers: watch::Receiver<Arc<Answers>>,
    stop: CancellationToken,
}

impl DnsTask {
    /// Follows every name in `answers` (as `first_answers` left them) until `stop`.
    pub fn spawn(
        resolver: Resolver,
        answers: Answers,
        valid: Option<Duration>,
        stop: CancellationToken,
    ) -> DnsTask {
        let (tx, rx) = watch::channel(Arc::new(answers.clone()));
        tokio::spawn(follow(resolver, answers, valid, tx, stop.clone()));
        DnsTask { answers: rx, stop }
    }

    /// What the task knows now (each name's latest answer and schedule).
    pub fn latest(&self) -> Arc<Answers> {
        Arc::clone(&self.answers.borrow())
    }

    /// Waits until some name's addresses changed, and returns the answers then; never
    /// returns once the task has ended (it follows no name).
    pub async fn changed(&mut self) -> Arc<Answers> {
        if self.answers.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        Arc::clone(&self.answers.borrow_and_update())
    }
}

impl Drop for DnsTask {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The resolver and first answers for `config`, at start and reload: `resolver` (the running
/// one) is kept when `[resolver]` did not change, and `previous` answers are kept for names
/// already followed. `None` and no answers when `config` follows no name. Fails only when no
/// DNS server is known (no `addrs` and none in `/etc/resolv.conf`); a name that does not
/// resolve is not a failure.
pub async fn prepare(
    config: &Config,
    resolver: Option<&Resolver>,
    previous: Option<&Answers>,
) -> Result<(Option<Resolver>, Answers), ConfigErrors> {
    if queries(config).is_empty() {
        return Ok((None, Answers::default()));
    }
    let resolver = match resolver.filter(|r| *r.config() == config.resolver) {
        Some(r) => r.clone(),
        None => Resolver::new(&config.resolver)
            .map_err(|e| ConfigErrors::whole_file(&config.source, e))?,
    };
    let answers = first_answers(config, &resolver, previous).await;
    Ok((Some(resolver), answers))
}

/// One warning per `resolve = true` server whose name has no address now, at its place in
/// the file (for `rproxy -t`).
pub fn unresolved_warnings(config: &Config, answers: &Answers) -> Vec<ConfigError> {
    config
        .upstreams
        .values()
        .flat_map(|u| &u.servers)
        .filter(|s| s.resolve)
        .filter_map(|s| {
            let q = Query::of(&s.addr)?;
            let a = answers.get(&q)?;
            a.records
                .as_ref()
                .is_none_or(Records::is_empty)
                .then(|| ConfigError {
                    file: config.source.clone(),
                    line: s.origin.line,
                    column: s.origin.column,
                    key: s.origin.key.clone(),
                    message: format!(
                        "`{q}` has no address now ({}); rproxy starts without it and keeps asking",
                        a.error.as_deref().unwrap_or("no records")
                    ),
                })
        })
        .collect()
}

/// Every name `config` follows, each with an answer: what `previous` (the running task)
/// knows for names followed before, a lookup now for the others, all at once. A failed
/// lookup is logged and leaves the name without addresses until a retry finds them.
pub async fn first_answers(
    config: &Config,
    resolver: &Resolver,
    previous: Option<&Answers>,
) -> Answers {
    let mut out = BTreeMap::new();
    let mut todo = Vec::new();
    for q in queries(config) {
        match previous.and_then(|p| p.get(&q)) {
            Some(a) => {
                out.insert(q, a.clone());
            }
            None => todo.push(q),
        }
    }
    if !todo.is_empty() {
        crate::metrics::dns_queries_start();
    }
    let found = futures_util::future::join_all(todo.iter().map(|q| resolver.lookup(q))).await;
    let now = Instant::now();
    let valid = config.resolver.valid;
    for (q, outcome) in todo.into_iter().zip(found) {
        let answer = next_answer(None, &outcome, now, valid);
        log_answer(&q, None, &answer, &outcome);
        out.insert(q, answer);
    }
    Answers(out)
}

/// The answer after `outcome`: records and a refresh at their TTL when found; none when the
/// name is gone; the last good records when the server failed to answer. Failures retry
/// with the backoff.
pub(super) fn next_answer(
    before: Option<&Answer>,
    outcome: &Outcome,
    now: Instant,
    valid: Option<Duration>,
) -> Answer {
    let failures = before.map_or(0, |a| a.failures).saturating_add(1);
    match outcome {
        Outcome::Found { records, ttl } => Answer {
            records: Some(records.clone()),
            error: None,
            failures: 0,
            refresh: now + refresh_after(*ttl, valid),
        },
        Outcome::Gone { why, .. } => Answer {
            records: None,
            error: Some(why.clone()),
            failures,
            refresh: now + retry_after(failures, valid),
        },
        Outcome::Failed { why, .. } => Answer {
            records: before.and_then(|a| a.records.clone()),
            error: Some(why.clone()),
            failures,
            refresh: now + retry_after(failures, valid),
        },
    }
}

/// A debug line per address that came or went, and a warning when a name has none or the DNS
/// server failed (once per episode, not at every retry).
fn log_answer(query: &Query, before: Option<&Answer>, after: &Answer, outcome: &Outcome) {
    let name = query.name();
    let (added, removed) = super::changes(
        before.and_then(|a| a.records.as_ref()),
        after.records.as_ref(),
    );
    // The server logs each backend that comes or goes (with its upstream and port).
    for a in &added {
        tracing::debug!(name, addr = %a, "dns: {name}: answer added {a}");
    }
    for r in &removed {
        tracing::debug!(name, addr = %r, "dns: {name}: answer removed {r}");
    }
    let first_failure = after.failures == 1;
    let retry = after.refresh.saturating_duration_since(Instant::now());
    match (outcome, &after.records) {
        (Outcome::Found { .. }, _) => {}
        (Outcome::Gone { why, result }, _) if first_failure || !removed.is_empty() => {
            tracing::warn!(name, result, retry_in = ?retry, "dns: {name}: {why}; it has no addresses");
        }
        (Outcome::Failed { why, result }, Some(kept)) if first_failure => {
            tracing::warn!(name, result, retry_in = ?retry, "dns: {name}: {why}; keeping its last {} addresses", kept.len());
        }
        (Outcome::Failed { why, result }, None) if first_failure => {
            tracing::warn!(name, result, retry_in = ?retry, "dns: {name}: {why}; it has no addresses yet");
        }
        _ => {
            tracing::debug!(name, result = outcome.result(), failures = after.failures, retry_in = ?retry, "dns: {name}: still no answer");
        }
    }
}

async fn follow(
    resolver: Resolver,
    mut answers: Answers,
    valid: Option<Duration>,
    tx: watch::Sender<Arc<Answers>>,
    stop: CancellationToken,
) {
    loop {
        let Some(next) = answers.0.values().map(|a| a.refresh).min() else {
            return;
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(next) => {}
        }
        let now = Instant::now();
        let due: Vec<Query> = answers
            .0
            .iter()
            .filter(|(_, a)| a.refresh <= now)
            .map(|(q, _)| q.clone())
            .collect();
        let found = tokio::select! {
            () = stop.cancelled() => return,
            found = futures_util::future::join_all(due.iter().map(|q| resolver.lookup(q))) => found,
        };
        let now = Instant::now();
        let mut changed = false;
        for (q, outcome) in due.into_iter().zip(found) {
            let before = answers.0.get(&q);
            let after = next_answer(before, &outcome, now, valid);
            log_answer(&q, before, &after, &outcome);
            changed |= records_of(before) != after.records.as_ref();
            answers.0.insert(q, after);
        }
        let latest = Arc::new(answers.clone());
        // Always kept up to date (a reload seeds the next task from it); the server is woken
        // only when some addresses changed.
        tx.send_if_modified(|current| {
            *current = latest;
            changed
        });
    }
}

fn records_of(answer: Option<&Answer>) -> Option<&Records> {
    answer.and_then(|a| a.records.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn hosts(ips: &[&str]) -> Records {
        Records::Hosts(
            ips.iter()
                .map(|s| s.parse::<IpAddr>().expect("an IP"))
                .collect(),
        )
    }

    fn failed() -> Outcome {
        Outcome::Failed {
            result: "error",
            why: "SERVFAIL".into(),
        }
    }

    /// The whole life of a name on the paused clock: unresolved at start with a backoff of
    /// 1, 2 s; found and refreshed at its TTL; the DNS server failing keeps the addresses
    /// and retries from 1 s again; NXDOMAIN removes them.
    #[tokio::test(start_paused = true)]
    async fn answers_follow_outcomes_and_never_lose_addresses_to_a_failure() {
        let s = Duration::from_secs;
        let t0 = Instant::now();
        let gone = Outcome::Gone {
            result: "nxdomain",
            why: "NXDOMAIN".into(),
        };
        let a = next_answer(None, &gone, t0, None);
        assert_eq!(
            (a.records.clone(), a.failures, a.refresh - t0),
            (None, 1, s(1))
        );
        let a = next_answer(Some(&a), &failed(), t0, None);
        assert_eq!(
            (a.records.clone(), a.failures, a.refresh - t0),
            (None, 2, s(2))
        );

        tokio::time::advance(s(2)).await;
        let found = Outcome::Found {
            records: hosts(&["10.0.0.1"]),
            ttl: s(30),
        };
        let now = Instant::now();
        let a = next_answer(Some(&a), &found, now, None);
        assert_eq!((a.failures, a.refresh - now), (0, s(30)));
        assert_eq!(a.records, Some(hosts(&["10.0.0.1"])));

        let a = next_answer(Some(&a), &failed(), now, None);
        assert_eq!(
            a.records,
            Some(hosts(&["10.0.0.1"])),
            "kept through a failure"
        );
        assert_eq!((a.failures, a.refresh - now), (1, s(1)));
        let a = next_answer(Some(&a), &failed(), now, Some(s(1)));
        assert_eq!(a.refresh - now, s(1), "never longer than valid");
        assert!(a.records.is_some());

        let a = next_answer(Some(&a), &gone, now, None);
        assert_eq!(
            a.records, None,
            "an authoritative 'no such name' removes them"
        );

        // `valid` replaces a TTL of 0.
        let a = next_answer(
            None,
            &Outcome::Found {
                records: hosts(&["10.0.0.1"]),
                ttl: s(0),
            },
            now,
            Some(s(5)),
        );
        assert_eq!(a.refresh - now, s(5));
    }
}
