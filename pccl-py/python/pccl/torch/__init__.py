"""``pccl.torch``: pccl as a ``torch.distributed`` backend named ``"pccl"``.

Importing this module (it needs torch; ``import pccl`` alone never imports torch)
registers the backend and the ``pccl://`` rendezvous with torch::

    import torch.distributed as dist
    import pccl.torch

    dist.init_process_group(backend="pccl", init_method="pccl://127.0.0.1:48148", world_size=3)
    dist.all_reduce(t)                     # CPU or CUDA tensors
    pg = dist.group.WORLD                  # a pccl.torch.ProcessGroup

or, without the default group, ``pg = pccl.torch.ProcessGroup("127.0.0.1:48148",
world_size=3)`` handed to code that takes a process group.

The run decides ranks and size (``world_size`` is what the run must reach before init
returns). When a peer dies, collectives raise ``PeerLostError`` (a
``torch.distributed.DistBackendError`` and a ``pccl.ConnectionLostError``) on every
survivor until each calls ``pg.update_topology()``; the group is then the survivors. See
pccl-py/README.md ("torch.distributed backend") for the fault-tolerant training recipe.
"""

from __future__ import annotations

try:
    import torch  # noqa: F401
    import torch.distributed as dist
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("pccl.torch needs PyTorch (pip install torch); `import pccl` works without it") from e

from pccl.torch._errors import PcclBackendError, PeerLostError, TooFewPeersBackendError
from pccl.torch._group import DEFAULT_TIMEOUT, ProcessGroup
from pccl.torch._hooks import avg_hook
from pccl.torch._ops import SUPPORTED_DTYPES
from pccl.torch._rendezvous import SCHEME, create_backend, rendezvous_handler
from pccl.torch._work import CollectiveTimeoutError, Work

BACKEND = "pccl"

__all__ = [
    "BACKEND",
    "DEFAULT_TIMEOUT",
    "CollectiveTimeoutError",
    "PcclBackendError",
    "PeerLostError",
    "ProcessGroup",
    "SUPPORTED_DTYPES",
    "TooFewPeersBackendError",
    "Work",
    "avg_hook",
    "register",
]


def register() -> None:
    """Registers the ``pccl`` backend (CPU and CUDA tensors) and the ``pccl://``
    rendezvous with torch; done at import, harmless to repeat."""
    if BACKEND.upper() not in dist.Backend._plugins:
        dist.Backend.register_backend(BACKEND, create_backend, extended_api=True, devices=["cpu", "cuda"])
    try:
        dist.register_rendezvous_handler(SCHEME, rendezvous_handler)
    except RuntimeError:
        pass  # registered before (torch refuses a second handler for a scheme)


register()
