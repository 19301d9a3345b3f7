# wait_port PORT: waits (at most 5 s) until something accepts TCP connections on
# 127.0.0.1:PORT; false, with a message on stderr, if nothing does. Sourced by the measuring
# and benchmark scripts from the repository root.
wait_port() {
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "nothing listens on 127.0.0.1:$1" >&2
  return 1
}
