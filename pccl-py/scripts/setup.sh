#!/usr/bin/env bash
# Builds the pccl wheel with maturin into a virtual environment at .venv (kept between
# runs, so torch is downloaded once per machine) and installs it. Used by test.sh and
# demo.sh. Usage: pccl-py/scripts/setup.sh   (from any directory)
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

echo "==> building the wheel (maturin, release)"
WHEELS=target/pccl-py-wheels
rm -rf "$WHEELS"
"$VENV/bin/maturin" build --release --manifest-path pccl-py/Cargo.toml --out "$WHEELS"
"$PY" -m pip install --quiet --force-reinstall --no-deps "$WHEELS"/pccl-*.whl
# A `maturin develop` build leaves a copy of the module in the source tree; make sure the
# tests import the installed wheel.
rm -f pccl-py/python/pccl/_pccl*.so

