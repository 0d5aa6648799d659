//! `TensorInfo` and `SharedState`: the tensors every peer of a group holds bit for bit.

use pccl::DataType;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::errors::invalid_argument;
use crate::runtime::KeepAlive;
use crate::tensor::raw::{Region, StateTensor};
use crate::tensor::{Kind, Loc, TensorView, view_of};
use crate::types::to_enum;

/// One named tensor of a shared state (a torch tensor, CPU or CUDA, or a numpy array).
#[pyclass(module = "pccl._pccl", frozen)]
#[derive(Debug)]
pub(crate) struct TensorInfo {
    name: String,
    tensor: Py<PyAny>,
    kind: Kind,
    dtype: DataType,
    loc: Loc,
    numel: usize,
    data_ptr: usize,
    allow_content_inequality: bool,
}

impl TensorInfo {
    fn build(
        obj: &Bound<'_, PyAny>,
        name: String,
        allow_content_inequality: bool,
        kind: Kind,
    ) -> PyResult<Self> {
        if name.is_empty() {
            return Err(invalid_argument("tensor names must not be empty"));
        }
        let v = view_of(obj, kind, "tensor")?;
        Ok(Self {
            name,
            tensor: v.obj,
            kind,
            dtype: v.dtype,
            loc: v.loc,
            numel: v.numel,
            data_ptr: v.ptr,
            allow_content_inequality,
        })
    }

    /// The tensor as it is now (a torch parameter's `.data` may have been replaced).
    fn current(&self, py: Python<'_>) -> PyResult<TensorView> {
        view_of(
            self.tensor.bind(py),
            self.kind,
            &format!("tensor '{}'", self.name),
        )
    }
}

#[pymethods]
impl TensorInfo {
    /// Describes a contiguous torch tensor (CPU or CUDA) named `name`.
    #[staticmethod]
    #[pyo3(signature = (tensor, name, *, allow_content_inequality = false))]
    fn from_torch(
        tensor: &Bound<'_, PyAny>,
        name: String,
        allow_content_inequality: bool,
    ) -> PyResult<Self> {
        Self::build(tensor, name, allow_content_inequality, Kind::Torch)
    }

    /// Describes a C-contiguous numpy array named `name`.
    #[staticmethod]
    #[pyo3(signature = (array, name, *, allow_content_inequality = false))]
    fn from_numpy(
        array: &Bound<'_, PyAny>,
        name: String,
        allow_content_inequality: bool,
    ) -> PyResult<Self> {
        Self::build(array, name, allow_content_inequality, Kind::Numpy)
    }

    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// The tensor or array itself.
    #[getter]
    fn tensor(&self, py: Python<'_>) -> Py<PyAny> {
        self.tensor.clone_ref(py)
    }

    #[getter]
    fn dtype(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_enum(py, "DataType", self.dtype as i64)
    }

    #[getter]
    fn device_type(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_enum(py, "DeviceType", i64::from(self.loc != Loc::Cpu))
    }

    #[getter]
    fn numel(&self) -> usize {
        self.numel
    }

    /// The data pointer when this info was made.
    #[getter]
    fn data_ptr(&self) -> usize {
        self.data_ptr
    }

    #[getter]
    fn allow_content_inequality(&self) -> bool {
        self.allow_content_inequality
    }

    fn __repr__(&self) -> String {
        format!(
            "TensorInfo(name={:?}, dtype=DataType.{}, numel={}, device={:?})",
            self.name,
            crate::tensor::dtype_name(self.dtype),
            self.numel,
            self.loc
        )
    }
}

/// A revision plus named tensors (PCCL's `SharedState`).
#[pyclass(module = "pccl._pccl")]
#[derive(Debug)]
pub(crate) struct SharedState {
    infos: Vec<Py<TensorInfo>>,
    /// The shared-state revision; a peer advances it by one per step.
    #[pyo3(get, set)]
    revision: u64,
}

impl SharedState {
    /// The tensors as they are now, the objects to keep alive, and the revision.
    pub(crate) fn snapshot(
        &self,
        py: Python<'_>,
        needs_writable: bool,
    ) -> PyResult<(Vec<StateTensor>, KeepAlive, u64)> {
        let mut tensors = Vec::with_capacity(self.infos.len());
        let mut keep = Vec::with_capacity(self.infos.len());
        for info in &self.infos {
            let info = info.get();
            let v = info.current(py)?;
            if needs_writable && !v.writable {
                return Err(invalid_argument(format!(
                    "tensor '{}' is read-only; a sync may need to write it",
                    info.name
                )));
            }
            tensors.push(StateTensor {
                name: info.name.clone(),
                region: Region {
                    ptr: v.ptr,
                    len: v.nbytes,
                    loc: v.loc,
                },
                dtype: v.dtype,
                allow_content_inequality: info.allow_content_inequality,
            });
            keep.push(v.obj);
        }
        Ok((tensors, keep, self.revision))
    }

    pub(crate) fn set_revision(&mut self, revision: u64) {
        self.revision = revision;
    }
}

#[pymethods]
impl SharedState {
    #[new]
    #[pyo3(signature = (tensor_infos, revision = 0))]
    fn new(tensor_infos: &Bound<'_, PyList>, revision: u64) -> PyResult<Self> {
        if tensor_infos.is_empty() {
            return Err(invalid_argument(
                "a shared state needs at least one TensorInfo",
            ));
        }
        let mut infos: Vec<Py<TensorInfo>> = Vec::with_capacity(tensor_infos.len());
        for item in tensor_infos.iter() {
            let info = item
                .cast_into::<TensorInfo>()
                .map_err(|_| invalid_argument("tensor_infos must be a list of TensorInfo"))?;
            if infos.iter().any(|i| i.get().name == info.get().name) {
                return Err(invalid_argument(format!(
                    "duplicate tensor name '{}'",
                    info.get().name
                )));
            }
            infos.push(info.unbind());
        }
        Ok(Self { infos, revision })
    }

    /// Advances the revision by one (call once per step, after the step's update).
    fn push_revision(&mut self) {
        self.revision += 1;
    }

    #[getter]
    fn tensor_infos(&self, py: Python<'_>) -> Vec<Py<TensorInfo>> {
        self.infos.iter().map(|i| i.clone_ref(py)).collect()
    }

    fn __len__(&self) -> usize {
        self.infos.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "SharedState(revision={}, tensors={})",
            self.revision,
            self.infos.len()
        )
    }
}
