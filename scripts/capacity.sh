#!/usr/bin/env bash
# Capacity run: `yorker serve --cores 2` holding N (default 35,000) subscribed connections in one
# process on a host whose fd limit is 20,000, the RSS growth per idle subscribed connection,
# and a zero-loss `yorker-sim bench` at that size. Loopback only; every process it starts is
# stopped on exit. Usage: scripts/capacity.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-35000}
WARM=5000
PORT=${PORT:-7710}
OUT=${OUT_DIR:-bench-results}
mkdir -p "$OUT"
. scripts/lib/measure.sh
Y=target/release/yorker
S=target/release/yorker-sim

echo "host: $(nproc) cores, ulimit -Hn $(ulimit -Hn), kernel $(uname -r)"
"$Y" serve --listen 127.0.0.1:$PORT --cores 2 --publisher-key cap --stats-interval 1 2>"$LOG" &
ENGINE=$!; pids+=($ENGINE)
for _ in $(seq 1 100); do grep -q "listening on" "$LOG" && break; sleep 0.05; done
grep "listening on" "$LOG"

# Warm-up connections touch the engine's fixed costs (receive buffer rings, tables), so the
# growth measured next is per connection only.
"$S" subscribe --addr 127.0.0.1:$PORT --clients $WARM --duration 120 --ramp 5000 --source-base 1 >/dev/null 2>&1 &
pids+=($!)
wait_subs $WARM
sleep 1
RSS1=$(rss_kb $ENGINE)
"$S" subscribe --addr 127.0.0.1:$PORT --clients $((N - WARM)) --threads 2 --duration 120 --ramp 5000 --source-base 3 >/dev/null 2>&1 &
pids+=($!)
wait_subs "$N"
sleep 1
RSS2=$(rss_kb $ENGINE)
FDS=$(ls /proc/$ENGINE/fd | wc -l)
LINE=$(grep 'conns=' "$LOG" | tail -1)
PER=$(( (RSS2 - RSS1) * 1024 / (N - WARM) ))
echo "engine: $LINE"
echo "engine RSS ${RSS1} kB at $WARM connections, ${RSS2} kB at $N: $PER bytes per idle subscribed connection; $FDS fds open"
printf '{"test":"capacity","connections":%d,"engine_rss_kb_warm":%d,"engine_rss_kb":%d,"rss_bytes_per_conn":%d,"engine_fds":%d}\n' \
  "$N" "$RSS1" "$RSS2" "$PER" "$FDS" | tee -a "$OUT/capacity.jsonl"

# Drop the idle fleets, then a zero-loss benchmark at the same size.
kill "${pids[1]}" "${pids[2]}" 2>/dev/null || true
wait "${pids[1]}" "${pids[2]}" 2>/dev/null || true
for _ in $(seq 1 100); do
  c=$(grep -o 'conns=[0-9]*' "$LOG" | tail -1 | cut -d= -f2 || true); [ "${c:-1}" -eq 0 ] && break; sleep 0.2
done
# Fresh source addresses: the idle fleets' ports sit in TIME_WAIT for a minute.
"$S" bench --addr 127.0.0.1:$PORT --subs "$N" --threads 2 --bursts 20 --key cap --source-base 6 --json | tee -a "$OUT/capacity.jsonl"
