"""Issue #13 through Python: the run outlives its master (docs/ARCHITECTURE.md §14). A
master process (``python -m pccl.master``) is killed with SIGKILL while four peers loop
shared-state syncs and all-reduces (blocking and async, two tags), and a new one is
started on the same port; every op succeeds with the same bits on every peer, or fails
and its retry succeeds. A master gone for good fails every peer's call with
``MasterConnectionError`` within ``master_reconnect_timeout`` plus a second."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import numpy as np

import pccl
from conftest import form_group, run_parallel, wait_until

N = 4096


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_master(procs, port: int):
    """A master process on 127.0.0.1:port, listening once this returns."""
    p = procs.start(["-m", "pccl.master", "--listen-address", f"127.0.0.1:{port}"])
    line = p.stdout.readline()  # bounded: the process prints it, or dies and closes stdout
    assert line.startswith("pccl master listening"), line
    return p


def kill9(p) -> None:
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=10)


def retried(what: str, deadline: float, fn):
    """Calls `fn` until it succeeds; a failure must be one a retry heals."""
    tries = 0
    while True:
        tries += 1
        try:
            return fn(), tries
        except (pccl.ConnectionLostError, pccl.UpdateTopologyFailedError):
            assert time.monotonic() < deadline, f"{what}: still failing at the deadline"


def group(port: int, n: int, reconnect: float) -> list[pccl.Communicator]:
    """`n` accepted peers of the master on `port`, re-dialling it for `reconnect` s."""
    return form_group(f"127.0.0.1:{port}", n, make=lambda _: pccl.Communicator(
        f"127.0.0.1:{port}", 0, p2p_bind_address="127.0.0.1:0",
        master_reconnect_timeout=reconnect))


def step(c: pccl.Communicator, rank: int, s: int, state, counter, deadline: float):
    """Update topology, a sync whose counter and revision advance by one, then a blocking
    all-reduce (tag 1) with an async one (tag 2) in flight; returns the results' bytes and
    the number of tries the ops took."""
    if s > 0:
        retried("update topology", deadline, c.update_topology)
    counter[0] = s
    retried("sync", deadline, lambda: c.sync_shared_state(
        state, pccl.SharedStateSyncStrategy.ENFORCE_POPULAR))
    assert state.revision == s and counter[0] == s, "the revision goes on, never back"
    state.push_revision()
    x1 = ((np.arange(N) * 7 + rank + s) % 13).astype(np.float32) * 0.25
    x2 = (np.arange(N, dtype=np.uint32) * (rank + 1) + s).astype(np.uint32)
    y1, y2 = np.zeros_like(x1), np.zeros_like(x2)

    def both():
        h = c.all_reduce_async(x2, y2, op=pccl.ReduceOp.MAX, tag=2)
        try:
            c.all_reduce(x1, y1, op=pccl.ReduceOp.SUM, tag=1)
        finally:
            ok, status, _ = h.wait()
        if not ok:
            raise pccl.ConnectionLostError("async all-reduce failed", status)

    _, tries = retried("all-reduces", deadline, both)
    return y1.tobytes() + y2.tobytes(), tries


def test_master_killed_and_restarted_mid_run(procs):
    world, steps = 4, 30
    port = free_port()
    master = start_master(procs, port)
    comms = group(port, world, 30.0)
    progress = [0] * world
    deadline = time.monotonic() + 120

    def peer(rank: int):
        counter = np.zeros(1, dtype=np.uint64)
        state = pccl.SharedState([pccl.TensorInfo.from_numpy(counter, "counter")])
        out = []
        for s in range(steps):
            out.append(step(comms[rank], rank, s, state, counter, deadline))
            progress[rank] += 1
        return out, comms[rank].get_attribute(pccl.Attribute.GLOBAL_WORLD_SIZE)

    results: list = []
    runner = threading.Thread(
        target=lambda: results.extend(run_parallel([lambda r=r: peer(r) for r in range(world)],
                                                   timeout=120)),
        daemon=True)
    runner.start()
    for at, outage in ((5, 0.2), (15, 5.0)):
        wait_until(lambda: min(progress) >= at or not runner.is_alive(), f"step {at}", 60)
        assert runner.is_alive(), "the peers stopped before the restart"
        kill9(master)
        time.sleep(outage)
        master = start_master(procs, port)
    runner.join(130)
    assert not runner.is_alive() and len(results) == world, "the peers did not finish"
    for rank, (out, size) in enumerate(results):
        assert size == world, f"rank {rank}: a peer was lost"
        assert len(out) == steps
        for s, got in enumerate(out):
            assert got == results[0][0][s], f"rank {rank} step {s}: bit parity"
    want = sum(((np.arange(N) * 7 + r + steps - 1) % 13).astype(np.float32) * 0.25
               for r in range(world))
    assert np.frombuffer(results[0][0][-1][0][: N * 4], dtype=np.float32).tolist() == want.tolist()
    for c in comms:
        c.close()


def test_master_gone_for_good(procs):
    port = free_port()
    master = start_master(procs, port)
    comms = group(port, 3, 2.0)
    kill9(master)
    killed = time.monotonic()

    def call(c: pccl.Communicator):
        x, y = np.ones(64, dtype=np.float32), np.zeros(64, dtype=np.float32)
        try:
            c.all_reduce(x, y, op=pccl.ReduceOp.SUM, tag=3)
        except pccl.MasterConnectionError:
            return time.monotonic() - killed
        raise AssertionError("the all-reduce did not fail")

    for took in run_parallel([lambda c=c: call(c) for c in comms], timeout=10):
        assert took < 3.0, f"failed only after {took:.2f} s"
    for c in comms:
        try:
            c.update_topology()
        except pccl.MasterConnectionError:
            pass
        else:
            raise AssertionError("update_topology after the timeout did not fail")
        c.close()
