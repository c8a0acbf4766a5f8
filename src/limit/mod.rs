//! Rate and concurrency limits per client (`[limits.NAME]`: nginx's `limit_req` and
//! `limit_conn`), applied to a request after its route is chosen and before it is forwarded.
//!
//! Sits between the router and `upstream::forward`: the listener asks [`admit`] with the
//! limits of the matched route (or of the listener), and either forwards the request, holding
//! what [`admit`] returned until the response body ends, or answers the refusal. A listener
//! without limits never gets here: it checks one empty slice.
//!
//! Order, as in nginx (limit_req's handler runs before limit_conn's in the preaccess phase):
//! first every rate limit (`bucket.rs`); a request refused by one is charged to none; one
//! within every burst is charged to all and waits the longest delay any of them asks. Then the
//! concurrency limits: a key with `conns` requests already in progress is refused. The state
//! per key lives in a bounded table (`table.rs`), one per limit, per rproxy instance; a reload
//! that leaves a limit's definition unchanged keeps its table (`Limiter::carry`).
//!
//! Imports `config`, `metrics` and `upstream` (the request key, as `hash` balancing builds it);
//! `state` holds the limiters and `listener` calls [`admit`].

mod bucket;
mod table;

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderValue, Response, StatusCode, header};
use metrics::{Counter, Gauge};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::config::{KeyPart, RateLimitConfig};
use crate::metrics::{LIMIT_CONNS_REFUSED_TOTAL, LIMIT_KEYS, LIMIT_REQUESTS_TOTAL};
use crate::upstream::{ProxyBody, local_response, request_key};

use bucket::Bucket;
use table::{Keys, Slot};

pub use table::BYTES_PER_KEY;

/// nginx ignores a key longer than this (and logs it); so does rproxy.
const MAX_KEY_LEN: usize = 65_535;

/// One `[limits.NAME]` at run time: its definition and what it remembers per key.
#[derive(Debug)]
pub struct Limiter {
    pub config: RateLimitConfig,
    bucket: Option<Bucket>,
    /// The key's hash function, keyed at random per limit (see `table.rs`).
    hasher: std::hash::RandomState,
    keys: Mutex<Keys>,
    /// The zero of the milliseconds the table keeps.
    epoch: Instant,
    delayed: Counter,
    refused: Counter,
    conns_refused: Counter,
    key_count: Gauge,
}

impl Limiter {
    pub fn new(config: &RateLimitConfig) -> Limiter {
        let name = config.name.clone();
        let counter = |result: &'static str| metrics::counter!(LIMIT_REQUESTS_TOTAL, "limit" => name.clone(), "result" => result);
        let limiter = Limiter {
            bucket: config
                .rate
                .map(|rate| Bucket::new(rate, config.burst, config.nodelay)),
            hasher: std::hash::RandomState::new(),
            keys: Mutex::new(Keys::new(config.max_keys.get())),
            epoch: Instant::now(),
            delayed: counter("delayed"),
            refused: counter("refused"),
            conns_refused: metrics::counter!(LIMIT_CONNS_REFUSED_TOTAL, "limit" => name.clone()),
            key_count: metrics::gauge!(LIMIT_KEYS, "limit" => name),
            config: config.clone(),
        };
        // A changed limit replacing one of the same name starts with no keys.
        limiter.key_count.set(0.0);
        limiter
    }

    /// The limiter for `config` in a new snapshot: `previous` (the running one of that name)
    /// if its definition is unchanged, so what it knows of each client survives a reload;
    /// else a new one that starts with no keys.
    pub fn carry(config: &RateLimitConfig, previous: Option<&Arc<Limiter>>) -> Arc<Limiter> {
        match previous {
            Some(before) if before.config == *config => Arc::clone(before),
            Some(_) => {
                tracing::info!(limit = %config.name, "limit changed: its clients' state starts afresh");
                Arc::new(Limiter::new(config))
            }
            None => Arc::new(Limiter::new(config)),
        }
    }

    /// Keys remembered now.
    pub fn key_count(&self) -> usize {
        self.keys.lock().len()
    }

    /// Heap bytes held for the keys, at most `max_keys * BYTES_PER_KEY`.
    pub fn heap_bytes(&self) -> usize {
        self.keys.lock().heap_bytes()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The hash of this request's key; `None` when the key is empty or too long (the request
    /// is then not limited by this limit, as in nginx).
    fn key_hash(&self, parts: &Parts, client: IpAddr) -> Option<u64> {
        let key = match self.config.key.parts.as_slice() {
            // The usual key, without building text: the address's bytes.
            [KeyPart::RemoteAddr] => {
                return Some(match client {
                    IpAddr::V4(ip) => self.hasher.hash_one(ip.octets()),
                    IpAddr::V6(ip) => self.hasher.hash_one(ip.octets()),
                });
            }
            _ => request_key(&self.config.key, parts, client),
        };
        if key.is_empty() {
            return None;
        }
        if key.len() > MAX_KEY_LEN {
            tracing::warn!(limit = %self.config.name, len = key.len(), "a request's limit key is over 65535 bytes: not limited");
            return None;
        }
        Some(self.hasher.hash_one(&key))
    }

    fn insert_counted(&self, keys: &Keys, new: bool) {
        if new {
            self.key_count.set(keys.len() as f64);
        }
    }
}

/// A request that may go on: the concurrency slots it holds until it is dropped (with the
/// response body, or with the request if it is abandoned).
#[derive(Debug)]
pub struct Admitted {
    held: Vec<ConnSlot>,
}

impl Admitted {
    /// Whether it holds anything (a request under rate limits only does not).
    pub fn holds(&self) -> bool {
        !self.held.is_empty()
    }
}

/// One request in progress counted against a key's `conns`.
#[derive(Debug)]
struct ConnSlot {
    limiter: Arc<Limiter>,
    slot: Slot,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        // A slot reused for another key since is not this one's to decrement.
        if let Some(entry) = self.limiter.keys.lock().get_mut(self.slot) {
            entry.conns = entry.conns.saturating_sub(1);
        }
    }
}

/// A refused request's answer: the limit's status, and for a rate limit `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    /// Whole seconds until the key's bucket lets a request through; `None` for `conns`
    /// (nothing says when a request in progress ends).
    pub retry_after: Option<u64>,
}

impl Refusal {
    pub fn response(self) -> Response<ProxyBody> {
        let mut resp = local_response(self.status, false);
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Applies `limits` (in order) to a request from `client`: waits when a rate limit delays
/// it, and says whether it may go on. See the module's documentation for the order.
pub async fn admit(
    limits: &[Arc<Limiter>],
    parts: &Parts,
    client: IpAddr,
) -> Result<Admitted, Refusal> {
    let hashes: Vec<Option<u64>> = limits.iter().map(|l| l.key_hash(parts, client)).collect();
    let delay = account_rates(limits, &hashes)?;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    take_conns(limits, &hashes)
}

/// The rate limits, as nginx's `ngx_http_limit_req_handler` applies them: each is looked up
/// in turn and the last is accounted at once; a refusal stops there and charges none of the
/// earlier ones; otherwise the earlier ones are accounted afterwards. The delay returned is
/// the longest one asked.
fn account_rates(limits: &[Arc<Limiter>], hashes: &[Option<u64>]) -> Result<Duration, Refusal> {
    let rated = || {
        limits
            .iter()
            .zip(hashes)
            .filter_map(|(l, h)| Some((l, l.bucket?, (*h)?)))
    };
    let Some(last) = rated().count().checked_sub(1) else {
        return Ok(Duration::ZERO);
    };
    // Looked up, not yet accounted: (limiter, slot, whether the key was new).
    let mut pending = Vec::new();
    let mut max_delay = (Duration::ZERO, None::<&Limiter>);
    for (i, (limiter, bucket, hash)) in rated().enumerate() {
        let now = limiter.now_ms();
        let mut keys = limiter.keys.lock();
        let (slot, entry, new) = keys.find_or_insert(hash, now);
        // A new key's first request is at excess 0 (nginx stores 0 for a new node).
        let excess = if new {
            0
        } else {
            bucket.excess(entry.excess, now.saturating_sub(entry.last))
        };
        if !new && bucket.refuses(excess) {
            drop(keys);
            limiter.refused.increment(1);
            tracing::debug!(limit = %limiter.config.name, excess, "request refused by rate limit");
            return Err(Refusal {
                status: status(limiter),
                retry_after: Some(bucket.retry_after(excess)),
            });
        }
        if i == last {
            if !new {
                store(entry, excess, now);
            }
            limiter.insert_counted(&keys, new);
            let delay = bucket.delay(excess);
            if delay > max_delay.0 {
                max_delay = (delay, Some(limiter));
            }
        } else {
            limiter.insert_counted(&keys, new);
            pending.push((limiter, bucket, slot, new));
        }
    }
    // nginx's `ngx_http_limit_req_account`: the earlier limits, computed afresh.
    for (limiter, bucket, slot, new) in pending.into_iter().rev() {
        let now = limiter.now_ms();
        let mut keys = limiter.keys.lock();
        let Some(entry) = keys.get_mut(slot) else {
            continue; // forgotten in between: a flood of new keys
        };
        let excess = if new {
            0
        } else {
            bucket.excess(entry.excess, now.saturating_sub(entry.last))
        };
        store(entry, excess, now);
        let delay = bucket.delay(excess);
        if delay > max_delay.0 {
            max_delay = (delay, Some(limiter));
        }
    }
    if let (delay, Some(limiter)) = max_delay {
        limiter.delayed.increment(1);
        tracing::debug!(limit = %limiter.config.name, ?delay, "request delayed by rate limit");
    }
    Ok(max_delay.0)
}

/// Stores a request's excess; `last` moves only when time has passed, as in nginx (so the
/// fraction of a millisecond is not lost at high rates).
fn store(entry: &mut table::Entry, excess: u64, now: u64) {
    entry.excess = excess;
    if now != entry.last {
        entry.last = now;
    }
}

/// The concurrency limits: one more request in progress for each key, unless one of them is
/// at its `conns` (the slots taken so far are then given back).
fn take_conns(limits: &[Arc<Limiter>], hashes: &[Option<u64>]) -> Result<Admitted, Refusal> {
    let mut held = Vec::new();
    for (limiter, hash) in limits.iter().zip(hashes) {
        let (Some(max), Some(hash)) = (limiter.config.conns, *hash) else {
            continue;
        };
        let now = limiter.now_ms();
        let mut keys = limiter.keys.lock();
        let (slot, entry, new) = keys.find_or_insert(hash, now);
        if entry.conns >= max.get() {
            drop(keys);
            limiter.conns_refused.increment(1);
            tracing::debug!(limit = %limiter.config.name, "request refused: its key is at `conns`");
            return Err(Refusal {
                status: status(limiter),
                retry_after: None,
            });
        }
        entry.conns += 1;
        limiter.insert_counted(&keys, new);
        drop(keys);
        held.push(ConnSlot {
            limiter: Arc::clone(limiter),
            slot,
        });
    }
    Ok(Admitted { held })
}

fn status(limiter: &Limiter) -> StatusCode {
    // Validation keeps it within 400..=599.
    StatusCode::from_u16(limiter.config.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
}

#[cfg(test)]
mod tests;
