#!/usr/bin/env bash
# Smoke test of the load generator: every scenario once at a small size against real
# ssegate processes (one node with the embedded broker; then redis-server + three nodes
# for the cluster scenarios), each run with --check: it fails on any gap, duplicate,
# missing event or subscriber that never went live. No timing is asserted. Then the
# randomized history checker (`check`) against three nodes: on one Redis (about 50 s),
# then twice behind Sentinel (about 35 s each).
#
# Usage: loadtest/smoke.sh   (SMOKE_SUBSCRIBERS=200 SMOKE_SECONDS=2 by default;
#        SMOKE_CHECK_SECONDS=45 for the checker, SMOKE_SENTINEL_SECONDS=30 for its
#        Sentinel runs, SMOKE_CHECK_SEED to pin its seed;
#        SSEGATE_BIN=path to test that gateway binary instead of the one built here)
set -euo pipefail
cd "$(dirname "$0")/.."

N=${SMOKE_SUBSCRIBERS:-200}
D=${SMOKE_SECONDS:-2}
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
# Every target: the units scripts/test already built (a build of fewer packages would
# compile several crates again with other features).
cargo build --locked -q --workspace --all-targets
GW=${SSEGATE_BIN:-$TARGET_DIR/debug/ssegate}
LT="$TARGET_DIR/debug/ssegate-loadtest"

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

# start_node NAME [ENV=VALUE...]: starts ssegate on a free port; sets URL and PID.
start_node() {
  local name=$1
  shift
  env SSEGATE_LISTEN=127.0.0.1:0 SSEGATE_ADMIN_LISTEN=off SSEGATE_LOG=warn \
    SSEGATE_NODE_ID="$name" SSEGATE_RETRY=100ms SSEGATE_RETRY_JITTER=100ms "$@" \
    "$GW" >"$WORK/$name.out" 2>"$WORK/$name.err" &
  PID=$!
  PIDS+=("$PID")
  disown "$PID" # the failover run SIGKILLs one; no "Killed" job notice
  for _ in $(seq 1 200); do
    if grep -q "http=" "$WORK/$name.out" 2>/dev/null; then
      URL="http://$(grep -o 'http=[^ ]*' "$WORK/$name.out" | head -1 | cut -d= -f2)"
      return 0
    fi
    sleep 0.05
  done
  echo "ssegate $name did not start:" >&2
  cat "$WORK/$name.err" >&2
  return 1
}

run() {
  echo "== loadtest smoke: $*"
  if ! "$LT" "$@" --subscribers "$N" --duration "$D" --settle-ms 300 --grace 15 \
    --connect-rate 5000 --check --json "$WORK/last.json" >"$WORK/last.md" 2>"$WORK/last.err"; then
    cat "$WORK/last.err" "$WORK/last.md" >&2
    echo "loadtest smoke FAILED: $*" >&2
    return 1
  fi
  grep -E "^(gaps|\| (deliveries|lost|duplicates|subscribers live|all live))" "$WORK/last.md" || true
}

start_node single
SINGLE="--target $URL --pid $PID"
# shellcheck disable=SC2086
{
  run capacity $SINGLE
  run fanout $SINGLE --rate 50
  run channels $SINGLE --channels 20 --rate 100
  run reconnect-storm $SINGLE --rate 50
}
# The floor that benchmarks report ratios to (`compare --floor`) delivers like a server.
"$LT" floor --listen 127.0.0.1:0 >"$WORK/floor.out" &
PIDS+=("$!")
disown "$!"
for _ in $(seq 1 100); do grep -q listening "$WORK/floor.out" && break; sleep 0.05; done
run fanout --flavor floor --target "http://$(sed -n 's/^listening //p' "$WORK/floor.out")" \
  --pid "${PIDS[-1]}" --rate 50

REDIS_PORT=$("$LT" free-port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$WORK" --logfile "$WORK/redis.log" &
PIDS+=("$!")
disown "$!"
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null && break
  sleep 0.05
done
CLUSTER=""
for i in 1 2 3; do
  start_node "node$i" SSEGATE_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
  CLUSTER="$CLUSTER --target $URL --pid $PID"
  [ "$i" -eq 1 ] && KILL=$PID
done
# shellcheck disable=SC2086
{
  run reconnect-storm $CLUSTER --rate 50
  run failover $CLUSTER --rate 50 --kill-pid "$KILL"
}
# The randomized history checker: it starts its own Redis (AOF) and three nodes, runs
# random clients, idempotent publishers and seeded faults (node SIGKILL/SIGTERM, pub/sub
# kills, Redis restart and DEBUG SLEEP, stalled clients) and checks every session against
# the delivery contract. A fresh seed each run (printed; SMOKE_CHECK_SEED pins one).
# Then twice behind Sentinel (a primary, a replica, three sentinels; failovers and primary
# SIGKILLs among the faults): without replica confirmation (every loss announced) and
# with SSEGATE_PUBLISH_MIN_REPLICAS=1 (nothing acknowledged lost). Then on a Redis Cluster
# (three primaries, three replicas; CLUSTER FAILOVER, primary SIGKILLs and slot migrations
# among the faults).
CHECK_S=${SMOKE_CHECK_SECONDS:-45}
SENTINEL_S=${SMOKE_SENTINEL_SECONDS:-30}
check() {
  local name=$1 secs=$2
  shift 2
  echo "== loadtest smoke: check${*:+ $*} --duration $secs --nodes 3 (faults on)"
  # shellcheck disable=SC2086
  if ! "$LT" check --duration "$secs" --nodes 3 --gateway-bin "$GW" "$@" \
    ${SMOKE_CHECK_SEED:+--seed "$SMOKE_CHECK_SEED"} >"$WORK/$name.out" 2>"$WORK/$name.err"; then
    cat "$WORK/$name.err" "$WORK/$name.out" >&2
    echo "loadtest smoke FAILED: check $*" >&2
    exit 1
  fi
  tail -n 1 "$WORK/$name.out"
}
check check "$CHECK_S"
check check-sentinel "$SENTINEL_S" --sentinel
check check-durable "$SENTINEL_S" --sentinel --min-replicas 1
check check-cluster "$SENTINEL_S" --redis-cluster
echo "loadtest smoke: 6 scenarios, 0 gaps, 0 duplicates; history checks (standalone, Sentinel, Sentinel with a replica confirming, Redis Cluster): 0 anomalies"
