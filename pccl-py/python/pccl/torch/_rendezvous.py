"""How ``init_process_group(backend="pccl")`` finds the run (pccl-py/README.md, "Ranks and
world size").

- ``init_method="pccl://host:port"``: the ``pccl`` rendezvous handler connects to the master
  at host:port, waits until the run has ``world_size`` peers and yields the run's rank and
  size, with a store local to this process (the run needs no shared store); the backend
  then uses that communicator. Query parameters: ``bind`` (p2p bind address, default
  ``0.0.0.0:0``), ``advertise_ip``, ``peer_group``.
- any other ``init_method`` or ``store`` (``env://`` under torchrun, ``tcp://``, ...): torch's
  rendezvous runs as usual and the backend connects to the master named by
  ``PCCL_MASTER_ADDR`` ("host:port"), with ``PCCL_P2P_BIND_ADDRESS`` as the bind address.

Either way the run decides ranks: ``world_size`` is the size the run must reach before
``init_process_group`` returns, and a ``rank`` that differs from the run's is reported with a
warning; ``dist.get_rank()`` and ``dist.get_world_size()`` return the run's."""

from __future__ import annotations

import os
import threading
import uuid
from datetime import timedelta
from typing import Any, Iterator
from urllib.parse import parse_qs, urlparse

import torch.distributed as dist

import pccl
from pccl.torch._group import DEFAULT_TIMEOUT, ProcessGroup, check_rank

SCHEME = "pccl"
# The store key naming the group the rendezvous handler connected (the handler and the
# backend's creator run back to back inside init_process_group; the key is in the store
# the handler yields, which torch hands to the creator wrapped in prefix stores).
_TOKEN_KEY = "pccl/rendezvous-token"
_connected: dict[str, ProcessGroup] = {}
_connected_lock = threading.Lock()


def _query(url: str) -> tuple[str, dict[str, str]]:
    parsed = urlparse(url)
    if not parsed.hostname or parsed.port is None:
        raise ValueError(f"pccl:// rendezvous: expected pccl://host:port, got {url!r}")
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    return f"{host}:{parsed.port}", query


def _int(query: dict[str, str], key: str, default: int) -> int:
    try:
        return int(query.get(key, default))
    except ValueError:
        raise ValueError(f"pccl:// rendezvous: {key} must be an integer, got {query[key]!r}") from None


def rendezvous_handler(url: str, timeout: timedelta = DEFAULT_TIMEOUT, **kwargs: Any
                       ) -> Iterator[tuple[dist.Store, int, int]]:
    """torch's rendezvous handler for ``pccl://host:port``."""
    master, query = _query(url)
    world_size = _int(query, "world_size", -1)
    rank = _int(query, "rank", -1)
    options: dict[str, Any] = {"p2p_bind_address": query.get("bind", _bind_address())}
    if "advertise_ip" in query:
        options["advertise_ip"] = query["advertise_ip"]
    if "peer_group" in query:
        options["peer_group"] = _int(query, "peer_group", 0)
    pg = ProcessGroup(master, world_size=max(world_size, 1), timeout=timeout, **options)
    check_rank(rank, pg)
    token = uuid.uuid4().hex
    with _connected_lock:
        _connected[token] = pg
    store = dist.HashStore()
    store.set(_TOKEN_KEY, token)
    yield store, pg.rank(), pg.size()
    raise RuntimeError("pccl:// rendezvous: unable to perform re-rendezvous")


def _bind_address() -> str:
    return os.environ.get("PCCL_P2P_BIND_ADDRESS", "0.0.0.0:0")


def _base_store(store: dist.Store) -> dist.Store:
    while isinstance(store, dist.PrefixStore):
        store = store.underlying_store
    return store


def _take_connected(store: dist.Store) -> ProcessGroup | None:
    base = _base_store(store)
    if not isinstance(base, dist.HashStore) or not base.check([_TOKEN_KEY]):
        return None
    token = base.get(_TOKEN_KEY).decode()
    with _connected_lock:
        return _connected.pop(token, None)


def create_backend(opts: Any, backend_options: Any = None) -> ProcessGroup:
    """The creator torch calls for ``backend="pccl"`` (the extended API: `opts` is a
    ``_DistributedBackendOptions``)."""
    if dist.is_initialized():
        raise pccl.InvalidArgumentError(
            "the pccl backend has one process group per process, the default one: "
            "new_group() is not supported (a second group would be a second peer of the "
            "run; pccl's peer groups partition a run, see pccl-py/README.md)")
    timeout = opts.timeout if isinstance(opts.timeout, timedelta) else DEFAULT_TIMEOUT
    pg = _take_connected(opts.store)
    if pg is not None:
        pg.set_timeout(timeout)
        return pg
    master = os.environ.get("PCCL_MASTER_ADDR")
    if not master:
        raise ValueError(
            "the pccl backend needs the master's address: init_method='pccl://host:port' "
            "or the PCCL_MASTER_ADDR environment variable ('host:port')")
    pg = ProcessGroup(master, world_size=opts.group_size, timeout=timeout,
                      p2p_bind_address=_bind_address())
    check_rank(opts.group_rank, pg)
    return pg
