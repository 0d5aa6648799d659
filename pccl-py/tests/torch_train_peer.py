"""One rank of the torch training tests (test_torch_training.py), as its own process.

    torch_train_peer.py ddp  --master HOST:PORT --world N --gloo-init tcp://... --gloo-rank R --out F
    torch_train_peer.py ft   --master HOST:PORT --world N --out F
    torch_train_peer.py fsdp --master HOST:PORT --world N --out F

ddp: DistributedDataParallel for --steps steps with gloo (if --gloo-init), then the same
with the pccl backend; saves the flat parameters after every step of both runs.
ft: DDP with the pccl backend and the fault-tolerant recipe (pccl-py/README.md); prints
"step K world W DIGEST" per step, saves the digests.
fsdp: fully_shard on CPU with the pccl backend; saves the full parameters per step.
Data depend on the rank only, so any process holding rank r computes what rank r would.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

import pccl.torch as pt

IN, HIDDEN = 16, 48


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(IN, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, HIDDEN),
                               torch.nn.Tanh(), torch.nn.Linear(HIDDEN, 1))


def batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * rank + step)
    x = torch.randn(32, IN, generator=g)
    return x, x[:, :1].sin() + 0.1 * x[:, 1:2]


def flat(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).clone()


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()[:20]


def pccl_init(args: argparse.Namespace) -> None:
    dist.init_process_group(backend="pccl", init_method=f"pccl://{args.master}?bind=127.0.0.1:0",
                            world_size=args.world, timeout=timedelta(seconds=120))


def train_ddp(steps: int) -> list[torch.Tensor]:
    """Plain DDP (its built-in bucketed all-reduce, init_sync broadcast and shape check)."""
    net = model()
    ddp = torch.nn.parallel.DistributedDataParallel(net, bucket_cap_mb=0.004)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    rank = dist.get_rank()
    history = []
    for step in range(steps):
        x, y = batch(rank, step)
        opt.zero_grad()
        torch.nn.functional.mse_loss(ddp(x), y).backward()
        opt.step()
        history.append(flat(net))
    return history


def ddp(args: argparse.Namespace) -> None:
    out = {}
    if args.gloo_init:
        dist.init_process_group(backend="gloo", init_method=args.gloo_init, rank=args.gloo_rank,
                                world_size=args.world, timeout=timedelta(seconds=120))
        out["gloo"] = train_ddp(args.steps)
        out["gloo_rank"] = dist.get_rank()
        dist.destroy_process_group()
    pccl_init(args)
    assert isinstance(dist.group.WORLD, pt.ProcessGroup) and dist.get_backend() == "pccl"
    out["pccl"] = train_ddp(args.steps)
    out["pccl_rank"] = dist.get_rank()
    torch.save(out, args.out)
    dist.destroy_process_group()


def ft(args: argparse.Namespace) -> None:
    """The fault-tolerant DDP recipe of pccl-py/README.md."""
    pccl_init(args)
    pg = dist.group.WORLD
    net = model()
    ddp = torch.nn.parallel.DistributedDataParallel(net, bucket_cap_mb=0.004)
    ddp.register_comm_hook(pg, pt.avg_hook)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    digests, worlds, ranks, failed = [], [], [], 0
    step, deadline = 0, time.monotonic() + 120
    while step < args.steps:
        if time.monotonic() > deadline:
            sys.exit("ft: out of time")
        x, y = batch(dist.get_rank(), step)
        opt.zero_grad()
        try:
            torch.nn.functional.mse_loss(ddp(x), y).backward()
        except RuntimeError:
            if pg.failure is None:
                raise  # not a collective's failure
            failed += 1
            print(f"step {step} failed: {pg.failure}", flush=True)
            pg.update_topology()  # the survivors, renumbered; this step again
            continue
        opt.step()
        digests.append(digest(flat(net)))
        worlds.append(dist.get_world_size())
        ranks.append(dist.get_rank())
        print(f"step {step} world {worlds[-1]} {digests[-1]}", flush=True)
        step += 1
        time.sleep(args.step_delay)
    torch.save({"digests": digests, "worlds": worlds, "ranks": ranks, "failed": failed}, args.out)
    dist.destroy_process_group()


def fsdp(args: argparse.Namespace) -> None:
    """fully_shard (FSDP2) on CPU over the pccl backend: every Linear its own shard unit."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    pccl_init(args)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    net = model()
    for layer in net:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(net, mesh=mesh)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    rank = dist.get_rank()
    history = []
    for step in range(args.steps):
        x, y = batch(rank, step)
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()
        opt.step()
        history.append(torch.cat([p.full_tensor().detach().reshape(-1) for p in net.parameters()]))
    torch.save({"history": history, "rank": rank}, args.out)
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=["ddp", "ft", "fsdp"])
    p.add_argument("--master", required=True)
    p.add_argument("--world", type=int, required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--step-delay", type=float, default=0.0)
    p.add_argument("--gloo-init", default=None)
    p.add_argument("--gloo-rank", type=int, default=-1)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    {"ddp": ddp, "ft": ft, "fsdp": fsdp}[args.scenario](args)


if __name__ == "__main__":
    main()
