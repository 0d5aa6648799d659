//! `pcclSynchronizeSharedState`: the C shared state mapped onto the core's.

use std::collections::HashSet;
use std::ffi::CStr;

use pccl::{Communicator, DataType};

use crate::comm::comm_ref;
use crate::handle::{Out, checked, pcclComm_t};
use crate::panic::ffi_boundary;
use crate::reduce::data_type;
use crate::result::pcclResult_t;
use crate::types::{
    RawSyncStrategy, pcclDeviceType_t, pcclSharedState_t, pcclSharedStateSyncInfo_t,
    pcclSharedStateSyncStrategy_t, pcclTensorInfo_t,
};

/// One tensor of the caller's state, checked: its bytes are a valid, exclusive region.
#[derive(Debug)]
struct Tensor<'a> {
    name: String,
    data: &'a mut [u8],
    dtype: DataType,
    allow_content_inequality: bool,
}

/// Checks every tensor and borrows its bytes. Tensors must not overlap (each becomes a
/// `&mut [u8]`), names must be unique UTF-8, and memory must be host memory.
///
/// # Safety
///
/// Each `info.name` is NULL or NUL-terminated; each `info.data` is NULL or holds `count`
/// elements of `datatype`, valid and untouched by anyone else for `'a`.
unsafe fn tensors<'a>(infos: &[pcclTensorInfo_t]) -> Result<Vec<Tensor<'a>>, pcclResult_t> {
    let invalid = pcclResult_t::pcclInvalidArgument;
    let mut names = HashSet::new();
    let mut ranges = Vec::with_capacity(infos.len());
    let mut out = Vec::with_capacity(infos.len());
    for info in infos {
        let name = checked(info.name)?;
        // SAFETY: non-null; NUL-terminated by the contract.
        let name = unsafe { CStr::from_ptr(name.as_ptr()) };
        let name = name.to_str().map_err(|_| invalid)?.to_owned();
        if !names.insert(name.clone()) {
            return Err(invalid);
        }
        let dtype = data_type(info.datatype)?;
        match info.device_type.get().ok_or(invalid)? {
            pcclDeviceType_t::pcclDeviceCpu => {}
            // This library cannot read device memory (pcclBuildInfo_t.has_cuda_support).
            pcclDeviceType_t::pcclDeviceCuda => return Err(invalid),
        }
        let len = info.count.checked_mul(dtype.size()).ok_or(invalid)?;
        let data = checked(info.data.cast_const().cast::<u8>())?;
        let start = data.as_ptr() as usize;
        let end = start.checked_add(len).ok_or(invalid)?;
        if len > isize::MAX as usize {
            return Err(invalid);
        }
        ranges.push((start, end));
        // SAFETY: non-null; `len` bytes valid and exclusively ours for `'a` by the
        // contract, and disjoint from every other tensor's (checked below, before any of
        // these slices is used).
        let data = unsafe { std::slice::from_raw_parts_mut(data.as_ptr(), len) };
        out.push(Tensor {
            name,
            data,
            dtype,
            allow_content_inequality: info.allow_content_inequality,
        });
    }
    ranges.sort_unstable();
    if ranges.windows(2).any(|w| w[0].1 > w[1].0) {
        return Err(invalid);
    }
    Ok(out)
}

/// Joint call per peer group: makes this peer's shared state equal to the group's
/// popular one (by strategy, see `pcclSharedStateSyncStrategy_t`). Every accepted peer of
/// the group calls it with the same tensor names, types and sizes; differing content is
/// fetched and written into the tensors, and `state->revision` is updated. `*info` (if not
/// NULL) gets the bytes moved, on success only.
///
/// Returns `pcclInvalidArgument` for a NULL or invalid pointer, an unknown strategy, data
/// type or device, a duplicate or non-UTF-8 name, overlapping tensors, or CUDA memory;
/// `pcclNoSharedStateAvailable` when no peer's state can be adopted.
///
/// # Safety
///
/// `comm` is NULL or a live, connected handle; `state` is NULL or a readable and writable
/// `pcclSharedState_t` whose `infos` holds `count` readable tensor infos, each naming a
/// NUL-terminated string and a buffer of `count` elements, none touched by anyone else
/// until the call returns; `info` is NULL or writable. Joint calls of one communicator
/// are made one at a time.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pcclSynchronizeSharedState(
    comm: *const pcclComm_t,
    state: *mut pcclSharedState_t,
    strategy: RawSyncStrategy,
    info: *mut pcclSharedStateSyncInfo_t,
) -> pcclResult_t {
    ffi_boundary!({
        let invalid = pcclResult_t::pcclInvalidArgument;
        // SAFETY: forwarded contract.
        let comm = unsafe { comm_ref(comm)? };
        let state = checked(state.cast_const())?.as_ptr();
        let info = Out::optional(info)?;
        let strategy = strategy.get().ok_or(invalid)?;
        // SAFETY: non-null, aligned; readable by the contract. Copied out: we write back
        // only the revision, through the raw pointer, while no reference to it lives.
        let c_state = unsafe { state.read() };
        let infos: &[pcclTensorInfo_t] = if c_state.count == 0 {
            &[]
        } else {
            let infos = checked(c_state.infos.cast_const())?;
            if c_state.count > isize::MAX as usize / size_of::<pcclTensorInfo_t>() {
                return Err(invalid);
            }
            // SAFETY: non-null, aligned, `count` readable infos by the contract.
            unsafe { std::slice::from_raw_parts(infos.as_ptr(), c_state.count) }
        };
        // SAFETY: forwarded contract.
        let tensors = unsafe { tensors(infos)? };
        let (revision, moved) = sync(&comm.comm(), c_state.revision, tensors, strategy)?;
        // SAFETY: writable by the contract; no reference into `*state` is alive.
        unsafe { (*state).revision = revision };
        if let Some(out) = info {
            // SAFETY: writable by the contract.
            unsafe { out.write(moved) };
        }
        Ok(())
    })
}

/// Runs the core's sync over the checked tensors; returns the new revision and the bytes
/// moved.
fn sync(
    comm: &Communicator,
    revision: u64,
    tensors: Vec<Tensor<'_>>,
    strategy: pcclSharedStateSyncStrategy_t,
) -> pccl::Result<(u64, pcclSharedStateSyncInfo_t)> {
    let strategy = match strategy {
        pcclSharedStateSyncStrategy_t::PCCL_SHARED_STATE_SYNC_STRATEGY_ENFORCE_POPULAR => {
            pccl::SyncStrategy::EnforcePopular
        }
        pcclSharedStateSyncStrategy_t::PCCL_SHARED_STATE_SYNC_STRATEGY_RECEIVE_ONLY => {
            pccl::SyncStrategy::ReceiveOnly
        }
        pcclSharedStateSyncStrategy_t::PCCL_SHARED_STATE_SYNC_STRATEGY_SEND_ONLY => {
            pccl::SyncStrategy::SendOnly
        }
    };
    let mut state = pccl::SharedState {
        revision,
        tensors: tensors
            .into_iter()
            .map(|t| pccl::TensorInfo {
                name: t.name,
                data: t.data,
                dtype: t.dtype,
                device: pccl::Device::Cpu,
                allow_content_inequality: t.allow_content_inequality,
            })
            .collect(),
    };
    let moved = comm.sync_shared_state(&mut state, strategy)?;
    let info = pcclSharedStateSyncInfo_t {
        tx_bytes: moved.tx_bytes,
        rx_bytes: moved.rx_bytes,
    };
    Ok((state.revision, info))
}
