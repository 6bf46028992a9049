#!/usr/bin/env bash
# Steady state of `reckon serve` under sustained load (issue 13): builds the
# release binaries, starts the server on a fresh data directory, runs a
# closed-loop load (inference flows on 100k accounts by default) while
# sampling the server's RSS and data directory, and prints whether
# throughput held (last minute ≥ 90 % of the first) and RSS and disk stayed
# flat (within 10 %) after minute 2. Exits 1 if not.
#
# Settings (environment):
#   DURATION=600 ACCOUNTS=100000 CONNECTIONS=4 DEPTH=256 BATCH=1 THREADS=0
#   MIX=inference=1 SAMPLE_EVERY=10 FLAT_AFTER=120 TOLERANCE=10
#   MIN_LAST_VS_FIRST=90 OUT=. (report, chart and server log go there)
#   RATE=0 (closed loop; a rate in requests/s makes it an open loop, for
#   latency at a given load, e.g. half the closed-loop maximum)
#   KEEP=1 keeps the data directory.
#   MIN_FREE_GB=5 MAX_RSS_GB=(half the machine's memory): a server that
#   still grows without bound would fill the disk or the memory of a shared
#   machine in a 10-minute run, so the load is stopped early (with its
#   report, and the verdict NO) when free disk or the server's RSS crosses
#   these.
# A one-minute try: DURATION=60 FLAT_AFTER=20 SAMPLE_EVERY=5 scripts/steady_state.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

DURATION=${DURATION:-600}
ACCOUNTS=${ACCOUNTS:-100000}
CONNECTIONS=${CONNECTIONS:-4}
DEPTH=${DEPTH:-256}
BATCH=${BATCH:-1}
THREADS=${THREADS:-0}
MIX=${MIX:-inference=1}
RATE=${RATE:-0}
SAMPLE_EVERY=${SAMPLE_EVERY:-10}
FLAT_AFTER=${FLAT_AFTER:-120}
TOLERANCE=${TOLERANCE:-10}
MIN_LAST_VS_FIRST=${MIN_LAST_VS_FIRST:-90}
OUT=${OUT:-.}
MIN_FREE_GB=${MIN_FREE_GB:-5}
MAX_RSS_GB=${MAX_RSS_GB:-$(awk '/^MemTotal:/ { printf "%d", $2 / 2 / 1048576 }' /proc/meminfo)}
mkdir -p "$OUT"

build_release
DATA=$(mktemp -d "${TMPDIR:-/tmp}/reckon-steady.XXXXXX")
cleanup() {
    [ -n "${RECKON_PID:-}" ] && stop_pid "$RECKON_PID" "reckon serve"
    if [ "${KEEP:-0}" = 1 ]; then
        echo "== data directory kept: $DATA" >&2
    else
        rm -rf "$DATA"
    fi
}
trap cleanup EXIT
start_reckon "$DATA" "$OUT/steady-server.log"

echo "== ${DURATION} s $([ "$RATE" = 0 ] && echo "closed loop" || echo "open loop at $RATE/s"), mix $MIX, $ACCOUNTS accounts, $CONNECTIONS × $DEPTH in flight, batch $BATCH; RSS and disk every ${SAMPLE_EVERY} s, flat after ${FLAT_AFTER} s within ${TOLERANCE} %" >&2
"$RECKON_SIM" load --server "$RECKON_ADDR" --data-dir "$DATA" --server-pid "$RECKON_PID" \
    --accounts "$ACCOUNTS" --connections "$CONNECTIONS" --depth "$DEPTH" \
    --batch "$BATCH" --threads "$THREADS" --duration "$DURATION" --mix "$MIX" --rate "$RATE" \
    --sample-every "$SAMPLE_EVERY" --flat-after "$FLAT_AFTER" --flat-tolerance "$TOLERANCE" \
    --require-steady --min-last-vs-first "$MIN_LAST_VS_FIRST" \
    --report "$OUT/steady.json" --chart "$OUT/steady.html" &
SIM_PID=$!
# The watchdog: SIGTERM makes reckon-sim end the load early and report.
while kill -0 "$SIM_PID" 2>/dev/null; do
    free_kb=$(df -Pk "$DATA" | awk 'NR == 2 { print $4 }')
    rss_kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$RECKON_PID/status" 2>/dev/null || echo 0)
    why=
    [ "$free_kb" -lt $((MIN_FREE_GB * 1048576)) ] && why="free disk below ${MIN_FREE_GB} GB"
    [ "${rss_kb:-0}" -gt $((MAX_RSS_GB * 1048576)) ] && why="server RSS above ${MAX_RSS_GB} GB"
    if [ -n "$why" ]; then
        echo "== STOPPING EARLY: $why" >&2
        kill -TERM "$SIM_PID" 2>/dev/null || true
        break
    fi
    sleep 2
done
set +e
wait "$SIM_PID"
status=$?
set -e
[ -n "${why:-}" ] && { echo "steady state: NO (stopped early: $why)"; status=1; }
echo "== data directory at the end: $(du -sh "$DATA" | cut -f1); report $OUT/steady.json, chart $OUT/steady.html, server log $OUT/steady-server.log" >&2
exit $status
