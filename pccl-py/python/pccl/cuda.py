"""CUDA support: CUDA tensors are staged through pinned host memory; the driver is
loaded at run time, so this works (and reports False) on machines without a GPU."""

from __future__ import annotations

from pccl import _pccl

__all__ = ["is_cuda_available"]


def is_cuda_available() -> bool:
    """True when this build supports CUDA, a driver is installed and a GPU is present."""
    return _pccl.is_cuda_available()
