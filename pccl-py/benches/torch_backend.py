"""torch.distributed collectives with the pccl backend beside gloo, same run, loopback.

    python pccl-py/benches/torch_backend.py                      # worlds 2,4; 128 MiB; 5 iterations
    python pccl-py/benches/torch_backend.py --worlds 2 --size 16M --iters 3 --ops all_reduce
    # flags: --worlds 2,4 --size 128M --iters 5 --warmup 2 --ops all_reduce,reduce_scatter,all_gather
    #        --backends pccl,gloo

The parent starts a pccl master in-process and, per world size and backend, `n` worker
processes (this file with --worker): they init the default group (gloo: tcp:// store,
ranks given; pccl: pccl://, ranks from the run), then per op run warm-up and timed
iterations of `dist.all_reduce` (f32 SUM, `size` bytes), `dist.reduce_scatter_tensor`
(input `size` bytes) and `dist.all_gather_into_tensor` (output `size` bytes); the op itself
is the barrier between iterations. time = median over iterations of the slowest worker's
duration. busbw = size/time × 2(n−1)/n for all-reduce and × (n−1)/n for reduce-scatter and
all-gather (the bytes each link carries, as nccl-tests count them). Every worker prints the
sha256 of its last result; the parent fails unless all ranks' are equal (pccl and gloo
alike). Needs a release build of pccl (pip install ./pccl-py) and a quiet machine for
figures worth writing down (BENCHMARKS.md)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from datetime import timedelta

OPS = ("all_reduce", "reduce_scatter", "all_gather")


def parse_size(s: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(s[:-1]) * units[s[-1].upper()] if s[-1].upper() in units else int(s)


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    import pccl.torch  # noqa: F401 - registers the backend

    torch.set_num_threads(1)
    timeout = timedelta(seconds=300)
    if args.backend == "gloo":
        dist.init_process_group("gloo", init_method=args.init, rank=args.rank, world_size=args.world, timeout=timeout)
    else:
        dist.init_process_group("pccl", init_method=f"{args.init}?bind=127.0.0.1:0", world_size=args.world,
                                timeout=timeout)
    n, r = dist.get_world_size(), dist.get_rank()
    elems = args.size // 4
    g = torch.Generator().manual_seed(r)
    for op in args.ops.split(","):
        if op == "all_reduce":
            src = torch.rand(elems, generator=g) * 2 - 1
            buf = src.clone()

            def run() -> torch.Tensor:
                dist.all_reduce(buf)
                return buf
        elif op == "reduce_scatter":
            inp = torch.rand(elems - elems % n, generator=g) * 2 - 1
            out = torch.empty(len(inp) // n)

            def run() -> torch.Tensor:
                dist.reduce_scatter_tensor(out, inp)
                return out
        else:
            out = torch.empty(elems - elems % n)
            inp = torch.rand(len(out) // n, generator=g) * 2 - 1

            def run() -> torch.Tensor:
                dist.all_gather_into_tensor(out, inp)
                return out
        times = []
        for i in range(args.warmup + args.iters):
            t0 = time.perf_counter()
            res = run()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        # all-reduce in place changes its input each iteration; the digest compares ranks.
        digest = hashlib.sha256(res.numpy().tobytes()).hexdigest()[:16] if op != "reduce_scatter" else ""
        print(json.dumps({"op": op, "rank": r, "times": times, "digest": digest}), flush=True)
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_world(args: argparse.Namespace, backend: str, n: int, master: str) -> dict[str, list[dict]]:
    init = f"tcp://127.0.0.1:{free_port()}" if backend == "gloo" else f"pccl://{master}"
    procs = [subprocess.Popen(
        [sys.executable, __file__, "--worker", "--backend", backend, "--init", init, "--rank", str(i),
         "--world", str(n), "--size", str(args.size), "--iters", str(args.iters), "--warmup",
         str(args.warmup), "--ops", args.ops], stdout=subprocess.PIPE, text=True, start_new_session=True)
        for i in range(n)]
    try:
        outs = [p.communicate(timeout=args.timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    if any(p.returncode != 0 for p in procs):
        sys.exit(f"{backend} world {n}: a worker failed (exit codes {[p.returncode for p in procs]})")
    by_op: dict[str, list[dict]] = {}
    for out in outs:
        for line in out.splitlines():
            if line.startswith("{"):
                rec = json.loads(line)
                by_op.setdefault(rec["op"], []).append(rec)
    return by_op


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", default="pccl", help=argparse.SUPPRESS)
    p.add_argument("--init", default="", help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, default=-1, help=argparse.SUPPRESS)
    p.add_argument("--world", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--worlds", default="2,4")
    p.add_argument("--backends", default="pccl,gloo")
    p.add_argument("--size", type=parse_size, default=parse_size("128M"))
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per world and backend")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    import pccl

    master = pccl.MasterNode("127.0.0.1:0")
    master.run()
    rows = []
    ok = True
    try:
        for n in (int(w) for w in args.worlds.split(",")):
            for backend in args.backends.split(","):
                for op, recs in run_world(args, backend, n, master.listen_address).items():
                    slowest = [max(r["times"][i] for r in recs) for i in range(args.iters)]
                    t = statistics.median(slowest)
                    factor = 2 * (n - 1) / n if op == "all_reduce" else (n - 1) / n
                    same = len({r["digest"] for r in recs}) == 1
                    ok &= same
                    rows.append((n, op, backend, t, args.size / t * factor / 1e9, same))
    finally:
        master.interrupt()
    print(f"size {args.size / (1 << 20):g} MiB f32, {args.iters} timed iterations (median of the slowest rank)")
    print(f"{'world':>5} {'op':>15} {'backend':>7} {'median ms':>10} {'busbw GB/s':>11} {'vs gloo':>8} ranks-equal")
    for n, op, backend, t, bw, same in rows:
        gloo = next((r[4] for r in rows if r[:3] == (n, op, "gloo")), None)
        ratio = f"{bw / gloo:.2f}x" if gloo else "-"
        print(f"{n:>5} {op:>15} {backend:>7} {t * 1e3:>10.1f} {bw:>11.3f} {ratio:>8} {'yes' if same else 'NO'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
