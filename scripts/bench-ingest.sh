#!/usr/bin/env bash
# Ingest against direct PUBLISH, same run, from each log a studio may run. CPU 0 runs the logs
# (Debian's redis-server; Debian's nats-server with JetStream, file storage) and one engine per
# log, alike but for the ingest:
#   yorker serve --cores 1 --publisher-key bench --ingest redis-stream://127.0.0.1:$RPORT/<keys>
#   yorker serve --cores 1 --publisher-key bench --ingest nats-jetstream://127.0.0.1:$NPORT/<streams>
# (the idle one costs nothing). `yorker-sim bench` (CPU 1) publishes either straight to the first
# engine (topic bench/direct-*), or by XADD to the Redis stream its engine ingests
# (bench/redis-*, --publish-stream), or by NATS PUB into the JetStream stream its engine ingests
# (bench/jetstream-*, --publish-jetstream), in turn, ROUNDS rounds, each run on a topic of its own:
#   fan-out: N NO_CONFLATE subscribers, BURSTS bursts, then RATE updates/s for DURATION s;
#   throughput: NT subscribers, TRATE updates/s for DURATION s (what the ingest thread sustains).
# Reports updates/s, publish-to-subscriber latency p50/p99 and completion; the ratio of each
# ingest to direct. Usage: scripts/bench-ingest.sh  (N=5000 ROUNDS=2 BURSTS=30 RATE=20 NT=10
#                                   TRATE=10000 DURATION=10 SOURCES="redis jetstream")
# Output: bench-results/ingest-<stamp>.jsonl and a table on stdout (.md next to it).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/wait-port.sh
N=${N:-5000}
ROUNDS=${ROUNDS:-2}
BURSTS=${BURSTS:-30}
RATE=${RATE:-20}
NT=${NT:-10}
TRATE=${TRATE:-10000}
DURATION=${DURATION:-10}
SOURCES=${SOURCES:-redis jetstream}
for src in $SOURCES; do
  case $src in
    redis) command -v redis-server >/dev/null || { echo "redis-server is not installed (apt-get install redis-server)" >&2; exit 1; } ;;
    jetstream) command -v nats-server >/dev/null || { echo "nats-server is not installed (apt-get install nats-server)" >&2; exit 1; } ;;
    *) echo "SOURCES: redis and/or jetstream, not $src" >&2; exit 1 ;;
  esac
done
command -v curl >/dev/null || { echo "curl is not installed" >&2; exit 1; }
STAMP=$(date -u +%Y%m%d-%H%M%S)
mkdir -p bench-results
RES="bench-results/ingest-$STAMP.jsonl"
cargo build --release -q -p yorker -p yorker-sim
B=target/release
RPORT=7991
NPORT=7993
WORK=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
# Every run's topic, per round and case: <source>-b<round>, -r<round>, -t<round>.
names() { for r in $(seq 1 "$ROUNDS"); do printf '%s-b%s %s-r%s %s-t%s ' "$1" "$r" "$1" "$r" "$1" "$r"; done; }
# engine NAME ADMIN_PORT PORT [serve flags...]: starts an engine on CPU 0, waits until it is ready
# (its ingest synced); its pid in $Y.
engine() {
  local name=$1 admin=$2 port=$3; shift 3
  taskset -c 0 $B/yorker serve --listen 127.0.0.1:$port --admin-listen 127.0.0.1:$admin --cores 1 \
    --publisher-key bench --stats-interval 0 "$@" 2>"$WORK/engine-$name.log" &
  Y=$!
  pids+=($Y)
  wait_port "$port"
  for _ in $(seq 200); do
    curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null && return 0
    sleep 0.05
  done
  echo "engine $name is not ready: $(tail -3 "$WORK/engine-$name.log")" >&2
  exit 1
}
declare -A PID
if [[ " $SOURCES " == *" redis "* ]]; then
  taskset -c 0 redis-server --port $RPORT --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" >/dev/null 2>&1 &
  pids+=($!)
  wait_port $RPORT
  keys=$(for n in $(names redis); do printf 'bench/%s,' "$n"; done)
  engine redis 7980 7990 --ingest "redis-stream://127.0.0.1:$RPORT/${keys%,}"
  PID[redis]=$Y
  PID[direct]=$Y
fi
if [[ " $SOURCES " == *" jetstream "* ]]; then
  mkdir -p "$WORK/js"
  taskset -c 0 nats-server -js -a 127.0.0.1 -p $NPORT -sd "$WORK/js" >"$WORK/nats.log" 2>&1 &
  pids+=($!)
  wait_port $NPORT
  # One stream per topic: stream bench_<name> collects subject bench.<name> (file storage, as
  # a studio's would be).
  python3 - $NPORT $(names jetstream) <<'PY'
import json, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
f = s.makefile("rb")
assert f.readline().startswith(b"INFO"), "no NATS INFO"
s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB _INBOX.bench 1\r\n')
for name in sys.argv[2:]:
    body = json.dumps({"name": "bench_" + name, "subjects": ["bench." + name], "storage": "file"}).encode()
    s.sendall(b"PUB $JS.API.STREAM.CREATE.bench_%s _INBOX.bench %d\r\n%s\r\nPING\r\n" % (name.encode(), len(body), body))
    while True:
        line = f.readline()
        if line.startswith(b"MSG "):
            reply = f.read(int(line.split()[-1]) + 2)
            if b'"error"' in reply:
                sys.exit("stream %s: %s" % (name, reply.decode()))
            break
        if not line:
            sys.exit("nats-server closed the connection")
PY
  streams=$(for n in $(names jetstream); do printf 'bench_%s=bench/%s,' "$n" "$n"; done)
  engine jetstream 7981 7992 --ingest "nats-jetstream://127.0.0.1:$NPORT/${streams%,}"
  PID[jetstream]=$Y
  [[ -v PID[direct] ]] || PID[direct]=$Y
fi
BASE=170
run() { # source case topic subs mode extra...
  local src=$1 case=$2 topic=$3 subs=$4 mode=$5; shift 5
  BASE=$((BASE + 1))
  local via=() port=7990
  [[ $src == redis ]] && via=(--publish-stream 127.0.0.1:$RPORT)
  [[ $src == jetstream ]] && via=(--publish-jetstream 127.0.0.1:$NPORT)
  [[ $src == jetstream || ( $src == direct && ! -v PID[redis] ) ]] && port=7992
  out=$(taskset -c 1 timeout 300 $B/yorker-sim bench --addr 127.0.0.1:$port --key bench --topic "$topic" \
        "${via[@]}" --subs "$subs" --mode "$mode" --size 64 --ramp 20000 --server-pid "${PID[$src]}" \
        --source-base $BASE --json "$@") || { echo "run $src-$case (round $round) failed: $out" >&2; exit 1; }
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["path"]=sys.argv[2]; d["case"]=sys.argv[3]; d["round"]=int(sys.argv[4]); print(json.dumps(d))' \
    "$out" "$src" "$src-$case" "$round" >> "$RES"
  echo "round $round $src-$case: done"
}
for round in $(seq 1 "$ROUNDS"); do
  for src in direct $SOURCES; do
    run "$src" burst "bench/$src-b$round" "$N" burst --bursts "$BURSTS"
  done
  for src in direct $SOURCES; do
    run "$src" rate "bench/$src-r$round" "$N" rate --rate "$RATE" --duration "$DURATION"
  done
  for src in direct $SOURCES; do
    run "$src" throughput "bench/$src-t$round" "$NT" rate --rate "$TRATE" --duration "$DURATION"
  done
done
python3 - "$RES" <<'PY' | tee "${RES%.jsonl}.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| case | round | updates/s | deliveries/s | latency p50 / p99 ms | completion p50 ms | server CPU us/delivery | lost |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    lat, comp = r.get('latency') or {}, r.get('completion') or {}
    ups = r['updates'] / r['elapsed_s'] if r.get('elapsed_s') else 0
    print(f"| {r['case']} | {r['round']} | {ups:,.0f} | {r['deliveries_per_s']:,.0f} | {lat.get('p50_ms', 0):.2f} / {lat.get('p99_ms', 0):.2f} | {comp.get('p50_ms', 0):.1f} | {r['server_cpu_us_per_delivery']:.2f} | {r['lost']} |")
def mean(case, f):
    v = [f(r) for r in rows if r['case'] == case]
    return sum(v) / len(v) if v else 0
def ratio(a, b):
    return f"{a / b:.2f}x" if b else "n/a"
print("\n| case | source | against direct: latency p50 | latency p99 | server CPU per delivery |")
print("|---|---|---|---|---|")
p50 = lambda r: (r.get('latency') or {}).get('p50_ms', 0)
p99 = lambda r: (r.get('latency') or {}).get('p99_ms', 0)
cpu = lambda r: r['server_cpu_us_per_delivery']
for c in ('burst', 'rate', 'throughput'):
    for src in sorted({r['path'] for r in rows} - {'direct'}):
        print(f"| {c} | {src} | " + " | ".join(ratio(mean(src+'-'+c, f), mean('direct-'+c, f)) for f in (p50, p99, cpu)) + " |")
PY
