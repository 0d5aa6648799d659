"""``Work`` objects of the ``pccl`` backend and the thread that completes them.

A collective starts its pccl ops at once, on the caller's thread, in program order (so
every peer starts the same ops with the same tags in the same order), and returns a
``Work``. One thread per process group (the *completer*) then waits for each work's ops in
the order they were started, retries an op that a peer's death failed, and completes the
work: its ``wait()`` returns (or raises) and its future gets the output tensors (or the
exception).

Why retry before raising (pccl-py/README.md, "Faults"): after a death, a survivor may start
an op in the new membership that another survivor had already started (and seen fail) in
the old one. pccl pairs the first with the second's *retry* (docs/ARCHITECTURE.md §4), so
every failed op is run again until it completes on the survivors; the work then raises
``PeerLostError`` because the op ran on fewer peers than the group had. Every survivor
thus runs every op to the same end and raises for the same collectives."""

from __future__ import annotations

import queue
import threading
from datetime import timedelta
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist

import pccl
from pccl.torch._errors import PcclBackendError, PeerLostError, backend_error

# Codes of an op that failed because the ring changed (a peer died or a link broke); the op
# is run again while two or more peers remain.
_RETRYABLE = (int(pccl.Result.RANK_CONNECTION_LOST), int(pccl.Result.RANK_CONNECTION_FAILED))
# Attempts of one op, at most: each retry follows a ring failure, so this bounds the
# retries of one op by the failures a run can see while it runs.
_MAX_ATTEMPTS = 16


class CollectiveTimeoutError(PcclBackendError, TimeoutError):
    """``Work.wait()`` gave up after the group's timeout; the op goes on in the background
    (other peers are not left waiting for this one)."""


class AsyncOp:
    """One pccl op of a collective, started at once with `start()` (which returns an
    ``AsyncReduceHandle``) and started again with the same tag after a ring failure."""

    def __init__(self, start: Callable[[], Any]) -> None:
        self._start = start
        self._handle = start()

    def finish(self, world: Callable[[], int], expected: int) -> int:
        """Waits for the op, running it again after a ring failure while `world()` (the
        group's live size) is two or more; returns the group size it completed on. Raises
        ``PeerLostError`` when it failed after the group shrank below `expected` (a
        collective whose sizes depend on the group fails everywhere once it did), and the
        backend error of the op's code otherwise."""
        status = int(pccl.Result.INTERNAL_ERROR)
        for _ in range(_MAX_ATTEMPTS):
            ok, status, info = self._handle.wait()
            if ok:
                return int(info.local_world_size)
            live = world()
            if status not in _RETRYABLE or live < 2:
                if live != expected:
                    raise peer_lost(live, expected, status)
                raise backend_error("pccl collective failed", result=status)
            self._handle = self._start()
        raise backend_error(f"pccl collective failed {_MAX_ATTEMPTS} times", result=status)


def peer_lost(ran_on: int, expected: int, status: Optional[int] = None) -> PeerLostError:
    """The error of a collective that ran (or would have run) on fewer peers than the
    group had at its last update_topology()."""
    why = f" (pccl: {pccl.Result(status).name})" if status is not None else ""
    return PeerLostError(
        f"a peer left the run: the group had {expected} peers, the ring now has {ran_on}{why}; "
        f"call update_topology() on every survivor before the next collective")


class Work(dist.Work):
    """The handle torch gets for a collective of the ``pccl`` backend.

    ``wait(timeout)`` blocks until the collective ended, returns ``True`` or raises its
    error (a ``PcclBackendError``); ``get_future()`` is a ``torch.futures.Future`` whose
    value is the list of output tensors. A zero or absent timeout means the group's."""

    def __init__(self, outputs: list[torch.Tensor], ops: Sequence[AsyncOp] = (),
                 after: Optional[Callable[[], None]] = None, timeout: timedelta = timedelta(0),
                 expected_world: int = 0) -> None:
        super().__init__()
        self._expected_world = expected_world
        self._outputs = outputs
        self._ops = list(ops)
        self._after = after
        self._timeout = timeout
        self._done = threading.Event()
        self._error: Optional[BaseException] = None
        devices = sorted({t.device for t in outputs if t.device.type != "cpu"}, key=str)
        self._future: torch.futures.Future[list[torch.Tensor]] = torch.futures.Future(devices=devices or None)

    @classmethod
    def completed(cls, outputs: list[torch.Tensor]) -> Work:
        """A work that has nothing to wait for (a group of one, an empty tensor)."""
        w = cls(outputs)
        w._complete(None)
        return w

    def _run(self, world: Callable[[], int], on_error: Callable[[BaseException], None]) -> None:
        """Completer thread: finishes every op (even after one failed, so this peer stays in
        step with the others) and completes the work, after passing its error (if any) to
        `on_error`."""
        error: Optional[BaseException] = None
        for op in self._ops:
            try:
                ran_on = op.finish(world, self._expected_world)
            except BaseException as e:  # noqa: BLE001 - completes the work with it
                error = error or e
                continue
            if ran_on != self._expected_world and error is None:
                error = peer_lost(ran_on, self._expected_world)
        self._ops = []
        if error is None and self._after is not None:
            try:
                self._after()
            except BaseException as e:  # noqa: BLE001
                error = e
        if error is not None:
            on_error(error)
        self._complete(error)

    def _complete(self, error: Optional[BaseException]) -> None:
        # The future first: once wait() returns, get_future().value() must hold.
        self._error = error
        if error is None:
            self._future.set_result(self._outputs)
        else:
            self._future.set_exception(error)
        self._done.set()

    def wait(self, timeout: timedelta = timedelta(0)) -> bool:
        bound = timeout if timeout and timeout > timedelta(0) else self._timeout
        seconds = bound.total_seconds() if bound > timedelta(0) else None
        if not self._done.wait(seconds):
            raise CollectiveTimeoutError(
                f"the pccl collective did not finish within {bound}; it goes on in the background")
        if self._error is not None:
            raise self._error
        return True

    def get_future(self) -> torch.futures.Future[list[torch.Tensor]]:
        return self._future

    def is_completed(self) -> bool:
        return self._done.is_set()

    def is_success(self) -> bool:
        return self._done.is_set() and self._error is None

    def exception(self) -> Optional[BaseException]:
        return self._error

    def result(self) -> list[torch.Tensor]:
        self.wait()
        return self._outputs

    def synchronize(self) -> None:
        self.wait()


class Completer:
    """The thread that completes a group's works in the order they were started."""

    def __init__(self, name: str, world: Callable[[], int], on_error: Callable[[BaseException], None]) -> None:
        self._queue: queue.SimpleQueue[Optional[Work]] = queue.SimpleQueue()
        self._world = world
        self._on_error = on_error
        self._idle = threading.Condition()
        self._pending = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, work: Work) -> Work:
        with self._idle:
            self._pending += 1
        self._queue.put(work)
        return work

    def drain(self, timeout: Optional[float]) -> bool:
        """Waits until every submitted work is complete; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def stop(self, timeout: float) -> None:
        """Ends the thread after the works submitted before; waits up to `timeout` seconds
        for it to exit (unless called on it).

        The thread is a daemon (a program that never shuts its group down still exits),
        so it must be gone before the interpreter finalizes: a daemon thread that takes the
        GIL during finalization is ended where it stands, and inside torch's C++ (a
        ``Work``'s destructor releases and retakes the GIL) that ends the process with
        ``std::terminate``."""
        self._queue.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            work = self._queue.get()
            if work is None:
                return
            work._run(self._world, self._on_error)
            # Dropped now rather than when the next get() returns: after the last work
            # that may be during the interpreter's finalization (see `stop`).
            del work
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()
