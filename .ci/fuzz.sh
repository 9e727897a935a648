#!/usr/bin/env bash
# Fuzz the public API for a bounded time (default 60 s) in the active venv, which must already
# have fastloss installed. Exits non-zero on any finding (libFuzzer writes it as crash-<sha1> in
# $FUZZ_OUT); prints the number of executions. FUZZ_SECONDS overrides the time.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install atheris
FUZZ_OUT=${FUZZ_OUT:-build/fuzz}
mkdir -p "$FUZZ_OUT/corpus"
status=0
python tests/fuzz/fuzz_api.py "$FUZZ_OUT/corpus" -max_total_time="${FUZZ_SECONDS:-60}" -seed=20261201 \
  -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$FUZZ_OUT/" \
  2>&1 | tee "$FUZZ_OUT/log.txt" || status=$?
echo "fuzz executions: $(grep -oE 'stat::number_of_executed_units: [0-9]+' "$FUZZ_OUT/log.txt" | grep -oE '[0-9]+$' || echo unknown)"
exit "$status"
