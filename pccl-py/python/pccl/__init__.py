"""pccl: fault-tolerant collective communication for training over the internet.

Source-compatible with PCCL 1.0's Python API (``MasterNode``, ``Communicator``,
``SharedState``, ``TensorInfo``, ...), with three additions: CUDA tensors are accepted
(staged through pinned host memory), numpy arrays work without torch installed, and the
GIL is released during every blocking call (Ctrl-C interrupts it within a fraction of a
second).

``Communicator`` also takes the keyword-only ``p2p_bind_address`` ("ip:port", default
PCCL's "0.0.0.0:48150") and ``advertise_ip``; see SECURITY.md for where to bind. The
``secret``/``secret_file``/``encrypt`` keywords of ``Communicator`` and ``MasterNode``
set the run secret (SECURITY.md §6; absent keywords fall back to ``PCCL_RUN_SECRET``,
``PCCL_RUN_SECRET_FILE`` and ``PCCL_ENCRYPT``); a refused secret raises
``AuthenticationError``, a ``MasterConnectionError``. The
``PCCL_LOG`` environment variable (``warn`` by default; ``info``, ``debug``, ...) sets the
level of pccl's log lines on stderr; it is read once, at import.

Blocking calls run on helper threads; objects are tied to the process that created them,
so create communicators and masters after ``fork()`` (in each worker), not before.
"""

from __future__ import annotations

from pccl import cuda
from pccl._enums import (
    Attribute,
    DataType,
    DeviceType,
    DistributionHint,
    QuantizationAlgorithm,
    ReduceOp,
    SharedStateSyncStrategy,
)
from pccl._pccl import (
    AsyncReduceHandle,
    AuthenticationError,
    Communicator,
    ConnectionLostError,
    InternalError,
    InvalidArgumentError,
    InvalidUsageError,
    MasterConnectionError,
    MasterNode,
    NoSharedStateAvailableError,
    NotInitializedError,
    PCCLError,
    PendingAsyncOpsError,
    QuantizationOptions,
    RankConnectionFailedError,
    ReduceDescriptor,
    ReduceInfo,
    ReduceOpDescriptor,
    ReduceOperandDescriptor,
    Result,
    SharedState,
    SharedStateSyncInfo,
    TensorInfo,
    TooFewPeersError,
    TopologyOptimizationFailedError,
    UpdateTopologyFailedError,
    __version__,
    build_info,
    tensor_hash,
)

__all__ = [
    "AsyncReduceHandle",
    "AuthenticationError",
    "Attribute",
    "Communicator",
    "ConnectionLostError",
    "DataType",
    "DeviceType",
    "DistributionHint",
    "InternalError",
    "InvalidArgumentError",
    "InvalidUsageError",
    "MasterConnectionError",
    "MasterNode",
    "NoSharedStateAvailableError",
    "NotInitializedError",
    "PCCLError",
    "PendingAsyncOpsError",
    "QuantizationAlgorithm",
    "QuantizationOptions",
    "RankConnectionFailedError",
    "ReduceDescriptor",
    "ReduceInfo",
    "ReduceOp",
    "ReduceOpDescriptor",
    "ReduceOperandDescriptor",
    "Result",
    "SharedState",
    "SharedStateSyncInfo",
    "SharedStateSyncStrategy",
    "TensorInfo",
    "TooFewPeersError",
    "TopologyOptimizationFailedError",
    "UpdateTopologyFailedError",
    "__version__",
    "build_info",
    "cuda",
    "tensor_hash",
]
