//! The seam between the ring engine and the world: everything a ring op needs that is not
//! pure computation. The communicator implements it with sockets (`comm`); the in-memory
//! tests implement it with channels, so the ring runs without a socket.
//!
//! The seam is a generic parameter, not a trait object: the hot path (`bufs`, `registry`)
//! is called through static dispatch and costs what a field access costs.

use std::future::Future;
use std::sync::Arc;

use crate::collectives::bufpool::BufPool;
use crate::collectives::link::Pool;
use crate::collectives::registry::{OpKey, Registry};
use crate::error::Error;
use crate::types::{PeerEntry, PeerId};
use crate::wire::FailReason;

/// The default of [`RingHost::ahead_bytes`]: 32 MiB per connection keeps a long-fat pipe
/// full (a pool is how a user asks for one) and bounds what a loopback ring holds.
pub(crate) const AHEAD_BYTES_PER_CONNECTION: usize = 32 << 20;

/// What a ring op needs from its host.
///
/// Incoming side: frames from the ring predecessor, the master's verdict and aborts reach
/// the op as [`OpEvent`](crate::collectives::registry::OpEvent)s through the
/// [`Registry`]; whoever reads sockets calls `Registry::deliver`, whoever hears the
/// master calls `Registry::verdict` / `set_topology` / `fail_all`.
/// Outgoing side: the [`Pool`] to the successor. Outcome: [`RingHost::report`].
pub(crate) trait RingHost: Send + Sync + 'static {
    /// This peer.
    fn me(&self) -> PeerId;
    /// The peer group whose ring the op runs on.
    fn group(&self) -> u32;
    /// Most payload bytes per frame (the slice size before quantization).
    fn slice_bytes(&self) -> usize;
    /// Routes incoming frames, verdicts and aborts to ops; names each op.
    fn registry(&self) -> &Registry;
    /// Reusable frame buffers.
    fn bufs(&self) -> &BufPool;
    /// Bytes of step-0 slices an op may send per connection beyond what the frames it has
    /// received at its pace step account for (`exchange::window`).
    fn ahead_bytes(&self) -> usize {
        AHEAD_BYTES_PER_CONNECTION
    }
    /// Whether frames carry a CRC32 of their payload (not on links sealed with the run
    /// secret, whose tags cover every byte).
    fn checksums(&self) -> bool {
        true
    }
    /// The open connections to the ring successor `next`, opened first if needed.
    fn pool(&self, next: &PeerEntry) -> impl Future<Output = Result<Arc<Pool>, Error>> + Send;
    /// This rank's part of op `key` ended (`None`: it has every frame); the verdict comes
    /// back through the registry.
    fn report(&self, key: OpKey, failure: Option<FailReason>);
}
