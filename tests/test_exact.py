"""Exact reductions (SPEC.md, "Exact reductions"): sums are exact and rounded once, so they give the
same bits for any thread count, layout and CPU path; for float32, float16 and integer MSE/MAE
the "sum" is the correctly rounded true sum. References: fractions.Fraction sums (exact), and
math.fsum (correctly rounded) where Fraction would be slow."""

from __future__ import annotations

import math
from fractions import Fraction

import fastloss
import numpy as np
import pytest
from conftest import to_layout

LOSSES = {"mse": fastloss.mse, "mae": fastloss.mae}


def exact_element(loss: str, p: float, t: float) -> Fraction:
    d = Fraction(p) - Fraction(t)
    return d * d if loss == "mse" else abs(d)


def exact_sum(loss: str, pred: np.ndarray, target: np.ndarray, weight=None) -> Fraction:
    p = pred.astype(np.float64).reshape(len(pred), -1)
    t = target.astype(np.float64).reshape(len(target), -1)
    total = Fraction(0)
    for i in range(p.shape[0]):
        row = sum((exact_element(loss, a, b) for a, b in zip(p[i], t[i], strict=True)), Fraction(0))
        total += row if weight is None else row * Fraction(float(weight[i]))
    return total


def wide_range(rng, shape, dtype):
    """Values spread over many binades of the dtype, both signs, with zeros and exact ties."""
    finfo = np.finfo(dtype) if np.dtype(dtype).kind == "f" else None
    if finfo is None:
        return rng.integers(-(2**30), 2**30, size=shape).astype(dtype)
    low, high = (-14, 14) if dtype == np.float16 else (-60, 60)
    mantissa = rng.uniform(1, 2, size=shape) * rng.choice([-1, 1], size=shape)
    values = mantissa * 2.0 ** rng.integers(low, high, size=shape)
    values.flat[::17] = 0.0
    return values.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int64, np.int32])
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_sum_is_the_correctly_rounded_true_sum(isa, loss, dtype):
    rng = np.random.default_rng(5)
    for shape in [(1,), (7,), (33, 17), (600,), (64, 33)]:
        pred, target = wide_range(rng, shape, dtype), wide_range(rng, shape, dtype)
        if np.dtype(dtype).kind == "i" and loss == "mse":
            pred, target = pred // 2**5, target // 2**5  # squares (up to 2**52) exact in float64
        truth = exact_sum(loss, pred, target)
        got = LOSSES[loss](pred, target, reduction="sum")
        assert got == float(truth), f"{shape}: {got!r} vs the correctly rounded {float(truth)!r}"
        n = pred.size
        assert LOSSES[loss](pred, target, reduction="mean") == float(truth) / n
        assert LOSSES[loss](pred, target, reduction="batchmean") == float(truth) / shape[0]


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_weighted_sum_is_the_correctly_rounded_true_sum(isa, loss):
    rng = np.random.default_rng(6)
    for shape in [(5, 3), (40, 70), (3, 20000)]:
        pred = wide_range(rng, shape, np.float32)
        target = wide_range(rng, shape, np.float32)
        weight = rng.uniform(0, 3, size=shape[0])
        truth = float(exact_sum(loss, pred, target, weight))
        assert LOSSES[loss](pred, target, reduction="sum", sample_weight=weight) == truth


def test_heavy_cancellation_free_sum_of_huge_and_tiny_terms(isa):
    # 1e30 next to 1e-30 squared terms: a float64 running sum loses every tiny term.
    pred = np.array([1e15, 1e-15] * 500 + [-1e15], np.float32)
    target = np.zeros_like(pred)
    truth = exact_sum("mse", pred, target)
    assert fastloss.mse(pred, target, reduction="sum") == float(truth)
    d = pred.astype(np.float64)
    assert fastloss.mse(pred, target, reduction="sum") == math.fsum((d * d).tolist())


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_same_bits_for_every_thread_count_layout_and_path(loss, dtype, restore_threads):
    rng = np.random.default_rng(7)
    pred = (rng.standard_normal((3000, 301)) * 10.0 ** rng.integers(-8, 8, size=(3000, 1))).astype(dtype)
    target = rng.standard_normal((3000, 301)).astype(dtype)
    weight = rng.uniform(0, 2, size=3000)
    results = set()
    for isa in fastloss._core.available_isas():
        fastloss._core.set_active_isa(isa)
        for threads in (1, 2, 3, 7):
            fastloss.set_num_threads(threads)
            for layout in ("contiguous", "fortran", "strided", "reversed"):
                p, t = to_layout(pred, layout), to_layout(target, layout)
                results.add(
                    (
                        LOSSES[loss](p, t, reduction="sum"),
                        LOSSES[loss](p, t, reduction="mean", sample_weight=weight),
                    )
                )
    fastloss._core.set_active_isa(fastloss._core.available_isas()[-1])
    assert len(results) == 1, results
    if dtype == np.float32:
        d = pred.astype(np.float64) - target.astype(np.float64)
        e = d * d if loss == "mse" else np.abs(d)
        assert results.pop()[0] == math.fsum(e.ravel().tolist())


def test_row_splits_give_the_same_bits():
    # The same rows in one call or spread over the rows of a larger call: the order of the terms
    # changes, the sum does not.
    rng = np.random.default_rng(8)
    pred = rng.standard_normal((1000, 37)).astype(np.float32)
    target = rng.standard_normal((1000, 37)).astype(np.float32)
    whole = fastloss.mse(pred, target, reduction="sum")
    permuted = rng.permutation(1000)
    assert fastloss.mse(pred[permuted], target[permuted], reduction="sum") == whole
    assert fastloss.mse(pred.T.copy(), target.T.copy(), reduction="sum") == whole


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_special_values(isa, loss):
    f = LOSSES[loss]
    assert math.isnan(f(np.array([1.0, np.nan]), np.zeros(2), reduction="sum"))
    assert f(np.array([1.0, np.inf]), np.zeros(2), reduction="sum") == math.inf
    big = np.full(4, 1e308)
    expected = math.inf
    # the elements overflow (mse) or their sum does (mae)
    assert f(big, -big, reduction="sum") == expected
    # both |.| and ^2 of +-inf are +inf
    assert f(np.array([np.inf, -np.inf]), np.zeros(2), reduction="sum") == math.inf
    assert f(np.zeros(3), np.zeros(3), reduction="sum") == 0.0
    assert math.copysign(1.0, f(np.zeros(3), np.zeros(3), reduction="sum")) == 1.0
