//! pccl extensions beyond PCCL 1.0: reduce-scatter, all-gather and broadcast over raw C
//! buffers, and the rank query (docs/ARCHITECTURE.md §5.1). PCCL 1.0's functions and
//! layouts are untouched; these take the same descriptor and info types.

use std::ffi::{c_int, c_void};

use pccl::{Attribute, Collective, ReduceDescriptor, ReduceOp};

use crate::comm::comm_ref;
use crate::handle::{Out, pcclComm_t, read_in};
use crate::panic::ffi_boundary;
use crate::reduce::{RawBuffers, data_type, descriptor, write_info};
use crate::result::pcclResult_t;
use crate::types::{RawDataType, pcclReduceDescriptor_t, pcclReduceInfo_t};

/// `count` elements of `size` bytes, times `world`; `pcclInvalidArgument` on overflow.
fn bytes(count: usize, size: usize, world: usize) -> Result<usize, pcclResult_t> {
    count
        .checked_mul(size)
        .and_then(|b| b.checked_mul(world))
        .ok_or(pcclResult_t::pcclInvalidArgument)
}

/// NULL buffers are refused before the world size is read (which needs a connection).
fn no_null(send: *const c_void, recv: *mut c_void) -> Result<(), pcclResult_t> {
    if send.is_null() || recv.is_null() {
        return Err(pcclResult_t::pcclInvalidArgument);
    }
    Ok(())
}

/// Writes the op's figures to `info` (if given) on success.
/// A collective's `count` and `datatype` as the caller gave them: an unknown type or no
/// elements is `pcclInvalidArgument`.
fn elements(count: usize, datatype: RawDataType) -> Result<pccl::DataType, pcclResult_t> {
    let dtype = data_type(datatype)?;
    if count == 0 {
        return Err(pcclResult_t::pcclInvalidArgument);
    }
    Ok(dtype)
}

/// pccl extension (not in PCCL 1.0): blocking reduce-scatter. `sendbuf` holds
/// `world × desc->count` elements, `recvbuf` `desc->count`, where `world` is the peer
/// group's size (`PCCL_ATTRIBUTE_PEER_GROUP_WORLD_SIZE`); rank `r` (`pcclGetRank`)
/// receives block `r` of the send buffers (elements `r·count .. (r+1)·count`) reduced
/// over every rank with `desc->op`: the bits an all-reduce of the same inputs leaves
/// there (`pcclAvg` divides once). `desc->quantization_options` apply as to
/// `pcclAllReduce`. The buffers must not overlap.
///
/// Every peer of the group calls it with the same descriptor. `pcclRankConnectionLost`:
/// a peer was lost; read the world size and rank again, size the buffers for them and
/// retry. A world size that changed between that read and the call is
/// `pcclInvalidArgument` here (and `pcclInvalidUsage` on the other peers): retry.
/// `*info` is written on success only.
///
/// # Safety
///
/// `desc` is NULL or readable; `comm` is NULL or a live, connected handle; `info` is NULL
/// or writable. `sendbuf` and `recvbuf` are NULL (`pcclInvalidArgument`) or hold the
/// elements above; neither is touched by anyone else until the call returns. Thread-safe:
/// concurrent ops of one communicator need distinct tags.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pcclReduceScatter(
    sendbuf: *const c_void,
    recvbuf: *mut c_void,
    desc: *const pcclReduceDescriptor_t,
    comm: *const pcclComm_t,
    info: *mut pcclReduceInfo_t,
) -> pcclResult_t {
    ffi_boundary!({
        // SAFETY: forwarded contracts.
        let (state, desc) = unsafe { (comm_ref(comm)?, read_in(desc)?) };
        let info = Out::optional(info)?;
        let mut d = descriptor(&desc)?;
        no_null(sendbuf, recvbuf)?;
        let comm = state.comm();
        let world = comm.attribute(Attribute::PeerGroupWorldSize)?.max(1);
        let size = d.dtype.size();
        let bufs = RawBuffers::sized(
            sendbuf,
            bytes(d.count, size, world)?,
            recvbuf,
            bytes(d.count, size, 1)?,
        )?;
        d.count *= world;
        write_info(
            comm.collective_with(bufs, d, Collective::ReduceScatter)?,
            info,
        );
        Ok(())
    })
}

/// pccl extension (not in PCCL 1.0): blocking all-gather. `sendbuf` holds `count`
/// elements of `datatype`, `recvbuf` `world × count`; block `r` of every peer's
/// `recvbuf` is rank `r`'s `sendbuf`, bit for bit. Errors and retry as
/// `pcclReduceScatter`. The buffers must not overlap.
///
/// # Safety
///
/// `comm` is NULL or a live, connected handle; `info` is NULL or writable; `sendbuf` and
/// `recvbuf` are NULL (`pcclInvalidArgument`) or hold the elements above, untouched by
/// anyone else until the call returns. Thread-safe: concurrent ops need distinct tags.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pcclAllGather(
    sendbuf: *const c_void,
    recvbuf: *mut c_void,
    count: usize,
    datatype: RawDataType,
    tag: u64,
    comm: *const pcclComm_t,
    info: *mut pcclReduceInfo_t,
) -> pcclResult_t {
    ffi_boundary!({
        // SAFETY: forwarded contract.
        let state = unsafe { comm_ref(comm)? };
        let info = Out::optional(info)?;
        let dtype = elements(count, datatype)?;
        no_null(sendbuf, recvbuf)?;
        let comm = state.comm();
        let world = comm.attribute(Attribute::PeerGroupWorldSize)?.max(1);
        let size = dtype.size();
        let bufs = RawBuffers::sized(
            sendbuf,
            bytes(count, size, 1)?,
            recvbuf,
            bytes(count, size, world)?,
        )?;
        let d = ReduceDescriptor::new(count * world, dtype, ReduceOp::Sum).with_tag(tag);
        write_info(comm.collective_with(bufs, d, Collective::AllGather)?, info);
        Ok(())
    })
}

/// pccl extension (not in PCCL 1.0): blocking broadcast. Rank `root`'s `count` elements
/// of `datatype` in `buf` are copied into every peer's `buf`, bit for bit. On failure
/// `buf` is untouched. A `root` that is not a rank of the group's ring is
/// `pcclInvalidArgument` on every peer; a lost peer is `pcclRankConnectionLost` (read the
/// rank of the root again and retry).
///
/// # Safety
///
/// `comm` is NULL or a live, connected handle; `info` is NULL or writable; `buf` is NULL
/// (`pcclInvalidArgument`) or holds `count` elements, untouched by anyone else until the
/// call returns. Thread-safe: concurrent ops need distinct tags.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pcclBroadcast(
    buf: *mut c_void,
    count: usize,
    datatype: RawDataType,
    root: c_int,
    tag: u64,
    comm: *const pcclComm_t,
    info: *mut pcclReduceInfo_t,
) -> pcclResult_t {
    ffi_boundary!({
        // SAFETY: forwarded contract.
        let state = unsafe { comm_ref(comm)? };
        let info = Out::optional(info)?;
        let dtype = elements(count, datatype)?;
        let root = u32::try_from(root).map_err(|_| pcclResult_t::pcclInvalidArgument)?;
        let len = bytes(count, dtype.size(), 1)?;
        let bufs = RawBuffers::sized(buf.cast_const(), len, buf, len)?;
        let d = ReduceDescriptor::new(count, dtype, ReduceOp::Sum).with_tag(tag);
        let kind = Collective::Broadcast { root };
        write_info(state.comm().collective_with(bufs, d, kind)?, info);
        Ok(())
    })
}

/// pccl extension (not in PCCL 1.0): writes this peer's rank to `*rank_out`: its position
/// in its peer group's ring of the current topology (0 .. world size − 1), the rank the
/// collectives use. It changes when the topology does; read it again after a failed op.
/// Before `pcclConnect` the call is `pcclInvalidUsage`.
///
/// # Safety
///
/// `comm` is NULL or a live handle; `rank_out` is NULL or writable. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pcclGetRank(
    comm: *const pcclComm_t,
    rank_out: *mut c_int,
) -> pcclResult_t {
    ffi_boundary!({
        // SAFETY: forwarded contract.
        let state = unsafe { comm_ref(comm)? };
        let out = Out::new(rank_out)?;
        let rank = state.comm().rank()?;
        // SAFETY: writable by the contract.
        unsafe { out.write(c_int::try_from(rank).unwrap_or(c_int::MAX)) };
        Ok(())
    })
}
