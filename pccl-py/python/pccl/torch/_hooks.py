"""A DDP communication hook for fault-tolerant training with the ``pccl`` backend."""

# No `from __future__ import annotations`: DDP checks the hook's annotations as objects.
from typing import Any

import torch
import torch.distributed as dist


def avg_hook(process_group: Any, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Averages a gradient bucket with one all-reduce AVG on `process_group` (the default
    group when None): ``ddp.register_comm_hook(pg, pccl.torch.avg_hook)``.

    DDP's built-in reduction divides by the group size it saw first; this hook divides by
    the size of the ring the all-reduce ran on, so it stays right after a death and
    ``update_topology()`` shrank the group (pccl-py/README.md, "Fault-tolerant DDP")."""
    group = process_group if process_group is not None else dist.group.WORLD
    work = dist.all_reduce(bucket.buffer(), op=dist.ReduceOp.AVG, group=group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])
