//! Single frames of one ring op: making a step-0 frame from the local input, checking a
//! received frame against the schedule, and turning a received frame into the frame sent
//! on (reduce, store, or both) on the plain and on the quantized path.
//!
//! Offsets in frames and in the schedule are in the op's buffer; the caller's buffers
//! hold only part of it for some kinds (`Schedule::input`, `Schedule::output`), so reads
//! and writes are shifted here.
//!
//! Payload buffers are moved, never copied: a received buffer is reduced in place and
//! sent on, or stored and returned to the buffer pool.

use std::collections::HashSet;
use std::ops::Range;

use bytes::BytesMut;

use super::Local;
use crate::collectives::ReduceBuffers;
use crate::collectives::bufpool::BufPool;
use crate::collectives::link::{Outgoing, Payload};
use crate::collectives::reduce::{finish_avg, reduce_into};
use crate::collectives::registry::OpKey;
use crate::collectives::schedule::Schedule;
use crate::collectives::stream::{self, STREAM_MIN_BYTES};
use crate::quant::{Codec, Scratch};
use crate::types::{ReduceDescriptor, ReduceOp};
use crate::wire::{DataHeader, FailReason};

/// A received frame that fits the schedule: its header and the elements it carries.
pub(super) struct Checked {
    pub(super) header: DataHeader,
    pub(super) range: Range<usize>,
}

/// The fixed facts of one op that every frame of it carries or is checked against.
pub(super) struct OpFrames<'a> {
    pub(super) key: OpKey,
    pub(super) desc: &'a ReduceDescriptor,
    pub(super) sched: &'a Schedule,
    pub(super) codec: Option<Codec>,
    /// Bytes per element of the source type.
    size: usize,
    /// Whether frames carry a CRC32 of their payload: not on sealed links, where the
    /// AEAD tag covers every byte (docs/PROTOCOL.md §4; SECURITY.md §6).
    checksums: bool,
    /// Whether results are written with streaming stores (`collectives/stream.rs`).
    stream: bool,
}

impl<'a> OpFrames<'a> {
    /// `recv_len`: the bytes of the caller's results buffer.
    pub(super) fn new(
        key: OpKey,
        desc: &'a ReduceDescriptor,
        sched: &'a Schedule,
        checksums: bool,
        recv_len: usize,
    ) -> Self {
        Self {
            key,
            desc,
            sched,
            codec: Codec::new(desc),
            size: desc.dtype.size(),
            checksums,
            stream: recv_len >= STREAM_MIN_BYTES,
        }
    }

    /// The CRC32 a frame with this payload carries (0 when frames carry none).
    fn crc(&self, payload: &[u8]) -> u32 {
        if self.checksums {
            crc32fast::hash(payload)
        } else {
            0
        }
    }

    /// Payload bytes of a frame of `elems` elements.
    fn wire_len(&self, elems: usize) -> usize {
        self.codec.map_or(elems * self.size, |c| c.frame_len(elems))
    }

    fn header(&self, step: usize, slice: usize, range: &Range<usize>, crc: u32) -> DataHeader {
        DataHeader {
            tag: self.key.tag,
            epoch: self.key.epoch,
            seq: self.key.seq,
            count: self.desc.count as u64,
            dtype: self.desc.dtype,
            op: self.desc.op,
            quant: self.codec.map(|c| c.quantization()),
            step: step as u16,
            slice: slice as u32,
            offset: (range.start * self.size) as u64,
            len: self.wire_len(range.len()) as u32,
            crc,
            kind: self.sched.kind,
        }
    }

    /// Where the local input's bytes for `range` (elements of the op's buffer) are in
    /// the caller's send buffer.
    fn input_bytes(&self, range: &Range<usize>) -> Range<usize> {
        let base = self.sched.input().start;
        (range.start - base) * self.size..(range.end - base) * self.size
    }

    /// The local input's bytes for `range` (elements of the op's buffer).
    fn local<'b, B: ReduceBuffers>(&self, bufs: &'b B, range: &Range<usize>) -> &'b [u8] {
        &bufs.send()[self.input_bytes(range)]
    }

    /// Where the result bytes for `range` (elements of the op's buffer) are written.
    fn out_at(&self, range: &Range<usize>) -> usize {
        (range.start - self.sched.output().start) * self.size
    }

    /// Writes `data`, the result bytes for `range` (elements of the op's buffer).
    fn store<B: ReduceBuffers>(&self, bufs: &mut B, range: &Range<usize>, data: &[u8]) {
        let (_, out) = bufs.input_and_out(self.out_at(range), data.len());
        stream::store(out, data, self.stream);
    }

    /// Writes the part of the result that is the local input unchanged (an all-gather's
    /// own chunk, a broadcast root's buffer), before any frame moves.
    pub(super) fn keep_input<B: ReduceBuffers>(&self, bufs: &mut B) {
        if let Some(range) = self.sched.kept_input() {
            let bytes = self.input_bytes(&range);
            let (input, out) = bufs.input_and_out(self.out_at(&range), bytes.len());
            stream::store(out, &input[bytes], self.stream);
        }
    }

    /// The quantized step-0 frame of slice `k` of chunk `chunk` (plain ones are written
    /// straight from the caller's buffer: `first_slice`).
    pub(super) fn first_frame<B: ReduceBuffers>(
        &self,
        c: Codec,
        bufs: &B,
        pool: &BufPool,
        scratch: &mut Scratch,
        chunk: usize,
        k: usize,
    ) -> Outgoing {
        let range = self.sched.slice(chunk, k);
        let len = c.frame_len(range.len());
        let mut payload = pool.get(len);
        payload.resize(len, 0);
        c.encode(self.local(bufs, &range), scratch, &mut payload);
        let crc = self.crc(&payload);
        Outgoing::new(
            self.header(0, k, &range, crc),
            Payload::Owned(payload.freeze()),
        )
    }

    /// The plain step-0 frame of slice `k` of chunk `chunk`: the local input itself,
    /// written straight from the caller's buffer (link.rs, `Payload::Input`).
    pub(super) fn first_slice<B: ReduceBuffers>(
        &self,
        bufs: &B,
        chunk: usize,
        k: usize,
    ) -> Outgoing {
        let range = self.sched.slice(chunk, k);
        let crc = self.crc(self.local(bufs, &range));
        Outgoing::new(
            self.header(0, k, &range, crc),
            Payload::Input(self.input_bytes(&range)),
        )
    }

    /// Checks a received frame against our own schedule and returns it with its element
    /// range. A frame of another op shape, outside the schedule, or seen before is a
    /// `Mismatch`.
    pub(super) fn check(
        &self,
        h: DataHeader,
        seen: &mut HashSet<(u16, u32)>,
    ) -> Result<Checked, Local> {
        let desc = self.desc;
        let quant = self.codec.map(|c| c.quantization());
        if h.count != desc.count as u64
            || h.dtype != desc.dtype
            || h.op != desc.op
            || h.quant != quant
            || h.kind != self.sched.kind
        {
            tracing::warn!(tag = h.tag, "peer called the op with different parameters");
            return Err(Local::Fail(FailReason::Mismatch));
        }
        let sched = self.sched;
        let step = h.step as usize;
        let slice = h.slice as usize;
        let chunk = sched.recv_chunk(step);
        let valid = chunk.is_some_and(|c| {
            slice < sched.recv_slices(step) && {
                let r = sched.slice(c, slice);
                h.offset == (r.start * self.size) as u64 && h.len as usize == self.wire_len(r.len())
            }
        });
        if !valid || !seen.insert((h.step, h.slice)) {
            tracing::warn!(
                tag = h.tag,
                step,
                slice,
                "frame does not fit the ring schedule"
            );
            return Err(Local::Fail(FailReason::Mismatch));
        }
        Ok(Checked {
            header: h,
            range: sched.slice(chunk.expect("checked above"), slice),
        })
    }

    /// Plain path: reduces or stores a checked frame's payload as the
    /// schedule says, and returns the frame to send on, if any.
    pub(super) fn forward_plain<B: ReduceBuffers>(
        &self,
        bufs: &mut B,
        pool: &BufPool,
        frame: &Checked,
        mut payload: BytesMut,
    ) -> Option<Outgoing> {
        let (h, range) = (&frame.header, &frame.range);
        let desc = self.desc;
        let step = h.step as usize;
        let action = self.sched.action(step, h.slice as usize);
        if action.reduces() {
            reduce_into(desc.op, desc.dtype, &mut payload, self.local(bufs, range));
            if action.stores() && desc.op == ReduceOp::Avg {
                finish_avg(desc.dtype, &mut payload, self.sched.n);
            }
        }
        if action.stores() {
            self.store(bufs, range, &payload);
        }
        if !action.forwards() {
            pool.put(payload);
            return None;
        }
        // Stored values travel unchanged, so their checksum does too.
        let crc = if action.reduces() {
            self.crc(&payload)
        } else {
            h.crc
        };
        Some(Outgoing::new(
            self.header(step + 1, h.slice as usize, range, crc),
            Payload::Owned(payload.freeze()),
        ))
    }

    /// Quantized path: the same steps with codec `c` in between (see the module header
    /// of `ring`): reduce hops dequantize, combine at full precision and re-quantize; the
    /// owner keeps the decoding of the bytes it sends; store hops decode and forward the
    /// received bytes unchanged.
    pub(super) fn forward_quantized<B: ReduceBuffers>(
        &self,
        c: Codec,
        bufs: &mut B,
        pool: &BufPool,
        scratch: &mut Scratch,
        frame: &Checked,
        payload: BytesMut,
    ) -> Option<Outgoing> {
        let (h, range) = (&frame.header, &frame.range);
        let step = h.step as usize;
        let action = self.sched.action(step, h.slice as usize);
        let (out, crc) = if action.reduces() {
            let len = c.frame_len(range.len());
            let mut out = pool.get(len);
            out.resize(len, 0);
            let last = action.stores();
            let avg = (last && self.desc.op == ReduceOp::Avg).then_some(self.sched.n);
            c.combine(&payload, self.local(bufs, range), avg, scratch, &mut out);
            pool.put(payload);
            if last {
                // The owner's result is the dequantization of the bytes it sends (or, in a
                // reduce-scatter, would send): quantized once, as in an all-reduce.
                self.store(bufs, range, c.decode(&out, range.len(), scratch));
            }
            let crc = self.crc(&out);
            (out, crc)
        } else {
            self.store(bufs, range, c.decode(&payload, range.len(), scratch));
            (payload, h.crc)
        };
        if !action.forwards() {
            pool.put(out);
            return None;
        }
        Some(Outgoing::new(
            self.header(step + 1, h.slice as usize, range, crc),
            Payload::Owned(out.freeze()),
        ))
    }
}

/// Fewest slices a connection should carry per ring step. Spread thinner, each connection
/// sends a burst of a slice or two per step and then idles: its congestion window never
/// opens (slow start, and its restart after idle), and on a long-fat pipe one op over 32
/// connections ran 10-20x slower than over 4 (BENCHMARKS.md, long-fat pipe).
const MIN_SLICES_PER_CONNECTION: usize = 4;

/// How many of the pool's connections an op uses: all of them for large ops, fewer for
/// ops whose chunks have few slices. Chunk 0 is the largest chunk.
pub(super) fn connections_for(pool: usize, slices_per_chunk: usize) -> usize {
    (slices_per_chunk / MIN_SLICES_PER_CONNECTION).clamp(1, pool.max(1))
}

#[cfg(test)]
mod tests {
    use super::connections_for;

    #[test]
    fn large_ops_use_the_whole_pool_small_ones_a_few_connections() {
        assert_eq!(connections_for(32, 256), 32);
        assert_eq!(connections_for(32, 64), 16);
        assert_eq!(connections_for(32, 3), 1);
        assert_eq!(connections_for(1, 1000), 1);
        assert_eq!(connections_for(4, 0), 1);
    }
}
