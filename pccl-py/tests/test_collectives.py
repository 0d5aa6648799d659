"""pccl extensions through the Python API: rank, reduce-scatter, all-gather and broadcast
with numpy arrays and torch CPU tensors, peers on threads of this process (loopback TCP,
a real master). Results are checked against a reference and across peers bit for bit."""

import numpy as np
import pytest

import pccl

from conftest import form_group, run_parallel


@pytest.fixture
def group3(master):
    comms = form_group(master.listen_address, 3)
    yield comms
    for c in comms:
        c.close()


def ranks_of(comms):
    ranks = [c.rank() for c in comms]
    assert sorted(ranks) == [0, 1, 2]
    return ranks


def test_numpy_collectives(group3):
    ranks = ranks_of(group3)
    n, block = 3, 257

    def peer(c, r):
        send = (np.arange(n * block, dtype=np.float32) * 0.5 + r).astype(np.float32)
        part = np.zeros(block, dtype=np.float32)
        c.reduce_scatter(send, part, op=pccl.ReduceOp.SUM, tag=1)
        full = np.zeros(n * block, dtype=np.float32)
        c.all_reduce(send, full, op=pccl.ReduceOp.SUM, tag=2)
        assert part.tobytes() == full[r * block:(r + 1) * block].tobytes()
        mine = np.full(block, r * 1000, dtype=np.int64) + np.arange(block)
        gathered = np.zeros(n * block, dtype=np.int64)
        info = c.all_gather(mine, gathered, tag=3)
        assert info.local_world_size == 3
        want = np.concatenate([np.full(block, q * 1000, dtype=np.int64) + np.arange(block)
                               for q in range(n)])
        assert np.array_equal(gathered, want)
        buf = np.frombuffer(np.random.default_rng(r).bytes(8 * block), dtype=np.float64).copy()
        c.broadcast(buf, root=1, tag=4)
        src = np.frombuffer(np.random.default_rng(1).bytes(8 * block), dtype=np.float64)
        assert buf.tobytes() == src.tobytes()  # NaN payloads included
        return part, gathered.tobytes(), buf.tobytes()

    out = run_parallel([lambda c=c, r=r: peer(c, r) for c, r in zip(group3, ranks)])
    for o in out[1:]:
        assert o[1] == out[0][1] and o[2] == out[0][2]


def test_torch_cpu_collectives(group3):
    torch = pytest.importorskip("torch")
    ranks = ranks_of(group3)

    def peer(c, r):
        send = torch.arange(12, dtype=torch.bfloat16) + r
        part = torch.zeros(4, dtype=torch.bfloat16)
        c.reduce_scatter(send, part, op=pccl.ReduceOp.MAX, tag=1)
        assert torch.equal(part, torch.arange(4 * r, 4 * r + 4, dtype=torch.bfloat16) + 2)
        mine = torch.full((5,), float(r))
        gathered = torch.empty(15)
        c.all_gather(mine, gathered, tag=2)
        assert torch.equal(gathered, torch.tensor([0.0] * 5 + [1.0] * 5 + [2.0] * 5))
        t = torch.full((7,), float(r), dtype=torch.float64)
        c.broadcast(t, root=2, tag=3)
        assert torch.equal(t, torch.full((7,), 2.0, dtype=torch.float64))

    run_parallel([lambda c=c, r=r: peer(c, r) for c, r in zip(group3, ranks)])


def test_bad_arguments_raise_clear_errors(group3):
    c = group3[0]
    with pytest.raises(pccl.InvalidArgumentError, match="dtype"):
        c.all_gather(np.zeros(3, dtype=np.float32), np.zeros(9, dtype=np.float64))
    with pytest.raises(pccl.InvalidArgumentError, match="empty"):
        c.all_gather(np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.float32))

    # A root that is not a rank fails on every peer, and the tag works afterwards.
    def bad_root(c):
        # Its own check names the root; a peer that hears the others' failure verdict
        # before it calls fails that call with it (docs/ARCHITECTURE.md §4).
        with pytest.raises((pccl.InvalidArgumentError, pccl.InvalidUsageError)):
            c.broadcast(np.zeros(4, dtype=np.uint8), root=3, tag=9)
        t = np.full(4, c.rank(), dtype=np.uint8)
        for _ in range(3):
            try:
                c.broadcast(t, root=0, tag=9)
                break
            except (pccl.InvalidUsageError, pccl.InvalidArgumentError):
                pass
        return t.tolist()

    assert run_parallel([lambda c=c: bad_root(c) for c in group3]) == [[0] * 4] * 3
