"""Authenticated runs from Python (SECURITY.md §6): the ``secret`` / ``secret_file`` /
``encrypt`` keywords of ``Communicator`` and ``MasterNode``, the ``PCCL_RUN_SECRET``,
``PCCL_RUN_SECRET_FILE`` and ``PCCL_ENCRYPT`` variables read when a keyword is absent, and
``AuthenticationError`` for a refused secret.

The tests marked ``needs_wiring`` in their docstring only tell once the secret is used on
the connections: until then a wrong secret is not refused."""

from __future__ import annotations

import time

import numpy as np
import pytest

import pccl
from conftest import form_group, run_parallel

SECRET = "5e3c1d0a9b8f7e6d5c4b3a29180f0e0d0c0b0a09080706050403020100ffeedd"
OTHER = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
VARS = ("PCCL_RUN_SECRET", "PCCL_RUN_SECRET_FILE", "PCCL_ENCRYPT")


@pytest.fixture
def clean_env(monkeypatch):
    """No run-secret variable, whatever the runner's environment holds."""
    for v in VARS:
        monkeypatch.delenv(v, raising=False)
    return monkeypatch


def master_with(**kw) -> pccl.MasterNode:
    m = pccl.MasterNode("127.0.0.1:0", **kw)
    m.run()
    return m


def peer(address: str, **kw) -> pccl.Communicator:
    return pccl.Communicator(address, p2p_bind_address="127.0.0.1:0", **kw)


def test_keywords_check_their_arguments(clean_env, tmp_path):
    addr = "127.0.0.1:48148"
    for make in (lambda **kw: peer(addr, **kw), lambda **kw: pccl.MasterNode(addr, **kw)):
        for kw in (
            {"secret": "too short"},
            {"secret": ""},
            {"secret": " 0123456789abcde\n"},  # whitespace does not count
            {"secret": "x" * 5000},
            {"secret": SECRET, "secret_file": str(tmp_path / "s")},
            {"secret_file": str(tmp_path / "missing")},
            {"encrypt": True},  # no secret
        ):
            with pytest.raises(pccl.InvalidArgumentError) as e:
                make(**kw)
            assert isinstance(e.value, ValueError)
            assert e.value.result is pccl.Result.INVALID_ARGUMENT
            # The message says why and never repeats the secret.
            assert str(e.value) and "x" * 20 not in str(e.value), kw
    short = pytest.raises(pccl.InvalidArgumentError, peer, addr, secret="hunter2hunter2")
    assert "hunter2" not in str(short.value) and "16" in str(short.value)


def test_environment_when_keywords_are_absent(clean_env, tmp_path):
    addr = "127.0.0.1:48148"
    m = pccl.MasterNode(addr)
    assert not m.authenticated and not m.encrypted
    clean_env.setenv("PCCL_RUN_SECRET", SECRET)
    m = pccl.MasterNode(addr)
    assert m.authenticated and not m.encrypted
    clean_env.setenv("PCCL_ENCRYPT", "1")
    assert pccl.MasterNode(addr).encrypted
    # A keyword wins over its variable.
    assert not pccl.MasterNode(addr, encrypt=False).encrypted
    for bad in (
        {"PCCL_RUN_SECRET": "short"},
        {"PCCL_RUN_SECRET_FILE": str(tmp_path / "missing")},  # both set
        {"PCCL_ENCRYPT": "perhaps"},
    ):
        with clean_env.context() as mp:
            for k, v in bad.items():
                mp.setenv(k, v)
            with pytest.raises(pccl.InvalidArgumentError):
                peer(addr)
            with pytest.raises(pccl.InvalidArgumentError):
                pccl.MasterNode(addr)
    # The secret keyword makes the secret variables irrelevant, even bad ones.
    clean_env.setenv("PCCL_RUN_SECRET", "short")
    assert pccl.MasterNode(addr, secret=SECRET).authenticated
    clean_env.delenv("PCCL_RUN_SECRET")
    clean_env.delenv("PCCL_ENCRYPT")
    f = tmp_path / "secret"
    f.write_text(SECRET + "\n")
    clean_env.setenv("PCCL_RUN_SECRET_FILE", str(f))
    assert pccl.MasterNode(addr).authenticated


def all_reduce_bit_identical(comms: list[pccl.Communicator], n: int = 100_003) -> None:
    """A float32 SUM and an in-place AVG: exact expected values, identical bits everywhere."""
    rng = np.random.default_rng(12)
    inputs = [rng.integers(-1000, 1000, n).astype(np.float32) for _ in comms]
    outs = [np.zeros(n, np.float32) for _ in comms]
    run_parallel([lambda i=i: comms[i].all_reduce(inputs[i], outs[i], op=pccl.ReduceOp.SUM, tag=1)
                  for i in range(len(comms))])
    want = np.stack(inputs).sum(axis=0, dtype=np.float32)  # integers: exact in any order
    for o in outs:
        assert o.tobytes() == want.tobytes()
    xs = [rng.standard_normal(n).astype(np.float32) for _ in comms]
    run_parallel([lambda i=i: comms[i].all_reduce(xs[i], xs[i], op=pccl.ReduceOp.AVG, tag=2)
                  for i in range(len(comms))])
    for x in xs[1:]:
        assert x.tobytes() == xs[0].tobytes()


@pytest.mark.parametrize("encrypt", [False, True], ids=["authenticated", "encrypted"])
def test_secret_by_keyword_file_and_environment(clean_env, tmp_path, encrypt):
    """The master's secret by keyword; the peers' by keyword, by file and by the
    environment; all-reduce results exact and bit-identical."""
    f = tmp_path / "secret"
    f.write_text(SECRET + "\n")
    m = master_with(secret=SECRET, encrypt=encrypt)
    assert m.authenticated and m.encrypted == encrypt

    def make(i: int) -> pccl.Communicator:
        if i == 0:
            return peer(m.listen_address, secret=SECRET, encrypt=encrypt)
        if i == 1:
            return peer(m.listen_address, secret_file=str(f), encrypt=encrypt)
        with clean_env.context() as mp:
            mp.setenv("PCCL_RUN_SECRET", SECRET)
            if encrypt:
                mp.setenv("PCCL_ENCRYPT", "1")
            return peer(m.listen_address)

    comms = form_group(m.listen_address, 3, make=make)
    try:
        all_reduce_bit_identical(comms)
    finally:
        for c in comms:
            c.close()
        m.interrupt()


def expect_refused(address: str, **kw) -> None:
    c = peer(address, **kw)
    start = time.monotonic()
    with pytest.raises(pccl.AuthenticationError) as e:
        c.connect(n_attempts=1)
    assert time.monotonic() - start < 10, "refused only after 10 s"
    assert e.value.result is pccl.Result.MASTER_CONNECTION_FAILED
    assert SECRET not in str(e.value) and OTHER not in str(e.value)
    c.close()


def test_wrong_or_missing_secret_raises_authentication_error(clean_env):
    """needs_wiring: a peer with another secret, with none, or without the master's
    encryption is refused with ``AuthenticationError`` within seconds; a master without a
    secret refuses a peer that offers one; the run goes on unharmed."""
    m = master_with(secret=SECRET, encrypt=True)
    try:
        expect_refused(m.listen_address, secret=OTHER, encrypt=True)
        expect_refused(m.listen_address)
        expect_refused(m.listen_address, secret=SECRET)
        comms = form_group(m.listen_address, 2,
                           make=lambda i: peer(m.listen_address, secret=SECRET, encrypt=True))
        try:
            all_reduce_bit_identical(comms, 1000)
        finally:
            for c in comms:
                c.close()
    finally:
        m.interrupt()
    plain = master_with()
    try:
        expect_refused(plain.listen_address, secret=SECRET)
    finally:
        plain.interrupt()


def test_python_m_pccl_master_secret_file(procs, tmp_path):
    f = tmp_path / "secret"
    f.write_text(SECRET)
    # The flags decide; the runner's PCCL_RUN_SECRET*/PCCL_ENCRYPT, if any, do not matter.
    p = procs.start(["-m", "pccl.master", "--listen-address", "127.0.0.1:0",
                     "--secret-file", str(f), "--encrypt"])
    line = p.stdout.readline()
    assert "listening on 127.0.0.1:" in line, line
    port = int(line.rsplit(":", 1)[1])
    assert "encrypted run" in p.stdout.readline()
    c = peer(f"127.0.0.1:{port}", secret=SECRET, encrypt=True)
    c.connect(n_attempts=3)
    assert c.get_attribute(pccl.Attribute.GLOBAL_WORLD_SIZE) == 1
    c.close()
    p.send_signal(2)
    assert p.wait(timeout=10) == 0
    # A refused secret file: a usage error (exit 2) that says why.
    (tmp_path / "short").write_text("short")
    bad = procs.start(["-m", "pccl.master", "--listen-address", "127.0.0.1:0",
                       "--secret-file", str(tmp_path / "short")])
    out, _ = bad.communicate(timeout=30)
    assert bad.returncode == 2 and "run secret" in out, out
