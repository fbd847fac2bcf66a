#!/usr/bin/env bash
# Fault-injection suite for cluster mode (see scripts/faults/faults.py for what it does):
# real redis-server(s), three real `aip serve --cluster` nodes, real `aip device`s, a
# constellation per node and an HTTP load generator; faults are injected, healed, and a
# checker reads the recorded history for broken invariants. Exit status 1 on any anomaly.
#
# Needs: python3 (3.11), redis-server and redis-cli on PATH. Installs the `websockets`
# package (PyPI) into target/faults-venv when missing. Builds target/debug/aip when AIP_BIN
# is unset and the binary is missing.
#
# Usage: scripts/faults/run.sh [--quick] [--faults a,b,c] [--devices N] [--seconds S]
#                              [--json out.json] [--keep] [--list]
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV=target/faults-venv
PY="$VENV/bin/python"
if ! "$PY" -c 'import websockets' 2>/dev/null; then
    echo "== installing websockets into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check 'websockets>=12,<18'
fi

for tool in redis-server redis-cli; do
    command -v "$tool" >/dev/null ||
        { echo "$tool not found (Debian: apt-get install redis-server)"; exit 2; }
done

if [ -z "${AIP_BIN:-}" ]; then
    AIP_BIN=target/debug/aip
    if [ ! -x "$AIP_BIN" ]; then
        echo "== building $AIP_BIN"
        cargo build --locked -p aip-cli
    fi
fi
export AIP_BIN

# The harness bounds itself (a global deadline, per-scenario timeouts) and kills what it
# started on any exit; this outer timeout is the last resort.
LIMIT=7200
for a in "$@"; do [ "$a" = "--quick" ] && LIMIT=420; done
exec timeout --signal=TERM --kill-after=15 "$LIMIT" "$PY" scripts/faults/faults.py "$@"
