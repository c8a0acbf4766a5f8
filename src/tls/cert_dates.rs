//! A certificate's expiry date, read from its DER encoding, for the warning given when a
//! certificate is loaded. rustls does not expose it and a whole X.509 parser would be a heavy
//! dependency for one field: this walks the few DER elements in front of it
//! (RFC 5280 4.1: version, serial, signature, issuer, then validity).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `notAfter` of a DER certificate; `None` if it cannot be read (the load goes on).
pub(super) fn not_after(der: &[u8]) -> Option<SystemTime> {
    let (_, cert, _) = element(der)?;
    let (_, mut tbs, _) = element(cert)?;
    // [0] version, present from X.509 v2 on.
    if tbs.first() == Some(&0xA0) {
        tbs = element(tbs)?.2;
    }
    for _ in 0..3 {
        // serial, signature algorithm, issuer
        tbs = element(tbs)?.2;
    }
    let (_, validity, _) = element(tbs)?;
    let (_, _, after_not_before) = element(validity)?;
    let (tag, time, _) = element(after_not_before)?;
    parse_time(tag, std::str::from_utf8(time).ok()?)
}

/// One DER element: its tag, its content, and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// UTCTime (`YYMMDDHHMMSSZ`, 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn parse_time(tag: u8, text: &str) -> Option<SystemTime> {
    let digits = text.strip_suffix('Z')?;
    let (year, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy: i64 = digits[..2].parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &digits[2..])
        }
        (0x18, 14) => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let field = |i: usize| rest.get(i..i + 2)?.parse::<i64>().ok();
    let (month, day) = (field(0)?, field(2)?);
    let seconds = field(4)? * 3600 + field(6)? * 60 + field(8)?;
    let days = days_from_civil(year, month, day);
    let total = u64::try_from(days * 86_400 + seconds).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(total))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_time_forms() {
        let t = parse_time(0x17, "300101000000Z").expect("utc time");
        assert_eq!(t, UNIX_EPOCH + Duration::from_secs(1_893_456_000));
        let g = parse_time(0x18, "20300101000000Z").expect("generalized time");
        assert_eq!(t, g);
        assert_eq!(
            parse_time(0x17, "991231235959Z"),
            Some(UNIX_EPOCH + Duration::from_secs(946_684_799))
        );
        assert_eq!(parse_time(0x17, "garbage"), None);
    }

    #[test]
    fn never_panics_on_damaged_input() {
        for der in [
            &[][..],
            &[0x30],
            &[0x30, 0x85, 1, 2, 3, 4, 5],
            &[0x30, 0x03, 0x30, 0x01],
        ] {
            assert_eq!(not_after(der), None);
        }
    }
}
