#!/usr/bin/env bash
# The Python stage: builds and installs the wheel into .venv (setup.sh), checks the type
# stubs against the native module and runs the pytest suite.
# Usage: pccl-py/scripts/test.sh [pytest args...]   (from any directory)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

bash pccl-py/scripts/setup.sh
PY=.venv/bin/python

echo "==> checking the type stubs (mypy.stubtest)"
ROOT=$(pwd)
(cd /tmp && "$ROOT/$PY" -m mypy.stubtest pccl._pccl)

echo "==> pytest"
"$PY" -m pytest pccl-py/tests -q -p no:cacheprovider --timeout=300 "$@"
