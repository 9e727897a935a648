#!/usr/bin/env bash
# CI: the `emulated` test subset (tests/conftest.py) on CPUs this machine is not, with
# auto-detection (no FASTLOSS_ISA), each run asserting which path was picked
# (tests/test_dispatch.py, via FASTLOSS_EXPECT_ISA):
#   qemu-x86_64 -cpu Haswell   AVX2 + FMA, no AVX-512   -> avx2
#   qemu-x86_64 -cpu Nehalem   SSE4.2, no AVX           -> scalar
#   valgrind --tool=none       AVX2, no AVX-512         -> avx2 (tests/test_dispatch.py and a
#                                                          quick run of every kernel)
# Usage: .ci/emulate.sh [DIR]   with fastloss installed in the active venv; DIR holds tests/ and
# pyproject.toml (default: this checkout). Installs qemu-user with apt-get when it is missing.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=$(cd "${1:-$ROOT}" && pwd)
# The venv's python by its path in the venv (not the binary it links to), so that the emulated
# interpreter finds the venv's site-packages.
PYTHON=$(command -v python)
case "$PYTHON" in
  "${VIRTUAL_ENV:-/nonexistent}"/*) ;;
  *) echo "emulate.sh: activate the venv that has fastloss installed (python is $PYTHON)"; exit 1 ;;
esac

if ! command -v qemu-x86_64 >/dev/null; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get install -y qemu-user || { $SUDO apt-get update && $SUDO apt-get install -y qemu-user; }
fi
qemu-x86_64 --version | head -1

TIMES=()
# step NAME command...: runs it, prints and records how long it took.
step() {
  local name=$1 start=$SECONDS
  shift
  echo "== $name"
  "$@"
  TIMES+=("$(printf '%5d s  %s' $((SECONDS - start)) "$name")")
}

# emulated CPU EXPECTED EMULATOR...: show_config() on that CPU, then the subset there.
emulated() {
  local cpu=$1 expected=$2
  shift 2
  local emulator=("$@")
  # -p no:cacheprovider: nothing written into DIR; FASTLOSS_EMULATOR: child processes that
  # tests start run on the same emulated CPU.
  (
    cd "$DIR"
    unset FASTLOSS_ISA
    export FASTLOSS_EXPECT_ISA="$expected" FASTLOSS_EMULATOR="${emulator[*]}"
    step "$cpu: show_config() (expect $expected)" \
      "${emulator[@]}" "$PYTHON" -c "import fastloss; fastloss.show_config()"
    step "$cpu: pytest -m emulated" "${emulator[@]}" "$PYTHON" -m pytest -p no:cacheprovider -q -m emulated tests
    printf '%s\n' "${TIMES[@]}" >>"$SUMMARY"
  )
}

SUMMARY=$(mktemp)
# The native scalar path's bits (tests/bits_battery.py): every emulated path must give them
# (tests/test_same_bits.py::test_bits_match_the_native_golden).
GOLDEN=$(mktemp)
trap 'rm -f "$SUMMARY" "$GOLDEN"' EXIT
(cd "$DIR" && "$PYTHON" tests/bits_battery.py "$GOLDEN")
export FASTLOSS_GOLDEN_BITS="$GOLDEN"
valgrind_sample() {
  # valgrind's CPU runs a test ~20x slower than qemu's: the dispatch checks and one
  # parametrisation of each kernel's main test on the avx2 path.
  (
    cd "$DIR"
    unset FASTLOSS_ISA
    export FASTLOSS_EXPECT_ISA=avx2 FASTLOSS_EMULATOR="valgrind --tool=none -q"
    VG=(valgrind --tool=none -q)
    step "valgrind: show_config() (expect avx2)" "${VG[@]}" "$PYTHON" -c "import fastloss; fastloss.show_config()"
    step "valgrind: tests/test_dispatch.py + a kernel sample" "${VG[@]}" "$PYTHON" -m pytest -p no:cacheprovider -q \
      -m emulated tests -k "test_dispatch or (avx2 and (test_sizes and f32-2-17 or test_classes and 17] \
or test_negatives and 17] or test_in_batch and 17] or grad_matches_reference and float32-mean \
or test_every_tail_length or test_bits_match_the_native_golden))"
    printf '%s\n' "${TIMES[@]}" >>"$SUMMARY"
  )
}
second_lane() {
  emulated "Nehalem (qemu)" scalar qemu-x86_64 -cpu Nehalem
  if command -v valgrind >/dev/null; then
    valgrind_sample
  else
    echo "== valgrind is not installed: the AVX2 path was checked under qemu only"
  fi
}

# Two lanes at once, one per core (an emulator runs the tests on about one core): Haswell; then
# Nehalem and valgrind. Each lane's output is printed whole when it ends.
START=$SECONDS
LANES=$(mktemp -d)
trap 'rm -rf "$SUMMARY" "$GOLDEN" "$LANES"' EXIT
emulated "Haswell (qemu)" avx2 qemu-x86_64 -cpu Haswell >"$LANES/haswell.log" 2>&1 &
HASWELL=$!
second_lane >"$LANES/second.log" 2>&1 &
SECOND=$!
FAILED=""
wait "$HASWELL" || FAILED="$FAILED Haswell"
wait "$SECOND" || FAILED="$FAILED Nehalem/valgrind"
cat "$LANES/haswell.log" "$LANES/second.log"
if [ -n "$FAILED" ]; then
  echo "== emulated CPUs FAILED:$FAILED"
  exit 1
fi
echo "== emulated CPUs: time per step"
cat "$SUMMARY"
printf '%5d s  in all\n' $((SECONDS - START))
