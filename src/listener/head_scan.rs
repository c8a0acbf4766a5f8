//! A look at the raw bytes of an HTTP/1 request head, for the two facts hyper's parsed request
//! no longer shows: a `#` fragment in the request target (`http::Uri` drops it) and a head
//! that carried both `Content-Length` and `Transfer-Encoding` (hyper removes the former).
//! Both are signs of a request built to be read differently by two parsers, and the edge check
//! (`validate.rs`) refuses them. It also counts the request target's bytes, so that a target
//! longer than `max_uri_length` is answered 414 as soon as that is known (nginx's answer),
//! instead of the 431 hyper would give once the whole head outgrew `max_header_size`.
//!
//! The scanner runs over a head from its first byte to the blank line that ends it and then
//! stops: body bytes are never scanned.

pub(crate) const FRAGMENT: u8 = 1;
pub(crate) const CONTENT_LENGTH: u8 = 2;
pub(crate) const TRANSFER_ENCODING: u8 = 4;
/// The request target is longer than the limit `HeadScan::new` was given.
pub(crate) const TARGET_TOO_LONG: u8 = 8;

const NAME_MAX: usize = 17; // "transfer-encoding"

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Off,
    Method,
    Target,
    LineRest,
    LineStart,
    Name,
    Value,
}

#[derive(Debug)]
pub(crate) struct HeadScan {
    state: State,
    name: [u8; NAME_MAX],
    name_len: usize,
    flags: u8,
    /// Bytes of the request target seen so far, and how many it may have.
    target_len: usize,
    max_target: usize,
}

impl HeadScan {
    /// A scanner that flags a request target longer than `max_target` bytes.
    pub(crate) fn new(max_target: usize) -> Self {
        HeadScan {
            state: State::Off,
            name: [0; NAME_MAX],
            name_len: 0,
            flags: 0,
            target_len: 0,
            max_target,
        }
    }

    /// A new request head begins with the next byte fed.
    pub(crate) fn start(&mut self) {
        self.state = State::Method;
        self.flags = 0;
        self.target_len = 0;
    }

    /// Feeds bytes; returns the flags found so far in this head once it has ended (or when
    /// something was found), and clears them.
    ///
    /// Inside the method, the target and the values it jumps to the next byte that matters
    /// (memchr) rather than stepping through each: this runs on every request head.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> u8 {
        let mut i = 0;
        while i < bytes.len() {
            let rest = &bytes[i..];
            let (skip, state) = match self.state {
                State::Off => break,
                State::Method => match memchr::memchr(b' ', rest) {
                    Some(k) => (k + 1, State::Target),
                    None => (rest.len(), State::Method),
                },
                State::Target => {
                    let (skip, state) = match memchr::memchr3(b'#', b' ', b'\n', rest) {
                        Some(k) => (
                            k + 1,
                            match rest[k] {
                                b'#' => {
                                    self.flags |= FRAGMENT;
                                    State::Target
                                }
                                b' ' => State::LineRest,
                                _ => State::LineStart,
                            },
                        ),
                        None => (rest.len(), State::Target),
                    };
                    // What was skipped is target, less the space or line end that ended it.
                    self.count_target(skip - usize::from(state != State::Target));
                    (skip, state)
                }
                State::LineRest | State::Value => match memchr::memchr(b'\n', rest) {
                    Some(k) => (k + 1, State::LineStart),
                    None => (rest.len(), self.state),
                },
                State::LineStart => (
                    1,
                    match rest[0] {
                        b'\r' => State::LineStart,
                        b'\n' => State::Off,
                        // Only the framing headers' names matter, and only they (of the two)
                        // start with these: any other line is skipped whole.
                        c @ (b'c' | b'C' | b't' | b'T') => {
                            self.name_len = 0;
                            self.push_name(c);
                            State::Name
                        }
                        _ => State::LineRest,
                    },
                ),
                State::Name => (
                    1,
                    match rest[0] {
                        b':' => {
                            self.flags |= self.framing_name();
                            State::Value
                        }
                        b'\n' => State::LineStart,
                        c => {
                            self.push_name(c);
                            State::Name
                        }
                    },
                ),
            };
            i += skip;
            self.state = state;
        }
        std::mem::take(&mut self.flags)
    }

    /// Counts `n` more bytes of target; flags the target once, when it passes the limit.
    fn count_target(&mut self, n: usize) {
        let before = self.target_len;
        self.target_len = before.saturating_add(n);
        if before <= self.max_target && self.target_len > self.max_target {
            self.flags |= TARGET_TOO_LONG;
        }
    }

    /// The flag for the header name just read, if it is a framing header.
    fn framing_name(&self) -> u8 {
        match &self.name[..self.name_len.min(NAME_MAX)] {
            b"content-length" if self.name_len == 14 => CONTENT_LENGTH,
            b"transfer-encoding" if self.name_len == 17 => TRANSFER_ENCODING,
            _ => 0,
        }
    }

    fn push_name(&mut self, c: u8) {
        if self.name_len < NAME_MAX {
            self.name[self.name_len] = c.to_ascii_lowercase();
        }
        self.name_len += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> u8 {
        let mut s = HeadScan::new(usize::MAX);
        s.start();
        chunks.iter().fold(0, |acc, c| acc | s.feed(c))
    }

    impl HeadScan {
        /// The scanner as first written, one byte at a time: the reference for `feed`.
        fn feed_bytewise(&mut self, bytes: &[u8]) -> u8 {
            for &b in bytes {
                self.state = match (self.state, b) {
                    (State::Off, _) => break,
                    (State::Method, b' ') => State::Target,
                    (State::Method, _) => State::Method,
                    (State::Target, b'#') => {
                        self.flags |= FRAGMENT;
                        self.count_target(1);
                        State::Target
                    }
                    (State::Target, b' ') => State::LineRest,
                    (State::Target | State::LineRest | State::Value | State::Name, b'\n') => {
                        State::LineStart
                    }
                    (State::Target, _) => {
                        self.count_target(1);
                        State::Target
                    }
                    (State::LineRest, _) => State::LineRest,
                    (State::LineStart, b'\r') => State::LineStart,
                    (State::LineStart, b'\n') => State::Off,
                    (State::LineStart, c) => {
                        self.name_len = 0;
                        self.push_name(c);
                        State::Name
                    }
                    (State::Name, b':') => {
                        self.flags |= match &self.name[..self.name_len.min(NAME_MAX)] {
                            b"content-length" if self.name_len == 14 => CONTENT_LENGTH,
                            b"transfer-encoding" if self.name_len == 17 => TRANSFER_ENCODING,
                            _ => 0,
                        };
                        State::Value
                    }
                    (State::Name, c) => {
                        self.push_name(c);
                        State::Name
                    }
                    (State::Value, _) => State::Value,
                };
            }
            std::mem::take(&mut self.flags)
        }
    }

    proptest::proptest! {
        #[test]
        fn jumping_finds_what_stepping_finds(
            parts in proptest::collection::vec(
                proptest::sample::select(vec![
                    &b"GET "[..], b"POST ", b"/a", b"#f", b" HTTP/1.1", b"\r\n", b"\n", b"Host", b": ",
                    b"content-length", b"Transfer-Encoding", b"x", b":", b" ", b"#", b"\r",
                ]),
                0..40,
            ),
            cuts in proptest::collection::vec(0usize..200, 0..6),
            max_target in 0usize..12,
        ) {
            let head: Vec<u8> = parts.concat();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(head.len())).collect();
            cuts.sort_unstable();
            let (mut fast, mut slow) = (HeadScan::new(max_target), HeadScan::new(max_target));
            fast.start();
            slow.start();
            let mut from = 0;
            for to in cuts.into_iter().chain([head.len()]) {
                let chunk = &head[from..to.max(from)];
                proptest::prop_assert_eq!(fast.feed(chunk), slow.feed_bytewise(chunk));
                from = to.max(from);
            }
        }
    }

    #[test]
    fn finds_fragments_and_framing_headers_across_reads() {
        assert_eq!(scan(&[b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"]), 0);
        assert_eq!(scan(&[b"GET /a#b HTTP/1.1\r\n\r\n"]), FRAGMENT);
        assert_eq!(
            scan(&[
                b"POST / HTTP/1.1\r\nContent-Le",
                b"ngth: 5\r\nTRANSFER-encoding: chunked\r\n\r\n"
            ]),
            CONTENT_LENGTH | TRANSFER_ENCODING
        );
        assert_eq!(
            scan(&[b"POST / HTTP/1.1\nContent-Length: 5\n\n"]),
            CONTENT_LENGTH
        );
        // Look-alikes are not the real names.
        assert_eq!(
            scan(&[b"POST / HTTP/1.1\r\nContent-Lengthy: 5\r\nX-Content-Length: 1\r\n\r\n"]),
            0
        );
    }

    #[test]
    fn flags_a_target_over_the_limit_as_soon_as_it_passes_it() {
        let limited = |chunks: &[&[u8]]| {
            let mut s = HeadScan::new(8);
            s.start();
            chunks.iter().map(|c| s.feed(c)).collect::<Vec<u8>>()
        };
        // Eight bytes are allowed; the ninth is one too many, wherever the reads cut.
        assert_eq!(limited(&[b"GET /2345678 HTTP/1.1\r\n\r\n"]), [0]);
        assert_eq!(
            limited(&[b"GET /23456789 HTTP/1.1\r\n\r\n"]),
            [TARGET_TOO_LONG]
        );
        assert_eq!(
            limited(&[b"GET /234", b"5678", b"9", b" HTTP/1.1\r\n\r\n"]),
            [0, 0, TARGET_TOO_LONG, 0]
        );
        // A head whose target never ends (the rest of it still to come) is flagged too.
        assert_eq!(limited(&[b"GET /", &[b'a'; 100]]), [0, TARGET_TOO_LONG]);
        assert_eq!(
            limited(&[b"GET /a#bcdefgh HTTP/1.1\r\n"]),
            [FRAGMENT | TARGET_TOO_LONG]
        );
    }

    #[test]
    fn stops_at_the_end_of_the_head() {
        assert_eq!(
            scan(&[b"POST / HTTP/1.1\r\nHost: a\r\n\r\nTransfer-Encoding: chunked\r\n#"]),
            0
        );
        let mut idle = HeadScan::new(0);
        assert_eq!(
            idle.feed(b"GET /#x HTTP/1.1\r\n"),
            0,
            "nothing is scanned until start()"
        );
    }
}
