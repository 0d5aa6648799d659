//! All-reduce: blocking, async (awaited by tag) and many-with-retry, over raw C buffers.

use std::ffi::{c_int, c_void};
use std::ops::Range;

use pccl::{
    DataType, Quantization, QuantizationAlgorithm, ReduceBuffers, ReduceDescriptor, ReduceInfo,
    ReduceOp, Staging,
};

use crate::comm::comm_ref;
use crate::handle::{Out, checked, pcclComm_t, read_in};
use crate::panic::ffi_boundary;
use crate::result::pcclResult_t;
use crate::types::{
    RawDataType, pcclAsyncReduceOp_t, pcclDataType_t, pcclQuantizationAlgorithm_t, pcclRedOp_t,
    pcclReduceDescriptor_t, pcclReduceInfo_t, pcclReduceOpDescriptor_t,
};

/// The caller's send and receive buffers of one all-reduce, as raw pointers.
///
/// Distinct buffers: results are written straight into `recv`. One buffer (`send ==
/// recv`, in place): results are staged and copied in by `commit`, once the op has
/// succeeded everywhere, as `pccl::InPlaceBuffer` does; so a failed op leaves the input
/// intact for the retry, and no `&mut [u8]` ever aliases the `&[u8]` that `send` returns.
#[derive(Debug)]
pub(crate) struct RawBuffers {
    send: Lent,
    recv: *mut u8,
    recv_len: usize,
    staged: Option<Staging>,
}

// SAFETY: the buffers are plain memory the caller lends for the op's whole life (the
// `# Safety` contract of every function that builds a `RawBuffers`); nothing about them
// is tied to the thread that made the call.
unsafe impl Send for RawBuffers {}

/// The caller's send buffer: `len` readable bytes at `ptr`.
#[derive(Debug)]
struct Lent {
    ptr: *const u8,
    len: usize,
}

impl Lent {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` is non-null and `len` bytes are readable and not written by anyone
        // else while the op runs (caller's contract); in place, `RawBuffers` writes them
        // only in `commit`, which takes `&mut self`, so no slice from here is alive then.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl RawBuffers {
    /// Checks the pointers of an op of `len` bytes. Buffers must be the same or disjoint.
    fn new(send: *const c_void, recv: *mut c_void, len: usize) -> Result<Self, pcclResult_t> {
        Self::sized(send, len, recv, len)
    }

    /// Checks the pointers of an op that reads `send_len` bytes and writes `recv_len`.
    /// Buffers must be the same (in place, equal lengths) or disjoint.
    pub(crate) fn sized(
        send: *const c_void,
        send_len: usize,
        recv: *mut c_void,
        recv_len: usize,
    ) -> Result<Self, pcclResult_t> {
        let send = checked(send.cast::<u8>())?.as_ptr().cast_const();
        let recv = checked(recv.cast_const().cast::<u8>())?.as_ptr();
        let max = isize::MAX as usize;
        if send_len > max
            || recv_len > max
            || (send as usize).checked_add(send_len).is_none()
            || (recv as usize).checked_add(recv_len).is_none()
        {
            return Err(pcclResult_t::pcclInvalidArgument);
        }
        let in_place = send == recv.cast_const();
        if in_place && send_len != recv_len
            || !in_place && overlap(&range(send, send_len), &range(recv, recv_len))
        {
            return Err(pcclResult_t::pcclInvalidArgument);
        }
        Ok(Self {
            send: Lent {
                ptr: send,
                len: send_len,
            },
            recv,
            recv_len,
            staged: in_place.then(|| Staging::take(recv_len)),
        })
    }

    /// Memory the op writes.
    fn written(&self) -> Range<usize> {
        range(self.recv, self.recv_len)
    }

    /// Memory the op only reads (empty in place: the buffer counts as written).
    fn read_only(&self) -> Range<usize> {
        if self.staged.is_some() {
            0..0
        } else {
            range(self.send.ptr, self.send.len)
        }
    }
}

impl ReduceBuffers for RawBuffers {
    fn send(&self) -> &[u8] {
        self.send.bytes()
    }

    fn recv_len(&self) -> usize {
        self.recv_len
    }

    fn input_and_out(&mut self, offset: usize, len: usize) -> (&[u8], &mut [u8]) {
        let end = offset.checked_add(len).expect("result range overflows");
        assert!(
            end <= self.recv_len,
            "result range past the end of the receive buffer"
        );
        let input = self.send.bytes();
        let out = match &mut self.staged {
            Some(staged) => &mut staged[offset..end],
            // SAFETY: `offset..end` lies inside the `recv_len` writable bytes of `recv`,
            // which are disjoint from `send` (checked in `sized`), and nobody else touches
            // them while the op runs (caller's contract); `&mut self` makes this the one
            // live view of them.
            None => unsafe { std::slice::from_raw_parts_mut(self.recv.add(offset), len) },
        };
        (input, out)
    }

    fn commit(&mut self) {
        if let Some(staged) = &self.staged {
            // SAFETY: `recv` has `recv_len` writable bytes; `staged` is our own buffer of that
            // length; no slice returned by `send` is alive (`&mut self`).
            unsafe { std::ptr::copy_nonoverlapping(staged.as_ptr(), self.recv, self.recv_len) };
        }
    }
}

fn range(ptr: *const u8, len: usize) -> Range<usize> {
    let start = ptr as usize;
    start..start + len
}

fn overlap(a: &Range<usize>, b: &Range<usize>) -> bool {
    a.start < b.end && b.start < a.end
}

/// The core's data type for a PCCL one.
pub(crate) fn data_type(raw: RawDataType) -> Result<DataType, pcclResult_t> {
    let dt = raw.get().ok_or(pcclResult_t::pcclInvalidArgument)?;
    Ok(match dt {
        pcclDataType_t::pcclUint8 => DataType::U8,
        pcclDataType_t::pcclInt8 => DataType::I8,
        pcclDataType_t::pcclInt16 => DataType::I16,
        pcclDataType_t::pcclUint16 => DataType::U16,
        pcclDataType_t::pcclUint32 => DataType::U32,
        pcclDataType_t::pcclInt32 => DataType::I32,
        pcclDataType_t::pcclUint64 => DataType::U64,
        pcclDataType_t::pcclInt64 => DataType::I64,
        pcclDataType_t::pcclFloat16 => DataType::F16,
        pcclDataType_t::pcclBFloat16 => DataType::Bf16,
        pcclDataType_t::pcclFloat => DataType::F32,
        pcclDataType_t::pcclDouble => DataType::F64,
    })
}

/// Validates a descriptor and the buffers it describes.
fn prepare(
    send: *const c_void,
    recv: *mut c_void,
    desc: &pcclReduceDescriptor_t,
) -> Result<(RawBuffers, ReduceDescriptor), pcclResult_t> {
    let d = descriptor(desc)?;
    let len = d
        .count
        .checked_mul(d.dtype.size())
        .ok_or(pcclResult_t::pcclInvalidArgument)?;
    Ok((RawBuffers::new(send, recv, len)?, d))
}

/// The core's descriptor for a PCCL one (count at least 1, every enum valid).
pub(crate) fn descriptor(desc: &pcclReduceDescriptor_t) -> Result<ReduceDescriptor, pcclResult_t> {
    let invalid = pcclResult_t::pcclInvalidArgument;
    let dtype = data_type(desc.src_descriptor.datatype)?;
    let op = match desc.op.get().ok_or(invalid)? {
        pcclRedOp_t::pcclSum => ReduceOp::Sum,
        pcclRedOp_t::pcclAvg => ReduceOp::Avg,
        pcclRedOp_t::pcclProd => ReduceOp::Prod,
        pcclRedOp_t::pcclMax => ReduceOp::Max,
        pcclRedOp_t::pcclMin => ReduceOp::Min,
    };
    // Validated, then not used: a hint only.
    desc.src_descriptor.distribution_hint.get().ok_or(invalid)?;
    let algorithm = match desc.quantization_options.algorithm.get().ok_or(invalid)? {
        pcclQuantizationAlgorithm_t::pcclQuantNone => QuantizationAlgorithm::None,
        pcclQuantizationAlgorithm_t::pcclQuantMinMax => QuantizationAlgorithm::MinMax,
        pcclQuantizationAlgorithm_t::pcclQuantZeroPointScale => {
            QuantizationAlgorithm::ZeroPointScale
        }
    };
    // Always a valid enum value; used only when an algorithm is chosen.
    let qtype = data_type(desc.quantization_options.quantized_datatype)?;
    let quantization =
        (algorithm != QuantizationAlgorithm::None).then(|| Quantization::new(algorithm, qtype));
    if desc.count == 0 {
        return Err(invalid);
    }
    let mut d = ReduceDescriptor::new(desc.count, dtype, op).with_tag(desc.tag);
    if let Some(q) = quantization {
        d = d.with_quantization(q);
    }
    Ok(d)
}

fn reduce_info(info: ReduceInfo) -> pcclReduceInfo_t {
    pcclReduceInfo_t {
        local_world_size: info.local_world_size,
        tx_bytes: info.tx_bytes,
        rx_bytes: info.rx_bytes,
    }
}

/// Writes a successful op's figures to the caller's optional `info`.
pub(crate) fn write_info(result: ReduceInfo, info: Option<Out<pcclReduceInfo_t>>) {
    if let Some(out) = info {
        // SAFETY: writable by the caller's contract (checked by `Out::optional`).
        unsafe { out.write(reduce_info(result)) };
    }
}

/// Blocking all-reduce of `desc->count` elements from `sendbuf` into `recvbuf`, which
/// may be the same buffer (in place) but must not otherwise overlap. Every peer of the
/// group calls it with the same descriptor (count, type, op and tag).
///
/// Returns `pcclRankConnectionLost` when a peer was lost (retry, after re-reading the
/// world size), `pcclTooFewPeers` when this peer is alone in its group. On failure an
/// in-place buffer is untouched; a separate `recvbuf` may hold partial results. `*info`
/// is written on success only.
///
/// # Safety
///
/// `desc` is NULL or readable; `comm` is NULL or a live, connected handle; `info` is NULL
/// or writable. `sendbuf` and `recvbuf` are NULL (`pcclInvalidArgument`) or hold `count`
/// elements each; neither is touched by anyone else until the call returns. Thread-safe:
/// concurrent all-reduces of one communicator need distinct tags.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pcclAllReduce(
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
        let (bufs, desc) = prepare(sendbuf, recvbuf, &desc)?;
        let result = state.comm().all_reduce_with(bufs, desc)?;
        write_info(result, info);
        Ok(())
    })
}

/// Starts an all-reduce and returns at once; `*handle_out` names it for
/// `pcclAwaitAsyncReduce`, which must be called exactly once per started op. Buffers and
/// descriptor rules are those of `pcclAllReduce`; a tag already in flight on this
/// communicator (started and not yet awaited) is `pcclInvalidUsage`. `*handle_out` is
/// written on success only.
///
/// # Safety
///
/// As `pcclAllReduce`, except that the buffers must stay valid, and untouched by anyone
/// else, until `pcclAwaitAsyncReduce` for the op has returned (or the communicator has
/// been destroyed). `handle_out` is NULL or writable. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pcclAllReduceAsync(
    sendbuf: *const c_void,
    recvbuf: *mut c_void,
    desc: *const pcclReduceDescriptor_t,
    comm: *const pcclComm_t,
    handle_out: *mut pcclAsyncReduceOp_t,
) -> pcclResult_t {
    ffi_boundary!({
        // SAFETY: forwarded contracts.
        let (state, desc) = unsafe { (comm_ref(comm)?, read_in(desc)?) };
        let out = Out::new(handle_out)?;
        let (bufs, desc) = prepare(sendbuf, recvbuf, &desc)?;
        let mut ops = state.async_ops();
        if ops.contains_key(&desc.tag) {
            return Err(pcclResult_t::pcclInvalidUsage);
        }
        let op = state.comm().all_reduce_async(bufs, desc)?;
        ops.insert(desc.tag, op);
        drop(ops);
        let handle = pcclAsyncReduceOp_t {
            comm: comm.cast_mut(),
            tag: desc.tag,
        };
        // SAFETY: writable by the contract.
        unsafe { out.write(handle) };
        Ok(())
    })
}

/// Waits for the async all-reduce `*handle` names and returns its outcome (the codes of
/// `pcclAllReduce`). The op is finished afterwards, whatever the outcome: its buffers are
/// the caller's again and its tag may be reused. A handle whose op was already awaited,
/// or never started, is `pcclInvalidArgument`. `*info` is written on success only.
///
/// # Safety
///
/// `handle` is NULL or readable, and `handle->comm` is NULL or a live handle; `info` is
/// NULL or writable. Thread-safe; ops may be awaited in any order and from any thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pcclAwaitAsyncReduce(
    handle: *const pcclAsyncReduceOp_t,
    info: *mut pcclReduceInfo_t,
) -> pcclResult_t {
    ffi_boundary!({
        // SAFETY: forwarded contract.
        let handle = unsafe { read_in(handle)? };
        // SAFETY: forwarded contract.
        let state = unsafe { comm_ref(handle.comm)? };
        let info = Out::optional(info)?;
        let op = state
            .async_ops()
            .remove(&handle.tag)
            .ok_or(pcclResult_t::pcclInvalidArgument)?;
        let (_, result) = op.wait();
        let result = result?;
        write_info(result, info);
        Ok(())
    })
}

/// Runs every op of `descs[0..count]`, at most `max_in_flight` at once, retrying each one
/// that fails because a peer was lost, until all have succeeded (`pcclSuccess`) or fewer
/// than two peers remain in the group (`pcclTooFewPeers`). `*info` gets the summed bytes
/// and the last group size, on success only. `count` 0 succeeds at once with zeroed info.
///
/// Each op's buffers follow `pcclAllReduce`'s rules; across ops, a buffer that any op
/// writes must not overlap any other op's buffers (send buffers may be shared). Tags must
/// be distinct. `max_in_flight` < 1 is `pcclInvalidArgument`.
///
/// # Safety
///
/// `descs` is NULL or points to `count` readable descriptors whose buffers are valid and
/// untouched by anyone else until the call returns; `comm` is NULL or a live, connected
/// handle; `info` is NULL or writable. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pcclAllReduceMultipleWithRetry(
    descs: *const pcclReduceOpDescriptor_t,
    count: usize,
    comm: *const pcclComm_t,
    info: *mut pcclReduceInfo_t,
    max_in_flight: c_int,
) -> pcclResult_t {
    ffi_boundary!({
        let invalid = pcclResult_t::pcclInvalidArgument;
        // SAFETY: forwarded contract.
        let state = unsafe { comm_ref(comm)? };
        let descs = checked(descs)?;
        let info = Out::optional(info)?;
        let max_in_flight = usize::try_from(max_in_flight).map_err(|_| invalid)?;
        if max_in_flight == 0 || count > isize::MAX as usize / size_of::<pcclReduceOpDescriptor_t>()
        {
            return Err(invalid);
        }
        // SAFETY: non-null and aligned (checked), `count` readable descriptors by the
        // contract, and we only read them.
        let descs = unsafe { std::slice::from_raw_parts(descs.as_ptr(), count) };
        let mut ops = Vec::with_capacity(count);
        for d in descs {
            ops.push(prepare(d.sendbuf, d.recvbuf, &d.descriptor)?);
        }
        check_disjoint(&ops)?;
        let result = if ops.is_empty() {
            ReduceInfo::default()
        } else {
            state
                .comm()
                .all_reduce_multiple_with_retry(&mut ops, max_in_flight)?
        };
        write_info(result, info);
        Ok(())
    })
}

/// Ops that run together must not write memory another op reads or writes, and need
/// distinct tags.
fn check_disjoint(ops: &[(RawBuffers, ReduceDescriptor)]) -> Result<(), pcclResult_t> {
    for (i, (a, da)) in ops.iter().enumerate() {
        for (b, db) in &ops[i + 1..] {
            let clash = da.tag == db.tag
                || overlap(&a.written(), &b.written())
                || overlap(&a.written(), &b.read_only())
                || overlap(&a.read_only(), &b.written());
            if clash {
                return Err(pcclResult_t::pcclInvalidArgument);
            }
        }
    }
    Ok(())
}
