#!/usr/bin/env bash
# Runs every `aip bench` scenario against a release `aip serve` and the raw floor server,
# in one run on this machine, and prints the BENCHMARKS.md table. Results land in
# bench-results/<scenario>.json. Needs ~20 000 open files per process (ulimit -n).
#
# RUNS=N (default 1) runs every scenario N times (each time the floor, then a fresh aip);
# the table then shows, per scenario, the run whose aip/floor throughput ratio is the
# median, and a line with every run's ratio — this machine's speed drifts within minutes.
# The runs land in bench-results/<scenario>.<i>.json.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
RUNS=${RUNS:-1}
OUT=bench-results
mkdir -p "$OUT"
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cargo build --release -q -p aip-cli -p aip-bench --examples --bins
AIP=target/release/aip
FLOOR=target/release/examples/floor_server
DATA=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$DATA"; }
trap cleanup EXIT

# A fresh floor for every run, like aip: a process that served an earlier run would reuse
# its freed memory and under-report RSS per connection.
start_floor() {
  "$FLOOR" --port 5099 --backlog 4096 >/dev/null 2>&1 &
  FP=$!; pids+=("$FP")
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/5099) 2>/dev/null && return; sleep 0.1; done
  echo "floor server did not start" >&2; exit 1
}
stop_floor() { kill -TERM "$FP"; wait "$FP" 2>/dev/null || true; }

start_aip() {
  rm -rf "$DATA"/*
  "$AIP" serve --port 5000 --data-dir "$DATA" --max-connections 19000 --max-sockets-per-ip 20000 \
    --max-active-sessions 1000000 --accept-timeout 600 --log-level WARNING >/dev/null 2>&1 &
  SP=$!; pids+=("$SP")
  for _ in $(seq 100); do curl -sf http://127.0.0.1:5000/api/health >/dev/null && return; sleep 0.1; done
  echo "aip serve did not start" >&2; exit 1
}
stop_aip() { kill -TERM "$SP"; wait "$SP" 2>/dev/null || true; }

run() { # name, args...
  local name=$1; shift
  rm -f "$OUT/$name".*.json
  for i in $(seq "$RUNS"); do
    start_floor
    start_aip
    echo "== $name ($i/$RUNS): aip bench $*" >&2
    "$AIP" bench "$@" --server-pid "$SP" --floor-url ws://127.0.0.1:5099/ws --floor-pid "$FP" --json >"$OUT/$name.$i.json"
    stop_aip
    stop_floor
  done
}

T=$SECONDS_PER_RUN
run heartbeat-50   heartbeat --clients 50 --seconds "$T"
run heartbeat-1000 heartbeat --clients 1000 --seconds "$T"
run hold-15000     hold --clients 15000 --heartbeat-every 20 --seconds 30
run dispatch       dispatch --devices 20 --concurrency 64 --seconds "$T"
run session        session --devices 64 --concurrency 256 --seconds "$T"
run churn          churn --clients 20 --seconds "$T"

python3 - "$OUT" "$RUNS" <<'PY'
import json, sys, os
out, runs = sys.argv[1], int(sys.argv[2])

def median_run(name):
    """The run with the median aip/floor throughput ratio (copied to <name>.json), and
    every run's ratio."""
    found = []
    for i in range(1, runs + 1):
        path = os.path.join(out, f"{name}.{i}.json")
        if os.path.exists(path):
            r = json.load(open(path))
            t, f = r.get("target", {}), r.get("floor") or {}
            ratio = t["throughput"] / f["throughput"] if f.get("throughput") else 0.0
            found.append((ratio, i, r))
    if not found:
        return None, []
    ratio, i, r = sorted(found, key=lambda x: x[0])[(len(found) - 1) // 2]
    with open(os.path.join(out, name + ".json"), "w") as fh:
        json.dump(r, fh)
    return r, [x[0] for x in found]

rows = []
def fmt(v, unit=""):
    if v is None: return "–"
    if isinstance(v, float): v = round(v, 1)
    return f"{v:,}{unit}" if isinstance(v, (int, float)) else str(v)
print("| scenario | metric | aip | floor | aip / floor |")
print("|---|---|---|---|---|")
for name in ["heartbeat-50", "heartbeat-1000", "hold-15000", "dispatch", "session", "churn"]:
    r, ratios = median_run(name)
    if r is None: continue
    t, f = r.get("target", {}), r.get("floor") or {}
    def line(metric, a, b):
        ratio = f"{a / b:.2f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "–"
        print(f"| {name} | {metric} | {fmt(a)} | {fmt(b)} | {ratio} |")
    line(t.get("unit", "ops/s"), t.get("throughput"), f.get("throughput"))
    lt, lf = t.get("latency_us", {}), f.get("latency_us", {})
    line("p50 µs", lt.get("p50_us"), lf.get("p50_us"))
    line("p99 µs", lt.get("p99_us"), lf.get("p99_us"))
    line("failures", t.get("failures"), f.get("failures"))
    st, sf = t.get("server") or {}, f.get("server") or {}
    line("server CPU %", st.get("cpu_percent"), sf.get("cpu_percent"))
    if name.startswith("hold"):
        line("RSS KB / connection", st.get("rss_per_conn_kb"), sf.get("rss_per_conn_kb"))
        reg_t = (t.get("details") or {}).get("registration") or {}
        reg_f = (f.get("details") or {}).get("registration") or {}
        line("registrations/s", reg_t.get("rate_per_s"), reg_f.get("rate_per_s"))
    if name == "churn":
        line("server RSS KB before", st.get("rss_before_kb"), sf.get("rss_before_kb"))
        line("server RSS KB after 2 s settle", st.get("rss_settled_kb"), sf.get("rss_settled_kb"))
    line("generator CPU %", t.get("generator_cpu_percent"), f.get("generator_cpu_percent"))
    if len(ratios) > 1:
        print(f"| {name} | throughput ratio of each run | | | {', '.join(f'{x:.2f}' for x in ratios)} |")
PY
