"""The Python examples, run as real multi-process jobs on loopback: peers are killed with
SIGKILL, newcomers join, and the final shared states are compared bit for bit."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import EXAMPLES, Child, finish

pytest.importorskip("torch")

STEP_LINE = "step revision="


class Peer(Child):
    """An example's peer process."""

    def revision(self) -> int:
        revs = [int(l.split(STEP_LINE)[1].split()[0]) for l in list(self.lines) if STEP_LINE in l]
        return max(revs, default=-1)


def wait_for(pred, timeout, peers, what):
    deadline = time.monotonic() + timeout
    while not pred():
        for p in peers:
            if p.p.poll() not in (None, 0):
                pytest.fail(f"{p.name} exited early while waiting for {what}\n{p.output()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n" + "\n".join(p.output() for p in peers))
        time.sleep(0.1)


def load(path: Path):
    arrays = dict(np.load(path))
    meta = json.loads(path.with_suffix(".json").read_text())
    return arrays, meta


def churn_run(procs, tmp_path, master, script, extra=()):
    """3 peers; kill one mid-run; start a newcomer; all survivors finish together."""
    def peer_args(i):
        return [str(EXAMPLES / script), "--master", master.listen_address,
                "--until-revision", "30", "--min-final-world", "3", "--step-delay", "0.05",
                "--data-seed", str(i), "--out", str(tmp_path / f"peer{i}.npz"), *extra]

    peers = [Peer(procs, peer_args(i), f"peer{i}") for i in range(3)]
    wait_for(lambda: all(p.revision() >= 5 for p in peers), 120, peers, "3 peers at revision 5")
    peers[1].kill()
    survivors = [peers[0], peers[2]]
    at_kill = max(p.revision() for p in survivors)
    wait_for(lambda: all(p.revision() >= at_kill + 3 for p in survivors), 60, survivors,
             "progress after the kill")
    newcomer = Peer(procs, peer_args(3), "newcomer")
    finish(survivors + [newcomer], 120)

    results = {i: load(tmp_path / f"peer{i}.npz") for i in (0, 2, 3)}
    ref_arrays, ref_meta = results[0]
    for i, (arrays, meta) in results.items():
        assert meta["revision"] == ref_meta["revision"] >= 30
        assert arrays.keys() == ref_arrays.keys()
        for k in arrays:
            assert arrays[k].tobytes() == ref_arrays[k].tobytes(), f"peer {i} differs in {k}"
        assert meta["hashes"] == ref_meta["hashes"]
        assert meta["world"] == 3
    new_meta = results[3][1]
    assert new_meta["first_sync"]["rx_bytes"] > 0, "the newcomer received the shared state"
    assert new_meta["first_sync"]["revision"] > 5
    for i in (0, 2):
        meta = results[i][1]
        first, last = meta["initial_loss"], meta["losses"][-1]
        assert last < 0.5 * first, f"peer {i}: loss did not go down ({first} -> {last})"
    return results, peers + [newcomer]


@pytest.mark.timeout(300)
def test_diloco_kill_and_join(procs, tmp_path, master):
    churn_run(procs, tmp_path, master, "diloco.py")


@pytest.mark.timeout(300)
def test_async_diloco_kill_and_join(procs, tmp_path, master):
    results, peers = churn_run(procs, tmp_path, master, "async_diloco.py")
    assert any("caught up" in l for l in peers[-1].lines), peers[-1].output()


@pytest.mark.timeout(300)
def test_fsdp_peer_groups_with_late_peer(procs, tmp_path, master):
    """3 peers x 2 FSDP ranks; the third peer joins mid-run. Every holder of shard k ends
    with the same bits, the late peer received both shards, and the loss went down."""
    def peer_args(i):
        return [str(EXAMPLES / "fsdp_diloco.py"), "--master", master.listen_address,
                "--shards", "2", "--until-revision", "25", "--min-final-world", "3",
                "--step-delay", "0.05", "--data-seed", str(i),
                "--out", str(tmp_path / f"peer{i}.npz")]

    peers = [Peer(procs, peer_args(i), f"peer{i}") for i in range(2)]
    wait_for(lambda: all(p.revision() >= 5 for p in peers), 180, peers, "2 peers at revision 5")
    peers.append(Peer(procs, peer_args(2), "late peer"))
    finish(peers, 180)
    for rank in range(2):
        results = [load(tmp_path / f"peer{i}_rank{rank}.npz") for i in range(3)]
        ref_arrays, ref_meta = results[0]
        for i, (arrays, meta) in enumerate(results):
            assert meta["revision"] == ref_meta["revision"] >= 25
            assert meta["largest_group"] == 3
            for k in arrays:
                assert arrays[k].tobytes() == ref_arrays[k].tobytes(), f"peer {i} rank {rank} {k}"
        assert results[2][1]["first_sync"]["rx_bytes"] > 0
        assert results[2][1]["first_sync"]["revision"] >= 5
        meta0 = results[0][1]
        assert meta0["losses"][-1] < 0.5 * meta0["initial_loss"]
