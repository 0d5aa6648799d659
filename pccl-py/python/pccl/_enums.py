"""PCCL's enums, with PCCL's numeric values. They are ``IntEnum``s: every API that takes
one also takes the plain number."""

from __future__ import annotations

import enum
from typing import Any


class ReduceOp(enum.IntEnum):
    """Reduction operations (``pcclRedOp_t``)."""

    SUM = 0
    AVG = 1
    PROD = 2
    MAX = 3
    MIN = 4


class Attribute(enum.IntEnum):
    """Communicator attributes (``pcclAttribute_t``)."""

    GLOBAL_WORLD_SIZE = 1
    """Accepted peers in the run."""
    LOCAL_WORLD_SIZE = 2
    """Accepted peers in this communicator's peer group."""
    PEER_GROUP_WORLD_SIZE = 2
    NUM_DISTINCT_PEER_GROUPS = 3
    LARGEST_PEER_GROUP_WORLD_SIZE = 4


class SharedStateSyncStrategy(enum.IntEnum):
    """How a peer takes part in a shared-state sync."""

    ENFORCE_POPULAR = 0
    RECEIVE_ONLY = 1
    SEND_ONLY = 2


class DeviceType(enum.IntEnum):
    """Where a tensor lives (``pcclDeviceType_t``)."""

    CPU = 0
    CUDA = 1

    @classmethod
    def from_torch_device_type(cls, device_type: str) -> DeviceType | None:
        return {"cpu": cls.CPU, "cuda": cls.CUDA}.get(device_type)


class DistributionHint(enum.IntEnum):
    NONE = 0
    NORMAL = 1
    UNIFORM = 2


class QuantizationAlgorithm(enum.IntEnum):
    NONE = 0
    MIN_MAX = 1
    ZERO_POINT_SCALE = 2


_TORCH_NAMES = {
    0: "uint8",
    1: "int8",
    2: "int16",
    3: "uint16",
    4: "uint32",
    5: "int32",
    6: "uint64",
    7: "int64",
    8: "float16",
    9: "bfloat16",
    10: "float32",
    11: "float64",
}

_NUMPY_NAMES = {
    "uint8": 0,
    "int8": 1,
    "int16": 2,
    "uint16": 3,
    "uint32": 4,
    "int32": 5,
    "uint64": 6,
    "int64": 7,
    "float16": 8,
    "bfloat16": 9,  # ml_dtypes.bfloat16
    "float32": 10,
    "float64": 11,
}


class DataType(enum.IntEnum):
    """Element types (``pcclDataType_t``)."""

    UINT8 = 0
    INT8 = 1
    INT16 = 2
    UINT16 = 3
    UINT32 = 4
    INT32 = 5
    UINT64 = 6
    INT64 = 7
    FLOAT16 = 8
    BFLOAT16 = 9
    FLOAT = 10
    DOUBLE = 11

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 8, 7: 8, 8: 2, 9: 2, 10: 4, 11: 8}[int(self)]

    def to_torch_dtype(self) -> Any:
        """The matching ``torch.dtype`` (imports torch)."""
        import torch

        return getattr(torch, _TORCH_NAMES[int(self)])

    def to_numpy_dtype(self) -> Any:
        """The matching ``numpy.dtype`` (bfloat16 needs ``ml_dtypes``)."""
        import numpy as np

        if self is DataType.BFLOAT16:
            import ml_dtypes  # type: ignore[import-not-found]

            return np.dtype(ml_dtypes.bfloat16)
        return np.dtype(_TORCH_NAMES[int(self)])

    @classmethod
    def from_torch_dtype(cls, dtype: Any) -> DataType:
        """The DataType of a ``torch.dtype``; ``ValueError`` if pccl has none."""
        name = str(dtype)
        for value, torch_name in _TORCH_NAMES.items():
            if name == "torch." + torch_name:
                return cls(value)
        raise ValueError(f"Unsupported dtype: {dtype}")

    @classmethod
    def from_numpy_dtype(cls, dtype: Any) -> DataType:
        """The DataType of a numpy dtype (or anything ``numpy.dtype()`` accepts)."""
        name = getattr(dtype, "name", None)
        if name is None:
            import numpy as np

            name = np.dtype(dtype).name
        if name in _NUMPY_NAMES and getattr(dtype, "byteorder", "=") in ("=", "<", "|"):
            return cls(_NUMPY_NAMES[name])
        raise ValueError(f"Unsupported dtype: {dtype}")
