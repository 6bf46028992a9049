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
#   KEEP=1 keeps the data directory.
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
SAMPLE_EVERY=${SAMPLE_EVERY:-10}
FLAT_AFTER=${FLAT_AFTER:-120}
TOLERANCE=${TOLERANCE:-10}
MIN_LAST_VS_FIRST=${MIN_LAST_VS_FIRST:-90}
OUT=${OUT:-.}
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

echo "== ${DURATION} s closed loop, mix $MIX, $ACCOUNTS accounts, $CONNECTIONS × $DEPTH in flight, batch $BATCH; RSS and disk every ${SAMPLE_EVERY} s, flat after ${FLAT_AFTER} s within ${TOLERANCE} %" >&2
set +e
"$RECKON_SIM" load --server "$RECKON_ADDR" --data-dir "$DATA" --server-pid "$RECKON_PID" \
    --accounts "$ACCOUNTS" --connections "$CONNECTIONS" --depth "$DEPTH" \
    --batch "$BATCH" --threads "$THREADS" --duration "$DURATION" --mix "$MIX" \
    --sample-every "$SAMPLE_EVERY" --flat-after "$FLAT_AFTER" --flat-tolerance "$TOLERANCE" \
    --require-steady --min-last-vs-first "$MIN_LAST_VS_FIRST" \
    --report "$OUT/steady.json" --chart "$OUT/steady.html"
status=$?
set -e
echo "== data directory at the end: $(du -sh "$DATA" | cut -f1); report $OUT/steady.json, chart $OUT/steady.html, server log $OUT/steady-server.log" >&2
exit $status
