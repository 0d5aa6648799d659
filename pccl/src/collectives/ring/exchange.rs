//! The frame loop of one ring op: keeps the successor fed with step-0 frames and with the
//! frames made from what the predecessor sent, until this rank has received every frame
//! the schedule promises it and sent everything it owes.
//!
//! One task per op; it waits on two things at once, room on the next outgoing connection
//! and the op's next event, preferring events so a verdict or abort is seen promptly.

use std::collections::{HashSet, VecDeque};

use bytes::BytesMut;

use super::frames::{OpFrames, connections_for};
use super::{Local, RingHost, Started, verdict_error};
use crate::collectives::ReduceBuffers;
use crate::collectives::link::{OutFrame, Pool};
use crate::collectives::registry::OpEvent;
use crate::collectives::schedule::Schedule;
use crate::error::Error;
use crate::quant::Scratch;
use crate::types::{ReduceDescriptor, ReduceInfo};
use crate::wire::{DataHeader, FailReason};

/// Sends and receives every slice of this rank's part of the op.
pub(super) async fn exchange<H: RingHost, B: ReduceBuffers>(
    st: &mut Started<H>,
    pool: &Pool,
    sched: &Schedule,
    bufs: &mut B,
    desc: &ReduceDescriptor,
    info: &mut ReduceInfo,
) -> Result<(), Local> {
    let host = st.host.clone();
    let op = OpFrames::new(st.key, desc, sched, host.checksums());
    let mut scratch = Scratch::default();
    let expected = sched.expected_frames();
    let first = sched.first_chunk();
    let first_slices = first.map_or(0, |c| sched.slices(c));
    op.keep_input(bufs);
    let mut next_first = 0;
    let mut received = 0;
    let mut seen: HashSet<(u16, u32)> = HashSet::with_capacity(expected);
    let mut outgoing: VecDeque<OutFrame> = VecDeque::new();
    let conns = connections_for(pool.size(), sched.slices(0));

    loop {
        // Step-0 slices are made lazily, so at most a writer queue's worth is copied ahead.
        if let Some(first) = first.filter(|_| outgoing.is_empty() && next_first < first_slices) {
            let frame = op.first_frame(bufs, host.bufs(), &mut scratch, first, next_first);
            outgoing.push_back(frame);
            next_first += 1;
        }
        if received == expected && outgoing.is_empty() {
            return Ok(());
        }
        // A closed pool may have lost frames we counted as sent, and the frames we wait
        // for may depend on them: the op cannot finish (docs/ARCHITECTURE.md §5, "Lost
        // frames"), so it fails now rather than waiting for what will not come.
        let event = if let Some(front) = outgoing.front() {
            // Slices of one step are striped over the connections; the next step of a slice
            // goes to the next connection.
            let idx = (front.header.step as usize + front.header.slice as usize) % conns;
            tokio::select! {
                biased;
                ev = st.events.recv() => ev,
                () = pool.closed() => return Err(Local::Fail(FailReason::PeerLost)),
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
            tokio::select! {
                biased;
                ev = st.events.recv() => ev,
                () = pool.closed() => return Err(Local::Fail(FailReason::PeerLost)),
            }
        };
        let (h, payload) = frame_of(event, op.key.tag)?;
        let frame = op.check(h, &mut seen)?;
        info.rx_bytes += payload.len() as u64;
        received += 1;
        if received == expected {
            host.registry().close_frames(op.key);
        }
        let forward = match op.codec {
            Some(c) => op.forward_quantized(c, bufs, host.bufs(), &mut scratch, &frame, payload),
            None => op.forward_plain(bufs, host.bufs(), &frame, payload),
        };
        if let Some(frame) = forward {
            outgoing.push_back(frame);
        }
    }
}

/// The frame an event carries; any other event ends this rank's part of the op.
fn frame_of(event: Option<OpEvent>, tag: u64) -> Result<(DataHeader, BytesMut), Local> {
    match event {
        Some(OpEvent::Frame {
            header,
            payload,
            crc_ok,
        }) => {
            if crc_ok {
                Ok((header, payload))
            } else {
                Err(Local::Fail(FailReason::Corrupt))
            }
        }
        Some(OpEvent::Verdict(Some(f))) => Err(Local::Abort(verdict_error(tag, f))),
        Some(OpEvent::Verdict(None)) => Err(Local::Abort(Error::Internal(
            "success verdict before completion".into(),
        ))),
        Some(OpEvent::Abort(e)) => Err(Local::Abort(e)),
        Some(OpEvent::LinkLost) => Err(Local::Fail(FailReason::PeerLost)),
        None => Err(Local::Abort(Error::Internal(
            "op registry dropped the op".into(),
        ))),
    }
}
