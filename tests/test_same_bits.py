"""Same bits on every CPU path (SPEC.md): every path's outputs equal the scalar path's, bit for
bit (tests/bits_battery.py has the outputs), here in one process, and under an emulated CPU
against the digests of the native scalar path (FASTLOSS_GOLDEN_BITS, written by .ci/emulate.sh
and .ci/emulate-arm64.sh)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from bits_battery import battery, digests
from fastloss import _core


def _battery_on(isa: str) -> dict[str, list[np.ndarray]]:
    previous = _core.active_isa()
    _core.set_active_isa(isa)
    try:
        return battery()
    finally:
        _core.set_active_isa(previous)


def test_every_path_gives_the_scalar_bits():
    reference = _battery_on("scalar")
    others = [isa for isa in _core.available_isas() if isa != "scalar"]
    if not others:
        pytest.skip("only the scalar path runs on this CPU")
    for isa in others:
        got = _battery_on(isa)
        assert got.keys() == reference.keys()
        for name, arrays in reference.items():
            for k, (a, b) in enumerate(zip(got[name], arrays, strict=True)):
                assert a.dtype == b.dtype and a.shape == b.shape, (isa, name, k)
                differ = np.flatnonzero(a.view(np.uint8) != b.view(np.uint8))
                assert differ.size == 0, f"{isa} {name} output {k}: bytes differ at {differ[:8]}"


def test_bits_match_the_native_golden(isa):
    path = os.environ.get("FASTLOSS_GOLDEN_BITS")
    if not path:
        pytest.skip("FASTLOSS_GOLDEN_BITS is not set (the emulated-CPU CI steps set it)")
    with open(path) as f:
        golden = json.load(f)
    got = digests(battery())
    assert got.keys() == golden.keys()
    differ = sorted(name for name in golden if got[name] != golden[name])
    assert not differ, f"{isa} differs from the native scalar path in {differ}"
