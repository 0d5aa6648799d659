//! The registry of in-flight ops: routes data frames to the op they belong to, buffers
//! frames of ops that have not started here yet, and aborts ops when the group's
//! membership changes. Pure (locks and channels, no sockets): the communicator feeds it
//! from its p2p readers and its control task, the in-memory ring tests feed it directly.
//!
//! Early frames (for an op not started here) are bounded in count and bytes (the reader
//! waits for room), and dropped when they can no longer be used: when a commit moves the
//! epoch past theirs, when a verdict passes their seq, and when the connection that brought
//! them closes, which also ends frames for a future epoch that never comes
//! (docs/PROTOCOL.md §4).
//!
//! Frames of a running op are bounded too: each takes one of the op's `INBOX_FRAMES`
//! credits, given back when the op has used the frame, and a reader with no credit waits
//! (docs/ARCHITECTURE.md §5, "Memory"). A running op always takes its next event, so the
//! wait ends as fast as the op works through its frames.
//!
//! An op is named by (tag, epoch, seq): the epoch of the group membership its ring was
//! computed from, and how many verdicts this tag has had in that epoch. All members of a
//! group see the same verdicts in the same order, so they agree on seq without talking.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};

use crate::error::Error;
use crate::types::{PeerId, Topology};
use crate::wire::{DataHeader, FailReason};

/// Identity of one op seq.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct OpKey {
    pub(crate) tag: u64,
    pub(crate) epoch: u64,
    pub(crate) seq: u32,
}

/// Frames a running op holds from its predecessor before the reader waits: the op's
/// share of the memory its frames take (with 1 MiB slices, 8 MiB), small against the
/// window of step-0 slices (docs/ARCHITECTURE.md §5, "Memory") and enough to keep the op
/// busy while the reader fetches the next frame.
pub(crate) const INBOX_FRAMES: usize = 8;

/// What an op's task receives.
#[derive(Debug)]
pub(crate) enum OpEvent {
    /// A data frame from the ring predecessor; `crc_ok` false: the payload was corrupted.
    /// `credit` is given back when the event is dropped (`None`: the frame was held as an
    /// early frame, and counted there).
    Frame {
        header: DataHeader,
        payload: BytesMut,
        crc_ok: bool,
        credit: Option<OwnedSemaphorePermit>,
    },
    /// The master's verdict on this op.
    Verdict(Option<FailReason>),
    /// The op cannot finish (membership changed, master lost).
    Abort(Error),
    /// The connection from the ring predecessor was closed because a frame on it failed
    /// its authentication (SECURITY.md §6): frames of this op may be lost. The op fails
    /// as on a lost link (`PeerLost`, reported to the master, the same verdict everywhere).
    LinkLost,
}

#[derive(Debug)]
struct Slot {
    key: OpKey,
    prev: PeerId,
    frames_open: bool,
    tx: mpsc::UnboundedSender<OpEvent>,
    /// The op's inbox credits (`INBOX_FRAMES`).
    credits: Arc<Semaphore>,
}

impl Drop for Slot {
    /// A reader waiting for a credit of an op that is gone routes its frame afresh.
    fn drop(&mut self) {
        self.credits.close();
    }
}

/// Names the connection a frame came on, so its early frames can be dropped when it
/// closes. `ConnId(0)` is "no connection" (the in-memory ring tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub(crate) struct ConnId(pub(crate) u64);

#[derive(Debug)]
struct Buffered {
    header: DataHeader,
    payload: BytesMut,
    from: PeerId,
    conn: ConnId,
    crc_ok: bool,
}

#[derive(Debug)]
struct Inner {
    group: u32,
    topology: Arc<Topology>,
    epoch: u64,
    seq: HashMap<u64, u32>,
    slots: HashMap<u64, Slot>,
    buffered: Vec<Buffered>,
    buffered_bytes: usize,
    /// Set once the master is lost or the communicator closes; every op fails with it.
    failed: Option<Error>,
    /// Failure verdicts for the next op of a tag that arrived before this peer started
    /// it: that call fails at its start with the same error (docs/ARCHITECTURE.md §4).
    failed_early: HashMap<u64, (OpKey, FailReason)>,
}

/// Shared between the control task, the p2p readers and the op tasks.
#[derive(Debug)]
pub(crate) struct Registry {
    inner: Mutex<Inner>,
    /// Signalled when buffered bytes drop, so blocked readers retry.
    space: Notify,
    /// Signalled when the epoch moves or every op fails, so an op that waits outside its
    /// event stream (dialling its successor) learns it is over.
    changed: Notify,
    max_buffered: usize,
    max_frames: usize,
}

impl Registry {
    #[cfg(test)]
    pub(crate) fn new(group: u32, max_buffered: usize) -> Self {
        Self::with_frame_bound(group, max_buffered, usize::MAX)
    }

    /// Holds at most `max_buffered` bytes and `max_frames` frames for ops not started yet.
    pub(crate) fn with_frame_bound(group: u32, max_buffered: usize, max_frames: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                group,
                topology: Arc::new(Topology::default()),
                epoch: 0,
                seq: HashMap::new(),
                slots: HashMap::new(),
                buffered: Vec::new(),
                buffered_bytes: 0,
                failed: None,
                failed_early: HashMap::new(),
            }),
            space: Notify::new(),
            changed: Notify::new(),
            max_buffered,
            max_frames: max_frames.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn topology(&self) -> Arc<Topology> {
        self.lock().topology.clone()
    }

    /// Installs a committed topology. If our group's membership changed, every op of the
    /// old membership is aborted and its buffered frames dropped.
    pub(crate) fn set_topology(&self, topology: Topology) {
        let mut g = self.lock();
        let epoch = topology.group_epoch(g.group).unwrap_or(0);
        g.topology = Arc::new(topology);
        if epoch == g.epoch {
            return;
        }
        g.epoch = epoch;
        g.seq.clear();
        for (_, slot) in g.slots.drain() {
            let _ = slot.tx.send(OpEvent::Abort(Error::RankConnectionLost {
                tag: slot.key.tag,
                reason: "the group's membership changed".into(),
            }));
        }
        g.purge(|h| h.epoch >= epoch);
        drop(g);
        self.space.notify_waiters();
        self.changed.notify_waiters();
    }

    /// Fails every op now and later with `err` (master lost, communicator closing).
    pub(crate) fn fail_all(&self, err: Error) {
        let mut g = self.lock();
        for (_, slot) in g.slots.drain() {
            let _ = slot.tx.send(OpEvent::Abort(err.clone()));
        }
        g.failed = Some(err);
        g.purge(|_| false);
        drop(g);
        self.space.notify_waiters();
        self.changed.notify_waiters();
    }

    /// Resolves, with the error op `key` is aborted with, once that op can no longer
    /// finish: the group's membership moved past its epoch, or every op failed. For the
    /// waits an op makes outside its event stream, which would otherwise outlast the
    /// abort (dialling a successor that was removed while it does not answer).
    pub(crate) async fn superseded(&self, key: OpKey) -> Error {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a change between the two is not missed.
            changed.as_mut().enable();
            {
                let g = self.lock();
                if let Some(e) = &g.failed {
                    return e.clone();
                }
                if g.epoch != key.epoch {
                    return Error::RankConnectionLost {
                        tag: key.tag,
                        reason: "the group's membership changed".into(),
                    };
                }
            }
            changed.await;
        }
    }

    /// A ring connection from `from` was closed because a frame on it failed its
    /// authentication: frames after it are lost. Every op running here that still takes
    /// frames from `from` fails as on a lost link at once. Ops not started here whose
    /// frames were lost are failed by their sender, which sees its connection close before
    /// the verdict (docs/ARCHITECTURE.md §5, "Lost frames").
    pub(crate) fn link_failed(&self, from: PeerId) {
        let g = self.lock();
        for slot in g.slots.values() {
            if slot.prev == from && slot.frames_open {
                let _ = slot.tx.send(OpEvent::LinkLost);
            }
        }
    }

    /// The keys of every op running here (a peer's claim when it re-registers).
    pub(crate) fn in_flight(&self) -> Vec<OpKey> {
        self.lock().slots.values().map(|s| s.key).collect()
    }

    pub(crate) fn failure(&self) -> Option<Error> {
        self.lock().failed.clone()
    }

    /// Starts op `tag`: returns its key, the topology it runs on and its event stream,
    /// already holding any frames that arrived early.
    pub(crate) fn start(
        &self,
        tag: u64,
        prev: impl FnOnce(&Topology) -> Option<PeerId>,
    ) -> Result<(OpKey, Arc<Topology>, mpsc::UnboundedReceiver<OpEvent>), Error> {
        let mut g = self.lock();
        if let Some(e) = &g.failed {
            return Err(e.clone());
        }
        if g.slots.contains_key(&tag) {
            return Err(Error::InvalidUsage(format!(
                "tag {tag} is already in flight"
            )));
        }
        if let Some((failed, f)) = g.failed_early.remove(&tag) {
            // The others' call of this op already failed: so does ours, and the retry
            // takes the next seq, as theirs does (or a later one, when verdicts of their
            // retries came before this call).
            if failed.epoch == g.epoch {
                g.seq_past(tag, failed.seq);
            }
            return Err(verdict_error(tag, f));
        }
        let key = OpKey {
            tag,
            epoch: g.epoch,
            seq: g.seq.get(&tag).copied().unwrap_or(0),
        };
        let topology = g.topology.clone();
        let prev = prev(&topology).unwrap_or_default();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut kept = Vec::with_capacity(g.buffered.len());
        let mut freed = 0;
        for b in std::mem::take(&mut g.buffered) {
            if key_of(&b.header) == key && b.from == prev {
                freed += b.payload.capacity();
                let _ = tx.send(OpEvent::Frame {
                    header: b.header,
                    payload: b.payload,
                    crc_ok: b.crc_ok,
                    credit: None,
                });
            } else {
                kept.push(b);
            }
        }
        g.buffered = kept;
        g.buffered_bytes -= freed;
        g.slots.insert(
            tag,
            Slot {
                key,
                prev,
                frames_open: true,
                tx,
                credits: Arc::new(Semaphore::new(INBOX_FRAMES)),
            },
        );
        drop(g);
        if freed > 0 {
            self.space.notify_waiters();
        }
        Ok((key, topology, rx))
    }

    /// The op has every frame it expects: later frames with its key belong to the next
    /// op of the tag and are buffered for it.
    pub(crate) fn close_frames(&self, key: OpKey) {
        if let Some(s) = self.lock().slots.get_mut(&key.tag)
            && s.key == key
        {
            s.frames_open = false;
        }
    }

    /// Removes the op's slot (it finished or gave up).
    pub(crate) fn finish(&self, key: OpKey) {
        let mut g = self.lock();
        if g.slots.get(&key.tag).is_some_and(|s| s.key == key) {
            g.slots.remove(&key.tag);
        }
    }

    /// The master decided op (tag, epoch, seq). The next op of the tag uses seq + 1.
    pub(crate) fn verdict(&self, key: OpKey, failure: Option<FailReason>) {
        let mut g = self.lock();
        if key.epoch != g.epoch {
            return;
        }
        let current = g.seq.get(&key.tag).copied().unwrap_or(0);
        let running = g.slots.get(&key.tag).is_some_and(|s| s.key == key);
        match failure {
            // The op this peer calls next failed before it called it: remember, and let
            // that call fail (the seq moves on then).
            Some(f) if !running && key.seq == current => {
                g.failed_early.insert(key.tag, (key, f));
            }
            _ => {
                g.seq_past(key.tag, key.seq);
            }
        }
        let next = current.max(key.seq + 1);
        if let Some(s) = g.slots.get(&key.tag)
            && s.key == key
        {
            let _ = s.tx.send(OpEvent::Verdict(failure));
        }
        let (tag, epoch) = (key.tag, key.epoch);
        g.purge(|h| !(h.tag == tag && h.epoch == epoch && h.seq < next));
        drop(g);
        self.space.notify_waiters();
    }

    /// Early frames held now: (frames, bytes).
    pub(crate) fn buffered(&self) -> (usize, usize) {
        let g = self.lock();
        (g.buffered.len(), g.buffered_bytes)
    }

    /// The connection `conn` closed: its frames for ops not started here are dropped.
    pub(crate) fn drop_conn(&self, conn: ConnId) {
        let mut g = self.lock();
        let before = g.buffered.len();
        g.buffered.retain(|b| b.conn != conn);
        if g.buffered.len() == before {
            return;
        }
        tracing::debug!(
            dropped = before - g.buffered.len(),
            "early frames of a closed connection dropped"
        );
        g.buffered_bytes = g.buffered.iter().map(|b| b.payload.capacity()).sum();
        drop(g);
        self.space.notify_waiters();
    }

    /// Routes one frame from `from`, waiting while the early-frame buffer is full.
    #[cfg(test)]
    pub(crate) async fn deliver(
        &self,
        header: DataHeader,
        payload: BytesMut,
        from: PeerId,
        crc_ok: bool,
    ) {
        self.deliver_on(ConnId::default(), header, payload, from, crc_ok)
            .await
    }

    /// [`deliver`](Self::deliver) for a frame read from connection `conn`.
    pub(crate) async fn deliver_on(
        &self,
        conn: ConnId,
        header: DataHeader,
        payload: BytesMut,
        from: PeerId,
        crc_ok: bool,
    ) {
        let mut frame = Some(payload);
        let mut waited: Option<OwnedSemaphorePermit> = None;
        loop {
            let notified = self.space.notified();
            match self.route(conn, header, &mut frame, from, crc_ok, &mut waited) {
                Route::Done => return,
                // The op has `INBOX_FRAMES` frames to work through: wait for it to finish
                // one, and keep that credit for this frame. (Dropping it and trying again
                // livelocks: the semaphore hands a freed credit straight to the next
                // waiting reader, so with two or more readers waiting none ever finds one
                // free.) Closed, the op is gone and the frame is routed afresh (early,
                // stale or the next op's).
                Route::NoCredit(credits) => waited = credits.acquire_owned().await.ok(),
                // Backpressure: stop reading this connection until an op drains the buffer.
                Route::Full => {
                    let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
                }
            }
        }
    }

    /// One attempt to route a frame: hands it to its op or holds it early (taking it out
    /// of `frame`), drops it, or says what to wait for.
    fn route(
        &self,
        conn: ConnId,
        header: DataHeader,
        frame: &mut Option<BytesMut>,
        from: PeerId,
        crc_ok: bool,
        waited: &mut Option<OwnedSemaphorePermit>,
    ) -> Route {
        let mut g = self.lock();
        let key = key_of(&header);
        let stale = key.epoch < g.epoch
            || (key.epoch == g.epoch && key.seq < g.seq.get(&key.tag).copied().unwrap_or(0))
            || g.failed.is_some();
        if stale {
            return Route::Done;
        }
        if let Some(s) = g.slots.get(&key.tag)
            && s.key == key
            && s.frames_open
        {
            if s.prev != from {
                tracing::warn!(%from, expected = %s.prev, "frame from a peer that is not our ring predecessor");
                return Route::Done;
            }
            // The credit this reader waited for, if it is this op's; else a free one.
            let credit = match waited.take() {
                Some(c) if Arc::ptr_eq(c.semaphore(), &s.credits) => c,
                _ => match s.credits.clone().try_acquire_owned() {
                    Ok(c) => c,
                    Err(_) => return Route::NoCredit(s.credits.clone()),
                },
            };
            let _ = s.tx.send(OpEvent::Frame {
                header,
                payload: frame.take().expect("routed once"),
                crc_ok,
                credit: Some(credit),
            });
            return Route::Done;
        }
        // Counted as `start` and `purge` count it: by the memory actually held, a pooled
        // buffer's whole capacity (a header's `len` need not match its payload unless a
        // socket read it).
        let held = frame.as_ref().map_or(0, |p| p.capacity());
        let fits =
            g.buffered.len() < self.max_frames && g.buffered_bytes + held <= self.max_buffered;
        if !(g.buffered.is_empty() || fits) {
            return Route::Full;
        }
        g.buffered_bytes += held;
        g.buffered.push(Buffered {
            header,
            payload: frame.take().expect("routed once"),
            from,
            conn,
            crc_ok,
        });
        Route::Done
    }
}

/// What became of one attempt to route a frame.
enum Route {
    /// Delivered, held early, or dropped.
    Done,
    /// Its op has no inbox credit left: wait on these.
    NoCredit(Arc<Semaphore>),
    /// The early-frame buffer is full.
    Full,
}

impl Inner {
    /// Op (`tag`, `seq`) is decided: the tag's next op takes a later seq. Never back: a
    /// tag's verdicts may come in any order relative to this peer's calls.
    fn seq_past(&mut self, tag: u64, seq: u32) {
        let next = self.seq.entry(tag).or_insert(0);
        *next = (*next).max(seq + 1);
    }

    /// Keeps buffered frames for which `keep` holds.
    fn purge(&mut self, keep: impl Fn(&DataHeader) -> bool) {
        let before = self.buffered_bytes;
        self.buffered.retain(|b| keep(&b.header));
        self.buffered_bytes = self.buffered.iter().map(|b| b.payload.capacity()).sum();
        debug_assert!(self.buffered_bytes <= before);
    }
}

/// The error every member's call of an op gets for the master's failure verdict.
pub(crate) fn verdict_error(tag: u64, f: FailReason) -> Error {
    match f {
        FailReason::PeerLost => Error::RankConnectionLost {
            tag,
            reason: "a peer taking part was lost".into(),
        },
        FailReason::Corrupt => Error::RankConnectionLost {
            tag,
            reason: "a peer received a corrupted frame".into(),
        },
        FailReason::Mismatch => Error::ArgumentMismatch(format!(
            "peers called op {tag} with different counts, types, ops or quantization, \
             different collectives or broadcast roots, or buffers that do not fit the ring"
        )),
    }
}

fn key_of(h: &DataHeader) -> OpKey {
    OpKey {
        tag: h.tag,
        epoch: h.epoch,
        seq: h.seq,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::PeerEntry;

    fn peer(i: u8) -> PeerId {
        PeerId([i; 16])
    }

    fn header(epoch: u64, seq: u32) -> DataHeader {
        DataHeader {
            tag: 7,
            epoch,
            seq,
            count: 4,
            ..DataHeader::sample(4)
        }
    }

    fn frame_key(ev: OpEvent) -> (u64, u32) {
        match ev {
            OpEvent::Frame { header, .. } => (header.epoch, header.seq),
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Frames reach an op only with its exact (tag, epoch, seq) and from its predecessor;
    /// a later seq's frames wait for that op; older ones are never taken.
    #[test]
    fn frames_are_routed_by_the_op_identity_rule() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let reg = Registry::new(0, 1 << 20);
            let entry = |i| PeerEntry {
                id: peer(i),
                group: 0,
                p2p_addr: "127.0.0.1:9".parse().expect("address"),
                static_key: [0; 32],
            };
            reg.set_topology(Topology {
                ring: vec![entry(1), entry(2), entry(3)],
                group_epochs: vec![(0, 5)],
            });
            let prev = peer(3);
            let (key, _, mut rx) = reg.start(7, |_| Some(prev)).expect("started");
            assert_eq!((key.epoch, key.seq), (5, 0));
            reg.deliver(header(5, 1), payload(), prev, true).await; // next op's
            reg.deliver(header(4, 0), payload(), prev, true).await; // an old epoch's
            reg.deliver(header(5, 0), payload(), peer(2), true).await; // not our predecessor
            assert!(rx.try_recv().is_err(), "only this op's frames reach it");
            reg.deliver(header(5, 0), payload(), prev, true).await;
            assert_eq!(frame_key(rx.try_recv().expect("delivered")), (5, 0));

            reg.verdict(key, None);
            assert!(matches!(rx.try_recv(), Ok(OpEvent::Verdict(None))));
            reg.finish(key);
            reg.deliver(header(5, 0), payload(), prev, true).await; // now stale
            let (key, _, mut rx) = reg.start(7, |_| Some(prev)).expect("started");
            assert_eq!((key.epoch, key.seq), (5, 1));
            assert_eq!(frame_key(rx.try_recv().expect("buffered early")), (5, 1));
            assert!(
                rx.try_recv().is_err(),
                "stale and foreign frames were dropped"
            );
        });
    }

    fn payload() -> BytesMut {
        BytesMut::from(&[0u8; 4][..])
    }

    /// A registry with op 7 running, its predecessor `peer(3)`, and its inbox full.
    async fn full_inbox() -> (Arc<Registry>, OpKey, mpsc::UnboundedReceiver<OpEvent>) {
        let reg = Arc::new(Registry::new(0, 1 << 20));
        let (key, _, rx) = reg.start(7, |_| Some(peer(3))).expect("started");
        for _ in 0..INBOX_FRAMES {
            reg.deliver(header(0, 0), payload(), peer(3), true).await;
        }
        (reg, key, rx)
    }

    /// A running op holds at most `INBOX_FRAMES` frames: the reader with one more waits
    /// until the op has used one, and a reader still waiting when the op ends routes its
    /// frame afresh (here: stale, dropped) instead of waiting for ever.
    #[test]
    fn a_running_op_holds_a_bounded_number_of_frames() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (reg, key, mut rx) = full_inbox().await;
            let prev = peer(3);
            let deliver = |reg: &Arc<Registry>, seq: u32| {
                let reg = reg.clone();
                tokio::spawn(
                    async move { reg.deliver(header(0, seq), payload(), prev, true).await },
                )
            };
            let waiting = deliver(&reg, 0);
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(!waiting.is_finished(), "the reader waits for a credit");

            drop(rx.recv().await.expect("a frame")); // the op used one frame
            tokio::time::timeout(Duration::from_secs(5), waiting)
                .await
                .expect("the credit came back")
                .expect("no panic");

            let waiting = deliver(&reg, 0);
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(!waiting.is_finished(), "the inbox is full again");
            reg.verdict(key, None);
            reg.finish(key);
            drop(rx);
            tokio::time::timeout(Duration::from_secs(5), waiting)
                .await
                .expect("the end of the op releases the reader")
                .expect("no panic");
            assert_eq!(
                reg.buffered().0,
                0,
                "the frame of a finished op is not held"
            );
        });
    }

    /// Several readers (one per connection of a pool) wait for credits of one op: every
    /// credit the op gives back lets one of them deliver. (Readers that dropped the
    /// credit they waited for and tried again passed it round among themselves for ever:
    /// a long-fat-pipe run over 16 connections hung so.)
    #[test]
    fn readers_waiting_for_credits_all_deliver_as_the_op_works() {
        const READERS: u32 = 2 * INBOX_FRAMES as u32;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (reg, _key, mut rx) = full_inbox().await;
            let prev = peer(3);
            let readers: Vec<_> = (0..READERS)
                .map(|_| {
                    let reg = reg.clone();
                    tokio::spawn(async move {
                        reg.deliver(header(0, 0), payload(), prev, true).await;
                    })
                })
                .collect();
            tokio::time::sleep(Duration::from_millis(50)).await;
            let used = tokio::time::timeout(Duration::from_secs(5), async {
                for _ in 0..INBOX_FRAMES + READERS as usize {
                    drop(rx.recv().await.expect("a frame")); // the op used one
                }
            })
            .await;
            assert!(used.is_ok(), "every waiting reader delivered its frame");
            for r in readers {
                r.await.expect("no panic");
            }
        });
    }

    /// A ring link that failed authentication fails the ops running from that
    /// predecessor, and nothing else: not another predecessor's op, not an op that
    /// already has every frame, not the next op (its sender fails it if its frames were
    /// lost).
    #[test]
    fn a_failed_link_fails_the_running_ops_from_its_peer() {
        let reg = Registry::new(0, 1 << 20);
        let (_, _, mut a) = reg.start(1, |_| Some(peer(3))).expect("started");
        let (_, _, mut b) = reg.start(2, |_| Some(peer(4))).expect("started");
        let (full, _, mut e) = reg.start(5, |_| Some(peer(3))).expect("started");
        reg.close_frames(full);
        reg.link_failed(peer(3));
        assert!(matches!(a.try_recv(), Ok(OpEvent::LinkLost)));
        assert!(
            b.try_recv().is_err(),
            "another predecessor's op is untouched"
        );
        assert!(e.try_recv().is_err(), "an op with every frame is untouched");
        let (_, _, mut c) = reg.start(3, |_| Some(peer(3))).expect("started");
        assert!(c.try_recv().is_err(), "the next op starts clean");
    }

    /// A failure verdict for the op this peer calls next, arriving before the call, fails
    /// that call with the same error the others got; the retry then takes the next seq,
    /// as theirs does. Verdicts of running or older ops leave no such mark.
    #[test]
    fn a_failure_verdict_before_the_call_fails_that_call() {
        let reg = Registry::new(0, 1 << 20);
        let key = |tag, seq| OpKey { tag, epoch: 0, seq };
        reg.verdict(key(7, 0), Some(FailReason::Corrupt));
        let err = reg.start(7, |_| Some(peer(3))).expect_err("the call fails");
        assert_eq!(err, verdict_error(7, FailReason::Corrupt));
        let (retry, _, _) = reg.start(7, |_| Some(peer(3))).expect("the retry starts");
        assert_eq!(retry, key(7, 1));
        reg.verdict(retry, None);
        reg.finish(retry);

        // A verdict for a running op goes to it; a stale one (older seq) is ignored.
        let (running, _, mut ev) = reg.start(8, |_| Some(peer(3))).expect("started");
        reg.verdict(running, Some(FailReason::PeerLost));
        assert!(matches!(
            ev.try_recv(),
            Ok(OpEvent::Verdict(Some(FailReason::PeerLost)))
        ));
        reg.finish(running);
        reg.verdict(running, Some(FailReason::PeerLost));
        let (next, _, _) = reg.start(8, |_| Some(peer(3))).expect("starts clean");
        assert_eq!(next, key(8, 1));
    }

    /// Two failure verdicts of one tag before this peer calls it (the others' call and
    /// their retry both failed): this peer's call fails, and its retry joins the others'
    /// next one instead of running the seq they already settled.
    #[test]
    fn failure_verdicts_of_the_others_retries_before_the_call_move_the_seq_on() {
        let reg = Registry::new(0, 1 << 20);
        let key = |tag, seq| OpKey { tag, epoch: 0, seq };
        reg.verdict(key(7, 0), Some(FailReason::Corrupt));
        reg.verdict(key(7, 1), Some(FailReason::PeerLost));
        let err = reg.start(7, |_| Some(peer(3))).expect_err("the call fails");
        assert_eq!(err, verdict_error(7, FailReason::Corrupt));
        let (retry, _, _) = reg.start(7, |_| Some(peer(3))).expect("the retry starts");
        assert_eq!(
            retry,
            key(7, 2),
            "seq 1 was settled before this peer called"
        );
    }

    /// Early frames are bounded in count and bytes (the reader waits), and frames for an
    /// epoch that never comes leave with the connection that brought them.
    #[test]
    fn early_frames_are_bounded_and_leave_with_their_connection() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let reg = Registry::with_frame_bound(0, 1 << 20, 3);
            let (a, b) = (ConnId(1), ConnId(2));
            for seq in 0..3 {
                reg.deliver_on(a, header(99, seq), payload(), peer(1), true)
                    .await;
            }
            assert_eq!(reg.buffered().0, 3);
            let full = reg.deliver_on(b, header(99, 3), payload(), peer(1), true);
            let waited = tokio::time::timeout(Duration::from_millis(300), full).await;
            assert!(waited.is_err(), "a fourth frame waits for room");
            assert_eq!(reg.buffered(), (3, 12), "bytes count what is held");
            reg.drop_conn(b);
            assert_eq!(reg.buffered().0, 3, "another connection's frames stay");
            reg.drop_conn(a);
            assert_eq!(
                reg.buffered(),
                (0, 0),
                "a closed connection's frames are gone"
            );

            let big = Registry::with_frame_bound(0, 16, 100);
            big.deliver_on(a, header(99, 0), BytesMut::with_capacity(12), peer(1), true)
                .await;
            let over = big.deliver_on(a, header(99, 1), BytesMut::with_capacity(8), peer(1), true);
            let waited = tokio::time::timeout(Duration::from_millis(300), over).await;
            assert!(
                waited.is_err(),
                "capacity, not length, counts against the bytes bound"
            );
            assert_eq!(big.buffered(), (1, 12));
        });
    }
}
