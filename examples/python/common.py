"""Pieces shared by the Python examples: a small model, synthetic data, the outer
optimizer and result files. Nothing here talks to pccl."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

IN, HIDDEN = 16, 64


def base_args(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--master", default="127.0.0.1:48148", help="master address ip:port")
    p.add_argument("--bind", default="127.0.0.1:0",
                   help="where this peer's p2p listener binds, ip:port (port 0: any free "
                        "port); across hosts use an address the other peers can reach, "
                        "e.g. a private or VPN interface")
    p.add_argument("--until-revision", type=int, default=50,
                   help="stop once the shared state reaches this revision")
    p.add_argument("--min-final-world", type=int, default=1,
                   help="...and at least this many peers are in the run")
    p.add_argument("--max-steps", type=int, default=2000, help="hard cap on outer steps")
    p.add_argument("--inner-steps", type=int, default=5)
    p.add_argument("--inner-lr", type=float, default=3e-3)
    p.add_argument("--outer-lr", type=float, default=0.7)
    p.add_argument("--outer-momentum", type=float, default=0.9)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--data-seed", type=int, default=os.getpid())
    p.add_argument("--step-delay", type=float, default=0.0,
                   help="seconds to sleep per outer step (slows a demo down)")
    p.add_argument("--out", type=Path, default=None, help="write the final state here (.npz)")
    return p


def model() -> torch.nn.Module:
    """The same initial weights on every peer (the first sync would equalise them anyway)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(IN, HIDDEN), torch.nn.Tanh(),
                               torch.nn.Linear(HIDDEN, 1))


class Data:
    """Regression on a fixed random teacher network; each peer draws its own inputs."""

    def __init__(self, seed: int) -> None:
        g = torch.Generator().manual_seed(1234)
        self.w = torch.randn(IN, 8, generator=g)
        self.v = torch.randn(8, 1, generator=g)
        self.gen = torch.Generator().manual_seed(seed)
        ge = torch.Generator().manual_seed(999)
        self.eval_x = torch.randn(512, IN, generator=ge)
        self.eval_y = self.target(self.eval_x)

    def target(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ self.w) @ self.v

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, IN, generator=self.gen)
        return x, self.target(x)

    @torch.no_grad()
    def eval_loss(self, m: torch.nn.Module) -> float:
        return float(torch.nn.functional.mse_loss(m(self.eval_x), self.eval_y))


def inner_steps(m: torch.nn.Module, opt: torch.optim.Optimizer, data: Data, steps: int,
                batch: int) -> None:
    for _ in range(steps):
        x, y = data.batch(batch)
        opt.zero_grad()
        torch.nn.functional.mse_loss(m(x), y).backward()
        opt.step()


@torch.no_grad()
def nesterov_(outer: Sequence[torch.Tensor], momentum: Sequence[torch.Tensor],
              grad: torch.Tensor, lr: float, mu: float) -> None:
    """SGD with Nesterov momentum (PyTorch's formula) on `outer`, reading the gradient
    from the flat `grad`. Deterministic, so equal inputs give bit-equal results on every
    peer."""
    offset = 0
    for p, m in zip(outer, momentum):
        g = grad[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
        m.mul_(mu).add_(g)
        p.sub_(g.add(m, alpha=mu), alpha=lr)


def flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def log(*parts: Any) -> None:
    print(f"[{os.getpid()} {time.strftime('%H:%M:%S')}]", *parts, flush=True)


def write_result(path: Path | None, state_tensors: dict[str, torch.Tensor],
                 meta: dict[str, Any]) -> None:
    """Saves the shared-state tensors (.npz) and metadata (.json beside it)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: v.detach().cpu().numpy() for k, v in state_tensors.items()})
    path.with_suffix(".json").write_text(json.dumps(meta))


def fail(msg: str) -> None:
    log("error:", msg)
    sys.exit(1)
