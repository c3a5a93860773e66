//! Streaming gzip and brotli encoders writing into a buffer that is taken after each input
//! chunk: the body is compressed as it streams, never held whole.

use std::io::Write;

use bytes::Bytes;
use flate2::write::GzEncoder;

use crate::config::Encoding;

/// Brotli's largest window: 2^18 = 256 KiB (streaming, many responses at once: memory
/// matters more than the last percent of ratio); a smaller body gets a window its size.
const BROTLI_LGWIN: u32 = 18;
const BROTLI_MIN_LGWIN: u32 = 10;
/// Brotli's internal buffer.
const BROTLI_BUFFER: usize = 4096;

/// One response's encoder.
pub enum Encoder {
    Gzip(GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Encoder::Gzip(_) => "Encoder::Gzip",
            Encoder::Brotli(_) => "Encoder::Brotli",
        })
    }
}

impl Encoder {
    /// An encoder for `enc` at `level` (1-9: gzip's level, brotli's quality), for a body of
    /// `size` bytes when known (brotli then sizes its window and tables to it: most of its
    /// cost for a small response is setting up for a large one).
    pub fn new(enc: Encoding, level: u32, size: Option<u64>) -> Encoder {
        let level = level.clamp(1, 9);
        match enc {
            Encoding::Gzip => Encoder::Gzip(GzEncoder::new(
                Vec::with_capacity(8192),
                flate2::Compression::new(level),
            )),
            Encoding::Brotli => {
                let lgwin = size.map_or(BROTLI_LGWIN, |n| {
                    let bits = u64::BITS - n.max(1).leading_zeros();
                    bits.clamp(BROTLI_MIN_LGWIN, BROTLI_LGWIN)
                });
                let params = brotli::enc::BrotliEncoderParams {
                    quality: level as i32,
                    lgwin: lgwin as i32,
                    size_hint: size.map_or(0, |n| n.min(usize::MAX as u64) as usize),
                    ..Default::default()
                };
                Encoder::Brotli(Box::new(brotli::CompressorWriter::with_params(
                    Vec::with_capacity(8192),
                    BROTLI_BUFFER,
                    &params,
                )))
            }
        }
    }

    /// Compress `data`; what is ready is then in `take()`.
    pub fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(data),
            Encoder::Brotli(e) => e.write_all(data),
        }
    }

    /// Emit everything written so far as complete blocks (a sync flush), so that a client
    /// can decode it now: for a backend that pauses in the middle of a response.
    pub fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Brotli(e) => e.flush(),
        }
    }

    /// The compressed bytes produced so far and not yet taken.
    pub fn take(&mut self) -> Bytes {
        let buf = match self {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Brotli(e) => e.get_mut(),
        };
        if buf.is_empty() {
            Bytes::new()
        } else {
            Bytes::from(std::mem::replace(buf, Vec::with_capacity(8192)))
        }
    }

    /// End the stream: the remaining bytes and the trailer.
    pub fn finish(self) -> std::io::Result<Bytes> {
        let out = match self {
            Encoder::Gzip(e) => e.finish()?,
            Encoder::Brotli(e) => e.into_inner(),
        };
        Ok(Bytes::from(out))
    }
}
