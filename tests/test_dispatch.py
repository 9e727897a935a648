"""Which CPU path dispatch picks, checked against what the CPU has.

Auto-detection (no ``FASTLOSS_ISA``) must pick the best path this CPU can run, and list exactly
the compiled paths it can run. "What the CPU has" comes from two places that share no code with
fastloss: NumPy's own runtime CPU detection (``__cpu_features__``, which also checks that the OS
saves the wide registers), and ``FASTLOSS_EXPECT_ISA``, which CI sets when it runs the suite under
an emulated CPU (``.ci/emulate.sh``: ``qemu-x86_64 -cpu Haswell`` expects ``avx2``,
``-cpu Nehalem`` expects ``scalar``). ``FASTLOSS_EMULATOR`` names the emulator command (e.g.
``qemu-x86_64 -cpu Haswell``) so that child processes run on the same emulated CPU; without it a
child runs on the real CPU.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest
from fastloss import _core

# Recorded when pytest imports this file, i.e. before any test runs: the isa fixture switches the
# active path (and restores it), so this is the path import-time auto-detection chose.
ACTIVE_AT_IMPORT = _core.active_isa()
COMPILED = list(_core.compiled_isas())
AVAILABLE = list(_core.available_isas())

FORCED = os.environ.get("FASTLOSS_ISA", "")
EXPECTED = os.environ.get("FASTLOSS_EXPECT_ISA", "")
EMULATOR = shlex.split(os.environ.get("FASTLOSS_EMULATOR", ""))

# NumPy's names (numpy/_core/src/common/npy_cpu_features.h) of what each path needs: the same
# conditions as cpp/dispatch.cpp's checks, written from the instruction sets' definitions.
REQUIRES = {
    "scalar": (),
    "avx2": ("AVX", "AVX2", "FMA3"),
    "avx512": ("AVX", "AVX2", "FMA3", "AVX512F", "AVX512DQ", "AVX512BW", "AVX512VL"),
    "neon": ("ASIMD",),
}


def numpy_cpu_features() -> dict[str, bool] | None:
    """NumPy's runtime CPU detection ({feature: usable}), or None if this NumPy hides it."""
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            features = getattr(__import__(module, fromlist=["_"]), "__cpu_features__", None)
        except ImportError:
            continue
        if isinstance(features, dict) and features:
            return {str(name): bool(value) for name, value in features.items()}
    return None


def paths_the_cpu_has(compiled: list[str], features: dict[str, bool]) -> list[str]:
    """The compiled paths (in their order) whose every required feature is usable."""
    return [name for name in compiled if all(features.get(f, False) for f in REQUIRES[name])]


FEATURES = numpy_cpu_features()
needs_numpy_features = pytest.mark.skipif(
    FEATURES is None, reason="this NumPy does not expose __cpu_features__"
)
not_forced = pytest.mark.skipif(bool(FORCED), reason=f"FASTLOSS_ISA={FORCED} forces the path")


def test_every_compiled_path_has_known_requirements():
    assert set(COMPILED) <= set(REQUIRES), f"add the new path's CPU features to REQUIRES: {COMPILED}"
    assert COMPILED[0] == "scalar" and AVAILABLE[0] == "scalar"


def test_paths_the_cpu_has_reads_the_features():
    """The helper the checks below rely on can tell CPUs apart (so those checks can fail)."""
    x86 = ["scalar", "avx2", "avx512"]
    haswell = {"SSE42": True, "AVX": True, "FMA3": True, "AVX2": True, "AVX512F": False}
    assert paths_the_cpu_has(x86, haswell) == ["scalar", "avx2"]
    assert paths_the_cpu_has(x86, {"SSE42": True, "AVX": False}) == ["scalar"]
    assert paths_the_cpu_has(x86, {**haswell, "FMA3": False}) == ["scalar"]  # AVX2 without FMA
    skylake_x = {**haswell, "AVX512F": True, "AVX512DQ": True, "AVX512BW": True, "AVX512VL": True}
    assert paths_the_cpu_has(x86, skylake_x) == x86
    assert paths_the_cpu_has(x86, {**skylake_x, "AVX512BW": False}) == ["scalar", "avx2"]  # Xeon Phi
    assert paths_the_cpu_has(["scalar", "neon"], {"NEON": True, "ASIMD": True}) == ["scalar", "neon"]


@needs_numpy_features
def test_available_paths_are_the_ones_this_cpu_has():
    assert FEATURES is not None
    expected = paths_the_cpu_has(COMPILED, FEATURES)
    enabled = sorted(name for name, usable in FEATURES.items() if usable)
    assert AVAILABLE == expected, f"NumPy sees {enabled}"


@not_forced
@needs_numpy_features
def test_auto_detection_picks_the_best_path_this_cpu_has():
    assert FEATURES is not None
    assert ACTIVE_AT_IMPORT == paths_the_cpu_has(COMPILED, FEATURES)[-1]
    assert ACTIVE_AT_IMPORT == AVAILABLE[-1]


@not_forced
@pytest.mark.skipif(not EXPECTED, reason="FASTLOSS_EXPECT_ISA is not set (CI sets it on emulated CPUs)")
def test_auto_detection_picks_the_expected_path():
    assert EXPECTED in COMPILED, f"FASTLOSS_EXPECT_ISA={EXPECTED} is not compiled in: {COMPILED}"
    assert ACTIVE_AT_IMPORT == EXPECTED, f"auto-detection picked {ACTIVE_AT_IMPORT}, available {AVAILABLE}"
    # Each x86-64 path needs everything the one before it needs, so a CPU whose best path is
    # EXPECTED runs exactly the paths up to it (on AArch64: scalar, neon).
    assert AVAILABLE == COMPILED[: COMPILED.index(EXPECTED) + 1]


@pytest.mark.skipif(not FORCED, reason="FASTLOSS_ISA is not set")
def test_forced_path_is_the_one_chosen_at_import():
    assert ACTIVE_AT_IMPORT == FORCED


def run_child(code: str, forced: str | None) -> subprocess.CompletedProcess[str]:
    """`code` in a new interpreter on the same (emulated) CPU, with FASTLOSS_ISA=forced."""
    env = {key: value for key, value in os.environ.items() if key != "FASTLOSS_ISA"}
    if forced is not None:
        env["FASTLOSS_ISA"] = forced
    return subprocess.run(
        [*EMULATOR, sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.fixture(scope="module")
def child_runs_on_this_cpu():
    proc = run_child("import fastloss._core as c; print(','.join(c.available_isas()))", None)
    assert proc.returncode == 0, proc.stderr
    if proc.stdout.strip() != ",".join(AVAILABLE):
        pytest.skip(
            f"a child process sees other paths ({proc.stdout.strip()}) than this one "
            f"({','.join(AVAILABLE)}): set FASTLOSS_EMULATOR to the emulator command"
        )


@pytest.mark.parametrize("name", COMPILED)
def test_forcing_a_compiled_path(child_runs_on_this_cpu, name):
    """A path this CPU runs is the one running; one it cannot run is a clear error at import,
    never an illegal instruction (e.g. FASTLOSS_ISA=avx512 on an AVX2-only CPU)."""
    # mean(k^2 for k in 0..16) = 1496 / 17 = 88, exactly: the forced path also computes.
    proc = run_child(
        "import numpy as np, fastloss, fastloss._core as c; print(c.active_isa()); "
        "print(fastloss.mse(np.arange(17.0), np.zeros(17)))",
        name,
    )
    if name in AVAILABLE:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == [name, "88.0"]
    else:
        # returncode 1 is a Python exception; a signal (SIGILL) is a negative returncode.
        assert proc.returncode == 1, (proc.returncode, proc.stderr)
        assert f"FASTLOSS_ISA={name} cannot run on this CPU" in proc.stderr, proc.stderr
