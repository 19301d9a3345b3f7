#!/usr/bin/env bash
# Inbound traffic during fan-out, rooms and bets, in one run on this machine.
#
# 1. One core fans out back-to-back bursts to N subscribers (yorker-sim bench --mode burst,
#    server pinned to core 0, load generator to core 1) while a probe connection sends a PING
#    every PROBE_MS ms (and, for yorker, a MESSAGE answered by a backend stub): round trips
#    with the subscribers connected and idle, then during the bursts. The same for Redis
#    (PING) and NATS (PING) with their subscribers on the same topic. The probe runs at a
#    real-time priority (chrt -f 50, when root) so its own wake-up delay on the saturated
#    client core is not counted as the server's.
# 2. yorker-sim rooms: 10,000 clients in 2,000 rooms of 5, each posting 2 messages/s.
# 3. yorker-sim bets: 5,000 clients sending 1 MESSAGE/s to 2 backend stubs while a publisher
#    broadcasts 10 updates/s to all of them.
#
# Usage: scripts/bench-inbound.sh                 (everything, ~4 minutes)
#        SERVERS="yorker redis" PHASES=probe scripts/bench-inbound.sh
#        BEFORE_BIN=/path/to/older/yorker SERVERS="yorker-before yorker" PHASES=probe ...
# Output: bench-results/inbound-<stamp>.jsonl and a table on stdout (.md next to it).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/wait-port.sh
STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT=bench-results
mkdir -p "$OUT"
RES="$OUT/inbound-$STAMP.jsonl"
N=${N:-15000}
BURSTS=${BURSTS:-100}
PROBE_MS=${PROBE_MS:-2}
WORK=$(mktemp -d)
SERVER_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

need=()
command -v nats-server >/dev/null || need+=(nats-server)
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  # Debian starts the services it installs; this benchmark starts its own.
  pkill -x redis-server || true; pkill -x nats-server || true
fi
cargo build --release -q -p yorker -p yorker-sim
B=target/release
SIM="$B/yorker-sim"
RT=0; [ "$(id -u)" -eq 0 ] && command -v chrt >/dev/null && RT=50
head -c 32 /dev/urandom > "$WORK/hs.key"
BASE=120
next_base() { BASE=$((BASE + 1)); [ $BASE -gt 250 ] && BASE=120; return 0; }

start_server() { # name port
  local name=$1 port=$2 pin="taskset -c 0"
  local y=(serve --listen 127.0.0.1:$port --cores 1 --publisher-key bench --backend-key bk
           --anonymous-messages --message-rate 1000 --message-burst 1000 --jwt-key "$WORK/hs.key"
           --max-conns-per-core 19000 --stats-interval 0)
  case $name in
    yorker) $pin $B/yorker "${y[@]}" 2>"$WORK/server.log" & ;;
    yorker-unbounded) $pin $B/yorker "${y[@]}" --sends-per-round 65536 --deliveries-per-round 100000000 2>"$WORK/server.log" & ;;
    yorker-before) $pin "${BEFORE_BIN:?BEFORE_BIN=path of the other yorker build}" serve --listen 127.0.0.1:$port --cores 1 --publisher-key bench --max-conns-per-core 19000 --stats-interval 0 2>"$WORK/server.log" & ;;
    nats) $pin nats-server -a 127.0.0.1 -p "$port" >"$WORK/server.log" 2>&1 & ;;
    redis) $pin redis-server --port "$port" --bind 127.0.0.1 --protected-mode no --save '' --appendonly no --maxclients 19000 >"$WORK/server.log" 2>&1 & ;;
  esac
  SERVER_PID=$!
  wait_port "$port" && return 0
  echo "$name did not start:"; cat "$WORK/server.log"; return 1
}
stop_server() { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""; }
proto_of() { case $1 in nats) echo nats;; redis) echo redis;; *) echo yorker;; esac; }
record() { # server phase json
  python3 -c 'import json,sys; d=json.loads(sys.argv[3]); d["server"]=sys.argv[1]; d["phase"]=sys.argv[2]; print(json.dumps(d))' "$1" "$2" "$3" >> "$RES"
}

echo "inbound benchmark $STAMP: $(nproc) cores, kernel $(uname -r), probe priority $RT; results in $RES"
PHASES=${PHASES:-probe rooms bets}
has() { case " $PHASES " in *" $1 "*) return 0;; *) return 1;; esac; }
PORT=7950
if has probe; then
  for server in ${SERVERS:-yorker yorker-unbounded redis nats}; do
    PORT=$((PORT + 1)); next_base
    echo "== $server: $N subscribers, $BURSTS bursts, PING every $PROBE_MS ms"
    start_server "$server" $PORT
    extra=(); case $server in yorker|yorker-unbounded) extra=(--probe-backend-key bk);; esac
    out=$(taskset -c 1 timeout 300 "$SIM" bench --addr 127.0.0.1:$PORT --proto "$(proto_of "$server")" --key bench \
          --subs "$N" --bursts "$BURSTS" --size 64 --ramp 20000 --probe-ms "$PROBE_MS" --probe-rt-priority $RT \
          "${extra[@]}" --server-pid "$SERVER_PID" --source-base "$BASE" --json 2>"$WORK/bench.err") || true
    if [ -n "$out" ]; then record "$server" probe "$out"; else echo "  failed:"; tail -3 "$WORK/bench.err"; fi
    stop_server
  done
fi
if has rooms; then
  PORT=$((PORT + 1)); next_base
  echo "== rooms: 10000 clients, 2000 rooms of 5, 2 posts/s each"
  start_server yorker $PORT
  out=$(taskset -c 1 timeout 300 "$SIM" rooms --addr 127.0.0.1:$PORT --clients 10000 --room-size 5 --rate 2 \
        --duration 20 --jwt-secret "$WORK/hs.key" --json 2>"$WORK/bench.err") || true
  if [ -n "$out" ]; then record yorker rooms "$out"; else echo "  failed:"; tail -3 "$WORK/bench.err"; fi
  stop_server
fi
if has bets; then
  PORT=$((PORT + 1)); next_base
  echo "== bets: 5000 clients, 1 MESSAGE/s each, 2 backend stubs, 10 broadcasts/s"
  start_server yorker $PORT
  out=$(taskset -c 1 timeout 300 "$SIM" bets --addr 127.0.0.1:$PORT --clients 5000 --rate 1 --duration 20 \
        --backends 2 --backend-key bk --key bench --broadcast-rate 10 --jwt-secret "$WORK/hs.key" --json 2>"$WORK/bench.err") || true
  if [ -n "$out" ]; then record yorker bets "$out"; else echo "  failed:"; tail -3 "$WORK/bench.err"; fi
  stop_server
fi
python3 - "$RES" <<'EOF' | tee "${RES%.jsonl}.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def p(d, k, q):
    v = (d or {}).get(k) or {}
    return "-" if not v else f"{v[q]:.2f}"
probe = [r for r in rows if r["phase"] == "probe"]
if probe:
    print("| server | PING idle p50 / p99 ms | PING during bursts p50 / p99 ms | MESSAGE->reply during p50 / p99 ms | MESSAGE->ACK during p99 ms | burst completion p50 ms | server CPU us/delivery | lost |")
    print("|---|---|---|---|---|---|---|---|")
    for r in probe:
        pr = r.get("probe") or {}
        cpu = r.get("server_cpu_us_per_delivery")
        print(f"| {r['server']} | {p(pr,'ping_idle','p50_ms')} / {p(pr,'ping_idle','p99_ms')} | {p(pr,'ping_busy','p50_ms')} / {p(pr,'ping_busy','p99_ms')} | "
              f"{p(pr,'message_busy','p50_ms')} / {p(pr,'message_busy','p99_ms')} | {p(pr,'ack_busy','p99_ms')} | "
              f"{p(r,'completion','p50_ms')} | {'-' if cpu is None else f'{cpu:.2f}'} | {r.get('lost')} |")
for r in rows:
    if r["phase"] == "rooms":
        print(f"\nrooms: {r['clients']} clients in {r['rooms']} rooms of {r['room_size']}, {r['rate_per_client']}/s each, {r['duration_s']} s: "
              f"posts {r['posts']} acknowledged {r['acked']}, deliveries {r['deliveries']} of {r['expected']}, lost {r['lost']}, "
              f"post->member p50 {p(r,'latency','p50_ms')} p99 {p(r,'latency','p99_ms')} ms, post->ACK p99 {p(r,'ack','p99_ms')} ms")
    if r["phase"] == "bets":
        print(f"\nbets: {r['clients']} clients, {r['rate_per_client']}/s each, {r['backends']} backends, {r['duration_s']} s: "
              f"messages {r['messages']} acknowledged {r['acked']} responses {r['responses']} unanswered {r['unanswered']}, "
              f"broadcasts {r['broadcasts_sent']} x {r['clients']} -> {r['broadcasts_received']} received, "
              f"MESSAGE->reply p50 {p(r,'message_to_reply','p50_ms')} p99 {p(r,'message_to_reply','p99_ms')} ms")
EOF
