#!/usr/bin/env bash
# Checks a host for running yorker at scale and prints what to change. Reads only; changes
# nothing. Usage: scripts/check-host.sh [expected connections per host]
set -u
WANT=${1:-100000}
ok=1
say() { printf '%-34s %s\n' "$1" "$2"; }
warn() { ok=0; printf '%-34s %s\n    -> %s\n' "$1" "$2" "$3"; }

kernel=$(uname -r)
major=${kernel%%.*}; rest=${kernel#*.}; minor=${rest%%.*}
if [ "$major" -gt 6 ] || { [ "$major" -eq 6 ] && [ "$minor" -ge 1 ]; }; then
  say "kernel" "$kernel (6.1+ needed: ok)"
else
  warn "kernel" "$kernel" "upgrade to 6.1 or later (DEFER_TASKRUN, multishot recv, provided-buffer rings)"
fi
if [ -r /proc/sys/kernel/io_uring_disabled ]; then
  v=$(cat /proc/sys/kernel/io_uring_disabled)
  if [ "$v" = 0 ]; then say "kernel.io_uring_disabled" "0 (ok)"; else
    warn "kernel.io_uring_disabled" "$v" "sysctl -w kernel.io_uring_disabled=0 (or add the service user to io_uring_group when 1)"; fi
fi
hard=$(ulimit -Hn)
if [ "$hard" = unlimited ] || [ "$hard" -ge 65536 ]; then say "RLIMIT_NOFILE (hard)" "$hard (ok)"; else
  warn "RLIMIT_NOFILE (hard)" "$hard" "each core's ring holds at most this many connections; set LimitNOFILE=1048576 in the systemd unit"; fi
somax=$(cat /proc/sys/net/core/somaxconn)
if [ "$somax" -ge 4096 ]; then say "net.core.somaxconn" "$somax (ok)"; else
  warn "net.core.somaxconn" "$somax" "sysctl -w net.core.somaxconn=4096 (bursts of reconnects overflow a short backlog: 1 s SYN retransmits)"; fi
syn=$(cat /proc/sys/net/ipv4/tcp_max_syn_backlog)
if [ "$syn" -ge 4096 ]; then say "net.ipv4.tcp_max_syn_backlog" "$syn (ok)"; else
  warn "net.ipv4.tcp_max_syn_backlog" "$syn" "sysctl -w net.ipv4.tcp_max_syn_backlog=8192"; fi
read -r lo hi < /proc/sys/net/ipv4/ip_local_port_range
say "net.ipv4.ip_local_port_range" "$lo $hi ($((hi - lo + 1)) ports per source address, matters for load generators)"
fmax=$(cat /proc/sys/fs/file-max)
if [ "$fmax" -ge $((WANT * 2)) ]; then say "fs.file-max" "$fmax (ok)"; else
  warn "fs.file-max" "$fmax" "sysctl -w fs.file-max=$((WANT * 4))"; fi
read -r _ _ tcpmem_hi < /proc/sys/net/ipv4/tcp_mem
page=$(getconf PAGESIZE)
need_pages=$((WANT * 8192 / page))
if [ "$tcpmem_hi" -ge "$need_pages" ]; then say "net.ipv4.tcp_mem (max)" "$tcpmem_hi pages (ok for ~8 KB of buffers per connection)"; else
  warn "net.ipv4.tcp_mem (max)" "$tcpmem_hi pages" "raise to at least $need_pages pages for $WANT connections (~8 KB kernel buffers each)"; fi
mem_kb=$(awk '/MemTotal/ {print $2}' /proc/meminfo)
say "memory" "$((mem_kb / 1024)) MiB; plan ~5 KB kernel + ~0.3 KB yorker per idle connection"
say "online cores" "$(nproc) (yorker serve --cores N; pin with --cpus)"
[ $ok = 1 ] && echo "host ready for $WANT connections" || echo "apply the changes above for $WANT connections"
