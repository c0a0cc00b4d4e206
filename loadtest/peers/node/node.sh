#!/usr/bin/env bash
# The tutorial-style Node.js peer: N `server.mjs` processes on one Redis (pub/sub only:
# no history, no resume). A second reference point beside nchan.
#
# Usage: loadtest/peers/node/node.sh up|down
# Environment: NODE_NODES=1, NODE_REDIS_URL (unset: start a Redis on a free port),
#              NODE_DIR=/tmp/ssegate-node-peer
# `up` prints `target=URL pid=PID` per server and `redis pid=PID url=URL`.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
NODES=${NODE_NODES:-1}
DIR=${NODE_DIR:-/tmp/ssegate-node-peer}

source "$(dirname "$0")/../ports.sh"

up() {
  command -v node >/dev/null || { echo "node is needed (apt install nodejs npm)" >&2; exit 1; }
  [ -d "$HERE/node_modules/redis" ] ||
    (cd "$HERE" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
  mkdir -p "$DIR"
  local redis_url=${NODE_REDIS_URL:-}
  if [ -z "$redis_url" ]; then
    local rp
    rp=$(free_port)
    redis-server --port "$rp" --bind 127.0.0.1 --save "" --appendonly no --dir "$DIR" \
      --daemonize yes --pidfile "$DIR/redis.pid" --logfile "$DIR/redis.log"
    wait_port "$rp"
    for _ in $(seq 1 50); do [ -s "$DIR/redis.pid" ] && break; sleep 0.1; done
    redis_url="redis://127.0.0.1:$rp"
    echo "redis pid=$(cat "$DIR/redis.pid") url=$redis_url"
  fi
  for i in $(seq 1 "$NODES"); do
    local port
    port=$(free_port)
    PORT=$port REDIS_URL=$redis_url nohup node "$HERE/server.mjs" >"$DIR/node-$i.log" 2>&1 &
    echo $! >"$DIR/node-$i.pid"
    wait_port "$port"
    echo "target=http://127.0.0.1:$port pid=$(cat "$DIR/node-$i.pid")"
  done
}

down() {
  for f in "$DIR"/node-*.pid "$DIR"/redis.pid; do
    [ -f "$f" ] || continue
    kill -TERM "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 64 ;;
esac
