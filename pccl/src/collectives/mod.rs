//! Collectives: the pure ring schedule, the reduce kernels and the ring runner.

mod buffers;
mod reduce;
pub(crate) mod ring;
pub(crate) mod schedule;

pub use buffers::{Element, InPlaceBuffer, OwnedBuffers, ReduceBuffers, SliceBuffers};
pub(crate) use reduce::reduce_into; // for `pccl::kernels` (benchmarks)
