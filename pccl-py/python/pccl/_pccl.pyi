"""Type stubs for the native module ``pccl._pccl`` (checked with ``mypy.stubtest``)."""

import enum
from typing import Any, Optional, Union, final

from typing_extensions import Self

from pccl._enums import (
    Attribute,
    DataType,
    DeviceType,
    DistributionHint,
    QuantizationAlgorithm,
    ReduceOp,
    SharedStateSyncStrategy,
)

__version__: str
__all__ = [
    "AsyncReduceHandle",
    "AuthenticationError",
    "Communicator",
    "ConnectionLostError",
    "InternalError",
    "InvalidArgumentError",
    "InvalidUsageError",
    "MasterConnectionError",
    "MasterNode",
    "NoSharedStateAvailableError",
    "NotInitializedError",
    "PCCLError",
    "PendingAsyncOpsError",
    "QuantizationOptions",
    "RankConnectionFailedError",
    "ReduceDescriptor",
    "ReduceInfo",
    "ReduceOpDescriptor",
    "ReduceOperandDescriptor",
    "Result",
    "SharedState",
    "SharedStateSyncInfo",
    "TensorInfo",
    "TooFewPeersError",
    "TopologyOptimizationFailedError",
    "UpdateTopologyFailedError",
    "__version__",
    "build_info",
    "is_cuda_available",
    "tensor_hash",
]

class Result(enum.IntEnum):
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
    result: Union[Result, int]
    def __init__(self, message: str = "", result: Optional[int] = None) -> None: ...
    @property
    def code(self) -> int: ...

# One subclass per failure code, generated from the core's table of result codes; each
# one's default `.result` is its code. `test_errors.py` checks this list against it.
class NotInitializedError(PCCLError): ...
class InternalError(PCCLError): ...
class InvalidArgumentError(PCCLError, ValueError): ...
class InvalidUsageError(PCCLError): ...
class TooFewPeersError(PCCLError): ...
class MasterConnectionError(PCCLError, ConnectionError): ...
class AuthenticationError(MasterConnectionError): ...
class RankConnectionFailedError(PCCLError, ConnectionError): ...
class ConnectionLostError(PCCLError, ConnectionError): ...
class NoSharedStateAvailableError(PCCLError): ...
class PendingAsyncOpsError(PCCLError): ...
class UpdateTopologyFailedError(PCCLError): ...
class TopologyOptimizationFailedError(PCCLError): ...



@final
class ReduceInfo:
    def __new__(cls, local_world_size: int, tx_bytes: int, rx_bytes: int) -> Self: ...
    @property
    def local_world_size(self) -> int: ...
    @property
    def tx_bytes(self) -> int: ...
    @property
    def rx_bytes(self) -> int: ...

@final
class SharedStateSyncInfo:
    def __new__(cls, tx_bytes: int, rx_bytes: int) -> Self: ...
    @property
    def tx_bytes(self) -> int: ...
    @property
    def rx_bytes(self) -> int: ...

@final
class ReduceOperandDescriptor:
    def __new__(cls, datatype: Union[DataType, int], distribution_hint: Optional[Union[DistributionHint, int]] = None
    ) -> Self: ...
    @property
    def datatype(self) -> DataType: ...
    @property
    def distribution_hint(self) -> DistributionHint: ...

@final
class QuantizationOptions:
    def __new__(cls,
        quantized_datatype: Optional[Union[DataType, int]] = None,
        algorithm: Optional[Union[QuantizationAlgorithm, int]] = None,
    ) -> Self: ...
    @property
    def quantized_datatype(self) -> DataType: ...
    @property
    def algorithm(self) -> QuantizationAlgorithm: ...

@final
class ReduceDescriptor:
    def __new__(cls,
        count: int,
        op: Union[ReduceOp, int],
        tag: int = 0,
        operand_descriptor: Optional[ReduceOperandDescriptor] = None,
        quantization_options: Optional[QuantizationOptions] = None,
    ) -> Self: ...
    @property
    def count(self) -> int: ...
    @property
    def op(self) -> ReduceOp: ...
    @property
    def tag(self) -> int: ...
    @property
    def operand_descriptor(self) -> Optional[ReduceOperandDescriptor]: ...
    @property
    def quantization_options(self) -> Optional[QuantizationOptions]: ...

@final
class ReduceOpDescriptor:
    @staticmethod
    def from_torch(send: Any, recv: Any, reduce_descriptor: ReduceDescriptor) -> ReduceOpDescriptor: ...
    @staticmethod
    def from_numpy(send: Any, recv: Any, reduce_descriptor: ReduceDescriptor) -> ReduceOpDescriptor: ...
    @property
    def send(self) -> Any: ...
    @property
    def recv(self) -> Any: ...
    @property
    def reduce_descriptor(self) -> ReduceDescriptor: ...

@final
class AsyncReduceHandle:
    def wait(self) -> tuple[bool, int, ReduceInfo]: ...
    def is_finished(self) -> bool: ...

@final
class TensorInfo:
    @staticmethod
    def from_torch(tensor: Any, name: str, *, allow_content_inequality: bool = False) -> TensorInfo: ...
    @staticmethod
    def from_numpy(array: Any, name: str, *, allow_content_inequality: bool = False) -> TensorInfo: ...
    @property
    def name(self) -> str: ...
    @property
    def tensor(self) -> Any: ...
    @property
    def dtype(self) -> DataType: ...
    @property
    def device_type(self) -> DeviceType: ...
    @property
    def numel(self) -> int: ...
    @property
    def data_ptr(self) -> int: ...
    @property
    def allow_content_inequality(self) -> bool: ...

@final
class SharedState:
    revision: int
    def __new__(cls, tensor_infos: list[TensorInfo], revision: int = 0) -> Self: ...
    def push_revision(self) -> None: ...
    @property
    def tensor_infos(self) -> list[TensorInfo]: ...
    def __len__(self) -> int: ...

@final
class Communicator:
    def __new__(
        cls,
        address: str,
        peer_group: int = 0,
        p2p_connection_pool_size: int = 0,
        *,
        p2p_bind_address: str = "0.0.0.0:48150",
        advertise_ip: Optional[str] = None,
        secret: Optional[str] = None,
        secret_file: Optional[str] = None,
        encrypt: Optional[bool] = None,
        master_reconnect_timeout: float = 60.0,
    ) -> Self: ...
    def connect(self, n_attempts: int = 5) -> None: ...
    def update_topology(self) -> None: ...
    def are_peers_pending(self) -> bool: ...
    def optimize_topology(self) -> None: ...
    def get_attribute(self, attribute: Union[Attribute, int]) -> int: ...
    # pccl extension: position in the peer group's ring of the current topology.
    def rank(self) -> int: ...
    # pccl extensions: send holds world * n elements, recv n (rank r gets block r).
    def reduce_scatter(
        self,
        send: Any,
        recv: Any,
        *,
        op: Union[ReduceOp, int],
        tag: int = 0,
        quantization_options: Optional[QuantizationOptions] = None,
    ) -> ReduceInfo: ...
    # send holds n elements, recv world * n (block r is rank r's send).
    def all_gather(self, send: Any, recv: Any, *, tag: int = 0) -> ReduceInfo: ...
    # rank root's tensor into every peer's tensor, in place.
    def broadcast(self, tensor: Any, *, root: int, tag: int = 0) -> ReduceInfo: ...
    # The same, started at once; wait() on the handle ends them.
    def reduce_scatter_async(
        self,
        send: Any,
        recv: Any,
        *,
        op: Union[ReduceOp, int],
        tag: int = 0,
        quantization_options: Optional[QuantizationOptions] = None,
    ) -> AsyncReduceHandle: ...
    def all_gather_async(self, send: Any, recv: Any, *, tag: int = 0) -> AsyncReduceHandle: ...
    def broadcast_async(self, tensor: Any, *, root: int, tag: int = 0) -> AsyncReduceHandle: ...
    def stats(self) -> dict[str, Any]: ...
    def sync_shared_state(
        self, shared_state: SharedState, strategy: Optional[Union[SharedStateSyncStrategy, int]] = None
    ) -> SharedStateSyncInfo: ...
    def all_reduce(
        self,
        send: Any,
        recv: Any,
        *,
        op: Union[ReduceOp, int],
        tag: int = 0,
        operand_descriptor: Optional[ReduceOperandDescriptor] = None,
        quantization_options: Optional[QuantizationOptions] = None,
    ) -> ReduceInfo: ...
    def all_reduce_async(
        self,
        send: Any,
        recv: Any,
        *,
        op: Union[ReduceOp, int],
        tag: int = 0,
        operand_descriptor: Optional[ReduceOperandDescriptor] = None,
        quantization_options: Optional[QuantizationOptions] = None,
    ) -> AsyncReduceHandle: ...
    def all_reduce_multiple_with_retry(
        self, descriptors: list[ReduceOpDescriptor], *, max_in_flight: int = 4
    ) -> ReduceInfo: ...
    def close(self) -> None: ...

@final
class MasterNode:
    def __new__(
        cls,
        listen_address: str,
        *,
        secret: Optional[str] = None,
        secret_file: Optional[str] = None,
        encrypt: Optional[bool] = None,
        http_address: Optional[str] = None,
    ) -> Self: ...
    def run(self) -> None: ...
    @property
    def http_address(self) -> Optional[str]: ...
    def interrupt(self) -> None: ...
    def await_termination(self) -> None: ...
    @property
    def listen_address(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def authenticated(self) -> bool: ...
    @property
    def encrypted(self) -> bool: ...

def is_cuda_available() -> bool: ...
def build_info() -> dict[str, Any]: ...
def tensor_hash(tensor: Any) -> int: ...
