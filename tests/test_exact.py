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


# The one-call pass (mse/mae with a scalar reduction) sums with bounded errors and settles on the
# correctly rounded value, or redoes the sum exactly when the bound straddles a rounding boundary;
# the streaming API's states are formed exactly. Both must give the same bits.


def one_call_inputs(rng, dtype):
    """Inputs for both passes: ordinary values, a wide exponent range, differences inexact in
    float64 (exponents more than 29 apart), and for float64 infinities and NaN."""
    for n in (1, 31, 32, 33, 64, 95, 1000, 16384 + 17, 40000):
        pred = rng.standard_normal(n).astype(dtype)
        target = rng.standard_normal(n).astype(dtype)
        yield pred, target
        wide = wide_range(rng, n, dtype)
        yield wide, wide_range(rng, n, dtype)
        far = pred.copy()
        far[rng.integers(0, n, size=max(1, n // 50))] = dtype(2.0**-40)  # vs targets near 1
        yield far, target
        if dtype == np.float64 and n > 1:
            special = pred.copy()
            special[rng.integers(0, n)] = rng.choice([np.inf, -np.inf, np.nan, 1e200])
            yield special, target


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_one_call_pass_gives_the_exact_state_bits(isa, loss, dtype):
    rng = np.random.default_rng(12)
    for pred, target in one_call_inputs(rng, dtype):
        for rows in (1, pred.size if pred.size % 2 else pred.size // 2):
            p, t = pred.reshape(rows, -1), target.reshape(rows, -1)
            weight = rng.uniform(0.1, 3, size=rows)
            for w in (None, weight):
                acc = fastloss.Accumulator(loss, reduction="sum")
                acc.update(p, t, sample_weight=w)
                exact, fast = acc.result(), LOSSES[loss](p, t, reduction="sum", sample_weight=w)
                assert np.float64(fast).tobytes() == np.float64(exact).tobytes(), (p.shape, w is None)
                if dtype == np.float32 and pred.size <= 1000 and (w is None or rows < 100):
                    assert fast == float(exact_sum(loss, p, t, w))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_sum_on_a_rounding_boundary_takes_the_exact_pass(isa, dtype):
    # 64 ones, then 128 terms of 2^-54, then 64 of 2^-110, in every lane of every path: the fast
    # pass's low lanes hold the 2^-54 terms exactly and lose the 2^-110 ones, so its value is
    # 64 + 2^-47, a tie between 64 and 64 + 2^-46 that rounds to 64; the true sum is above the tie.
    # Only the exact pass, taken because the error bound straddles the tie, gives 64 + 2^-46.
    pred = np.array([1.0] * 64 + [2.0**-27] * 128 + [2.0**-55] * 64, dtype)
    target = np.zeros_like(pred)
    truth = exact_sum("mse", pred, target)
    assert float(truth) == 64 + 2.0**-46
    assert fastloss.mse(pred, target, reduction="sum") == 64 + 2.0**-46
    # The same sum padded with zero pairs beyond the size where threads start: the other pass
    # (the superaccumulator with a bound, settled).
    padded = np.concatenate([pred, np.zeros(40000, dtype)])
    assert fastloss.mse(padded, np.zeros_like(padded), reduction="sum") == 64 + 2.0**-46


# Sums on and next to a rounding boundary, below and above the size where threads start (the two
# bounded passes): a tie (rounded to even, from an odd and from an even neighbour), just above and
# just below it, with the deciding elements at the start, the middle or the tail of the array.
# Each element loss is exact (target 0), so the true sums are known.
BOUNDARY_TERMS = {
    # loss: (the base: an odd neighbour, an even one), the terms that add half an ulp (2^52's is
    # 1/2) exactly, just above it, and just below it
    "mse": (
        ([2.0**26, 1.0], [2.0**26]),
        {
            "tie": [0.5, 0.5],
            "above": [0.5, 0.5, 2.0**-30],
            "below": [0.5, 0.5 - 2.0**-25],
        },
    ),
    "mae": (
        ([2.0**52, 1.0], [2.0**52]),
        {
            "tie": [0.25, 0.25],
            "above": [0.25, 0.25, 2.0**-60],
            "below": [0.25, 0.25 - 2.0**-26],
        },
    ),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("n", [5, 31, 33, 256, 4097, 40000])
def test_sums_on_rounding_boundaries(isa, loss, n, dtype):
    bases, extras = BOUNDARY_TERMS[loss]
    for base in bases:
        for kind, extra in extras.items():
            terms = base + extra
            for start in (0, (n - len(terms)) // 2, n - len(terms)):
                pred = np.zeros(n, dtype)
                pred[start : start + len(terms)] = terms
                target = np.zeros(n, dtype)
                exact = sum((exact_element(loss, float(v), 0.0) for v in terms), Fraction(0))
                if kind == "tie":
                    assert exact - (2**52 + len(base) - 1) == Fraction(1, 2)
                truth = float(exact)
                got = LOSSES[loss](pred, target, reduction="sum")
                assert got == truth, (kind, base, start)
                acc = fastloss.Accumulator(loss, reduction="sum")
                acc.update(pred, target)
                assert acc.result() == truth


# Cross-entropy and InfoNCE: the same bits for every layout and thread count (on each path; equal
# bits across paths is "Same bits on every CPU path"). Every layout is read one way: rows with
# unit stride, others copied first.

CE_LAYOUTS = ("contiguous", "fortran", "strided", "reversed")


def _bits(value) -> bytes:
    return np.ascontiguousarray(value).tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_same_bits_for_every_layout_and_thread_count(isa, dtype, restore_threads):
    rng = np.random.default_rng(21)
    logits = (rng.standard_normal((301, 37)) * 4).astype(dtype)
    labels = rng.integers(0, 37, 301)
    probs = rng.dirichlet(np.ones(37), size=301).astype(dtype)
    weight = rng.uniform(0.5, 2, size=37)
    results = set()
    for threads in (1, 2, 3):
        fastloss.set_num_threads(threads)
        for layout in CE_LAYOUTS:
            x = to_layout(logits, layout)
            q = to_layout(probs, layout)
            total, grad = fastloss.cross_entropy(
                x, labels, weight=weight, label_smoothing=0.1, return_grad=True
            )
            soft, soft_grad = fastloss.cross_entropy(x, q, reduction="sum", return_grad=True)
            rows = fastloss.cross_entropy(x, labels, reduction="none")
            results.add((total, soft, _bits(grad), _bits(soft_grad), _bits(rows)))
    assert len(results) == 1


def test_info_nce_same_bits_for_every_layout_and_thread_count(isa, restore_threads):
    rng = np.random.default_rng(22)
    q = rng.standard_normal((97, 24)).astype(np.float32)
    k = rng.standard_normal((97, 24)).astype(np.float32)
    neg = rng.standard_normal((300, 24)).astype(np.float32)
    results = set()
    for threads in (1, 2, 3):
        fastloss.set_num_threads(threads)
        for layout in CE_LAYOUTS:
            loss, grads = fastloss.info_nce(
                to_layout(q, layout), to_layout(k, layout), to_layout(neg, layout), return_grad=True
            )
            results.add((loss, *(_bits(g) for g in grads)))
    assert len(results) == 1


def test_cross_entropy_kernel_reads_strided_rows_as_contiguous(isa):
    # Rows whose classes are not adjacent are gathered by the kernel (no longer refused by the
    # binding): the same bits as the rows given contiguously.
    logits = np.random.default_rng(5).standard_normal((40, 7))
    labels = np.arange(40, dtype=np.int64) % 7
    results = set()
    for layout in (
        logits,
        np.asfortranarray(logits),
        logits[::-1][::-1],
        np.ascontiguousarray(logits[:, ::-1])[:, ::-1],
    ):
        out = np.empty(40)
        grad = np.empty((40, 7))
        states = fastloss._core.cross_entropy(layout, labels, None, None, -100, 0.1, out, grad)
        results.add((states, out.tobytes(), grad.tobytes()))
    assert len(results) == 1


# Cross-entropy's one-call sums (plain index targets): row losses known exactly (a row [0, -x]
# with label 1 loses exactly x for x >= 88, where exp(-x) vanishes next to 1; label 0 loses 0),
# summed onto and next to a rounding boundary, below and above the size where threads start.
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [5, 17, 64, 20000])
def test_cross_entropy_sums_on_rounding_boundaries(isa, dtype, rows):
    ulp = 2.0**8  # of 2^60
    cases = {
        "tie-even": ([2.0**60], [ulp / 2], 2.0**60),
        "tie-odd": ([2.0**60, ulp], [ulp / 2], 2.0**60 + 2 * ulp),
        "below": ([2.0**60], [ulp / 2 - 2.0**-16], 2.0**60),
        "above": ([2.0**60], [ulp / 2, 100.0], 2.0**60 + ulp),
    }
    for kind, (base, extra, expected) in cases.items():
        losses = base + extra
        for start in (0, rows - len(losses)):
            logits = np.zeros((rows, 2), dtype)
            logits[:, 1] = -1000.0
            labels = np.zeros(rows, np.int64)
            logits[start : start + len(losses), 1] = [-x for x in losses]
            labels[start : start + len(losses)] = 1
            assert float(sum(map(Fraction, losses), Fraction(0))) == expected
            got = fastloss.cross_entropy(logits, labels, reduction="sum")
            general = fastloss.cross_entropy(
                logits.astype(logits.dtype.newbyteorder(">")), labels, reduction="sum"
            )
            assert got == general == expected, (kind, start)
    # a tiny positive loss above a tie (label 0 of [0, -30]: log(1 + e^-30)) rounds it up
    logits = np.zeros((rows, 2), dtype)
    logits[:, 1] = -1000.0
    labels = np.zeros(rows, np.int64)
    logits[:3, 1] = [-(2.0**60), -(ulp / 2), -30.0]
    labels[:2] = 1
    assert fastloss.cross_entropy(logits, labels, reduction="sum") == 2.0**60 + ulp
