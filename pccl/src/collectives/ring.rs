//! The ring all-reduce runner (DESIGN §5).
//!
//! Vocabulary: the buffer is split into one *chunk* per rank; each chunk into *slices*
//! (pipeline units, `slice_bytes` at most); each slice travels as one frame on one of the
//! `pool_size` *connections* to the ring successor, so one large op is striped over every
//! connection and fills a long-fat pipe. The schedule is pure (`schedule.rs`); this file
//! only moves slices: it sends step-0 slices, and for every slice received reduces or
//! stores it as the schedule says and sends it on.
//!
//! Bit parity: each chunk is reduced exactly once, along the ring, by a fixed order of
//! ranks; its owner computes the final value (dividing once for `Avg`) and that one value
//! is copied to everyone, the owner included. So every rank ends with the same bits.
//!
//! Quantization (`desc.quantization`, pure kernels in `crate::quant`): a frame's payload is
//! then the slice's metadata followed by one code per element, not the elements themselves.
//! The same steps, with a codec in between:
//! * step 0: the sender quantizes its own slice;
//! * reduce-scatter hops (`ReduceForward`): dequantize the incoming slice, combine it with
//!   the local slice at full precision (the working type: the source type, or `f32` for
//!   f16/bf16 sources) and re-quantize what is sent on;
//! * the owner (`ReduceFinal`): combines likewise, divides once for `Avg`, quantizes the
//!   final value **once**, writes the dequantization of *those bytes* as its own result and
//!   forwards the bytes;
//! * all-gather hops (`StoreForward`, `Store`): write the dequantization of the received
//!   bytes and forward the bytes unchanged (same CRC).
//!
//! Every rank thus writes `decode(B)` for the same bytes `B` with the same pure function, so
//! parity holds under quantization too; the owner never keeps its unquantized final value.
//! Frames carry the quantization setting; a peer that uses another one fails the op with
//! `Mismatch` everywhere. `ReduceInfo`'s byte counts are the payload bytes actually moved.
//!
//! Outcome: when a rank has all its frames it reports to the master and waits for the
//! verdict, which is the same on every survivor. Results are committed only on success.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::ReduceBuffers;
use super::reduce::{finish_avg, reduce_into};
use super::schedule::{Action, Schedule};
use crate::comm::Shared;
use crate::comm::ops::{OpEvent, OpKey};
use crate::comm::p2p::{OutFrame, Pool};
use crate::error::{Error, Result};
use crate::quant::{Codec, Scratch};
use crate::types::{ReduceDescriptor, ReduceInfo, Topology};
use crate::wire::{DataHeader, FailReason};

/// An op registered with the registry but not yet run.
#[derive(Debug)]
pub(crate) struct Started {
    key: OpKey,
    topology: Arc<Topology>,
    events: mpsc::UnboundedReceiver<OpEvent>,
    shared: Arc<Shared>,
}

impl Drop for Started {
    fn drop(&mut self) {
        self.shared.registry.finish(self.key);
    }
}

/// Registers op `desc.tag` (fails at once if the tag is in flight).
pub(crate) fn start(shared: &Arc<Shared>, desc: &ReduceDescriptor) -> Result<Started> {
    let me = shared.me;
    let group = shared.config.peer_group;
    let (key, topology, events) = shared.registry.start(desc.tag, |t| {
        let ring = t.group_ring(group);
        let pos = ring.iter().position(|p| p.id == me)?;
        Some(ring[(pos + ring.len() - 1) % ring.len()].id)
    })?;
    Ok(Started {
        key,
        topology,
        events,
        shared: shared.clone(),
    })
}

/// Runs a started op to its verdict.
pub(crate) async fn run<B: ReduceBuffers>(
    mut st: Started,
    bufs: &mut B,
    desc: ReduceDescriptor,
) -> Result<ReduceInfo> {
    let shared = st.shared.clone();
    let ring = st.topology.group_ring(shared.config.peer_group);
    let Some(rank) = ring.iter().position(|p| p.id == shared.me) else {
        return Err(Error::InvalidUsage(
            "this peer is not part of the run (not connected, or removed)".into(),
        ));
    };
    let n = ring.len();
    if n < 2 {
        return Err(Error::TooFewPeers);
    }
    let next = ring[(rank + 1) % n].clone();
    let slice_elems = (shared.config.slice_bytes / desc.dtype.size()).max(1);
    let sched = Schedule::new(n, rank, desc.count, slice_elems);
    let mut info = ReduceInfo {
        local_world_size: n as u32,
        ..ReduceInfo::default()
    };

    let local = match shared.p2p.pool(&next).await {
        Ok(pool) => exchange(&mut st, &pool, &sched, bufs, &desc, &mut info).await,
        Err(e) => {
            tracing::debug!(error = %e, "cannot reach the ring successor");
            Err(Local::Fail(FailReason::PeerLost))
        }
    };
    let failure = match local {
        Ok(()) => None,
        Err(Local::Fail(f)) => Some(f),
        Err(Local::Abort(e)) => return Err(e),
    };
    shared.control_op_done(st.key, failure);
    loop {
        match st.events.recv().await {
            Some(OpEvent::Verdict(None)) => {
                bufs.commit();
                return Ok(info);
            }
            Some(OpEvent::Verdict(Some(f))) => {
                if failure.is_some() && matches!(f, FailReason::PeerLost) {
                    // The connection failed before the master noticed the death: give
                    // it a moment so the retry runs on the new ring.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                return Err(verdict_error(desc.tag, f));
            }
            Some(OpEvent::Abort(e)) => return Err(e),
            Some(OpEvent::Frame { .. }) => {}
            None => return Err(Error::Internal("op registry dropped the op".into())),
        }
    }
}

/// Why this rank's part ended early.
enum Local {
    /// Report this failure to the master and wait for the verdict.
    Fail(FailReason),
    /// Return this error at once (the op is already decided for everyone).
    Abort(Error),
}

fn verdict_error(tag: u64, f: FailReason) -> Error {
    match f {
        FailReason::PeerLost => Error::RankConnectionLost {
            tag,
            reason: "a peer taking part was lost".into(),
        },
        FailReason::Corrupt => Error::RankConnectionLost {
            tag,
            reason: "a peer received a corrupted frame".into(),
        },
        FailReason::Mismatch => Error::InvalidUsage(format!(
            "peers called op {tag} with different counts, types, ops or quantization"
        )),
    }
}

/// Sends and receives every slice of this rank's part of the op.
async fn exchange<B: ReduceBuffers>(
    st: &mut Started,
    pool: &Pool,
    sched: &Schedule,
    bufs: &mut B,
    desc: &ReduceDescriptor,
    info: &mut ReduceInfo,
) -> Result<(), Local> {
    let size = desc.dtype.size();
    let key = st.key;
    let codec = Codec::new(desc);
    let mut scratch = Scratch::default();
    // Payload bytes of a frame of `elems` elements.
    let wire_len = |elems: usize| codec.map_or(elems * size, |c| c.frame_len(elems));
    let header = |step: usize, slice: usize, range: &std::ops::Range<usize>, crc: u32| DataHeader {
        tag: key.tag,
        epoch: key.epoch,
        seq: key.seq,
        count: desc.count as u64,
        dtype: desc.dtype,
        op: desc.op,
        quant: codec.map(|c| c.quantization()),
        step: step as u16,
        slice: slice as u32,
        offset: (range.start * size) as u64,
        len: wire_len(range.len()) as u32,
        crc,
    };
    let expected = sched.expected_frames();
    let first = sched.send_chunk(0);
    let first_slices = sched.slices(first);
    let mut next_first = 0;
    let mut received = 0;
    let mut seen: HashSet<(u16, u32)> = HashSet::with_capacity(expected);
    let mut outgoing: VecDeque<OutFrame> = VecDeque::new();
    let conns = connections_for(pool.size(), sched.slices(0));

    loop {
        // Step-0 slices are made lazily, so at most a writer queue's worth is copied ahead.
        if outgoing.is_empty() && next_first < first_slices {
            let range = sched.slice(first, next_first);
            let src = &bufs.send()[range.start * size..range.end * size];
            let len = wire_len(range.len());
            let mut payload = st.shared.bufs.get(len);
            match codec {
                Some(c) => {
                    payload.resize(len, 0);
                    c.encode(src, &mut scratch, &mut payload);
                }
                None => payload.extend_from_slice(src),
            }
            let payload = payload.freeze();
            let crc = crc32fast::hash(&payload);
            outgoing.push_back(OutFrame {
                header: header(0, next_first, &range, crc),
                payload,
            });
            next_first += 1;
        }
        if received == expected && outgoing.is_empty() {
            return Ok(());
        }
        if pool.is_closed() {
            return Err(Local::Fail(FailReason::PeerLost));
        }
        let event = if let Some(front) = outgoing.front() {
            let idx = (front.header.step as usize + front.header.slice as usize) % conns;
            tokio::select! {
                biased;
                ev = st.events.recv() => ev,
                permit = pool.reserve(idx) => {
                    let Ok(permit) = permit else {
                        return Err(Local::Fail(FailReason::PeerLost));
                    };
                    let frame = outgoing.pop_front().expect("front exists");
                    info.tx_bytes += frame.payload.len() as u64;
                    permit.send(frame);
                    continue;
                }
            }
        } else {
            st.events.recv().await
        };
        let (h, mut payload, crc_ok) = match event {
            Some(OpEvent::Frame {
                header,
                payload,
                crc_ok,
                ..
            }) => (header, payload, crc_ok),
            Some(OpEvent::Verdict(Some(f))) => return Err(Local::Abort(verdict_error(key.tag, f))),
            Some(OpEvent::Verdict(None)) => {
                return Err(Local::Abort(Error::Internal(
                    "success verdict before completion".into(),
                )));
            }
            Some(OpEvent::Abort(e)) => return Err(Local::Abort(e)),
            None => {
                return Err(Local::Abort(Error::Internal(
                    "op registry dropped the op".into(),
                )));
            }
        };
        if !crc_ok {
            return Err(Local::Fail(FailReason::Corrupt));
        }
        let range = check_frame(&h, sched, desc, codec, &mut seen)?;
        info.rx_bytes += payload.len() as u64;
        received += 1;
        if received == expected {
            st.shared.registry.close_frames(key);
        }
        let step = h.step as usize;
        let bytes = range.start * size..range.end * size;
        let action = sched.action(step);
        if let Some(c) = codec {
            let forward = match action {
                Action::ReduceForward | Action::ReduceFinal => {
                    let len = c.frame_len(range.len());
                    let mut out = st.shared.bufs.get(len);
                    out.resize(len, 0);
                    let last = action == Action::ReduceFinal;
                    let avg = (last && desc.op == crate::types::ReduceOp::Avg).then_some(sched.n);
                    let local = &bufs.send()[bytes.clone()];
                    c.combine(&payload, local, avg, &mut scratch, &mut out);
                    st.shared.bufs.put(payload);
                    if last {
                        // The owner's result is the dequantization of the bytes it sends.
                        bufs.write(bytes.start, c.decode(&out, range.len(), &mut scratch));
                    }
                    let crc = crc32fast::hash(&out);
                    Some((out, crc))
                }
                Action::StoreForward | Action::Store => {
                    bufs.write(bytes.start, c.decode(&payload, range.len(), &mut scratch));
                    if action == Action::Store {
                        st.shared.bufs.put(payload);
                        None
                    } else {
                        Some((payload, h.crc))
                    }
                }
            };
            if let Some((out, crc)) = forward {
                outgoing.push_back(OutFrame {
                    header: header(step + 1, h.slice as usize, &range, crc),
                    payload: out.freeze(),
                });
            }
            continue;
        }
        if matches!(action, Action::ReduceForward | Action::ReduceFinal) {
            reduce_into(
                desc.op,
                desc.dtype,
                &mut payload,
                &bufs.send()[bytes.clone()],
            );
        }
        if action == Action::ReduceFinal && desc.op == crate::types::ReduceOp::Avg {
            finish_avg(desc.dtype, &mut payload, sched.n);
        }
        if action != Action::ReduceForward {
            bufs.write(bytes.start, &payload);
        }
        if action == Action::Store {
            st.shared.bufs.put(payload);
        } else {
            let crc = if action == Action::StoreForward {
                h.crc
            } else {
                crc32fast::hash(&payload)
            };
            outgoing.push_back(OutFrame {
                header: header(step + 1, h.slice as usize, &range, crc),
                payload: payload.freeze(),
            });
        }
    }
}

/// Fewest slices a connection should carry per ring step. Spread thinner, each connection
/// sends a burst of a slice or two per step and then idles: its congestion window never
/// opens (slow start, and its restart after idle), and on a long-fat pipe one op over 32
/// connections ran 10-20x slower than over 4 (BENCHMARKS.md, long-fat pipe).
const MIN_SLICES_PER_CONNECTION: usize = 4;

/// How many of the pool's connections an op uses: all of them for large ops, fewer for
/// ops whose chunks have few slices. Chunk 0 is the largest chunk.
fn connections_for(pool: usize, slices_per_chunk: usize) -> usize {
    (slices_per_chunk / MIN_SLICES_PER_CONNECTION).clamp(1, pool.max(1))
}

/// Checks a received frame against our own schedule and returns its element range.
fn check_frame(
    h: &DataHeader,
    sched: &Schedule,
    desc: &ReduceDescriptor,
    codec: Option<Codec>,
    seen: &mut HashSet<(u16, u32)>,
) -> Result<std::ops::Range<usize>, Local> {
    let quant = codec.map(|c| c.quantization());
    if h.count != desc.count as u64 || h.dtype != desc.dtype || h.op != desc.op || h.quant != quant
    {
        tracing::warn!(tag = h.tag, "peer called the op with different parameters");
        return Err(Local::Fail(FailReason::Mismatch));
    }
    let step = h.step as usize;
    let slice = h.slice as usize;
    let chunk = sched.recv_chunk(step);
    let size = desc.dtype.size();
    let valid = step < sched.steps() && slice < sched.slices(chunk) && {
        let r = sched.slice(chunk, slice);
        let len = codec.map_or_else(|| r.len() * size, |c| c.frame_len(r.len()));
        h.offset == (r.start * size) as u64 && h.len as usize == len
    };
    if !valid || !seen.insert((h.step, h.slice)) {
        tracing::warn!(
            tag = h.tag,
            step,
            slice,
            "frame does not fit the ring schedule"
        );
        return Err(Local::Fail(FailReason::Mismatch));
    }
    Ok(sched.slice(chunk, slice))
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
