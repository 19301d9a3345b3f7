#!/usr/bin/env bash
# Fan-out benchmark: yorker against the no-logic floor and against Mosquitto, NATS and Redis,
# on one machine in one run. Each server runs alone, pinned to core 0; the load generator
# (yorker-sim bench) is pinned to core 1. Then yorker --cores 2 sharing both cores with the
# load generator, reported separately. Loopback only; every process started is stopped.
#
# Usage: scripts/bench-fanout.sh            (full matrix, ~12 minutes)
#        QUICK=1 scripts/bench-fanout.sh    (a smoke run: N=1000 only; results and charts go
#                                            to /tmp/yorker-bench-quick, never over the
#                                            committed ones)
#        PHASES="rss" scripts/bench-fanout.sh   (only some of: burst rate rss)
#        SERVERS="yorker-before yorker" BEFORE_BIN=/path/to/old/yorker NS_LIST=15000 RATE_NS_LIST=15000 \
#          TARGETS_LIST="250000 500000" SIZES_LIST=64 PHASES="burst rate" scripts/bench-fanout.sh
#                                           (some servers only, and another yorker build side by
#                                            side: before/after ratios from one run)
# Output: bench-results/fanout-<stamp>.jsonl, .md (table with ratios) and PNG plots.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/wait-port.sh
STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT=bench-results
[ "${QUICK:-0}" = 1 ] && OUT=${TMPDIR:-/tmp}/yorker-bench-quick
mkdir -p "$OUT"
RES="$OUT/fanout-$STAMP.jsonl"
WORK=$(mktemp -d)
SERVER_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  pkill -f "yorker-sim subscribe --addr 127.0.0.1:79" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

if [ "${QUICK:-0}" = 1 ]; then NS=(1000); SIZES=(64); RATE_NS=(1000); TARGETS=(50000); BURSTS=10; RSS_N=2000
else NS=(1000 5000 15000); SIZES=(64 256); RATE_NS=(5000 15000); TARGETS=(100000 250000 500000); BURSTS=30; RSS_N=15000; fi
[ -n "${NS_LIST:-}" ] && read -r -a NS <<<"$NS_LIST"
[ -n "${SIZES_LIST:-}" ] && read -r -a SIZES <<<"$SIZES_LIST"
[ -n "${RATE_NS_LIST:-}" ] && read -r -a RATE_NS <<<"$RATE_NS_LIST"
[ -n "${TARGETS_LIST:-}" ] && read -r -a TARGETS <<<"$TARGETS_LIST"

need=()
command -v mosquitto >/dev/null || need+=(mosquitto)
command -v nats-server >/dev/null || need+=(nats-server)
command -v redis-server >/dev/null || need+=(redis-server)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  # Debian starts the services it installs; this benchmark starts its own.
  pkill -x mosquitto || true; pkill -x redis-server || true; pkill -x nats-server || true
fi
cargo build --release -q -p yorker -p yorker-sim -p yorker-benches
B=target/release
SIM="$B/yorker-sim"
BASE=40 # source address 127.0.0.<BASE>, a fresh one per run (ports linger in TIME_WAIT)
# Call as a plain command (not in $(...), whose subshell would lose the increment).
next_base() { BASE=$((BASE + 1)); [ $BASE -gt 250 ] && BASE=40; return 0; }

start_server() { # name port -> sets SERVER_PID
  local name=$1 port=$2 pin=${3:-taskset -c 0}
  case $name in
    floor-write|floor-uring|floor-gather)
      $pin $B/yorker-floor --mode "${name#floor-}" --listen 127.0.0.1:$port 2>"$WORK/server.log" & ;;
    yorker) $pin $B/yorker serve --listen 127.0.0.1:$port --cores 1 --publisher-key bench --stats-interval 0 2>"$WORK/server.log" & ;;
    yorker-before) $pin "${BEFORE_BIN:?BEFORE_BIN=path of the other yorker build}" serve --listen 127.0.0.1:$port --cores 1 --publisher-key bench --stats-interval 0 2>"$WORK/server.log" & ;;
    yorker-2core) $B/yorker serve --listen 127.0.0.1:$port --cores 2 --publisher-key bench --stats-interval 0 2>"$WORK/server.log" & ;;
    mosquitto)
      printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_connections -1\nmax_queued_messages 1000000\n' "$port" > "$WORK/mosq.conf"
      $pin mosquitto -c "$WORK/mosq.conf" >"$WORK/server.log" 2>&1 & ;;
    nats) $pin nats-server -a 127.0.0.1 -p "$port" >"$WORK/server.log" 2>&1 & ;;
    redis) $pin redis-server --port "$port" --bind 127.0.0.1 --protected-mode no --save '' --appendonly no --maxclients 19000 >"$WORK/server.log" 2>&1 & ;;
  esac
  SERVER_PID=$!
  wait_port "$port" && return 0
  echo "$name did not start:"; cat "$WORK/server.log"; return 1
}
proto_of() { case $1 in mosquitto) echo mqtt;; nats) echo nats;; redis) echo redis;; *) echo yorker;; esac; }
record() { # server phase json
  python3 -c 'import json,sys; d=json.loads(sys.argv[3]); d["server"]=sys.argv[1]; d["phase"]=sys.argv[2]; print(json.dumps(d))' "$1" "$2" "$3" >> "$RES"
}
bench() { # server port phase args...
  local server=$1 port=$2 phase=$3; shift 3
  local pin="taskset -c 1"; [ "$server" = yorker-2core ] && pin=""
  local out
  next_base
  out=$($pin timeout 120 "$SIM" bench --addr 127.0.0.1:$port --proto "$(proto_of "$server")" --key bench \
        --server-pid "$SERVER_PID" --source-base "$BASE" --json "$@" 2>"$WORK/bench.err") || true
  if [ -n "$out" ]; then record "$server" "$phase" "$out"; else
    record "$server" "$phase" "{\"error\": $(python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read()[-300:]))' "$WORK/bench.err"), \"args\": \"$*\"}"; fi
  echo "  $server $phase $* -> $(tail -1 "$RES" | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print("ok" if d.get("ok") else "LOSS/ERROR", "completion p50", (d.get("completion") or {}).get("p50_ms"), "ms")')"
}
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$SERVER_PID/status"; }
wait_subscribed() { # log count
  for _ in $(seq 1 600); do
    n=$(grep -o 'subscribed [0-9]*' "$1" | tail -1 | cut -d' ' -f2 || true)
    [ "${n:-0}" -ge "$2" ] && return 0; sleep 0.2
  done; return 1
}
rss_phase() { # server port
  local server=$1 port=$2 proto warm=1000
  proto=$(proto_of "$server")
  next_base
  taskset -c 1 "$SIM" subscribe --addr 127.0.0.1:$port --proto "$proto" --raw --clients $warm --duration 60 --source-base "$BASE" 2>"$WORK/s1.log" >/dev/null &
  local p1=$!
  wait_subscribed "$WORK/s1.log" $warm || { kill $p1; return; }
  sleep 1; local r1; r1=$(rss_kb)
  next_base
  taskset -c 1 "$SIM" subscribe --addr 127.0.0.1:$port --proto "$proto" --raw --clients $((RSS_N - warm)) --duration 60 --source-base "$BASE" 2>"$WORK/s2.log" >/dev/null &
  local p2=$!
  wait_subscribed "$WORK/s2.log" $((RSS_N - warm)) || { kill $p1 $p2; return; }
  sleep 1; local r2; r2=$(rss_kb)
  kill $p1 $p2 2>/dev/null; wait $p1 $p2 2>/dev/null || true
  record "$server" rss "{\"connections\": $RSS_N, \"rss_kb_warm\": $r1, \"rss_kb\": $r2, \"rss_bytes_per_conn\": $(( (r2 - r1) * 1024 / (RSS_N - warm) ))}"
  echo "  $server rss -> $(( (r2 - r1) * 1024 / (RSS_N - warm) )) bytes per idle subscribed connection"
}

echo "fan-out benchmark $STAMP: $(nproc) cores, kernel $(uname -r); results in $RES"
PHASES=${PHASES:-burst rate rss}
has() { case " $PHASES " in *" $1 "*) return 0;; *) return 1;; esac; }
PORT=7900
for server in ${SERVERS:-floor-write floor-uring floor-gather yorker mosquitto nats redis yorker-2core}; do
  PORT=$((PORT + 1))
  echo "== $server"
  start_server $server $PORT
  if has burst; then for size in "${SIZES[@]}"; do for n in "${NS[@]}"; do
    bench $server $PORT burst --mode burst --subs "$n" --size "$size" --bursts $BURSTS
  done; done; fi
  if has rate; then for n in "${RATE_NS[@]}"; do for target in "${TARGETS[@]}"; do
    rate=$(( target / n )); [ $rate -lt 1 ] && rate=1
    bench $server $PORT rate --mode rate --subs "$n" --size 64 --rate $rate --duration 4
  done; done; fi
  if has rss && [ "$server" != yorker-2core ]; then
    # Memory is measured on a fresh server: one that served earlier runs reuses freed memory.
    kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true
    PORT=$((PORT + 1)); start_server $server $PORT
    rss_phase $server $PORT
  fi
  kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
done
$B/yorker-plot --input "$RES" --out-dir "$OUT" --font /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf | tee "$OUT/fanout-$STAMP.md"
