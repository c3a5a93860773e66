//! WebSocket frame boundaries in a byte stream, tracked without copying payloads: only the
//! 2-14 header bytes of each frame are looked at, payloads are skipped by length. The tunnel
//! uses it to inject its own close frame between two frames, never inside one.

/// Opcode of a Close frame (RFC 6455 5.5.1).
const OP_CLOSE: u8 = 0x8;

/// Where a one-way WebSocket byte stream stands.
#[derive(Debug, Default, Clone)]
pub struct FrameTracker {
    header: [u8; 14],
    /// Header bytes collected so far (0 with `remaining == 0`: at a boundary).
    have: u8,
    /// Total header length, known once 2 bytes are in (0 before).
    need: u8,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    /// Opcode of the frame whose payload is passing.
    opcode: u8,
}

/// What `FrameTracker::advance` saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advance {
    /// Bytes consumed from the input.
    pub consumed: usize,
    /// A Close frame ended within them.
    pub close: bool,
}

impl FrameTracker {
    /// Between two frames (nothing of the next one seen yet).
    #[inline]
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.remaining == 0
    }

    /// Follow `data`. With `stop_at_boundary`, stop at the first frame boundary (consuming
    /// nothing when already at one); otherwise consume all of it.
    pub fn advance(&mut self, data: &[u8], stop_at_boundary: bool) -> Advance {
        let mut i = 0;
        let mut close = false;
        loop {
            if stop_at_boundary && self.at_boundary() {
                break;
            }
            if i == data.len() {
                break;
            }
            if self.remaining > 0 {
                let left = (data.len() - i) as u64;
                let take = self.remaining.min(left);
                i += take as usize;
                self.remaining -= take;
                if self.remaining == 0 && self.opcode == OP_CLOSE {
                    close = true;
                }
                continue;
            }
            self.header[self.have as usize] = data[i];
            self.have += 1;
            i += 1;
            if self.have == 2 {
                let ext = match self.header[1] & 0x7f {
                    126 => 2,
                    127 => 8,
                    _ => 0,
                };
                let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
                self.need = 2 + ext + mask;
            }
            if self.have >= 2 && self.have == self.need {
                let len = match self.header[1] & 0x7f {
                    126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
                    127 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&self.header[2..10]);
                        u64::from_be_bytes(b)
                    }
                    n => u64::from(n),
                };
                self.opcode = self.header[0] & 0x0f;
                self.have = 0;
                self.need = 0;
                self.remaining = len;
                if len == 0 && self.opcode == OP_CLOSE {
                    close = true;
                }
            }
        }
        Advance { consumed: i, close }
    }
}

/// A Close frame with `code` and `reason` (at most 123 bytes), masked when sent by a client
/// (autolb writing to a backend).
pub fn close_frame(code: u16, reason: &str, masked: bool) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let len = 2 + reason.len();
    let mut payload = Vec::with_capacity(len);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason);
    let mut frame = Vec::with_capacity(2 + 4 + len);
    frame.push(0x80 | OP_CLOSE);
    if masked {
        let key = fastrand::u32(..).to_be_bytes();
        frame.push(0x80 | len as u8);
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        frame.push(len as u8);
        frame.extend_from_slice(&payload);
    }
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        let m = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => f.push(m | len as u8),
            126..=65535 => {
                f.push(m | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(m | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(0xAA, len));
        f
    }

    #[test]
    fn boundaries_of_every_length_class_byte_by_byte() {
        let mut stream = Vec::new();
        let mut ends = Vec::new();
        for (op, len, masked) in [
            (1, 5, true),
            (2, 0, false),
            (2, 300, true),
            (9, 0, true),
            (2, 70_000, false),
            (8, 2, true),
        ] {
            stream.extend(frame(op, len, masked));
            ends.push(stream.len());
        }
        let mut t = FrameTracker::default();
        let mut closes = 0;
        for (i, b) in stream.iter().enumerate() {
            let a = t.advance(std::slice::from_ref(b), false);
            assert_eq!(a.consumed, 1);
            closes += usize::from(a.close);
            assert_eq!(t.at_boundary(), ends.contains(&(i + 1)), "after byte {i}");
        }
        assert_eq!(closes, 1);
    }

    #[test]
    fn stops_at_the_first_boundary() {
        let mut stream = frame(2, 1000, true);
        let first = stream.len();
        stream.extend(frame(1, 3, true));
        let mut t = FrameTracker::default();
        // Already at a boundary: nothing consumed.
        assert_eq!(t.advance(&stream, true).consumed, 0);
        // Mid-frame: up to its end only.
        assert_eq!(t.advance(&stream[..10], false).consumed, 10);
        let a = t.advance(&stream[10..], true);
        assert_eq!(a.consumed, first - 10);
        assert!(t.at_boundary() && !a.close);
        // The rest, in one go.
        let a = t.advance(&stream[first..], false);
        assert_eq!(a.consumed, stream.len() - first);
        assert!(t.at_boundary());
    }

    #[test]
    fn close_frames_parse_back() {
        for masked in [false, true] {
            let f = close_frame(1001, "going away", masked);
            let mut t = FrameTracker::default();
            let a = t.advance(&f, false);
            assert_eq!(
                (a.consumed, a.close, t.at_boundary()),
                (f.len(), true, true)
            );
            let payload: Vec<u8> = if masked {
                f[6..]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ f[2 + i % 4])
                    .collect()
            } else {
                f[2..].to_vec()
            };
            assert_eq!(&payload[..2], &1001u16.to_be_bytes());
            assert_eq!(&payload[2..], b"going away");
        }
    }
}
