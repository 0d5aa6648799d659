#!/usr/bin/env bash
# The Python stage: builds and installs the wheel into .venv (setup.sh), checks the type
# stubs against the native module and runs the pytest suite.
# Usage: pccl-py/scripts/test.sh [pytest args...]   (from any directory)
# PCCL_PY_NO_BUILD=1 skips the build and uses the wheel already installed in .venv
# (scripts/test's second, authenticated pass). PCCL_PY_TESTS names the test files or
# directories to run (space-separated; default: all of pccl-py/tests).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

if [[ "${PCCL_PY_NO_BUILD:-0}" != 1 ]]; then
    bash pccl-py/scripts/setup.sh
fi
PY=.venv/bin/python

echo "==> checking the type stubs (mypy.stubtest)"
ROOT=$(pwd)
(cd /tmp && "$ROOT/$PY" -m mypy.stubtest pccl._pccl)

echo "==> pytest"
# -rs prints every skip with its reason. The JUnit report lists the skips for the check
# below: only a missing CUDA device is an acceptable skip (reasons start with "CUDA:",
# see cuda_or_skip in tests/conftest.py); anything else skipped, e.g. torch, which
# setup.sh installs, fails this stage. Accepted skips go to $PCCL_SKIP_LOG when set, for
# the summary of scripts/test.
JUNIT=$(mktemp)
trap 'rm -f "$JUNIT"' EXIT
read -ra TESTS <<<"${PCCL_PY_TESTS:-pccl-py/tests}"
"$PY" -m pytest "${TESTS[@]}" -q -rs -p no:cacheprovider --timeout=300 --junitxml="$JUNIT" "$@"
"$PY" - "$JUNIT" <<'PYEOF'
import ast, os, sys, xml.etree.ElementTree as ET

accepted, refused = [], []
for case in ET.parse(sys.argv[1]).iter("testcase"):
    for skipped in case.iter("skipped"):
        reason = skipped.get("message", "")
        if reason == "collection skipped":  # a whole module; text: (path, line, reason)
            reason = ast.literal_eval(skipped.text or "(0, 0, '?')")[2]
        reason = reason.removeprefix("Skipped: ")
        where = "::".join(x for x in (case.get("classname"), case.get("name")) if x)
        (accepted if reason.startswith("CUDA:") else refused).append(f"{reason} (pccl-py {where})")
log = os.environ.get("PCCL_SKIP_LOG")
if log and accepted:
    with open(log, "a") as f:
        f.writelines(line + "\n" for line in accepted)
if refused:
    print("error: tests were skipped for reasons other than a missing CUDA device:", file=sys.stderr)
    for line in refused:
        print("  " + line, file=sys.stderr)
    sys.exit(1)
PYEOF
