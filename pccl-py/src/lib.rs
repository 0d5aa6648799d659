//! Python bindings for pccl: the native module `pccl._pccl`, re-exported by the `pccl`
//! package (`python/pccl/`), which adds the enums and the `pccl.master` entry point.
//!
//! Layout: `errors` (exception classes, the one translation from `pccl::Error`),
//! `runtime` (how blocking calls run: helper thread, GIL released, signals checked; fork
//! policy), `tensor` (torch/numpy memory without importing torch; raw views in
//! `tensor::raw`), `cuda` (pinned-memory staging of CUDA tensors, driver loaded at run
//! time), and one module per Python class group.

#![deny(unsafe_op_in_unsafe_fn)]

mod communicator;
#[cfg(feature = "cuda")]
mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "nocuda.rs"]
mod cuda;
mod errors;
mod master;
mod reduce;
mod runtime;
mod secret;
mod shared_state;
mod tensor;
mod types;

use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Whether CUDA tensors can be used: built with CUDA support, a driver is installed and
/// a device is present.
#[pyfunction]
fn is_cuda_available() -> bool {
    cuda::is_available()
}

/// Build facts (PCCL's `pcclGetBuildInfo`): `{"has_cuda_support": bool}`.
#[pyfunction]
fn build_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("has_cuda_support", cfg!(feature = "cuda"))?;
    d.set_item("version", env!("CARGO_PKG_VERSION"))?;
    Ok(d)
}

/// The pccl hash (xxh3-128) of a contiguous tensor's or array's bytes, as a shared-state
/// sync computes it. A CUDA tensor hashes like the same bytes on the CPU.
#[pyfunction]
fn tensor_hash(py: Python<'_>, tensor: &Bound<'_, PyAny>) -> PyResult<u128> {
    let v = tensor::view(tensor, "tensor")?;
    let region = tensor::raw::Region {
        ptr: v.ptr,
        len: v.nbytes,
        loc: v.loc,
    };
    runtime::blocking(py, vec![v.obj], move || tensor::raw::hash(region))
}

#[pymodule]
fn _pccl(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // `PCCL_LOG` works as in Rust and C programs: read once, at import.
    pccl::init_logging();
    errors::register(m)?;
    m.add_class::<master::MasterNode>()?;
    m.add_class::<communicator::Communicator>()?;
    m.add_class::<reduce::AsyncReduceHandle>()?;
    m.add_class::<reduce::ReduceOpDescriptor>()?;
    m.add_class::<shared_state::TensorInfo>()?;
    m.add_class::<shared_state::SharedState>()?;
    m.add_class::<types::ReduceInfo>()?;
    m.add_class::<types::SharedStateSyncInfo>()?;
    m.add_class::<types::ReduceOperandDescriptor>()?;
    m.add_class::<types::QuantizationOptions>()?;
    m.add_class::<types::ReduceDescriptor>()?;
    m.add_function(wrap_pyfunction!(is_cuda_available, m)?)?;
    m.add_function(wrap_pyfunction!(build_info, m)?)?;
    m.add_function(wrap_pyfunction!(tensor_hash, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
