#!/usr/bin/env bash
# Regression gate on the committed fixture tapes: `flowtape diff` and `flowtape check` must
# pass on the healthy baseline and must catch exactly the five incidents injected into
# fixtures/synth-incident.tape (fixtures/README.md). Exit 0 when every step gave what it must.
# Usage: scripts/regression-gate.sh   (FLOWTAPE=path/to/flowtape to use another binary)
set -u
cd "$(dirname "$0")/.."
FT="${FLOWTAPE:-}"
if [ -z "$FT" ]; then
    if [ -x .venv/bin/flowtape ]; then FT=.venv/bin/flowtape; else FT=flowtape; fi
fi
BASE=fixtures/synth-baseline.tape
INC=fixtures/synth-incident.tape
RULES=fixtures/rules.toml
fail=0
out=$(mktemp); trap 'rm -f "$out"' EXIT

step() {  # step EXPECTED_EXIT DESCRIPTION ARGS...
    local want=$1 what=$2; shift 2
    "$FT" "$@" >"$out" 2>&1
    local got=$?
    if [ "$got" -ne "$want" ]; then
        echo "FAIL: $what: flowtape $* exited $got, expected $want"; sed 's/^/    /' "$out"; fail=1; return 1
    fi
    echo "ok:   $what (exit $got)"
}

step 0 "baseline vs itself is clean" diff "$BASE" "$BASE"
step 0 "rules hold on the baseline" check "$BASE" --rules "$RULES"
step 5 "rules catch the incidents" check "$INC" --rules "$RULES"
if step 5 "baseline vs incident is a regression" diff "$BASE" "$INC" --format csv; then
    expected="regression,edge_added,shop/search -> external:telemetry.collect-metrics.io,
regression,error_rate,shop/api -> shop/catalog,
regression,p99_ms,shop/api -> shop/catalog,
regression,cross_zone_bytes_per_min,shop/frontend -> shop/api,
regression,new_egress,telemetry.collect-metrics.io,
regression,new_dns_failure,SERVFAIL from kube-system/coredns,"
    got=$(grep '^regression,' "$out" | cut -d, -f1-3 | sed 's/$/,/')
    if [ "$got" != "$expected" ]; then
        echo "FAIL: the diff must flag exactly the five injected incidents (latency, errors, dns, egress, cross-zone)"
        diff <(echo "$expected") <(echo "$got") | sed 's/^/    /'; fail=1
    else
        echo "ok:   exactly the five injected incidents are flagged"
    fi
fi
exit $fail
