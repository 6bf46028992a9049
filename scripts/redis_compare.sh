#!/usr/bin/env bash
# Reckon against Redis 7 + Lua doing the same reserve/commit work, side by
# side, by the same generator (issue 13): installs redis-server from Debian
# if missing, runs it on 127.0.0.1 with appendonly yes and appendfsync
# always in a temporary directory, drives it with `reckon-sim redis`
# (reserve script then commit script per flow, idempotent on the request
# id, pipelined CONNECTIONS × DEPTH), then runs `reckon serve` on a fresh
# data directory under `reckon-sim load --mix reserve-commit=1` with the
# same connections, depth, accounts and duration, and prints both
# throughputs, p50/p99 and the ratio. The two runs take turns on the
# machine; neither runs while the other is measured.
#
# Settings (environment): DURATION=20 ACCOUNTS=100000 CONNECTIONS=4
#   DEPTH=256 THREADS=0 RECKON_BATCH=1 (BATCH frames for Reckon; Redis
#   pipelines) OUT=. (reports and charts go there)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

DURATION=${DURATION:-20}
ACCOUNTS=${ACCOUNTS:-100000}
CONNECTIONS=${CONNECTIONS:-4}
DEPTH=${DEPTH:-256}
THREADS=${THREADS:-0}
RECKON_BATCH=${RECKON_BATCH:-1}
OUT=${OUT:-.}
mkdir -p "$OUT"

if ! command -v redis-server >/dev/null 2>&1; then
    echo "== installing redis-server from Debian" >&2
    SUDO=
    [ "$(id -u)" -ne 0 ] && SUDO=sudo
    if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >&2; then
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >&2
    fi
fi
echo "== $(redis-server --version)" >&2
build_release

WORK=$(mktemp -d "${TMPDIR:-/tmp}/reckon-vs-redis.XXXXXX")
REDIS_PID=
cleanup() {
    [ -n "${REDIS_PID:-}" ] && stop_pid "$REDIS_PID" redis-server
    [ -n "${RECKON_PID:-}" ] && stop_pid "$RECKON_PID" "reckon serve"
    rm -rf "$WORK"
}
trap cleanup EXIT
SHAPE=(--accounts "$ACCOUNTS" --connections "$CONNECTIONS" --depth "$DEPTH"
       --threads "$THREADS" --duration "$DURATION")

# 1. Redis, durable: every write fsynced before its reply.
mkdir -p "$WORK/redis"
RPORT=$(free_port 16379)
redis-server --bind 127.0.0.1 --port "$RPORT" --dir "$WORK/redis" \
    --appendonly yes --appendfsync always --save '' \
    --daemonize no --protected-mode yes >"$OUT/redis-server.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 1 100); do
    [ "$(redis-cli -p "$RPORT" ping 2>/dev/null)" = PONG ] && break
    sleep 0.1
done
echo "== redis-server pid $REDIS_PID on 127.0.0.1:$RPORT (appendonly yes, appendfsync always)" >&2
"$RECKON_SIM" redis --server "127.0.0.1:$RPORT" --server-pid "$REDIS_PID" \
    --data-dir "$WORK/redis" "${SHAPE[@]}" \
    --report "$OUT/redis.json" --chart "$OUT/redis.html"
stop_pid "$REDIS_PID" redis-server
REDIS_PID=

# 2. Reckon, the same flow and shape.
start_reckon "$WORK/reckon" "$OUT/reckon-server.log"
"$RECKON_SIM" load --server "$RECKON_ADDR" --data-dir "$WORK/reckon" \
    --server-pid "$RECKON_PID" --mix reserve-commit=1 --batch "$RECKON_BATCH" \
    "${SHAPE[@]}" --report "$OUT/reckon.json" --chart "$OUT/reckon.html"
stop_pid "$RECKON_PID" "reckon serve"
RECKON_PID=

echo
echo "== Reckon vs Redis + Lua (appendfsync always), the same reserve/commit flow and generator"
"$RECKON_SIM" compare "$OUT/redis.json" "$OUT/reckon.json"
