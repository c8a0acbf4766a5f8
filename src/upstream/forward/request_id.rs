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

/// Makes sure `headers` carries a usable `X-Request-Id` and returns it, borrowed: copying a
/// value just made makes its bytes shared, which is an allocation, so only a caller that
/// keeps it (the access log) copies it.
pub(crate) fn ensure(headers: &mut HeaderMap) -> &HeaderValue {
    // One lookup for both the look and the insert: this runs on every request.
    match headers.entry(&X_REQUEST_ID) {
        Entry::Vacant(slot) => slot.insert(generate()),
        Entry::Occupied(mut given) => {
            let mut lines = given.iter();
            let usable = matches!(
                (lines.next(), lines.next()),
                (Some(v), None) if (1..=128).contains(&v.len())
                    && v.as_bytes().iter().all(u8::is_ascii_graphic)
            );
            if !usable {
                // Replaces every line of it.
                given.insert(generate());
            }
            given.into_mut()
        }
    }
}

fn generate() -> HeaderValue {
    let prefix = PREFIX.get_or_init(|| hex16(random_prefix()));
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    hex_id(prefix, n)
}

/// `word` as 16 hex digits, most significant first, computed on all digits at once: each
/// nibble is moved into a byte of its own, then turned into ASCII with no table and no
/// branch. (`format!` here showed in profiles; a digit-by-digit loop cost about 60
/// instructions a request.)
fn hex16(word: u64) -> [u8; 16] {
    const fn every_byte(b: u8) -> u128 {
        u128::from_ne_bytes([b; 16])
    }
    let x = u128::from(word);
    // Halves of ever smaller width move apart until each nibble has a byte: nibble k (from
    // the least significant) ends in byte k.
    let x = ((x & 0xffff_ffff_0000_0000) << 32) | (x & 0xffff_ffff);
    let x = ((x & 0x0000_0000_ffff_0000_0000_0000_ffff_0000) << 16)
        | (x & 0x0000_0000_0000_ffff_0000_0000_0000_ffff);
    let x = ((x & 0x0000_ff00_0000_ff00_0000_ff00_0000_ff00) << 8)
        | (x & 0x0000_00ff_0000_00ff_0000_00ff_0000_00ff);
    let x = ((x & 0x00f0_00f0_00f0_00f0_00f0_00f0_00f0_00f0) << 4)
        | (x & 0x000f_000f_000f_000f_000f_000f_000f_000f);
    // 1 in each byte whose nibble is 10 or more (no byte can carry into the next: 15 + 6).
    let letters = ((x + every_byte(6)) >> 4) & every_byte(1);
    // '0' + n, or 'a' + n - 10, which is '0' + n + 39.
    let ascii = x + every_byte(b'0') + letters * 39;
    ascii.to_be_bytes()
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
        let id = ensure(&mut none).clone();
        assert_eq!((id.len(), &none[&X_REQUEST_ID]), (32, &id));

        for bad in ["", "has space", &"x".repeat(129)] {
            let mut h = HeaderMap::new();
            h.insert(&X_REQUEST_ID, HeaderValue::from_str(bad).expect("value"));
            let id = ensure(&mut h).clone();
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
    fn hex_digits_match_the_formatter() {
        let mut word = 0x9e37_79b9_7f4a_7c15_u64;
        for fixed in [
            0,
            1,
            9,
            10,
            15,
            16,
            0xa0,
            u64::MAX,
            1 << 63,
            0x0123_4567_89ab_cdef,
        ] {
            assert_eq!(
                hex16(fixed),
                *format!("{fixed:016x}").as_bytes(),
                "{fixed:#x}"
            );
        }
        for _ in 0..10_000 {
            word = word
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            assert_eq!(hex16(word), *format!("{word:016x}").as_bytes(), "{word:#x}");
        }
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
