"""Collectives and shared state through the Python API, with peers on threads of this
process (loopback TCP, a real master)."""

import numpy as np
import pytest

import pccl

from conftest import form_group, run_parallel

OPS = [pccl.ReduceOp.SUM, pccl.ReduceOp.AVG, pccl.ReduceOp.PROD, pccl.ReduceOp.MAX,
       pccl.ReduceOp.MIN]


def expected(inputs, op):
    stack = np.stack(inputs)
    if op == pccl.ReduceOp.SUM:
        return stack.sum(axis=0, dtype=stack.dtype)
    if op == pccl.ReduceOp.PROD:
        return stack.prod(axis=0, dtype=stack.dtype)
    if op == pccl.ReduceOp.MAX:
        return stack.max(axis=0)
    if op == pccl.ReduceOp.MIN:
        return stack.min(axis=0)
    if np.issubdtype(stack.dtype, np.integer):
        return (stack.sum(axis=0, dtype=stack.dtype) // len(inputs)).astype(stack.dtype)
    return (stack.sum(axis=0, dtype=stack.dtype) / stack.dtype.type(len(inputs))).astype(stack.dtype)


def test_world_attributes(group2):
    for c in group2:
        assert c.get_attribute(pccl.Attribute.GLOBAL_WORLD_SIZE) == 2
        assert c.get_attribute(pccl.Attribute.LOCAL_WORLD_SIZE) == 2
        assert c.get_attribute(pccl.Attribute.NUM_DISTINCT_PEER_GROUPS) == 1
        assert c.get_attribute(pccl.Attribute.LARGEST_PEER_GROUP_WORLD_SIZE) == 2
    assert run_parallel([c.are_peers_pending for c in group2]) == [False, False]
    run_parallel([c.optimize_topology for c in group2])
    run_parallel([c.update_topology for c in group2])


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "uint16", "uint32", "int32",
                                   "uint64", "int64", "float16", "float32", "float64"])
def test_numpy_all_ops(group2, dtype):
    rng = np.random.default_rng(1)
    for op in OPS:
        inputs = [rng.integers(1, 4, size=37).astype(dtype) for _ in group2]
        outs = [np.zeros_like(x) for x in inputs]
        infos = run_parallel([
            lambda i=i: group2[i].all_reduce(inputs[i], outs[i], op=op, tag=int(op))
            for i in range(2)
        ])
        want = expected(inputs, op)
        for o, info in zip(outs, infos):
            assert o.tobytes() == want.tobytes(), (dtype, op)
            assert info.local_world_size == 2
        assert outs[0].tobytes() == outs[1].tobytes()


def test_torch_all_dtypes_including_bfloat16(group2):
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    for dt in pccl.DataType:
        tdt = dt.to_torch_dtype()
        inputs = [torch.randint(0, 5, (1001,), generator=g).to(tdt) for _ in group2]
        outs = [torch.empty_like(x) for x in inputs]
        run_parallel([
            lambda i=i: group2[i].all_reduce(inputs[i], outs[i], op=pccl.ReduceOp.SUM)
            for i in range(2)
        ])
        want = (inputs[0].to(torch.float64) + inputs[1].to(torch.float64)).to(tdt)
        assert torch.equal(outs[0].view(torch.uint8), outs[1].view(torch.uint8)), dt
        assert torch.equal(outs[0], want), dt


def test_in_place_and_bf16_avg(group2):
    torch = pytest.importorskip("torch")
    ts = [torch.full((513,), float(i + 1), dtype=torch.bfloat16) for i in range(2)]
    run_parallel([lambda i=i: group2[i].all_reduce(ts[i], ts[i], op=pccl.ReduceOp.AVG)
                  for i in range(2)])
    assert torch.equal(ts[0], torch.full((513,), 1.5, dtype=torch.bfloat16))
    assert torch.equal(ts[0], ts[1])


def test_async_and_multiple(group2):
    xs = [np.arange(10_000, dtype=np.float32) * (i + 1) for i in range(2)]
    ys = [np.zeros_like(x) for x in xs]

    def peer(i):
        handles = [group2[i].all_reduce_async(xs[i], ys[i], op=pccl.ReduceOp.SUM, tag=7)]
        ok, status, info = handles[0].wait()
        assert handles[0].wait() == (ok, status, info)
        assert handles[0].is_finished()
        return ok, status, info

    for ok, status, info in run_parallel([lambda i=i: peer(i) for i in range(2)]):
        assert ok and status == 0 and info.local_world_size == 2
    assert np.array_equal(ys[0], xs[0] * 3)

    def multi(i):
        sends = [np.full(100 + k, k + i, dtype=np.int64) for k in range(6)]
        recvs = [np.zeros_like(s) for s in sends]
        descs = [pccl.ReduceOpDescriptor.from_numpy(
            s, r, pccl.ReduceDescriptor(s.size, pccl.ReduceOp.SUM, 100 + k,
                                        pccl.ReduceOperandDescriptor(pccl.DataType.INT64),
                                        pccl.QuantizationOptions(pccl.DataType.INT64,
                                                                 pccl.QuantizationAlgorithm.NONE)))
            for k, (s, r) in enumerate(zip(sends, recvs))]
        info = group2[i].all_reduce_multiple_with_retry(descs, max_in_flight=2)
        return recvs, info

    results = run_parallel([lambda i=i: multi(i) for i in range(2)])
    for recvs, info in results:
        for k, r in enumerate(recvs):
            assert (r == 2 * k + 1).all()
        assert info.tx_bytes > 0


def test_async_failure_is_reported_not_raised(master):
    (c,) = form_group(master.listen_address, 1)
    h = c.all_reduce_async(np.ones(4), np.zeros(4), op=pccl.ReduceOp.SUM)
    ok, status, _ = h.wait()
    assert not ok and status == pccl.Result.TOO_FEW_PEERS
    with pytest.raises(pccl.TooFewPeersError):
        c.all_reduce(np.ones(4), np.zeros(4), op=pccl.ReduceOp.SUM)
    c.close()


def test_shared_state_numpy_and_torch(group2):
    torch = pytest.importorskip("torch")
    weights = [torch.full((1000,), float(i), dtype=torch.bfloat16) for i in range(2)]
    counters = [np.full(3, 10 * i, dtype=np.int64) for i in range(2)]
    rng_state = [np.full(2, i, dtype=np.uint8) for i in range(2)]
    states = [pccl.SharedState([
        pccl.TensorInfo.from_torch(weights[i], "w"),
        pccl.TensorInfo.from_numpy(counters[i], "c"),
        pccl.TensorInfo.from_numpy(rng_state[i], "rng", allow_content_inequality=True),
    ]) for i in range(2)]
    states[0].revision = 3
    strategies = [pccl.SharedStateSyncStrategy.SEND_ONLY, pccl.SharedStateSyncStrategy.RECEIVE_ONLY]
    infos = run_parallel([lambda i=i: group2[i].sync_shared_state(states[i], strategies[i])
                          for i in range(2)])
    assert infos[0].tx_bytes > 0 and infos[1].rx_bytes > 0
    assert states[1].revision == 3
    assert torch.equal(weights[1], weights[0]) and np.array_equal(counters[1], counters[0])
    assert pccl.tensor_hash(weights[0]) == pccl.tensor_hash(weights[1])
    assert rng_state[1][0] == 0, "a newcomer receives unequal-allowed tensors too"
    # Next step: everyone presents revision + 1 with equal content; nothing moves.
    for s in states:
        s.push_revision()
    infos = run_parallel([lambda i=i: group2[i].sync_shared_state(states[i]) for i in range(2)])
    assert all(i.rx_bytes == 0 for i in infos)
    assert [s.revision for s in states] == [4, 4]


def test_peer_groups(master):
    comms = form_group(master.listen_address, 4, peer_group=[0, 0, 1, 1])
    assert comms[2].get_attribute(pccl.Attribute.GLOBAL_WORLD_SIZE) == 4
    assert comms[2].get_attribute(pccl.Attribute.LOCAL_WORLD_SIZE) == 2
    assert comms[2].get_attribute(pccl.Attribute.NUM_DISTINCT_PEER_GROUPS) == 2
    xs = [np.full(5, float(i)) for i in range(4)]
    run_parallel([lambda i=i: comms[i].all_reduce(xs[i], xs[i], op=pccl.ReduceOp.SUM)
                  for i in range(4)])
    assert (xs[0] == 1).all() and (xs[2] == 5).all()
    for c in comms:
        c.close()


def test_multiple_rejects_ops_that_overlap(group2):
    buf = np.zeros(10)
    d = pccl.ReduceDescriptor(5, pccl.ReduceOp.SUM, 0)
    a = pccl.ReduceOpDescriptor.from_numpy(buf[:5], buf[5:], d)
    b = pccl.ReduceOpDescriptor.from_numpy(buf[5:], buf[:5], pccl.ReduceDescriptor(5, pccl.ReduceOp.SUM, 1))
    with pytest.raises(pccl.InvalidArgumentError, match="descriptor"):
        group2[0].all_reduce_multiple_with_retry([a, b])
    with pytest.raises(pccl.InvalidArgumentError):
        pccl.ReduceOpDescriptor.from_numpy(buf[:5], buf[:5], pccl.ReduceDescriptor(6, pccl.ReduceOp.SUM, 0))


def test_async_keeps_temporaries_alive(group2):
    import gc

    def peer(i):
        h = group2[i].all_reduce_async(np.full(200_000, float(i)), np.zeros(200_000),
                                       op=pccl.ReduceOp.SUM, tag=9)
        gc.collect()
        return h.wait()

    for ok, status, info in run_parallel([lambda i=i: peer(i) for i in range(2)]):
        assert ok and status == 0


def test_fork_child_cannot_use_parent_communicator(group2):
    import os

    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            group2[0].get_attribute(pccl.Attribute.GLOBAL_WORLD_SIZE)
        except pccl.InvalidUsageError:
            code = 0
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


@pytest.mark.parametrize("algorithm", [pccl.QuantizationAlgorithm.MIN_MAX,
                                       pccl.QuantizationAlgorithm.ZERO_POINT_SCALE])
def test_quantized_all_reduce(group2, algorithm):
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal(10_000).astype(np.float32) for _ in range(2)]
    ys = [np.zeros_like(x) for x in xs]
    q = pccl.QuantizationOptions(pccl.DataType.UINT8, algorithm)
    run_parallel([lambda i=i: group2[i].all_reduce(xs[i], ys[i], op=pccl.ReduceOp.SUM,
                                                   quantization_options=q)
                  for i in range(2)])
    assert ys[0].tobytes() == ys[1].tobytes()
    exact = xs[0] + xs[1]
    assert np.abs(ys[0] - exact).max() < 0.2
    assert not np.array_equal(ys[0], exact)
