//! Collectives: the ring all-reduce without sockets. The pure ring schedule, the reduce
//! kernels, the op registry that routes frames to ops, the buffer pool, the outgoing
//! connection queues, and the ring engine, which reaches the world only through the
//! `ring::RingHost` seam.

mod buffers;
pub(crate) mod bufpool;
pub(crate) mod link;
mod reduce;
pub(crate) mod registry;
pub(crate) mod ring;
pub(crate) mod schedule;
mod staging;
pub(crate) mod stream;

pub use buffers::{Element, InPlaceBuffer, OwnedBuffers, ReduceBuffers, SliceBuffers};
pub(crate) use reduce::reduce_into; // for `pccl::kernels` (benchmarks)
pub use staging::Staging;
