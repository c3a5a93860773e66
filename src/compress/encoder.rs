//! Streaming gzip and brotli encoders writing into a buffer that is taken after each input
//! chunk: the body is compressed as it streams, never held whole.
//!
//! A deflate state is a few hundred KiB; allocating and zeroing one per response costs more
//! than compressing a small body (fresh pages fault in). gzip therefore runs a raw deflate
//! stream taken from a per-thread pool (reset, never freed while pooled) inside gzip framing
//! written here (RFC 1952 header, CRC-32 and size trailer), and brotli allocates through a
//! per-thread buffer pool (`pool`).

use std::cell::RefCell;
use std::io::Write;

use brotli::enc::writer::CompressorWriterCustomAlloc;
use brotli::Allocator;
use bytes::Bytes;
use flate2::{Compress, Compression, Crc, FlushCompress, Status};

use super::pool::{PoolBox, Pooled};
use crate::config::Encoding;

type BrotliWriter = CompressorWriterCustomAlloc<Vec<u8>, PoolBox<u8>, Pooled>;

/// Brotli's largest window: 2^18 = 256 KiB (streaming, many responses at once: memory
/// matters more than the last percent of ratio); a smaller body gets a smaller window, but
/// not below 2^17: at 2^16 and less, brotli switches to a hasher with 32 MiB of tables.
const BROTLI_LGWIN: u32 = 18;
const BROTLI_MIN_LGWIN: u32 = 17;
/// Brotli's internal buffer.
const BROTLI_BUFFER: usize = 4096;
/// gzip header: magic, deflate, no flags, no mtime, no extra flags, OS unknown.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
/// Deflate states kept per thread for reuse.
const POOL: usize = 16;

thread_local! {
    static DEFLATE: RefCell<Vec<(u32, Compress)>> = const { RefCell::new(Vec::new()) };
}

/// A raw deflate state at `level`, from this thread's pool when one is there.
fn deflate(level: u32) -> Compress {
    let pooled = DEFLATE.with(|p| {
        let mut p = p.borrow_mut();
        let i = p.iter().position(|(l, _)| *l == level)?;
        Some(p.swap_remove(i).1)
    });
    pooled.unwrap_or_else(|| Compress::new(Compression::new(level), false))
}

fn recycle(level: u32, mut z: Compress) {
    z.reset();
    DEFLATE.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL {
            p.push((level, z));
        }
    });
}

/// gzip: raw deflate in gzip framing.
pub struct Gzip {
    z: Option<Compress>,
    level: u32,
    crc: Crc,
    out: Vec<u8>,
}

impl Gzip {
    fn new(level: u32) -> Gzip {
        let mut out = Vec::with_capacity(8192);
        out.extend_from_slice(&GZIP_HEADER);
        Gzip {
            z: Some(deflate(level)),
            level,
            crc: Crc::new(),
            out,
        }
    }

    /// Run deflate over `input` with `flush` until it consumed it all and, for a flush,
    /// wrote everything out.
    fn run(&mut self, mut input: &[u8], flush: FlushCompress) -> std::io::Result<()> {
        let z = self
            .z
            .as_mut()
            .ok_or_else(|| std::io::Error::other("gzip stream already finished"))?;
        loop {
            self.out.reserve(input.len() / 2 + 1024);
            let before = z.total_in();
            let status = z
                .compress_vec(input, &mut self.out, flush)
                .map_err(std::io::Error::other)?;
            let used = (z.total_in() - before) as usize;
            input = &input[used.min(input.len())..];
            let room_left = self.out.len() < self.out.capacity();
            match (status, flush) {
                (Status::StreamEnd, _) => return Ok(()),
                _ if !input.is_empty() => {}
                (_, FlushCompress::None) => return Ok(()),
                // A flush is complete once deflate stops filling the buffer.
                (_, FlushCompress::Sync) if room_left => return Ok(()),
                _ => {}
            }
        }
    }
}

impl Drop for Gzip {
    fn drop(&mut self) {
        if let Some(z) = self.z.take() {
            recycle(self.level, z);
        }
    }
}

/// One response's encoder.
pub enum Encoder {
    Gzip(Gzip),
    Brotli(Box<BrotliWriter>),
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
    /// `size` bytes when known (brotli then sizes its window to it).
    pub fn new(enc: Encoding, level: u32, size: Option<u64>) -> Encoder {
        let level = level.clamp(1, 9);
        match enc {
            Encoding::Gzip => Encoder::Gzip(Gzip::new(level)),
            Encoding::Brotli => {
                let lgwin = size.map_or(BROTLI_LGWIN, |n| {
                    let bits = u64::BITS - n.max(1).leading_zeros();
                    bits.clamp(BROTLI_MIN_LGWIN, BROTLI_LGWIN)
                });
                let buffer = <Pooled as Allocator<u8>>::alloc_cell(&mut Pooled, BROTLI_BUFFER);
                Encoder::Brotli(Box::new(BrotliWriter::new(
                    Vec::with_capacity(8192),
                    buffer,
                    Pooled,
                    level,
                    lgwin,
                )))
            }
        }
    }

    /// Compress `data`; what is ready is then in `take()`.
    pub fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(g) => {
                g.crc.update(data);
                g.run(data, FlushCompress::None)
            }
            Encoder::Brotli(e) => e.write_all(data),
        }
    }

    /// Emit everything written so far as complete blocks (a sync flush), so that a client
    /// can decode it now: for a backend that pauses in the middle of a response.
    pub fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(g) => g.run(&[], FlushCompress::Sync),
            Encoder::Brotli(e) => e.flush(),
        }
    }

    /// The compressed bytes produced so far and not yet taken.
    pub fn take(&mut self) -> Bytes {
        let buf = match self {
            Encoder::Gzip(g) => &mut g.out,
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
        match self {
            Encoder::Gzip(mut g) => {
                g.run(&[], FlushCompress::Finish)?;
                let (crc, len) = (g.crc.sum(), g.crc.amount());
                g.out.extend_from_slice(&crc.to_le_bytes());
                g.out.extend_from_slice(&len.to_le_bytes());
                Ok(Bytes::from(std::mem::take(&mut g.out)))
            }
            Encoder::Brotli(e) => Ok(Bytes::from(e.into_inner())),
        }
    }
}
