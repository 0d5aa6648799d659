//! Recycled host memory for staging the results of in-place ops ([`InPlaceBuffer`], the C
//! API's and the Python binding's in-place buffers).
//!
//! An in-place op stages its results and copies them in on commit, so a failed op leaves
//! the input intact for the retry. A fresh `vec![0; len]` per op is mapped lazily, so
//! every op paid a page fault per 4 KiB of staging (measured with 128 MiB tensors: in
//! place took twice as long as into a separate tensor, BENCHMARKS.md "torch.distributed").
//! Buffers that come back are kept and handed out again, already mapped. Their old bytes
//! need no clearing: a staged result is copied in only after a successful op, which wrote
//! every byte.
//!
//! [`InPlaceBuffer`]: super::InPlaceBuffer
//!
//! Bounded: at most [`MAX_BUFFERS`] buffers and [`MAX_BYTES`] bytes are kept; the oldest go
//! first.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

/// Buffers kept for reuse, at most.
const MAX_BUFFERS: usize = 8;
/// Bytes kept for reuse, at most (a buffer larger than this is never kept).
const MAX_BYTES: usize = 1 << 30;

static FREE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A staging buffer of exactly `len` bytes that returns to a process-wide pool when
/// dropped, for [`ReduceBuffers`](super::ReduceBuffers) implementations that stage an
/// in-place op's results.
#[derive(Debug)]
pub struct Staging(Vec<u8>);

impl Staging {
    /// A buffer of `len` bytes: a kept one whose capacity fits (at most twice `len`, so a
    /// small op does not hold a large buffer), else a new one.
    pub fn take(len: usize) -> Self {
        let reused = {
            let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
            free.iter()
                .position(|v| v.capacity() >= len && v.capacity() / 2 <= len)
                .map(|i| free.remove(i))
        };
        match reused {
            Some(mut v) => {
                // Shrinking keeps the capacity; growing (within the capacity) fills zeros.
                v.resize(len, 0);
                Self(v)
            }
            None => Self(vec![0; len]),
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        if v.capacity() == 0 || v.capacity() > MAX_BYTES {
            return;
        }
        let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
        free.push(v);
        let mut total: usize = free.iter().map(Vec::capacity).sum();
        while free.len() > MAX_BUFFERS || total > MAX_BYTES {
            total -= free.remove(0).capacity();
        }
    }
}

impl Deref for Staging {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl DerefMut for Staging {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::{FREE, MAX_BUFFERS, Staging};

    /// A returned buffer is handed out again for a length it fits (so its pages stay
    /// mapped), never for one less than half its size, and the pool keeps a bounded
    /// number. One test: the pool is process-wide.
    #[test]
    fn buffers_are_reused_for_fitting_lengths_and_the_pool_stays_bounded() {
        let first = Staging::take(3 << 20);
        let at = first.as_ptr();
        drop(first);
        let again = Staging::take((3 << 20) - 100);
        assert_eq!(again.as_ptr(), at, "a fitting buffer is reused");
        assert_eq!(again.len(), (3 << 20) - 100);
        drop(again);
        let small = Staging::take(1 << 20);
        assert_ne!(small.as_ptr(), at, "a buffer over twice the length is not");
        let many: Vec<_> = (0..MAX_BUFFERS + 4)
            .map(|i| Staging::take(4096 + i))
            .collect();
        drop(many);
        drop(small);
        assert!(FREE.lock().unwrap().len() <= MAX_BUFFERS);
    }
}
