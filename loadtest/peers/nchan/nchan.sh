#!/usr/bin/env bash
# The nchan peer: N nginx instances with Debian's libnginx-mod-nchan, all on one Redis,
# configured like an ssegate cluster of N nodes (same history length and age).
#
# Usage: loadtest/peers/nchan/nchan.sh up|down|status
#
# Environment (all optional):
#   NCHAN_NODES=1          nginx instances (like ssegate nodes)
#   NCHAN_PORT             port of the first instance, the others use the next ports;
#                          unset: free ports are picked
#   NCHAN_WORKERS=auto     nginx worker_processes per instance
#   NCHAN_HISTORY=10000    messages kept per channel (ssegate: SSEGATE_HISTORY_MAX_LEN)
#   NCHAN_MAX_AGE=3600     seconds a message is kept (ssegate: SSEGATE_HISTORY_MAX_AGE)
#   NCHAN_REDIS_URL        use this Redis; unset: start one (on NCHAN_REDIS_PORT, or a free port)
#   NCHAN_DIR=/tmp/ssegate-nchan   config, logs, pid files
#
# URL shapes (what `ssegate-loadtest --flavor nchan` uses):
#   subscribe  GET  http://127.0.0.1:PORT/sub/{channel}   (EventSource, Last-Event-ID resume)
#   publish    POST http://127.0.0.1:PORT/pub/{channel}   (body = the event data)
#
# `up` prints one line per process: `target=URL pid=PID` for each nginx master and
# `redis pid=PID url=URL` for its own Redis.
set -euo pipefail

NODES=${NCHAN_NODES:-1}
PORT=${NCHAN_PORT:-}
WORKERS=${NCHAN_WORKERS:-auto}
HISTORY=${NCHAN_HISTORY:-10000}
MAX_AGE=${NCHAN_MAX_AGE:-3600}
REDIS_PORT=${NCHAN_REDIS_PORT:-}
DIR=${NCHAN_DIR:-/tmp/ssegate-nchan}
MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so

install_missing() {
  local pkgs=()
  command -v nginx >/dev/null || pkgs+=(nginx)
  [ -f "$MODULE" ] || pkgs+=(libnginx-mod-nchan)
  command -v redis-server >/dev/null || pkgs+=(redis-server)
  if ((${#pkgs[@]})); then
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${pkgs[@]}" >/dev/null
  fi
}

source "$(dirname "$0")/../ports.sh"

conf() {
  local i=$1 port=$2 redis=$3
  mkdir -p "$DIR/tmp-$i"
  cat <<EOF
load_module $MODULE;
worker_processes $WORKERS;
worker_rlimit_nofile 20000;
pid $DIR/nginx-$i.pid;
error_log $DIR/error-$i.log warn;
user root;
events {
    worker_connections 19000;
    multi_accept on;
}
http {
    access_log off;
    client_body_temp_path $DIR/tmp-$i/body;
    proxy_temp_path $DIR/tmp-$i/proxy;
    fastcgi_temp_path $DIR/tmp-$i/fastcgi;
    uwsgi_temp_path $DIR/tmp-$i/uwsgi;
    scgi_temp_path $DIR/tmp-$i/scgi;
    nchan_redis_url "$redis";
    nchan_use_redis on;
    nchan_message_buffer_length $HISTORY;
    nchan_message_timeout ${MAX_AGE}s;
    server {
        listen 127.0.0.1:$port backlog=4096;
        location ~ ^/sub/([A-Za-z0-9_.:-]+)$ {
            nchan_subscriber eventsource;
            nchan_channel_id \$1;
            nchan_subscriber_first_message newest;
        }
        location ~ ^/pub/([A-Za-z0-9_.:-]+)$ {
            nchan_publisher;
            nchan_channel_id \$1;
        }
        location = /healthz {
            return 200 "ok\n";
        }
    }
}
EOF
}

up() {
  install_missing
  mkdir -p "$DIR"
  local redis_url=${NCHAN_REDIS_URL:-}
  if [ -z "$redis_url" ]; then
    [ -n "$REDIS_PORT" ] || REDIS_PORT=$(free_port)
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
      --dir "$DIR" --daemonize yes --pidfile "$DIR/redis.pid" --logfile "$DIR/redis.log"
    wait_port "$REDIS_PORT"
    for _ in $(seq 1 50); do [ -s "$DIR/redis.pid" ] && break; sleep 0.1; done
    redis_url="redis://127.0.0.1:$REDIS_PORT"
    echo "redis pid=$(cat "$DIR/redis.pid") url=$redis_url"
  fi
  for i in $(seq 1 "$NODES"); do
    local port
    if [ -n "$PORT" ]; then port=$((PORT + i - 1)); else port=$(free_port); fi
    conf "$i" "$port" "$redis_url" >"$DIR/nginx-$i.conf"
    nginx -c "$DIR/nginx-$i.conf" -p "$DIR" 2>>"$DIR/error-$i.log"
    wait_port "$port"
    echo "target=http://127.0.0.1:$port pid=$(cat "$DIR/nginx-$i.pid")"
  done
}

down() {
  for f in "$DIR"/nginx-*.pid; do
    [ -f "$f" ] || continue
    kill -TERM "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
  if [ -f "$DIR/redis.pid" ]; then
    kill -TERM "$(cat "$DIR/redis.pid")" 2>/dev/null || true
    rm -f "$DIR/redis.pid"
  fi
}

status() {
  for f in "$DIR"/nginx-*.pid "$DIR"/redis.pid; do
    [ -f "$f" ] || continue
    local pid
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then echo "$(basename "$f" .pid) up pid=$pid"; else echo "$(basename "$f" .pid) down"; fi
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 64 ;;
esac
