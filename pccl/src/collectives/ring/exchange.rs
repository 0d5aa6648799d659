//! The frame loop of one ring op: keeps the successor fed with step-0 frames and with the
//! frames made from what the predecessor sent, until this rank has received every frame
//! the schedule promises it and sent everything it owes.
//!
//! One task per op; it waits on two things at once, room on the next outgoing connection
//! and the op's next event, preferring events so a verdict or abort is seen promptly.

use std::collections::{HashSet, VecDeque};

use bytes::BytesMut;
use tokio::sync::OwnedSemaphorePermit;

use super::frames::{OpFrames, connections_for};
use super::{Local, RingHost, Started};
use crate::collectives::ReduceBuffers;
use crate::collectives::link::{Outgoing, Pool, SendError};
use crate::collectives::registry::OpEvent;
use crate::collectives::schedule::Schedule;
use crate::error::Error;
use crate::quant::Scratch;
use crate::types::{ReduceDescriptor, ReduceInfo};
use crate::wire::{DataHeader, FailReason};

/// How many step-0 slices this rank may send beyond the frames it has received at the
/// pace step, or `None` when nothing paces it. Every slice the ring carries set out as a
/// step-0 slice, so this bounds the frames in flight in the ring at `n × window`, and the
/// memory that holds them, however deep the sockets' buffers are (docs/ARCHITECTURE.md
/// §5, "Memory"). Scaled with the connections: a pool is how a user asks for a long-fat
/// pipe, whose bandwidth-delay product must fit in flight. At least 2 per connection:
/// chunks differ by up to one slice, and the argument that the ring never stalls needs
/// a window larger than that.
pub(super) fn window(
    sched: &Schedule,
    conns: usize,
    ahead_bytes: usize,
    slice_bytes: usize,
) -> Option<usize> {
    let per_connection = (ahead_bytes / slice_bytes.max(1)).max(2);
    sched.pace_step().map(|_| per_connection * conns)
}

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
    let op = OpFrames::new(st.key, desc, sched, host.checksums(), bufs.recv_len());
    let mut scratch = Scratch::default();
    let expected = sched.expected_frames();
    let first = sched.first_chunk();
    let first_slices = first.map_or(0, |c| sched.slices(c));
    op.keep_input(bufs);
    let mut next_first = 0;
    let mut received = 0;
    let mut seen: HashSet<(u16, u32)> = HashSet::with_capacity(expected);
    let mut outgoing: VecDeque<Outgoing> = VecDeque::new();
    let lease = pool.lease();
    let conns = connections_for(pool.size(), sched.slices(0));
    let window = window(sched, conns, host.ahead_bytes(), host.slice_bytes());
    let pace_step = sched.pace_step();
    let mut paced = 0;

    loop {
        // Step-0 slices are made lazily, one at a time, and within the window.
        let room = window.is_none_or(|w| next_first < paced + w);
        if let Some(first) =
            first.filter(|_| room && outgoing.is_empty() && next_first < first_slices)
        {
            outgoing.push_back(match op.codec {
                None => op.first_slice(bufs, first, next_first),
                Some(c) => op.first_frame(c, bufs, host.bufs(), &mut scratch, first, next_first),
            });
            next_first += 1;
        }
        if received == expected && outgoing.is_empty() {
            return Ok(());
        }
        // A closed pool may have lost frames we counted as sent, and the frames we wait
        // for may depend on them: the op cannot finish (docs/ARCHITECTURE.md §5, "Lost
        // frames"), so it fails now rather than waiting for what will not come.
        let step = if let Some(front) = outgoing.front_mut() {
            // Slices of one step are striped over the connections; the next step of a slice
            // goes to the next connection.
            let idx = (front.header.step as usize + front.header.slice as usize) % conns;
            let len = front.header.len;
            // Writing first: a frame the socket takes now goes out before the op turns to
            // its next event (which the op takes whenever the socket is full).
            tokio::select! {
                biased;
                sent = pool.send(&lease, idx, front, bufs.send(), host.bufs()) => Step::Sent(sent.map(|()| len)),
                ev = st.events.recv() => Step::Event(ev),
                () = pool.closed() => return Err(Local::Fail(FailReason::PeerLost)),
            }
        } else {
            tokio::select! {
                biased;
                ev = st.events.recv() => Step::Event(ev),
                () = pool.closed() => return Err(Local::Fail(FailReason::PeerLost)),
            }
        };
        let event = match step {
            Step::Event(ev) => ev,
            Step::Sent(Ok(len)) => {
                info.tx_bytes += u64::from(len);
                outgoing.pop_front();
                continue;
            }
            Step::Sent(Err(e)) => {
                if !matches!(e, SendError::Closed) {
                    tracing::warn!(error = %e, "cannot send a ring frame");
                }
                pool.close();
                return Err(Local::Fail(FailReason::PeerLost));
            }
        };
        let (h, payload, _credit) = frame_of(event)?;
        let frame = op.check(h, &mut seen)?;
        info.rx_bytes += payload.len() as u64;
        received += 1;
        if Some(frame.header.step as usize) == pace_step {
            paced += 1;
        }
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

/// What the op's wait ended with.
enum Step {
    /// The front frame was written whole (its payload bytes), or cannot be.
    Sent(Result<u32, SendError>),
    Event(Option<OpEvent>),
}

/// The frame an event carries; any other event ends this rank's part of the op.
/// The frame's inbox credit comes with it: dropped once the frame is used, it lets the
/// reader hand over the next one.
fn frame_of(
    event: Option<OpEvent>,
) -> Result<(DataHeader, BytesMut, Option<OwnedSemaphorePermit>), Local> {
    match event {
        Some(OpEvent::Frame {
            header,
            payload,
            crc_ok,
            credit,
        }) => {
            if crc_ok {
                Ok((header, payload, credit))
            } else {
                Err(Local::Fail(FailReason::Corrupt))
            }
        }
        Some(OpEvent::Verdict(Some(f))) => Err(Local::Verdict(f)),
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
