"""Synchronous DiLoCo over pccl's torch.distributed backend, on a small torch model with
synthetic data.

Each peer runs `--inner-steps` AdamW steps on its own data from the current outer
parameters, averages the pseudo-gradient `outer - local` with `dist.all_reduce(op=AVG)`
(the "pccl" backend), and applies it to the outer parameters with Nesterov SGD. The outer
parameters and the outer momentum are pccl shared state: a newcomer receives them at its
first sync, and every peer checks at each step that it holds the same bits as the others.

The fault-tolerant recipe (pccl-py/README.md, "Fault-tolerant training loops"):

- once per step, `pg.are_peers_pending()` -> `pg.update_topology()` admits newcomers;
- a collective that a peer's death disrupts raises `pccl.torch.PeerLostError` on every
  survivor: each calls `pg.update_topology()` (the group is now the survivors, renumbered)
  and runs the step's all-reduce again.

Peers may die (kill -9) or join at any time:

    python -m pccl.master --listen-address 127.0.0.1:48148 &
    python examples/python/diloco.py --master 127.0.0.1:48148 &   # several times
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

import pccl
import pccl.torch
from common import Data, base_args, flat, inner_steps, log, model, nesterov_, write_result


def main() -> None:
    args = base_args(__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(1)
    net = model()
    data = Data(args.data_seed)
    inner_opt = torch.optim.AdamW(net.parameters(), lr=args.inner_lr)
    initial_loss = data.eval_loss(net)

    outer = [p.detach().clone().contiguous() for p in net.parameters()]
    momentum = [torch.zeros_like(p) for p in outer]
    named = {f"outer.{i}": t for i, t in enumerate(outer)}
    named.update({f"momentum.{i}": t for i, t in enumerate(momentum)})
    state = pccl.SharedState([pccl.TensorInfo.from_torch(t, k) for k, t in named.items()])

    # world_size=1: join the run as it is (the run decides ranks and size).
    dist.init_process_group("pccl", init_method=f"pccl://{args.master}?bind={args.bind}", world_size=1)
    pg = dist.group.WORLD
    assert isinstance(pg, pccl.torch.ProcessGroup)
    comm = pg.communicator  # for the shared state
    log("connected")

    first = True
    losses: list[float] = []
    first_sync = None
    steps = 0
    world = 0
    while steps < args.max_steps:
        if not first:
            # Joint calls: admit newcomers only when some are waiting.
            try:
                if pg.are_peers_pending():
                    pg.update_topology()
            except pccl.PCCLError as e:
                log("topology update failed, retrying:", e)
                continue
        first = False
        world = dist.get_world_size()
        if world < 2:
            time.sleep(0.1)  # alone: wait for peers
            continue
        try:
            info = comm.sync_shared_state(state)
        except pccl.PCCLError as e:
            log("shared-state sync failed, retrying:", e)
            continue
        if first_sync is None:
            first_sync = {"revision": state.revision, "rx_bytes": info.rx_bytes,
                          "tx_bytes": info.tx_bytes}
            log(f"first sync: revision {state.revision}, received {info.rx_bytes} bytes")
        if state.revision >= args.until_revision and world >= args.min_final_world:
            break

        with torch.no_grad():
            for p, o in zip(net.parameters(), outer):
                p.copy_(o)
        inner_steps(net, inner_opt, data, args.inner_steps, args.batch)

        with torch.no_grad():
            pseudo = flat([o - p for o, p in zip(outer, net.parameters())])
        avg = None
        while world >= 2:
            try:
                avg = pseudo.clone()
                dist.all_reduce(avg, op=dist.ReduceOp.AVG)
                break
            except pccl.torch.PcclBackendError as e:
                # A peer died: every survivor gets here. Take on the smaller group (joint
                # call of the survivors) and average again among them.
                avg = None
                pg.update_topology()
                world = dist.get_world_size()
                log(f"all-reduce failed ({e}); world is now {world}")
        if avg is not None:
            nesterov_(outer, momentum, avg, args.outer_lr, args.outer_momentum)
        with torch.no_grad():
            for p, o in zip(net.parameters(), outer):
                p.copy_(o)
        loss = data.eval_loss(net)
        losses.append(loss)
        state.push_revision()
        steps += 1
        log(f"step revision={state.revision} world={world} loss={loss:.5f}")
        if args.step_delay:
            time.sleep(args.step_delay)

    log(f"done at revision {state.revision}")
    write_result(args.out, named, {
        "revision": state.revision, "initial_loss": initial_loss, "losses": losses, "first_sync": first_sync,
        "hashes": {k: str(pccl.tensor_hash(t)) for k, t in named.items()},
        "world": world,  # when the run ended (peers leave right after)
    })
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
