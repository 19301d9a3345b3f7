#!/usr/bin/env bash
# The attack suite against a release engine: each attack runs against a fresh `yorker serve
# --cores 1` (CPU 0) from `yorker-sim attack` (CPU 1) for SECONDS, with a canary subscriber on
# the same core measured before and during. One JSON line per attack goes to
# bench-results/attacks.jsonl (OUT=... to change); the script fails if a canary lost an update,
# or if the relay-HELLO storm moved the engine's RSS by more than 10%.
#
#   scripts/attack.sh                       # every attack, 10 s each, and the process cases (~4 min)
#   ATTACKS="relay-hellos" CASES="" SECONDS_EACH=20 scripts/attack.sh
#
# The process cases (CASES, default "sigterm-10k kill9-restart") hold 10,000 `yorker-sim
# subscribe` clients on the engine, then SIGTERM it (every client must get GOAWAY, exit 0), or
# kill -9 it and start it again at once (every client must be back, subscribed, on the new one).
set -euo pipefail
cd "$(dirname "$0")/.."
ATTACKS=${ATTACKS-"relay-hellos subscribe-flood drip garbage reconnect-storm stalled-readers"}
CASES=${CASES-"sigterm-10k kill9-restart"}
SECONDS_EACH=${SECONDS_EACH:-10}
OUT=${OUT:-bench-results/attacks.jsonl}
PORT=${PORT:-7450}
cargo build --release -q -p yorker -p yorker-sim
BIN=target/release
mkdir -p "$(dirname "$OUT")"
fail=0
for attack in $ATTACKS; do
  topics=0
  [ "$attack" = relay-hellos ] && topics=5000
  taskset -c 0 $BIN/yorker serve --listen 127.0.0.1:$PORT --cores 1 --publisher-key attack \
    --stats-interval 0 --frame-timeout-ms 2000 2>/tmp/yorker-attack-server.log &
  pid=$!
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break
    sleep 0.1
  done
  set +e
  line=$(taskset -c 1 $BIN/yorker-sim attack "$attack" --addr 127.0.0.1:$PORT --key attack \
    --seconds "$SECONDS_EACH" --topics $topics --server-pid $pid --json)
  rc=$?
  set -e
  kill -TERM $pid; wait $pid || true
  echo "$line" | tee -a "$OUT"
  if [ $rc -ne 0 ]; then
    echo "attack $attack: the canary lost updates or was cut off" >&2
    fail=1
  fi
  if [ "$attack" = relay-hellos ]; then
    python3 - "$line" <<'PY' || fail=1
import json, sys
r = json.loads(sys.argv[1])
before, after = r["rss_kb_before"], r["rss_kb_after"]
growth = (after - before) / before
print(f"relay-hellos: {r['ops']} HELLOs ({r['ops_per_s']:.0f}/s), {r['refused']} refused; "
      f"RSS {before} -> {after} kB ({growth:+.1%}), peak {r['rss_kb_peak']} kB")
sys.exit(0 if abs(growth) <= 0.10 and r["refused"] == r["ops"] else 1)
PY
  fi
  PORT=$((PORT + 1))
done

# Waits (bounded) until the engine's log reports at least $2 subscriptions.
wait_subs() { # log count
  for _ in $(seq 1 600); do
    subs=$(grep -o 'subs=[0-9]*' "$1" | tail -1 | cut -d= -f2 || true)
    [ "${subs:-0}" -ge "$2" ] && return 0
    sleep 0.2
  done
  return 1
}
serve() { # port log -> SERVER_PID (call as a plain command: a child of this shell)
  taskset -c 0 $BIN/yorker serve --listen 127.0.0.1:$1 --cores 1 --publisher-key attack \
    --stats-interval 1 --goaway-base-ms 500 --goaway-jitter-ms 2000 >/dev/null 2>"$2" &
  SERVER_PID=$!
}
for case in $CASES; do
  LOG=$(mktemp)
  serve $PORT "$LOG"
  pid=$SERVER_PID
  taskset -c 1 $BIN/yorker-sim subscribe --addr 127.0.0.1:$PORT --clients 10000 --topics 4 \
    --ramp 5000 --duration 40 --source-base 30 >/tmp/yorker-attack-fleet.out 2>&1 &
  fleet=$!
  if ! wait_subs "$LOG" 10000; then echo "$case: 10,000 clients never subscribed" >&2; fail=1; fi
  case $case in
    sigterm-10k)
      t0=$(date +%s%N)
      kill -TERM $pid
      if wait $pid; then code=0; else code=$?; fi
      ms=$(( ($(date +%s%N) - t0) / 1000000 ))
      kill -INT $fleet 2>/dev/null || true
      wait $fleet || true
      goaways=$(grep -o 'goaways [0-9]*' /tmp/yorker-attack-fleet.out | tail -1 | cut -d' ' -f2)
      line="{\"case\":\"sigterm-10k\",\"exit_code\":$code,\"shutdown_ms\":$ms,\"goaways\":${goaways:-0}}"
      [ "$code" = 0 ] && [ "${goaways:-0}" -ge 10000 ] || fail=1
      ;;
    kill9-restart)
      kill -9 $pid; wait $pid 2>/dev/null || true
      t0=$(date +%s%N)
      LOG2=$(mktemp)
      serve $PORT "$LOG2"
      pid=$SERVER_PID
      if wait_subs "$LOG2" 10000; then back=1; else back=0; fail=1; fi
      ms=$(( ($(date +%s%N) - t0) / 1000000 ))
      kill -INT $fleet 2>/dev/null || true
      wait $fleet || true
      kill -TERM $pid; wait $pid || true
      line="{\"case\":\"kill9-restart\",\"all_back\":$back,\"resubscribed_ms\":$ms,\"fleet\":\"$(tail -1 /tmp/yorker-attack-fleet.out | tr -d '"')\"}"
      rm -f "$LOG2"
      ;;
  esac
  echo "$line" | tee -a "$OUT"
  rm -f "$LOG"
  PORT=$((PORT + 1))
done
exit $fail
