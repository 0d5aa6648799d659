"""The exceptions the ``pccl`` backend raises: each is both a
``torch.distributed.DistBackendError`` (what torch code catches) and a ``pccl.PCCLError``
subclass of the failure's code (what pccl code catches), e.g. a peer's death raises
``PeerLostError``, which is also a ``pccl.ConnectionLostError``."""

from __future__ import annotations

from typing import Optional

import torch.distributed as dist

import pccl


class PcclBackendError(dist.DistBackendError, pccl.PCCLError):
    """A collective of the ``pccl`` backend failed. ``.result`` is the pccl result code."""


class PeerLostError(PcclBackendError, pccl.ConnectionLostError):
    """A peer left the run (died, was evicted or closed) during this collective or before
    it, after the group's last ``update_topology()``. Every survivor raises it for every
    collective until each has called ``pg.update_topology()``; the group then has the
    survivors only, renumbered (docs: pccl-py/README.md, "Faults")."""


class TooFewPeersBackendError(PcclBackendError, pccl.TooFewPeersError):
    """This peer is the only one left in its group, so the collective cannot run; call
    ``pg.update_topology()`` to carry on as a group of one (or to admit newcomers)."""


_classes: dict[type, type] = {
    pccl.ConnectionLostError: PeerLostError,
    pccl.TooFewPeersError: TooFewPeersBackendError,
}


def _pccl_class(result: int) -> type:
    """The ``pccl`` exception class of a result code (the code's own class, not a
    refinement such as ``AuthenticationError``)."""
    for name in dir(pccl):
        cls = getattr(pccl, name)
        if (isinstance(cls, type) and issubclass(cls, pccl.PCCLError) and cls.__bases__[0] is pccl.PCCLError
                and int(getattr(cls, "_default_result", -1)) == int(result)):
            return cls
    return pccl.InternalError


def backend_error_class(base: type) -> type:
    """The backend error class for a ``pccl.PCCLError`` subclass: a subclass of both
    ``PcclBackendError`` and ``base`` (made once per class)."""
    cls = _classes.get(base)
    if cls is None:
        cls = type(base.__name__, (PcclBackendError, base), {
            "__doc__": f"{base.__name__} raised by a collective of the pccl backend.",
            "__module__": __name__,
        })
        _classes[base] = cls
    return cls


def backend_error(message: str, result: Optional[int] = None, cause: Optional[BaseException] = None
                  ) -> PcclBackendError:
    """The exception for a failed collective: from a pccl exception (`cause`) or a result
    code (`result`, as ``AsyncReduceHandle.wait()`` reports it)."""
    if isinstance(cause, PcclBackendError):
        return cause
    if isinstance(cause, pccl.PCCLError):
        base: type = type(cause)
        result = int(cause.result)
        while base.__bases__[0] is not pccl.PCCLError and base is not pccl.PCCLError:
            base = base.__bases__[0]  # AuthenticationError -> MasterConnectionError
        message = f"{message}: {cause}"
    else:
        base = _pccl_class(result if result is not None else int(pccl.Result.INTERNAL_ERROR))
    exc = backend_error_class(base)(message, result)
    if cause is not None:
        exc.__cause__ = cause
    return exc
