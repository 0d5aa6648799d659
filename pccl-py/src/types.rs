//! Value classes (`ReduceInfo`, `SharedStateSyncInfo`, the reduce descriptors) and the
//! bridge to the Python enums of `pccl._enums` (`IntEnum`s: any int is accepted too).

use pccl::{Attribute, DataType, ReduceOp, SyncStrategy};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;

use crate::errors::invalid_argument;

static ENUMS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// `pccl._enums.<class>(value)`.
pub(crate) fn to_enum(py: Python<'_>, class: &str, value: i64) -> PyResult<Py<PyAny>> {
    let m = ENUMS.get_or_try_init(py, || py.import("pccl._enums").map(Bound::unbind))?;
    Ok(m.bind(py).getattr(class)?.call1((value,))?.unbind())
}

/// The integer value of an enum member (or a plain int).
fn enum_int(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<i64> {
    obj.extract::<i64>()
        .or_else(|_| obj.getattr("value").and_then(|v| v.extract::<i64>()))
        .map_err(|_| invalid_argument(format!("{what} must be a pccl enum member or an int")))
}

pub(crate) fn reduce_op(obj: &Bound<'_, PyAny>) -> PyResult<ReduceOp> {
    let v = enum_int(obj, "op")?;
    u8::try_from(v)
        .ok()
        .and_then(ReduceOp::from_u8)
        .ok_or_else(|| invalid_argument(format!("unknown reduce op {v}")))
}

pub(crate) fn data_type(obj: &Bound<'_, PyAny>) -> PyResult<DataType> {
    let v = enum_int(obj, "datatype")?;
    u8::try_from(v)
        .ok()
        .and_then(DataType::from_u8)
        .ok_or_else(|| invalid_argument(format!("unknown data type {v}")))
}

pub(crate) fn attribute(obj: &Bound<'_, PyAny>) -> PyResult<Attribute> {
    Ok(match enum_int(obj, "attribute")? {
        1 => Attribute::GlobalWorldSize,
        2 => Attribute::PeerGroupWorldSize,
        3 => Attribute::NumDistinctPeerGroups,
        4 => Attribute::LargestPeerGroupWorldSize,
        v => return Err(invalid_argument(format!("unknown attribute {v}"))),
    })
}

pub(crate) fn sync_strategy(obj: Option<&Bound<'_, PyAny>>) -> PyResult<SyncStrategy> {
    let Some(obj) = obj else {
        return Ok(SyncStrategy::EnforcePopular);
    };
    let v = enum_int(obj, "strategy")?;
    u8::try_from(v)
        .ok()
        .and_then(SyncStrategy::from_u8)
        .ok_or_else(|| invalid_argument(format!("unknown shared-state sync strategy {v}")))
}

/// What a finished all-reduce reports.
#[pyclass(module = "pccl._pccl", frozen, eq, get_all)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct ReduceInfo {
    /// Peers of the group that took part.
    local_world_size: u32,
    /// Payload bytes sent.
    tx_bytes: u64,
    /// Payload bytes received.
    rx_bytes: u64,
}

#[pymethods]
impl ReduceInfo {
    #[new]
    #[pyo3(signature = (local_world_size, tx_bytes, rx_bytes))]
    fn new(local_world_size: u32, tx_bytes: u64, rx_bytes: u64) -> Self {
        Self {
            local_world_size,
            tx_bytes,
            rx_bytes,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "ReduceInfo(local_world_size={}, tx_bytes={}, rx_bytes={})",
            self.local_world_size, self.tx_bytes, self.rx_bytes
        )
    }
}

impl From<pccl::ReduceInfo> for ReduceInfo {
    fn from(i: pccl::ReduceInfo) -> Self {
        Self {
            local_world_size: i.local_world_size,
            tx_bytes: i.tx_bytes,
            rx_bytes: i.rx_bytes,
        }
    }
}

/// What a shared-state sync moved.
#[pyclass(module = "pccl._pccl", frozen, eq, get_all)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SharedStateSyncInfo {
    tx_bytes: u64,
    rx_bytes: u64,
}

#[pymethods]
impl SharedStateSyncInfo {
    #[new]
    #[pyo3(signature = (tx_bytes, rx_bytes))]
    fn new(tx_bytes: u64, rx_bytes: u64) -> Self {
        Self { tx_bytes, rx_bytes }
    }

    fn __repr__(&self) -> String {
        format!(
            "SharedStateSyncInfo(tx_bytes={}, rx_bytes={})",
            self.tx_bytes, self.rx_bytes
        )
    }
}

impl From<pccl::SyncInfo> for SharedStateSyncInfo {
    fn from(i: pccl::SyncInfo) -> Self {
        Self {
            tx_bytes: i.tx_bytes,
            rx_bytes: i.rx_bytes,
        }
    }
}

/// The element type of an operand and a hint on its distribution (the hint is accepted
/// for compatibility and not used).
#[pyclass(module = "pccl._pccl", frozen)]
#[derive(Debug)]
pub(crate) struct ReduceOperandDescriptor {
    pub(crate) datatype: DataType,
    distribution_hint: i64,
}

#[pymethods]
impl ReduceOperandDescriptor {
    #[new]
    #[pyo3(signature = (datatype, distribution_hint = None))]
    fn new(
        datatype: &Bound<'_, PyAny>,
        distribution_hint: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let distribution_hint = match distribution_hint {
            Some(h) => enum_int(h, "distribution_hint")?,
            None => 0,
        };
        if !(0..=2).contains(&distribution_hint) {
            return Err(invalid_argument(format!(
                "unknown distribution hint {distribution_hint}"
            )));
        }
        Ok(Self {
            datatype: data_type(datatype)?,
            distribution_hint,
        })
    }

    #[getter]
    fn datatype(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_enum(py, "DataType", self.datatype as i64)
    }

    #[getter]
    fn distribution_hint(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_enum(py, "DistributionHint", self.distribution_hint)
    }

    fn __repr__(&self) -> String {
        format!(
            "ReduceOperandDescriptor(datatype=DataType.{}, distribution_hint={})",
            crate::tensor::dtype_name(self.datatype),
            self.distribution_hint
        )
    }
}

/// How an all-reduce quantizes its payload on the wire (`algorithm` NONE: not at all).
/// Every peer must pass the same options for the same op.
#[pyclass(module = "pccl._pccl", frozen)]
#[derive(Debug)]
pub(crate) struct QuantizationOptions {
    quantized_datatype: DataType,
    algorithm: pccl::QuantizationAlgorithm,
}

#[pymethods]
impl QuantizationOptions {
    #[new]
    #[pyo3(signature = (quantized_datatype = None, algorithm = None))]
    fn new(
        quantized_datatype: Option<&Bound<'_, PyAny>>,
        algorithm: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let quantized_datatype = match quantized_datatype {
            Some(d) => data_type(d)?,
            None => DataType::U8,
        };
        let algorithm = match algorithm {
            Some(a) => {
                let v = enum_int(a, "algorithm")?;
                u8::try_from(v)
                    .ok()
                    .and_then(pccl::QuantizationAlgorithm::from_u8)
                    .ok_or_else(|| {
                        invalid_argument(format!("unknown quantization algorithm {v}"))
                    })?
            }
            None => pccl::QuantizationAlgorithm::MinMax,
        };
        Ok(Self {
            quantized_datatype,
            algorithm,
        })
    }

    #[getter]
    fn quantized_datatype(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_enum(py, "DataType", self.quantized_datatype as i64)
    }

    #[getter]
    fn algorithm(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_enum(py, "QuantizationAlgorithm", self.algorithm as i64)
    }

    fn __repr__(&self) -> String {
        format!(
            "QuantizationOptions(quantized_datatype=DataType.{}, algorithm={})",
            crate::tensor::dtype_name(self.quantized_datatype),
            self.algorithm as u8
        )
    }
}

/// The core's quantization setting for optional options (`None`: unquantized).
pub(crate) fn quantization(
    q: Option<&Bound<'_, QuantizationOptions>>,
) -> Option<pccl::Quantization> {
    q.map(|q| {
        let q = q.get();
        pccl::Quantization::new(q.algorithm, q.quantized_datatype)
    })
}

/// One all-reduce's parameters, as used by `ReduceOpDescriptor`.
#[pyclass(module = "pccl._pccl", frozen)]
#[derive(Debug)]
pub(crate) struct ReduceDescriptor {
    pub(crate) count: usize,
    pub(crate) op: ReduceOp,
    pub(crate) tag: u64,
    pub(crate) operand_descriptor: Option<Py<ReduceOperandDescriptor>>,
    pub(crate) quantization_options: Option<Py<QuantizationOptions>>,
}

#[pymethods]
impl ReduceDescriptor {
    #[new]
    #[pyo3(signature = (count, op, tag = 0, operand_descriptor = None, quantization_options = None))]
    fn new(
        count: usize,
        op: &Bound<'_, PyAny>,
        tag: u64,
        operand_descriptor: Option<Py<ReduceOperandDescriptor>>,
        quantization_options: Option<Py<QuantizationOptions>>,
    ) -> PyResult<Self> {
        Ok(Self {
            count,
            op: reduce_op(op)?,
            tag,
            operand_descriptor,
            quantization_options,
        })
    }

    #[getter]
    fn count(&self) -> usize {
        self.count
    }

    #[getter]
    fn op(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_enum(py, "ReduceOp", self.op as i64)
    }

    #[getter]
    fn tag(&self) -> u64 {
        self.tag
    }

    #[getter]
    fn operand_descriptor(&self, py: Python<'_>) -> Option<Py<ReduceOperandDescriptor>> {
        self.operand_descriptor.as_ref().map(|d| d.clone_ref(py))
    }

    #[getter]
    fn quantization_options(&self, py: Python<'_>) -> Option<Py<QuantizationOptions>> {
        self.quantization_options.as_ref().map(|d| d.clone_ref(py))
    }

    fn __repr__(&self) -> String {
        format!(
            "ReduceDescriptor(count={}, op={:?}, tag={})",
            self.count, self.op, self.tag
        )
    }
}
