#!/usr/bin/env bash
# Python demo: a master and 3 DiLoCo peers (examples/python/diloco.py) on loopback; one
# peer is killed with SIGKILL mid-run and a new one joins, and the survivors finish with
# bit-identical shared state. The master serves its live dashboard; its URL is printed
# first. Builds and installs what it needs into .venv first.
# Usage: pccl-py/scripts/demo.sh [--secret]   (--secret: an authenticated run)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash pccl-py/scripts/setup.sh
PY=.venv/bin/python
OUT=$(mktemp -d)
# --secret: an authenticated run (SECURITY.md §6). A fresh 256-bit secret in a private
# file, read by the master and every peer through PCCL_RUN_SECRET_FILE; never printed.
if [[ "${1:-}" == "--secret" ]]; then
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$OUT/run-secret"
    export PCCL_RUN_SECRET_FILE="$OUT/run-secret"
    echo ">>> authenticated run: master and peers share a freshly generated run secret"
fi
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$OUT"
}
trap cleanup EXIT

PORT=$("$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
# The master's live dashboard (README, "Watching a run"): the usual port when it is free,
# else any; the master prints its URL first.
HTTP_PORT=$("$PY" -c "
import socket
s = socket.socket()
try:
    s.bind(('127.0.0.1', 9148)); print(9148)
except OSError:
    print(0)")
"$PY" -m pccl.master --listen-address "127.0.0.1:$PORT" --http-address "127.0.0.1:$HTTP_PORT" & PIDS+=($!)
sleep 1
peer() {
    "$PY" examples/python/diloco.py --master "127.0.0.1:$PORT" --until-revision 60 \
        --min-final-world 3 --step-delay 0.1 --data-seed "$1" --out "$OUT/peer$1.npz" \
        > >(tee -a "$OUT/peer$1.log" | sed -u "s/^/peer$1 /") 2>&1 &
    PIDS+=($!)
}
# Waits (at most 120 s) until a peer's log shows this text.
await_log() {
    for _ in $(seq 240); do grep -q "$2" "$OUT/$1.log" 2>/dev/null && return 0; sleep 0.5; done
    echo "error: timed out waiting for '$2' from $1" >&2
    exit 1
}
peer 0; peer 1; peer 2
await_log peer1 "step revision=10 "
echo ">>> killing peer1 (pid ${PIDS[2]}) with SIGKILL"
kill -9 "${PIDS[2]}"
rm -f "$OUT/peer1.npz" "$OUT/peer1.json"  # it never finished
await_log peer0 "world=2 "
echo ">>> starting a new peer"
peer 3
wait "${PIDS[1]}" "${PIDS[3]}" "${PIDS[4]}" || true
"$PY" - "$OUT" <<'PYEOF'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
metas = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("peer*.json"))}
hashes = {k: tuple(sorted(m["hashes"].items())) for k, m in metas.items()}
for k, m in metas.items():
    print(f"{k}: revision {m['revision']}, first sync received {m['first_sync']['rx_bytes']} bytes, "
          f"loss {m['initial_loss']:.3f} -> {m['losses'][-1] if m['losses'] else float('nan'):.3f}")
ok = len(set(hashes.values())) == 1 and len(metas) == 3
print("shared state bit-identical on all survivors:", "yes" if ok else "NO")
sys.exit(0 if ok else 1)
PYEOF
