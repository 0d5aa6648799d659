"""``pccl.torch.ProcessGroup``: a ``torch.distributed.ProcessGroup`` over one pccl
communicator (pccl-py/README.md, "torch.distributed backend").

The group's rank and size are those of the run's ring as of the group's creation or its
last ``update_topology()``: the run's membership is authoritative (a death shrinks it, a
joint ``update_topology()`` admits newcomers), and torch sees the change at the next
``update_topology()``. Every collective is started on the caller's thread with the next
tag of the group's counter (all peers make the same collectives in the same order, so
they agree on tags; ``update_topology()`` resets the counter on every member, newcomers
included) and completed by the group's completer thread (``_work.py``)."""

from __future__ import annotations

import atexit
import itertools
import threading
import time
import warnings
import weakref
from datetime import timedelta
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist

import pccl
from pccl.torch import _ops
from pccl.torch._errors import backend_error
from pccl.torch._work import AsyncOp, Completer, Work

#: torch's default timeout for collectives of CPU backends, also ours.
DEFAULT_TIMEOUT = timedelta(minutes=30)
# Attempts of one update_topology() call that a concurrent death made fail (retryable).
_TOPOLOGY_ATTEMPTS = 8
_groups = itertools.count()
# Seconds shutdown() waits for collectives in flight before it closes the communicator,
# and then for the completer thread to exit.
_SHUTDOWN_WAIT = 10.0
# Groups not shut down yet; the program's exit shuts them down (`_shutdown_at_exit`).
_open_groups: weakref.WeakSet[ProcessGroup] = weakref.WeakSet()


@atexit.register
def _shutdown_at_exit() -> None:
    """Shuts down the groups a program leaves open when it exits, before the interpreter
    finalizes: each leaves the run, and its completer thread ends while Python still runs
    (``Completer.stop`` says why that matters)."""
    for pg in list(_open_groups):
        try:
            pg.shutdown()
        except Exception as e:  # noqa: BLE001 - the other groups still shut down
            warnings.warn(f"pccl: shutting down a process group at exit failed: {e}", stacklevel=1)


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the memory of two dense tensors overlaps."""
    a0, b0 = a.data_ptr(), b.data_ptr()
    return a0 < b0 + b.numel() * b.element_size() and b0 < a0 + a.numel() * a.element_size()


def _ring_rank(comm: pccl.Communicator) -> int:
    """This peer's position in its group's ring (its rank): the communicator's rank query
    (``comm.rank()``, or the ``RANK`` attribute, whichever this build of pccl has)."""
    query = getattr(comm, "rank", None)
    if callable(query):
        return int(query())
    attribute = getattr(pccl.Attribute, "RANK", None)
    if attribute is None:
        raise pccl.InternalError("this build of pccl has no rank query (Communicator.rank)")
    return int(comm.get_attribute(attribute))


def _group_size(comm: pccl.Communicator) -> int:
    return int(comm.get_attribute(pccl.Attribute.PEER_GROUP_WORLD_SIZE))


def _joint(call: Callable[[], Any]) -> Any:
    """Runs a joint call, again while a concurrent death makes it fail (retryable)."""
    for attempt in range(_TOPOLOGY_ATTEMPTS):
        try:
            return call()
        except pccl.UpdateTopologyFailedError:
            if attempt + 1 == _TOPOLOGY_ATTEMPTS:
                raise
            time.sleep(0.05)


def _formed(comm: pccl.Communicator, world_size: int) -> bool:
    """Whether this peer's group has `world_size` peers, and so has every peer group of the
    run (all groups of a run pass the same size: each is a replica of the others)."""
    groups = int(comm.get_attribute(pccl.Attribute.NUM_DISTINCT_PEER_GROUPS))
    total = int(comm.get_attribute(pccl.Attribute.GLOBAL_WORLD_SIZE))
    return _group_size(comm) >= world_size and total >= world_size * groups


def form_run(comm: pccl.Communicator, world_size: int, timeout: timedelta) -> None:
    """Admits waiting peers (joint ``update_topology`` calls with every accepted peer) until
    the run is formed (`_formed`). Every accepted peer sees the same sizes after each call,
    so all of them return after the same one; a peer accepted into a run that is already
    large enough returns at once."""
    deadline = time.monotonic() + timeout.total_seconds()
    while not _formed(comm, world_size):
        if time.monotonic() > deadline:
            raise dist.DistNetworkError(
                f"pccl: the run has {_group_size(comm)} of the {world_size} peers "
                f"init_process_group asked for after {timeout}")
        before = int(comm.get_attribute(pccl.Attribute.GLOBAL_WORLD_SIZE))
        _joint(comm.update_topology)
        if int(comm.get_attribute(pccl.Attribute.GLOBAL_WORLD_SIZE)) == before:
            time.sleep(0.05)  # nobody was waiting yet


class ProcessGroup(dist.ProcessGroup):
    """A torch process group over a pccl run.

    ``ProcessGroup(master, world_size=N)`` connects to the master at `master` ("host:port"),
    waits until the run has at least N peers (joint calls with the peers already in it) and
    is ready for ``torch.distributed`` collectives; `communicator_kwargs` go to
    ``pccl.Communicator`` (``peer_group``, ``p2p_bind_address``, ``secret``, ...).
    ``ProcessGroup.from_communicator(comm)`` wraps a connected communicator.
    ``init_process_group(backend="pccl")`` makes one as the default group.

    Faults: a collective that a peer's death disrupts raises ``PeerLostError`` (a
    ``torch.distributed.DistBackendError`` and a ``pccl.ConnectionLostError``) on every
    survivor, as does every later one until ``update_topology()``, after which the group is
    the survivors (and any newcomers), with new ranks and size."""

    def __init__(self, master: str, *, world_size: int = 1, timeout: timedelta = DEFAULT_TIMEOUT,
                 connect_attempts: int = 15, **communicator_kwargs: Any) -> None:
        communicator_kwargs.setdefault("p2p_bind_address", "0.0.0.0:0")
        comm = pccl.Communicator(master, **communicator_kwargs)
        comm.connect(n_attempts=connect_attempts)
        try:
            form_run(comm, world_size, timeout)
        except BaseException:
            comm.close()
            raise
        self._setup(comm, timeout)

    @classmethod
    def from_communicator(cls, comm: pccl.Communicator, *, timeout: timedelta = DEFAULT_TIMEOUT) -> ProcessGroup:
        """A group over `comm`, which is connected (accepted into the run). The group uses
        it for collectives and ``update_topology``; keep other joint calls on it in step
        with the other peers'."""
        pg = cls.__new__(cls)
        pg._setup(comm, timeout)
        return pg

    def _setup(self, comm: pccl.Communicator, timeout: timedelta) -> None:
        self._comm = comm
        self._timeout = timeout
        self._rank = _ring_rank(comm)
        self._size = _group_size(comm)
        super().__init__(self._rank, self._size)
        self._lock = threading.Lock()
        self._tags = itertools.count()
        self._failure: Optional[BaseException] = None
        self._closed = False
        self._group_name = f"pccl{next(_groups)}"
        self._group_desc = "pccl"
        self._completer = Completer(f"pccl-torch-pg{next(_groups)}", self._live_size, self._note_failure)
        _open_groups.add(self)

    # --- identity -----------------------------------------------------------------------

    def getBackendName(self) -> str:  # noqa: N802 - torch's C++ name
        return "pccl"

    def name(self) -> str:
        return "pccl"

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size

    def getRank(self) -> int:  # noqa: N802
        return self._rank

    def getSize(self) -> int:  # noqa: N802
        return self._size

    # torch keeps a group's name and description in its backends, which this group (a
    # Python ProcessGroup) has none of; DeviceMesh and FSDP read them.
    def getGroupName(self) -> str:  # noqa: N802
        return self._group_name

    def setGroupName(self, name: str) -> None:  # noqa: N802
        self._group_name = name

    def getGroupDesc(self) -> str:  # noqa: N802
        return self._group_desc

    def setGroupDesc(self, desc: str) -> None:  # noqa: N802
        self._group_desc = desc

    @property
    def group_name(self) -> str:
        return self._group_name

    @property
    def group_desc(self) -> str:
        return self._group_desc

    @property
    def communicator(self) -> pccl.Communicator:
        """The pccl communicator under this group (for shared state, stats, ...)."""
        return self._comm

    @property
    def timeout(self) -> timedelta:
        return self._timeout

    def set_timeout(self, timeout: timedelta) -> None:
        self._timeout = timeout

    @property
    def failure(self) -> Optional[BaseException]:
        """The first error of a collective since the last ``update_topology()``, or None.
        Code that sees a collective fail inside torch (a DDP backward re-raises it as a
        ``RuntimeError``) checks this to know the failure was pccl's."""
        return self._failure

    # --- membership ---------------------------------------------------------------------

    def _live_size(self) -> int:
        return _group_size(self._comm)

    def _note_failure(self, error: BaseException) -> None:
        if self._failure is None:
            self._failure = error

    def _drain(self) -> None:
        if not self._completer.drain(self._timeout.total_seconds()):
            raise backend_error(f"collectives of this group did not finish within {self._timeout}")

    def update_topology(self) -> None:
        """Joint call of every peer of the run: waits for this group's collectives, admits
        waiting peers and takes on the run's current membership (after a death: the
        survivors, renumbered). Retries while a concurrent death makes it fail."""
        self._check_open()
        self._drain()
        _joint(self._comm.update_topology)
        self._refresh()

    def are_peers_pending(self) -> bool:
        """Joint call: whether peers wait to be admitted by ``update_topology()``."""
        self._check_open()
        self._drain()
        return bool(_joint(self._comm.are_peers_pending))

    def optimize_topology(self) -> None:
        """Joint call: measures links and re-orders the ring (ranks change)."""
        self._check_open()
        self._drain()
        self._comm.optimize_topology()
        self._refresh()

    def _refresh(self) -> None:
        with self._lock:
            self._rank = _ring_rank(self._comm)
            self._size = _group_size(self._comm)
            self._tags = itertools.count()
            self._failure = None

    # --- plumbing -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise pccl.InvalidUsageError("this pccl process group was shut down")

    def _start(self, outputs: list[torch.Tensor], ops: Sequence[Callable[[int], Any]],
               after: Optional[Callable[[], None]] = None) -> Work:
        """Starts one pccl op per entry of `ops` (each called with its tag) and returns the
        work that completes them. A group of one needs no network: `after` runs at once."""
        self._check_open()
        with self._lock:
            if self._size == 1 or not ops:
                if after is not None:
                    after()
                return Work.completed(outputs)
            started = []
            for start in ops:
                tag = next(self._tags)
                started.append(AsyncOp(lambda start=start, tag=tag: start(tag)))
            work = Work(outputs, started, after, self._timeout, self._size)
            return self._completer.submit(work)

    def _reduce_start(self, t: torch.Tensor, op: pccl.ReduceOp) -> Optional[Callable[[int], Any]]:
        if t.numel() == 0:
            return None
        comm = self._comm
        return lambda tag: comm.all_reduce_async(t, t, op=op, tag=tag)

    # --- collectives ----------------------------------------------------------------------

    def allreduce(self, tensors: Any, opts: Any = None) -> Work:
        if isinstance(tensors, torch.Tensor):
            tensors = [tensors]
        t = _ops.single(tensors, "allreduce")
        op = _ops.reduce_op(_reduce_op_of(opts))
        start = self._reduce_start(t, op)
        return self._start([t], [start] if start else [])

    def allreduce_coalesced(self, tensors: list[torch.Tensor], opts: Any = None) -> Work:
        op = _ops.reduce_op(_reduce_op_of(opts))
        ts = [_ops.check_tensor(t, "allreduce_coalesced") for t in tensors]
        if ts and any(t.device != ts[0].device for t in ts):
            raise pccl.InvalidArgumentError("allreduce_coalesced: tensors must be on one device")
        starts = [s for s in (self._reduce_start(t, op) for t in ts) if s is not None]
        return self._start(ts, starts)

    def broadcast(self, tensors: Any, opts: Any = None) -> Work:
        if isinstance(tensors, torch.Tensor):
            tensors = [tensors]
        t = _ops.single(tensors, "broadcast")
        root = int(getattr(opts, "rootRank", 0)) if opts is not None else 0
        if opts is not None and int(getattr(opts, "rootTensor", 0)) != 0:
            raise pccl.InvalidArgumentError("broadcast: rootTensor must be 0 (one tensor per process)")
        if not 0 <= root < self._size:
            raise pccl.InvalidArgumentError(f"broadcast: root rank {root} is not in the group of {self._size}")
        if t.numel() == 0:
            return self._start([t], [])
        return self._start([t], [self._coll("broadcast", t, t, root=root)])

    def allgather(self, output_tensors: list[list[torch.Tensor]], input_tensors: list[torch.Tensor],
                  opts: Any = None) -> Work:
        """The list form: gathered into one buffer, then copied into the outputs (as gloo)."""
        inp = _ops.single(input_tensors, "allgather")
        if len(output_tensors) != 1:
            raise pccl.InvalidArgumentError("allgather takes one output list per process")
        outs = self._check_list(output_tensors[0], inp, "allgather")
        if self._size == 1:
            return self._start(outs, [], after=lambda: outs[0].copy_(inp.view_as(outs[0])))
        flat = torch.empty((self._size * inp.numel(),), dtype=inp.dtype, device=inp.device)

        def scatter_out() -> None:
            for o, chunk in zip(outs, flat.chunk(self._size)):
                o.copy_(chunk.view_as(o))

        return self._start(outs, [self._coll("all_gather", inp, flat)] if inp.numel() else [], after=scatter_out)

    def all_gather_single(self, output: torch.Tensor, input: torch.Tensor, opts: Any = None) -> Work:
        self._check_gather_pair(output, input, "all_gather_into_tensor")
        return self._gather_pairs([output], [input])

    def all_gather_single_coalesced(self, outputs: list[torch.Tensor], inputs: list[torch.Tensor],
                                    opts: Any = None) -> Work:
        if len(outputs) != len(inputs):
            raise pccl.InvalidArgumentError("all_gather_into_tensor_coalesced: as many outputs as inputs")
        for o, i in zip(outputs, inputs):
            self._check_gather_pair(o, i, "all_gather_into_tensor_coalesced")
        return self._gather_pairs(list(outputs), list(inputs))

    # torch's older names for the same calls.
    _allgather_base = all_gather_single
    allgather_into_tensor_coalesced = all_gather_single_coalesced

    def reduce_scatter(self, output_tensors: list[torch.Tensor], input_tensors: list[list[torch.Tensor]],
                       opts: Any = None) -> Work:
        """The list form: the inputs are copied into one buffer (as gloo), then reduced."""
        out = _ops.single(output_tensors, "reduce_scatter")
        if len(input_tensors) != 1:
            raise pccl.InvalidArgumentError("reduce_scatter takes one input list per process")
        ins = self._check_list(input_tensors[0], out, "reduce_scatter")
        op = _ops.reduce_op(_reduce_op_of(opts))
        if self._size == 1:
            return self._start([out], [], after=lambda: out.copy_(ins[0].view_as(out)))
        flat = torch.cat([t.reshape(-1) for t in ins])
        return self._start([out], [self._coll("reduce_scatter", flat, out, op=op)] if out.numel() else [])

    def reduce_scatter_single(self, output: torch.Tensor, input: torch.Tensor, opts: Any = None) -> Work:
        self._check_gather_pair(input, output, "reduce_scatter_tensor")
        return self._scatter_pairs([output], [input], _ops.reduce_op(_reduce_op_of(opts)))

    def reduce_scatter_single_coalesced(self, outputs: list[torch.Tensor], inputs: list[torch.Tensor],
                                        opts: Any = None) -> Work:
        if len(outputs) != len(inputs):
            raise pccl.InvalidArgumentError("reduce_scatter_tensor_coalesced: as many outputs as inputs")
        for o, i in zip(outputs, inputs):
            self._check_gather_pair(i, o, "reduce_scatter_tensor_coalesced")
        return self._scatter_pairs(list(outputs), list(inputs), _ops.reduce_op(_reduce_op_of(opts)))

    _reduce_scatter_base = reduce_scatter_single
    reduce_scatter_tensor_coalesced = reduce_scatter_single_coalesced

    def _check_list(self, tensors: Sequence[Any], like: torch.Tensor, what: str) -> list[torch.Tensor]:
        if len(tensors) != self._size:
            raise pccl.InvalidArgumentError(f"{what}: the list has {len(tensors)} tensors, the group {self._size} ranks")
        out = [_ops.check_tensor(t, what) for t in tensors]
        for t in out:
            _ops.same_kind(t, like, what)
            if t.numel() != like.numel():
                raise pccl.InvalidArgumentError(f"{what}: every tensor must have {like.numel()} elements")
        return out

    def _check_gather_pair(self, whole: Any, part: Any, what: str) -> None:
        """`whole` has `size` times the elements of `part`, same dtype and device."""
        _ops.check_tensor(whole, what)
        _ops.check_tensor(part, what)
        _ops.same_kind(whole, part, what)
        if whole.numel() != self._size * part.numel():
            raise pccl.InvalidArgumentError(
                f"{what}: the large tensor must have world size ({self._size}) times the "
                f"elements of the small one ({whole.numel()} vs {part.numel()})")

    def _gather_pairs(self, outputs: list[torch.Tensor], inputs: list[torch.Tensor]) -> Work:
        if self._size == 1:
            return self._start(outputs, [], after=lambda: [o.copy_(i.view_as(o)) for o, i in zip(outputs, inputs)])
        ops = [self._coll("all_gather", i, o) for o, i in zip(outputs, inputs) if i.numel()]
        return self._start(outputs, ops)

    def _scatter_pairs(self, outputs: list[torch.Tensor], inputs: list[torch.Tensor], op: pccl.ReduceOp) -> Work:
        if self._size == 1:
            return self._start(outputs, [], after=lambda: [o.copy_(i.view_as(o)) for o, i in zip(outputs, inputs)])
        ops = [self._coll("reduce_scatter", i, o, op=op) for o, i in zip(outputs, inputs) if o.numel()]
        return self._start(outputs, ops)

    def _coll(self, kind: str, send: torch.Tensor, recv: torch.Tensor, **kw: Any) -> Callable[[int], Any]:
        """The starter of one pccl collective: `kind` is all_gather, reduce_scatter or
        broadcast; called with the op's tag, it starts the op and returns its handle."""
        comm = self._comm
        start = getattr(comm, f"{kind}_async")
        if kind != "broadcast" and _overlap(send, recv):
            # FSDP gathers a shard that is a view into the output (and may scatter into
            # a view of the input); pccl refuses overlapping buffers, so the input is
            # copied first, as gloo copies it too.
            send = send.clone()
        if kind == "broadcast":
            return lambda tag: start(send, root=kw["root"], tag=tag)
        return lambda tag: start(send, recv, tag=tag, **kw)

    def barrier(self, opts: Any = None) -> Work:
        """Returns once every peer of the group has entered the barrier (an all-reduce of
        one byte, as ProcessGroupNCCL's)."""
        token = torch.zeros(1, dtype=torch.uint8)
        start = self._reduce_start(token, pccl.ReduceOp.SUM)
        return self._start([token], [start] if start else [])

    # --- lifetime -------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Leaves the run (``destroy_process_group`` calls it): waits up to
        `_SHUTDOWN_WAIT` seconds for collectives in flight, then closes the communicator
        (a collective still running fails). Later collectives raise
        ``pccl.InvalidUsageError``."""
        if not self._closed:
            self._closed = True
            wait = min(_SHUTDOWN_WAIT, self._timeout.total_seconds())
            self._completer.drain(wait)
            self._comm.close()  # ops still in flight fail now, so the completer can end
            self._completer.stop(wait)
            _open_groups.discard(self)

    def abort(self) -> None:
        self.shutdown()


def _reduce_op_of(opts: Any) -> Any:
    """The reduce op of an options object (or an op passed directly, as torch's
    ``pg.allreduce(tensors, op)`` overload allows); SUM when absent."""
    if opts is None:
        return dist.ReduceOp.SUM
    if isinstance(opts, (dist.ReduceOp, dist.ReduceOp.RedOpType)):
        return opts
    return opts.reduceOp


def check_rank(requested: int, pg: ProcessGroup) -> None:
    """init_process_group's rank against the run's: the run decides (README, "Ranks")."""
    if requested not in (-1, None) and requested != pg.rank():
        warnings.warn(
            f"pccl: init_process_group asked for rank {requested}, but the run gave this "
            f"process rank {pg.rank()}; the run's membership is authoritative, so "
            f"dist.get_rank() returns {pg.rank()}", stacklevel=3)
