//! The ring runner of every collective (docs/ARCHITECTURE.md §5, §5.1): all-reduce,
//! reduce-scatter, all-gather and broadcast share it; the schedule (`schedule.rs`) says
//! which slices each kind moves, and everything below holds for all of them.
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
//!
//! Files: `host.rs` is the seam to the world ([`RingHost`]); this file starts an op and
//! waits for its verdict; `exchange.rs` moves the op's frames; `frames.rs` makes, checks
//! and forwards single frames.

mod exchange;
mod frames;
mod host;
#[cfg(test)]
mod kind_tests;
#[cfg(test)]
mod mem;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::ReduceBuffers;
use super::link::Pool;
use super::registry::{OpEvent, OpKey, verdict_error};
use super::schedule::Schedule;
use crate::error::{Error, Result};
use crate::types::{Collective, ReduceDescriptor, ReduceInfo, Topology};
use crate::wire::FailReason;

pub(crate) use host::RingHost;

/// An op registered with the registry but not yet run.
#[derive(Debug)]
pub(crate) struct Started<H: RingHost> {
    key: OpKey,
    topology: Arc<Topology>,
    events: mpsc::UnboundedReceiver<OpEvent>,
    host: Arc<H>,
}

impl<H: RingHost> Drop for Started<H> {
    fn drop(&mut self) {
        self.host.registry().finish(self.key);
    }
}

/// Registers op `desc.tag` (fails at once if the tag is in flight).
pub(crate) fn start<H: RingHost>(host: &Arc<H>, desc: &ReduceDescriptor) -> Result<Started<H>> {
    let me = host.me();
    let group = host.group();
    let (key, topology, events) = host.registry().start(desc.tag, |t| {
        let ring = t.group_ring(group);
        let pos = ring.iter().position(|p| p.id == me)?;
        Some(ring[(pos + ring.len() - 1) % ring.len()].id)
    })?;
    Ok(Started {
        key,
        topology,
        events,
        host: host.clone(),
    })
}

/// Runs a started op of kind `kind` to its verdict. `desc.count` is the element count
/// of the op's whole buffer: the send buffer of a reduce-scatter, the receive buffer of
/// an all-gather (`Schedule::input`, `Schedule::output` say what the buffers must hold).
pub(crate) async fn run<H: RingHost, B: ReduceBuffers>(
    mut st: Started<H>,
    bufs: &mut B,
    desc: ReduceDescriptor,
    kind: Collective,
) -> Result<ReduceInfo> {
    let host = st.host.clone();
    let ring = st.topology.group_ring(host.group());
    let Some(rank) = ring.iter().position(|p| p.id == host.me()) else {
        return Err(Error::InvalidUsage(
            "this peer is not part of the run (not connected, or removed)".into(),
        ));
    };
    let n = ring.len();
    if n < 2 {
        return Err(Error::TooFewPeers);
    }
    let next = ring[(rank + 1) % n].clone();
    let slice_elems = (host.slice_bytes() / desc.dtype.size()).max(1);
    let mut info = ReduceInfo {
        local_world_size: n as u32,
        ..ReduceInfo::default()
    };
    // Buffers that do not fit this ring (sized for another world size, a root past its
    // end) fail here; the other ranks wait for our frames, so the master hears of it and
    // fails the op everywhere, and our seq of the tag stays in step with theirs.
    let sched = match fit(kind, n, rank, &desc, slice_elems, bufs) {
        Ok(sched) => sched,
        Err(bad) => {
            let failure = Some(FailReason::Mismatch);
            host.report(st.key, failure);
            // The verdict is a failure (ours, if no other came first): only the wait for
            // it matters here.
            let _ = await_verdict(&mut st, bufs, desc.tag, failure, None).await;
            return Err(bad);
        }
    };
    // Opening the link to a new successor is the one wait outside the op's event stream:
    // a successor that stopped answering (frozen, not dead) would hold it for the whole
    // dial timeout after the master removed it. The removal ends it at once instead.
    let pool = tokio::select! {
        p = host.pool(&next) => p,
        e = host.registry().superseded(st.key) => return Err(e),
    };
    let (local, pool) = match pool {
        Ok(pool) => (
            exchange::exchange(&mut st, &pool, &sched, bufs, &desc, &mut info).await,
            Some(pool),
        ),
        Err(e) => {
            tracing::debug!(error = %e, "cannot reach the ring successor");
            (Err(Local::Fail(FailReason::PeerLost)), None)
        }
    };
    let failure = match local {
        Ok(()) => None,
        Err(Local::Fail(f)) => Some(f),
        Err(Local::Abort(e)) => return Err(e),
        Err(Local::Verdict(f)) => return Err(failed(&st, f).await),
    };
    host.report(st.key, failure);
    await_verdict(&mut st, bufs, desc.tag, failure, pool).await?;
    Ok(info)
}

/// The schedule of this rank's part, or why the caller's buffers do not fit it.
fn fit<B: ReduceBuffers>(
    kind: Collective,
    n: usize,
    rank: usize,
    desc: &ReduceDescriptor,
    slice_elems: usize,
    bufs: &B,
) -> Result<Schedule> {
    if kind.root() as usize >= n {
        return Err(Error::ArgumentMismatch(format!(
            "broadcast root {} is not a rank of this ring of {n} peers",
            kind.root()
        )));
    }
    let sched = Schedule::new(kind, n, rank, desc.count, slice_elems);
    let size = desc.dtype.size();
    let (send, recv) = (sched.input().len() * size, sched.output().len() * size);
    if bufs.send().len() != send || bufs.recv_len() != recv {
        return Err(Error::ArgumentMismatch(format!(
            "a {} of {} elements on rank {rank} of {n} takes {} send and {} receive \
             elements; the buffers hold {} and {}",
            kind.name(),
            desc.count,
            send / size,
            recv / size,
            bufs.send().len() / size,
            bufs.recv_len() / size,
        )));
    }
    Ok(sched)
}

/// Waits for the master's verdict on op `st` after this rank reported (`failure`), and
/// commits the results on success.
async fn await_verdict<H: RingHost, B: ReduceBuffers>(
    st: &mut Started<H>,
    bufs: &mut B,
    tag: u64,
    failure: Option<FailReason>,
    pool: Option<Arc<Pool>>,
) -> Result<()> {
    let host = st.host.clone();
    // A frame counts as sent once it is written to a connection; if the connection then
    // fails, the frames in flight on it are lost and the successor may wait for them
    // forever (it cannot tell which ops they belonged to). So until the verdict, a closed pool turns our "done" into a failure: the master fails the op
    // everywhere unless it has already decided it, in which case every frame arrived and
    // the late report is ignored as stale (docs/ARCHITECTURE.md §5, "Lost frames").
    let mut watch_pool = pool.filter(|_| failure.is_none());
    loop {
        let event = match &watch_pool {
            Some(pool) => tokio::select! {
                biased;
                ev = st.events.recv() => ev,
                () = pool.closed() => {
                    tracing::debug!(tag, "ring connection closed before the verdict");
                    host.report(st.key, Some(FailReason::PeerLost));
                    watch_pool = None;
                    continue;
                }
            },
            None => st.events.recv().await,
        };
        match event {
            Some(OpEvent::Verdict(None)) if failure.is_none() => {
                bufs.commit();
                return Ok(());
            }
            Some(OpEvent::Verdict(None)) => {
                return Err(Error::Internal(
                    "success verdict for an op this rank failed".into(),
                ));
            }
            Some(OpEvent::Verdict(Some(f))) => {
                return Err(failed(st, f).await);
            }
            Some(OpEvent::Abort(e)) => return Err(e),
            Some(OpEvent::Frame { .. } | OpEvent::LinkLost) => {}
            None => return Err(Error::Internal("op registry dropped the op".into())),
        }
    }
}

/// Longest wait, after a `PeerLost` verdict, for the membership change that usually
/// follows it.
const PEER_LOST_SETTLE: Duration = Duration::from_millis(250);

/// The error of a failure verdict on op `st`. After `PeerLost`, which a connection can
/// report before the master has noticed the death behind it, waits (briefly) for the new
/// ring: what the caller reads before its retry (world size, rank: the retry's buffer
/// sizes) is then the ring the retry runs on. A peer that is alive moves no epoch; the
/// bound ends that wait.
async fn failed<H: RingHost>(st: &Started<H>, f: FailReason) -> Error {
    if f == FailReason::PeerLost {
        let moved = st.host.registry().superseded(st.key);
        let _ = tokio::time::timeout(PEER_LOST_SETTLE, moved).await;
    }
    verdict_error(st.key.tag, f)
}

/// Why this rank's part ended early.
enum Local {
    /// Report this failure to the master and wait for the verdict.
    Fail(FailReason),
    /// Return this error at once (the op is already decided for everyone).
    Abort(Error),
    /// The master failed the op for this reason (it is decided for everyone).
    Verdict(FailReason),
}
