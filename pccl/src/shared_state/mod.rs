//! Shared state (docs/ARCHITECTURE.md §6): named tensors every peer of a group holds bit for bit, and
//! the sync that elects the popular content and sends each peer only what differs.
//!
//! The sync reaches the world through the [`SyncHost`] seam (the communicator implements
//! it): the master is talked to through the `report` closure and `SyncHost::sync_done`,
//! and requests from other peers arrive through the [`StateDoor`].

mod hash;
mod transfer;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

pub use hash::tensor_hash;

use crate::collectives::Element;
use crate::error::{Error, Result};
use crate::types::{DataType, Device, PeerId, SyncInfo, Topology};
use crate::wire::{Fetch, Serve};

/// One named tensor of a shared state. The user owns the memory; a sync writes into it
/// only while it runs, only if this tensor differs from the elected content, and only a
/// copy whose hash was verified (a failed fetch leaves it as it was).
#[derive(Debug)]
pub struct TensorInfo<'a> {
    pub name: String,
    pub data: &'a mut [u8],
    pub dtype: DataType,
    /// Where `data` lives. The core reads host memory only: CUDA tensors are staged
    /// through host memory by the caller (pccl-py does this).
    pub device: Device,
    /// The tensor may differ between peers (e.g. RNG state): it does not vote and is sent
    /// only to newcomers.
    pub allow_content_inequality: bool,
}

impl<'a> TensorInfo<'a> {
    /// A host tensor over `data`.
    pub fn new<T: Element>(name: impl Into<String>, data: &'a mut [T]) -> Self {
        Self {
            name: name.into(),
            data: bytemuck::cast_slice_mut(data),
            dtype: T::DTYPE,
            device: Device::Cpu,
            allow_content_inequality: false,
        }
    }

    /// The same tensor, allowed to differ between peers.
    pub fn allowing_inequality(mut self) -> Self {
        self.allow_content_inequality = true;
        self
    }

    /// Number of elements.
    pub fn count(&self) -> usize {
        self.data.len() / self.dtype.size()
    }
}

/// A revision plus named tensors.
#[derive(Debug, Default)]
pub struct SharedState<'a> {
    pub revision: u64,
    pub tensors: Vec<TensorInfo<'a>>,
}

impl SharedState<'_> {
    pub(crate) fn validate(&self) -> Result<()> {
        let mut names = HashSet::new();
        for t in &self.tensors {
            if t.name.is_empty() || t.name.len() > crate::wire::control::MAX_NAME {
                return Err(Error::InvalidArgument(
                    "tensor names must be 1 to 1024 bytes",
                ));
            }
            if !names.insert(t.name.as_str()) {
                return Err(Error::InvalidArgument("tensor names must be unique"));
            }
            if t.data.len() % t.dtype.size() != 0 {
                return Err(Error::InvalidArgument(
                    "tensor length is not a whole number of elements",
                ));
            }
            if t.device != Device::Cpu {
                return Err(Error::InvalidArgument(
                    "the core syncs host memory only: stage CUDA tensors through host memory",
                ));
            }
        }
        if self.tensors.len() > crate::wire::control::MAX_TENSORS {
            return Err(Error::InvalidArgument(
                "too many tensors in one shared state",
            ));
        }
        Ok(())
    }
}

/// A shared-state connection, the peer the p2p gate identified it as, and its sealing
/// keys in an authenticated run.
type Incoming = (PeerId, TcpStream, crate::net::sealed::Keys);

/// The door through which the p2p listener hands shared-state connections to the sync
/// that is running, if any; outside a sync they are closed.
#[derive(Debug, Default)]
pub(crate) struct StateDoor {
    tx: Mutex<Option<mpsc::UnboundedSender<Incoming>>>,
}

impl StateDoor {
    fn open(&self) -> Result<mpsc::UnboundedReceiver<Incoming>> {
        let mut tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        if tx.is_some() {
            return Err(Error::InvalidUsage(
                "a shared-state sync is already running".into(),
            ));
        }
        let (t, r) = mpsc::unbounded_channel();
        *tx = Some(t);
        Ok(r)
    }

    fn close(&self) {
        *self.tx.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Hands `stream`, from `from` (as the gate verified), to the running sync; false
    /// (and the stream is dropped) if none runs.
    pub(crate) fn hand(
        &self,
        from: PeerId,
        stream: TcpStream,
        keys: crate::net::sealed::Keys,
    ) -> bool {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        tx.as_ref()
            .is_some_and(|t| t.send((from, stream, keys)).is_ok())
    }
}

/// What a sync needs from the communicator besides the master's answers.
pub(crate) trait SyncHost {
    /// This peer.
    fn me(&self) -> PeerId;
    /// Where the p2p listener hands shared-state connections.
    fn door(&self) -> &StateDoor;
    /// The topology now: where the holders of a tensor listen.
    fn topology(&self) -> Arc<Topology>;
    /// How long a transfer may stall before the next holder is tried.
    fn stall(&self) -> Duration;
    /// Tells the master this peer's part of the sync is done (`ok`: every fetch verified).
    fn sync_done(&self, ok: bool);
    /// The run secret and our key pair, in an authenticated run.
    fn secure(&self) -> Option<&crate::net::sealed::Secure>;
}

/// The master's answer to our report.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) revision: u64,
    pub(crate) fetch: Vec<Fetch>,
    /// The receivers we serve in this sync and what each may fetch (holders only).
    pub(crate) serve: Vec<Serve>,
}

/// Closes the door when the sync ends, however it ends.
struct DoorGuard<'a>(&'a StateDoor);

impl Drop for DoorGuard<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Receives the master's final word on a sync.
pub(crate) type ResultRx = oneshot::Receiver<std::result::Result<(), String>>;

/// Most tensors fetched at once.
const PARALLEL_FETCHES: usize = 8;

/// A shared-state connection reached a peer that fetches in this sync and serves nobody:
/// it is closed (dropped by the caller) unanswered.
fn refuse_receiver_side(from: PeerId) {
    tracing::warn!(%from, "shared-state connection refused: we are no holder in this sync");
}

/// Runs one sync. `report` sends our report and returns the plan and result channels.
pub(crate) async fn sync(
    host: &impl SyncHost,
    state: &mut SharedState<'_>,
    report: impl FnOnce(
        Vec<crate::wire::TensorReport>,
    ) -> Result<(oneshot::Receiver<Result<Plan>>, ResultRx)>,
    strategy_sends: bool,
) -> Result<SyncInfo> {
    let mut incoming = host.door().open()?;
    let _guard = DoorGuard(host.door());
    let tensors = state
        .tensors
        .iter()
        .map(|t| crate::wire::TensorReport {
            name: t.name.clone(),
            dtype: t.dtype,
            count: t.count() as u64,
            hash: tensor_hash(t.data),
            allow_content_inequality: t.allow_content_inequality,
        })
        .collect();
    let (mut plan_rx, mut result_rx) = report(tensors)?;
    let lost =
        || Error::MasterConnectionFailed("the control connection ended during a sync".into());
    // Until the plan arrives, keep early requests: we may turn out to be a holder.
    let mut early = Vec::new();
    let plan = loop {
        tokio::select! {
            p = &mut plan_rx => break p.map_err(|_| lost())??,
            Some(s) = incoming.recv() => early.push(s),
        }
    };
    let mut info = SyncInfo::default();
    // Tensors no holder delivered a verified copy of (they kept their old bytes).
    let mut unverified: Vec<String> = Vec::new();
    // Verified copies waiting for the sync's success, and tensors already overwritten
    // with a verified copy (fetches too large to hold back).
    let mut held: Vec<(String, Vec<u8>)> = Vec::new();
    let mut copied: Vec<String> = Vec::new();
    let result = if plan.fetch.is_empty() {
        host.sync_done(true);
        let tensors = &state.tensors[..];
        let sent = std::sync::atomic::AtomicU64::new(0);
        // Only the receivers the master designated, and only for what it named; the
        // permissions end with this sync (docs/PROTOCOL.md §5).
        let serve = if strategy_sends { &plan.serve[..] } else { &[] };
        let permits = transfer::Permits::new(serve, tensors.len());
        let stall = host.stall();
        let start =
            |(from, s, keys)| transfer::serve(s, keys, from, tensors, &permits, stall, &sent);
        let mut serving: FuturesUnordered<_> = early.into_iter().map(start).collect();
        let r = loop {
            tokio::select! {
                r = &mut result_rx => break r.map_err(|_| lost())?,
                Some(s) = incoming.recv() => serving.push(start(s)),
                Some(r) = serving.next() => if let Err(e) = r {
                    tracing::debug!(error = %e, "shared-state request ended");
                },
            }
        };
        drop(serving);
        info.tx_bytes = sent.into_inner();
        r
    } else {
        for (from, _, _) in early {
            refuse_receiver_side(from);
        }
        let topology = host.topology();
        let stall = host.stall();
        let me = host.me();
        let secure = host.secure();
        let staging = tokio::sync::Semaphore::new(transfer::STAGING_BUDGET_UNITS as usize);
        // Verified copies wait for the master's final word when they fit the hold budget,
        // so a sync that fails anywhere leaves every receiver as it was (§6, "A failed
        // sync loses nothing"); a larger fetch copies each one as it is verified.
        let fetch_bytes: u64 = state
            .tensors
            .iter()
            .filter(|t| plan.fetch.iter().any(|f| f.name == t.name))
            .map(|t| t.data.len() as u64)
            .sum();
        let hold = fetch_bytes <= transfer::HOLD_BUDGET;
        let mut fetches = futures::stream::iter(state.tensors.iter_mut().filter_map(|t| {
            let f = plan.fetch.iter().find(|f| f.name == t.name)?;
            let (topology, staging) = (&topology, &staging);
            Some(async move {
                let r =
                    transfer::fetch(me, secure, topology, f, t.data, hold, stall, staging).await;
                (&f.name, r)
            })
        }))
        .buffer_unordered(PARALLEL_FETCHES);
        loop {
            tokio::select! {
                next = fetches.next() => match next {
                    Some((name, (n, fetched))) => {
                        info.rx_bytes += n;
                        match fetched {
                            transfer::Fetched::Held(copy) => held.push((name.clone(), copy)),
                            transfer::Fetched::Copied => copied.push(name.clone()),
                            transfer::Fetched::Failed => unverified.push(name.clone()),
                        }
                    }
                    None => break,
                },
                // Not a holder: refuse (close) requests at once.
                Some((from, _, _)) = incoming.recv() => refuse_receiver_side(from),
            }
        }
        drop(fetches);
        host.sync_done(unverified.is_empty());
        loop {
            tokio::select! {
                r = &mut result_rx => break r.map_err(|_| lost())?,
                Some((from, _, _)) = incoming.recv() => refuse_receiver_side(from),
            }
        }
    };
    match result {
        Ok(()) => {
            for (name, copy) in held {
                if let Some(t) = state.tensors.iter_mut().find(|t| t.name == name) {
                    t.data.copy_from_slice(&copy);
                }
            }
            state.revision = plan.revision;
            Ok(info)
        }
        // Every participant gets this same error and keeps its revision. Our own tensors
        // each hold either their bytes from before the sync (`unverified` ones, and any
        // we did not fetch) or the elected content (fetched and verified).
        Err(why) => {
            let mut reason = format!("shared-state sync failed: {why}");
            if !unverified.is_empty() {
                unverified.sort();
                reason.push_str(&format!(
                    "; no holder delivered a verified copy of {unverified:?} here, so they keep \
                     their bytes from before the sync"
                ));
            }
            if !copied.is_empty() {
                copied.sort();
                reason.push_str(&format!(
                    "; {copied:?} were too large to hold back and already hold the content of \
                     revision {} while the revision stays {}: they are invalid until the next \
                     sync repairs them",
                    plan.revision, state.revision
                ));
            }
            Err(Error::RankConnectionLost { tag: 0, reason })
        }
    }
}
