"""`Communicator.stats()` and the master's HTTP endpoints through the Python API; the
metrics are parsed with the Prometheus client library's own parser."""

import json
import time
import urllib.request

import numpy as np
from prometheus_client.openmetrics.parser import text_string_to_metric_families

import pccl

from conftest import form_group, run_parallel


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def samples(text: str) -> dict:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_stats_dict_and_metrics_agree():
    master = pccl.MasterNode("127.0.0.1:0", http_address="127.0.0.1:0")
    assert master.http_address == "127.0.0.1:0"
    master.run()
    http = master.http_address
    assert http is not None and not http.endswith(":0")
    comms = form_group(master.listen_address, 2)
    try:
        for tag in range(3):
            sends = [np.arange(1000, dtype=np.float32) * (i + 1) for i in range(2)]
            outs = [np.zeros(1000, dtype=np.float32) for _ in range(2)]
            run_parallel([lambda i=i: comms[i].all_reduce(sends[i], outs[i], op=pccl.ReduceOp.SUM, tag=tag)
                          for i in range(2)])
            assert outs[0].tobytes() == outs[1].tobytes()
        # One all-gather and two broadcasts: each kind of collective is counted apart.
        mine = [np.full(4, i + 1, dtype=np.int64) for i in range(2)]
        gathered = [np.zeros(8, dtype=np.int64) for _ in range(2)]
        run_parallel([lambda i=i: comms[i].all_gather(mine[i], gathered[i], tag=10) for i in range(2)])
        assert gathered[0].tobytes() == gathered[1].tobytes()
        for k, root in enumerate((0, 1)):
            bufs = [np.arange(5, dtype=np.float64) * (i + 1) for i in range(2)]
            run_parallel([lambda i=i: comms[i].broadcast(bufs[i], root=root, tag=20 + k) for i in range(2)])
            assert bufs[0].tobytes() == bufs[1].tobytes()
        for c in comms:
            s = c.stats()
            assert isinstance(s, dict)
            assert s["all_reduce"] == {"completed": 3, "failed": 0}
            assert s["all_gather"] == {"completed": 1, "failed": 0}
            assert s["broadcast"] == {"completed": 2, "failed": 0}
            assert s["reduce_scatter"] == {"completed": 0, "failed": 0}
            assert len(s["recent_all_reduces"]) == 3
            assert all(r["busbw"] > 0 for r in s["recent_all_reduces"])
            assert s["tx_bytes"] > 0 and s["rx_bytes"] > 0
        deadline = time.monotonic() + 10
        while True:
            m = samples(get(f"http://{http}/metrics"))
            if m.get(("pccl_op_duration_seconds_count", ())) == 6:
                break
            assert time.monotonic() < deadline, m
            time.sleep(0.1)
        # The master counts every collective's verdict once (3 all-reduces, 1 all-gather,
        # 2 broadcasts); the duration histogram holds each peer's all-reduces (2 × 3).
        assert m[("pccl_ops_total", (("group", "0"), ("outcome", "ok")))] == 6
        assert m[("pccl_world_size", (("group", "0"),))] == 2
        run = json.loads(get(f"http://{http}/api/run"))
        assert run["world_size"] == 2 and len(run["peers"]) == 2
        assert "<title>pccl run</title>" in get(f"http://{http}/")
    finally:
        for c in comms:
            c.close()
        master.interrupt()
