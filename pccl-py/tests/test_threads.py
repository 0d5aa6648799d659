"""The GIL is released during blocking calls, and Ctrl-C interrupts them promptly."""

import signal
import textwrap
import threading
import time

import numpy as np

import pccl

from conftest import run_parallel


def test_other_threads_run_during_blocking_all_reduce(group2):
    counter = [0]
    done = threading.Event()

    def count():
        while not done.is_set():
            counter[0] += 1

    def first():
        x = np.ones(1000, dtype=np.float32)
        group2[0].all_reduce(x, x, op=pccl.ReduceOp.SUM)
        done.set()

    def second():
        time.sleep(0.5)  # peer 0 blocks meanwhile; only a released GIL lets us get here
        before = counter[0]
        x = np.ones(1000, dtype=np.float32)
        group2[1].all_reduce(x, x, op=pccl.ReduceOp.SUM)
        return before

    t = threading.Thread(target=count, daemon=True)
    t.start()
    _, before = run_parallel([first, second], timeout=20)
    t.join(5)
    assert before > 10_000, f"the counter thread barely ran ({before} increments)"


def test_other_threads_run_during_topology_votes(group2):
    ticks = []
    stop = threading.Event()

    def tick():
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.01)

    t = threading.Thread(target=tick, daemon=True)
    t.start()

    def late():
        time.sleep(0.3)
        return group2[1].are_peers_pending()

    start = time.monotonic()
    run_parallel([group2[0].are_peers_pending, late], timeout=20)
    stop.set()
    t.join(5)
    assert len([x for x in ticks if x > start]) >= 10


INTERRUPT_SCRIPT = textwrap.dedent(
    """
    import sys, time, numpy as np, pccl
    m = pccl.MasterNode("127.0.0.1:0"); m.run()
    a = pccl.Communicator(m.listen_address); a.connect()
    what = sys.argv[1]
    t0 = None
    try:
        if what == "connect":
            b = pccl.Communicator(m.listen_address)
            print("blocking", flush=True)
            b.connect()          # never admitted: `a` never updates the topology
        elif what == "all_reduce":
            b = pccl.Communicator(m.listen_address)
            import threading
            threading.Thread(target=b.connect, daemon=True).start()
            time.sleep(0.5); a.update_topology()
            x = np.ones(10)
            print("blocking", flush=True)
            a.all_reduce(x, x, op=pccl.ReduceOp.SUM)   # `b` never joins the op
        elif what == "wait":
            b = pccl.Communicator(m.listen_address)
            import threading
            threading.Thread(target=b.connect, daemon=True).start()
            time.sleep(0.5); a.update_topology()
            x = np.ones(10)
            h = a.all_reduce_async(x, x, op=pccl.ReduceOp.SUM)
            print("blocking", flush=True)
            h.wait()
        print("returned without interruption", flush=True)
    except KeyboardInterrupt:
        print("KeyboardInterrupt", time.monotonic(), flush=True)
    """
)


def _interrupt(procs, what):
    p = procs.start(["-c", INTERRUPT_SCRIPT, what])
    line = p.stdout.readline()
    assert line.strip() == "blocking", line + p.stdout.read()
    time.sleep(0.5)
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
    a, b = pccl.Communicator(m.listen_address), pccl.Communicator(m.listen_address)
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
    assert p.returncode == 0 and out.strip().endswith("ok"), out


def test_import_does_not_import_torch(procs):
    p = procs.start(["-c", "import sys, pccl, numpy; pccl.TensorInfo.from_numpy(numpy.zeros(2), 'x');"
                           " print('torch' in sys.modules)"])
    out, _ = p.communicate(timeout=60)
    assert out.strip() == "False", out
