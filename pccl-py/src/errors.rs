//! Exceptions: `PCCLError(RuntimeError)` with `.result` (the PCCL result code, an
//! `IntEnum` member, also readable as `.code`) and one subclass per failure code.
//!
//! The `Result` enum and the subclasses are generated when the module is imported from
//! the core's table of result codes (`pccl::ResultCode::ALL`: Python name, class name,
//! built-in base such as `ValueError`, docstring), so no number is written here. With the
//! stable ABI (abi3) a Rust class cannot extend a built-in exception, so the hierarchy is
//! built by a few lines of Python compiled into this module at import time; every
//! `pccl::Error` becomes one of these classes through the single `From` below.

use std::ffi::CStr;

use pccl::ResultCode;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;

const ERRORS_PY: &CStr = cr#"
import builtins
import enum

class PCCLError(RuntimeError):
    """A failed pccl call. ``.result`` (also ``.code``) is the PCCL result code."""

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

def build(rows):
    """Defines ``Result`` and the subclass of each failure code in this module. ``rows``:
    (member name, number, class name or None, built-in base name or None, docstring)."""
    names = globals()
    result = enum.IntEnum("Result", [(row[0], row[1]) for row in rows],
                          module="pccl", qualname="Result")
    result.__doc__ = "PCCL result codes (``pcclResult_t``)."
    names["Result"] = result
    PCCLError.__module__ = "pccl"
    PCCLError._default_result = result.INTERNAL_ERROR
    for _, number, class_name, base, doc in rows:
        if class_name is None:
            continue
        bases = (PCCLError,) if base is None else (PCCLError, getattr(builtins, base))
        names[class_name] = type(class_name, bases, {
            "__doc__": doc,
            "__module__": "pccl",
            "_default_result": result(number),
        })
"#;

static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// The Python module holding `Result`, `PCCLError` and the subclasses, built once.
fn module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    MODULE
        .get_or_try_init(py, || {
            let m = PyModule::from_code(py, ERRORS_PY, c"pccl/_errors.py", c"pccl._errors")?;
            let rows: Vec<_> = ResultCode::ALL
                .iter()
                .map(|row| {
                    (
                        row.python_name,
                        row.code as i32,
                        row.python_class,
                        row.python_builtin_base,
                        row.doc(),
                    )
                })
                .collect();
            m.getattr("build")?.call1((rows,))?;
            Ok(m.unbind())
        })
        .map(|m| m.bind(py))
}

/// The name of the class raised for `code`.
fn class_name(code: ResultCode) -> &'static str {
    code.info().python_class.unwrap_or("PCCLError")
}

/// Adds `Result`, `PCCLError` and every subclass to the native module, plus the private
/// test hook `_raise_example_error`.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let errors = module(m.py())?;
    let classes = ResultCode::ALL.iter().filter_map(|row| row.python_class);
    for name in ["Result", "PCCLError"].into_iter().chain(classes) {
        m.add(name, errors.getattr(name)?)?;
    }
    // `setattr`, not `add`: a private hook stays out of `__all__` and the stubs.
    m.setattr(
        "_raise_example_error",
        wrap_pyfunction!(raise_example_error, m)?,
    )?;
    Ok(())
}

/// Raises the exception that a `pccl::Error` with result code `code` becomes (the core's
/// example error for that code); returns None for success. Lets the tests check the
/// translation of every code, including those hard to provoke.
#[pyfunction]
#[pyo3(name = "_raise_example_error")]
fn raise_example_error(code: i32) -> PyResult<()> {
    let code = ResultCode::from_number(code)
        .ok_or_else(|| invalid_argument(format!("no result code {code}")))?;
    match pccl::Error::example(code) {
        Some(e) => Err(PcclErr(e).into()),
        None => Ok(()),
    }
}

/// An exception of the class for `code`, carrying `message`.
pub(crate) fn new_error(py: Python<'_>, code: ResultCode, message: String) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let cls = module(py)?.getattr(class_name(code))?;
        Ok(PyErr::from_value(
            cls.call1((message.clone(), code as i32))?,
        ))
    };
    build().unwrap_or_else(|e| e)
}

/// `InvalidArgumentError` (a `ValueError` and a `PCCLError`) with this message.
pub(crate) fn invalid_argument(message: impl Into<String>) -> PyErr {
    Python::attach(|py| new_error(py, ResultCode::InvalidArgument, message.into()))
}

/// `InvalidUsageError` with this message.
pub(crate) fn invalid_usage(message: impl Into<String>) -> PyErr {
    Python::attach(|py| new_error(py, ResultCode::InvalidUsage, message.into()))
}

/// `InternalError` (a `PCCLError`) with this message.
pub(crate) fn internal(message: impl Into<String>) -> PyErr {
    Python::attach(|py| new_error(py, ResultCode::InternalError, message.into()))
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
        let code = e.0.code();
        Python::attach(|py| new_error(py, code, e.0.to_string()))
    }
}

/// Converts a core result into a Python one.
pub(crate) fn check<T>(r: pccl::Result<T>) -> PyResult<T> {
    r.map_err(|e| PcclErr(e).into())
}
