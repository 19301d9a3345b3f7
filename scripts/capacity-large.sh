#!/usr/bin/env bash
# Large-host capacity run (needs root for sysctls and a high RLIMIT_NOFILE): one
# `yorker serve` process holding CONNS subscribed connections, loaded by several yorker-sim
# processes on other cores; then a few updates fanned out to all of them. Bounded: every
# process stops by itself (durations) and is killed on exit. Loopback only.
# Usage: CONNS=1000000 ENGINE_CORES=8 CLIENT_PROCS=8 scripts/capacity-large.sh [outdir]
# Each core's ring holds at most RLIMIT_NOFILE connections (hard limit; root can raise it
# where the container allows): the engine refuses the rest with server_full.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench-results}
mkdir -p "$OUT"
CONNS=${CONNS:-1000000}
ENGINE_CORES=${ENGINE_CORES:-8}
CLIENT_PROCS=${CLIENT_PROCS:-8}
B=${BIN:-target/release}
PORT=7000
pids=()
trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT

echo "host: $(nproc) cores, $(awk '/MemTotal/ {print int($2/1048576)}' /proc/meminfo) GiB, kernel $(uname -r), ulimit -Hn $(ulimit -Hn)"
# Room for the connections: per-ring direct-descriptor tables are capped by RLIMIT_NOFILE.
sysctl -qw fs.nr_open=2000000 fs.file-max=8000000 2>/dev/null || true
ulimit -Hn 2000000 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
sysctl -qw net.core.somaxconn=65535 net.ipv4.tcp_max_syn_backlog=65535 2>/dev/null || true
sysctl -qw net.ipv4.ip_local_port_range="1024 65000" 2>/dev/null || true
sysctl -qw net.ipv4.tcp_mem="4000000 6000000 8000000" 2>/dev/null || true
echo "ulimit -n now $(ulimit -n)"

PER_CORE=$(( CONNS / ENGINE_CORES + 20000 ))
"$B/yorker" serve --listen 127.0.0.1:$PORT --cores "$ENGINE_CORES" --cpus "0-$((ENGINE_CORES - 1))" \
  --max-conns-per-core $PER_CORE --backlog 65535 --publisher-key big --stats-interval 2 2>"$OUT/engine.log" &
ENGINE=$!; pids+=($ENGINE)
for _ in $(seq 1 100); do grep -q "listening on" "$OUT/engine.log" && break; sleep 0.1; done
head -2 "$OUT/engine.log"
RSS0=$(awk '/^VmRSS/ {print $2}' /proc/$ENGINE/status)

PER_PROC=$(( CONNS / CLIENT_PROCS ))
for i in $(seq 0 $((CLIENT_PROCS - 1))); do
  # 25,000 clients per source address: give each process its own block of addresses.
  # (127.0.0.1 stays free for the publisher.)
  base=$(( 2 + i * (PER_PROC / 25000 + 1) ))
  pin=""; [ "$ENGINE_CORES" -lt "$(nproc)" ] && pin="taskset -c $ENGINE_CORES-$(( $(nproc) - 1 ))"
  $pin "$B/yorker-sim" subscribe --addr 127.0.0.1:$PORT \
    --clients $PER_PROC --threads $(( PER_PROC / 18000 + 1 )) --ramp 25000 --duration 100 \
    --raw --source-base $base >"$OUT/clients-$i.log" 2>&1 &
  pids+=($!)
done
T0=$(date +%s)
subs=0
for _ in $(seq 1 450); do
  subs=$(grep -o 'subs=[0-9]*' "$OUT/engine.log" | tail -1 | cut -d= -f2 || true)
  [ "${subs:-0}" -ge "$CONNS" ] && break
  sleep 0.2
done
T1=$(date +%s)
sleep 3
RSS1=$(awk '/^VmRSS/ {print $2}' /proc/$ENGINE/status)
FDS=$(ls /proc/$ENGINE/fd | wc -l)
echo "subscribed ${subs:-0} of $CONNS in $((T1 - T0)) s; engine RSS ${RSS0} -> ${RSS1} kB; $FDS fds"
# Fan out a few updates to everyone.
"$B/yorker-sim" publish --addr 127.0.0.1:$PORT --key big --raw --topic match/1 --size 64 --rate 2 --duration 10 2>&1 | tail -1
sleep 4
grep 'conns=' "$OUT/engine.log" | tail -3
printf '{"test":"capacity-large","target":%d,"subscribed":%d,"seconds_to_subscribe":%d,"engine_rss_kb_idle":%d,"engine_rss_kb":%d,"rss_bytes_per_conn":%d,"engine_fds":%d,"engine_cores":%d,"host_cores":%d}\n' \
  "$CONNS" "${subs:-0}" $((T1 - T0)) "$RSS0" "$RSS1" $(( (RSS1 - RSS0) * 1024 / (${subs:-1} + 1) )) "$FDS" "$ENGINE_CORES" "$(nproc)" | tee "$OUT/capacity-large.json"
