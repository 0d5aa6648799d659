//! Reusable frame buffers. Every slice of an op travels in its own buffer; allocating a
//! fresh 1 MiB buffer per frame made the kernel fault in and zero new pages for every
//! frame (~30 % of the time of a large all-reduce), so large buffers are recycled.

use std::sync::Mutex;

use bytes::{Bytes, BytesMut};

/// Buffers smaller than this are cheap to allocate and are not pooled.
const MIN_POOLED: usize = 64 << 10;
/// Most buffers kept idle.
const MAX_IDLE: usize = 64;

/// A free list of large frame buffers, all of one capacity.
#[derive(Debug)]
pub(crate) struct BufPool {
    capacity: usize,
    idle: Mutex<Vec<BytesMut>>,
}

impl BufPool {
    /// Pooled buffers have `capacity` bytes: the largest frame payload.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An empty buffer that can hold `len` bytes.
    pub(crate) fn get(&self, len: usize) -> BytesMut {
        if len < MIN_POOLED || len > self.capacity {
            return BytesMut::with_capacity(len);
        }
        let reused = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        reused.unwrap_or_else(|| BytesMut::with_capacity(self.capacity))
    }

    /// A buffer holding a copy of `data`.
    pub(crate) fn copy_of(&self, data: &[u8]) -> BytesMut {
        let mut copy = self.get(data.len());
        copy.extend_from_slice(data);
        copy
    }

    /// Returns a buffer to the pool.
    pub(crate) fn put(&self, mut buf: BytesMut) {
        if buf.capacity() != self.capacity {
            return;
        }
        buf.clear();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(buf);
        }
    }

    /// Returns a frozen buffer once nobody else holds it.
    pub(crate) fn recycle(&self, buf: Bytes) {
        if let Ok(m) = buf.try_into_mut() {
            self.put(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_are_reused_small_ones_are_not() {
        let pool = BufPool::new(1 << 20);
        let mut b = pool.get(1 << 20);
        b.extend_from_slice(&[1; 100]);
        let ptr = b.as_ptr();
        pool.recycle(b.freeze());
        let again = pool.get(300 << 10);
        assert_eq!(again.as_ptr(), ptr);
        assert!(again.is_empty());
        let small = pool.get(10);
        pool.put(small);
        assert_eq!(pool.idle.lock().unwrap().len(), 0);
    }
}
