"""Result codes and exceptions: ``pccl.Result`` and the ``PCCLError`` subclasses are
generated from the core's one table of result codes; these tests check that every code is
covered, that the numbers are those of the C header, that a Rust error of each code
becomes its subclass, and that the type stubs list exactly what the module defines."""

from __future__ import annotations

import ast
import pickle
import re

import pytest

import pccl
from conftest import REPO
from pccl import _pccl

# Names users may already catch: they must stay.
KEPT = [
    "PCCLError",
    "InvalidArgumentError",
    "InvalidUsageError",
    "TooFewPeersError",
    "MasterConnectionError",
    "ConnectionLostError",
    "UpdateTopologyFailedError",
]


def error_classes() -> dict[str, type]:
    """Every exported strict subclass of ``PCCLError``, by name."""
    return {
        name: obj
        for name, obj in vars(pccl).items()
        if isinstance(obj, type) and issubclass(obj, pccl.PCCLError) and obj is not pccl.PCCLError
    }


# Subclasses of a code's class for a more specific cause sharing its code.
REFINED = {"AuthenticationError": "MasterConnectionError"}


def code_classes() -> dict[str, type]:
    """The one class of each failure code: ``error_classes`` without the refinements."""
    return {name: cls for name, cls in error_classes().items() if name not in REFINED}


def header_codes() -> list[tuple[str, int]]:
    """``pcclResult_t``'s enumerators in ``include/pccl.h``, as Python member names
    (``pcclRankConnectionLost`` -> ``RANK_CONNECTION_LOST``), in order."""
    text = (REPO / "include" / "pccl.h").read_text()
    body = re.search(r"typedef enum pcclResult_t \{(.*?)\} pcclResult_t;", text, re.S)
    assert body, "pcclResult_t not found in include/pccl.h"
    codes = []
    for name, number in re.findall(r"^\s*pccl(\w+) = (\d+),", body.group(1), re.M):
        codes.append((re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper(), int(number)))
    return codes


def test_result_matches_the_c_header():
    codes = header_codes()
    assert len(codes) == 13 and codes[0] == ("SUCCESS", 0)
    assert [(m.name, m.value) for m in pccl.Result] == codes


def test_every_failure_code_has_exactly_one_subclass():
    classes = code_classes()
    by_code: dict[pccl.Result, list[str]] = {}
    for name, cls in classes.items():
        by_code.setdefault(cls("x").result, []).append(name)
    for member in pccl.Result:
        if member is pccl.Result.SUCCESS:
            assert member not in by_code
        else:
            assert len(by_code.get(member, [])) == 1, (member, by_code.get(member))
    assert set(by_code) == set(pccl.Result) - {pccl.Result.SUCCESS}
    for name in KEPT:
        assert hasattr(pccl, name), name
    for name in (
        "RankConnectionFailedError",
        "NoSharedStateAvailableError",
        "PendingAsyncOpsError",
        "TopologyOptimizationFailedError",
    ):
        assert name in classes, name


def test_subclasses_behave():
    for name, cls in error_classes().items():
        e = cls("boom")
        assert isinstance(e.result, pccl.Result)
        assert e.code == int(e.result) and str(e) == "boom"
        assert isinstance(e, RuntimeError)
        assert cls.__module__ == "pccl" and cls.__qualname__ == name
        assert cls.__doc__ and cls.__doc__.strip().endswith("."), name
        assert name in pccl.__all__ and getattr(_pccl, name) is cls
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is cls and back.result is e.result and str(back) == "boom"
    assert issubclass(pccl.InvalidArgumentError, ValueError)
    for cls in (pccl.MasterConnectionError, pccl.RankConnectionFailedError,
                pccl.ConnectionLostError):
        assert issubclass(cls, ConnectionError)
    # The base class keeps its meaning: an internal error unless told otherwise, and any
    # explicit code, even one this version does not know.
    assert pccl.PCCLError("x").result is pccl.Result.INTERNAL_ERROR
    assert pccl.PCCLError("x", 8).result is pccl.Result.RANK_CONNECTION_LOST
    assert pccl.PCCLError("x", 99).result == 99
    assert pickle.loads(pickle.dumps(pccl.Result.PENDING_ASYNC_OPS)) is pccl.Result.PENDING_ASYNC_OPS


def test_a_rust_error_of_each_code_raises_its_subclass():
    by_code = {cls("x").result: cls for cls in code_classes().values()}
    for member in pccl.Result:
        if member is pccl.Result.SUCCESS:
            assert _pccl._raise_example_error(int(member)) is None
            continue
        with pytest.raises(pccl.PCCLError) as info:
            _pccl._raise_example_error(int(member))
        assert type(info.value) is by_code[member], member
        assert info.value.result is member
        assert str(info.value), member
    with pytest.raises(pccl.InvalidArgumentError):
        _pccl._raise_example_error(len(pccl.Result))
    with pytest.raises(pccl.InvalidArgumentError):
        _pccl._raise_example_error(-1)


def test_stubs_list_the_codes_and_classes():
    """``mypy.stubtest`` checks that the stubbed names exist; this checks the values of
    ``Result`` and the bases of each class, which it does not pin."""
    stub = ast.parse((REPO / "pccl-py" / "python" / "pccl" / "_pccl.pyi").read_text())
    classes = {node.name: node for node in stub.body if isinstance(node, ast.ClassDef)}
    members = [
        (stmt.targets[0].id, ast.literal_eval(stmt.value))
        for stmt in classes["Result"].body
        if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name)
    ]
    assert members == [(m.name, m.value) for m in pccl.Result]
    stubbed = {
        name: [ast.unparse(base) for base in node.bases]
        for name, node in classes.items()
        if node.bases and ast.unparse(node.bases[0]) in ("PCCLError", *REFINED.values())
    }
    runtime = {
        name: [base.__name__ for base in cls.__bases__] for name, cls in error_classes().items()
    }
    assert stubbed == runtime


def test_authentication_error_refines_master_connection_error():
    cls = pccl.AuthenticationError
    assert cls.__bases__ == (pccl.MasterConnectionError,)
    assert issubclass(cls, ConnectionError) and issubclass(cls, pccl.PCCLError)
    assert cls("x").result is pccl.Result.MASTER_CONNECTION_FAILED
    # The Rust error raises it, with the code and message.
    with pytest.raises(pccl.AuthenticationError) as info:
        _pccl._raise_authentication_failed("the master has another run secret")
    assert info.value.result is pccl.Result.MASTER_CONNECTION_FAILED
    assert "another run secret" in str(info.value)
    # A plain master-connection failure stays the parent class.
    with pytest.raises(pccl.MasterConnectionError) as info:
        _pccl._raise_example_error(int(pccl.Result.MASTER_CONNECTION_FAILED))
    assert type(info.value) is pccl.MasterConnectionError
