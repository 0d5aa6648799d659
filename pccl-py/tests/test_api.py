"""The Python API surface matches PCCL 1.0's (names, enum values, defaults)."""

import inspect
import subprocess
import sys

import pytest

import pccl
from pccl import _pccl

EXPORTED = [
    "Communicator", "MasterNode", "ReduceOp", "Attribute", "SharedStateSyncStrategy",
    "DataType", "DistributionHint", "QuantizationAlgorithm", "ReduceOperandDescriptor",
    "QuantizationOptions", "ReduceDescriptor", "TensorInfo", "SharedState",
    "SharedStateSyncInfo", "ReduceInfo", "ReduceOpDescriptor", "AsyncReduceHandle",
    "PCCLError", "DeviceType", "cuda",
]


def test_exported_names():
    for name in EXPORTED:
        assert hasattr(pccl, name), name
    assert callable(pccl.cuda.is_cuda_available)
    assert isinstance(pccl.cuda.is_cuda_available(), bool)


def test_enum_values_match_pccl():
    assert [int(x) for x in (pccl.ReduceOp.SUM, pccl.ReduceOp.AVG, pccl.ReduceOp.PROD,
                             pccl.ReduceOp.MAX, pccl.ReduceOp.MIN)] == [0, 1, 2, 3, 4]
    D = pccl.DataType
    assert (D.UINT8, D.INT8, D.INT16, D.UINT16, D.UINT32, D.INT32, D.UINT64, D.INT64,
            D.FLOAT16, D.BFLOAT16, D.FLOAT, D.DOUBLE) == tuple(range(12))
    A = pccl.Attribute
    assert (A.GLOBAL_WORLD_SIZE, A.LOCAL_WORLD_SIZE, A.NUM_DISTINCT_PEER_GROUPS,
            A.LARGEST_PEER_GROUP_WORLD_SIZE) == (1, 2, 3, 4)
    S = pccl.SharedStateSyncStrategy
    assert (S.ENFORCE_POPULAR, S.RECEIVE_ONLY, S.SEND_ONLY) == (0, 1, 2)
    assert (pccl.DeviceType.CPU, pccl.DeviceType.CUDA) == (0, 1)
    assert (pccl.DistributionHint.NONE, pccl.DistributionHint.NORMAL,
            pccl.DistributionHint.UNIFORM) == (0, 1, 2)
    assert (pccl.QuantizationAlgorithm.NONE, pccl.QuantizationAlgorithm.MIN_MAX,
            pccl.QuantizationAlgorithm.ZERO_POINT_SCALE) == (0, 1, 2)
    assert pccl.Result.RANK_CONNECTION_LOST == 8
    assert pccl.Result.TOPOLOGY_OPTIMIZATION_FAILED == 12


def test_signatures_and_defaults():
    sig = inspect.signature(pccl.Communicator.all_reduce)
    assert sig.parameters["op"].kind is inspect.Parameter.KEYWORD_ONLY
    assert sig.parameters["tag"].default == 0
    assert sig.parameters["operand_descriptor"].default is None
    assert sig.parameters["quantization_options"].default is None
    assert inspect.signature(pccl.Communicator.connect).parameters["n_attempts"].default == 5
    multi = inspect.signature(pccl.Communicator.all_reduce_multiple_with_retry)
    assert multi.parameters["max_in_flight"].default == 4
    assert multi.parameters["max_in_flight"].kind is inspect.Parameter.KEYWORD_ONLY
    tinfo = inspect.signature(pccl.TensorInfo.from_numpy)
    assert tinfo.parameters["allow_content_inequality"].default is False


def test_descriptor_defaults():
    q = pccl.QuantizationOptions()
    assert q.quantized_datatype is pccl.DataType.UINT8
    assert q.algorithm is pccl.QuantizationAlgorithm.MIN_MAX
    o = pccl.ReduceOperandDescriptor(pccl.DataType.FLOAT)
    assert o.datatype is pccl.DataType.FLOAT
    assert o.distribution_hint is pccl.DistributionHint.NONE
    d = pccl.ReduceDescriptor(10, pccl.ReduceOp.SUM, 3, o, q)
    assert (d.count, d.op, d.tag) == (10, pccl.ReduceOp.SUM, 3)
    assert pccl.ReduceInfo(2, 3, 4) == pccl.ReduceInfo(2, 3, 4)
    assert pccl.ReduceInfo(2, 3, 4).local_world_size == 2
    assert pccl.SharedStateSyncInfo(1, 2).rx_bytes == 2


def test_datatype_conversions():
    np = pytest.importorskip("numpy")
    assert pccl.DataType.from_numpy_dtype(np.dtype("float32")) is pccl.DataType.FLOAT
    assert pccl.DataType.from_numpy_dtype(np.float64) is pccl.DataType.DOUBLE
    with pytest.raises(ValueError):
        pccl.DataType.from_numpy_dtype(np.dtype("complex64"))
    torch = pytest.importorskip("torch")
    for dt in pccl.DataType:
        assert pccl.DataType.from_torch_dtype(dt.to_torch_dtype()) is dt
    assert pccl.DataType.from_torch_dtype(torch.bfloat16) is pccl.DataType.BFLOAT16
    with pytest.raises(ValueError):
        pccl.DataType.from_torch_dtype(torch.bool)


def test_error_before_connect():
    c = pccl.Communicator("127.0.0.1:48148")
    with pytest.raises(pccl.PCCLError) as e:
        c.update_topology()
    assert e.value.result == pccl.Result.INVALID_USAGE == 4
    assert e.value.code == 4
    assert isinstance(e.value, RuntimeError)
    for call in (c.are_peers_pending, c.optimize_topology):
        with pytest.raises(pccl.PCCLError):
            call()
    with pytest.raises(pccl.PCCLError):
        c.get_attribute(pccl.Attribute.GLOBAL_WORLD_SIZE)


def test_bad_arguments():
    with pytest.raises(pccl.InvalidArgumentError) as e:
        pccl.Communicator("no-port-here")
    assert isinstance(e.value, ValueError) and e.value.result == 3
    with pytest.raises(ValueError):
        pccl.ReduceDescriptor(1, 99, 0)
    with pytest.raises(pccl.PCCLError):
        pccl.MasterNode("not an address")


def test_connect_to_nothing_fails():
    c = pccl.Communicator("127.0.0.1:1", p2p_bind_address="127.0.0.1:0")
    with pytest.raises(pccl.MasterConnectionError) as e:
        c.connect(n_attempts=1)
    assert e.value.result == pccl.Result.MASTER_CONNECTION_FAILED
    assert isinstance(e.value, ConnectionError)


def test_connect_twice_is_invalid_usage(master):
    c = pccl.Communicator(master.listen_address, p2p_bind_address="127.0.0.1:0")
    c.connect()
    with pytest.raises(pccl.InvalidUsageError):
        c.connect()
    c.close()


def test_master_run_twice():
    m = pccl.MasterNode("127.0.0.1:0")
    m.run()
    assert m.port != 0
    with pytest.raises(pccl.PCCLError) as e:
        m.run()
    assert e.value.result == pccl.Result.INVALID_ARGUMENT
    m.interrupt()
    m.await_termination()


def test_master_crash_raises():
    # A panic of the master's thread must surface as an error, never as a clean stop.
    m = pccl.MasterNode("127.0.0.1:0")
    m.run()
    m._crash_for_tests()
    with pytest.raises(pccl.InternalError) as e:
        m.await_termination()
    assert "the master crashed" in str(e.value)
    assert e.value.result == pccl.Result.INTERNAL_ERROR
    # Asked again, it says the same.
    with pytest.raises(pccl.InternalError):
        m.await_termination()


# `python -m pccl.master` whose master crashes right after it starts listening.
_CRASHING_MASTER = """
import sys
import pccl.master as pm
from pccl import _pccl

class Crashing:
    def __init__(self, addr):
        self.m = _pccl.MasterNode(addr)
    def run(self):
        self.m.run()
        self.m._crash_for_tests()
    def __getattr__(self, name):
        return getattr(self.m, name)

pm.MasterNode = Crashing
sys.exit(pm.main(["--listen-address", "127.0.0.1:0"]))
"""


def test_python_m_pccl_master_crash_exits_nonzero(procs):
    p = procs.start(["-c", _CRASHING_MASTER])
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 1, out
    assert "the master crashed" in out


def test_exceptions_pickle():
    import pickle

    e = pickle.loads(pickle.dumps(pccl.ConnectionLostError("lost", 8)))
    assert isinstance(e, pccl.ConnectionLostError) and e.result == 8


def test_python_m_pccl_master(procs):
    p = procs.start(["-m", "pccl.master", "--listen-address", "127.0.0.1:0"])
    line = p.stdout.readline()
    assert "listening on 127.0.0.1:" in line
    port = int(line.rsplit(":", 1)[1])
    c = pccl.Communicator(f"127.0.0.1:{port}", p2p_bind_address="127.0.0.1:0")
    c.connect(n_attempts=3)
    assert c.get_attribute(pccl.Attribute.GLOBAL_WORLD_SIZE) == 1
    c.close()
    p.send_signal(2)
    assert p.wait(timeout=10) == 0


def test_native_module_is_private():
    assert _pccl.__name__ == "pccl._pccl"
    out = subprocess.run([sys.executable, "-c", "import pccl; print(pccl.build_info())"],
                         capture_output=True, text=True, timeout=60)
    assert "has_cuda_support" in out.stdout
