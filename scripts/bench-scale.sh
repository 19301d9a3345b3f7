#!/usr/bin/env bash
# Scaling: fan-out with 1, 2, 4, 8 engine cores (CORES_LIST), subscribers on the other CPUs
# (the load generator receives on THREADS threads), burst mode: deliveries/s, server CPU per
# delivery, completion p50/p99, connect rate, RSS per connection. On this 2-core development
# machine only CORES_LIST="1 2" fits (with 2 engine cores the load generator shares them:
# labelled). On a 16-core host: CORES_LIST="1 2 4 8" THREADS=8 N=200000, and the 1M run:
# CORES_LIST=16 N=1000000 THREADS=16 (the sysctls of deploy/99-yorker.conf; each core gets
# --max-conns-per-core N/cores + 10%, and runs as many rings as RLIMIT_NOFILE makes that need).
# Output: bench-results/scale-<stamp>.jsonl and a table (.md next to it).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/wait-port.sh
N=${N:-15000}
THREADS=${THREADS:-1}
BURSTS=${BURSTS:-30}
CORES_LIST=${CORES_LIST:-"1 2"}
STAMP=$(date -u +%Y%m%d-%H%M%S)
mkdir -p bench-results
RES="bench-results/scale-$STAMP.jsonl"
cargo build --release -q -p yorker -p yorker-sim
B=target/release
CPUS=$(nproc)
Y=""
trap '[ -n "$Y" ] && kill $Y 2>/dev/null; wait 2>/dev/null || true' EXIT
PORT=7980
BASE=160
for cores in $CORES_LIST; do
  PORT=$((PORT + 1)); BASE=$((BASE + 4))
  server_cpus="0-$((cores - 1))"
  if [ "$cores" -lt "$CPUS" ]; then client_cpus="$cores-$((CPUS - 1))"; shared=false
  else client_cpus="0-$((CPUS - 1))"; shared=true; fi
  per_core=$(( N / cores + N / cores / 10 + 100 ))
  taskset -c "$server_cpus" $B/yorker serve --listen 127.0.0.1:$PORT --cores "$cores" --publisher-key bench \
    --max-conns-per-core "$per_core" --stats-interval 0 2>/dev/null &
  Y=$!
  wait_port "$PORT"
  rss0=$(awk '/^VmRSS/ {print $2}' /proc/$Y/status)
  t0=$(date +%s.%N)
  out=$(taskset -c "$client_cpus" timeout 900 $B/yorker-sim bench --addr 127.0.0.1:$PORT --key bench --subs "$N" \
        --bursts "$BURSTS" --size 64 --ramp 0 --threads "$THREADS" --server-pid $Y --source-base $BASE --json)
  rss1=$(awk '/^VmRSS/ {print $2}' /proc/$Y/status)
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(cores=int(sys.argv[2]), shared=sys.argv[3]=="true", rss_kb_before=int(sys.argv[4]), rss_kb_after=int(sys.argv[5])); print(json.dumps(d))' \
    "$out" "$cores" "$shared" "$rss0" "$rss1" >> "$RES"
  kill $Y; wait $Y 2>/dev/null || true; Y=""
  echo "cores $cores: done"
done
python3 - "$RES" <<'PY' | tee "${RES%.jsonl}.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| engine cores | subscribers | deliveries/s | server CPU us/delivery | completion p50 / p99 ms | connect s | RSS per connection | lost | note |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    per = (r["rss_kb_after"] - r["rss_kb_before"]) * 1024 / max(1, r["subs"])
    print(f"| {r['cores']} | {r['subs']} | {r['deliveries_per_s']:.0f} | {r['server_cpu_us_per_delivery']:.2f} | "
          f"{r['completion']['p50_ms']:.1f} / {r['completion']['p99_ms']:.1f} | {r['connect_s']:.1f} | {per:.0f} B | {r['lost']} | "
          f"{'load generator shares the engine cores' if r['shared'] else ''} |")
PY
