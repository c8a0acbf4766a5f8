//! The request head kept for sending a request again, in one small buffer.
//!
//! `forward` hands the rewritten head itself to the first attempt, and hyper's client drops it
//! as soon as it is written, while it is still in the CPU's caches. A later attempt (after a
//! backend failed, or a kept-alive connection turned out closed) needs the head again, so a
//! copy is kept until the request ends, unless `tries = 1` rules any later attempt out
//! (writing it costs about 600 instructions a request: callgrind, with and without). A clone
//! of the `HeaderMap` was that copy: an index table, a bucket per header and a reference count
//! per value, all of which had gone cold by the time the response came back (other
//! connections' requests ran meanwhile) and were read again to drop them. This copy is the
//! header lines in one buffer, written while the head is hot; dropping it is one free. Most
//! requests are never sent again; the rare one that is has its head parsed back from the
//! buffer. Measured: 34,405 → 34,166 instructions a request at
//! 50 connections (callgrind), and 255 → 222 misses a request at 200 in a simulated 1 MiB
//! last-level cache, one core's L2 here (cachegrind). At 200 connections these misses are
//! what rproxy's CPU time per request has above its instruction count (benches/RESULTS.md).

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The head's header lines: for each value, a byte saying whether it is sensitive (kept from
/// HPACK's indexing, for an HTTP/2 backend), the name, `:`, the value and `\n`. Neither a
/// name nor a value can hold `\n`, and a name cannot hold `:`, so the lines split back
/// unambiguously.
#[derive(Debug, Default)]
pub(super) struct HeadCopy(Vec<u8>);

const SENSITIVE: u8 = b'!';
const PLAIN: u8 = b' ';
const USUAL_SIZE: usize = 512;

impl HeadCopy {
    pub(super) fn of(headers: &HeaderMap) -> Self {
        // Room for a usual head in one allocation, without a pass to measure it first; a
        // larger one grows the buffer.
        let mut buf = Vec::with_capacity(USUAL_SIZE);
        for (name, value) in headers {
            buf.push(if value.is_sensitive() {
                SENSITIVE
            } else {
                PLAIN
            });
            buf.extend_from_slice(name.as_str().as_bytes());
            buf.push(b':');
            buf.extend_from_slice(value.as_bytes());
            buf.push(b'\n');
        }
        HeadCopy(buf)
    }

    /// The headers as they were copied. Every name and value was valid when copied, so none
    /// is dropped here (a line that somehow failed to parse would be left out, not fail the
    /// request).
    pub(super) fn headers(&self) -> HeaderMap {
        let lines = self.0.split(|&b| b == b'\n').filter(|l| !l.is_empty());
        let mut headers = HeaderMap::with_capacity(lines.clone().count());
        for line in lines {
            let Some((&flag, line)) = line.split_first() else {
                continue;
            };
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], &line[colon + 1..]);
            if let (Ok(name), Ok(mut value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                value.set_sensitive(flag == SENSITIVE);
                headers.append(name, value);
            }
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_gives_back_the_same_headers() {
        let mut h = HeaderMap::new();
        h.append("host", HeaderValue::from_static("example.com"));
        h.append("x-many", HeaderValue::from_static("1"));
        h.append("x-many", HeaderValue::from_static("2, 3"));
        h.append("x-empty", HeaderValue::from_static(""));
        h.append("x-colon", HeaderValue::from_static("a:b: c"));
        h.append(
            "x-obs-text",
            HeaderValue::from_bytes(b"caf\xe9\tx").expect("value"),
        );
        let mut secret = HeaderValue::from_static("Bearer t");
        secret.set_sensitive(true);
        h.append("authorization", secret);

        let back = HeadCopy::of(&h).headers();
        assert_eq!(back, h);
        // Order within a name is kept, and so is sensitivity.
        let many: Vec<_> = back.get_all("x-many").iter().collect();
        assert_eq!(many, ["1", "2, 3"]);
        assert!(back["authorization"].is_sensitive());
        assert!(!back["host"].is_sensitive());
        assert!(HeadCopy::of(&HeaderMap::new()).headers().is_empty());
    }
}
