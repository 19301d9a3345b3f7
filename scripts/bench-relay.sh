#!/usr/bin/env bash
# Relay benchmark: added latency origin -> relay -> client (p50/p99) and the origin's CPU per
# update, with 1, 2 and 4 relays, over the multicast feed and over TCP upstream, against clients
# connected to the origin directly, all in one run.
#
# Runs in network namespaces of its own, so the multicast never reaches the host's interfaces:
# the origin in one, the relays, subscribers and publisher in another, joined by a veth pair
# (10.9.0.1 <-> 10.9.0.2). Receive packet steering moves the relay side's packet processing to
# CPU 1, as a real network would take the copying off the origin's host; the origin is pinned
# to CPU 0, relays and the load generator share CPU 1. So the origin's CPU per update shows what
# the origin pays, not what loopback delivery to every member in the sender's context costs.
#
#   scripts/bench-relay.sh                  # about 1.5 minutes
#   SUBS=2000 RATE=4000 DURATION=5 RELAYS="1 2 4" scripts/bench-relay.sh
#
# Results: bench-results/relay-<time>.jsonl (one JSON object per case) and a table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

SUBS=${SUBS:-50}
RATE=${RATE:-4000}
DURATION=${DURATION:-10}
SIZE=${SIZE:-64}
RELAYS=${RELAYS:-"1 2 4"}
MODES=${MODES:-"multicast tcp"}
GROUP=239.9.9.9:9300
ORIGIN=10.9.0.1:7000

ncpu=$(nproc)
cpu_origin=0
cpu_rest=$((ncpu > 1 ? 1 : 0))

if [ -z "${YORKER_IN_NETNS:-}" ]; then
  cargo build --release --locked -p yorker -p yorker-sim >&2
  if [ "$(id -u)" = 0 ]; then ns=(unshare --net); else ns=(unshare --map-root-user --net); fi
  exec "${ns[@]}" env YORKER_IN_NETNS=1 bash "$0" "$@"
fi

ip link set lo up
# The relay side: a namespace (network and mount: it gets its own /sys) held open by a bounded
# sleep, killed on exit.
unshare --net --mount --propagation private sleep 3600 &
HOLDER=$!
for _ in $(seq 1 100); do
  [ "$(readlink /proc/$HOLDER/ns/net)" != "$(readlink /proc/self/ns/net)" ] && break
  sleep 0.01
done
IN=(nsenter -t "$HOLDER" -n -m)
ip link add vo type veth peer name vr
ip link set vr netns "$HOLDER"
ip addr add 10.9.0.1/24 dev vo
ip link set vo up
ip link set vo multicast on
ip route add 224.0.0.0/4 dev vo
"${IN[@]}" ip link set lo up
"${IN[@]}" ip addr add 10.9.0.2/24 dev vr
"${IN[@]}" ip link set vr up
"${IN[@]}" ip link set vr multicast on
"${IN[@]}" ip route add 224.0.0.0/4 dev vr
"${IN[@]}" mount -t sysfs sysfs /sys
"${IN[@]}" sh -c "echo $((1 << cpu_rest)) > /sys/class/net/vr/queues/rx-0/rps_cpus" \
  || echo "bench-relay: no RPS; the relay side's packet processing may run on CPU 0" >&2

BIN=$PWD/target/release
STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT=bench-results/relay-$STAMP.jsonl
LOGS=$(mktemp -d)
mkdir -p bench-results

pids=()
cleanup() {
  for p in "${pids[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${pids[@]:-}"; do wait "$p" 2>/dev/null || true; done
}
trap 'cleanup; kill $HOLDER 2>/dev/null' EXIT

# Waits (bounded) until a TCP port accepts connections (seen from the relay side).
wait_port() {
  for _ in $(seq 1 200); do
    if "${IN[@]}" bash -c "exec 3<>/dev/tcp/${1%:*}/${1#*:}" 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "bench-relay: $1 never listened" >&2
  return 1
}

# Waits (bounded) until a log file contains a line.
wait_log() {
  for _ in $(seq 1 200); do
    if grep -q "$2" "$1" 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "bench-relay: no '$2' in $1" >&2
  tail -5 "$1" >&2
  return 1
}

start_origin() {
  taskset -c $cpu_origin $BIN/yorker serve --listen $ORIGIN --cores 1 --publisher-key bench \
    --relay-key bench-relay --multicast-out $GROUP --multicast-if 10.9.0.1 --stats-interval 0 2>"$LOGS/origin.log" &
  ORIGIN_PID=$!
  pids+=("$ORIGIN_PID")
  wait_port $ORIGIN
}

start_relay() { # mode index
  local port=$((7100 + $2)) src
  if [ "$1" = multicast ]; then
    src=(--multicast-in $GROUP --multicast-if 10.9.0.2 --recovery $ORIGIN)
  else
    src=(--upstream $ORIGIN)
  fi
  "${IN[@]}" taskset -c $cpu_rest $BIN/yorker relay --listen 127.0.0.1:$port --cores 1 "${src[@]}" \
    --upstream-key bench-relay --stats-interval 0 2>"$LOGS/relay-$2.log" &
  pids+=("$!")
  wait_port 127.0.0.1:$port
  wait_log "$LOGS/relay-$2.log" "synced with"
}

run_case() { # mode relays
  local mode=$1 n=$2 addrs=""
  cleanup
  pids=()
  start_origin
  if [ "$n" = 0 ]; then
    addrs=$ORIGIN
  else
    for i in $(seq 1 "$n"); do
      start_relay "$mode" "$i"
      addrs="$addrs${addrs:+,}127.0.0.1:$((7100 + i))"
    done
  fi
  echo "bench-relay: $mode, $n relay(s), $SUBS subscribers, $RATE updates/s for ${DURATION}s" >&2
  local json
  json=$("${IN[@]}" taskset -c $cpu_rest timeout $((DURATION + 90)) $BIN/yorker-sim bench --mode rate \
    --addr "$addrs" --publish-addr $ORIGIN --key bench --subs "$SUBS" --rate "$RATE" \
    --duration "$DURATION" --size "$SIZE" --server-pid "$ORIGIN_PID" --json) || {
    echo "bench-relay: the bench failed for $mode/$n" >&2
    return 1
  }
  echo "{\"feed\":\"$mode\",\"relays\":$n,\"bench\":$json}" >>"$OUT"
}

run_case direct 0
for mode in $MODES; do
  for n in $RELAYS; do
    run_case "$mode" "$n"
  done
done
cleanup

python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
base = next(r for r in rows if r["relays"] == 0)["bench"]["latency"]
print(f"{'feed':10} {'relays':>6} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'+p99 ms':>8} {'origin us/update':>17} {'lost':>5}")
for r in rows:
    b = r["bench"]
    lat = b["latency"]
    cpu = b["server_cpu_s"] * 1e6 / max(b["updates"], 1)
    print(f"{r['feed']:10} {r['relays']:>6} {lat['p50_ms']:>8.3f} {lat['p99_ms']:>8.3f} "
          f"{lat['p50_ms'] - base['p50_ms']:>8.3f} {lat['p99_ms'] - base['p99_ms']:>8.3f} {cpu:>17.2f} {b['lost']:>5}")
PY
echo "bench-relay: results in $OUT" >&2
