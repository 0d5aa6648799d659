//! The memory an all-reduce reads and writes. The user owns it; the op reads the send
//! side and writes results, and nothing else (docs/ARCHITECTURE.md §5: the send buffer is never modified).

use crate::types::DataType;

/// Source and destination of one all-reduce, as bytes.
///
/// `send().len()` is the op's byte length; results are written with `write`, at offsets
/// inside it. `commit` runs once the op has succeeded on every peer.
pub trait ReduceBuffers: Send {
    /// The input bytes.
    fn send(&self) -> &[u8];
    /// Stores result bytes at `offset`.
    fn write(&mut self, offset: usize, data: &[u8]);
    /// The op succeeded everywhere: results may now become visible.
    fn commit(&mut self) {}
}

/// A Rust element type pccl can reduce.
pub trait Element: bytemuck::Pod + Send + Sync {
    /// Its pccl data type.
    const DTYPE: DataType;
}

macro_rules! element {
    ($($t:ty => $d:ident),*) => { $(impl Element for $t { const DTYPE: DataType = DataType::$d; })* };
}
element!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, u64 => U64,
    i64 => I64, half::f16 => F16, half::bf16 => Bf16, f32 => F32, f64 => F64);

/// Distinct send and receive slices of equal length.
#[derive(Debug)]
pub struct SliceBuffers<'a> {
    send: &'a [u8],
    recv: &'a mut [u8],
}

impl<'a> SliceBuffers<'a> {
    /// `None` when the lengths differ.
    pub fn new(send: &'a [u8], recv: &'a mut [u8]) -> Option<Self> {
        (send.len() == recv.len()).then_some(Self { send, recv })
    }
}

impl ReduceBuffers for SliceBuffers<'_> {
    fn send(&self) -> &[u8] {
        self.send
    }

    fn write(&mut self, offset: usize, data: &[u8]) {
        self.recv[offset..offset + data.len()].copy_from_slice(data);
    }
}

/// One buffer that is both input and output. Results are staged and copied in only when
/// the op has succeeded everywhere, so a failed op leaves the input intact for the retry.
#[derive(Debug)]
pub struct InPlaceBuffer<'a> {
    buf: &'a mut [u8],
    staged: Vec<u8>,
}

impl<'a> InPlaceBuffer<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self {
            staged: vec![0; buf.len()],
            buf,
        }
    }
}

impl ReduceBuffers for InPlaceBuffer<'_> {
    fn send(&self) -> &[u8] {
        self.buf
    }

    fn write(&mut self, offset: usize, data: &[u8]) {
        self.staged[offset..offset + data.len()].copy_from_slice(data);
    }

    fn commit(&mut self) {
        self.buf.copy_from_slice(&self.staged);
    }
}

/// Owned buffers, for ops that outlive the caller's stack frame (`all_reduce_async`).
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedBuffers {
    pub send: Vec<u8>,
    pub recv: Vec<u8>,
}

impl OwnedBuffers {
    /// Takes `send`; `recv` starts zeroed.
    pub fn new<T: Element>(send: &[T]) -> Self {
        let send = bytemuck::cast_slice(send).to_vec();
        Self {
            recv: vec![0; send.len()],
            send,
        }
    }
}

impl ReduceBuffers for OwnedBuffers {
    fn send(&self) -> &[u8] {
        &self.send
    }

    fn write(&mut self, offset: usize, data: &[u8]) {
        self.recv[offset..offset + data.len()].copy_from_slice(data);
    }
}

impl<B: ReduceBuffers + ?Sized> ReduceBuffers for &mut B {
    fn send(&self) -> &[u8] {
        (**self).send()
    }

    fn write(&mut self, offset: usize, data: &[u8]) {
        (**self).write(offset, data);
    }

    fn commit(&mut self) {
        (**self).commit();
    }
}
