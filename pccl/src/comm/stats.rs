//! What a communicator counts about its own work (docs/ARCHITECTURE.md §13): ops per kind,
//! failures per cause, retries, bytes per neighbour, recent all-reduce figures, recovery
//! times, shared-state syncs and measured links. Recording is a short critical section
//! after an op ends, never inside the data path; every list is bounded.
//!
//! [`Communicator::stats`](super::Communicator::stats) returns a snapshot; the control
//! task sends a compact [`PeerSummary`] of it with every heartbeat.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::types::{Collective, PeerId, ReduceDescriptor, ReduceInfo, SyncInfo, Topology};
use crate::wire::{MAX_RECENT_OPS, PeerSummary};

/// Recent all-reduces kept for [`CommStats::recent_all_reduces`].
const RECENT_REDUCES: usize = 64;
/// Recent recovery times kept.
const RECENT_RECOVERIES: usize = 32;
/// Neighbours (and measured links) remembered, at most; the least recently used goes.
const MAX_NEIGHBOURS: usize = 64;

/// Completed and failed counts of one kind of op.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OpCounts {
    pub completed: u64,
    pub failed: u64,
}

/// Ring payload bytes exchanged with one neighbour.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NeighbourBytes {
    /// The neighbour's id (hex).
    pub peer: String,
    /// Bytes we sent it (it was our successor).
    pub tx_bytes: u64,
    /// Bytes it sent us (it was our predecessor).
    pub rx_bytes: u64,
}

/// One finished all-reduce.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReduceSample {
    /// The buffer's size in bytes.
    pub bytes: u64,
    /// Wall time from the call to the verdict.
    pub seconds: f64,
    /// Bus bandwidth, bytes/s: `bytes / seconds × 2(n−1)/n` (what each link carried).
    pub busbw: f64,
    /// Peers of the group that took part.
    pub world: u32,
}

/// A link this peer measured for `optimize_topology`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LinkBandwidth {
    /// The target's id (hex).
    pub peer: String,
    /// Measured throughput (0: the test failed).
    pub bytes_per_s: u64,
}

/// A snapshot of a communicator's counters since it was created.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CommStats {
    /// All-reduces (blocking, async and batched) that succeeded / failed here.
    pub all_reduce: OpCounts,
    /// Reduce-scatters, all-gathers and broadcasts that succeeded / failed here, one
    /// count per kind (their bytes count in `tx_bytes`, `rx_bytes` and `neighbours`; the
    /// recent figures and recovery times are the all-reduces' only).
    pub reduce_scatter: OpCounts,
    pub all_gather: OpCounts,
    pub broadcast: OpCounts,
    /// Shared-state syncs that succeeded / failed here.
    pub shared_state_sync: OpCounts,
    /// Failed ops by result code name (`RankConnectionLost`, `InvalidUsage`, …).
    pub failures: BTreeMap<String, u64>,
    /// Ops `all_reduce_multiple_with_retry` ran again after a failure.
    pub retries: u64,
    /// Ring payload bytes sent / received, all neighbours together.
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// The same per neighbour (at most 64, the most recent).
    pub neighbours: Vec<NeighbourBytes>,
    /// The last successful all-reduces, oldest first (at most 64).
    pub recent_all_reduces: Vec<ReduceSample>,
    /// Seconds from an op failing because a peer was lost to the next all-reduce that
    /// succeeded, most recent last (at most 32).
    pub recovery_seconds: Vec<f64>,
    /// Tensor bytes shared-state syncs received / sent.
    pub shared_state_rx_bytes: u64,
    pub shared_state_tx_bytes: u64,
    /// Links this peer measured, latest figure per target.
    pub link_bandwidth: Vec<LinkBandwidth>,
}

impl CommStats {
    /// The counts of one kind of collective.
    fn counts(&mut self, kind: Collective) -> &mut OpCounts {
        match kind {
            Collective::AllReduce => &mut self.all_reduce,
            Collective::ReduceScatter => &mut self.reduce_scatter,
            Collective::AllGather => &mut self.all_gather,
            Collective::Broadcast { .. } => &mut self.broadcast,
        }
    }
}

/// The recorder a communicator and its tasks share.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    snap: CommStats,
    /// Durations (µs) of all-reduces not yet sent to the master, newest last.
    unsent: VecDeque<u32>,
    /// When an op first failed for a lost peer, until an all-reduce succeeds again.
    lost_at: Option<Instant>,
    /// Per neighbour (tx, rx) and the order they were last used, for the bound.
    neighbours: BTreeMap<PeerId, (u64, u64, u64)>,
    links: BTreeMap<PeerId, (u64, u64)>,
    uses: u64,
}

impl Stats {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// An all-reduce ended after `took`; `topology` and `group` name its neighbours.
    pub(crate) fn record_reduce(
        &self,
        (desc, kind): (&ReduceDescriptor, Collective),
        took: Duration,
        result: &Result<ReduceInfo>,
        topology: &Topology,
        me: PeerId,
        group: u32,
    ) {
        let all_reduce = kind == Collective::AllReduce;
        self.with(|s| match result {
            Ok(info) => {
                s.snap.counts(kind).completed += 1;
                s.snap.tx_bytes += info.tx_bytes;
                s.snap.rx_bytes += info.rx_bytes;
                let ring = topology.group_ring(group);
                if let Some(pos) = ring.iter().position(|p| p.id == me) {
                    let n = ring.len();
                    s.neighbour(ring[(pos + 1) % n].id, info.tx_bytes, 0);
                    s.neighbour(ring[(pos + n - 1) % n].id, 0, info.rx_bytes);
                }
                if !all_reduce {
                    return;
                }
                let bytes = desc.count as u64 * desc.dtype.size() as u64;
                let secs = took.as_secs_f64().max(1e-9);
                let n = f64::from(info.local_world_size.max(1));
                push_bounded(
                    &mut s.snap.recent_all_reduces,
                    RECENT_REDUCES,
                    ReduceSample {
                        bytes,
                        seconds: secs,
                        busbw: bytes as f64 / secs * 2.0 * (n - 1.0) / n,
                        world: info.local_world_size,
                    },
                );
                if s.unsent.len() == MAX_RECENT_OPS {
                    s.unsent.pop_front();
                }
                s.unsent
                    .push_back(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
                if let Some(t) = s.lost_at.take() {
                    let secs = t.elapsed().as_secs_f64();
                    push_bounded(&mut s.snap.recovery_seconds, RECENT_RECOVERIES, secs);
                }
            }
            Err(e) => {
                s.snap.counts(kind).failed += 1;
                s.failure(e);
                if matches!(e, Error::RankConnectionLost { .. }) {
                    s.lost_at.get_or_insert_with(Instant::now);
                }
            }
        });
    }

    /// `all_reduce_multiple_with_retry` starts a failed op again.
    pub(crate) fn record_retry(&self) {
        self.with(|s| s.snap.retries += 1);
    }

    /// A shared-state sync ended.
    pub(crate) fn record_sync(&self, result: &Result<SyncInfo>) {
        self.with(|s| match result {
            Ok(info) => {
                s.snap.shared_state_sync.completed += 1;
                s.snap.shared_state_rx_bytes += info.rx_bytes;
                s.snap.shared_state_tx_bytes += info.tx_bytes;
            }
            Err(e) => {
                s.snap.shared_state_sync.failed += 1;
                s.failure(e);
            }
        });
    }

    /// Bandwidth tests this peer ran, as reported to the master.
    pub(crate) fn record_links(&self, results: &[(PeerId, u64)]) {
        self.with(|s| {
            for (peer, bps) in results {
                s.uses += 1;
                s.links.insert(*peer, (*bps, s.uses));
                evict_oldest(&mut s.links, |v| v.1);
            }
        });
    }

    /// The snapshot returned by `Communicator::stats`.
    pub(crate) fn snapshot(&self) -> CommStats {
        self.with(|s| {
            let mut snap = s.snap.clone();
            snap.neighbours = s
                .neighbours
                .iter()
                .map(|(p, (tx, rx, _))| NeighbourBytes {
                    peer: p.hex(),
                    tx_bytes: *tx,
                    rx_bytes: *rx,
                })
                .collect();
            snap.link_bandwidth = s
                .links
                .iter()
                .map(|(p, (bps, _))| LinkBandwidth {
                    peer: p.hex(),
                    bytes_per_s: *bps,
                })
                .collect();
            snap
        })
    }

    /// The summary for the next heartbeat; takes the op durations not sent yet.
    pub(crate) fn take_summary(&self) -> PeerSummary {
        self.with(Inner::summary)
    }
}

/// The all-reduces `recent_busbw` looks back over.
const BUSBW_WINDOW: usize = 16;

impl Inner {
    /// Bus bandwidth of the last [`BUSBW_WINDOW`] all-reduces: their bus bytes over their
    /// time, not a mean of rates, so tiny ops between large ones (a step counter, say) do
    /// not hide the throughput of the large ones.
    fn recent_busbw(&self) -> f64 {
        let r = &self.snap.recent_all_reduces;
        let last = &r[r.len().saturating_sub(BUSBW_WINDOW)..];
        let secs: f64 = last.iter().map(|x| x.seconds).sum();
        let bus: f64 = last.iter().map(|x| x.busbw * x.seconds).sum();
        if secs > 0.0 { bus / secs } else { 0.0 }
    }

    fn summary(&mut self) -> PeerSummary {
        let s = self;
        PeerSummary {
            reduces_ok: s.snap.all_reduce.completed,
            reduces_failed: s.snap.all_reduce.failed,
            retries: s.snap.retries,
            tx_bytes: s.snap.tx_bytes,
            rx_bytes: s.snap.rx_bytes,
            syncs_ok: s.snap.shared_state_sync.completed,
            syncs_failed: s.snap.shared_state_sync.failed,
            sync_rx_bytes: s.snap.shared_state_rx_bytes,
            sync_tx_bytes: s.snap.shared_state_tx_bytes,
            busbw: s.recent_busbw() as u64,
            recent_op_micros: s.unsent.drain(..).collect(),
        }
    }

    fn failure(&mut self, e: &Error) {
        *self
            .snap
            .failures
            .entry(format!("{:?}", e.code()))
            .or_default() += 1;
    }

    fn neighbour(&mut self, peer: PeerId, tx: u64, rx: u64) {
        self.uses += 1;
        let e = self.neighbours.entry(peer).or_default();
        e.0 += tx;
        e.1 += rx;
        e.2 = self.uses;
        evict_oldest(&mut self.neighbours, |v| v.2);
    }
}

fn push_bounded<T>(v: &mut Vec<T>, max: usize, item: T) {
    if v.len() == max {
        v.remove(0);
    }
    v.push(item);
}

/// Keeps `map` within `MAX_NEIGHBOURS` by dropping the entry used least recently.
fn evict_oldest<V>(map: &mut BTreeMap<PeerId, V>, used: impl Fn(&V) -> u64) {
    if map.len() > MAX_NEIGHBOURS
        && let Some(k) = map.iter().min_by_key(|(_, v)| used(v)).map(|(k, _)| *k)
    {
        map.remove(&k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{DataType, PeerEntry, ReduceOp};

    fn ring(ids: &[PeerId]) -> Topology {
        Topology {
            ring: ids
                .iter()
                .enumerate()
                .map(|(i, id)| PeerEntry {
                    id: *id,
                    group: 0,
                    p2p_addr: ([127, 0, 0, 1], 1000 + i as u16).into(),
                    static_key: [0; 32],
                })
                .collect(),
            group_epochs: vec![(0, 1)],
        }
    }

    #[test]
    fn counts_bytes_per_neighbour_failures_and_recoveries() {
        let ids: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        let t = ring(&ids);
        let s = Stats::default();
        let desc = ReduceDescriptor::new(1000, DataType::F32, ReduceOp::Sum);
        let ok = Ok(ReduceInfo {
            local_world_size: 3,
            tx_bytes: 2000,
            rx_bytes: 1500,
        });
        s.record_reduce(
            (&desc, Collective::AllReduce),
            Duration::from_millis(10),
            &ok,
            &t,
            ids[0],
            0,
        );
        let lost = Err(Error::RankConnectionLost {
            tag: 0,
            reason: "gone".into(),
        });
        s.record_reduce(
            (&desc, Collective::AllReduce),
            Duration::from_millis(1),
            &lost,
            &t,
            ids[0],
            0,
        );
        s.record_retry();
        s.record_reduce(
            (&desc, Collective::AllReduce),
            Duration::from_millis(20),
            &ok,
            &t,
            ids[0],
            0,
        );
        let snap = s.snapshot();
        assert_eq!(
            snap.all_reduce,
            OpCounts {
                completed: 2,
                failed: 1
            }
        );
        assert_eq!(snap.failures.get("RankConnectionLost"), Some(&1));
        assert_eq!(snap.retries, 1);
        assert_eq!((snap.tx_bytes, snap.rx_bytes), (4000, 3000));
        let next = snap.neighbours.iter().find(|n| n.peer == ids[1].hex());
        let prev = snap.neighbours.iter().find(|n| n.peer == ids[2].hex());
        assert_eq!(next.map(|n| (n.tx_bytes, n.rx_bytes)), Some((4000, 0)));
        assert_eq!(prev.map(|n| (n.tx_bytes, n.rx_bytes)), Some((0, 3000)));
        assert_eq!(snap.recovery_seconds.len(), 1);
        let first = &snap.recent_all_reduces[0];
        // 4000 bytes in 10 ms, times 2(n-1)/n = 4/3.
        assert!(
            (first.busbw - 4000.0 / 0.01 * 4.0 / 3.0).abs() < 1.0,
            "{first:?}"
        );
        let sum = s.take_summary();
        assert_eq!(sum.recent_op_micros, vec![10_000, 20_000]);
        assert_eq!((sum.reduces_ok, sum.reduces_failed, sum.retries), (2, 1, 1));
        // Bus bytes over time across both ops: 2 × 4000 × 4/3 bytes in 30 ms.
        let want = 2.0 * 4000.0 * 4.0 / 3.0 / 0.03;
        assert!(
            (sum.busbw as f64 - want).abs() < 2.0,
            "{} vs {want}",
            sum.busbw
        );
        assert!(
            s.take_summary().recent_op_micros.is_empty(),
            "durations are sent once"
        );
    }

    #[test]
    fn each_kind_of_collective_is_counted_apart() {
        let ids: Vec<PeerId> = (0..2).map(|_| PeerId::random()).collect();
        let t = ring(&ids);
        let s = Stats::default();
        let desc = ReduceDescriptor::new(8, DataType::F32, ReduceOp::Sum);
        let ok = || {
            Ok(ReduceInfo {
                local_world_size: 2,
                tx_bytes: 16,
                rx_bytes: 16,
            })
        };
        let mismatch = || Err(Error::InvalidUsage("mismatch".into()));
        let kinds = [
            (Collective::AllReduce, 1, 0),
            (Collective::ReduceScatter, 2, 1),
            (Collective::AllGather, 3, 0),
            (Collective::Broadcast { root: 1 }, 1, 2),
        ];
        for (kind, oks, fails) in kinds {
            for r in (0..oks).map(|_| ok()).chain((0..fails).map(|_| mismatch())) {
                s.record_reduce((&desc, kind), Duration::from_millis(1), &r, &t, ids[0], 0);
            }
        }
        let snap = s.snapshot();
        let counts = |completed, failed| OpCounts { completed, failed };
        assert_eq!(snap.all_reduce, counts(1, 0));
        assert_eq!(snap.reduce_scatter, counts(2, 1));
        assert_eq!(snap.all_gather, counts(3, 0));
        assert_eq!(snap.broadcast, counts(1, 2));
        assert_eq!(snap.failures.get("InvalidUsage"), Some(&3));
        // Every kind's bytes count; the recent figures are the all-reduce's only.
        assert_eq!(snap.tx_bytes, 7 * 16);
        assert_eq!(snap.recent_all_reduces.len(), 1);
        let sum = s.take_summary();
        assert_eq!((sum.reduces_ok, sum.reduces_failed), (1, 0));
    }

    #[test]
    fn lists_stay_bounded() {
        let s = Stats::default();
        let desc = ReduceDescriptor::new(10, DataType::F32, ReduceOp::Sum);
        let ids: Vec<PeerId> = (0..200).map(|_| PeerId::random()).collect();
        for pair in ids.windows(2) {
            let t = ring(pair);
            let ok = Ok(ReduceInfo {
                local_world_size: 2,
                tx_bytes: 1,
                rx_bytes: 1,
            });
            s.record_reduce(
                (&desc, Collective::AllReduce),
                Duration::from_millis(1),
                &ok,
                &t,
                pair[0],
                0,
            );
            s.record_links(&[(pair[1], 5)]);
        }
        let snap = s.snapshot();
        assert!(snap.neighbours.len() <= MAX_NEIGHBOURS);
        assert!(snap.link_bandwidth.len() <= MAX_NEIGHBOURS);
        assert_eq!(snap.recent_all_reduces.len(), RECENT_REDUCES);
        assert_eq!(s.take_summary().recent_op_micros.len(), MAX_RECENT_OPS);
    }
}
