//! Exceptions: `PCCLError(RuntimeError)` with `.result` (the PCCL result code, an
//! `IntEnum` member, also readable as `.code`) and the subclasses users branch on.
//!
//! With the stable ABI (abi3) a Rust class cannot extend a built-in exception, so the
//! hierarchy is a few lines of Python compiled into this module at import time; every
//! `pccl::Error` becomes one of these classes through the single `From` below.

use std::ffi::CStr;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;

const ERRORS_PY: &CStr = cr#"
import enum

class Result(enum.IntEnum):
    """PCCL result codes (``pcclResult_t``)."""
    SUCCESS = 0
    NOT_INITIALIZED = 1
    INTERNAL_ERROR = 2
    INVALID_ARGUMENT = 3
    INVALID_USAGE = 4
    TOO_FEW_PEERS = 5
    MASTER_CONNECTION_FAILED = 6
    RANK_CONNECTION_FAILED = 7
    RANK_CONNECTION_LOST = 8
    NO_SHARED_STATE_AVAILABLE = 9
    PENDING_ASYNC_OPS = 10
    UPDATE_TOPOLOGY_FAILED = 11
    TOPOLOGY_OPTIMIZATION_FAILED = 12

class PCCLError(RuntimeError):
    """A failed pccl call. ``.result`` (also ``.code``) is the PCCL result code."""
    _default_result = Result.INTERNAL_ERROR

    def __init__(self, message="", result=None):
        super().__init__(message)
        if result is None:
            result = self._default_result
        try:
            result = Result(int(result))
        except ValueError:
            result = int(result)
        self.result = result

    @property
    def code(self):
        return int(self.result)

    def __reduce__(self):
        return (type(self), (str(self), int(self.result)))

class InvalidArgumentError(PCCLError, ValueError):
    """An argument is invalid (wrong dtype, size, layout, device or value)."""
    _default_result = Result.INVALID_ARGUMENT

class InvalidUsageError(PCCLError):
    """The call is not allowed now (before connect, twice, after close, ...)."""
    _default_result = Result.INVALID_USAGE

class TooFewPeersError(PCCLError):
    """The operation needs at least two peers in the group."""
    _default_result = Result.TOO_FEW_PEERS

class MasterConnectionError(PCCLError, ConnectionError):
    """The master cannot be reached, or the connection to it was lost."""
    _default_result = Result.MASTER_CONNECTION_FAILED

class ConnectionLostError(PCCLError, ConnectionError):
    """A peer taking part in the operation was lost; the op failed everywhere: retry it."""
    _default_result = Result.RANK_CONNECTION_LOST

class UpdateTopologyFailedError(PCCLError):
    """The topology update failed; it is retryable."""
    _default_result = Result.UPDATE_TOPOLOGY_FAILED

for _cls in (Result, PCCLError, InvalidArgumentError, InvalidUsageError, TooFewPeersError,
             MasterConnectionError, ConnectionLostError, UpdateTopologyFailedError):
    _cls.__module__ = "pccl"
del _cls
"#;

/// Names the snippet defines, added to the native module.
pub(crate) const EXPORTED: [&str; 8] = [
    "Result",
    "PCCLError",
    "InvalidArgumentError",
    "InvalidUsageError",
    "TooFewPeersError",
    "MasterConnectionError",
    "ConnectionLostError",
    "UpdateTopologyFailedError",
];

static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    MODULE
        .get_or_try_init(py, || {
            PyModule::from_code(py, ERRORS_PY, c"pccl/_errors.py", c"pccl._errors")
                .map(Bound::unbind)
        })
        .map(|m| m.bind(py))
}

/// Adds the exception classes to the native module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let errors = module(m.py())?;
    for name in EXPORTED {
        m.add(name, errors.getattr(name)?)?;
    }
    Ok(())
}

/// The class for a result code.
fn class_name(code: i32) -> &'static str {
    match code {
        3 => "InvalidArgumentError",
        4 => "InvalidUsageError",
        5 => "TooFewPeersError",
        6 => "MasterConnectionError",
        8 => "ConnectionLostError",
        11 => "UpdateTopologyFailedError",
        _ => "PCCLError",
    }
}

/// An exception of the class for `code`, carrying `message`.
pub(crate) fn new_error(py: Python<'_>, code: i32, message: String) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let cls = module(py)?.getattr(class_name(code))?;
        Ok(PyErr::from_value(cls.call1((message.clone(), code))?))
    };
    build().unwrap_or_else(|e| e)
}

/// `InvalidArgumentError` (a `ValueError` and a `PCCLError`) with this message.
pub(crate) fn invalid_argument(message: impl Into<String>) -> PyErr {
    Python::attach(|py| new_error(py, 3, message.into()))
}

/// `InvalidUsageError` with this message.
pub(crate) fn invalid_usage(message: impl Into<String>) -> PyErr {
    Python::attach(|py| new_error(py, 4, message.into()))
}

/// `PCCLError` with the internal-error code.
pub(crate) fn internal(message: impl Into<String>) -> PyErr {
    Python::attach(|py| new_error(py, 2, message.into()))
}

/// The one translation from core errors to Python exceptions.
pub(crate) struct PcclErr(pub(crate) pccl::Error);

impl From<pccl::Error> for PcclErr {
    fn from(e: pccl::Error) -> Self {
        Self(e)
    }
}

impl From<PcclErr> for PyErr {
    fn from(e: PcclErr) -> Self {
        let code = e.0.code() as i32;
        Python::attach(|py| new_error(py, code, e.0.to_string()))
    }
}

/// Converts a core result into a Python one.
pub(crate) fn check<T>(r: pccl::Result<T>) -> PyResult<T> {
    r.map_err(|e| PcclErr(e).into())
}
