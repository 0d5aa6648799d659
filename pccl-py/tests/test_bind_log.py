"""Where the listeners bind, and `PCCL_LOG` in Python programs.

The bind checks read the process's listening sockets from `/proc` (Linux): the inodes
of its socket descriptors matched against the LISTEN entries of `/proc/self/net/tcp{,6}`."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import pccl
from conftest import form_group, run_parallel

pytestmark = pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="needs Linux /proc")


def listening() -> set[tuple[str, int]]:
    """(ip, port) of every TCP socket this process listens on."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    found = set()
    for table in ("tcp", "tcp6"):
        with open(f"/proc/self/net/{table}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                # sl local rem st tx:rx tr:when retrnsmt uid timeout inode
                if fields[3] != "0A" or fields[9] not in inodes:
                    continue
                ip_hex, port_hex = fields[1].split(":")
                # Printed as native-endian 32-bit words.
                raw = b"".join(int(ip_hex[i:i + 8], 16).to_bytes(4, sys.byteorder)
                               for i in range(0, len(ip_hex), 8))
                found.add((str(ipaddress.ip_address(raw)), int(port_hex, 16)))
    return found


def test_the_p2p_listener_binds_the_given_address(master):
    before = listening()
    c = pccl.Communicator(master.listen_address, p2p_bind_address="127.0.0.1:0")
    c.connect()
    try:
        new = listening() - before
        assert len(new) == 1, new
        (ip, port), = new
        assert ip == "127.0.0.1" and port != 0
    finally:
        c.close()


def test_a_group_with_bare_bind_ips_and_advertised_addresses_all_reduces(master):
    # A bare ip binds from the default port 48150 on; the advertised address is the one
    # the other peer dials.
    a, b = (pccl.Communicator(master.listen_address, p2p_bind_address="127.0.0.1",
                              advertise_ip="127.0.0.1") for _ in range(2))
    a.connect()
    t = threading.Thread(target=b.connect, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while t.is_alive():  # `a` votes until `b` is in
        assert time.monotonic() < deadline, "b was not admitted within 30 s"
        a.update_topology()
        t.join(0.05)
    outs = [np.zeros(16, dtype=np.float32) for _ in range(2)]
    try:
        run_parallel([a.update_topology, b.update_topology])
        run_parallel([
            lambda c=c, o=o: c.all_reduce(np.ones(16, dtype=np.float32), o, op=pccl.ReduceOp.SUM)
            for c, o in ((a, outs[0]), (b, outs[1]))
        ])
        assert all((o == 2).all() for o in outs)
        assert all(ip == "127.0.0.1" for ip, _ in listening())
        assert any(port >= 48150 for _, port in listening())
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("kw", [
    {"p2p_bind_address": "not an ip"},
    {"p2p_bind_address": "127.0.0.1:notaport"},
    {"advertise_ip": "127.0.0.1:5"},
    {"advertise_ip": "nowhere"},
])
def test_bad_bind_arguments(kw):
    with pytest.raises(pccl.InvalidArgumentError):
        pccl.Communicator("127.0.0.1:48148", **kw)


def test_an_unbindable_address_fails_connect(master):
    # 192.0.2.1 (TEST-NET-1) is no local address: the bind fails, at connect.
    c = pccl.Communicator(master.listen_address, p2p_bind_address="192.0.2.1:0")
    with pytest.raises(pccl.InvalidUsageError):
        c.connect(n_attempts=1)


LOG_SCRIPT = textwrap.dedent(
    """
    import pccl
    m = pccl.MasterNode("127.0.0.1:0"); m.run()
    c = pccl.Communicator(m.listen_address, p2p_bind_address="127.0.0.1:0"); c.connect()
    c.close(); m.interrupt(); m.await_termination()
    print("DONE", flush=True)
    """
)

INFO_LINES = ("master listening", "accepted into the run")


def run_logged(pccl_log: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PCCL_LOG", "RUST_LOG")}
    if pccl_log is not None:
        env["PCCL_LOG"] = pccl_log
    p = subprocess.run([sys.executable, "-c", LOG_SCRIPT], env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "DONE", p.stderr
    return p.stderr


def test_pccl_log_reaches_stderr():
    err = run_logged("info")
    for line in INFO_LINES:
        assert line in err, err


def test_no_info_lines_by_default():
    err = run_logged(None)
    for line in INFO_LINES:
        assert line not in err, err


def test_form_group_binds_loopback(master):
    comms = form_group(master.listen_address, 2)
    try:
        assert listening() and all(ip == "127.0.0.1" for ip, _ in listening())
    finally:
        for c in comms:
            c.close()
