#!/usr/bin/env bash
# Ingest against direct PUBLISH, same run: one `yorker serve --cores 1 --publisher-key bench
# --ingest redis-stream://127.0.0.1:$RPORT/bench/ingest` (CPU 0) and a redis-server (Debian's,
# CPU 0 too); `yorker-sim bench` (CPU 1) publishes either straight to the engine (topic
# bench/direct) or by XADD to the stream the engine ingests (topic bench/ingest, --publish-stream),
# alternating, ROUNDS rounds:
#   fan-out: N NO_CONFLATE subscribers, BURSTS bursts, then RATE updates/s for DURATION s;
#   throughput: NT subscribers, TRATE updates/s for DURATION s (what the ingest thread sustains).
# Reports updates/s, publish-to-subscriber latency p50/p99 and completion; the ratio of ingest to
# direct. Usage: scripts/bench-ingest.sh    (N=5000 ROUNDS=2 BURSTS=30 RATE=20 NT=10 TRATE=10000
#                                            DURATION=10)
# Output: bench-results/ingest-<stamp>.jsonl and a table on stdout (.md next to it).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/wait-port.sh
N=${N:-5000}
ROUNDS=${ROUNDS:-2}
BURSTS=${BURSTS:-30}
RATE=${RATE:-20}
NT=${NT:-10}
TRATE=${TRATE:-10000}
DURATION=${DURATION:-10}
command -v redis-server >/dev/null || { echo "redis-server is not installed (apt-get install redis-server)" >&2; exit 1; }
STAMP=$(date -u +%Y%m%d-%H%M%S)
mkdir -p bench-results
RES="bench-results/ingest-$STAMP.jsonl"
cargo build --release -q -p yorker -p yorker-sim
B=target/release
PORT=7990
RPORT=7991
WORK=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
taskset -c 0 redis-server --port $RPORT --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" >/dev/null 2>&1 &
pids+=($!)
wait_port $RPORT
# One stream (topic) per ingest run, so that every run starts on a topic without a value.
keys=$(for r in $(seq 1 "$ROUNDS"); do printf 'bench/ingest-b%s,bench/ingest-r%s,bench/ingest-t%s,' "$r" "$r" "$r"; done)
taskset -c 0 $B/yorker serve --listen 127.0.0.1:$PORT --cores 1 --publisher-key bench --stats-interval 0 \
  --ingest "redis-stream://127.0.0.1:$RPORT/${keys%,}" 2>"$WORK/engine.log" &
Y=$!
pids+=($Y)
wait_port $PORT
BASE=170
run() { # name topic subs mode extra...
  local name=$1 topic=$2 subs=$3 mode=$4; shift 4
  BASE=$((BASE + 1))
  local via=()
  [[ $name == ingest* ]] && via=(--publish-stream 127.0.0.1:$RPORT)
  out=$(taskset -c 1 timeout 300 $B/yorker-sim bench --addr 127.0.0.1:$PORT --key bench --topic "$topic" \
        "${via[@]}" --subs "$subs" --mode "$mode" --size 64 --ramp 20000 --server-pid $Y \
        --source-base $BASE --json "$@")
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["path"]=sys.argv[2]; d["case"]=sys.argv[3]; d["round"]=int(sys.argv[4]); print(json.dumps(d))' \
    "$out" "${name%%-*}" "$name" "$round" >> "$RES"
  echo "round $round $name: done"
}
for round in $(seq 1 "$ROUNDS"); do
  # Each run on a topic of its own, which has no value when the subscribers arrive.
  run direct-burst "bench/direct-b$round" "$N" burst --bursts "$BURSTS"
  run ingest-burst "bench/ingest-b$round" "$N" burst --bursts "$BURSTS"
  run direct-rate "bench/direct-r$round" "$N" rate --rate "$RATE" --duration "$DURATION"
  run ingest-rate "bench/ingest-r$round" "$N" rate --rate "$RATE" --duration "$DURATION"
  run direct-throughput "bench/direct-t$round" "$NT" rate --rate "$TRATE" --duration "$DURATION"
  run ingest-throughput "bench/ingest-t$round" "$NT" rate --rate "$TRATE" --duration "$DURATION"
done
python3 - "$RES" <<'PY' | tee "${RES%.jsonl}.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| case | round | updates/s | deliveries/s | latency p50 / p99 ms | completion p50 ms | server CPU us/delivery | lost |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    lat, comp = r.get('latency') or {}, r.get('completion') or {}
    ups = r['updates'] / r['elapsed_s'] if r.get('elapsed_s') else 0
    print(f"| {r['case']} | {r['round']} | {ups:,.0f} | {r['deliveries_per_s']:,.0f} | {lat.get('p50_ms', 0):.2f} / {lat.get('p99_ms', 0):.2f} | {comp.get('p50_ms', 0):.1f} | {r['server_cpu_us_per_delivery']:.2f} | {r['lost']} |")
def mean(case, f):
    v = [f(r) for r in rows if r['case'] == case]
    return sum(v) / len(v)
print("\n| case | ingest / direct: latency p50 | latency p99 | server CPU per delivery |")
print("|---|---|---|---|")
for c in ('burst', 'rate', 'throughput'):
    p50 = lambda r: (r.get('latency') or {}).get('p50_ms', 0)
    p99 = lambda r: (r.get('latency') or {}).get('p99_ms', 0)
    cpu = lambda r: r['server_cpu_us_per_delivery']
    print(f"| {c} | {mean('ingest-'+c, p50)/mean('direct-'+c, p50):.2f}x | {mean('ingest-'+c, p99)/mean('direct-'+c, p99):.2f}x | {mean('ingest-'+c, cpu)/mean('direct-'+c, cpu):.2f}x |")
PY
