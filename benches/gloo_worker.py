"""gloo all-reduce worker of the `allreduce` benchmark (benches/src/bin/allreduce/gloo.rs).

The benchmark embeds this file and runs `n` copies as `python -u -c <this file> --init
tcp://127.0.0.1:PORT --rank R --world N --sizes B1,B2 --iters K --warmup W --deadline-secs S`
(plus --pool/--threads/--slice, which only the pccl workers use). Per size it fills its
input with the same values as the pccl workers (`value` in worker.rs), runs W warm-up and K
timed `dist.all_reduce` calls (f32 SUM; the input is copied into the buffer before each
call, outside the timed part, so every call reduces the same data), checks a sample of the
result and prints the same lines as the Rust workers (meter.rs): `T bytes iter nanos` per
timed call, `CRC bytes crc32` of the result, `CPU bytes nanos` (user + system of this
process, all threads, inside the timed calls) and `RSS bytes kib` (VmHWM, reset before the
size's buffers are allocated), then `DONE`. It exits on `EXIT` or when stdin closes (the
parent is gone), and after --deadline-secs whatever happens.
"""

import argparse
import os
import resource
import sys
import threading
import time
import zlib
from datetime import timedelta

GOLD = 0x9E3779B97F4A7C15
M64 = (1 << 64) - 1


def values(np, rank: int, idx):
    """`value(rank, i)` of worker.rs for every i of the uint64 array `idx`, as float32."""
    z = np.uint64((rank * GOLD) & M64) ^ idx
    z = z + np.uint64(GOLD)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    # 24-bit integer / 2^23 - 1 is exact in float32, so this matches the Rust bits.
    return ((z >> np.uint64(40)).astype(np.float64) / (1 << 23) - 1.0).astype(np.float32)


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def peak_rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # the peak then counts from process start: still an upper bound


def watch_parent(deadline: float) -> None:
    def stdin_loop() -> None:
        for line in sys.stdin:
            if line.strip() == "EXIT":
                sys.stdout.flush()
                os._exit(0)
        os._exit(3)  # stdin closed without EXIT: the parent failed or was killed

    def watchdog() -> None:
        print(f"gloo worker: watchdog expired after {deadline} s", file=sys.stderr, flush=True)
        os._exit(4)

    threading.Thread(target=stdin_loop, daemon=True).start()
    timer = threading.Timer(deadline, watchdog)
    timer.daemon = True
    timer.start()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--init", required=True)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world", type=int, required=True)
    p.add_argument("--sizes", required=True)
    p.add_argument("--iters", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--deadline-secs", type=float, default=600.0)
    for ignored in ("--pool", "--threads", "--slice"):
        p.add_argument(ignored)
    a = p.parse_args()
    watch_parent(a.deadline_secs)

    import numpy as np
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=a.init, rank=a.rank, world_size=a.world,
                            timeout=timedelta(seconds=a.deadline_secs))
    out = sys.stdout
    for nbytes in (int(s) for s in a.sizes.split(",")):
        reset_peak_rss()
        count = nbytes // 4
        src = torch.empty(count, dtype=torch.float32)
        step = 1 << 20  # fill in pieces: no 64-bit temporaries of the whole size
        for i in range(0, count, step):
            part = np.arange(i, min(i + step, count), dtype=np.uint64)
            src[i:i + step] = torch.from_numpy(values(np, a.rank, part))
        buf = torch.empty_like(src)
        cpu = 0.0
        for k in range(a.warmup + a.iters):
            buf.copy_(src)
            c0, t0 = cpu_seconds(), time.perf_counter_ns()
            dist.all_reduce(buf)
            t1, c1 = time.perf_counter_ns(), cpu_seconds()
            if k >= a.warmup:
                cpu += c1 - c0
                out.write(f"T {nbytes} {k - a.warmup} {t1 - t0}\n")
        # Correctness on a sample, as worker.rs does (f32 error of n terms far below 1e-5).
        idx = np.append(np.arange(0, count, max(count // 4096, 1), dtype=np.uint64), np.uint64(count - 1))
        want = sum(values(np, r, idx).astype(np.float64) for r in range(a.world))
        got = buf.numpy()[idx.astype(np.int64)].astype(np.float64)
        bad = np.flatnonzero(np.abs(got - want) > 1e-5)
        if bad.size:
            j = bad[0]
            sys.exit(f"gloo worker: wrong result at element {idx[j]} of {nbytes} B: got {got[j]}, want {want[j]}")
        out.write(f"CRC {nbytes} {zlib.crc32(buf.numpy()) & 0xFFFFFFFF:08x}\n")
        out.write(f"CPU {nbytes} {round(cpu * 1e9)}\n")
        out.write(f"RSS {nbytes} {peak_rss_kib()}\n")
        out.flush()
        del src, buf
    out.write("DONE\n")
    out.flush()
    # Keep the group up (peers may still be finishing) until the parent says EXIT.
    threading.Event().wait()


if __name__ == "__main__":
    main()
