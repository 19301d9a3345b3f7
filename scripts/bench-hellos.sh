#!/usr/bin/env bash
# HELLOs per second on one core, without and with signed tokens: is a reconnect storm of
# token-holding clients bound by signature checks? Each mode runs against a fresh
# `yorker serve --cores 1` (CPU 0) from `yorker-sim attack hellos` (CPU 1, 4 threads) for
# SECONDS_EACH seconds: connect, HELLO (version 2), WELCOME (+AUTH_OK), close.
#   none         anonymous HELLOs
#   hs256-same   every client presents the same HS256 token (the shard's cache answers)
#   hs256-fresh  a distinct HS256 token per HELLO (a signature check each)
#   eddsa-same / eddsa-fresh   the same with Ed25519
# One JSON line per mode to bench-results/hellos.jsonl (OUT=...). Needs openssl (for keys).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${SECONDS_EACH:-8}
OUT=${OUT:-bench-results/hellos.jsonl}
PORT=${PORT:-7470}
cargo build --release -q -p yorker -p yorker-sim
BIN=target/release
KEYS=$(mktemp -d)
trap 'rm -rf "$KEYS"' EXIT
head -c 48 /dev/urandom >"$KEYS/hs.key"
openssl genpkey -algorithm ed25519 -out "$KEYS/ed-private.pem" 2>/dev/null
openssl pkey -in "$KEYS/ed-private.pem" -pubout -out "$KEYS/ed.pem" 2>/dev/null
mkdir -p "$(dirname "$OUT")"
for mode in none hs256-same hs256-fresh eddsa-same eddsa-fresh; do
  args=()
  case $mode in
    hs256-same) args=(--token "$($BIN/yorker-sim token --key "$KEYS/hs.key" --sub player --ttl 3600)") ;;
    hs256-fresh) args=(--token-key "$KEYS/hs.key") ;;
    eddsa-same) args=(--token "$($BIN/yorker-sim token --key "$KEYS/ed-private.pem" --sub player --ttl 3600)") ;;
    eddsa-fresh) args=(--token-key "$KEYS/ed-private.pem") ;;
  esac
  taskset -c 0 $BIN/yorker serve --listen 127.0.0.1:$PORT --cores 1 --publisher-key bench \
    --jwt-key "hs=$KEYS/hs.key,ed=$KEYS/ed.pem" --stats-interval 0 2>/dev/null &
  pid=$!
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break
    sleep 0.1
  done
  line=$(taskset -c 1 $BIN/yorker-sim attack hellos --addr 127.0.0.1:$PORT --key bench \
    --seconds "$SECONDS_EACH" --warmup 1 --server-pid $pid --json "${args[@]}")
  kill -TERM $pid; wait $pid || true
  echo "{\"mode\":\"$mode\",${line#\{}" | tee -a "$OUT"
  PORT=$((PORT + 1))
done
