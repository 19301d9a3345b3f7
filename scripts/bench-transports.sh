#!/usr/bin/env bash
# Transports side by side: one `yorker serve --cores 1` (CPU 0, with a self-signed P-256
# certificate) fans out to N subscribers (CPU 1) over raw TCP, WebSocket, TLS (user-space
# rustls) and wss; beside it the peer nats-server (Debian's 2.9, also pinned to CPU 0) over
# TCP, WebSocket, TLS and wss. Each transport in burst mode (BURSTS updates, one at a time) and
# in rate mode (RATE updates/s for DURATION seconds), alternating in one run: server CPU per delivery and
# completion as ratios to the same server's raw TCP.
# Usage: scripts/bench-transports.sh            (N=15000, two rounds)
#        N=2000 ROUNDS=1 BURSTS=5 DURATION=3 scripts/bench-transports.sh
#        SERVERS=yorker scripts/bench-transports.sh      (no peer)
# Output: bench-results/transports-<stamp>.jsonl and a table on stdout (.md next to it).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/wait-port.sh
N=${N:-15000}
ROUNDS=${ROUNDS:-2}
BURSTS=${BURSTS:-30}
RATE=${RATE:-5}
DURATION=${DURATION:-10}
SERVERS=${SERVERS:-yorker nats}
if [[ $SERVERS == *nats* ]] && ! command -v nats-server >/dev/null; then
  echo "nats-server is not installed (apt-get install nats-server, or SERVERS=yorker)" >&2
  exit 1
fi
STAMP=$(date -u +%Y%m%d-%H%M%S)
mkdir -p bench-results
RES="bench-results/transports-$STAMP.jsonl"
cargo build --release -q -p yorker -p yorker-sim
B=target/release
PORT=7960
CERT=$(mktemp -d)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost" -addext "basicConstraints=critical,CA:FALSE" \
  -keyout "$CERT/key.pem" -out "$CERT/cert.pem" 2>/dev/null
taskset -c 0 $B/yorker serve --listen 127.0.0.1:$PORT --cores 1 --publisher-key bench \
  --tls-cert "$CERT/cert.pem" --tls-key "$CERT/key.pem" \
  --max-conns-per-core 19000 --stats-interval 0 2>/dev/null &
Y=$!
pids=($Y)
trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$CERT"' EXIT
wait_port "$PORT"
if [[ $SERVERS == *nats* ]]; then
  # Plain: TCP 7970 and WebSocket 7971. TLS: TCP 7972 (TLS; the publisher in clear through
  # allow_non_tls) and WebSocket over TLS 7973.
  cat >"$CERT/plain.conf" <<EOF
listen: 127.0.0.1:7970
max_payload: 1048576
websocket { listen: "127.0.0.1:7971", no_tls: true }
EOF
  cat >"$CERT/tls.conf" <<EOF
listen: 127.0.0.1:7972
tls { cert_file: "$CERT/cert.pem", key_file: "$CERT/key.pem" }
allow_non_tls: true
websocket { listen: "127.0.0.1:7973", tls { cert_file: "$CERT/cert.pem", key_file: "$CERT/key.pem" } }
EOF
  taskset -c 0 nats-server -c "$CERT/plain.conf" >"$CERT/nats-plain.log" 2>&1 &
  NP=$!
  taskset -c 0 nats-server -c "$CERT/tls.conf" >"$CERT/nats-tls.log" 2>&1 &
  NT=$!
  pids+=($NP $NT)
  for p in 7970 7971 7972 7973; do wait_port $p; done
fi
# server transport -> "subscriber port, publisher port, server pid"
target() {
  case $1/$2 in
    yorker/*) echo "$PORT $PORT $Y" ;;
    nats/tcp) echo "7970 7970 $NP" ;;
    nats/ws) echo "7971 7970 $NP" ;;
    nats/tls) echo "7972 7972 $NT" ;;
    nats/wss) echo "7973 7972 $NT" ;;
  esac
}
proto_of() {
  case $1/$2 in
    yorker/tcp) echo yorker ;;
    yorker/*) echo "$2" ;;
    nats/tcp) echo nats ;;
    nats/*) echo "nats-$2" ;;
  esac
}
BASE=150
for round in $(seq 1 "$ROUNDS"); do
  for server in $SERVERS; do
    for transport in tcp ws tls wss; do
      for mode in burst rate; do
        BASE=$((BASE + 1))
        read -r sub pub pid <<<"$(target "$server" "$transport")"
        out=$(taskset -c 1 timeout 300 $B/yorker-sim bench --addr 127.0.0.1:$sub --publish-addr 127.0.0.1:$pub \
              --proto "$(proto_of "$server" "$transport")" --tls-ca "$CERT/cert.pem" --key bench \
              --subs "$N" --mode $mode --bursts "$BURSTS" --rate "$RATE" --duration "$DURATION" --size 64 \
              --ramp 20000 --server-pid "$pid" --source-base $BASE --json)
        python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["server"]=sys.argv[2]; d["transport"]=sys.argv[3]; d["mode"]=sys.argv[4]; d["round"]=int(sys.argv[5]); print(json.dumps(d))' \
          "$out" "$server" "$transport" "$mode" "$round" >> "$RES"
        echo "round $round $server $transport $mode: done"
      done
    done
  done
done
python3 - "$RES" <<'PY' | tee "${RES%.jsonl}.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
names = {'tcp': 'raw TCP', 'ws': 'WebSocket', 'tls': 'TLS', 'wss': 'wss (WebSocket over TLS)'}
print("| server | transport | mode | round | completion p50 / p99 ms | server CPU us/delivery | lost |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    c = r['completion']
    print(f"| {r['server']} | {names[r['transport']]} | {r['mode']} | {r['round']} | {c['p50_ms']:.1f} / {c['p99_ms']:.1f} | {r['server_cpu_us_per_delivery']:.2f} | {r['lost']} |")
def mean(s, t, m, k):
    v = [r['server_cpu_us_per_delivery'] if k == 'cpu' else r['completion']['p50_ms']
         for r in rows if (r['server'], r['transport'], r['mode']) == (s, t, m)]
    return sum(v) / len(v) if v else float('nan')
print("\n| server | mode | transport | server CPU per delivery / its raw TCP | completion p50 / its raw TCP |")
print("|---|---|---|---|---|")
for s in dict.fromkeys(r['server'] for r in rows):
    for m in ('burst', 'rate'):
        for t in ('ws', 'tls', 'wss'):
            print(f"| {s} | {m} | {names[t]} | {mean(s,t,m,'cpu')/mean(s,'tcp',m,'cpu'):.2f}x | {mean(s,t,m,'p50')/mean(s,'tcp',m,'p50'):.2f}x |")
PY
