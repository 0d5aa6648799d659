"""Argument checks and translations shared by the collectives of the ``pccl`` backend:
torch's reduce ops to pccl's, and the checks gloo makes on tensors (its errors are
``ValueError``s, as gloo's ``invalid_argument``; ours are ``pccl.InvalidArgumentError``,
which is both a ``ValueError`` and a ``RuntimeError``)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.distributed as dist

import pccl

# torch's reduce op -> pccl's. PRODUCT is pccl's PROD; BAND/BOR/BXOR and PREMUL_SUM have
# no pccl equivalent.
_REDUCE_OPS = {
    dist.ReduceOp.SUM: pccl.ReduceOp.SUM,
    dist.ReduceOp.AVG: pccl.ReduceOp.AVG,
    dist.ReduceOp.PRODUCT: pccl.ReduceOp.PROD,
    dist.ReduceOp.MIN: pccl.ReduceOp.MIN,
    dist.ReduceOp.MAX: pccl.ReduceOp.MAX,
}

#: The torch dtypes the backend reduces and moves: those pccl has (pccl.DataType).
SUPPORTED_DTYPES = tuple(dt.to_torch_dtype() for dt in pccl.DataType)


def reduce_op(op: Any) -> pccl.ReduceOp:
    """pccl's op for a torch ``ReduceOp`` (or ``RedOpType``)."""
    for torch_op, ours in _REDUCE_OPS.items():
        if _same_op(op, torch_op):
            return ours
    name = next((n for n in ("BAND", "BOR", "BXOR", "PREMUL_SUM") if _same_op(op, getattr(dist.ReduceOp, n))), op)
    raise pccl.InvalidArgumentError(
        f"the pccl backend does not support ReduceOp.{name}; it reduces with SUM, AVG, PRODUCT, MIN and MAX")


def _same_op(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except TypeError:
        return False


def check_tensor(t: Any, what: str) -> torch.Tensor:
    """A dense, contiguous CPU or CUDA tensor of a dtype pccl supports."""
    if not isinstance(t, torch.Tensor):
        raise pccl.InvalidArgumentError(f"{what} must be a torch.Tensor, not {type(t).__name__}")
    if t.layout != torch.strided:
        raise pccl.InvalidArgumentError(f"{what} must be a dense tensor (layout {t.layout})")
    if not t.is_contiguous():
        raise pccl.InvalidArgumentError(f"{what} must be contiguous")
    if t.device.type not in ("cpu", "cuda"):
        raise pccl.InvalidArgumentError(f"{what} is on {t.device}; the pccl backend takes CPU and CUDA tensors")
    if t.dtype not in SUPPORTED_DTYPES:
        raise pccl.InvalidArgumentError(
            f"{what} has dtype {t.dtype}, which pccl does not support (complex tensors are "
            f"reduced as their real view; bool is not supported)")
    return t


def single(tensors: Sequence[Any], what: str) -> torch.Tensor:
    """The one tensor of a list-of-one argument (torch's API passes lists)."""
    if len(tensors) != 1:
        raise pccl.InvalidArgumentError(f"{what} takes exactly one tensor per process, got {len(tensors)}")
    return check_tensor(tensors[0], what)


def same_kind(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """`a` and `b` have the same dtype and device."""
    if a.dtype != b.dtype:
        raise pccl.InvalidArgumentError(f"{what}: dtypes differ ({a.dtype} vs {b.dtype})")
    if a.device != b.device:
        raise pccl.InvalidArgumentError(f"{what}: devices differ ({a.device} vs {b.device})")


def local_reduce(op: pccl.ReduceOp, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The reduction of `inputs` in this process, in input order (a group of one reduces
    one input: the result is that input)."""
    if len(inputs) == 1:
        return inputs[0]
    stack = torch.stack(list(inputs))
    if op == pccl.ReduceOp.SUM:
        return stack.sum(0, dtype=stack.dtype)
    if op == pccl.ReduceOp.PROD:
        return stack.prod(0, dtype=stack.dtype)
    if op == pccl.ReduceOp.MIN:
        return stack.amin(0)
    if op == pccl.ReduceOp.MAX:
        return stack.amax(0)
    total = stack.sum(0, dtype=stack.dtype)
    return total // len(inputs) if not total.is_floating_point() else total / len(inputs)
