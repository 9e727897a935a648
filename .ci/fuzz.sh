#!/usr/bin/env bash
# Fuzz the public API in the active venv, which must already have fastloss installed: a fixed
# number of runs (FUZZ_RUNS, default 200000, about 45 s) from a fixed seed, so that a CI run
# repeats exactly what a local run of the same versions did, capped at FUZZ_SECONDS (default
# 120). Exits non-zero on any finding (libFuzzer writes it as crash-<sha1> in $FUZZ_OUT); prints
# the number of executions. A longer search: FUZZ_RUNS=-1 FUZZ_SECONDS=3600 (time only).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install atheris
FUZZ_OUT=${FUZZ_OUT:-build/fuzz}
mkdir -p "$FUZZ_OUT/corpus"
status=0
python tests/fuzz/fuzz_api.py "$FUZZ_OUT/corpus" -runs="${FUZZ_RUNS:-200000}" -max_total_time="${FUZZ_SECONDS:-120}" -seed=20261201 \
  -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$FUZZ_OUT/" \
  2>&1 | tee "$FUZZ_OUT/log.txt" || status=$?
echo "fuzz executions: $(grep -oE 'stat::number_of_executed_units: [0-9]+' "$FUZZ_OUT/log.txt" | grep -oE '[0-9]+$' || echo unknown)"
exit "$status"
