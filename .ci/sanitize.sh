#!/usr/bin/env bash
# CI: build fastloss with AddressSanitizer + UndefinedBehaviorSanitizer (CMake option
# FASTLOSS_SANITIZE) in a fresh venv, run the whole test suite under them (the `isa` fixture runs
# every ISA path this machine has), then a short run with LeakSanitizer on that fails if fastloss
# itself leaks. Any report exits non-zero: UBSan is built with -fno-sanitize-recover.
#
# The interpreter is not instrumented, so the sanitizer runtime is preloaded (it must be the first
# library in the process). CPython and NumPy keep memory until exit by design, so the full run has
# leak detection off and the leak run suppresses their allocations (.ci/lsan.supp), never ours.
#
# Usage: bash .ci/sanitize.sh   (from anywhere; everything lives in build/sanitize*, ignored by git)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
START=$SECONDS

VENV="$ROOT/build/sanitize-venv"
rm -rf "$VENV"
python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"

echo "== build with FASTLOSS_SANITIZE=address,undefined"
pip install -q "torch==2.13.0"
# install.strip=false keeps the symbols, so that reports name fastloss's functions.
pip install -q -e ".[test]" -Cbuild-dir=build/sanitize -Cinstall.strip=false \
  -Ccmake.define.FASTLOSS_SANITIZE=address,undefined -Ccmake.define.FASTLOSS_WERROR=ON
BUILD_SECONDS=$((SECONDS - START))

# The runtimes of the compiler that built the module (CMake's, recorded in its cache). libstdc++
# is preloaded beside libasan: ASan's exception interceptor must find __cxa_throw at startup,
# and python itself does not link libstdc++.
CXX=$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' build/sanitize/CMakeCache.txt)
LIBASAN=$("$CXX" -print-file-name=libasan.so)
LIBSTDCXX=$("$CXX" -print-file-name=libstdc++.so)
[ -f "$LIBASAN" ] && [ -f "$LIBSTDCXX" ] || { echo "no libasan.so / libstdc++.so for $CXX"; exit 1; }
readelf -d build/sanitize/_core*.so | grep -q "libasan" || { echo "_core is not instrumented"; exit 1; }

# Every report is an error: ASan and UBSan (built with -fno-sanitize-recover) abort on the first.
# Reports also go to files, one per process: pytest's capture (and a test's subprocess pipes)
# would otherwise swallow the report of a process that dies.
LOGS="$ROOT/build/sanitize-logs"
rm -rf "$LOGS"
mkdir -p "$LOGS"
# allocator_may_return_null=1: the tests of absurd sizes expect MemoryError, which needs malloc
# to return NULL (ASan's default is to abort on a request above its maximum).
COMMON="abort_on_error=1:print_stacktrace=1:allocator_may_return_null=1:log_path=$LOGS/report"
export UBSAN_OPTIONS="halt_on_error=1:$COMMON"
# Tests that measure the process's memory skip themselves (tests/conftest.py).
export FASTLOSS_SANITIZED=1
# run_asan ASAN_OPTIONS command ...: command with the runtimes preloaded; on failure, the reports.
run_asan() {
  local options=$1
  shift
  if ! env LD_PRELOAD="$LIBASAN $LIBSTDCXX" ASAN_OPTIONS="$options:$COMMON" "$@"; then
    cat "$LOGS"/report.* 2>/dev/null || true
    echo "sanitize: FAILED: $*"
    exit 1
  fi
  # A report is an error or a leak; the warnings allocator_may_return_null prints for the
  # absurd-size tests ("failed to allocate") are the MemoryError those tests expect.
  local reports
  reports=$(grep -lE "ERROR: (Address|Leak)Sanitizer|runtime error:|^SUMMARY: " "$LOGS"/report.* 2>/dev/null || true)
  if [ -n "$reports" ]; then
    # shellcheck disable=SC2086
    cat $reports
    echo "sanitize: reports from a run that exited 0: $*"
    exit 1
  fi
  rm -f "$LOGS"/report.*
}

echo "== the whole suite under ASan + UBSan, every ISA path ($(python -c 'from fastloss import _core; print(*_core.available_isas())'))"
SUITE_START=$SECONDS
# detect_leaks=0: CPython does not free everything at exit by design (the leak run is below).
# Subprocesses started by the tests (CLI, import checks) inherit the preload and the options, so
# they run instrumented too.
run_asan detect_leaks=0 python -m pytest -q -p no:cacheprovider -x
SUITE_SECONDS=$((SECONDS - SUITE_START))

echo "== LeakSanitizer: every loss x option x gradient, many times, on every ISA path"
LEAK_START=$SECONDS
LSAN_OPTIONS="suppressions=$ROOT/.ci/lsan.supp:print_suppressions=0" run_asan detect_leaks=1 python .ci/leak_check.py
LEAK_SECONDS=$((SECONDS - LEAK_START))

echo "sanitize OK: build ${BUILD_SECONDS} s, suite ${SUITE_SECONDS} s, leak run ${LEAK_SECONDS} s, total $((SECONDS - START)) s"
