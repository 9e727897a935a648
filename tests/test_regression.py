"""fastloss.mse / fastloss.mae against the float64 reference (and PyTorch where installed).

Tolerances (reference.REGRESSION_RTOL): float32 (and float16, computed in float32) within 1e-6
relative of the float64 reference, elementwise for "none" and for every reduction; float64 and
integer/bool inputs (computed in float64) within 1e-12 relative.
"""

from __future__ import annotations

import fastloss
import numpy as np
import pytest
from conftest import SIZES, to_layout
from reference import REGRESSION_RTOL, assert_rel_close, computation_dtype, mae_ref, mse_ref

LOSSES = {"mse": (fastloss.mse, mse_ref), "mae": (fastloss.mae, mae_ref)}
REDUCTIONS = ("none", "sum", "mean", "batchmean")


def make_pair(rng, shape, dtype):
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5, rng.random(shape) < 0.5
    if dtype.kind in "iu":
        lo = 0 if dtype.kind == "u" else -50
        return (rng.integers(lo, 50, shape).astype(dtype), rng.integers(lo, 50, shape).astype(dtype))
    return (rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype))


def make_weight(rng, n):
    w = rng.random(n) * 3.0
    if n > 2:
        w[1] = 0.0  # a zero weight is allowed and must drop the row
    return w


def check(loss, pred, target, reduction, sample_weight=None):
    func, ref_func = LOSSES[loss]
    kwargs = {} if sample_weight is None else {"sample_weight": sample_weight}
    got = func(pred, target, reduction=reduction, **kwargs)
    ref = ref_func(pred, target, reduction, sample_weight)
    comp = computation_dtype(np.asarray(pred).dtype, np.asarray(target).dtype)
    if reduction == "none":
        assert isinstance(got, np.ndarray)
        assert got.dtype == comp, f"'none' output dtype {got.dtype}, expected {comp}"
        assert got.shape == np.shape(pred)
    else:
        assert type(got) is float, f"reduction {reduction!r} returned {type(got).__name__}"
    assert_rel_close(got, ref, REGRESSION_RTOL[comp], f"{loss} reduction={reduction}")
    return got


# ---------------------------------------------------------------------------------------------
# hand-computed values: the reference itself is not trusted blindly


@pytest.mark.parametrize(
    "loss, reduction, expected",
    [
        ("mse", "sum", 1.0 + 4.0 + 9.0 + 16.0),
        ("mse", "mean", 30.0 / 4.0),
        ("mse", "batchmean", 30.0 / 2.0),
        ("mae", "sum", 10.0),
        ("mae", "mean", 2.5),
        ("mae", "batchmean", 5.0),
    ],
)
def test_known_values(isa, loss, reduction, expected):
    pred = np.array([[1.0, -2.0], [3.0, 4.0]])
    target = np.zeros((2, 2))
    assert LOSSES[loss][0](pred, target, reduction=reduction) == expected


@pytest.mark.parametrize("loss", LOSSES)
def test_known_values_weighted(isa, loss):
    pred = np.array([[1.0, -2.0], [3.0, 4.0], [5.0, 5.0]])
    target = np.zeros((3, 2))
    w = np.array([2.0, 0.5, 0.0])
    func = LOSSES[loss][0]
    if loss == "mse":
        total = 2.0 * (1 + 4) + 0.5 * (9 + 16)  # 22.5
    else:
        total = 2.0 * (1 + 2) + 0.5 * (3 + 4)  # 9.5
    assert func(pred, target, reduction="sum", sample_weight=w) == total
    assert func(pred, target, reduction="mean", sample_weight=w) == total / (2.5 * 2)
    assert func(pred, target, reduction="batchmean", sample_weight=w) == total / 2.5
    none = func(pred, target, reduction="none", sample_weight=w)
    np.testing.assert_array_equal(none[2], [0.0, 0.0])
    assert none[0, 1] == (8.0 if loss == "mse" else 4.0)


def test_default_reduction_is_mean(isa):
    pred = np.array([1.0, 2.0, 4.0])
    target = np.array([0.0, 0.0, 0.0])
    assert fastloss.mse(pred, target) == 21.0 / 3.0
    assert fastloss.mae(pred, target) == 7.0 / 3.0


def test_mae_of_equal_inputs_is_zero(isa):
    a = np.linspace(-3, 3, 17)
    assert fastloss.mae(a, a, reduction="sum") == 0.0
    assert fastloss.mse(a, a, reduction="sum") == 0.0


# ---------------------------------------------------------------------------------------------
# every loss x reduction x size x weighting, float32 and float64


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("ndim", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("loss", LOSSES)
def test_sizes(isa, loss, dtype, ndim, size, weighted):
    rng = np.random.default_rng(size * 7 + ndim)
    shape = (size,) if ndim == 1 else (3, size)
    pred, target = make_pair(rng, shape, dtype)
    w = make_weight(rng, shape[0]) if weighted else None
    for reduction in REDUCTIONS:
        check(loss, pred, target, reduction, w)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("n", [1, 17, 1000])
@pytest.mark.parametrize("loss", LOSSES)
def test_rows_straddle_threads(isa, loss, n, reduction, weighted):
    # many short rows: row weights must line up with rows however the work is split
    rng = np.random.default_rng(n)
    pred, target = make_pair(rng, (n, 5), np.float64)
    w = make_weight(rng, n) if weighted else None
    check(loss, pred, target, reduction, w)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", LOSSES)
def test_three_dims(isa, loss, reduction):
    rng = np.random.default_rng(3)
    pred, target = make_pair(rng, (4, 5, 6), np.float32)
    check(loss, pred, target, reduction)
    check(loss, pred, target, reduction, make_weight(rng, 4))


# ---------------------------------------------------------------------------------------------
# dtypes: float16 computed in float32; integers and bools in float64


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "dtype",
    [np.float16, np.int8, np.int32, np.int64, np.uint8, np.bool_],
    ids=["f16", "i8", "i32", "i64", "u8", "bool"],
)
@pytest.mark.parametrize("loss", LOSSES)
def test_dtypes(isa, loss, dtype, reduction, weighted):
    rng = np.random.default_rng(11)
    pred, target = make_pair(rng, (9, 7), dtype)
    w = make_weight(rng, 9) if weighted else None
    check(loss, pred, target, reduction, w)


@pytest.mark.parametrize("loss", LOSSES)
def test_uint8_difference_does_not_wrap(isa, loss):
    # 0 - 255 must be -255 (float64), not 1 (uint8 wrap-around)
    pred = np.array([0, 255], dtype=np.uint8)
    target = np.array([255, 0], dtype=np.uint8)
    expected = 255.0**2 if loss == "mse" else 255.0
    assert LOSSES[loss][0](pred, target, reduction="mean") == expected


@pytest.mark.parametrize("loss", LOSSES)
def test_python_lists(isa, loss):
    # anything np.asarray accepts; Python floats/ints -> float64
    got = LOSSES[loss][0]([[1.5, 2.0]], [[0.5, 0.0]], reduction="none")
    assert got.dtype == np.float64
    expected = [[1.0, 4.0]] if loss == "mse" else [[1.0, 2.0]]
    np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------------------------------------
# layouts: strided, reversed, Fortran, read-only, big-endian; all arguments at once


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("loss", LOSSES)
def test_layouts(isa, layout, loss, dtype):
    rng = np.random.default_rng(5)
    pred, target = make_pair(rng, (9, 17), dtype)
    w = make_weight(rng, 9)
    for reduction in REDUCTIONS:
        check(loss, layout(pred), layout(target), reduction)
        check(loss, layout(pred), layout(target), reduction, layout(w))


@pytest.mark.parametrize("loss", LOSSES)
def test_layouts_three_dims(isa, layout, loss):
    rng = np.random.default_rng(6)
    pred, target = make_pair(rng, (3, 4, 9), np.float32)
    for reduction in REDUCTIONS:
        check(loss, layout(pred), layout(target), reduction, make_weight(rng, 3))


@pytest.mark.parametrize("loss", LOSSES)
def test_mixed_layouts(isa, loss):
    # pred and target in different layouts in one call
    rng = np.random.default_rng(8)
    pred, target = make_pair(rng, (33, 65), np.float64)
    for a, b in [("strided", "reversed"), ("fortran", "contiguous"), ("bigendian", "readonly")]:
        check(loss, to_layout(pred, a), to_layout(target, b), "none")
        check(loss, to_layout(pred, a), to_layout(target, b), "sum")


@pytest.mark.parametrize("loss", LOSSES)
def test_inputs_are_not_modified(isa, loss):
    rng = np.random.default_rng(9)
    pred, target = make_pair(rng, (8, 9), np.float32)
    w = make_weight(rng, 8)
    copies = [pred.copy(), target.copy(), w.copy()]
    for reduction in REDUCTIONS:
        LOSSES[loss][0](pred, target, reduction=reduction, sample_weight=w)
    for before, after in zip(copies, [pred, target, w], strict=False):
        np.testing.assert_array_equal(before, after)


# ---------------------------------------------------------------------------------------------
# NaN / inf propagate as IEEE says, and never crash


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("loss", LOSSES)
def test_nan_inf_propagate(isa, loss, dtype):
    rng = np.random.default_rng(10)
    pred, target = make_pair(rng, (5, 33), dtype)
    pred[1, 3] = np.nan
    target[2, 32] = np.nan
    pred[3, 0] = np.inf
    pred[4, 7] = -np.inf
    target[4, 7] = -np.inf  # inf - inf -> nan
    func, ref_func = LOSSES[loss]
    none = func(pred, target, reduction="none")
    ref = ref_func(pred, target, "none")
    assert np.isnan(none[1, 3]) and np.isnan(none[2, 32]) and np.isnan(none[4, 7])
    assert none[3, 0] == np.inf
    assert_rel_close(none, ref, REGRESSION_RTOL[np.dtype(dtype)], "none with nan/inf")
    for reduction in ("sum", "mean", "batchmean"):
        assert np.isnan(func(pred, target, reduction=reduction))
    # only inf: the reductions are +inf
    pred2, target2 = make_pair(rng, (5, 33), dtype)
    pred2[0, 5] = np.inf
    for reduction in ("sum", "mean", "batchmean"):
        assert func(pred2, target2, reduction=reduction) == np.inf


@pytest.mark.parametrize("loss", LOSSES)
def test_float32_overflowing_element_is_inf(isa, loss):
    # |3e38 - (-3e38)| = 6e38 exceeds float32's range: that element is +inf in a float32
    # "none" output, the neighbour is untouched
    pred = np.array([3e38, 1.0], dtype=np.float32)
    target = np.array([-3e38, 0.5], dtype=np.float32)
    none = LOSSES[loss][0](pred, target, reduction="none")
    assert none.dtype == np.float32
    assert none[0] == np.inf and none[1] == (0.25 if loss == "mse" else 0.5)


# ---------------------------------------------------------------------------------------------
# 10^8 float32 elements: the sum keeps 1e-6 relative accuracy


@pytest.mark.slow
def test_float32_sum_of_1e8_elements(isa):
    n = 100_000_000
    block = np.arange(1000, dtype=np.float32) * np.float32(0.001) + np.float32(0.25)
    pred = np.tile(block, n // block.size)  # 400 MB
    target = np.full(n, 0.5, dtype=np.float32)  # 400 MB
    diff = block.astype(np.float64) - 0.5
    exact_sum = float(np.sum(diff * diff)) * (n // block.size)
    exact_abs = float(np.sum(np.abs(diff))) * (n // block.size)
    got = fastloss.mse(pred, target, reduction="sum")
    assert abs(got - exact_sum) / exact_sum < 1e-6, (got, exact_sum)
    got = fastloss.mse(pred, target, reduction="mean")
    assert abs(got - exact_sum / n) / (exact_sum / n) < 1e-6, (got, exact_sum / n)
    got = fastloss.mae(pred, target, reduction="sum")
    assert abs(got - exact_abs) / exact_abs < 1e-6, (got, exact_abs)


# ---------------------------------------------------------------------------------------------
# PyTorch's own losses


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("loss", LOSSES)
def test_against_torch(isa, loss, reduction, dtype):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    rng = np.random.default_rng(12)
    torch_func = F.mse_loss if loss == "mse" else F.l1_loss
    for shape in [(1,), (17,), (33, 9), (4, 3, 65)]:
        pred, target = make_pair(rng, shape, dtype)
        expected = (
            torch_func(torch.from_numpy(pred), torch.from_numpy(target), reduction=reduction).double().numpy()
        )
        got = LOSSES[loss][0](pred, target, reduction=reduction)
        # torch accumulates float32 in float32 here; compare at float32 precision then
        rtol = 1e-12 if dtype == np.float64 else 1e-5
        assert_rel_close(got, expected, rtol, f"torch {loss} {reduction} {shape}")


@pytest.mark.parametrize("loss", LOSSES)
def test_batchmean_against_torch_seed_formula(isa, loss):
    # the seed formula: per-sample sum over the feature vector, averaged over the batch
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(13)
    pred, target = make_pair(rng, (16, 33), np.float64)
    d = torch.from_numpy(pred) - torch.from_numpy(target)
    e = d * d if loss == "mse" else d.abs()
    expected = e.sum(dim=1).mean().item()
    got = LOSSES[loss][0](pred, target, reduction="batchmean")
    assert abs(got - expected) <= 1e-12 * abs(expected)
