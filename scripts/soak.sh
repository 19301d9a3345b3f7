#!/usr/bin/env bash
# Soak: 15,000 NO_CONFLATE subscribers (10% of them dropping and resuming every minute) and a
# publisher at a steady rate against `yorker serve --cores 1` for DURATION seconds (default
# 3600). The engine's RSS is sampled every 30 s while the clients run; after WARMUP seconds
# (default 600: at 10% churn a minute, the time the churn takes to replace as many connections
# as there are, after which every connection has been through a reconnect with resume) it must
# stay within 5% of its value at the end of the warm-up, and the subscribers must see no gap
# and no duplicate (yorker-sim subscribe exits 1 otherwise). One JSON line (with every RSS
# sample) to bench-results/soak.jsonl (OUT=...). Loopback only; stops what it starts.
#   scripts/soak.sh                    # the full hour
#   DURATION=300 WARMUP=60 scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-3600}
WARMUP=${WARMUP:-600}
RATE=${RATE:-20}
PORT=${PORT:-7740}
OUT=${OUT:-bench-results/soak.jsonl}
. scripts/lib/measure.sh
B=target/release
taskset -c 0 $B/yorker serve --listen 127.0.0.1:$PORT --cores 1 --publisher-key soak \
  --stats-interval 10 2>"$LOG" &
Y=$!
pids+=($Y)
wait_port $PORT
taskset -c 1 $B/yorker-sim subscribe --addr 127.0.0.1:$PORT --clients 15000 --topics 1 --raw \
  --no-conflate --churn 0.001667 --ramp 5000 --duration "$DURATION" --source-base 50 \
  >/tmp/yorker-soak-subscribe.out 2>/tmp/yorker-soak-subscribe.err &
S=$!
pids+=($S)
sleep 10
taskset -c 1 $B/yorker-sim publish --addr 127.0.0.1:$PORT --key soak --raw --topic match/1 \
  --rate "$RATE" --size 64 --duration $((DURATION - 20)) >/dev/null 2>&1 &
pids+=($!)
samples=()
start=$(date +%s)
while kill -0 $S 2>/dev/null; do
  sleep 30
  kill -0 $Y 2>/dev/null || { echo "the engine died" >&2; exit 1; }
  # Only while the clients are connected: the sample after they left is not the steady state.
  kill -0 $S 2>/dev/null || break
  samples+=("[$(( $(date +%s) - start )),$(rss_kb $Y)]")
done
set +e
wait $S
code=$?
set -e
final=$(grep -E '^received' /tmp/yorker-soak-subscribe.out | tail -1)
json=$(python3 - "$WARMUP" "$code" "$final" "${samples[@]}" <<'PY'
import json, sys
warmup, code, final = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
s = [json.loads(x) for x in sys.argv[4:]]
after = [r for t, r in s if t >= warmup]
base = after[0] if after else None
dev = max(abs(r - base) / base for r in after) if after else None
print(json.dumps({"samples_s_kb": s, "rss_kb_after_warmup": base, "max_deviation": dev,
                  "subscribe_exit": code, "subscribe": final,
                  "ok": code == 0 and dev is not None and dev <= 0.05}))
PY
)
mkdir -p "$(dirname "$OUT")"
echo "$json" | tee -a "$OUT"
echo "$json" | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["ok"] else 1)'
