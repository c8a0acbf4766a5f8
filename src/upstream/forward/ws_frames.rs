//! Where one direction of a WebSocket tunnel is in its frames (RFC 6455 section 5.2), so that
//! rproxy can end a tunnel it must close (the drain timeout of a shutdown or binary upgrade)
//! with a close frame of its own, written between two frames rather than into one. The tunnel
//! copies bytes as they come; this only counts them, it never parses a payload.

/// A close frame from the server side, status 1001 ("going away"), unmasked as a server's are.
pub(super) const CLOSE_TO_CLIENT: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// The same close frame from the client side, to the backend: a client's frames are masked.
pub(super) fn close_to_backend() -> [u8; 8] {
    let key = fastrand::u32(..).to_be_bytes();
    [
        0x88,
        0x82,
        key[0],
        key[1],
        key[2],
        key[3],
        0x03 ^ key[0],
        0xE9 ^ key[1],
    ]
}

/// The position in a stream of frames.
#[derive(Debug, Default)]
pub(super) struct Frames {
    /// The header read so far of the frame being read (at most 14 bytes).
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
}

impl Frames {
    /// Accounts for `bytes`, which went through in this direction.
    pub(super) fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.payload_left -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            self.header[self.have] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if let Some((len, payload)) = header(&self.header[..self.have])
                && self.have == len
            {
                self.have = 0;
                self.payload_left = payload;
            }
        }
    }

    /// Between two frames: a frame of rproxy's may be written here.
    pub(super) fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload_left == 0
    }

    /// How many bytes may be read without passing the end of the current frame (its next
    /// header byte, while in a header), at most `max`.
    pub(super) fn to_boundary(&self, max: usize) -> usize {
        if self.payload_left > 0 {
            usize::try_from(self.payload_left)
                .unwrap_or(usize::MAX)
                .min(max)
        } else {
            1.min(max)
        }
    }
}

/// The length of the header that begins `h` and of its payload, once `h` holds enough of it
/// to tell.
fn header(h: &[u8]) -> Option<(usize, u64)> {
    let second = *h.get(1)?;
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    let (extended, payload) = match second & 0x7F {
        126 => {
            let b = h.get(2..4)?;
            (2, u64::from(u16::from_be_bytes([b[0], b[1]])))
        }
        127 => {
            let b: [u8; 8] = h.get(2..10)?.try_into().ok()?;
            (8, u64::from_be_bytes(b))
        }
        n => (0, u64::from(n)),
    };
    Some((2 + extended + mask, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as a client writes it: masked, with `payload`.
    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x82];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[1, 2, 3, 4]);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn boundaries_are_found_whatever_the_chunks() {
        let mut stream = Vec::new();
        for len in [0, 5, 125, 126, 300, 70_000] {
            stream.extend(frame(&vec![7u8; len]));
        }
        for chunk in [1, 3, 7, 1000, stream.len()] {
            let mut f = Frames::default();
            let mut boundaries = 0;
            for piece in stream.chunks(chunk) {
                f.feed(piece);
                boundaries += usize::from(f.at_boundary());
            }
            assert!(f.at_boundary(), "chunks of {chunk}");
            assert!(boundaries >= 1);
        }
    }

    #[test]
    fn mid_frame_is_not_a_boundary_and_reads_stop_at_its_end() {
        let mut f = Frames::default();
        let whole = frame(&[9u8; 300]);
        f.feed(&whole[..10]);
        assert!(!f.at_boundary());
        let left = whole.len() - 10;
        assert_eq!(f.to_boundary(16 * 1024), left);
        f.feed(&whole[10..]);
        assert!(f.at_boundary());
        assert_eq!(f.to_boundary(16 * 1024), 1, "one header byte at a time");
    }

    #[test]
    fn the_close_frames_are_well_formed() {
        let mut f = Frames::default();
        f.feed(&CLOSE_TO_CLIENT);
        assert!(f.at_boundary());
        let masked = close_to_backend();
        f.feed(&masked);
        assert!(f.at_boundary());
        let code = [masked[6] ^ masked[2], masked[7] ^ masked[3]];
        assert_eq!(u16::from_be_bytes(code), 1001);
    }
}
