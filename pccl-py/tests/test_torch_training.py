"""Real torch training over the ``pccl`` backend, one process per rank on loopback:
DistributedDataParallel against gloo, FSDP, and the fault-tolerant DDP recipe with a rank
killed by SIGKILL mid-training. Parameters are compared bit for bit across ranks."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from conftest import Child, finish  # noqa: E402

PEER = str(Path(__file__).with_name("torch_train_peer.py"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Rank(Child):
    """One rank's process."""

    def steps(self) -> int:
        return sum(1 for line in list(self.lines) if line.startswith("step ") and " world " in line)


def start_ranks(procs, master, tmp_path, scenario, world, extra=lambda i: []):
    return [Rank(procs, [PEER, scenario, "--master", master.listen_address, "--world", str(world),
                         "--out", str(tmp_path / f"{scenario}{i}.pt"), *extra(i)], f"{scenario}{i}")
            for i in range(world)]


@pytest.mark.timeout(300)
def test_ddp_matches_gloo_bit_identical_across_ranks(master, procs, tmp_path):
    """20 DDP steps on 3 processes: with gloo, then with pccl (same processes, one after
    the other). pccl's parameters are bit-identical across ranks at every step and equal
    (allclose) to gloo's."""
    world = 3
    gloo = f"tcp://127.0.0.1:{free_port()}"
    ranks = start_ranks(procs, master, tmp_path, "ddp", world,
                        lambda i: ["--gloo-init", gloo, "--gloo-rank", str(i)])
    finish(ranks, 240)
    runs = [torch.load(tmp_path / f"ddp{i}.pt") for i in range(world)]
    assert sorted(r["pccl_rank"] for r in runs) == list(range(world))
    for step in range(20):
        ref = runs[0]["pccl"][step]
        for r in runs[1:]:
            assert torch.equal(r["pccl"][step].view(torch.int32), ref.view(torch.int32)), f"step {step}"
        assert torch.allclose(ref, runs[0]["gloo"][step], rtol=1e-5, atol=1e-6), f"step {step}"
    assert not torch.equal(runs[0]["pccl"][0], runs[0]["pccl"][19]), "the model trained"


@pytest.mark.timeout(300)
def test_ddp_survives_a_killed_rank(master, procs, tmp_path):
    """3 DDP ranks with the fault-tolerant recipe; one is killed with SIGKILL after a few
    steps. Both survivors see the failure, update the topology and train on as a group of
    two, bit-identical at every step."""
    world = 3
    ranks = start_ranks(procs, master, tmp_path, "ft", world, lambda i: ["--steps", "30", "--step-delay", "0.01"])
    victim = ranks[1]
    deadline = time.monotonic() + 150
    while victim.steps() < 5:
        if time.monotonic() > deadline or any(r.p.poll() not in (None,) for r in ranks):
            pytest.fail("no progress before the kill\n" + "\n".join(r.output() for r in ranks))
        time.sleep(0.05)
    victim.kill()
    survivors = [ranks[0], ranks[2]]
    finish(survivors, 200)
    a, b = (torch.load(tmp_path / f"ft{i}.pt") for i in (0, 2))
    assert a["digests"] == b["digests"], "\n".join(r.output() for r in survivors)
    assert a["worlds"] == b["worlds"] and a["worlds"][0] == 3 and a["worlds"][-1] == 2
    assert a["failed"] >= 1 and b["failed"] >= 1
    assert len(a["digests"]) == 30
    assert sorted([a["ranks"][-1], b["ranks"][-1]]) == [0, 1], "the survivors are renumbered"


@pytest.mark.timeout(300)
def test_fsdp_fully_shard_on_cpu(master, procs, tmp_path):
    """fully_shard on 2 processes, 5 steps: the gathered parameters are bit-identical on
    both ranks at every step and match plain training on the mean of both ranks' losses."""
    import importlib.util

    world, steps = 2, 5
    ranks = start_ranks(procs, master, tmp_path, "fsdp", world, lambda i: ["--steps", str(steps)])
    finish(ranks, 240)
    runs = sorted((torch.load(tmp_path / f"fsdp{i}.pt") for i in range(world)), key=lambda r: r["rank"])
    spec = importlib.util.spec_from_file_location("torch_train_peer", PEER)
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    net = peer.model()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    for step in range(steps):
        for r in runs[1:]:
            assert torch.equal(r["history"][step].view(torch.int32), runs[0]["history"][step].view(torch.int32))
        opt.zero_grad()
        losses = [torch.nn.functional.mse_loss(net(x), y) for x, y in (peer.batch(r, step) for r in range(world))]
        (sum(losses) / world).backward()
        opt.step()
        assert torch.allclose(peer.flat(net), runs[0]["history"][step], rtol=1e-5, atol=1e-6), f"step {step}"
