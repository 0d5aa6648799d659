//! The communicator: a peer's handle on the run (docs/ARCHITECTURE.md §3, §9).
//!
//! The top layer: it owns the sockets and the runtime, and implements the seams of the
//! layers below with them: `collectives::ring::RingHost` (p2p pools out, the registry fed
//! by the p2p readers in, outcomes to the master) and `shared_state::SyncHost`. Files:
//! `control.rs` is the task that talks to the master, `p2p.rs` the data connections,
//! `gate.rs` who may use which link on our p2p listener, `multiple.rs` the batched
//! all-reduce with retries.

pub(crate) mod control;
pub(crate) mod gate;
mod multiple;
pub(crate) mod p2p;
pub(crate) mod reconnect;
pub(crate) mod stats;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot, watch};

use crate::collectives::bufpool::BufPool;
use crate::collectives::link::Pool;
use crate::collectives::registry::{OpKey, Registry};
use crate::collectives::ring::{self, RingHost};
use crate::collectives::{Element, InPlaceBuffer, ReduceBuffers, SliceBuffers};
use crate::config::CommunicatorConfig;
use crate::error::{Error, Result};
use crate::net;
use crate::net::sealed::{self, Secure};
use crate::shared_state::{StateDoor, SyncHost};
use crate::types::{
    Attribute, Collective, PeerEntry, PeerId, ReduceDescriptor, ReduceInfo, ReduceOp, Topology,
};
use crate::wire::{ConnectionKind, FailReason, Hello, ToMaster, VoteKind};
use control::{Cmd, VoteAnswer};
use gate::Gate;
use p2p::P2p;

/// What the tasks of a connected communicator share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) me: PeerId,
    pub(crate) config: CommunicatorConfig,
    pub(crate) registry: Arc<Registry>,
    pub(crate) p2p: P2p,
    pub(crate) bufs: Arc<BufPool>,
    pub(crate) door: Arc<StateDoor>,
    /// The topologies inbound connections are admitted against.
    pub(crate) gate: Arc<Gate>,
    /// Inbound ring connections closed for silence so far.
    idle_closed: Arc<AtomicU64>,
    /// The run secret and our static key pair, in an authenticated run (SECURITY.md §6).
    pub(crate) secure: Option<Secure>,
    /// What this communicator counts about its work (`stats.rs`).
    pub(crate) stats: Arc<stats::Stats>,
    cmds: mpsc::UnboundedSender<Cmd>,
}

impl Shared {
    /// Runs a started collective to its verdict and records it in the stats.
    pub(crate) async fn run_reduce<B: ReduceBuffers>(
        &self,
        started: ring::Started<Self>,
        bufs: &mut B,
        desc: ReduceDescriptor,
        kind: Collective,
    ) -> Result<ReduceInfo> {
        let t0 = std::time::Instant::now();
        let r = ring::run(started, bufs, desc, kind).await;
        let topology = self.registry.topology();
        let group = self.config.peer_group;
        self.stats
            .record_reduce((&desc, kind), t0.elapsed(), &r, &topology, self.me, group);
        r
    }
}

/// Shared-state syncs: requests from other peers arrive through the p2p listener's door,
/// the master hears of our part through the control task.
impl SyncHost for Shared {
    fn me(&self) -> PeerId {
        self.me
    }

    fn door(&self) -> &StateDoor {
        &self.door
    }

    fn topology(&self) -> Arc<Topology> {
        self.registry.topology()
    }

    fn stall(&self) -> Duration {
        self.config.master_timeout
    }

    fn sync_done(&self, ok: bool) {
        let _ = self.cmds.send(Cmd::SyncDone(ok));
    }

    fn secure(&self) -> Option<&Secure> {
        self.secure.as_ref()
    }
}

/// The ring runs over sockets: frames come from the p2p readers through the registry,
/// go out through the p2p pools, and outcomes go to the master through the control task.
impl RingHost for Shared {
    fn me(&self) -> PeerId {
        self.me
    }

    fn group(&self) -> u32 {
        self.config.peer_group
    }

    fn slice_bytes(&self) -> usize {
        self.config.slice_bytes
    }

    fn registry(&self) -> &Registry {
        &self.registry
    }

    fn bufs(&self) -> &BufPool {
        &self.bufs
    }

    fn checksums(&self) -> bool {
        self.secure.is_none()
    }

    async fn pool(&self, next: &PeerEntry) -> Result<Arc<Pool>> {
        self.p2p.pool(next).await
    }

    fn report(&self, key: OpKey, failure: Option<FailReason>) {
        let _ = self.cmds.send(Cmd::OpDone(key, failure));
    }
}

#[derive(Debug)]
struct Connected {
    /// Shared with async handles, so a handle that outlives the communicator still works.
    rt: Arc<Runtime>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

/// A peer's handle on a run. `Send + Sync`: calls may come from several threads, but joint
/// calls (`update_topology`, `are_peers_pending`) are made one at a time per communicator.
///
/// Blocking calls must not be made from inside an async runtime.
#[derive(Debug)]
pub struct Communicator {
    config: CommunicatorConfig,
    me: PeerId,
    connected: OnceLock<Connected>,
    connecting: Mutex<bool>,
    async_in_flight: Arc<AtomicUsize>,
    stats: Arc<stats::Stats>,
}

impl Communicator {
    /// A communicator with these settings; no I/O happens until [`connect`](Self::connect).
    pub fn new(config: CommunicatorConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            me: PeerId::random(),
            connected: OnceLock::new(),
            connecting: Mutex::new(false),
            async_in_flight: Arc::new(AtomicUsize::new(0)),
            stats: Arc::default(),
        })
    }

    /// This peer's identity.
    pub fn id(&self) -> PeerId {
        self.me
    }

    /// Connects to the master and returns once this peer is accepted into the run (the
    /// accepted peers admit it at their next `update_topology`).
    pub fn connect(&self) -> Result<()> {
        no_runtime_here()?;
        let mut connecting = self.connecting.lock().unwrap_or_else(|e| e.into_inner());
        if *connecting || self.connected.get().is_some() {
            return Err(Error::InvalidUsage("connect was already called".into()));
        }
        *connecting = true;
        drop(connecting);
        let result = self.connect_inner();
        if result.is_err() {
            *self.connecting.lock().unwrap_or_else(|e| e.into_inner()) = false;
        }
        result
    }

    fn connect_inner(&self) -> Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.config.worker_threads)
            .thread_name("pccl-comm")
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the runtime: {e}")))?;
        let config = self.config.clone();
        let me = self.me;
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let bufs = Arc::new(BufPool::new(config.slice_bytes));
        let secure = match &config.secret {
            Some(s) => Some(
                Secure::peer(s.clone(), config.encrypt)
                    .map_err(|e| Error::Internal(format!("cannot make a static key: {e}")))?,
            ),
            None => None,
        };
        let shared = Arc::new(Shared {
            secure: secure.clone(),
            me,
            registry: Arc::new(Registry::with_frame_bound(
                config.peer_group,
                config.max_buffered_bytes,
                config.max_buffered_frames,
            )),
            p2p: P2p::new(me, config.pool_size, secure.clone()),
            bufs,
            door: Arc::default(),
            gate: Arc::new(Gate::new(me, config.peer_group)),
            idle_closed: Arc::default(),
            stats: self.stats.clone(),
            config: config.clone(),
            cmds: cmd_tx,
        });
        let (stop, stop_rx) = watch::channel(false);
        let accepted = rt.block_on(async {
            let scan = if config.p2p_port == 0 { 0 } else { 1000 };
            let listener = p2p::bind(config.bind_ip, config.p2p_port, scan)?;
            let port = listener
                .local_addr()
                .map_err(|e| Error::Internal(e.to_string()))?
                .port();
            if let Ok(a) = listener.local_addr() {
                sealed::warn_if_exposed("peer's p2p listener", a, secure.is_some());
            }
            let inbound = p2p::Inbound {
                secure: secure.clone(),
                me,
                gate: shared.gate.clone(),
                registry: shared.registry.clone(),
                bufs: shared.bufs.clone(),
                door: shared.door.clone(),
                handshake_timeout: config.handshake_timeout,
                max_payload: config.slice_bytes + crate::quant::META_LEN,
                pending: net::slots::SharedSlots::new(config.max_pending_connections),
                idle_timeout: config.p2p_idle_timeout,
                idle_closed: shared.idle_closed.clone(),
            };
            tokio::spawn(p2p::accept_loop(
                listener,
                Arc::new(inbound),
                stop_rx.clone(),
            ));
            let (mut stream, mut keys) = dial_master(&config, me, secure.as_ref()).await?;
            let register = ToMaster::Register {
                group: config.peer_group,
                p2p_port: port,
                advertise_ip: config.advertise_ip,
            };
            net::write_control(&mut stream, keys.as_mut().map(|k| &mut k.send), |b| {
                register.encode(b)
            })
            .await
            .map_err(|e| Error::MasterConnectionFailed(e.to_string()))?;
            let (acc_tx, acc_rx) = oneshot::channel();
            let memory = reconnect::Memory::new(config.peer_group, port, config.advertise_ip);
            tokio::spawn(control::run(
                stream,
                keys,
                shared.clone(),
                cmd_rx,
                Some(acc_tx),
                stop_rx,
                memory,
            ));
            tracing::info!(peer = %me, port, "registered with the master, waiting to be accepted");
            acc_rx
                .await
                .unwrap_or_else(|_| Err(Error::Internal("control task ended".into())))
        });
        if let Err(e) = accepted {
            let _ = stop.send(true);
            rt.shutdown_timeout(Duration::from_secs(1));
            return Err(e);
        }
        tracing::info!(peer = %me, "accepted into the run");
        let _ = self.connected.set(Connected {
            rt: Arc::new(rt),
            shared,
            stop,
        });
        Ok(())
    }

    /// Leaves the run: the master drops this peer, in-flight ops fail, and every later
    /// call returns `InvalidUsage`. Dropping the communicator does the same.
    pub fn close(&self) {
        if let Some(c) = self.connected.get() {
            c.shared
                .registry
                .fail_all(Error::InvalidUsage("the communicator is closed".into()));
            let _ = c.stop.send(true);
        }
    }

    fn connected(&self) -> Result<&Connected> {
        let c = self
            .connected
            .get()
            .ok_or_else(|| Error::InvalidUsage("the communicator is not connected".into()))?;
        if let Some(e) = c.shared.registry.failure() {
            return Err(e);
        }
        Ok(c)
    }

    /// Frames and bytes held for ops that have not started here yet (for tests of the
    /// early-frame bounds; not a stable API).
    #[doc(hidden)]
    pub fn early_frames(&self) -> (usize, usize) {
        self.connected
            .get()
            .map_or((0, 0), |c| c.shared.registry.buffered())
    }

    /// How many inbound ring connections were closed because nothing arrived on them for
    /// `p2p_idle_timeout` (for tests of that bound; not a stable API).
    #[doc(hidden)]
    pub fn idle_ring_connections_closed(&self) -> u64 {
        self.connected
            .get()
            .map_or(0, |c| c.shared.idle_closed.load(Ordering::Relaxed))
    }

    /// The topology this peer currently runs on.
    pub fn topology(&self) -> Result<Arc<Topology>> {
        Ok(self.connected()?.shared.registry.topology())
    }

    /// Reads a world-size attribute.
    pub fn attribute(&self, attr: Attribute) -> Result<usize> {
        Ok(self.topology()?.attribute(attr, self.config.peer_group))
    }

    /// This peer's rank: its position in its group's ring of the current topology, the
    /// rank every collective uses (0..`PeerGroupWorldSize`). It changes only when the
    /// topology does (a peer joins, leaves or dies, or `optimize_topology` re-orders the
    /// ring); read it again after a failed op before the retry.
    pub fn rank(&self) -> Result<usize> {
        self.topology()?
            .rank(self.me, self.config.peer_group)
            .ok_or_else(|| Error::InvalidUsage("this peer is not in the current ring".into()))
    }

    /// Joint call: whether peers wait to be accepted. Every accepted peer must call it; all
    /// get the same answer. May run while async ops are in flight.
    pub fn are_peers_pending(&self) -> Result<bool> {
        match self.vote(VoteKind::ArePeersPending)? {
            VoteAnswer::PeersPending(p) => Ok(p),
            VoteAnswer::TopologyUpdated => Err(Error::Internal("mismatched vote answer".into())),
        }
    }

    /// Joint call: admits every waiting peer. Every accepted peer must call it.
    /// `UpdateTopologyFailed` is retryable.
    pub fn update_topology(&self) -> Result<()> {
        if self.async_in_flight.load(Ordering::SeqCst) > 0 {
            return Err(Error::PendingAsyncOps);
        }
        match self.vote(VoteKind::UpdateTopology)? {
            VoteAnswer::TopologyUpdated => Ok(()),
            VoteAnswer::PeersPending(_) => Err(Error::Internal("mismatched vote answer".into())),
        }
    }

    /// Joint call: tests the links between peers that have not been measured yet and
    /// re-orders the ring for the best bottleneck bandwidth (docs/ARCHITECTURE.md §7). Every accepted peer
    /// must call it. On `TopologyOptimizationFailed` the old ring stays in use.
    pub fn optimize_topology(&self) -> Result<()> {
        if self.async_in_flight.load(Ordering::SeqCst) > 0 {
            return Err(Error::PendingAsyncOps);
        }
        match self.vote(VoteKind::OptimizeTopology) {
            Ok(VoteAnswer::TopologyUpdated) => Ok(()),
            Ok(VoteAnswer::PeersPending(_)) => {
                Err(Error::Internal("mismatched vote answer".into()))
            }
            Err(Error::UpdateTopologyFailed(why)) => Err(Error::TopologyOptimizationFailed(why)),
            Err(e) => Err(e),
        }
    }

    fn vote(&self, kind: VoteKind) -> Result<VoteAnswer> {
        no_runtime_here()?;
        let c = self.connected()?;
        let (tx, rx) = oneshot::channel();
        c.shared
            .cmds
            .send(Cmd::Vote(kind, tx))
            .map_err(|_| Error::MasterConnectionFailed("control task ended".into()))?;
        c.rt.block_on(rx)
            .unwrap_or_else(|_| Err(Error::MasterConnectionFailed("control task ended".into())))
    }

    /// Blocking all-reduce of `send` into `recv` (distinct slices of equal length).
    pub fn all_reduce<T: Element>(
        &self,
        send: &[T],
        recv: &mut [T],
        op: ReduceOp,
        tag: u64,
    ) -> Result<ReduceInfo> {
        let desc = ReduceDescriptor::new(send.len(), T::DTYPE, op).with_tag(tag);
        let bufs = SliceBuffers::new(bytemuck::cast_slice(send), bytemuck::cast_slice_mut(recv))
            .ok_or(Error::InvalidArgument(
                "send and receive buffers differ in length",
            ))?;
        self.all_reduce_with(bufs, desc)
    }

    /// Blocking all-reduce of `buf` in place. On failure `buf` is left untouched.
    pub fn all_reduce_in_place<T: Element>(
        &self,
        buf: &mut [T],
        op: ReduceOp,
        tag: u64,
    ) -> Result<ReduceInfo> {
        let desc = ReduceDescriptor::new(buf.len(), T::DTYPE, op).with_tag(tag);
        self.all_reduce_with(InPlaceBuffer::new(bytemuck::cast_slice_mut(buf)), desc)
    }

    /// Blocking all-reduce over any buffers.
    pub fn all_reduce_with<B: ReduceBuffers>(
        &self,
        bufs: B,
        desc: ReduceDescriptor,
    ) -> Result<ReduceInfo> {
        self.collective_with(bufs, desc, Collective::AllReduce)
    }

    /// Starts an all-reduce and returns at once; the handle's `wait` gives the buffers back.
    pub fn all_reduce_async<B: ReduceBuffers + 'static>(
        &self,
        bufs: B,
        desc: ReduceDescriptor,
    ) -> Result<AsyncReduce<B>> {
        self.collective_async(bufs, desc, Collective::AllReduce)
    }

    /// Blocking reduce-scatter (docs/ARCHITECTURE.md §5.1): `send` holds `world × n`
    /// elements, `recv` `n`; rank `r` receives chunk `r` (elements `r·n .. (r+1)·n`)
    /// reduced over every rank with `op` (`Avg` divides once, by the world size). Every
    /// rank gets the bits an all-reduce of the same inputs leaves in that chunk. A `send`
    /// whose length is not a multiple of the world size is split as an all-reduce splits
    /// it: the first `len % world` chunks are one element larger.
    pub fn reduce_scatter<T: Element>(
        &self,
        send: &[T],
        recv: &mut [T],
        op: ReduceOp,
        tag: u64,
    ) -> Result<ReduceInfo> {
        let desc = ReduceDescriptor::new(send.len(), T::DTYPE, op).with_tag(tag);
        let bufs = SliceBuffers::sized(bytemuck::cast_slice(send), bytemuck::cast_slice_mut(recv));
        self.collective_with(bufs, desc, Collective::ReduceScatter)
    }

    /// Blocking all-gather: `send` holds `n` elements, `recv` `world × n`; block `r` of
    /// `recv` is rank `r`'s `send`, the same bits on every rank.
    pub fn all_gather<T: Element>(
        &self,
        send: &[T],
        recv: &mut [T],
        tag: u64,
    ) -> Result<ReduceInfo> {
        let desc = ReduceDescriptor::new(recv.len(), T::DTYPE, ReduceOp::Sum).with_tag(tag);
        let bufs = SliceBuffers::sized(bytemuck::cast_slice(send), bytemuck::cast_slice_mut(recv));
        self.collective_with(bufs, desc, Collective::AllGather)
    }

    /// Blocking broadcast: rank `root`'s `buf` is copied into every rank's `buf`, bit for
    /// bit. On failure `buf` is left untouched.
    pub fn broadcast<T: Element>(
        &self,
        buf: &mut [T],
        root: usize,
        tag: u64,
    ) -> Result<ReduceInfo> {
        let root = u32::try_from(root)
            .map_err(|_| Error::InvalidArgument("broadcast root is out of range"))?;
        let desc = ReduceDescriptor::new(buf.len(), T::DTYPE, ReduceOp::Sum).with_tag(tag);
        let bufs = InPlaceBuffer::new(bytemuck::cast_slice_mut(buf));
        self.collective_with(bufs, desc, Collective::Broadcast { root })
    }

    /// Blocking collective of kind `kind` over any buffers. `desc.count` is the element
    /// count of the op's whole buffer: `send` of an all-reduce, reduce-scatter or
    /// broadcast, `recv` of an all-gather. `desc.op` and `desc.quantization` apply to the
    /// reducing kinds only (a non-reducing kind with a quantization is `InvalidArgument`).
    pub fn collective_with<B: ReduceBuffers>(
        &self,
        mut bufs: B,
        desc: ReduceDescriptor,
        kind: Collective,
    ) -> Result<ReduceInfo> {
        no_runtime_here()?;
        let desc = check_desc(&bufs, desc, kind)?;
        let c = self.connected()?;
        let started = ring::start(&c.shared, &desc)?;
        c.rt.block_on(c.shared.run_reduce(started, &mut bufs, desc, kind))
    }

    /// Starts a collective (as [`collective_with`](Self::collective_with)) and returns at
    /// once; the handle's `wait` gives the buffers back.
    pub fn collective_async<B: ReduceBuffers + 'static>(
        &self,
        mut bufs: B,
        desc: ReduceDescriptor,
        kind: Collective,
    ) -> Result<AsyncReduce<B>> {
        let desc = check_desc(&bufs, desc, kind)?;
        let c = self.connected()?;
        // An attempt the others already saw fail (docs/ARCHITECTURE.md §4) fails at
        // `wait`, where theirs did, so one retry loop serves every peer.
        let started = match ring::start(&c.shared, &desc) {
            Ok(started) => Ok(started),
            Err(e @ Error::RankConnectionLost { .. }) => Err(e),
            Err(e) => return Err(e),
        };
        self.async_in_flight.fetch_add(1, Ordering::SeqCst);
        let shared = c.shared.clone();
        let join = c.rt.spawn(async move {
            let r = match started {
                Ok(started) => shared.run_reduce(started, &mut bufs, desc, kind).await,
                Err(e) => Err(e),
            };
            (bufs, r)
        });
        Ok(AsyncReduce {
            join: Some(join),
            rt: c.rt.clone(),
            in_flight: self.async_in_flight.clone(),
            tag: desc.tag,
        })
    }

    /// Runs every op, at most `max_in_flight` at once, retrying each failed one until all
    /// succeed or fewer than two peers remain. Returns the summed transfer figures.
    pub fn all_reduce_multiple_with_retry<B: ReduceBuffers>(
        &self,
        ops: &mut [(B, ReduceDescriptor)],
        max_in_flight: usize,
    ) -> Result<ReduceInfo> {
        no_runtime_here()?;
        if max_in_flight == 0 {
            return Err(Error::InvalidArgument("max_in_flight must be at least 1"));
        }
        for (b, d) in ops.iter() {
            check_desc(b, *d, Collective::AllReduce)?;
        }
        let c = self.connected()?;
        c.rt.block_on(multiple::run(&c.shared, ops, max_in_flight))
    }
}

impl Communicator {
    /// Joint call of the peer group: elects the most popular shared-state content among
    /// peers with a valid revision and makes every peer's tensors equal to it, moving only
    /// the tensors that differ. On success `state.revision` is the elected revision.
    ///
    /// The revision rule: a peer that took part in the group's last sync must present
    /// exactly that revision + 1; a newcomer may present anything.
    ///
    /// A failed sync loses nothing: a tensor is written only with a copy whose hash
    /// matched the elected content, so one that no holder delivered verified keeps its
    /// bytes from before the call. The failure is the same on every peer of the group:
    /// each gets the same error and keeps `state.revision` as it passed it (a failed sync
    /// does not count as the group's last sync, so retry with the same revision). Other
    /// tensors of that sync that did verify hold the elected content; the next sync
    /// repairs whatever still differs (docs/ARCHITECTURE.md §6).
    pub fn sync_shared_state(
        &self,
        state: &mut crate::shared_state::SharedState<'_>,
        strategy: crate::types::SyncStrategy,
    ) -> Result<crate::types::SyncInfo> {
        no_runtime_here()?;
        state.validate()?;
        let c = self.connected()?;
        let shared = &c.shared;
        let revision = state.revision;
        let report = |tensors| {
            let (plan, plan_rx) = oneshot::channel();
            let (result, result_rx) = oneshot::channel();
            let report = ToMaster::SyncReport {
                revision,
                strategy,
                tensors,
            };
            shared
                .cmds
                .send(Cmd::Sync {
                    report,
                    plan,
                    result,
                })
                .map_err(|_| Error::MasterConnectionFailed("control task ended".into()))?;
            Ok((plan_rx, result_rx))
        };
        let sends = strategy != crate::types::SyncStrategy::ReceiveOnly;
        let r =
            c.rt.block_on(crate::shared_state::sync(&**shared, state, report, sends));
        self.stats.record_sync(&r);
        r
    }

    /// What this communicator has done so far: ops per kind, failures, retries, bytes
    /// per neighbour, recent all-reduce figures, recovery times, syncs and measured links
    /// (docs/ARCHITECTURE.md §13). Cheap: a copy of counters kept as ops end.
    pub fn stats(&self) -> stats::CommStats {
        self.stats.snapshot()
    }
}

impl Drop for Communicator {
    fn drop(&mut self) {
        if let Some(c) = self.connected.take() {
            let _ = c.stop.send(true);
            c.shared
                .registry
                .fail_all(Error::InvalidUsage("the communicator is closed".into()));
            // Async handles still holding the runtime let their ops end (they fail at
            // once now) and drop it with the last handle.
            if let Ok(rt) = Arc::try_unwrap(c.rt) {
                rt.shutdown_timeout(Duration::from_secs(2));
            }
        }
    }
}

/// An all-reduce running in the background. Dropping it without `wait` lets the op finish
/// on its own (other peers are not left waiting) but discards the result.
#[derive(Debug)]
#[must_use = "an async all-reduce's result is only known through wait()"]
pub struct AsyncReduce<B> {
    join: Option<tokio::task::JoinHandle<(B, Result<ReduceInfo>)>>,
    rt: Arc<Runtime>,
    in_flight: Arc<AtomicUsize>,
    tag: u64,
}

impl<B> AsyncReduce<B> {
    /// The op's tag.
    pub fn tag(&self) -> u64 {
        self.tag
    }

    /// Blocks until the op has its verdict; gives the buffers back with the outcome.
    pub fn wait(mut self) -> (B, Result<ReduceInfo>)
    where
        B: Send + 'static,
    {
        self.wait_inner(None)
            .expect("an unbounded wait always ends with the op")
    }

    /// Waits at most `limit`: the buffers and outcome if the op has ended, else `None` and
    /// the handle stays valid (bindings use this to notice Ctrl-C while waiting).
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<(B, Result<ReduceInfo>)>
    where
        B: Send + 'static,
    {
        self.wait_inner(Some(limit))
    }

    /// Whether the op has ended (a `wait` would not block).
    pub fn is_finished(&self) -> bool {
        self.join.as_ref().is_none_or(|j| j.is_finished())
    }

    fn wait_inner(&mut self, limit: Option<Duration>) -> Option<(B, Result<ReduceInfo>)>
    where
        B: Send + 'static,
    {
        let join = self.join.as_mut()?;
        let out = match limit {
            None => self.rt.block_on(join),
            Some(d) => self
                .rt
                .block_on(async { tokio::time::timeout(d, join).await })
                .ok()?,
        };
        self.join = None;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        Some(match out {
            Ok(r) => r,
            // The task is never cancelled (the runtime lives while this handle does), so
            // this is a panic inside the op: a bug, re-raised here.
            Err(e) => panic!("all-reduce task failed: {e}"),
        })
    }
}

impl<B> Drop for AsyncReduce<B> {
    fn drop(&mut self) {
        if self.join.take().is_some() {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Checks what can be checked before the op knows its ring (the rest: `ring::run`) and
/// returns the descriptor the op runs with: a non-reducing kind always carries `Sum`, so
/// peers that passed different (unused) ops do not fail with `Mismatch`.
fn check_desc<B: ReduceBuffers>(
    bufs: &B,
    mut desc: ReduceDescriptor,
    kind: Collective,
) -> Result<ReduceDescriptor> {
    if desc.count == 0 {
        return Err(Error::InvalidArgument("count must be at least 1"));
    }
    // The buffer that holds the whole op: the receive side of an all-gather.
    let whole = match kind {
        Collective::AllGather => bufs.recv_len(),
        _ => bufs.send().len(),
    };
    if desc.count.checked_mul(desc.dtype.size()) != Some(whole) {
        return Err(Error::InvalidArgument(
            "buffer length does not match count times the element size",
        ));
    }
    if !kind.reduces() {
        if desc.quantization.is_some() {
            return Err(Error::InvalidArgument(
                "quantization applies to all-reduce and reduce-scatter only",
            ));
        }
        desc.op = ReduceOp::Sum;
    }
    crate::quant::validate(&desc)?;
    Ok(desc)
}

/// Blocking calls drive their own runtime; inside another one that would panic.
fn no_runtime_here() -> Result<()> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::InvalidUsage(
            "blocking pccl calls cannot be made from inside an async runtime".into(),
        ));
    }
    Ok(())
}

async fn dial_master(
    config: &CommunicatorConfig,
    me: PeerId,
    secure: Option<&Secure>,
) -> Result<(tokio::net::TcpStream, sealed::Keys)> {
    let mut last = String::new();
    for attempt in 0..config.connect_attempts.max(1) {
        if attempt > 0 {
            tokio::time::sleep(control::backoff(attempt)).await;
        }
        match dial_master_once(config, me, secure).await {
            Err(Error::MasterConnectionFailed(why)) => last = why,
            other => return other,
        }
    }
    Err(Error::MasterConnectionFailed(format!(
        "cannot reach the master at {}: {last}",
        config.master
    )))
}

/// One attempt to reach the master: dial, hellos and (with a run secret) the control
/// handshake. `MasterConnectionFailed` is worth retrying; other errors are not.
pub(crate) async fn dial_master_once(
    config: &CommunicatorConfig,
    me: PeerId,
    secure: Option<&Secure>,
) -> Result<(tokio::net::TcpStream, sealed::Keys)> {
    let last;
    {
        let mut stream = net::connect(config.master, Duration::from_secs(5))
            .await
            .map_err(|e| Error::MasterConnectionFailed(e.to_string()))?;
        let hello = Hello {
            kind: ConnectionKind::Control,
            peer: me,
        };
        let deadline = Duration::from_secs(5);
        match net::handshake(&mut stream, hello, secure.is_some(), deadline).await {
            Ok((h, theirs)) if h.kind == ConnectionKind::Control => {
                // Settings that differ do not heal with retries: fail at once.
                match (secure, theirs) {
                    (None, false) => return Ok((stream, None)),
                    (None, true) => {
                        return Err(Error::AuthenticationFailed(
                            "the master requires a run secret and this peer has none \
                             (set CommunicatorConfig::secret / PCCL_RUN_SECRET)"
                                .into(),
                        ));
                    }
                    (Some(_), false) => {
                        return Err(Error::AuthenticationFailed(
                            "this peer has a run secret but the master has none".into(),
                        ));
                    }
                    (Some(sec), true) => {
                        return sealed::initiate(
                            &mut stream,
                            sec,
                            ConnectionKind::Control,
                            me,
                            h.peer,
                            None,
                            deadline,
                        )
                        .await
                        .map(|s| (stream, Some(s)))
                        .map_err(|e| auth_failure(&e));
                    }
                }
            }
            Ok(_) => last = "the master answered with the wrong connection kind".into(),
            Err(e) => last = e.to_string(),
        }
        let _ = stream.shutdown().await;
    }
    Err(Error::MasterConnectionFailed(last))
}

/// `connect`'s error for a failed control handshake.
fn auth_failure(e: &net::ConnectionError) -> Error {
    use crate::secure::HandshakeError as H;
    match e {
        net::ConnectionError::Secure(H::Closed | H::Rejected) => Error::AuthenticationFailed(
            "the master refused this peer's proof of the run secret (different run secret?)".into(),
        ),
        net::ConnectionError::Secure(h @ H::ModeMismatch { .. }) => {
            Error::AuthenticationFailed(format!("{h} (encrypt must match the master's)"))
        }
        other => Error::AuthenticationFailed(format!("handshake with the master failed: {other}")),
    }
}
