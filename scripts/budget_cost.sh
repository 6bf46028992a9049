#!/usr/bin/env bash
# What enforcing spend controls costs (issue 14): closed-loop runs of the
# same load on a fresh server, without budgets and with a monthly and a
# yearly hard budget on every account and unit (never reached, so every
# request pays the checks and nothing is refused), alternated ROUNDS
# times so drift on a shared machine hits both alike. Prints each run's
# requests/s and the medians' ratio.
#
# Settings (environment): DURATION=30 ACCOUNTS=100000 CONNECTIONS=4
# DEPTH=256 MIX=reserve-commit=1 ROUNDS=3 OUT=/tmp/reckon-budget-cost
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

DURATION=${DURATION:-30}
ACCOUNTS=${ACCOUNTS:-100000}
CONNECTIONS=${CONNECTIONS:-4}
DEPTH=${DEPTH:-256}
MIX=${MIX:-reserve-commit=1}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-/tmp/reckon-budget-cost}
mkdir -p "$OUT"

build_release
run() {
    local label=$1 extra=$2 round=$3
    local data
    data=$(mktemp -d "${TMPDIR:-/tmp}/reckon-budget.XXXXXX")
    start_reckon "$data" "$OUT/server-$label-$round.log"
    "$RECKON_SIM" load --server "$RECKON_ADDR" --data-dir "$data" --quiet \
        --accounts "$ACCOUNTS" --connections "$CONNECTIONS" --depth "$DEPTH" \
        --duration "$DURATION" --mix "$MIX" $extra \
        --report "$OUT/$label-$round.json" >/dev/null
    stop_pid "$RECKON_PID" "reckon serve"
    rm -rf "$data"
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(round(r['requests_per_s']))" \
        "$OUT/$label-$round.json"
}
plain=()
budgets=()
for round in $(seq 1 "$ROUNDS"); do
    p=$(run plain "" "$round")
    b=$(run budgets "--budgets" "$round")
    echo "round $round: without budgets $p requests/s, with budgets $b requests/s" >&2
    plain+=("$p")
    budgets+=("$b")
done
python3 - "${plain[*]}" "${budgets[*]}" <<'EOF'
import statistics, sys
plain = [int(x) for x in sys.argv[1].split()]
budgets = [int(x) for x in sys.argv[2].split()]
p, b = statistics.median(plain), statistics.median(budgets)
print(f"median without budgets {p:.0f} requests/s, with budgets {b:.0f} requests/s: "
      f"enforcement costs {100 * (1 - b / p):.1f} % of throughput")
EOF
