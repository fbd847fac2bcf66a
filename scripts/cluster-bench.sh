#!/usr/bin/env bash
# Cluster mode on this machine: a persistent redis-server (appendonly yes, appendfsync
# always — the setting the README asks for) and two release `aip serve --cluster` nodes.
# Each scenario runs same-node (devices and HTTP on node A) and cross-node (devices on
# node B, HTTP on node A: every dispatch crosses Redis to B and back), RUNS times,
# interleaved, each on fresh processes; then an idle hold on one node for RSS per device.
# Prints the BENCHMARKS.md cluster table; results land in bench-results/cluster-*.json.
# SKIP_BUILD=1 uses target/release/aip as it is.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
RUNS=${RUNS:-3}
HOLD=${HOLD:-5000}
OUT=bench-results
mkdir -p "$OUT"
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p aip-cli
AIP=target/release/aip
DIR=$(mktemp -d)
RPORT=6391
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$DIR"; }
trap cleanup EXIT

start() {
  rm -rf "${DIR:?}"/*
  redis-server --port $RPORT --bind 127.0.0.1 --save "" --appendonly yes --appendfsync always \
    --dir "$DIR" --logfile "" >/dev/null 2>&1 &
  RP=$!; pids+=("$RP")
  for _ in $(seq 100); do redis-cli -p $RPORT ping >/dev/null 2>&1 && break; sleep 0.1; done
  for n in a b; do
    port=$([ $n = a ] && echo 5000 || echo 5001)
    "$AIP" serve --port "$port" --cluster "redis://127.0.0.1:$RPORT" --node-id "$n" \
      --max-connections 19000 --max-sockets-per-ip 20000 --max-active-sessions 1000000 \
      --accept-timeout 600 --log-level WARNING >/dev/null 2>&1 &
    eval "P_$n=$!"; pids+=("$!")
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/api/health" >/dev/null && break; sleep 0.1; done
  done
}
stop() { kill -TERM "$P_a" "$P_b" 2>/dev/null || true; wait "$P_a" "$P_b" 2>/dev/null || true; kill -9 "$RP"; wait "$RP" 2>/dev/null || true; }

T=$SECONDS_PER_RUN
for i in $(seq "$RUNS"); do
  for scenario in dispatch session; do
    case $scenario in
      dispatch) args=(dispatch --devices 20 --concurrency 64 --seconds "$T") ;;
      session) args=(session --devices 64 --concurrency 256 --seconds "$T") ;;
    esac
    for where in same cross; do
      start
      devices=ws://127.0.0.1:5000/ws
      [ $where = cross ] && devices=ws://127.0.0.1:5001/ws
      echo "== $scenario $where ($i/$RUNS)" >&2
      "$AIP" bench "${args[@]}" --url ws://127.0.0.1:5000/ws --devices-url "$devices" \
        --server-pid "$P_a" --json >"$OUT/cluster-$scenario-$where.$i.json"
      stop
    done
  done
done
start
echo "== hold $HOLD on node b" >&2
"$AIP" bench hold --clients "$HOLD" --heartbeat-every 20 --seconds 20 --url ws://127.0.0.1:5001/ws \
  --server-pid "$P_b" --json >"$OUT/cluster-hold.json"
stop

python3 - "$OUT" "$RUNS" <<'PY'
import json, sys, os, statistics
out, runs = sys.argv[1], int(sys.argv[2])
def load(name):
    rs = []
    for i in range(1, runs + 1):
        p = os.path.join(out, f"cluster-{name}.{i}.json")
        if os.path.exists(p):
            rs.append(json.load(open(p))["target"])
    return rs
def f(x): return f"{x:,.0f}"
print("| scenario | same-node ops/s | cross-node ops/s | cross / same | same p50 / p99 µs | cross p50 / p99 µs | added p50 / p99 µs | runs (cross / same) |")
print("|---|---|---|---|---|---|---|---|")
for s in ["dispatch", "session"]:
    same, cross = load(f"{s}-same"), load(f"{s}-cross")
    if not same or not cross: continue
    ratios = [c["throughput"] / m["throughput"] for c, m in zip(cross, same)]
    k = sorted(range(len(ratios)), key=lambda i: ratios[i])[len(ratios) // 2]
    m, c = same[k], cross[k]
    lm, lc = m["latency_us"], c["latency_us"]
    print(f"| {s} | {f(m['throughput'])} | {f(c['throughput'])} | **{ratios[k]:.2f}** | "
          f"{f(lm['p50_us'])} / {f(lm['p99_us'])} | {f(lc['p50_us'])} / {f(lc['p99_us'])} | "
          f"{f(lc['p50_us'] - lm['p50_us'])} / {f(lc['p99_us'] - lm['p99_us'])} | "
          + ", ".join(f"{r:.2f}" for r in ratios) + " |")
h = json.load(open(os.path.join(out, "cluster-hold.json")))["target"]
print()
srv = h.get("server") or {}
print(f"hold {h['details'].get('connected')} idle devices on one node: RSS per connection "
      f"{srv.get('rss_per_conn_kb')} KB (before {srv.get('rss_before_kb')} KB, after {srv.get('rss_after_kb')} KB)")
PY
