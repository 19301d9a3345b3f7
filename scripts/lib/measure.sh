# Shared by the measuring scripts (capacity.sh, rss-per-conn.sh, soak.sh); source it from the
# repository root. It builds the release binaries, keeps a log file for the engine's stderr
# ($LOG), stops every process recorded in $pids on exit, and has the bounded waits and the RSS
# reading those scripts share (wait_port comes from wait-port.sh).
LOG=$(mktemp)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -f "$LOG"
}
trap cleanup EXIT
. scripts/lib/wait-port.sh
cargo build --release -q -p yorker -p yorker-sim

# RSS of process $1 in kB.
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# Waits (at most 2 minutes) until the engine's stats line in $LOG reports at least $1
# subscriptions; the engine must run with --stats-interval.
wait_subs() {
  for _ in $(seq 1 600); do
    subs=$(grep -o 'subs=[0-9]*' "$LOG" | tail -1 | cut -d= -f2 || true)
    [ "${subs:-0}" -ge "$1" ] && return 0
    sleep 0.2
  done
  echo "timed out waiting for $1 subscriptions (last: ${subs:-0})" >&2
  tail -5 "$LOG" >&2
  return 1
}
