//! All-reduce plumbing: checking a send/recv pair, `ReduceOpDescriptor` for
//! `all_reduce_multiple_with_retry`, and `AsyncReduceHandle`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;

use pccl::{AsyncReduce, ReduceDescriptor as CoreDescriptor};
use pyo3::prelude::*;

use crate::errors::{PcclErr, invalid_argument, invalid_usage};
use crate::runtime::{KeepAlive, Owner, SLICE, panic_message};
use crate::tensor::raw::{PyBuffers, Region};
use crate::tensor::{Kind, TensorView, view, view_of};
use crate::types::{
    QuantizationOptions, ReduceDescriptor, ReduceInfo, ReduceOperandDescriptor, quantization,
    reduce_op,
};

/// A checked all-reduce: memory regions, descriptor and the objects to keep alive. The
/// buffers themselves are built without the GIL (`PyBuffers::new` may copy from a GPU).
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) send: Region,
    pub(crate) recv: Region,
    pub(crate) desc: CoreDescriptor,
    pub(crate) keep: KeepAlive,
}

impl Plan {
    pub(crate) fn buffers(self) -> pccl::Result<(PyBuffers, CoreDescriptor)> {
        Ok((PyBuffers::new(self.send, self.recv, self.keep)?, self.desc))
    }
}

/// What every send/recv pair must share: torch or numpy, dtype, device; and a writable
/// `recv`.
fn same_kind_type_and_device(send: &TensorView, recv: &TensorView) -> PyResult<()> {
    if send.kind != recv.kind {
        return Err(invalid_argument(
            "send and recv must both be torch tensors or both numpy arrays",
        ));
    }
    if send.dtype != recv.dtype {
        return Err(invalid_argument(format!(
            "send and recv differ in dtype ({:?} vs {:?})",
            send.dtype, recv.dtype
        )));
    }
    if send.loc != recv.loc {
        return Err(invalid_argument(format!(
            "send and recv are on different devices ({:?} vs {:?})",
            send.loc, recv.loc
        )));
    }
    if !recv.writable {
        return Err(invalid_argument("recv is read-only"));
    }
    Ok(())
}

/// Checks a send/recv pair and builds the plan for reducing their first `count` elements
/// (all of them when `None`).
pub(crate) fn plan(
    send: TensorView,
    recv: TensorView,
    count: Option<usize>,
    op: pccl::ReduceOp,
    tag: u64,
    operand: Option<&Bound<'_, ReduceOperandDescriptor>>,
    quant: Option<pccl::Quantization>,
) -> PyResult<Plan> {
    same_kind_type_and_device(&send, &recv)?;
    if send.numel != recv.numel {
        return Err(invalid_argument(format!(
            "send and recv differ in size ({} vs {} elements)",
            send.numel, recv.numel
        )));
    }
    if send.ptr != recv.ptr && send.overlaps(&recv) {
        return Err(invalid_argument(
            "send and recv overlap partially; pass the same tensor for an in-place reduce",
        ));
    }
    if operand.is_some_and(|d| d.get().datatype != send.dtype) {
        return Err(invalid_argument(
            "operand_descriptor.datatype does not match the tensors' dtype",
        ));
    }
    let count = count.unwrap_or(send.numel);
    if count > send.numel {
        return Err(invalid_argument(format!(
            "count {count} exceeds the tensors' {} elements",
            send.numel
        )));
    }
    let len = count * send.dtype.size();
    Ok(Plan {
        send: Region {
            ptr: send.ptr,
            len,
            loc: send.loc,
        },
        recv: Region {
            ptr: recv.ptr,
            len,
            loc: recv.loc,
        },
        desc: {
            let d = CoreDescriptor::new(count, send.dtype, op).with_tag(tag);
            match quant {
                Some(q) => d.with_quantization(q),
                None => d,
            }
        },
        keep: vec![send.obj, recv.obj],
    })
}

/// Reads and checks the arguments of `all_reduce`/`all_reduce_async`.
pub(crate) fn plan_call(
    send: &Bound<'_, PyAny>,
    recv: &Bound<'_, PyAny>,
    op: &Bound<'_, PyAny>,
    tag: u64,
    operand_descriptor: Option<&Bound<'_, ReduceOperandDescriptor>>,
    quantization_options: Option<&Bound<'_, QuantizationOptions>>,
) -> PyResult<Plan> {
    let op = reduce_op(op)?;
    let send = view(send, "send")?;
    let recv = view(recv, "recv")?;
    let quant = quantization(quantization_options);
    plan(send, recv, None, op, tag, operand_descriptor, quant)
}

/// One op of `all_reduce_multiple_with_retry`: a send/recv pair and its descriptor.
#[pyclass(module = "pccl._pccl", frozen)]
#[derive(Debug)]
pub(crate) struct ReduceOpDescriptor {
    send: Py<PyAny>,
    recv: Py<PyAny>,
    kind: Kind,
    descriptor: Py<ReduceDescriptor>,
}

impl ReduceOpDescriptor {
    fn build(
        send: &Bound<'_, PyAny>,
        recv: &Bound<'_, PyAny>,
        descriptor: &Bound<'_, ReduceDescriptor>,
        kind: Kind,
    ) -> PyResult<Self> {
        let me = Self {
            send: send.clone().unbind(),
            recv: recv.clone().unbind(),
            kind,
            descriptor: descriptor.clone().unbind(),
        };
        me.plan(send.py())?;
        Ok(me)
    }

    /// Re-reads the tensors (they may have moved since) and checks them.
    pub(crate) fn plan(&self, py: Python<'_>) -> PyResult<Plan> {
        let d = self.descriptor.bind(py).get();
        let send = view_of(self.send.bind(py), self.kind, "send")?;
        let recv = view_of(self.recv.bind(py), self.kind, "recv")?;
        plan(
            send,
            recv,
            Some(d.count),
            d.op,
            d.tag,
            d.operand_descriptor.as_ref().map(|o| o.bind(py)),
            quantization(d.quantization_options.as_ref().map(|q| q.bind(py))),
        )
    }
}

#[pymethods]
impl ReduceOpDescriptor {
    /// An op over two contiguous torch tensors (CPU or CUDA) of equal dtype and size.
    #[staticmethod]
    fn from_torch(
        send: &Bound<'_, PyAny>,
        recv: &Bound<'_, PyAny>,
        reduce_descriptor: &Bound<'_, ReduceDescriptor>,
    ) -> PyResult<Self> {
        Self::build(send, recv, reduce_descriptor, Kind::Torch)
    }

    /// An op over two C-contiguous numpy arrays of equal dtype and size.
    #[staticmethod]
    fn from_numpy(
        send: &Bound<'_, PyAny>,
        recv: &Bound<'_, PyAny>,
        reduce_descriptor: &Bound<'_, ReduceDescriptor>,
    ) -> PyResult<Self> {
        Self::build(send, recv, reduce_descriptor, Kind::Numpy)
    }

    #[getter]
    fn send(&self, py: Python<'_>) -> Py<PyAny> {
        self.send.clone_ref(py)
    }

    #[getter]
    fn recv(&self, py: Python<'_>) -> Py<PyAny> {
        self.recv.clone_ref(py)
    }

    #[getter]
    fn reduce_descriptor(&self, py: Python<'_>) -> Py<ReduceDescriptor> {
        self.descriptor.clone_ref(py)
    }
}

/// The outcome `wait` reports: (is_success, status, info).
type Outcome = (bool, i32, ReduceInfo);

#[derive(Debug)]
enum HandleState {
    Running(AsyncReduce<PyBuffers>),
    /// Another thread is waiting on it.
    Taken,
    Done(Outcome),
}

/// An all-reduce running in the background (`Communicator.all_reduce_async`).
#[pyclass(module = "pccl._pccl", frozen)]
#[derive(Debug)]
pub(crate) struct AsyncReduceHandle {
    state: Mutex<HandleState>,
    owner: Owner,
}

impl AsyncReduceHandle {
    pub(crate) fn new(op: AsyncReduce<PyBuffers>, owner: Owner) -> Self {
        Self {
            state: Mutex::new(HandleState::Running(op)),
            owner,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HandleState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn outcome(mut bufs: PyBuffers, r: pccl::Result<pccl::ReduceInfo>) -> Outcome {
    let r = r.and_then(|info| bufs.take_commit_error().map_or(Ok(info), Err));
    drop(bufs);
    match r {
        Ok(info) => (true, 0, info.into()),
        Err(e) => (false, e.code() as i32, ReduceInfo::default()),
    }
}

#[pymethods]
impl AsyncReduceHandle {
    /// Waits (GIL released, Ctrl-C honoured) for the op; returns
    /// `(is_success, status, ReduceInfo)`. A failed op is reported, not raised. Later
    /// calls return the same tuple.
    fn wait(&self, py: Python<'_>) -> PyResult<Outcome> {
        self.owner.check("async reduce handle")?;
        let mut op = {
            let mut state = self.lock();
            match std::mem::replace(&mut *state, HandleState::Taken) {
                HandleState::Running(op) => op,
                HandleState::Done(o) => {
                    *state = HandleState::Done(o);
                    return Ok(o);
                }
                HandleState::Taken => {
                    return Err(invalid_usage("another thread is waiting on this handle"));
                }
            }
        };
        loop {
            let step = py.detach(|| catch_unwind(AssertUnwindSafe(|| op.wait_timeout(SLICE))));
            match step {
                Ok(Some((bufs, r))) => {
                    let o = outcome(bufs, r);
                    *self.lock() = HandleState::Done(o);
                    return Ok(o);
                }
                Ok(None) => {
                    if let Err(e) = py.check_signals() {
                        *self.lock() = HandleState::Running(op);
                        return Err(e);
                    }
                }
                Err(p) => {
                    let e = pccl::Error::Internal(format!(
                        "panic in an async all-reduce: {}",
                        panic_message(&p)
                    ));
                    let o = (false, e.code() as i32, ReduceInfo::default());
                    *self.lock() = HandleState::Done(o);
                    return Err(PcclErr(e).into());
                }
            }
        }
    }

    /// Whether `wait` would return at once.
    fn is_finished(&self) -> bool {
        match &*self.lock() {
            HandleState::Running(op) => op.is_finished(),
            HandleState::Taken => false,
            HandleState::Done(_) => true,
        }
    }
}

/// Checks the tensors of a reduce-scatter, all-gather or broadcast (pccl extensions,
/// docs/ARCHITECTURE.md §5.1) and builds its plan. The core checks the sizes against the
/// ring (`InvalidArgumentError` when they do not fit it).
pub(crate) fn plan_collective(
    send: &Bound<'_, PyAny>,
    recv: &Bound<'_, PyAny>,
    kind: pccl::Collective,
    op: pccl::ReduceOp,
    tag: u64,
    quant: Option<pccl::Quantization>,
) -> PyResult<Plan> {
    let send = view(send, "send")?;
    let recv = view(recv, "recv")?;
    same_kind_type_and_device(&send, &recv)?;
    let in_place = send.ptr == recv.ptr && send.numel == recv.numel;
    if !in_place && send.overlaps(&recv) {
        return Err(invalid_argument("send and recv overlap"));
    }
    if send.numel == 0 || recv.numel == 0 {
        return Err(invalid_argument("the tensors must not be empty"));
    }
    let count = match kind {
        pccl::Collective::AllGather => recv.numel,
        _ => send.numel,
    };
    let size = send.dtype.size();
    let desc = CoreDescriptor::new(count, send.dtype, op).with_tag(tag);
    Ok(Plan {
        send: Region {
            ptr: send.ptr,
            len: send.numel * size,
            loc: send.loc,
        },
        recv: Region {
            ptr: recv.ptr,
            len: recv.numel * size,
            loc: recv.loc,
        },
        desc: match quant {
            Some(q) => desc.with_quantization(q),
            None => desc,
        },
        keep: vec![send.obj, recv.obj],
    })
}
