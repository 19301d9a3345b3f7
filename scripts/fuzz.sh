#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer through cargo-fuzz, on the stable toolchain with
# --sanitizer none) of the inputs an attacker controls:
#   wire_decoder    the frame decoder (and re-encoding of what it returns)
#   shard_input     a shard fed arbitrary client bytes (any role), publishes applied, time passing
#   feed_datagram   the relay feed's datagram, message and NAK decoders
#   client_session  the client session fed arbitrary server bytes
#   token           token verification and topic patterns
#   websocket       the WebSocket handshake parser and client frame decoder
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 5: the CI smoke run)
# Installs cargo-fuzz when missing. A crash fails the script; libFuzzer leaves the input under
# fuzz/artifacts/<target>/ (replay it with `cargo fuzz run <target> <file>`).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECS=${1:-5}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet
cargo fuzz build --sanitizer none -O >/dev/null 2>&1 || cargo fuzz build --sanitizer none -O
for t in wire_decoder shard_input feed_datagram client_session token websocket; do
  mkdir -p "corpus/$t"
  out=$(cargo fuzz run --sanitizer none -O "$t" "corpus/$t" -- -max_total_time="$SECS" 2>&1) || {
    echo "$out" | tail -30
    echo "fuzz target $t FAILED" >&2
    exit 1
  }
  echo "$t: $(echo "$out" | grep -o 'Done [0-9]* runs in [0-9]* second(s)' | tail -1)"
done
