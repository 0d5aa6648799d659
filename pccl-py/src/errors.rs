//! Exceptions: `PCCLError(RuntimeError)` with `.result` (the PCCL result code, an
//! `IntEnum` member, also readable as `.code`) and one subclass per failure code.
//!
//! The `Result` enum and the subclasses are generated when the module is imported from
//! the core's table of result codes (`pccl::ResultCode::ALL`: Python name, class name,
//! built-in base such as `ValueError`, docstring), so no number is written here. With the
//! stable ABI (abi3) a Rust class cannot extend a built-in exception, so the hierarchy is
//! built by a few lines of Python compiled into this module at import time; every
//! `pccl::Error` becomes one of these classes through the single `From` below. A few
//! causes that share a code get a subclass of that code's class ([`REFINED`]):
//! `pccl::Error::AuthenticationFailed` raises `AuthenticationError`, a
//! `MasterConnectionError`, whose `.result` stays `MASTER_CONNECTION_FAILED`.

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

def refine(class_name, base_name, doc):
    """Defines ``class_name``, a subclass of the code class ``base_name`` for a more
    specific cause that shares its code."""
    base = globals()[base_name]
    globals()[class_name] = type(class_name, (base,), {
        "__doc__": doc,
        "__module__": "pccl",
        "_default_result": base._default_result,
    })
"#;

static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// Exception classes for causes that share a result code with others but deserve their
/// own class: (class name, code whose class they subclass, docstring).
const REFINED: &[(&str, ResultCode, &str)] = &[(
    AUTHENTICATION_ERROR,
    ResultCode::MasterConnectionFailed,
    "The master or a peer refused this one's run secret, or this one refused theirs: a \
     different secret, a secret on one side only, or a different encryption setting \
     (SECURITY.md, authenticated mode).",
)];

/// The class `pccl::Error::AuthenticationFailed` becomes.
const AUTHENTICATION_ERROR: &str = "AuthenticationError";

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
            for (name, code, doc) in REFINED {
                let base = code
                    .info()
                    .python_class
                    .expect("a refined code has a class");
                m.getattr("refine")?.call1((name, base, doc))?;
            }
            Ok(m.unbind())
        })
        .map(|m| m.bind(py))
}

/// The name of the class raised for `code`.
fn class_name(code: ResultCode) -> &'static str {
    code.info().python_class.unwrap_or("PCCLError")
}

/// Adds `Result`, `PCCLError` and every subclass to the native module, plus the private
/// test hooks `_raise_example_error` and `_raise_authentication_failed`.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let errors = module(m.py())?;
    let classes = ResultCode::ALL.iter().filter_map(|row| row.python_class);
    let refined = REFINED.iter().map(|(name, _, _)| *name);
    for name in ["Result", "PCCLError"]
        .into_iter()
        .chain(classes)
        .chain(refined)
    {
        m.add(name, errors.getattr(name)?)?;
    }
    // `setattr`, not `add`: a private hook stays out of `__all__` and the stubs.
    m.setattr(
        "_raise_example_error",
        wrap_pyfunction!(raise_example_error, m)?,
    )?;
    m.setattr(
        "_raise_authentication_failed",
        wrap_pyfunction!(raise_authentication_failed, m)?,
    )?;
    Ok(())
}

/// Raises what `pccl::Error::AuthenticationFailed(message)` becomes, so the tests can check
/// that translation without a run.
#[pyfunction]
#[pyo3(name = "_raise_authentication_failed")]
fn raise_authentication_failed(message: String) -> PyResult<()> {
    Err(PcclErr(pccl::Error::AuthenticationFailed(message)).into())
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
    new_error_of(py, class_name(code), code, message)
}

/// An exception of class `class` (for `code`), carrying `message`.
fn new_error_of(py: Python<'_>, class: &str, code: ResultCode, message: String) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let cls = module(py)?.getattr(class)?;
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
        let class = match e.0 {
            pccl::Error::AuthenticationFailed(_) => AUTHENTICATION_ERROR,
            _ => class_name(code),
        };
        Python::attach(|py| new_error_of(py, class, code, e.0.to_string()))
    }
}

/// Converts a core result into a Python one.
pub(crate) fn check<T>(r: pccl::Result<T>) -> PyResult<T> {
    r.map_err(|e| PcclErr(e).into())
}
