#!/usr/bin/env bash
# Transports side by side: one `yorker serve --cores 1` (CPU 0, with a self-signed P-256
# certificate) fans out bursts to N subscribers (CPU 1) over raw TCP, WebSocket, TLS
# (user-space rustls) and wss, alternating in one run: server CPU per delivery and completion as
# ratios to raw TCP.
# Usage: scripts/bench-transports.sh            (N=15000, 30 bursts, two rounds)
#        N=5000 ROUNDS=1 scripts/bench-transports.sh
# Output: bench-results/transports-<stamp>.jsonl and a table on stdout (.md next to it).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/wait-port.sh
N=${N:-15000}
ROUNDS=${ROUNDS:-2}
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
trap 'kill $Y 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$CERT"' EXIT
wait_port "$PORT"
BASE=150
for round in $(seq 1 "$ROUNDS"); do
  for proto in yorker ws tls wss; do
    BASE=$((BASE + 1))
    out=$(taskset -c 1 timeout 300 $B/yorker-sim bench --addr 127.0.0.1:$PORT --proto $proto --tls-ca "$CERT/cert.pem" --key bench \
          --subs "$N" --bursts 30 --size 64 --ramp 20000 --server-pid $Y --source-base $BASE --json)
    python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["transport"]=sys.argv[2]; d["round"]=int(sys.argv[3]); print(json.dumps(d))' "$out" "$proto" "$round" >> "$RES"
    echo "round $round $proto: done"
  done
done
python3 - "$RES" <<'PY' | tee "${RES%.jsonl}.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| transport | round | completion p50 ms | server CPU us/delivery | lost |")
print("|---|---|---|---|---|")
for r in rows:
    name = {'yorker': 'raw TCP', 'ws': 'WebSocket', 'tls': 'TLS (rustls)', 'wss': 'wss (WebSocket over TLS)'}[r['transport']]
    print(f"| {name} | {r['round']} | {r['completion']['p50_ms']:.1f} | {r['server_cpu_us_per_delivery']:.2f} | {r['lost']} |")
def mean(t, k):
    v = [r[k] if k != 'completion' else r['completion']['p50_ms'] for r in rows if r['transport'] == t]
    return sum(v) / len(v)
for t, name in [('ws', 'WebSocket'), ('tls', 'TLS'), ('wss', 'wss')]:
    print(f"\n{name} / raw TCP (means): server CPU per delivery {mean(t,'server_cpu_us_per_delivery')/mean('yorker','server_cpu_us_per_delivery'):.2f}x, completion p50 {mean(t,'completion')/mean('yorker','completion'):.2f}x")
PY
