#!/usr/bin/env bash
# RSS per idle subscribed connection: `yorker serve --cores 1` (CPU 0), then 5,000 and then
# 10,000 more `yorker-sim subscribe` clients (CPU 1; one topic, keep-alive PINGs every third of
# the heartbeat), each client subscribed; the engine's RSS at start, at 5,000 and at 15,000
# connections. Reports the growth per connection from 5k to 15k (the fixed costs, such as the
# per-slot table and the receive buffers, are excluded) and from process start. One JSON line
# to bench-results/rss.jsonl (OUT=... to change). Loopback only; stops what it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-7730}
OUT=${OUT:-bench-results/rss.jsonl}
. scripts/lib/measure.sh
taskset -c 0 target/release/yorker serve --listen 127.0.0.1:$PORT --cores 1 --publisher-key rss \
  --stats-interval 1 2>"$LOG" &
pids+=($!)
Y=$!
wait_port $PORT
sleep 1
r0=$(rss_kb $Y)
# Adds $1 idle subscribers (source addresses from 127.0.0.$2), waits until the engine counts $3
# subscriptions in all, then lets its RSS settle for 2 s.
add_subscribers() {
  taskset -c 1 target/release/yorker-sim subscribe --addr 127.0.0.1:$PORT --clients "$1" --topics 1 \
    --ramp 5000 --duration 120 --source-base "$2" >/dev/null 2>&1 &
  pids+=($!)
  wait_subs "$3"
  sleep 2
}
add_subscribers 5000 10 5000
r1=$(rss_kb $Y)
add_subscribers 10000 20 15000
r2=$(rss_kb $Y)
line=$(printf '{"date":"%s","connections":15000,"rss_kb_start":%d,"rss_kb_5k":%d,"rss_kb_15k":%d,"bytes_per_conn_5k_to_15k":%d,"bytes_per_conn_from_start":%d}' \
  "$(date -u +%F)" "$r0" "$r1" "$r2" $(( (r2 - r1) * 1024 / 10000 )) $(( (r2 - r0) * 1024 / 15000 )))
mkdir -p "$(dirname "$OUT")"
echo "$line" | tee -a "$OUT"
