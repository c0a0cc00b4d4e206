# Port helpers shared by the peer scripts and scripts/bench (source it; bash only).

# A port on 127.0.0.1 that nothing listens on (random, checked, below the ephemeral range
# (32768+) so that no outgoing connection holds it).
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  echo "no free port found" >&2
  return 1
}

# wait_port PORT [SECONDS]: until something listens on 127.0.0.1:PORT (default 10 s).
wait_port() {
  local tries=$((${2:-10} * 20))
  for _ in $(seq 1 "$tries"); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on 127.0.0.1:$1" >&2
  return 1
}
