//! pccl: fault-tolerant collective communication for training over the internet.
//!
//! A run is a set of peers coordinated by one [`MasterNode`]. Each peer holds a
//! [`Communicator`]: it connects to the master, is accepted into the ring at a topology
//! update, and all-reduces with its group's ring neighbours over pooled TCP connections.
//! Peers may die at any moment: the master notices (connection close or heartbeat
//! silence), every op the dead peer took part in fails on all survivors with
//! [`Error::RankConnectionLost`], and the retry runs on the smaller ring.
//!
//! The protocol core (`wire`, `master::state`, the ring schedule and kernels) is pure
//! and deterministic; tokio and sockets live in `net`, the master's server and the
//! communicator's tasks.
//!
//! ```no_run
//! use pccl::{Communicator, CommunicatorConfig, ReduceOp};
//! let comm = Communicator::new(CommunicatorConfig::new("127.0.0.1:48148".parse().unwrap()))?;
//! comm.connect()?;
//! let grads = vec![1.0f32; 1024];
//! let mut out = vec![0.0f32; 1024];
//! loop {
//!     match comm.all_reduce(&grads, &mut out, ReduceOp::Avg, 0) {
//!         Ok(_) => break,
//!         Err(pccl::Error::RankConnectionLost { .. }) => continue, // a peer died: retry
//!         Err(e) => return Err(e),
//!     }
//! }
//! # Ok::<(), pccl::Error>(())
//! ```

#![deny(unsafe_code)]

#[cfg(target_endian = "big")]
compile_error!("pccl sends tensors in the host byte order and supports little-endian hosts only");

mod collectives;
mod comm;
mod config;
mod error;
#[cfg(test)]
mod layering;
pub mod master;
mod net;
pub mod quant;
pub mod secure;
mod shared_state;
mod topology;
mod types;
pub mod wire;

pub use collectives::{Element, InPlaceBuffer, OwnedBuffers, ReduceBuffers, SliceBuffers, Staging};
pub use comm::stats::{CommStats, LinkBandwidth, NeighbourBytes, OpCounts, ReduceSample};
pub use comm::{AsyncReduce, Communicator};
pub use config::{CommunicatorConfig, DEFAULT_MASTER_PORT, DEFAULT_P2P_PORT};
pub use error::{Error, Result, ResultCode, ResultCodeInfo};
pub use master::{MasterConfig, MasterNode};
pub use net::ConnectionError;
pub use shared_state::{SharedState, TensorInfo, tensor_hash};
#[doc(hidden)]
pub use topology::bandwidth::BANDWIDTH_TEST_DURATION;
pub use types::{
    Attribute, Collective, DataType, Device, PeerEntry, PeerId, ReduceDescriptor, ReduceInfo,
    ReduceOp, SyncInfo, SyncStrategy, Topology,
};
pub use types::{Quantization, QuantizationAlgorithm};

/// The ring's reduce kernel and result stores, exposed for pccl's own benchmarks
/// (`benches/benches/kernels.rs`, the bare ring of `benches/src/bin/allreduce/`); not a
/// stable API.
#[doc(hidden)]
pub mod kernels {
    /// `acc[i] = acc[i] (op) local[i]` over native-endian `dtype` elements, as the ring
    /// reduces every received slice (`Avg` sums here). Never panics.
    pub fn reduce_into(op: crate::ReduceOp, dtype: crate::DataType, acc: &mut [u8], local: &[u8]) {
        crate::collectives::reduce_into(op, dtype, acc, local);
    }

    /// Copies `src` into `dst` (equal lengths) as the ring writes results: with streaming
    /// stores when `stream` is set (results buffers of 8 MiB or more), else an ordinary copy.
    pub fn store_results(dst: &mut [u8], src: &[u8], stream: bool) {
        crate::collectives::stream::store(dst, src, stream);
    }
}

/// Installs a `tracing` subscriber that logs to stderr at the level in `PCCL_LOG`
/// (default `warn`). Harmless if one is installed already.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PCCL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
