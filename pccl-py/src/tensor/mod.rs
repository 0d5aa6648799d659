//! Tensors from Python: torch tensors and numpy arrays (anything with
//! `__array_interface__`) become a [`TensorView`]: data pointer, byte length, dtype and
//! device, read through plain attribute access so that numpy users need no torch.
//!
//! Everything here is safe code; the raw-pointer views over that memory live in `raw`.

pub(crate) mod raw;

use pccl::DataType;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::errors::invalid_argument;

/// Where a tensor's memory lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Loc {
    Cpu,
    /// A CUDA device, by ordinal.
    Cuda(i32),
}

/// Which library a tensor comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Torch,
    Numpy,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Torch => "torch tensor",
            Self::Numpy => "numpy array",
        }
    }
}

/// A contiguous tensor's memory, as read from its Python object.
#[derive(Debug)]
pub(crate) struct TensorView {
    /// The object that owns the memory; keep it alive while the memory is used.
    pub(crate) obj: Py<PyAny>,
    pub(crate) kind: Kind,
    /// Host address, or CUDA device address when `loc` is CUDA.
    pub(crate) ptr: usize,
    pub(crate) nbytes: usize,
    pub(crate) numel: usize,
    pub(crate) dtype: DataType,
    pub(crate) loc: Loc,
    /// False for read-only numpy arrays.
    pub(crate) writable: bool,
}

impl TensorView {
    /// Whether the memory ranges of `self` and `other` share a byte.
    pub(crate) fn overlaps(&self, other: &Self) -> bool {
        self.loc == other.loc
            && self.nbytes > 0
            && other.nbytes > 0
            && self.ptr < other.ptr + other.nbytes
            && other.ptr < self.ptr + self.nbytes
    }
}

/// Reads a torch tensor or numpy array; `what` names it in error messages.
pub(crate) fn view(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<TensorView> {
    if is_torch(obj)? {
        torch_view(obj, what)
    } else if obj.hasattr("__array_interface__")? {
        numpy_view(obj, what)
    } else {
        Err(invalid_argument(format!(
            "{what} must be a torch.Tensor or a numpy.ndarray, not {}",
            type_name(obj)
        )))
    }
}

/// Reads `obj`, which must come from `kind`'s library.
pub(crate) fn view_of(obj: &Bound<'_, PyAny>, kind: Kind, what: &str) -> PyResult<TensorView> {
    let v = view(obj, what)?;
    if v.kind != kind {
        return Err(invalid_argument(format!(
            "{what} must be a {}, not {}",
            kind.name(),
            type_name(obj)
        )));
    }
    Ok(v)
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "an unknown type".into())
}

/// Torch tensors are recognised by their methods, so torch is never imported here.
fn is_torch(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(obj.hasattr("data_ptr")? && obj.hasattr("is_contiguous")? && obj.hasattr("element_size")?)
}

fn torch_view(t: &Bound<'_, PyAny>, what: &str) -> PyResult<TensorView> {
    let ty = type_name(t);
    if ty == "DTensor" {
        return Err(invalid_argument(format!(
            "{what} is a DTensor: pass its local shard (`to_local()`) instead"
        )));
    }
    let layout: String = t.getattr("layout")?.str()?.extract()?;
    if layout != "torch.strided" {
        return Err(invalid_argument(format!(
            "{what} has layout {layout}; only dense (strided) tensors are supported"
        )));
    }
    let dtype_name: String = t.getattr("dtype")?.str()?.extract()?;
    let dtype = torch_dtype(&dtype_name)
        .ok_or_else(|| invalid_argument(format!("{what} has unsupported dtype {dtype_name}")))?;
    if !t.call_method0("is_contiguous")?.extract::<bool>()? {
        return Err(invalid_argument(format!(
            "{what} is not contiguous: call .contiguous() first"
        )));
    }
    let device = t.getattr("device")?;
    let device_type: String = device.getattr("type")?.extract()?;
    let loc = match device_type.as_str() {
        "cpu" => Loc::Cpu,
        "cuda" => Loc::Cuda(
            device
                .getattr("index")?
                .extract::<Option<i32>>()?
                .unwrap_or(0),
        ),
        other => {
            return Err(invalid_argument(format!(
                "{what} is on device type '{other}'; only cpu and cuda tensors are supported"
            )));
        }
    };
    let numel: usize = t.call_method0("numel")?.extract()?;
    let element_size: usize = t.call_method0("element_size")?.extract()?;
    if element_size != dtype.size() {
        return Err(invalid_argument(format!(
            "{what}: element size {element_size} does not match {dtype_name}"
        )));
    }
    let ptr: usize = t.call_method0("data_ptr")?.extract()?;
    Ok(TensorView {
        obj: t.clone().unbind(),
        kind: Kind::Torch,
        ptr,
        nbytes: numel * element_size,
        numel,
        dtype,
        loc,
        writable: true,
    })
}

/// The pccl type of a torch dtype, by its `str()`.
pub(crate) fn torch_dtype(name: &str) -> Option<DataType> {
    Some(match name {
        "torch.uint8" => DataType::U8,
        "torch.int8" => DataType::I8,
        "torch.int16" => DataType::I16,
        "torch.uint16" => DataType::U16,
        "torch.uint32" => DataType::U32,
        "torch.int32" => DataType::I32,
        "torch.uint64" => DataType::U64,
        "torch.int64" => DataType::I64,
        "torch.float16" => DataType::F16,
        "torch.bfloat16" => DataType::Bf16,
        "torch.float32" => DataType::F32,
        "torch.float64" => DataType::F64,
        _ => return None,
    })
}

fn numpy_view(a: &Bound<'_, PyAny>, what: &str) -> PyResult<TensorView> {
    let iface = a.getattr("__array_interface__")?;
    let iface = iface
        .cast::<PyDict>()
        .map_err(|_| invalid_argument(format!("{what}: __array_interface__ is not a dict")))?;
    let item = |k: &str| -> PyResult<Bound<'_, PyAny>> {
        iface
            .get_item(k)?
            .ok_or_else(|| invalid_argument(format!("{what}: __array_interface__ lacks '{k}'")))
    };
    let typestr: String = item("typestr")?.extract()?;
    let dtype = numpy_dtype(a, &typestr)?.ok_or_else(|| {
        invalid_argument(format!(
            "{what} has unsupported dtype {} (typestr '{typestr}')",
            a.getattr("dtype")
                .and_then(|d| d.str())
                .map(|s| s.to_string())
                .unwrap_or_default()
        ))
    })?;
    let shape: Vec<usize> = item("shape")?.extract()?;
    let data = item("data")?;
    let data = data.cast::<PyTuple>().map_err(|_| {
        invalid_argument(format!(
            "{what}: only arrays that expose a data pointer are supported"
        ))
    })?;
    let ptr: usize = data.get_item(0)?.extract()?;
    let readonly: bool = data.get_item(1)?.extract()?;
    let size = dtype.size();
    if let Some(strides) = iface.get_item("strides")?.filter(|s| !s.is_none()) {
        let strides: Vec<isize> = strides.extract()?;
        if !c_contiguous(&shape, &strides, size) {
            return Err(invalid_argument(format!(
                "{what} is not C-contiguous: use numpy.ascontiguousarray first"
            )));
        }
    }
    if iface.get_item("mask")?.is_some_and(|m| !m.is_none()) {
        return Err(invalid_argument(format!(
            "{what}: masked arrays are not supported"
        )));
    }
    let numel: usize = shape.iter().product();
    Ok(TensorView {
        obj: a.clone().unbind(),
        kind: Kind::Numpy,
        ptr,
        nbytes: numel * size,
        numel,
        dtype,
        loc: Loc::Cpu,
        writable: !readonly,
    })
}

/// The pccl type of a numpy typestr (`'<f4'`); bfloat16 (ml_dtypes) by its dtype name.
fn numpy_dtype(a: &Bound<'_, PyAny>, typestr: &str) -> PyResult<Option<DataType>> {
    let bytes = typestr.as_bytes();
    if bytes.len() < 3 || bytes[0] == b'>' {
        return Ok(None);
    }
    Ok(match &typestr[1..] {
        "u1" => Some(DataType::U8),
        "i1" => Some(DataType::I8),
        "i2" => Some(DataType::I16),
        "u2" => Some(DataType::U16),
        "u4" => Some(DataType::U32),
        "i4" => Some(DataType::I32),
        "u8" => Some(DataType::U64),
        "i8" => Some(DataType::I64),
        "f2" => Some(DataType::F16),
        "f4" => Some(DataType::F32),
        "f8" => Some(DataType::F64),
        "V2" => {
            let name: String = a
                .getattr("dtype")
                .and_then(|d| d.getattr("name"))
                .and_then(|n| n.extract())
                .unwrap_or_default();
            (name == "bfloat16").then_some(DataType::Bf16)
        }
        _ => None,
    })
}

/// Whether byte `strides` describe a C-contiguous array of `shape`.
fn c_contiguous(shape: &[usize], strides: &[isize], item: usize) -> bool {
    if shape.len() != strides.len() {
        return false;
    }
    if shape.contains(&0) {
        return true;
    }
    let mut expected = item as isize;
    for (&n, &s) in shape.iter().zip(strides).rev() {
        if n != 1 && s != expected {
            return false;
        }
        expected *= n as isize;
    }
    true
}

/// The name of a pccl data type in PCCL's Python enum.
pub(crate) fn dtype_name(d: DataType) -> &'static str {
    match d {
        DataType::U8 => "UINT8",
        DataType::I8 => "INT8",
        DataType::I16 => "INT16",
        DataType::U16 => "UINT16",
        DataType::U32 => "UINT32",
        DataType::I32 => "INT32",
        DataType::U64 => "UINT64",
        DataType::I64 => "INT64",
        DataType::F16 => "FLOAT16",
        DataType::Bf16 => "BFLOAT16",
        DataType::F32 => "FLOAT",
        DataType::F64 => "DOUBLE",
    }
}
