//! `all_reduce_multiple_with_retry`: many ops, a bound on how many run at once, and
//! retries of the ones that fail while at least two peers remain.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::Shared;
use crate::collectives::{ReduceBuffers, ring};
use crate::error::{Error, Result};
use crate::types::{Attribute, Collective, ReduceDescriptor, ReduceInfo};

type Done<'a, B> = (usize, &'a mut (B, ReduceDescriptor), Result<ReduceInfo>);
type OpFuture<'a, B> = Pin<Box<dyn Future<Output = Done<'a, B>> + Send + 'a>>;

pub(super) async fn run<B: ReduceBuffers>(
    shared: &Arc<Shared>,
    ops: &mut [(B, ReduceDescriptor)],
    max_in_flight: usize,
) -> Result<ReduceInfo> {
    let mut queue: VecDeque<usize> = (0..ops.len()).collect();
    let mut slots: Vec<Option<&mut (B, ReduceDescriptor)>> = ops.iter_mut().map(Some).collect();
    let mut running: Vec<OpFuture<'_, B>> = Vec::new();
    let mut total = ReduceInfo::default();
    let mut first_error: Option<Error> = None;
    loop {
        while first_error.is_none() && running.len() < max_in_flight {
            let Some(i) = queue.pop_front() else { break };
            let op = slots[i].take().expect("an op runs once at a time");
            let desc = op.1;
            match ring::start(shared, &desc) {
                Ok(started) => running.push(Box::pin(async move {
                    let r = shared.run_reduce(started, &mut op.0, desc, Collective::AllReduce).await;
                    (i, op, r)
                })),
                Err(e) => {
                    slots[i] = Some(op);
                    first_error = Some(e);
                }
            }
        }
        if running.is_empty() {
            break;
        }
        // Never drop a running op: other peers would wait for its report.
        let (idx, (i, op, r)) = NextDone(&mut running).await;
        drop(running.swap_remove(idx));
        slots[i] = Some(op);
        match r {
            Ok(info) => {
                total.local_world_size = info.local_world_size;
                total.tx_bytes += info.tx_bytes;
                total.rx_bytes += info.rx_bytes;
            }
            Err(e @ Error::RankConnectionLost { .. }) => {
                let world = shared
                    .registry
                    .topology()
                    .attribute(Attribute::PeerGroupWorldSize, shared.config.peer_group);
                if world < 2 {
                    first_error.get_or_insert(Error::TooFewPeers);
                } else {
                    // Retry before starting anything new: every peer must start ops in
                    // the same order. Re-queued at the back, a peer whose op was aborted at
                    // the old epoch would move on to the next tag while another, already
                    // on the new epoch, waits for it on this one: a deadlock.
                    tracing::debug!(error = %e, "retrying op");
                    shared.stats.record_retry();
                    queue.push_front(i);
                }
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// Resolves to the index and output of the first future in the list that completes.
struct NextDone<'a, 'b, B>(&'a mut Vec<OpFuture<'b, B>>);

impl<'b, B> Future for NextDone<'_, 'b, B> {
    type Output = (usize, Done<'b, B>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        for (idx, f) in self.0.iter_mut().enumerate() {
            if let Poll::Ready(out) = f.as_mut().poll(cx) {
                return Poll::Ready((idx, out));
            }
        }
        Poll::Pending
    }
}
