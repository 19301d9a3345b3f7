#!/usr/bin/env bash
# Installs the system tools the tests need when they are missing: the relay tests run in
# network namespaces of their own (unshare from util-linux, ip from iproute2) and inject
# datagram loss with nftables; procps (pgrep) and openssl are used by scripts; Prometheus'
# promtool validates the metrics endpoint; redis-server and nats-server (JetStream) are the
# logs the ingest tests read.
# Called by scripts/test.sh, so that the README's test command works on a fresh Debian/Ubuntu machine.
# Needs root or passwordless sudo to install; says exactly what is missing otherwise.
set -euo pipefail
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v pgrep >/dev/null 2>&1 || need+=(procps)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)  # promtool checks /metrics
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v cc >/dev/null 2>&1 || need+=(gcc)           # the C SDK's example
command -v mcs >/dev/null 2>&1 || need+=(mono-devel)   # the C# SDK (mcs + mono)
command -v node >/dev/null 2>&1 || need+=(nodejs)      # the TypeScript SDK's tests
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v chromium >/dev/null 2>&1 || need+=(chromium) # the browser test (headless)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server) # the ingest tests (Redis Streams)
command -v nats-server >/dev/null 2>&1 || need+=(nats-server)   # the ingest tests (JetStream)
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing test dependencies: ${need[*]}" >&2
as_root=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
  else
    echo "error: the tests need ${need[*]} (Debian/Ubuntu packages); run as root, or install them: sudo apt-get install -y ${need[*]}" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: the tests need ${need[*]}; this machine has no apt-get: install the equivalent packages" >&2
  exit 1
fi
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
