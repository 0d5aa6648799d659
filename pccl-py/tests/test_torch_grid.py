"""The ``pccl`` torch.distributed backend: every collective × reduce op × dtype at world
sizes 2 to 4, through ``torch.distributed`` functions, each rank a thread of this process
with its own process group (its own communicator, loopback TCP). Every output is checked
bit for bit against a reference computed here and against the other ranks'."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402

import pccl.torch as pt  # noqa: E402
from conftest import cuda_or_skip  # noqa: E402
from torch_util import close_all, on_each, torch_groups  # noqa: E402

OPS = {"SUM": dist.ReduceOp.SUM, "AVG": dist.ReduceOp.AVG, "PRODUCT": dist.ReduceOp.PRODUCT,
       "MIN": dist.ReduceOp.MIN, "MAX": dist.ReduceOp.MAX}
NUMEL = 37  # not a multiple of any world size, so chunks are uneven inside pccl


def values(rank: int, case: int, numel: int = NUMEL) -> torch.Tensor:
    """Small positive integers (1..3) as float64: every sum, product, min and max of up to
    four of them is exact in every dtype, so references are exact too."""
    i = torch.arange(numel, dtype=torch.int64)
    return ((i * (rank + 2) + case * 7 + rank) % 3 + 1).to(torch.float64)


def reference(op: str, xs: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """What pccl computes (docs/ARCHITECTURE.md §5): exact integer results; AVG divides the
    sum once, floats in their own precision (16-bit floats via float32), integers
    truncating."""
    stack = torch.stack(xs)
    if op in ("SUM", "AVG"):
        out = stack.sum(0)
    elif op == "PRODUCT":
        out = stack.prod(0)
    elif op == "MIN":
        out = stack.amin(0)
    else:
        out = stack.amax(0)
    if op != "AVG":
        return out.to(dtype)
    n = len(xs)
    if dtype.is_floating_point:
        wide = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        return (out.to(dtype).to(wide) / n).to(dtype)
    return torch.div(out, n, rounding_mode="trunc").to(dtype)


def as_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().cpu().view(torch.uint8).numpy().tobytes()


def rank_program(pg, device: str = "cpu") -> list[tuple[str, bytes]]:
    """What each rank runs: every collective, in the same order on every rank."""
    r, n = pg.rank(), pg.size()

    def inputs(rank: int, case: int, numel: int = NUMEL) -> torch.Tensor:
        return values(rank, case, numel).to(device)

    def empty(numel: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(numel, dtype=dtype, device=device)

    out: list[tuple[str, bytes]] = []
    case = 0
    for dtype in pt.SUPPORTED_DTYPES:
        for name, op in OPS.items():
            case += 1
            t = inputs(r, case).to(dtype)
            dist.all_reduce(t, op=op, group=pg)
            out.append((f"all_reduce {dtype} {name}", as_bytes(t)))

            case += 1
            ts = [inputs(r, case, k).to(dtype) for k in (1, NUMEL, 3)]
            dist.all_reduce_coalesced(ts, op=op, group=pg)
            out.append((f"all_reduce_coalesced {dtype} {name}", b"".join(as_bytes(t) for t in ts)))

            case += 1
            x = inputs(r, case, n * NUMEL).to(dtype)
            y = empty(NUMEL, dtype)
            dist.reduce_scatter_tensor(y, x, op=op, group=pg)
            out.append((f"reduce_scatter_tensor {dtype} {name}", as_bytes(y)))

            case += 1
            xs = list(inputs(r, case, n * NUMEL).to(dtype).chunk(n))
            y = empty(NUMEL, dtype)
            dist.reduce_scatter(y, xs, op=op, group=pg)
            out.append((f"reduce_scatter {dtype} {name}", as_bytes(y)))

        case += 1
        x = inputs(r, case).to(dtype)
        y = empty(n * NUMEL, dtype)
        dist.all_gather_into_tensor(y, x, group=pg)
        out.append((f"all_gather_into_tensor {dtype}", as_bytes(y)))

        case += 1
        ys = [empty(NUMEL, dtype) for _ in range(n)]
        dist.all_gather(ys, inputs(r, case).to(dtype), group=pg)
        out.append((f"all_gather {dtype}", b"".join(as_bytes(y) for y in ys)))

        case += 1
        xs = [inputs(r, case, k).to(dtype) for k in (2, NUMEL)]
        ys = [empty(n * x.numel(), dtype) for x in xs]
        with dist._coalescing_manager(group=pg, async_ops=True) as cm:
            for x, y in zip(xs, ys):
                dist.all_gather_into_tensor(y, x, group=pg)
        cm.wait()
        out.append((f"all_gather_into_tensor_coalesced {dtype}", b"".join(as_bytes(y) for y in ys)))

        for root in range(n):
            case += 1
            t = inputs(r, case).to(dtype)
            dist.broadcast(t, group_src=root, group=pg)
            out.append((f"broadcast {dtype} root {root}", as_bytes(t)))
    dist.barrier(group=pg)
    return out


def expected(n: int) -> list[tuple[str, bytes]]:
    """The same sequence of cases, computed from every rank's inputs."""
    want: list[tuple[str, bytes]] = []
    case = 0
    for dtype in pt.SUPPORTED_DTYPES:
        for name in OPS:
            case += 1
            want.append((f"all_reduce {dtype} {name}",
                         as_bytes(reference(name, [values(r, case) for r in range(n)], dtype))))
            case += 1
            want.append((f"all_reduce_coalesced {dtype} {name}", b"".join(
                as_bytes(reference(name, [values(r, case, k) for r in range(n)], dtype)) for k in (1, NUMEL, 3))))
            for kind in ("reduce_scatter_tensor", "reduce_scatter"):
                case += 1
                full = reference(name, [values(r, case, n * NUMEL) for r in range(n)], dtype)
                want.append((f"{kind} {dtype} {name}", [as_bytes(c) for c in full.chunk(n)]))
        for kind in ("all_gather_into_tensor", "all_gather"):
            case += 1
            want.append((f"{kind} {dtype}", as_bytes(torch.cat([values(r, case) for r in range(n)]).to(dtype))))
        case += 1
        want.append((f"all_gather_into_tensor_coalesced {dtype}", b"".join(
            as_bytes(torch.cat([values(r, case, k) for r in range(n)]).to(dtype)) for k in (2, NUMEL))))
        for root in range(n):
            case += 1
            want.append((f"broadcast {dtype} root {root}", as_bytes(values(root, case).to(dtype))))
    return want


@pytest.mark.timeout(240)
@pytest.mark.parametrize("world", [2, 3, 4])
def test_every_collective_op_and_dtype(master, world):
    check_grid(master, world, "cpu")


@pytest.mark.timeout(240)
def test_every_collective_op_and_dtype_cuda(master):
    cuda_or_skip(torch)
    check_grid(master, 2, "cuda")


def check_grid(master, world: int, device: str) -> None:
    groups = torch_groups(master, world)
    try:
        results = on_each(groups, lambda pg: rank_program(pg, device), timeout=200)
    finally:
        close_all(groups)
    want = expected(world)
    for rank, got in enumerate(results):
        assert [name for name, _ in got] == [name for name, _ in want]
        for i, ((name, data), (_, ref)) in enumerate(zip(got, want)):
            if isinstance(ref, list):  # reduce-scatter: rank r holds chunk r of the reduction
                assert data == ref[rank], f"rank {rank}: {name} differs from the reference"
                continue
            assert data == results[0][i][1], f"rank {rank} differs from rank 0: {name}"
            assert data == ref, f"rank {rank}: {name} differs from the reference"
    # reduce-scatter: the chunks of all ranks together are the all-reduce's bits
    for i, (name, ref) in enumerate(want):
        if isinstance(ref, list):
            assert b"".join(results[r][i][1] for r in range(world)) == b"".join(ref), name
