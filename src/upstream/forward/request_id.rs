//! `X-Request-Id`: one id per request, sent to the backend and written in the access log, so a
//! request can be followed from rproxy's log into the application's.
//!
//! A client's own id is kept when it looks like one (1 to 128 visible ASCII characters), as
//! nginx's `$request_id` users and most tracing setups expect; otherwise rproxy makes one: a
//! random 64-bit prefix chosen at start and a process-wide counter, 32 hex digits, unique
//! without a lock or a random draw per request.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderValue;
use http::header::{Entry, HeaderMap, HeaderName};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

static COUNTER: AtomicU64 = AtomicU64::new(0);
/// The random prefix, already in hex: only the counter's half changes per request.
static PREFIX: OnceLock<[u8; 16]> = OnceLock::new();

/// Makes sure `headers` carries a usable `X-Request-Id` and returns it.
pub(crate) fn ensure(headers: &mut HeaderMap) -> HeaderValue {
    // One lookup for both the look and the insert: this runs on every request.
    match headers.entry(&X_REQUEST_ID) {
        Entry::Vacant(slot) => slot.insert(generate()).clone(),
        Entry::Occupied(mut given) => {
            let mut lines = given.iter();
            if let (Some(v), None) = (lines.next(), lines.next())
                && (1..=128).contains(&v.len())
                && v.as_bytes().iter().all(u8::is_ascii_graphic)
            {
                return v.clone();
            }
            let id = generate();
            // Replaces every line of it.
            given.insert(id.clone());
            id
        }
    }
}

fn generate() -> HeaderValue {
    let prefix = PREFIX.get_or_init(|| hex16(random_prefix()));
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    hex_id(prefix, n)
}

/// `word` as 16 hex digits, written by hand: `format!` here showed in profiles.
fn hex16(word: u64) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 16];
    for (i, byte) in text.iter_mut().enumerate() {
        *byte = HEX[((word >> (60 - 4 * i)) & 0xf) as usize];
    }
    text
}

/// The prefix's digits and `n`'s: 32 hex digits.
fn hex_id(prefix: &[u8; 16], n: u64) -> HeaderValue {
    let mut text = [0u8; 32];
    text[..16].copy_from_slice(prefix);
    text[16..].copy_from_slice(&hex16(n));
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// 64 random bits from the kernel, or, failing that, the clock and pid (ids then stay unique
/// within the process, which is what matters most).
fn random_prefix() -> u64 {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            nanos ^ u64::from(std::process::id()).rotate_left(32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_sane_client_id_and_replaces_anything_else() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(ensure(&mut h), "abc-123");
        assert_eq!(h.get_all(&X_REQUEST_ID).iter().count(), 1);

        let mut none = HeaderMap::new();
        let id = ensure(&mut none);
        assert_eq!((id.len(), &none[&X_REQUEST_ID]), (32, &id));

        for bad in ["", "has space", &"x".repeat(129)] {
            let mut h = HeaderMap::new();
            h.insert(&X_REQUEST_ID, HeaderValue::from_str(bad).expect("value"));
            let id = ensure(&mut h);
            assert_eq!(id.len(), 32, "{bad:?} replaced");
            assert_eq!(h[&X_REQUEST_ID], id);
        }
        let mut two = HeaderMap::new();
        two.append(&X_REQUEST_ID, HeaderValue::from_static("a"));
        two.append(&X_REQUEST_ID, HeaderValue::from_static("b"));
        ensure(&mut two);
        assert_eq!(two.get_all(&X_REQUEST_ID).iter().count(), 1);
    }

    #[test]
    fn ids_are_the_two_words_in_hex() {
        for (prefix, n) in [(0, 0), (0x0123_4567_89ab_cdef, 42), (u64::MAX, 1 << 63)] {
            assert_eq!(
                hex_id(&hex16(prefix), n),
                format!("{prefix:016x}{n:016x}").as_str()
            );
        }
    }

    #[test]
    fn generated_ids_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            assert!(seen.insert(generate()));
        }
    }
}
