//! An in-memory ring for tests: n ranks in one process, each with its own registry and
//! buffer pool, linked by the same bounded connection queues the sockets use, with no
//! socket in between. A per-frame fault hook on every link can duplicate, corrupt,
//! re-head, re-order or replay frames, lose them with their connection, or make a rank vanish; a task plays the master,
//! deciding each op by the real rule (the first failure reported decides it; success
//! once every live rank reports success) and sending the same verdict to every live rank.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle};

use super::RingHost;
use crate::collectives::ReduceBuffers;
use crate::collectives::bufpool::BufPool;
use crate::collectives::link::{Connection, OutFrame, Pool};
use crate::collectives::registry::{OpKey, Registry};
use crate::error::{Error, Result};
use crate::types::{Collective, PeerEntry, PeerId, ReduceDescriptor, ReduceInfo, Topology};
use crate::wire::{DataHeader, FailReason};

/// Every test ends within this, or fails as hung.
pub(super) const HANG: Duration = Duration::from_secs(30);

/// The runtime every in-memory ring test runs on.
pub(super) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// What a link does with one frame.
#[derive(Clone, Debug)]
pub(super) enum Fault {
    Pass,
    /// Delivered twice in a row.
    Duplicate,
    /// One payload byte flipped after the checksum was computed.
    Corrupt,
    /// Delivered with this header instead.
    Rehead(DataHeader),
    /// A copy with this header is delivered first (a stale or foreign frame), then the
    /// frame itself.
    Also(DataHeader),
    /// The sending rank vanishes instead: its op task, its links in both directions.
    Vanish,
    /// The connection fails with this frame on it: the frame is lost, and the connection
    /// ends as a socket the receiver closed does (the pool closes; later frames on it are
    /// lost too).
    Lose,
}

/// Where a frame is: sent by `from` (a rank), the `index`-th frame on that rank's link.
pub(super) type FaultFn = dyn Fn(usize, usize, &DataHeader) -> Fault + Send + Sync;

/// One rank's host: the registry frames reach its ops through, and its link.
pub(super) struct MemHost {
    rank: usize,
    me: PeerId,
    slice_bytes: usize,
    ahead_bytes: usize,
    registry: Registry,
    bufs: BufPool,
    pool: Mutex<Option<Arc<Pool>>>,
    reports: mpsc::UnboundedSender<(usize, OpKey, Option<FailReason>)>,
}

impl RingHost for MemHost {
    fn me(&self) -> PeerId {
        self.me
    }

    fn group(&self) -> u32 {
        0
    }

    fn slice_bytes(&self) -> usize {
        self.slice_bytes
    }

    fn registry(&self) -> &Registry {
        &self.registry
    }

    fn ahead_bytes(&self) -> usize {
        self.ahead_bytes
    }

    fn bufs(&self) -> &BufPool {
        &self.bufs
    }

    async fn pool(&self, next: &PeerEntry) -> Result<Arc<Pool>> {
        let pool = self.pool.lock().unwrap().clone();
        pool.filter(|p| !p.is_closed())
            .ok_or_else(|| Error::RankConnectionFailed {
                peer: next.id,
                reason: "link closed".into(),
            })
    }

    fn report(&self, key: OpKey, failure: Option<FailReason>) {
        let _ = self.reports.send((self.rank, key, failure));
    }
}

/// Buffers that keep results staged until the verdict, like `InPlaceBuffer`, so a test
/// can see that a failed op committed nothing.
#[derive(Debug)]
pub(super) struct Staged {
    send: Vec<u8>,
    staged: Vec<u8>,
    pub(super) committed: Option<Vec<u8>>,
}

impl Staged {
    pub(super) fn new(send: Vec<u8>) -> Self {
        let len = send.len();
        Self::with_recv(send, len)
    }

    /// Results of `recv_len` bytes (a reduce-scatter's chunk, an all-gather's whole).
    pub(super) fn with_recv(send: Vec<u8>, recv_len: usize) -> Self {
        Self {
            staged: vec![0; recv_len],
            send,
            committed: None,
        }
    }
}

impl ReduceBuffers for Staged {
    fn send(&self) -> &[u8] {
        &self.send
    }

    fn recv_len(&self) -> usize {
        self.staged.len()
    }

    fn input_and_out(&mut self, offset: usize, len: usize) -> (&[u8], &mut [u8]) {
        (&self.send, &mut self.staged[offset..offset + len])
    }

    fn commit(&mut self) {
        self.committed = Some(self.staged.clone());
    }
}

/// What every rank's op task hands back.
pub(super) type Outcome = (Staged, Result<ReduceInfo>);

/// One rank's call of an op: the collective, its descriptor, its input and how many
/// result bytes its receive buffer holds.
#[derive(Clone, Debug)]
pub(super) struct Call {
    pub(super) kind: Collective,
    pub(super) desc: ReduceDescriptor,
    pub(super) input: Vec<u8>,
    pub(super) recv_len: usize,
}

impl Call {
    /// An all-reduce call.
    pub(super) fn all_reduce(desc: ReduceDescriptor, input: Vec<u8>) -> Self {
        Self {
            kind: Collective::AllReduce,
            desc,
            recv_len: input.len(),
            input,
        }
    }
}

/// What the ranks, their wires and the master share.
pub(super) struct World {
    pub(super) hosts: Vec<Arc<MemHost>>,
    alive: Mutex<Vec<bool>>,
    /// Per rank, the tasks that die with it: its op and the wires to and from it.
    tasks: Mutex<Vec<Vec<AbortHandle>>>,
    /// Failures as the master received them: (rank, reason), in order.
    pub(super) failures: Mutex<Vec<(usize, FailReason)>>,
}

/// The ranks, their links and the master.
pub(super) struct MemRing {
    pub(super) world: Arc<World>,
    topology: Topology,
    master: JoinHandle<()>,
}

impl Drop for MemRing {
    fn drop(&mut self) {
        self.master.abort();
        for t in self.world.tasks.lock().unwrap().iter().flatten() {
            t.abort();
        }
    }
}

pub(super) struct Options {
    pub(super) n: usize,
    /// Connections per link.
    pub(super) conns: usize,
    pub(super) slice_bytes: usize,
    /// `RingHost::ahead_bytes`: by default the smallest window (two slices per
    /// connection), so every test also shows that the pacing never stalls a ring.
    pub(super) ahead_bytes: usize,
    /// Seed of the re-ordering; `None`: each connection delivers in order.
    pub(super) shuffle: Option<u64>,
    pub(super) fault: Arc<FaultFn>,
    /// Ranks that are gone before the test starts: no link leads to them.
    pub(super) gone: Vec<usize>,
}

impl Options {
    pub(super) fn new(n: usize) -> Self {
        Self {
            n,
            conns: 2,
            slice_bytes: 64,
            ahead_bytes: 0,
            shuffle: None,
            fault: Arc::new(|_, _, _| Fault::Pass),
            gone: Vec::new(),
        }
    }

    /// `n` ranks where rank `rank` vanishes at its frame number `after` on its link.
    pub(super) fn vanishing(n: usize, rank: usize, after: usize) -> Self {
        Self {
            fault: Arc::new(move |from, index, _| {
                if from == rank && index == after {
                    Fault::Vanish
                } else {
                    Fault::Pass
                }
            }),
            ..Self::new(n)
        }
    }
}

fn peer(rank: usize) -> PeerId {
    PeerId([rank as u8 + 1; 16])
}

impl MemRing {
    /// Builds the ring at epoch 1 and starts its links and its master.
    pub(super) fn new(o: Options) -> Self {
        let n = o.n;
        let topology = Topology {
            ring: (0..n)
                .map(|r| PeerEntry {
                    id: peer(r),
                    group: 0,
                    p2p_addr: "127.0.0.1:9".parse().expect("address"),
                    static_key: [0; 32],
                })
                .collect(),
            group_epochs: vec![(0, 1)],
        };
        let (report_tx, report_rx) = mpsc::unbounded_channel();
        let hosts: Vec<Arc<MemHost>> = (0..n)
            .map(|rank| {
                let registry = Registry::new(0, 64 << 20);
                registry.set_topology(topology.clone());
                Arc::new(MemHost {
                    rank,
                    me: peer(rank),
                    slice_bytes: o.slice_bytes,
                    ahead_bytes: o.ahead_bytes,
                    registry,
                    bufs: BufPool::new(o.slice_bytes),
                    pool: Mutex::new(None),
                    reports: report_tx.clone(),
                })
            })
            .collect();
        let world = Arc::new(World {
            hosts,
            alive: Mutex::new((0..n).map(|r| !o.gone.contains(&r)).collect()),
            tasks: Mutex::new((0..n).map(|_| Vec::new()).collect()),
            failures: Mutex::new(Vec::new()),
        });
        let ring = Self {
            master: tokio::spawn(master(world.clone(), report_rx)),
            world,
            topology,
        };
        for from in 0..n {
            ring.link(from, &o);
        }
        ring
    }

    /// Opens the connections from `from` to its successor, each drained by a wire task.
    fn link(&self, from: usize, o: &Options) {
        let to = (from + 1) % o.n;
        let (closed, _) = watch::channel(false);
        let sent = Arc::new(AtomicUsize::new(0));
        let mut writers = Vec::new();
        for conn in 0..o.conns {
            let (tx, rx) = mpsc::channel(16);
            writers.push(Connection::Queue(tx));
            if o.gone.contains(&to) {
                continue; // nobody reads: the queue's receiver is dropped at once
            }
            let wire = Wire {
                rx,
                closed: closed.clone(),
                from,
                to,
                sent: sent.clone(),
                fault: o.fault.clone(),
                rng: o
                    .shuffle
                    .map(|s| ChaCha8Rng::seed_from_u64(s ^ ((from * 64 + conn) as u64))),
                world: self.world.clone(),
            };
            // The wire dies with either end.
            let task = tokio::spawn(wire.run()).abort_handle();
            let mut tasks = self.world.tasks.lock().unwrap();
            tasks[from].push(task.clone());
            tasks[to].push(task);
        }
        *self.world.hosts[from].pool.lock().unwrap() = Some(Arc::new(Pool::new(writers, closed)));
    }

    /// Starts one all-reduce on every live rank; the tasks hand back each rank's buffers
    /// and result.
    pub(super) fn start(
        &self,
        descs: &[ReduceDescriptor],
        inputs: Vec<Vec<u8>>,
    ) -> Vec<Option<JoinHandle<Outcome>>> {
        self.start_calls(
            descs
                .iter()
                .zip(inputs)
                .map(|(d, x)| Call::all_reduce(*d, x))
                .collect(),
        )
    }

    /// Starts rank `r`'s `calls[r]` on every live rank.
    pub(super) fn start_calls(&self, calls: Vec<Call>) -> Vec<Option<JoinHandle<Outcome>>> {
        let alive = self.world.alive.lock().unwrap().clone();
        // Every rank registers before any runs, as if every rank called the op before
        // the first frame or verdict. A rank registering after a rank vanished would
        // take the next epoch and pair with the others' retry, which this harness,
        // waiting for every first outcome, never starts (docs/ARCHITECTURE.md §4).
        let started: Vec<_> = (0..calls.len())
            .map(|r| alive[r].then(|| super::start(&self.world.hosts[r], &calls[r].desc)))
            .collect();
        started
            .into_iter()
            .zip(calls)
            .enumerate()
            .map(|(r, (started, call))| {
                let started = started?;
                let task = tokio::spawn(async move {
                    let mut bufs = Staged::with_recv(call.input, call.recv_len);
                    let res = match started {
                        Ok(st) => super::run(st, &mut bufs, call.desc, call.kind).await,
                        Err(e) => Err(e),
                    };
                    (bufs, res)
                });
                self.world.tasks.lock().unwrap()[r].push(task.abort_handle());
                Some(task)
            })
            .collect()
    }

    /// Runs one all-reduce on every live rank and waits for all of them (bounded by
    /// [`HANG`]).
    pub(super) async fn all_reduce(
        &self,
        descs: &[ReduceDescriptor],
        inputs: Vec<Vec<u8>>,
    ) -> Vec<Option<Outcome>> {
        let handles = self.start(descs, inputs);
        self.outcomes(handles).await
    }

    /// Runs rank `r`'s `calls[r]` on every live rank and waits for all of them.
    pub(super) async fn run_calls(&self, calls: Vec<Call>) -> Vec<Option<Outcome>> {
        let handles = self.start_calls(calls);
        self.outcomes(handles).await
    }

    /// Waits for every started rank (bounded by [`HANG`]).
    async fn outcomes(&self, handles: Vec<Option<JoinHandle<Outcome>>>) -> Vec<Option<Outcome>> {
        let mut out = Vec::new();
        for (r, h) in handles.into_iter().enumerate() {
            out.push(match h {
                None => None,
                Some(h) => match tokio::time::timeout(HANG, h).await {
                    // A rank that vanished has no outcome, however its task ended.
                    Ok(Ok(o)) => Some(o).filter(|_| self.world.alive.lock().unwrap()[r]),
                    Ok(Err(e)) if e.is_cancelled() => None, // the rank vanished
                    Ok(Err(e)) => panic!("op task failed: {e}"),
                    Err(_) => panic!("rank {r}'s op hung for {HANG:?}"),
                },
            });
        }
        out
    }

    /// The topology every rank runs on.
    pub(super) fn topology(&self) -> &Topology {
        &self.topology
    }
}

/// One connection of a link, read in memory.
struct Wire {
    rx: mpsc::Receiver<OutFrame>,
    closed: watch::Sender<bool>,
    from: usize,
    to: usize,
    /// Frames this rank's link carried so far, over all its connections.
    sent: Arc<AtomicUsize>,
    fault: Arc<FaultFn>,
    rng: Option<ChaCha8Rng>,
    world: Arc<World>,
}

impl Wire {
    async fn run(mut self) {
        let mut held: Vec<OutFrame> = Vec::new();
        loop {
            if held.is_empty() {
                match self.rx.recv().await {
                    Some(f) => held.push(f),
                    None => break,
                }
            }
            // Re-ordering: pick any frame queued on this connection so far.
            let pick = match &mut self.rng {
                Some(rng) => {
                    while let Ok(f) = self.rx.try_recv() {
                        held.push(f);
                    }
                    rng.gen_range(0..held.len())
                }
                None => 0,
            };
            let frame = held.remove(pick);
            let index = self.sent.fetch_add(1, Ordering::SeqCst);
            match (self.fault)(self.from, index, &frame.header) {
                Fault::Pass => self.deliver(frame.header, &frame.payload, false).await,
                Fault::Duplicate => {
                    self.deliver(frame.header, &frame.payload, false).await;
                    self.deliver(frame.header, &frame.payload, false).await;
                }
                Fault::Corrupt => self.deliver(frame.header, &frame.payload, true).await,
                Fault::Rehead(h) => self.deliver(h, &frame.payload, false).await,
                Fault::Also(h) => {
                    self.deliver(h, &frame.payload, false).await;
                    self.deliver(frame.header, &frame.payload, false).await;
                }
                Fault::Vanish => {
                    vanish(&self.world, self.from);
                    return; // this task may be aborted by now already
                }
                Fault::Lose => break,
            }
        }
        // Like the socket writer: a connection that ends closes the pool.
        let _ = self.closed.send(true);
    }

    /// What a socket reader does: copies the payload into a buffer of its own, checks
    /// the checksum, and hands the frame to the registry.
    async fn deliver(&self, header: DataHeader, payload: &[u8], corrupt: bool) {
        let mut buf = BytesMut::from(payload);
        if corrupt && !buf.is_empty() {
            buf[0] ^= 0x40;
        }
        let crc_ok = header.verify(&buf).is_ok();
        let to = &self.world.hosts[self.to].registry;
        to.deliver(header, buf, peer(self.from), crc_ok).await;
    }
}

/// Rank `rank` dies: its op task and every wire to or from it stop, so its predecessor's
/// queues lose their reader. The master hears of it as the real one does (connection
/// closed) and, like it, moves the survivors to a new epoch without the dead rank.
fn vanish(world: &World, rank: usize) {
    let hosts = &world.hosts;
    world.alive.lock().unwrap()[rank] = false;
    *hosts[rank].pool.lock().unwrap() = None;
    let topology = hosts[rank].registry.topology();
    let mut next = Topology {
        ring: topology.ring.clone(),
        group_epochs: vec![(0, topology.group_epoch(0).unwrap_or(0) + 1)],
    };
    next.ring.retain(|p| p.id != hosts[rank].me);
    let alive = world.alive.lock().unwrap().clone();
    for (r, h) in hosts.iter().enumerate() {
        if alive[r] {
            h.registry.set_topology(next.clone());
        }
    }
    // Its op may have been spawned but not yet listed in `tasks`: end it this way too.
    hosts[rank]
        .registry
        .fail_all(Error::Internal("this rank vanished".into()));
    for t in world.tasks.lock().unwrap()[rank].drain(..) {
        t.abort();
    }
}

/// Plays the master: decides each op by the real rule and sends the same verdict to every
/// live rank.
async fn master(
    world: Arc<World>,
    mut reports: mpsc::UnboundedReceiver<(usize, OpKey, Option<FailReason>)>,
) {
    let mut done: HashMap<OpKey, HashSet<usize>> = HashMap::new();
    let mut decided: HashSet<OpKey> = HashSet::new();
    while let Some((rank, key, failure)) = reports.recv().await {
        if let Some(f) = failure {
            world.failures.lock().unwrap().push((rank, f));
        }
        if decided.contains(&key) {
            continue;
        }
        let ranks = done.entry(key).or_default();
        ranks.insert(rank);
        let alive = world.alive.lock().unwrap().clone();
        let all = (0..alive.len()).all(|r| !alive[r] || ranks.contains(&r));
        if failure.is_none() && !all {
            continue;
        }
        decided.insert(key);
        for (r, h) in world.hosts.iter().enumerate() {
            if alive[r] {
                h.registry.verdict(key, failure);
            }
        }
    }
}
