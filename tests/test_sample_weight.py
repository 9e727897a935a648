"""cross_entropy(sample_weight=...) (SPEC.md): each row's loss, gradient and share of the
denominators is multiplied by its weight. References: float64 NumPy from the formulas
(tests/reference.py's row losses and gradients, weighted here), scikit-learn's log_loss, and
the unweighted call on rows repeated as many times as an integer weight says."""

from __future__ import annotations

import math

import fastloss
import numpy as np
import pytest
from fastloss import Accumulator
from reference import _ce_rows, cross_entropy_grad_ref, exact_sum

OPTIONS = [
    {},
    {"weight": [0.5, 2.0, 1.0, 3.0]},
    {"ignore_index": 2},
    {"label_smoothing": 0.3, "weight": [1.0, 0.0, 2.0, 1.0]},
]


def weighted_reference(logits, target, w, reduction, weight=None, ignore_index=-100, label_smoothing=0.0):
    rows, _, _, n, _ = _ce_rows(logits, target, weight, ignore_index, label_smoothing)
    total = exact_sum(rows * w)
    if reduction == "sum":
        return total
    if reduction == "batchmean":
        return total / exact_sum(w)
    t = np.asarray(target)
    if t.dtype.kind == "f":
        return total / exact_sum(w)
    keep = t != ignore_index
    cw = np.ones(np.shape(logits)[1]) if weight is None else np.asarray(weight, dtype=np.float64)
    den = exact_sum(w[keep] * cw[t[keep]])
    return total / den if den else math.nan


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean"])
@pytest.mark.parametrize("options", OPTIONS)
def test_index_targets(isa, dtype, reduction, options):
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((33, 4)) * 3).astype(dtype)
    labels = rng.integers(0, 4, size=33)
    w = rng.uniform(0, 2, size=33)
    w[::5] = 0.0
    got = fastloss.cross_entropy(logits, labels, reduction=reduction, sample_weight=w, **options)
    want = weighted_reference(logits, labels, w, reduction, **options)
    assert got == pytest.approx(want, rel=1e-6 if dtype == np.float32 else 1e-13)
    loss, grad = fastloss.cross_entropy(
        logits, labels, reduction=reduction, sample_weight=w, return_grad=True, **options
    )
    assert loss == got
    # the gradient of the sum, row i times w_i, over the reduction's weighted divisor
    g_sum = cross_entropy_grad_ref(logits, labels, "sum", **options)
    divisor = 1.0 if reduction == "sum" else exact_sum(rows_weight(labels, w, reduction, options))
    np.testing.assert_allclose(
        grad,
        g_sum * w[:, None] / divisor,
        rtol=2e-5 if dtype == np.float32 else 1e-11,
        atol=1e-7 if dtype == np.float32 else 1e-14,
    )
    none = fastloss.cross_entropy(logits, labels, reduction="none", sample_weight=w, **options)
    rows, _, _, _, _ = _ce_rows(logits, labels, **options)
    assert none.dtype == dtype
    # float32 row losses are good to a few ulps of their log-sum-exp (about 10 here)
    np.testing.assert_allclose(
        none,
        rows * w,
        rtol=1e-6 if dtype == np.float32 else 1e-13,
        atol=2e-5 if dtype == np.float32 else 1e-13,
    )


def rows_weight(labels, w, reduction, options):
    if reduction == "batchmean":
        return w
    cw = np.asarray(options.get("weight", np.ones(4)), dtype=np.float64)
    keep = labels != options.get("ignore_index", -100)
    return np.where(keep, w * cw[labels], 0.0)


def test_probability_targets_match_scikit_learn_log_loss():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((50, 5))
    labels = rng.integers(0, 5, size=50)
    w = rng.uniform(0, 3, size=50)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    want = sklearn_metrics.log_loss(labels, probabilities, sample_weight=w, labels=range(5))
    assert fastloss.cross_entropy(logits, labels, sample_weight=w) == pytest.approx(want, rel=1e-12)
    onehot = np.eye(5)[labels]
    assert fastloss.cross_entropy(logits, onehot, sample_weight=w) == pytest.approx(want, rel=1e-12)


def test_integer_weights_equal_repeated_rows():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((20, 3))
    labels = rng.integers(0, 3, size=20)
    counts = rng.integers(0, 4, size=20)
    repeated = np.repeat(np.arange(20), counts)
    for reduction in ("sum", "mean"):
        weighted = fastloss.cross_entropy(
            logits, labels, reduction=reduction, sample_weight=counts.astype(float)
        )
        plain = fastloss.cross_entropy(logits[repeated], labels[repeated], reduction=reduction)
        assert weighted == pytest.approx(plain, rel=1e-13)


def test_streaming_with_sample_weights_gives_the_one_call_bits():
    rng = np.random.default_rng(4)
    logits, labels, w = rng.standard_normal((40, 4)), rng.integers(0, 4, size=40), rng.uniform(0, 2, size=40)
    for reduction in ("sum", "mean", "batchmean"):
        acc = Accumulator("cross_entropy", reduction=reduction, weight=[1.0, 2.0, 0.5, 1.0])
        for a, b in [(0, 7), (7, 8), (8, 40)]:
            acc.update(logits[a:b], labels[a:b], sample_weight=w[a:b])
        expected = fastloss.cross_entropy(
            logits, labels, reduction=reduction, weight=[1.0, 2.0, 0.5, 1.0], sample_weight=w
        )
        assert acc.result() == expected


@pytest.mark.parametrize(
    "bad, error",
    [
        ([1.0] * 3, ValueError),
        ([-1.0] + [1.0] * 3, ValueError),
        ([np.nan] * 4, ValueError),
        ([[1.0] * 4], ValueError),
        (["a"] * 4, TypeError),
    ],
)
def test_bad_sample_weight(bad, error):
    with pytest.raises(error, match="sample_weight"):
        fastloss.cross_entropy(np.zeros((4, 3)), [0, 1, 2, 0], sample_weight=bad)


@pytest.mark.parametrize("loss", [fastloss.mse, fastloss.mae])
@pytest.mark.parametrize("cols", [5, 37, 40000])
def test_weight_beyond_float32_range_times_a_zero_loss_is_zero(loss, cols):
    """The fuzzer's finding: a float32 element loss of 0 times a weight of 1.8e308 (no float32)
    was inf * 0 = NaN in the "none" output; the product is taken in float64, as the exact one."""
    rng = np.random.default_rng(3)
    pred = rng.standard_normal((3, cols)).astype(np.float32)
    target = pred.copy()
    target[2] += np.float32(1e-30)
    w = np.array([-0.0, np.finfo(np.float64).max, 1e300])
    out, grad = loss(pred, target, reduction="none", return_grad=True, sample_weight=w)
    expected = w[:, None] * np.abs(pred.astype(np.float64) - target) ** (2 if loss is fastloss.mse else 1)
    assert not np.isnan(out).any()
    assert np.array_equal(out[:2], np.zeros((2, cols), np.float32))
    np.testing.assert_allclose(out[2], expected[2].astype(np.float32), rtol=1e-6)
