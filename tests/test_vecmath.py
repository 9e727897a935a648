"""The vector exp and log of every ISA path, swept over their stated ranges against long double
(cpp/simd/vecmath.inl states the bounds; the scalar path runs the same polynomials)."""

from __future__ import annotations

import numpy as np
import pytest
from fastloss import _core

# The bounds stated in cpp/simd/vecmath.inl, plus half an ulp for rounding the reference.
EXP_MAX_ULP = 2.5
LOG_MAX_ULP = 2.5


def ulp_error(got: np.ndarray, want: np.ndarray, dtype) -> float:
    """Max |got - want| in units of the spacing of the correctly rounded result."""
    spacing = np.spacing(np.abs(want.astype(dtype))).astype(np.longdouble)
    return float(np.max(np.abs(got.astype(np.longdouble) - want) / spacing))


@pytest.mark.parametrize(
    "dtype,low,high",
    [(np.float32, -87.0, 88.72), (np.float64, -708.0, 709.78)],
    ids=["f32", "f64"],
)
def test_exp_error_over_its_range(isa, dtype, low, high):
    x = np.linspace(low, high, 1_000_003, dtype=dtype)
    # Also every lane position and the values around 0, where r is tiny.
    x = np.concatenate([x, np.linspace(-1, 1, 10_007, dtype=dtype)])
    got = _core.vector_exp(x)
    assert got.dtype == dtype
    assert ulp_error(got, np.exp(x.astype(np.longdouble)), dtype) <= EXP_MAX_ULP


def test_exp_flushes_below_the_normal_range_and_saturates_above(isa):
    x = np.linspace(-120.0, -87.01, 10_003, dtype=np.float32)
    np.testing.assert_array_equal(_core.vector_exp(x), 0.0)  # true values < 1.7e-38
    special = np.array([np.nan, np.inf, -np.inf, 88.73, 100.0, -104.5, -1e30, 0.0], dtype=np.float32)
    out = _core.vector_exp(special)
    assert np.isnan(out[0])
    np.testing.assert_array_equal(out[1:], [np.inf, 0.0, np.inf, np.inf, 0.0, 0.0, 1.0])


def test_exp_float64_limits(isa):
    special = np.array([np.nan, np.inf, -np.inf, 709.8, 1e300, -746.0, -1e300, 0.0])
    out = _core.vector_exp(special)
    assert np.isnan(out[0])
    np.testing.assert_array_equal(out[1:], [np.inf, 0.0, np.inf, np.inf, 0.0, 0.0, 1.0])


def test_log_error_over_its_range(isa):
    x = np.concatenate(
        [
            np.exp(np.linspace(np.log(np.finfo(np.float64).tiny), 709.78, 1_000_003)),
            np.linspace(0.5, 2.0, 1_000_003),
            1.0 + np.linspace(-1e-6, 1e-6, 10_007),
        ]
    )
    got = _core.vector_log(x)
    assert ulp_error(got, np.log(x.astype(np.longdouble)), np.float64) <= LOG_MAX_ULP


def test_log_special_values(isa):
    out = _core.vector_log(np.array([np.nan, np.inf, 0.0, -0.0, -1.0, -np.inf, 1.0]))
    assert np.isnan(out[0])
    np.testing.assert_array_equal(out[1:4], [np.inf, -np.inf, -np.inf])
    assert np.all(np.isnan(out[4:6]))
    assert out[6] == 0.0


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33])
def test_every_tail_length(isa, n):
    x = np.linspace(-3, 3, n)
    np.testing.assert_allclose(_core.vector_exp(x), np.exp(x), rtol=4e-16)
    np.testing.assert_allclose(
        _core.vector_exp(x.astype(np.float32)), np.exp(x).astype(np.float32), rtol=3e-7
    )
    np.testing.assert_allclose(_core.vector_log(x + 4), np.log(x + 4), rtol=4e-16)


@pytest.mark.parametrize("dtype,underflow", [(np.float32, -87.0), (np.float64, -708.0)], ids=["f32", "f64"])
def test_exp_of_finite_nonpositive_has_exp_bits(isa, dtype, underflow):
    # InfoNCE takes this cheaper exp for tiles of finite logits shifted by their max; its results
    # must be the general exp's, bit for bit, or a tile's sum would depend on its neighbours.
    x = np.concatenate(
        [
            np.linspace(2 * underflow, 0.0, 1_000_003, dtype=dtype),
            np.linspace(underflow - 1, underflow + 1, 10_007, dtype=dtype),
            -np.geomspace(np.finfo(dtype).tiny, 1.0, 10_007, dtype=dtype),
            np.array([-0.0, 0.0, underflow, np.nextafter(dtype(underflow), dtype(-1))], dtype=dtype),
        ]
    )
    got = _core.vector_exp_nonpositive_finite(x)
    assert got.dtype == dtype
    np.testing.assert_array_equal(
        got.view(np.uint32 if dtype == np.float32 else np.uint64),
        _core.vector_exp(x).view(np.uint32 if dtype == np.float32 else np.uint64),
    )
