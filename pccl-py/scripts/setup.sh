#!/usr/bin/env bash
# Builds the pccl wheel with pip (maturin as the build backend) and installs it into a
# virtual environment at .venv (kept between runs, so torch is downloaded once per
# machine). Used by test.sh and demo.sh.
# Usage: pccl-py/scripts/setup.sh [--deps-only]   (from any directory)
# --deps-only creates .venv and installs the Python packages but builds no wheel:
# scripts/test runs it in the background while the Rust code compiles.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

VENV=.venv
PY="$VENV/bin/python"
if [[ ! -x "$PY" ]]; then
    echo "==> creating $VENV"
    python3 -m venv "$VENV"
fi
# torch from PyPI is the CUDA build (~3 GB); install only what is missing.
if ! "$PY" -c "import maturin, pytest, pytest_timeout, numpy, torch, mypy, prometheus_client" 2>/dev/null; then
    echo "==> installing maturin, pytest, numpy, torch, mypy, prometheus-client into $VENV"
    "$PY" -m pip install --quiet --upgrade pip
    "$PY" -m pip install --quiet maturin pytest pytest-timeout numpy torch mypy prometheus-client
fi
if [[ "${1:-}" == "--deps-only" ]]; then
    exit 0
fi

# As a user's `pip install ./pccl-py` builds it (README "Installing pccl"): pip runs the
# build backend pyproject.toml names (maturin, release profile) in an isolated
# environment. test_packaging.py then checks the installed wheel.
echo "==> building the wheel (pip wheel ./pccl-py: maturin, release)"
WHEELS=target/pccl-py-wheels
rm -rf "$WHEELS"
"$PY" -m pip wheel --quiet --no-deps --wheel-dir "$WHEELS" ./pccl-py
"$PY" -m pip install --quiet --force-reinstall --no-deps "$WHEELS"/pccl-*.whl
# A `maturin develop` build leaves a copy of the module in the source tree; make sure the
# tests import the installed wheel.
rm -f pccl-py/python/pccl/_pccl*.so

