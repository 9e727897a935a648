"""Shared fixtures: every ISA the machine has, and inputs in every memory layout SPEC.md accepts."""

from __future__ import annotations

import numpy as np
import pytest

import fastloss
from fastloss import _core

# Sizes that straddle SIMD lane widths and tails (STYLE.md habit 4).
SIZES = (1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 63, 65, 1000)

LAYOUTS = ("contiguous", "strided", "reversed", "fortran", "readonly", "bigendian")


@pytest.fixture(params=list(_core.available_isas()))
def isa(request):
    """Run the test under one compiled ISA path; restore the previous one afterwards."""
    previous = _core.active_isa()
    _core.set_active_isa(request.param)
    assert _core.active_isa() == request.param
    try:
        yield request.param
    finally:
        _core.set_active_isa(previous)


@pytest.fixture
def restore_threads():
    """Put the thread count back as it was after a test that changes it."""
    previous = fastloss.get_num_threads()
    yield
    fastloss.set_num_threads(previous)


# ---------------------------------------------------------------------------------------------
# layouts: each returns an array equal in value to `a` but laid out differently in memory


def contiguous(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a)


def strided(a: np.ndarray) -> np.ndarray:
    """Every other element along the last axis of a twice-as-wide array (0-d: unchanged)."""
    a = np.asarray(a)
    if a.ndim == 0:
        return a.copy()
    wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
    wide[..., ::2] = a
    wide[..., 1::2] = a  # junk of the right dtype; never read
    out = wide[..., ::2]
    assert not out.flags.c_contiguous or a.size <= 1
    return out


def reversed_(a: np.ndarray) -> np.ndarray:
    """Negative strides on every axis."""
    a = np.asarray(a)
    if a.ndim == 0:
        return a.copy()
    flip = (slice(None, None, -1),) * a.ndim
    out = np.ascontiguousarray(a[flip])[flip]
    assert all(s <= 0 for s in out.strides)
    return out


def fortran(a: np.ndarray) -> np.ndarray:
    return np.asfortranarray(a)


def readonly(a: np.ndarray) -> np.ndarray:
    out = np.array(a, copy=True)
    out.flags.writeable = False
    return out


def bigendian(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a.astype(a.dtype.newbyteorder(">"))


LAYOUT_FUNCS = {
    "contiguous": contiguous,
    "strided": strided,
    "reversed": reversed_,
    "fortran": fortran,
    "readonly": readonly,
    "bigendian": bigendian,
}


def to_layout(a, name: str):
    """Value-preserving copy/view of `a` in layout `name` (None stays None)."""
    if a is None:
        return None
    out = LAYOUT_FUNCS[name](np.asarray(a))
    assert np.array_equal(out, a)
    return out


@pytest.fixture(params=LAYOUTS)
def layout(request):
    """A function that puts an array into one of the layouts SPEC.md accepts."""
    return lambda a: to_layout(a, request.param)
