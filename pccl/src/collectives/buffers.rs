//! The memory a collective reads and writes. The user owns it; the op reads the send
//! side and writes results, and nothing else (docs/ARCHITECTURE.md §5: the send buffer is never modified).

use super::Staging;
use crate::types::DataType;

/// Source and destination of one collective, as bytes.
///
/// For an all-reduce `send().len()` is the op's byte length and results are written with
/// `write`, at offsets inside it. A reduce-scatter's results fill `recv_len()` bytes (its
/// rank's chunk), an all-gather reads `send().len()` bytes (its rank's chunk); the op
/// checks both lengths against the ring before it writes anything. `commit` runs once the
/// op has succeeded on every peer.
pub trait ReduceBuffers: Send {
    /// The input bytes.
    fn send(&self) -> &[u8];
    /// Bytes the results may fill; `input_and_out` is only called inside them. The same
    /// as the input's length unless the buffers say otherwise.
    fn recv_len(&self) -> usize {
        self.send().len()
    }
    /// The input bytes, and the `len` result bytes at `offset`, which the op is about to
    /// write (it does the copy, so it can choose how: see `collectives/stream.rs`; part of
    /// an all-gather's or broadcast's results is the input itself). Panics outside
    /// `recv_len()`.
    fn input_and_out(&mut self, offset: usize, len: usize) -> (&[u8], &mut [u8]);
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

/// Distinct send and receive slices: of equal length for an all-reduce ([`new`]); of the
/// lengths the collective relates ([`sized`]) for the others.
///
/// [`new`]: SliceBuffers::new
/// [`sized`]: SliceBuffers::sized
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

    /// Any lengths: the op checks them against its ring (a reduce-scatter's `recv` holds
    /// its rank's chunk of `send`, an all-gather's `send` its rank's chunk of `recv`).
    pub fn sized(send: &'a [u8], recv: &'a mut [u8]) -> Self {
        Self { send, recv }
    }
}

impl ReduceBuffers for SliceBuffers<'_> {
    fn send(&self) -> &[u8] {
        self.send
    }

    fn recv_len(&self) -> usize {
        self.recv.len()
    }

    fn input_and_out(&mut self, offset: usize, len: usize) -> (&[u8], &mut [u8]) {
        (self.send, &mut self.recv[offset..offset + len])
    }
}

/// One buffer that is both input and output. Results are staged and copied in only when
/// the op has succeeded everywhere, so a failed op leaves the input intact for the retry.
#[derive(Debug)]
pub struct InPlaceBuffer<'a> {
    buf: &'a mut [u8],
    staged: Staging,
}

impl<'a> InPlaceBuffer<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self {
            staged: Staging::take(buf.len()),
            buf,
        }
    }
}

impl ReduceBuffers for InPlaceBuffer<'_> {
    fn send(&self) -> &[u8] {
        self.buf
    }

    fn input_and_out(&mut self, offset: usize, len: usize) -> (&[u8], &mut [u8]) {
        (self.buf, &mut self.staged[offset..offset + len])
    }

    fn commit(&mut self) {
        self.buf.copy_from_slice(&self.staged);
    }
}

/// Owned buffers, for ops that outlive the caller's stack frame (`all_reduce_async`,
/// `collective_async`). `recv` may differ in length from `send` (see [`SliceBuffers::sized`]).
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

    /// Takes `send`; `recv` starts as `recv_count` zeroed elements.
    pub fn with_recv<T: Element>(send: &[T], recv_count: usize) -> Self {
        Self {
            send: bytemuck::cast_slice(send).to_vec(),
            recv: vec![0; recv_count * size_of::<T>()],
        }
    }
}

impl ReduceBuffers for OwnedBuffers {
    fn send(&self) -> &[u8] {
        &self.send
    }

    fn recv_len(&self) -> usize {
        self.recv.len()
    }

    fn input_and_out(&mut self, offset: usize, len: usize) -> (&[u8], &mut [u8]) {
        (&self.send, &mut self.recv[offset..offset + len])
    }
}

impl<B: ReduceBuffers + ?Sized> ReduceBuffers for &mut B {
    fn send(&self) -> &[u8] {
        (**self).send()
    }

    fn recv_len(&self) -> usize {
        (**self).recv_len()
    }

    fn input_and_out(&mut self, offset: usize, len: usize) -> (&[u8], &mut [u8]) {
        (**self).input_and_out(offset, len)
    }

    fn commit(&mut self) {
        (**self).commit();
    }
}
