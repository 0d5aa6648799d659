"""Tensor inputs: every dtype of numpy and torch, and clear errors for bad inputs."""

import numpy as np
import pytest

import pccl

from conftest import cuda_or_skip, run_parallel

NUMPY_DTYPES = ["uint8", "int8", "int16", "uint16", "uint32", "int32", "uint64", "int64",
                "float16", "float32", "float64"]


def test_tensor_info_numpy_all_dtypes():
    for name in NUMPY_DTYPES:
        a = np.zeros(6, dtype=name)
        info = pccl.TensorInfo.from_numpy(a, "t")
        assert info.dtype is pccl.DataType.from_numpy_dtype(a.dtype)
        assert info.numel == 6 and info.data_ptr == a.ctypes.data
        assert info.device_type is pccl.DeviceType.CPU


def test_tensor_info_torch_all_dtypes():
    torch = pytest.importorskip("torch")
    for dt in pccl.DataType:
        t = torch.zeros(5, dtype=dt.to_torch_dtype())
        info = pccl.TensorInfo.from_torch(t, "t", allow_content_inequality=True)
        assert info.dtype is dt and info.numel == 5 and info.data_ptr == t.data_ptr()
        assert info.allow_content_inequality


def test_non_contiguous_rejected():
    a = np.zeros((4, 4), dtype=np.float32)[:, 1]
    with pytest.raises(ValueError, match="contiguous"):
        pccl.TensorInfo.from_numpy(a, "x")
    with pytest.raises(pccl.PCCLError, match="contiguous"):
        pccl.TensorInfo.from_numpy(a, "x")
    torch = pytest.importorskip("torch")
    t = torch.zeros(4, 4).t()
    with pytest.raises(pccl.InvalidArgumentError, match="contiguous"):
        pccl.TensorInfo.from_torch(t, "x")


def test_unsupported_dtypes_rejected():
    for a in (np.zeros(3, dtype=bool), np.zeros(3, dtype=np.complex64), np.zeros(3, dtype=">f4"),
              np.array(["a", "b"])):
        with pytest.raises(pccl.InvalidArgumentError, match="dtype"):
            pccl.TensorInfo.from_numpy(a, "x")
    torch = pytest.importorskip("torch")
    for t in (torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.complex64)):
        with pytest.raises(pccl.InvalidArgumentError, match="dtype"):
            pccl.TensorInfo.from_torch(t, "x")
    with pytest.raises(pccl.InvalidArgumentError, match="layout"):
        pccl.TensorInfo.from_torch(torch.zeros(3, 3).to_sparse(), "x")


def test_wrong_library_rejected():
    with pytest.raises(pccl.InvalidArgumentError):
        pccl.TensorInfo.from_numpy([1, 2, 3], "x")
    torch = pytest.importorskip("torch")
    with pytest.raises(pccl.InvalidArgumentError, match="numpy"):
        pccl.TensorInfo.from_numpy(torch.zeros(3), "x")
    with pytest.raises(pccl.InvalidArgumentError, match="torch"):
        pccl.TensorInfo.from_torch(np.zeros(3), "x")


def test_shared_state_validation():
    with pytest.raises(pccl.InvalidArgumentError):
        pccl.SharedState([])
    a = np.zeros(3)
    with pytest.raises(pccl.InvalidArgumentError, match="duplicate"):
        pccl.SharedState([pccl.TensorInfo.from_numpy(a, "x"), pccl.TensorInfo.from_numpy(a, "x")])
    s = pccl.SharedState([pccl.TensorInfo.from_numpy(a, "x")])
    assert s.revision == 0
    s.revision = 7
    s.push_revision()
    assert s.revision == 8


def test_all_reduce_argument_errors(group2):
    c = group2[0]
    f32 = np.zeros(8, dtype=np.float32)
    cases = [
        (f32, np.zeros(8, dtype=np.float64), "dtype"),
        (f32, np.zeros(9, dtype=np.float32), "size"),
        (f32, np.zeros(8, dtype=np.float32)[::-1], "contiguous"),
        (f32, np.zeros((2, 8), dtype=np.float32)[:, 0], "contiguous"),
        (np.zeros(8, dtype=bool), np.zeros(8, dtype=bool), "dtype"),
        (f32[1:], f32[:-1], "overlap"),
        ([1.0], [2.0], "torch.Tensor or a numpy.ndarray"),
    ]
    ro = np.zeros(8, dtype=np.float32)
    ro.flags.writeable = False
    cases.append((f32, ro, "read-only"))
    for send, recv, msg in cases:
        with pytest.raises(pccl.InvalidArgumentError, match=msg):
            c.all_reduce(send, recv, op=pccl.ReduceOp.SUM)
        with pytest.raises(ValueError, match=msg):
            c.all_reduce_async(send, recv, op=pccl.ReduceOp.SUM)
    with pytest.raises(pccl.InvalidArgumentError):
        c.all_reduce(f32, f32, op=42)
    with pytest.raises(pccl.InvalidArgumentError, match="operand_descriptor"):
        c.all_reduce(f32, f32, op=pccl.ReduceOp.SUM,
                     operand_descriptor=pccl.ReduceOperandDescriptor(pccl.DataType.DOUBLE))
    torch = pytest.importorskip("torch")
    with pytest.raises(pccl.InvalidArgumentError, match="both be torch tensors or both numpy"):
        c.all_reduce(torch.zeros(8), f32, op=pccl.ReduceOp.SUM)
    with pytest.raises(pccl.InvalidArgumentError):
        c.all_reduce(torch.zeros(0), torch.zeros(0), op=pccl.ReduceOp.SUM)


def test_tensor_hash_is_byte_defined():
    a = np.arange(100, dtype=np.float32)
    b = a.copy()
    assert pccl.tensor_hash(a) == pccl.tensor_hash(b)
    assert pccl.tensor_hash(a) == pccl.tensor_hash(a.view(np.uint8))
    b[3] += 1
    assert pccl.tensor_hash(a) != pccl.tensor_hash(b)
    torch = pytest.importorskip("torch")
    assert pccl.tensor_hash(torch.from_numpy(a)) == pccl.tensor_hash(a)


def test_cuda_is_reported_consistently():
    available = pccl.cuda.is_cuda_available()
    assert isinstance(available, bool)
    support = pccl.build_info()["has_cuda_support"]
    assert isinstance(support, bool)
    assert support or not available, "a device is usable but the build has no CUDA support"
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        assert available, "torch sees a GPU but pccl does not"


def _reduce_pair(comms, make, op):
    def one(i):
        send, recv = make(i)
        info = comms[i].all_reduce(send, recv, op=op)
        return recv, info
    return run_parallel([lambda i=i: one(i) for i in range(len(comms))])


def test_cuda_all_reduce_and_hash_match_cpu(group2):
    torch = pytest.importorskip("torch")
    cuda_or_skip(torch)
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(100_003, generator=g, dtype=torch.float32) for _ in range(2)]
    for dt in (torch.float32, torch.bfloat16, torch.float16, torch.int64):
        cpu = _reduce_pair(group2, lambda i: (data[i].to(dt), torch.empty(100_003, dtype=dt)),
                           pccl.ReduceOp.SUM)
        gpu = _reduce_pair(group2, lambda i: (data[i].to(dt).cuda(),
                                              torch.empty(100_003, dtype=dt, device="cuda")),
                           pccl.ReduceOp.SUM)
        for (c, _), (g_, _) in zip(cpu, gpu):
            assert torch.equal(c.view(torch.uint8), g_.cpu().view(torch.uint8))
            assert pccl.tensor_hash(c) == pccl.tensor_hash(g_)


def test_cuda_shared_state_matches_cpu(group2):
    """Peer 0 holds its state on the GPU, peer 1 on the CPU: both end bit-identical."""
    torch = pytest.importorskip("torch")
    cuda_or_skip(torch)
    g = torch.Generator().manual_seed(3)
    src = torch.randn(50_001, generator=g).to(torch.bfloat16)
    gpu = src.clone().cuda()
    cpu = torch.zeros_like(src)
    states = [pccl.SharedState([pccl.TensorInfo.from_torch(gpu, "w")]),
              pccl.SharedState([pccl.TensorInfo.from_torch(cpu, "w")])]
    assert states[0].tensor_infos[0].device_type is pccl.DeviceType.CUDA
    strategies = [pccl.SharedStateSyncStrategy.SEND_ONLY, pccl.SharedStateSyncStrategy.RECEIVE_ONLY]
    run_parallel([lambda i=i: group2[i].sync_shared_state(states[i], strategies[i]) for i in range(2)])
    assert torch.equal(cpu.view(torch.int16), src.view(torch.int16))
    assert pccl.tensor_hash(gpu) == pccl.tensor_hash(cpu) == pccl.tensor_hash(src)
    # and the other way round: the GPU tensor receives
    gpu.zero_()
    states[0].revision = states[1].revision = 0
    strategies.reverse()
    run_parallel([lambda i=i: group2[i].sync_shared_state(states[i], strategies[i]) for i in range(2)])
    assert torch.equal(gpu.cpu().view(torch.int16), src.view(torch.int16))
