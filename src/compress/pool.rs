//! A per-thread pool of brotli's encoder buffers. Brotli allocates its hash tables and ring
//! buffer (about a MiB at quality 5) per stream; fresh, such allocations are mapped pages
//! that fault in on first touch, which costs far more than compressing a small response.
//! Buffers freed by one stream are kept (up to `CAP` bytes per thread) and handed to the
//! next, filled with their default value as brotli expects.

use std::any::{Any, TypeId};
use std::cell::RefCell;

use brotli::enc::BrotliAlloc;
use brotli::{Allocator, SliceWrapper, SliceWrapperMut};

/// Smaller buffers go to and come from the ordinary allocator.
const MIN_POOLED: usize = 4096;
/// Bytes kept per thread.
const CAP: usize = 16 << 20;

struct Kept {
    ty: TypeId,
    len: usize,
    bytes: usize,
    buf: Box<dyn Any>,
}

thread_local! {
    static KEPT: RefCell<(Vec<Kept>, usize)> = const { RefCell::new((Vec::new(), 0)) };
}

/// A buffer brotli owns.
pub struct PoolBox<T>(Box<[T]>);

impl<T> Default for PoolBox<T> {
    fn default() -> Self {
        PoolBox(Vec::new().into_boxed_slice())
    }
}

impl<T> SliceWrapper<T> for PoolBox<T> {
    fn slice(&self) -> &[T] {
        &self.0
    }
}

impl<T> SliceWrapperMut<T> for PoolBox<T> {
    fn slice_mut(&mut self) -> &mut [T] {
        &mut self.0
    }
}

/// Brotli's allocator, backed by this thread's pool.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pooled;

impl<T: Clone + Default + 'static> Allocator<T> for Pooled {
    type AllocatedMemory = PoolBox<T>;

    fn alloc_cell(&mut self, len: usize) -> PoolBox<T> {
        let bytes = len * std::mem::size_of::<T>();
        if bytes >= MIN_POOLED {
            let kept = KEPT.with(|k| {
                let mut k = k.borrow_mut();
                let i =
                    k.0.iter()
                        .position(|b| b.ty == TypeId::of::<T>() && b.len == len)?;
                let b = k.0.swap_remove(i);
                k.1 -= b.bytes;
                b.buf.downcast::<Box<[T]>>().ok()
            });
            if let Some(mut buf) = kept {
                buf.fill(T::default());
                return PoolBox(*buf);
            }
        }
        PoolBox(vec![T::default(); len].into_boxed_slice())
    }

    fn free_cell(&mut self, data: PoolBox<T>) {
        let bytes = data.0.len() * std::mem::size_of::<T>();
        if bytes < MIN_POOLED {
            return;
        }
        KEPT.with(|k| {
            let mut k = k.borrow_mut();
            if k.1 + bytes <= CAP {
                k.1 += bytes;
                let len = data.0.len();
                k.0.push(Kept {
                    ty: TypeId::of::<T>(),
                    len,
                    bytes,
                    buf: Box::new(data.0),
                });
            }
        });
    }
}

impl BrotliAlloc for Pooled {}
