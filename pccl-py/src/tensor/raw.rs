//! Raw-pointer views of memory owned by Python objects, handed to the core.
//!
//! The addresses come from `TensorView`s whose objects travel with these values (a
//! `KeepAlive`), so the memory outlives every access made here. Callers have already
//! checked lengths, dtypes, devices and overlaps. Two rules keep aliasing sound:
//! results are never written through a `&mut` slice that overlaps a live `&` slice
//! (in-place ops stage their results and copy them in on commit, like the core's
//! `InPlaceBuffer`), and shared-state tensors are checked not to overlap before each gets
//! its `&mut [u8]`.

use pccl::{
    Communicator, DataType, Device, ReduceBuffers, SharedState, Staging, SyncInfo, SyncStrategy,
    TensorInfo, tensor_hash,
};

use super::Loc;
use crate::cuda::{self, Pinned};
use crate::runtime::KeepAlive;

/// A tensor's memory, reduced to plain numbers so it can cross threads.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Region {
    pub(crate) ptr: usize,
    pub(crate) len: usize,
    pub(crate) loc: Loc,
}

impl Region {
    /// Whether the two regions share a byte (on the same device).
    pub(crate) fn overlaps(&self, other: &Self) -> bool {
        self.loc == other.loc
            && self.len > 0
            && other.len > 0
            && self.ptr < other.ptr + other.len
            && other.ptr < self.ptr + self.len
    }
}

/// Host memory owned by a buffer set.
#[derive(Debug)]
enum HostMem {
    Heap(Staging),
    Pinned(Pinned),
}

impl HostMem {
    fn as_slice(&self) -> &[u8] {
        match self {
            Self::Heap(v) => v,
            Self::Pinned(p) => p.as_slice(),
        }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            Self::Heap(v) => v,
            Self::Pinned(p) => p.as_mut_slice(),
        }
    }

    /// A staging buffer for memory at `loc` (recycled host memory for the CPU, whose old
    /// bytes are all overwritten before a commit reads them: `pccl::Staging`).
    fn staging(loc: Loc, len: usize) -> pccl::Result<Self> {
        Ok(match loc {
            Loc::Cpu => Self::Heap(Staging::take(len)),
            Loc::Cuda(ordinal) => Self::Pinned(Pinned::new(ordinal, len)?),
        })
    }
}

/// Reads `len` bytes of user host memory at `ptr`.
///
/// # Safety
/// `ptr` must be valid for reads of `len` bytes for `'a`, with no writer meanwhile
/// except the caller's own Python code (the same contract as PCCL's C API).
unsafe fn host_slice<'a>(ptr: usize, len: usize) -> &'a [u8] {
    if len == 0 {
        return &[];
    }
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts(ptr as *const u8, len) }
}

/// What an op reads.
#[derive(Debug)]
enum Input {
    /// The user's host memory.
    User(usize),
    /// A copy (of a CUDA tensor).
    Copy(HostMem),
}

impl Input {
    /// The `len` input bytes.
    fn bytes(&self, len: usize) -> &[u8] {
        match self {
            // SAFETY: `ptr` is the send tensor's memory, alive while the buffers' `_keep`
            // is; results never go there through a reference while this slice is alive
            // (in place means staged output).
            Self::User(ptr) => unsafe { host_slice(*ptr, len) },
            Self::Copy(m) => m.as_slice(),
        }
    }
}

/// Where results end up.
#[derive(Debug)]
enum Output {
    /// Distinct user host memory, written as results arrive.
    Direct(usize),
    /// Results are staged and copied to `dest` on commit.
    Staged { stage: HostMem, dest: Region },
}

/// Send and receive memory of one all-reduce.
#[derive(Debug)]
pub(crate) struct PyBuffers {
    input: Input,
    /// Bytes of the input.
    len: usize,
    /// Bytes of the result (a reduce-scatter's chunk, an all-gather's whole; else `len`).
    recv_len: usize,
    output: Output,
    commit_error: Option<pccl::Error>,
    _keep: KeepAlive,
}

// SAFETY: the raw addresses name memory kept alive by `_keep` (whose `Py` references may
// be dropped on any thread); the buffers are used by one thread at a time.
unsafe impl Send for PyBuffers {}

impl PyBuffers {
    /// Buffers reading `send` and writing `recv` (equal lengths, same device; either the
    /// same address or not overlapping). Copies a CUDA `send` to the host, so call it
    /// without the GIL.
    pub(crate) fn new(send: Region, recv: Region, keep: KeepAlive) -> pccl::Result<Self> {
        let len = send.len;
        let input = match send.loc {
            Loc::Cpu => Input::User(send.ptr),
            Loc::Cuda(ordinal) => {
                let mut copy = Pinned::new(ordinal, len)?;
                cuda::download(ordinal, send.ptr as u64, &mut copy)?;
                Input::Copy(HostMem::Pinned(copy))
            }
        };
        let output = if recv.loc == Loc::Cpu && recv.ptr != send.ptr {
            Output::Direct(recv.ptr)
        } else {
            Output::Staged {
                stage: HostMem::staging(recv.loc, recv.len)?,
                dest: recv,
            }
        };
        Ok(Self {
            input,
            len,
            recv_len: recv.len,
            output,
            commit_error: None,
            _keep: keep,
        })
    }

    /// An error from copying the results to their destination, if any.
    pub(crate) fn take_commit_error(&mut self) -> Option<pccl::Error> {
        self.commit_error.take()
    }
}

impl ReduceBuffers for PyBuffers {
    fn send(&self) -> &[u8] {
        self.input.bytes(self.len)
    }

    fn recv_len(&self) -> usize {
        self.recv_len
    }

    fn input_and_out(&mut self, offset: usize, len: usize) -> (&[u8], &mut [u8]) {
        let end = offset.checked_add(len);
        assert!(
            end.is_some_and(|e| e <= self.recv_len),
            "result range outside the buffer"
        );
        let input = self.input.bytes(self.len);
        let out = match &mut self.output {
            Output::Direct(_) if len == 0 => &mut [],
            // SAFETY: `offset + len <= recv_len` (checked above) and `ptr` is the receive
            // tensor's memory (alive while `_keep` is), distinct from the send memory;
            // `&mut self` makes this the one live view of it.
            Output::Direct(ptr) => unsafe {
                std::slice::from_raw_parts_mut((*ptr as *mut u8).add(offset), len)
            },
            Output::Staged { stage, .. } => &mut stage.as_mut_slice()[offset..offset + len],
        };
        (input, out)
    }

    fn commit(&mut self) {
        let Output::Staged { stage, dest } = &self.output else {
            return;
        };
        match dest.loc {
            Loc::Cpu => {
                if self.recv_len > 0 {
                    // SAFETY: `dest` is the receive tensor's host memory, `recv_len` bytes,
                    // alive while `_keep` is; `stage` is our own separate allocation and
                    // no slice of `dest` is alive now.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            stage.as_slice().as_ptr(),
                            dest.ptr as *mut u8,
                            self.recv_len,
                        );
                    }
                }
            }
            Loc::Cuda(ordinal) => {
                if let Err(e) = cuda::upload(ordinal, dest.ptr as u64, stage.as_slice()) {
                    self.commit_error = Some(e);
                }
            }
        }
    }
}

/// One tensor of a shared state, reduced to numbers.
#[derive(Debug, Clone)]
pub(crate) struct StateTensor {
    pub(crate) name: String,
    pub(crate) region: Region,
    pub(crate) dtype: DataType,
    pub(crate) allow_content_inequality: bool,
}

/// Whether two regions of the list share a byte (same device).
pub(crate) fn any_overlap(regions: &[Region]) -> bool {
    let mut sorted: Vec<&Region> = regions.iter().filter(|r| r.len > 0).collect();
    sorted.sort_by_key(|r| (format!("{:?}", r.loc), r.ptr));
    sorted
        .windows(2)
        .any(|w| w[0].loc == w[1].loc && w[0].ptr + w[0].len > w[1].ptr)
}

/// Runs one shared-state sync over these tensors. CUDA tensors are copied to pinned host
/// memory first and copied back only if the sync changed them. Returns the elected
/// revision and the transfer figures. The caller keeps the tensors' objects alive.
pub(crate) fn sync_shared_state(
    comm: &Communicator,
    tensors: &[StateTensor],
    revision: u64,
    strategy: SyncStrategy,
) -> pccl::Result<(u64, SyncInfo)> {
    let regions: Vec<Region> = tensors.iter().map(|t| t.region).collect();
    if any_overlap(&regions) {
        return Err(pccl::Error::InvalidArgument(
            "shared-state tensors must not overlap in memory",
        ));
    }
    // Host copies of CUDA tensors, with the hash they had before the sync.
    let mut copies: Vec<Option<(HostMem, u128)>> = Vec::with_capacity(tensors.len());
    for t in tensors {
        copies.push(match t.region.loc {
            Loc::Cpu => None,
            Loc::Cuda(ordinal) => {
                let mut p = Pinned::new(ordinal, t.region.len)?;
                cuda::download(ordinal, t.region.ptr as u64, &mut p)?;
                let h = tensor_hash(p.as_slice());
                Some((HostMem::Pinned(p), h))
            }
        });
    }
    let infos = tensors
        .iter()
        .zip(copies.iter_mut())
        .map(|(t, copy)| {
            let data: &mut [u8] = match copy {
                Some((m, _)) => m.as_mut_slice(),
                None if t.region.len == 0 => &mut [],
                // SAFETY: the tensor's host memory, `len` bytes, alive while `_keep` is;
                // no two tensors overlap (checked above) and nothing else in Rust refers
                // to it during the sync.
                None => unsafe {
                    std::slice::from_raw_parts_mut(t.region.ptr as *mut u8, t.region.len)
                },
            };
            TensorInfo {
                name: t.name.clone(),
                data,
                dtype: t.dtype,
                device: Device::Cpu,
                allow_content_inequality: t.allow_content_inequality,
            }
        })
        .collect();
    let mut state = SharedState {
        revision,
        tensors: infos,
    };
    let info = comm.sync_shared_state(&mut state, strategy)?;
    let revision = state.revision;
    drop(state);
    for (t, copy) in tensors.iter().zip(&copies) {
        let changed = match (copy, t.region.loc) {
            (Some((m, before)), Loc::Cuda(ordinal)) => {
                (tensor_hash(m.as_slice()) != *before).then_some((m, ordinal))
            }
            _ => None,
        };
        if let Some((m, ordinal)) = changed {
            cuda::upload(ordinal, t.region.ptr as u64, m.as_slice())?;
        }
    }
    Ok((revision, info))
}

/// The tensor hash of a region's bytes (a CUDA tensor is copied to the host first), equal
/// for equal bytes on any device.
pub(crate) fn hash(region: Region) -> pccl::Result<u128> {
    match region.loc {
        // SAFETY: the caller keeps the tensor alive for the duration of the call.
        Loc::Cpu => Ok(tensor_hash(unsafe { host_slice(region.ptr, region.len) })),
        Loc::Cuda(ordinal) => {
            let mut p = Pinned::new(ordinal, region.len)?;
            cuda::download(ordinal, region.ptr as u64, &mut p)?;
            Ok(tensor_hash(p.as_slice()))
        }
    }
}
