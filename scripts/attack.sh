#!/usr/bin/env bash
# The attack suite against a release engine: each attack runs against a fresh `yorker serve
# --cores 1` (CPU 0) from `yorker-sim attack` (CPU 1) for SECONDS, with a canary subscriber on
# the same core measured before and during. One JSON line per attack goes to
# bench-results/attacks.jsonl (OUT=... to change); the script fails if a canary lost an update,
# or if the relay-HELLO storm moved the engine's RSS by more than 10%.
#
#   scripts/attack.sh                       # every attack, 10 s each (~1.5 min)
#   ATTACKS="relay-hellos" SECONDS_EACH=20 scripts/attack.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ATTACKS=${ATTACKS:-"relay-hellos subscribe-flood drip garbage reconnect-storm"}
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
exit $fail
