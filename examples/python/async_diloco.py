"""Asynchronous (one-step-delayed) DiLoCo over pccl.

Like `diloco.py`, but the all-reduce of step k's pseudo-gradient runs in the background
(`all_reduce_async`) while step k+1's inner steps compute, and its average is applied to
the outer parameters one step late. Communication thus hides behind compute.

A peer that joins while a reduce is in flight cannot take part in it, yet must start from
the outer parameters that include its result. So the order within a step is:

    sync shared state -> start reduce of the last pseudo-gradient -> inner steps
    -> are_peers_pending (allowed while a reduce is in flight) -> wait, apply the result
    -> if peers are pending: update_topology, then an EXTRA shared-state sync

The extra sync hands the newcomer the outer parameters and momentum with the in-flight
result already applied; its first pseudo-gradient is zero.
"""

from __future__ import annotations

import time

import torch

import pccl
from common import Data, base_args, flat, inner_steps, log, model, nesterov_, write_result


class Peer:
    def __init__(self, args) -> None:
        self.args = args
        self.comm = pccl.Communicator(args.master, peer_group=0, p2p_bind_address=args.bind)
        self.net = model()
        self.data = Data(args.data_seed)
        self.inner_opt = torch.optim.AdamW(self.net.parameters(), lr=args.inner_lr)
        self.outer = [p.detach().clone().contiguous() for p in self.net.parameters()]
        self.momentum = [torch.zeros_like(p) for p in self.outer]
        self.named = {f"outer.{i}": t for i, t in enumerate(self.outer)}
        self.named.update({f"momentum.{i}": t for i, t in enumerate(self.momentum)})
        self.state = pccl.SharedState(
            [pccl.TensorInfo.from_torch(t, k) for k, t in self.named.items()])
        self.first_sync = None
        self.initial_loss = self.data.eval_loss(self.net)

    def world(self) -> int:
        return self.comm.get_attribute(pccl.Attribute.GLOBAL_WORLD_SIZE)

    def sync(self) -> None:
        """A shared-state sync, retried while peers die under it."""
        for attempt in range(50):
            try:
                info = self.comm.sync_shared_state(self.state)
                break
            except pccl.PCCLError as e:
                log("shared-state sync failed, retrying:", e)
                time.sleep(0.05)
        else:
            raise RuntimeError("shared-state sync kept failing")
        if self.first_sync is None:
            self.first_sync = {"revision": self.state.revision, "rx_bytes": info.rx_bytes}
            if info.rx_bytes:
                log(f"caught up: received {info.rx_bytes} bytes, revision {self.state.revision}")

    def admit(self) -> None:
        """Accepts pending peers, then the extra sync that catches them up."""
        while True:
            try:
                self.comm.update_topology()
                break
            except pccl.PCCLError as e:
                log("topology update failed, retrying:", e)
        self.sync()
        self.state.push_revision()

    def load_outer(self) -> None:
        with torch.no_grad():
            for p, o in zip(self.net.parameters(), self.outer):
                p.copy_(o)

    def run(self) -> None:
        args = self.args
        self.comm.connect(n_attempts=15)
        log("connected")
        # A newcomer's first joint call pairs with the others' extra sync (`admit`); for the
        # first peer of a run it is a sync on its own.
        self.sync()
        self.state.push_revision()
        trained = False
        start = [t.clone() for t in self.outer]
        avg = torch.empty(sum(t.numel() for t in self.outer))
        losses: list[float] = []
        steps = 0
        world = 0
        while steps < args.max_steps:
            world = self.world()
            if world < 2:
                time.sleep(0.1)
                if self.comm.are_peers_pending():
                    self.admit()
                continue
            self.sync()
            if self.state.revision >= args.until_revision and world >= args.min_final_world:
                break
            # The pseudo-gradient of the previous inner phase (zero if there was none).
            with torch.no_grad():
                if trained:
                    pseudo = flat([s - p for s, p in zip(start, self.net.parameters())])
                else:
                    pseudo = torch.zeros_like(avg)
            handle = self.comm.all_reduce_async(pseudo, avg, op=pccl.ReduceOp.AVG,
                                                tag=self.state.revision)
            self.load_outer()
            start = [t.clone() for t in self.outer]
            inner_steps(self.net, self.inner_opt, self.data, args.inner_steps, args.batch)
            trained = True
            pending = self.comm.are_peers_pending()  # joint call; fine with a reduce in flight
            ok, status, _ = handle.wait()
            if ok:
                nesterov_(self.outer, self.momentum, avg, args.outer_lr, args.outer_momentum)
            else:
                log(f"in-flight all-reduce failed (status {status}); its update is dropped")
            self.state.push_revision()
            loss = self._eval()
            losses.append(loss)
            steps += 1
            log(f"step revision={self.state.revision} world={world} loss={loss:.5f}")
            if pending:
                self.admit()
            if args.step_delay:
                time.sleep(args.step_delay)
        log(f"done at revision {self.state.revision}")
        write_result(args.out, self.named, {
            "revision": self.state.revision, "initial_loss": self.initial_loss,
            "losses": losses, "first_sync": self.first_sync,
            "hashes": {k: str(pccl.tensor_hash(t)) for k, t in self.named.items()},
            "world": world,  # when the run ended (peers leave right after)
        })

    def _eval(self) -> float:
        saved = [p.detach().clone() for p in self.net.parameters()]
        self.load_outer()
        loss = self.data.eval_loss(self.net)
        with torch.no_grad():
            for p, s in zip(self.net.parameters(), saved):
                p.copy_(s)
        return loss


def main() -> None:
    parser = base_args(__doc__.splitlines()[0])
    # Updates that land a step late overshoot with DiLoCo's usual 0.9 outer momentum.
    parser.set_defaults(outer_momentum=0.5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    Peer(args).run()


if __name__ == "__main__":
    main()
