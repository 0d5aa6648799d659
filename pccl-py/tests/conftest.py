"""Shared helpers: an in-process master, groups of connected communicators driven from
threads, and bounded subprocess handling. Every wait is bounded; every process started
is killed at the end of its test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest

import pccl

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "python"


def run_parallel(fns: Sequence[Callable[[], Any]], timeout: float = 30.0) -> list[Any]:
    """Runs each function on its own (daemon) thread; returns their results in order.
    Re-raises the first exception; fails if any thread is still running at `timeout`."""
    results: list[Any] = [None] * len(fns)
    errors: list[BaseException | None] = [None] * len(fns)

    def wrap(i: int) -> None:
        try:
            results[i] = fns[i]()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors[i] = e

    threads = [threading.Thread(target=wrap, args=(i,), daemon=True) for i in range(len(fns))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        pytest.fail(f"threads still running after {timeout} s")
    for e in errors:
        if e is not None:
            raise e
    return results


def wait_until(pred: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Polls `pred` until it holds; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def form_group(address: str, n: int, peer_group: int | Sequence[int] = 0,
               timeout: float = 30.0,
               make: Callable[[int], pccl.Communicator] | None = None) -> list[pccl.Communicator]:
    """`n` connected communicators, all accepted into the run, their p2p listeners on
    loopback. `peer_group` is one group
    for all or a list with each communicator's group. `make(i)`, if given, creates the
    i-th communicator instead (e.g. with its own run secret)."""
    groups = [peer_group] * n if isinstance(peer_group, int) else list(peer_group)
    assert len(groups) == n
    if make is None:
        comms = [pccl.Communicator(address, g, p2p_bind_address="127.0.0.1:0") for g in groups]
    else:
        comms = [make(i) for i in range(n)]
    comms[0].connect()
    done = [threading.Event() for _ in comms]
    done[0].set()

    def connect(i: int) -> None:
        comms[i].connect()
        done[i].set()

    for i in range(1, n):
        threading.Thread(target=connect, args=(i,), daemon=True).start()
    deadline = time.monotonic() + timeout
    # The accepted peers vote on the topology until every newcomer is in; a vote with
    # nobody pending yet just returns, and the loop votes again.
    while not all(d.is_set() for d in done):
        if time.monotonic() > deadline:
            pytest.fail("peers were not accepted in time")
        time.sleep(0.2)
        accepted = [c for c, d in zip(comms, done) if d.is_set()]
        run_parallel([c.update_topology for c in accepted], timeout)
    return comms


@pytest.fixture
def master():
    m = pccl.MasterNode("127.0.0.1:0")
    m.run()
    yield m
    m.interrupt()


@pytest.fixture
def group2(master):
    comms = form_group(master.listen_address, 2)
    yield comms
    for c in comms:
        c.close()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Procs:
    """Child processes of one test, all killed at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, args: Sequence[str], **kw: Any) -> subprocess.Popen[str]:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(kw.pop("env", {}))
        p = subprocess.Popen(
            [sys.executable, *args],
            stdout=kw.pop("stdout", subprocess.PIPE),
            stderr=kw.pop("stderr", subprocess.STDOUT),
            text=True,
            env=env,
            start_new_session=True,
            # A shell runs background jobs with SIGINT ignored, and children inherit that;
            # Python then never raises KeyboardInterrupt. Tests that send SIGINT need the
            # default disposition, whatever the runner's was.
            preexec_fn=_default_sigint,
            **kw,
        )
        self.procs.append(p)
        return p

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


class Child:
    """A child process (started with `procs.start`) whose output lines a thread collects."""

    def __init__(self, procs: Procs, args: Sequence[str], name: str) -> None:
        self.name = name
        self.p = procs.start(args)
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.append(line.rstrip())

    def output(self) -> str:
        return f"--- {self.name} (exit {self.p.poll()}) ---\n" + "\n".join(self.lines[-40:])

    def kill(self) -> None:
        os.killpg(self.p.pid, signal.SIGKILL)
        self.p.wait(timeout=10)


def finish(children: Sequence[Child], timeout: float) -> None:
    """Waits (at most `timeout` s in all) for every child to exit; each must exit 0."""
    deadline = time.monotonic() + timeout
    for c in children:
        try:
            c.p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"{c.name} did not finish\n" + "\n".join(q.output() for q in children))
        c.thread.join(5)
        assert c.p.returncode == 0, "\n".join(q.output() for q in children)


@pytest.fixture
def procs():
    p = Procs()
    yield p
    p.kill_all()


def torch_or_skip():
    return pytest.importorskip("torch")


def cuda_or_skip(torch: Any) -> None:
    """Skips the test unless pccl and torch can both use a CUDA device. The reason starts
    with "CUDA:", the one optional device `pccl-py/scripts/test.sh` accepts as skipped."""
    if not pccl.build_info()["has_cuda_support"]:
        pytest.skip("CUDA: pccl was built without its cuda feature")
    if not pccl.cuda.is_cuda_available():
        pytest.skip("CUDA: no device or driver (pccl.cuda.is_cuda_available() is False)")
    if not torch.cuda.is_available():
        pytest.skip("CUDA: torch sees no device (torch.cuda.is_available() is False)")
