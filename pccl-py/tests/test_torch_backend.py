"""The ``pccl`` torch.distributed backend through ``torch.distributed`` functions only:
the torch tests of the pccl API (test_communicator.py, test_tensor.py) re-expressed with
``dist.*``, the Work/future contract, argument checks, groups of one, rendezvous URLs and
the exception types. Ranks are threads of this process, each with its own group."""

from __future__ import annotations

from datetime import timedelta

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402

import pccl  # noqa: E402
import pccl.torch as pt  # noqa: E402
from conftest import cuda_or_skip  # noqa: E402
from torch_util import close_all, on_each, torch_groups  # noqa: E402


@pytest.fixture
def pgs2(master):
    groups = torch_groups(master, 2)
    yield groups
    close_all(groups)


def same_bits(a, b) -> bool:
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def test_registered_with_torch():
    assert "pccl" in dist.Backend.backend_list
    assert dist.Backend("pccl") == "pccl"
    assert dist.Backend.backend_capability["pccl"] == ["cpu", "cuda"]
    assert issubclass(pt.PeerLostError, dist.DistBackendError)
    assert issubclass(pt.PeerLostError, pccl.ConnectionLostError)
    assert issubclass(pt.PcclBackendError, pccl.PCCLError)


def test_identity(pgs2):
    for r, pg in enumerate(pgs2):
        assert (pg.rank(), pg.size(), dist.get_world_size(pg)) == (r, 2, 2)
        assert pg.name() == "pccl" and pg._get_backend_name() == "pccl"
        assert pg.communicator.get_attribute(pccl.Attribute.GLOBAL_WORLD_SIZE) == 2


def test_all_dtypes_including_bfloat16(pgs2):
    """test_communicator.py::test_torch_all_dtypes_including_bfloat16 via dist.all_reduce."""
    g = torch.Generator().manual_seed(0)
    inputs = [[torch.randint(0, 5, (1001,), generator=g).to(dt) for dt in pt.SUPPORTED_DTYPES] for _ in pgs2]
    outs = [[t.clone() for t in ts] for ts in inputs]

    def rank(pg):
        for t in outs[pg.rank()]:
            dist.all_reduce(t, group=pg)

    on_each(pgs2, rank)
    for k, dt in enumerate(pt.SUPPORTED_DTYPES):
        want = (inputs[0][k].to(torch.float64) + inputs[1][k].to(torch.float64)).to(dt)
        assert same_bits(outs[0][k], outs[1][k]), dt
        assert same_bits(outs[0][k], want), dt


def test_in_place_bf16_avg(pgs2):
    ts = [torch.full((513,), float(i + 1), dtype=torch.bfloat16) for i in range(2)]
    on_each(pgs2, lambda pg: dist.all_reduce(ts[pg.rank()], op=dist.ReduceOp.AVG, group=pg))
    assert torch.equal(ts[0], torch.full((513,), 1.5, dtype=torch.bfloat16))
    assert same_bits(ts[0], ts[1])


def test_async_work_and_future(pgs2):
    xs = [torch.arange(10_000, dtype=torch.float32) * (i + 1) for i in range(2)]

    def rank(pg):
        work = dist.all_reduce(xs[pg.rank()], group=pg, async_op=True)
        fut = work.get_future()
        chained = fut.then(lambda f: f.value()[0].sum().item())
        assert work.wait() is True and work.wait(timeout=timedelta(seconds=5)) is True
        assert work.is_completed() and work.is_success() and work.exception() is None
        assert fut.value()[0] is xs[pg.rank()]
        return chained.wait()

    sums = on_each(pgs2, rank)
    assert torch.equal(xs[0], torch.arange(10_000, dtype=torch.float32) * 3)
    assert sums[0] == sums[1] == float(xs[0].sum())
    assert same_bits(xs[0], xs[1])


def test_coalesced_many(pgs2):
    """test_communicator.py::test_async_and_multiple's batch, as all_reduce_coalesced."""
    sends = [[torch.full((100 + k,), k + i, dtype=torch.int64) for k in range(6)] for i in range(2)]
    with pytest.warns(FutureWarning):
        on_each(pgs2, lambda pg: dist.all_reduce_coalesced(sends[pg.rank()], group=pg))
    for k in range(6):
        assert (sends[0][k] == 2 * k + 1).all() and torch.equal(sends[0][k], sends[1][k])


def test_coalescing_manager_and_many_in_flight(pgs2):
    ts = [[torch.full((50 * k + 1,), float(i + k)) for k in range(8)] for i in range(2)]

    def rank(pg):
        with dist._coalescing_manager(group=pg, async_ops=True) as cm:
            for t in ts[pg.rank()]:
                dist.all_reduce(t, group=pg)
        cm.wait()
        works = [dist.all_reduce(t, op=dist.ReduceOp.MAX, group=pg, async_op=True) for t in ts[pg.rank()]]
        for w in reversed(works):
            w.wait()

    on_each(pgs2, rank)
    for k in range(8):
        assert torch.equal(ts[0][k], torch.full((50 * k + 1,), float(2 * k + 1)))
        assert same_bits(ts[0][k], ts[1][k])


def test_complex_sum(pgs2):
    ts = [torch.full((9,), complex(1, i + 1), dtype=torch.complex64) for i in range(2)]
    on_each(pgs2, lambda pg: dist.all_reduce(ts[pg.rank()], group=pg))
    assert torch.equal(ts[0], torch.full((9,), complex(2, 3), dtype=torch.complex64))


def test_barrier_and_empty_tensor(pgs2):
    def rank(pg):
        dist.barrier(group=pg)
        e = torch.zeros(0)
        dist.all_reduce(e, group=pg)
        return e.numel()

    assert on_each(pgs2, rank) == [0, 0]


def test_bad_arguments_raise_value_errors(pgs2):
    """gloo's checks and error types: ValueError (here pccl.InvalidArgumentError, also a
    ValueError and a RuntimeError); nothing is sent, so one rank alone can try them."""
    pg = pgs2[0]
    bad = [
        (torch.zeros(4, 4).t(), dist.ReduceOp.SUM, "contiguous"),
        (torch.zeros(3, dtype=torch.bool), dist.ReduceOp.SUM, "bool"),
        (torch.zeros(3, 3).to_sparse(), dist.ReduceOp.SUM, "dense"),
        (torch.zeros(3), dist.ReduceOp.BAND, "does not support ReduceOp.BAND"),
        (torch.zeros(3), dist._make_nccl_premul_sum(2.0), "does not support ReduceOp.PREMUL_SUM"),
    ]
    for t, op, match in bad:
        with pytest.raises(ValueError, match=match):
            dist.all_reduce(t, op=op, group=pg)
    with pytest.raises(ValueError, match="exactly one tensor"):
        pg.allreduce([torch.zeros(2), torch.zeros(2)])
    with pytest.raises(ValueError, match="CPU and CUDA"):
        pg.allreduce_coalesced([torch.zeros(2), torch.zeros(2, device="meta")])
    with pytest.raises(ValueError, match="complex"):  # torch's own check
        dist.all_reduce(torch.zeros(3, dtype=torch.complex64), op=dist.ReduceOp.MAX, group=pg)
    # Nothing was started: the group still works.
    ts = [torch.ones(3) for _ in pgs2]
    on_each(pgs2, lambda pg: dist.all_reduce(ts[pg.rank()], group=pg))
    assert torch.equal(ts[0], torch.full((3,), 2.0))


def test_group_of_one(master):
    (pg,) = torch_groups(master, 1)
    try:
        t = torch.arange(5.0)
        for op in (dist.ReduceOp.SUM, dist.ReduceOp.AVG, dist.ReduceOp.MAX):
            dist.all_reduce(t, op=op, group=pg)
        assert torch.equal(t, torch.arange(5.0))
        dist.barrier(group=pg)
        assert pg.size() == 1 and pg.rank() == 0
    finally:
        pg.shutdown()
    with pytest.raises(pccl.InvalidUsageError):
        dist.all_reduce(t, group=pg)


def test_exit_shuts_open_groups_down(master):
    """Groups a program leaves open are shut down at its exit, before the interpreter
    finalizes: the completer threads have ended (a daemon thread still inside torch's C++
    when Python finalizes aborts the process) and the groups are closed."""
    from pccl.torch import _group

    groups = torch_groups(master, 2)
    ts = [torch.arange(4.0) * (r + 1) for r in range(2)]
    on_each(groups, lambda pg: dist.all_reduce(ts[pg.rank()], group=pg))
    assert same_bits(ts[0], ts[1]) and torch.equal(ts[0], torch.arange(4.0) * 3)
    threads = [pg._completer._thread for pg in groups]
    assert all(t.is_alive() for t in threads)
    _group._shutdown_at_exit()  # what atexit runs
    assert not any(t.is_alive() for t in threads)
    assert not list(_group._open_groups)
    with pytest.raises(pccl.InvalidUsageError):
        dist.all_reduce(torch.ones(4), group=groups[0])


def test_cuda_tensors(pgs2):
    cuda_or_skip(torch)
    g = torch.Generator().manual_seed(0)
    host = [torch.randn(100_003, generator=g) for _ in range(2)]
    dev = [h.cuda() for h in host]
    on_each(pgs2, lambda pg: dist.all_reduce(dev[pg.rank()], group=pg))
    assert same_bits(dev[0].cpu(), dev[1].cpu())
    assert torch.allclose(dev[0].cpu(), host[0] + host[1])


def test_rendezvous_urls():
    from pccl.torch._rendezvous import _query

    assert _query("pccl://127.0.0.1:48148") == ("127.0.0.1:48148", {})
    assert _query("pccl://[::1]:5?bind=127.0.0.1:0&world_size=3") == ("[::1]:5", {"bind": "127.0.0.1:0", "world_size": "3"})
    for bad in ("pccl://127.0.0.1", "pccl://:4"):
        with pytest.raises(ValueError, match="pccl://host:port"):
            _query(bad)


def test_env_master_required(monkeypatch):
    """Without pccl:// and PCCL_MASTER_ADDR, the backend says what it needs."""
    monkeypatch.delenv("PCCL_MASTER_ADDR", raising=False)
    store = dist.HashStore()
    with pytest.raises(ValueError, match="PCCL_MASTER_ADDR"):
        dist.init_process_group(backend="pccl", store=store, rank=0, world_size=1)
    assert not dist.is_initialized()


def test_wait_timeout_then_completes(pgs2):
    """A work whose peer is late times out in wait() (CollectiveTimeoutError, a
    DistBackendError); the op goes on and completes once the peer comes."""
    a, b = pgs2
    ta, tb = torch.ones(8), torch.full((8,), 2.0)
    work = dist.all_reduce(ta, group=a, async_op=True)
    with pytest.raises(pt.CollectiveTimeoutError) as e:
        work.wait(timeout=timedelta(milliseconds=300))
    assert isinstance(e.value, dist.DistBackendError) and not work.is_completed()
    dist.all_reduce(tb, group=b)
    assert work.wait(timeout=timedelta(seconds=30))
    assert torch.equal(ta, torch.full((8,), 3.0)) and torch.equal(ta, tb)


def test_peer_leaves_then_update_topology(master):
    """A peer leaves a group of 3 between collectives: the next collective raises
    PeerLostError on both survivors (torch's and pccl's exception types), the works'
    futures carry it, and after update_topology() the group is the two survivors,
    renumbered 0 and 1, and collectives run again."""
    groups = torch_groups(master, 3)
    leaver, survivors = groups[1], [groups[0], groups[2]]
    try:
        leaver.shutdown()

        def step(pg):
            t = torch.full((16,), float(pg.rank() + 1))
            work = dist.all_reduce(t, group=pg, async_op=True)
            with pytest.raises(pt.PeerLostError) as e:
                work.wait()
            assert isinstance(e.value, dist.DistBackendError) and isinstance(e.value, pccl.ConnectionLostError)
            assert e.value.result == pccl.Result.RANK_CONNECTION_LOST
            with pytest.raises(pt.PeerLostError):
                work.get_future().wait()
            assert pg.failure is not None and pg.size() == 3
            with pytest.raises(pt.PeerLostError):  # still, until update_topology()
                dist.all_reduce(t, group=pg)
            pg.update_topology()
            assert pg.failure is None
            u = torch.full((16,), float(pg.rank() + 1))
            dist.all_reduce(u, group=pg)
            return pg.rank(), pg.size(), u

        results = on_each(survivors, step)
        assert sorted(r for r, _, _ in results) == [0, 1]
        assert all(size == 2 for _, size, _ in results)
        assert all(torch.equal(u, torch.full((16,), 3.0)) for _, _, u in results)
    finally:
        close_all(survivors)


def test_import_without_torch_says_so(procs):
    p = procs.start(["-c", "import sys; sys.modules['torch'] = None\n"
                           "try:\n    import pccl.torch\nexcept ImportError as e:\n    print('ImportError:', e)\n"])
    out, _ = p.communicate(timeout=60)
    assert "ImportError: pccl.torch needs PyTorch" in out, out


def test_init_process_group_rank_is_the_runs(master):
    """init_process_group with pccl://: the run decides the rank (a different requested
    one is warned about), the default group is a pccl.torch.ProcessGroup, and
    destroy_process_group leaves the run."""
    url = f"pccl://{master.listen_address}?bind=127.0.0.1:0"
    with pytest.warns(UserWarning, match="authoritative"):
        dist.init_process_group(backend="pccl", init_method=url, world_size=1, rank=3)
    try:
        pg = dist.group.WORLD
        assert isinstance(pg, pt.ProcessGroup) and dist.get_backend() == "pccl"
        assert (dist.get_rank(), dist.get_world_size()) == (0, 1)
        t = torch.arange(4.0)
        dist.all_reduce(t)
        dist.barrier()
        assert torch.equal(t, torch.arange(4.0))
    finally:
        dist.destroy_process_group()
    with pytest.raises(pccl.InvalidUsageError):
        pg.allreduce([t])


def test_from_communicator(group2):
    """A group over communicators connected through the pccl API."""
    pgs = sorted((pt.ProcessGroup.from_communicator(c) for c in group2), key=lambda pg: pg.rank())
    assert [pg.rank() for pg in pgs] == [0, 1] and all(pg.size() == 2 for pg in pgs)
    ts = [torch.full((5,), float(pg.rank())) for pg in pgs]
    on_each(pgs, lambda pg: dist.all_reduce(ts[pg.rank()], op=dist.ReduceOp.MAX, group=pg))
    assert torch.equal(ts[0], torch.ones(5)) and torch.equal(ts[1], torch.ones(5))


def test_init_with_torch_rendezvous_and_pccl_master_addr(master, monkeypatch):
    """Any other rendezvous (here an explicit store, as torchrun's env:// gives one): the
    backend finds the master through PCCL_MASTER_ADDR."""
    monkeypatch.setenv("PCCL_MASTER_ADDR", master.listen_address)
    monkeypatch.setenv("PCCL_P2P_BIND_ADDRESS", "127.0.0.1:0")
    dist.init_process_group(backend="pccl", store=dist.HashStore(), rank=0, world_size=1)
    try:
        assert isinstance(dist.group.WORLD, pt.ProcessGroup)
        assert (dist.get_rank(), dist.get_world_size()) == (0, 1)
        t = torch.ones(3)
        dist.all_reduce(t, op=dist.ReduceOp.AVG)
        assert torch.equal(t, torch.ones(3))
        with pytest.raises(ValueError, match="new_group"):
            dist.new_group(ranks=[0])
    finally:
        dist.destroy_process_group()
