#!/usr/bin/env bash
# CI: the NEON path on arm64, under qemu-aarch64, on an x86-64 Debian bookworm machine (root).
#   1. apt-get: qemu-user, the aarch64 cross g++, debootstrap, cmake, make, python3-venv.
#   2. An arm64 sysroot of Debian bookworm's own packages: CPython 3.11, NumPy 1.24, pytest 7.2,
#      hypothesis 6.67, libgomp (debootstrap --foreign only downloads and unpacks the base; every
#      .deb it fetched is then unpacked with dpkg -x, so no second stage runs under emulation).
#   3. fastloss's _core cross-compiled for aarch64 (aarch64-linux-gnu-g++, warnings as errors,
#      the sysroot's Python headers, pybind11 from PyPI in a host venv), checked to be an AArch64
#      ELF holding fastloss::neon code, next to python/fastloss/*.py in a package dir.
#   4. Under `qemu-aarch64 -L ROOT`: show_config() must report the active path `neon`, then
#      `pytest -m emulated` (tests/conftest.py's subset, whole) with FASTLOSS_EXPECT_ISA=neon.
# Prints the time of each step and the total; any failure exits non-zero.
# Usage: .ci/emulate-arm64.sh [WORK]   WORK (default build/arm64) holds the sysroot, the build and
# the test copy; it is deleted and made afresh on each run.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-$SRC/build/arm64}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
ROOT="$WORK/root"
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

TIMES=()
# step NAME function: runs it, prints and records how long it took.
step() {
  local name=$1 start=$SECONDS
  CURRENT=$name
  echo "== $name"
  "$2"
  TIMES+=("$(printf '%5d s  %s' $((SECONDS - start)) "$name")")
}
START=$SECONDS
CURRENT=""
# On failure too: the times so far, then the failing exit code.
report() {
  local rc=$?
  echo "== emulate-arm64: time per step"
  [ ${#TIMES[@]} -eq 0 ] || printf '%s\n' "${TIMES[@]}"
  printf '%5d s  in all%s\n' $((SECONDS - START)) "$([ $rc -eq 0 ] || echo " (FAILED, exit $rc, in: $CURRENT)")"
}
trap report EXIT

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

apt_step() {
  local need=()
  command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
  # libc6-dev-arm64-cross is only a Recommends of the cross gcc.
  command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu libc6-dev-arm64-cross)
  command -v debootstrap >/dev/null || need+=(debootstrap debian-archive-keyring)
  command -v cmake >/dev/null || need+=(cmake)
  command -v make >/dev/null || need+=(make)
  command -v file >/dev/null || need+=(file)
  python3 -c "import ensurepip, venv" 2>/dev/null || need+=(python3-venv)
  if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y --no-install-recommends "${need[@]}" \
      || { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends "${need[@]}"; }
  fi
  qemu-aarch64 --version | head -1
  aarch64-linux-gnu-g++ --version | head -1
  cmake --version | head -1
}

# The sysroot's python, emulated.
PY_ARM64=(qemu-aarch64 -L "$ROOT" "$ROOT/usr/bin/python3.11")

sysroot_step() {
  rm -rf "$ROOT"
  $SUDO debootstrap --foreign --arch=arm64 --variant=minbase \
    --include=python3.11,python3-numpy,python3-pytest,python3-hypothesis,libpython3.11-dev,libgomp1 \
    bookworm "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -30 "$WORK/debootstrap.log"; return 1; }
  # The second stage would run maintainer scripts under emulation; unpacking is all we need.
  find "$ROOT/var/cache/apt/archives" -name '*.deb' -print0 \
    | xargs -0 -n 8 -P "$(nproc)" sh -c 'for d; do dpkg -x "$d" "$0" || exit 255; done' "$ROOT"
  # What libblas3's and liblapack3's postinst (update-alternatives) would link, for NumPy.
  local lib="$ROOT/usr/lib/aarch64-linux-gnu" so
  for so in "$lib"/blas/libblas.so.3 "$lib"/lapack/liblapack.so.3; do
    [ -e "$so" ] && ln -sfn "${so#"$lib"/}" "$lib/$(basename "$so")"
  done
  echo "$(find "$ROOT/var/cache/apt/archives" -name '*.deb' | wc -l) packages unpacked into $ROOT ($(du -sm "$ROOT" | cut -f1) MiB)"
  "${PY_ARM64[@]}" -c "import platform, sys, numpy, pytest, hypothesis; \
print(sys.version.split()[0], platform.machine(), 'numpy', numpy.__version__, 'pytest', pytest.__version__, \
'hypothesis', hypothesis.__version__)"
}

build_step() {
  local build="$WORK/build" venv="$WORK/venv" pkg="$WORK/pkg"
  rm -rf "$build" "$pkg"
  # pybind11 (pyproject's build requirement) from PyPI, in a host venv: headers and CMake config.
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "pybind11>=2.12"
  local ext_suffix version
  ext_suffix=$("${PY_ARM64[@]}" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
  version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$SRC/python/fastloss/_version.py")
  [ -n "$version" ] || { echo "no __version__ in python/fastloss/_version.py"; return 1; }
  cat >"$WORK/aarch64.cmake" <<EOF
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64;-L;$ROOT)
# Debian's python3.11/pyconfig.h includes <aarch64-linux-gnu/python3.11/pyconfig.h>: the sysroot's
# /usr/include, searched after the cross compiler's own (its libc headers win).
set(CMAKE_CXX_FLAGS_INIT "-idirafter $ROOT/usr/include")
EOF
  # CMakeLists.txt needs NumPy neither at build time nor at link time. FindPython's interpreter
  # is the host's (same CPython minor version); the headers are the target's. The module's SOABI
  # from the host interpreter would be x86-64's: the file is renamed to the target's EXT_SUFFIX.
  cmake -S "$SRC" -B "$build" -DCMAKE_TOOLCHAIN_FILE="$WORK/aarch64.cmake" -DCMAKE_BUILD_TYPE=Release \
    -DSKBUILD_PROJECT_NAME=fastloss -DSKBUILD_PROJECT_VERSION="$version" -DFASTLOSS_WERROR=ON \
    -DPython_EXECUTABLE="$venv/bin/python" -DPython_INCLUDE_DIR="$ROOT/usr/include/python3.11" \
    -Dpybind11_DIR="$("$venv/bin/python" -m pybind11 --cmakedir)" >"$WORK/cmake.log" \
    || { cat "$WORK/cmake.log"; return 1; }
  grep -E "OpenMP|Python|pybind11" "$WORK/cmake.log" || true
  cmake --build "$build" -j "$(nproc)"
  local so
  so=$(find "$build" -maxdepth 1 -name '_core*.so' | head -1)
  [ -n "$so" ] || { echo "no _core*.so in $build"; return 1; }
  file "$so"
  file "$so" | grep -q "ELF 64-bit LSB shared object, ARM aarch64" || { echo "not an aarch64 ELF: $so"; return 1; }
  aarch64-linux-gnu-readelf -h "$so" | grep -q "Machine:.*AArch64" || { echo "readelf: not AArch64"; return 1; }
  [ -n "$(find "$build" -path '*fastloss_neon.dir*' -name 'neon.cpp.o')" ] || { echo "no neon object built"; return 1; }
  local neon
  neon=$(aarch64-linux-gnu-readelf -W --syms --demangle "$so" | grep -c "FUNC.*fastloss::neon::" || true)
  echo "fastloss::neon:: function symbols in $(basename "$so"): $neon"
  [ "$neon" -gt 0 ] || { echo "no fastloss::neon code in $so"; return 1; }
  # The package dir, as the wheel lays it out (CMakeLists.txt's install rules).
  mkdir -p "$pkg/fastloss/_bench"
  cp "$SRC"/python/fastloss/*.py "$SRC"/python/fastloss/_core.pyi "$SRC"/python/fastloss/py.typed "$pkg/fastloss/"
  cp "$SRC"/bench/*.py "$pkg/fastloss/_bench/"
  cp "$so" "$pkg/fastloss/_core$ext_suffix"
  echo "package: $pkg/fastloss (_core$ext_suffix, version $version)"
}

# ARM64_K (environment): an optional pytest -k expression to run part of the subset. CI leaves it
# empty: the whole `emulated` subset (every loss, reduction, gradient and tail size, on both the
# scalar and the neon path) takes ~100 s under qemu-aarch64 on 2 cores.
ARM64_K=${ARM64_K-}

tests_step() {
  local run="$WORK/run"
  rm -rf "$run"
  mkdir -p "$run"
  cp -r "$SRC/tests" "$SRC/pyproject.toml" "$run/"
  (
    cd "$run"
    unset FASTLOSS_ISA
    export PYTHONPATH="$WORK/pkg" FASTLOSS_EXPECT_ISA=neon FASTLOSS_EMULATOR="qemu-aarch64 -L $ROOT"
    local config
    config=$("${PY_ARM64[@]}" -c "import fastloss; print('imported from', fastloss.__file__); fastloss.show_config()")
    echo "$config"
    grep -qx "active path: neon" <<<"$config" || { echo "show_config(): the active path is not neon"; exit 1; }
    # The native scalar path's bits, which the neon path must give (tests/test_same_bits.py),
    # when this shell's python has fastloss (CI's venv does).
    if python -c "import fastloss" 2>/dev/null; then
      python "$SRC/tests/bits_battery.py" "$WORK/golden.json"
      export FASTLOSS_GOLDEN_BITS="$WORK/golden.json"
    else
      echo "no native fastloss in $(command -v python): the neon bits are not compared with x86's"
    fi
    local k=()
    [ -z "$ARM64_K" ] || k=(-k "$ARM64_K")
    "${PY_ARM64[@]}" -m pytest -p no:cacheprovider -q -m emulated "${k[@]}" tests
  )
}

step "apt-get" apt_step
step "arm64 sysroot (debootstrap + dpkg -x)" sysroot_step
step "cross-build _core for aarch64" build_step
step "qemu-aarch64: show_config() + pytest -m emulated" tests_step
