"""The GIL is released during blocking calls, and Ctrl-C interrupts them promptly."""

import signal
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import pccl

from conftest import run_parallel, wait_until


def _call_threads() -> set[int]:
    """Ids of this process's `pccl-py-call` threads: every blocking pccl call runs its work
    on one while the calling thread waits with the GIL released (pccl-py/src/runtime.rs)."""
    tids = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            if (task / "comm").read_text().strip() == "pccl-py-call":
                tids.add(int(task.name))
        except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
            pass
    return tids


def _others_run_while_peer0_blocks(call0, call1):
    """Peer 0 makes a joint call, which cannot return before peer 1 makes its own. Once
    peer 0 is inside the call, a counter thread must make progress (and peer 1's thread
    must run at all) before peer 1 joins; a call holding the GIL hangs this test."""
    counter = [0]
    stop = threading.Event()

    def count():
        while not stop.is_set():
            counter[0] += 1

    before = _call_threads()

    def peer1():
        wait_until(lambda: _call_threads() - before, "peer 0 to enter its call")
        start = counter[0]
        wait_until(lambda: counter[0] - start >= 10_000,
                   "the counter thread to run while peer 0 is blocked")
        return call1()

    t = threading.Thread(target=count, daemon=True)
    t.start()
    try:
        return run_parallel([call0, peer1], timeout=20)
    finally:
        stop.set()
        t.join(5)


def test_other_threads_run_during_blocking_all_reduce(group2):
    xs = [np.ones(1000, dtype=np.float32) for _ in range(2)]
    _others_run_while_peer0_blocks(
        lambda: group2[0].all_reduce(xs[0], xs[0], op=pccl.ReduceOp.SUM),
        lambda: group2[1].all_reduce(xs[1], xs[1], op=pccl.ReduceOp.SUM))
    assert (xs[0] == 2).all() and (xs[1] == 2).all()


def test_other_threads_run_during_topology_votes(group2):
    assert _others_run_while_peer0_blocks(group2[0].are_peers_pending,
                                          group2[1].are_peers_pending) == [False, False]


INTERRUPT_SCRIPT = textwrap.dedent(
    """
    import sys, threading, time, numpy as np, pccl
    m = pccl.MasterNode("127.0.0.1:0"); m.run()
    a = pccl.Communicator(m.listen_address, p2p_bind_address="127.0.0.1:0"); a.connect()

    def admit(b):
        # `a` votes until `b` is in (a vote with nobody pending just returns).
        t = threading.Thread(target=b.connect, daemon=True); t.start()
        deadline = time.monotonic() + 30
        while t.is_alive():
            if time.monotonic() > deadline:
                sys.exit("b was not admitted within 30 s")
            a.update_topology(); t.join(0.05)

    what = sys.argv[1]
    try:
        if what == "connect":
            b = pccl.Communicator(m.listen_address, p2p_bind_address="127.0.0.1:0")
            print("blocking", flush=True)
            b.connect()          # never admitted: `a` never updates the topology
        elif what == "all_reduce":
            b = pccl.Communicator(m.listen_address, p2p_bind_address="127.0.0.1:0"); admit(b)
            x = np.ones(10)
            print("blocking", flush=True)
            a.all_reduce(x, x, op=pccl.ReduceOp.SUM)   # `b` never joins the op
        elif what == "wait":
            b = pccl.Communicator(m.listen_address, p2p_bind_address="127.0.0.1:0"); admit(b)
            x = np.ones(10)
            h = a.all_reduce_async(x, x, op=pccl.ReduceOp.SUM)
            print("blocking", flush=True)
            h.wait()
        print("returned without interruption", flush=True)
    except KeyboardInterrupt:
        print("KeyboardInterrupt", time.monotonic(), flush=True)
    """
)


def _wait_until_asleep(p):
    """Waits until the main thread of `p` sleeps in the kernel. The script has a single
    Python thread and prints "blocking" right before its blocking call, so from then on
    the only place that thread sleeps is inside the call, waiting without the GIL."""
    stat = Path(f"/proc/{p.pid}/task/{p.pid}/stat")

    def asleep():
        # The state is the field after the command name, which ends at the last ')'.
        state = stat.read_text().rsplit(")", 1)[1].split()[0]
        if state in "ZX":
            pytest.fail("the script ended instead of blocking:\n" + p.stdout.read())
        return state == "S"

    wait_until(asleep, "the script to block in its call", timeout=10)


def _interrupt(procs, what):
    p = procs.start(["-c", INTERRUPT_SCRIPT, what])
    line = p.stdout.readline()
    assert line.strip() == "blocking", line + p.stdout.read()
    _wait_until_asleep(p)
    sent = time.monotonic()
    p.send_signal(signal.SIGINT)
    out = p.stdout.readline()
    assert out.startswith("KeyboardInterrupt"), out
    latency = float(out.split()[1]) - sent
    assert latency < 1.0, f"KeyboardInterrupt took {latency:.2f} s"
    assert p.wait(timeout=10) == 0


def test_ctrl_c_interrupts_connect(procs):
    _interrupt(procs, "connect")


def test_ctrl_c_interrupts_all_reduce(procs):
    _interrupt(procs, "all_reduce")


def test_ctrl_c_interrupts_async_wait(procs):
    _interrupt(procs, "wait")


NO_TORCH_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["torch"] = None          # any `import torch` now raises ImportError
    import threading
    import numpy as np
    import pccl
    m = pccl.MasterNode("127.0.0.1:0"); m.run()
    a, b = (pccl.Communicator(m.listen_address, p2p_bind_address="127.0.0.1:0")
            for _ in range(2))
    a.connect()
    t = threading.Thread(target=b.connect); t.start()
    while t.is_alive():
        a.update_topology(); t.join(0.2)
    xs = [np.arange(8, dtype=np.float32), np.ones(8, dtype=np.float32)]
    ys = [np.zeros(8, dtype=np.float32) for _ in xs]
    ts = [threading.Thread(target=c.all_reduce, args=(x, y), kwargs={"op": pccl.ReduceOp.SUM})
          for c, x, y in zip((a, b), xs, ys)]
    [t.start() for t in ts]; [t.join(20) for t in ts]
    assert (ys[0] == np.arange(8) + 1).all() and (ys[1] == ys[0]).all()
    st = [np.full(4, i, dtype=np.int32) for i in range(2)]
    ss = [pccl.SharedState([pccl.TensorInfo.from_numpy(s, "s")]) for s in st]
    ts = [threading.Thread(target=c.sync_shared_state, args=(s,)) for c, s in zip((a, b), ss)]
    [t.start() for t in ts]; [t.join(20) for t in ts]
    assert (st[0] == st[1]).all()
    assert pccl.DataType.from_numpy_dtype(np.float32) is pccl.DataType.FLOAT
    assert sys.modules["torch"] is None
    print("ok")
    """
)


def test_numpy_works_without_torch(procs):
    p = procs.start(["-c", NO_TORCH_SCRIPT])
    out, _ = p.communicate(timeout=60)
    # "ok" on a line of its own: at exit the master may go before the communicators,
    # which then log that they re-dial it (stderr is merged into `out`).
    assert p.returncode == 0 and "ok" in out.splitlines(), out


def test_import_does_not_import_torch(procs):
    p = procs.start(["-c", "import sys, pccl, numpy; pccl.TensorInfo.from_numpy(numpy.zeros(2), 'x');"
                           " print('torch' in sys.modules)"])
    out, _ = p.communicate(timeout=60)
    assert out.strip() == "False", out
