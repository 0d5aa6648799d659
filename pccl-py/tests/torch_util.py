"""Helpers for the torch.distributed backend tests: groups of ``pccl.torch.ProcessGroup``
driven from threads of this process (each over its own communicator and loopback TCP)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from conftest import run_parallel


def torch_groups(master: Any, n: int, timeout: float = 60.0) -> list[Any]:
    """`n` process groups of one run, in rank order; each waited for the run to reach `n`."""
    import pccl.torch as pt

    groups = run_parallel([
        lambda: pt.ProcessGroup(master.listen_address, world_size=n, p2p_bind_address="127.0.0.1:0")
        for _ in range(n)
    ], timeout)
    groups.sort(key=lambda pg: pg.rank())
    assert [pg.rank() for pg in groups] == list(range(n))
    assert all(pg.size() == n for pg in groups)
    return groups


def on_each(groups: Sequence[Any], fn: Callable[[Any], Any], timeout: float = 60.0) -> list[Any]:
    """fn(pg) for every group at once (one thread each); the results in rank order."""
    return run_parallel([lambda pg=pg: fn(pg) for pg in groups], timeout)


def close_all(groups: Sequence[Any]) -> None:
    for pg in groups:
        pg.shutdown()
