"""FSDP-style DiLoCo: each pccl peer is itself a sharded job of `--shards` ranks.

Within a peer, the ranks form a torch.distributed group (gloo, CPU) and shard the model's
flat parameter vector FSDP-style: every inner step all-gathers the full parameters,
computes gradients on the rank's own batch, averages them across the peer's ranks and
updates the rank's own shard with AdamW. Across peers, rank k of every peer runs a pccl
communicator in **peer group k**, so all holders of shard k sync their shard's outer
parameters and momentum as shared state and all-reduce their shard's pseudo-gradient
together (docs/ARCHITECTURE.md §8).

The rule that keeps this from deadlocking: FSDP's own collectives block, so no FSDP
collective (and no pccl op that precedes one) may start until every shard rank of every
pccl peer is accepted, i.e. while GLOBAL_WORLD_SIZE < shards x LARGEST_PEER_GROUP_WORLD_SIZE
the ranks only accept pending peers (`are_peers_pending` -> `update_topology`).

Limit: if one rank of a peer dies, the peer's other ranks block in FSDP's collectives
(gloo has no fault tolerance); pccl drops them from the run only when their processes end.

    python -m pccl.master --listen-address 127.0.0.1:48148 &
    python examples/python/fsdp_diloco.py --master 127.0.0.1:48148 --shards 2 &   # per peer
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

import pccl
from common import Data, base_args, log, model, nesterov_, write_result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ShardedModel:
    """A model whose flat parameter vector is split into `shards` equal pieces."""

    def __init__(self, rank: int, shards: int) -> None:
        self.net = model()
        self.params = list(self.net.parameters())
        total = sum(p.numel() for p in self.params)
        self.shard = -(-total // shards)  # ceil
        self.total = total
        full = torch.zeros(self.shard * shards)
        full[:total] = torch.cat([p.detach().reshape(-1) for p in self.params])
        self.rank, self.shards = rank, shards
        self.mine = slice(rank * self.shard, (rank + 1) * self.shard)
        self.local = torch.nn.Parameter(full[self.mine].clone())  # this rank's shard

    def gather(self, shard: torch.Tensor) -> torch.Tensor:
        """FSDP collective: the full flat vector from every rank's shard."""
        parts = [torch.empty(self.shard) for _ in range(self.shards)]
        dist.all_gather(parts, shard.detach().contiguous())
        return torch.cat(parts)

    @torch.no_grad()
    def load(self, full: torch.Tensor) -> None:
        offset = 0
        for p in self.params:
            p.copy_(full[offset:offset + p.numel()].view_as(p))
            offset += p.numel()

    def grad_of_shard(self, data: Data, batch: int) -> torch.Tensor:
        """Forward/backward with gathered parameters; gradient averaged over the peer's ranks
        (FSDP collective), sliced to this rank's shard."""
        self.load(self.gather(self.local))
        self.net.zero_grad()
        x, y = data.batch(batch)
        torch.nn.functional.mse_loss(self.net(x), y).backward()
        g = torch.zeros(self.shard * self.shards)
        g[:self.total] = torch.cat([p.grad.reshape(-1) for p in self.params])
        dist.all_reduce(g)
        return (g / self.shards)[self.mine]


def rank_main(rank: int, args, dist_port: int) -> None:
    torch.set_num_threads(1)
    M = args.shards
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{dist_port}", rank=rank,
                            world_size=M, timeout=datetime.timedelta(seconds=120))
    sm = ShardedModel(rank, M)
    data = Data(args.data_seed * M + rank)
    inner_opt = torch.optim.AdamW([sm.local], lr=args.inner_lr)
    outer = sm.local.detach().clone()
    momentum = torch.zeros_like(outer)
    state = pccl.SharedState([pccl.TensorInfo.from_torch(outer, "outer.shard"),
                              pccl.TensorInfo.from_torch(momentum, "momentum.shard")])
    # FSDP collectives are fine before connecting: no pccl peer waits on us yet.
    with torch.no_grad():
        sm.load(sm.gather(outer))
    initial_loss = data.eval_loss(sm.net)
    comm = pccl.Communicator(args.master, peer_group=rank, p2p_bind_address=args.bind)
    comm.connect(n_attempts=15)
    log(f"rank {rank}: connected in peer group {rank}")

    first, first_sync, losses, steps, largest = True, None, [], 0, 0
    waited = 0
    while steps < args.max_steps:
        if not first:
            try:
                if comm.are_peers_pending():
                    comm.update_topology()
            except pccl.PCCLError as e:
                log("topology update failed, retrying:", e)
                continue
        first = False
        world = comm.get_attribute(pccl.Attribute.GLOBAL_WORLD_SIZE)
        largest = comm.get_attribute(pccl.Attribute.LARGEST_PEER_GROUP_WORLD_SIZE)
        if world < M * largest:
            # Some peer has only part of its shard ranks accepted: its other ranks would
            # block in FSDP collectives, so nothing but admitting peers may happen now.
            waited += 1
            if waited % 20 == 1:
                log(f"rank {rank}: waiting for all shard ranks ({world} of {M * largest})")
            time.sleep(0.05)
            continue
        if largest < 2:
            time.sleep(0.1)
            continue
        try:
            info = comm.sync_shared_state(state)
        except pccl.PCCLError as e:
            log("shared-state sync failed, retrying:", e)
            continue
        if first_sync is None:
            first_sync = {"revision": state.revision, "rx_bytes": info.rx_bytes}
        if state.revision >= args.until_revision and largest >= args.min_final_world:
            break
        with torch.no_grad():
            sm.local.copy_(outer)
        for _ in range(args.inner_steps):
            sm.local.grad = sm.grad_of_shard(data, args.batch)
            inner_opt.step()
        pseudo = (outer - sm.local).detach()
        avg = torch.empty_like(pseudo)
        while True:
            try:
                comm.all_reduce(pseudo, avg, op=pccl.ReduceOp.AVG)
                break
            except pccl.PCCLError as e:
                if comm.get_attribute(pccl.Attribute.LOCAL_WORLD_SIZE) < 2:
                    avg = None
                    break
                log("all-reduce failed, retrying:", e)
        if avg is not None:
            nesterov_([outer], [momentum], avg, args.outer_lr, args.outer_momentum)
        with torch.no_grad():
            sm.load(sm.gather(outer))  # FSDP collective: evaluate the full outer model
        loss = data.eval_loss(sm.net)
        losses.append(loss)
        state.push_revision()
        steps += 1
        if rank == 0:
            log(f"step revision={state.revision} world={world} loss={loss:.5f}")
        if args.step_delay:
            time.sleep(args.step_delay)
    log(f"rank {rank}: done at revision {state.revision}")
    out = None if args.out is None else args.out.with_name(f"{args.out.stem}_rank{rank}.npz")
    write_result(out, {"outer.shard": outer, "momentum.shard": momentum}, {
        "revision": state.revision, "initial_loss": initial_loss, "losses": losses,
        "first_sync": first_sync, "largest_group": largest, "rank": rank,
        "hashes": {"outer.shard": str(pccl.tensor_hash(outer))},
    })
    dist.destroy_process_group()


def main() -> None:
    parser = base_args(__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=2, help="FSDP ranks per pccl peer")
    parser.add_argument("--dist-port", type=int, default=0,
                        help="port of this peer's torch.distributed store (0: any free port)")
    args = parser.parse_args()
    port = args.dist_port or free_port()
    # Fork after importing torch (fast); each rank creates its communicator after the fork.
    ctx = multiprocessing.get_context("fork")
    ranks = [ctx.Process(target=rank_main, args=(r, args, port)) for r in range(args.shards)]
    for p in ranks:
        p.start()
    code = 0
    for p in ranks:
        p.join()
        code = code or (p.exitcode or 0)
    sys.exit(code)


if __name__ == "__main__":
    main()
