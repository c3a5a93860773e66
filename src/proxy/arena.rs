//! A per-worker byte arena for the small values autolb writes into every request
//! (`Forwarded`, `X-Request-Id`): each value is a slice of a shared 64 KiB chunk, so making
//! one and cloning it cost no allocation (a `Bytes` made from a `Vec` allocates once to
//! become shareable, and its header value is cloned for the response as well). Only for
//! values that live as long as a request: one long-lived value keeps its whole chunk.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};

/// Size of one chunk; a chunk is freed when the last value cut from it is dropped.
const CHUNK: usize = 64 * 1024;

thread_local! {
    static ARENA: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// The bytes `fill` appends (about `len` of them) as a `Bytes` cut from the worker's arena.
pub fn bytes(len: usize, fill: impl FnOnce(&mut BytesMut)) -> Bytes {
    ARENA.with_borrow_mut(|arena| {
        if arena.capacity() - arena.len() < len {
            *arena = BytesMut::with_capacity(CHUNK.max(len));
        }
        fill(arena);
        arena.split().freeze()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_independent_slices() {
        let a = bytes(3, |b| b.extend_from_slice(b"abc"));
        let b = bytes(2, |b| b.extend_from_slice(b"de"));
        // More than announced still works (the chunk grows or is replaced).
        let c = bytes(1, |b| b.extend_from_slice(&[b'x'; 100_000]));
        let d = bytes(CHUNK, |b| b.extend_from_slice(b"after"));
        assert_eq!(&a[..], b"abc");
        assert_eq!(&b[..], b"de");
        assert_eq!(c.len(), 100_000);
        assert_eq!(&d[..], b"after");
        assert_eq!(a.clone(), a);
    }
}
