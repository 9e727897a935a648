"""Property tests (hypothesis) for the four losses, under every ISA: agreement with the float64
reference of tests/reference.py, and invariants that hold whatever the inputs (non-negativity,
row permutations, the 2-way-CE form of InfoNCE, scaling laws).

Examples are drawn from a seed plus sizes and options, so a failure shrinks to a small shape and
prints a reproducer; ``derandomize`` keeps every run the same (STYLE.md: seeds that do not
change between runs). ``FASTLOSS_PROPERTY_EXAMPLES=500`` runs a longer search.
"""

from __future__ import annotations

import os

import fastloss
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import (
    REGRESSION_RTOL,
    ULPS,
    assert_rel_close,
    assert_scaled_close,
    cross_entropy_ref,
    cross_entropy_scale,
    info_nce_ref,
    info_nce_scale,
    mae_ref,
    mse_ref,
)

EXAMPLES = int(os.environ.get("FASTLOSS_PROPERTY_EXAMPLES", "40"))
# The isa fixture is set once per test and holds for every example it runs.
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

DTYPES = (np.float32, np.float64)
REDUCTIONS = ("none", "sum", "mean", "batchmean")
SCALAR_REDUCTIONS = ("sum", "mean", "batchmean")
# Permuting rows changes only the order of the float64 accumulation of the row losses (and
# which lanes of a block a row lands in): relative error of a float32 / float64 sum.
PERMUTATION_RTOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}

seeds = st.integers(0, 2**32 - 1)
dtypes = st.sampled_from(DTYPES)


def _rng(seed):
    return np.random.default_rng(seed)


def _values(rng, shape, dtype, magnitude):
    return (rng.standard_normal(shape) * magnitude).astype(dtype)


def _regression_case(seed, n, f, dtype, magnitude, weighted):
    rng = _rng(seed)
    pred = _values(rng, (n, f), dtype, magnitude)
    target = _values(rng, (n, f), dtype, magnitude)
    weights = rng.random(n) * 3 if weighted else None
    return rng, pred, target, weights


def _ce_case(seed, n, c, dtype, magnitude, ignored, weighted):
    rng = _rng(seed)
    logits = _values(rng, (n, c), dtype, magnitude)
    labels = rng.integers(0, c, n)
    labels[rng.random(n) < ignored] = -100
    weight = rng.random(c) * 2 + 0.01 if weighted else None
    return rng, logits, labels, weight


def _nce_case(seed, n, m, d, dtype, mode):
    rng = _rng(seed)
    q = _values(rng, (n, d), dtype, 1.0)
    k = _values(rng, (n, d), dtype, 1.0)
    negatives = {"unpaired": (m, d), "paired": (n, m, d)}.get(mode)
    neg = None if negatives is None else _values(rng, negatives, dtype, 1.0)
    return rng, q, k, neg


def _nce_kwargs(mode, temperature, normalize, reduction="mean"):
    return dict(
        temperature=temperature,
        reduction=reduction,
        normalize=normalize,
        symmetric=mode == "symmetric",
        negative_mode="paired" if mode == "paired" else "unpaired",
    )


# ---------------------------------------------------------------------------------------------
# agreement with the float64 reference, and non-negativity


@PROPERTY
@given(
    seed=seeds,
    kind=st.sampled_from(["mse", "mae"]),
    n=st.integers(1, 40),
    f=st.integers(1, 20),
    dtype=dtypes,
    magnitude=st.sampled_from([1e-3, 1.0, 1e3]),
    weighted=st.booleans(),
    reduction=st.sampled_from(REDUCTIONS),
)
def test_regression_matches_reference_and_is_nonnegative(
    isa, seed, kind, n, f, dtype, magnitude, weighted, reduction
):
    _, pred, target, weights = _regression_case(seed, n, f, dtype, magnitude, weighted)
    got = getattr(fastloss, kind)(pred, target, reduction=reduction, sample_weight=weights)
    ref = (mse_ref if kind == "mse" else mae_ref)(pred, target, reduction, weights)
    assert_rel_close(got, ref, REGRESSION_RTOL[np.dtype(dtype)], f"{kind} {reduction}")
    assert np.all(np.asarray(got)[~np.isnan(got)] >= 0)


@PROPERTY
@given(
    seed=seeds,
    n=st.integers(1, 30),
    c=st.integers(1, 40),
    dtype=dtypes,
    magnitude=st.sampled_from([1.0, 30.0, 1e4]),
    ignored=st.sampled_from([0.0, 0.3]),
    weighted=st.booleans(),
    smoothing=st.sampled_from([0.0, 0.1, 1.0]),
    reduction=st.sampled_from(REDUCTIONS),
)
def test_cross_entropy_matches_reference_and_hard_labels_are_nonnegative(
    isa, seed, n, c, dtype, magnitude, ignored, weighted, smoothing, reduction
):
    _, logits, labels, weight = _ce_case(seed, n, c, dtype, magnitude, ignored, weighted)
    kwargs = dict(reduction=reduction, weight=weight, label_smoothing=smoothing)
    got = fastloss.cross_entropy(logits, labels, **kwargs)
    ref = cross_entropy_ref(logits, labels, **kwargs)
    assert_scaled_close(got, ref, cross_entropy_scale(logits, labels, **kwargs), dtype, f"ce {reduction}")
    # With non-negative weights every term is w * -log(p), p <= 1: no rounding may make it < 0.
    rows = fastloss.cross_entropy(logits, labels, reduction="none", weight=weight, label_smoothing=smoothing)
    assert np.all(rows >= 0), rows[rows < 0]


@PROPERTY
@given(
    seed=seeds,
    n=st.integers(1, 12),
    m=st.integers(1, 40),
    d=st.integers(1, 20),
    dtype=dtypes,
    mode=st.sampled_from(["in_batch", "symmetric", "unpaired", "paired"]),
    temperature=st.sampled_from([0.05, 0.5, 7.0]),
    normalize=st.booleans(),
    reduction=st.sampled_from(REDUCTIONS),
)
def test_info_nce_matches_reference(isa, seed, n, m, d, dtype, mode, temperature, normalize, reduction):
    _, q, k, neg = _nce_case(seed, n, m, d, dtype, mode)
    kwargs = _nce_kwargs(mode, temperature, normalize, reduction)
    got = fastloss.info_nce(q, k, neg, **kwargs)
    ref = info_nce_ref(q, k, neg, **kwargs)
    assert_scaled_close(got, ref, info_nce_scale(q, k, neg, **kwargs), dtype, f"info_nce {mode} {reduction}")
    rows = fastloss.info_nce(q, k, neg, **{**kwargs, "reduction": "none"})
    assert np.all(rows >= 0), rows[rows < 0]


# ---------------------------------------------------------------------------------------------
# permutation invariance of the reductions (rows permuted; to tolerance: exact reductions are a
# later issue)


def assert_permutation_close(got, ref, dtype, what):
    assert_rel_close(got, ref, PERMUTATION_RTOL[np.dtype(dtype)], what)


@PROPERTY
@given(
    seed=seeds,
    kind=st.sampled_from(["mse", "mae"]),
    n=st.integers(2, 300),
    f=st.integers(1, 9),
    dtype=dtypes,
    weighted=st.booleans(),
    reduction=st.sampled_from(SCALAR_REDUCTIONS),
)
def test_regression_reductions_are_permutation_invariant(isa, seed, kind, n, f, dtype, weighted, reduction):
    rng, pred, target, weights = _regression_case(seed, n, f, dtype, 1.0, weighted)
    perm = rng.permutation(n)
    fn = getattr(fastloss, kind)
    got = fn(
        pred[perm],
        target[perm],
        reduction=reduction,
        sample_weight=None if weights is None else weights[perm],
    )
    assert_permutation_close(got, fn(pred, target, reduction=reduction, sample_weight=weights), dtype, kind)


@PROPERTY
@given(
    seed=seeds,
    n=st.integers(2, 200),
    c=st.integers(1, 30),
    dtype=dtypes,
    soft=st.booleans(),
    weighted=st.booleans(),
    reduction=st.sampled_from(SCALAR_REDUCTIONS),
)
def test_cross_entropy_reductions_are_permutation_invariant(
    isa, seed, n, c, dtype, soft, weighted, reduction
):
    rng, logits, labels, weight = _ce_case(seed, n, c, dtype, 5.0, 0.2, weighted)
    target = rng.dirichlet(np.ones(c), n).astype(dtype) if soft else labels
    perm = rng.permutation(n)
    kwargs = dict(reduction=reduction, weight=weight, label_smoothing=0.1)
    got = fastloss.cross_entropy(logits[perm], target[perm], **kwargs)
    assert_permutation_close(got, fastloss.cross_entropy(logits, target, **kwargs), dtype, "cross_entropy")


@PROPERTY
@given(
    seed=seeds,
    n=st.integers(2, 40),
    m=st.integers(1, 300),
    d=st.integers(1, 16),
    dtype=dtypes,
    mode=st.sampled_from(["in_batch", "symmetric", "unpaired", "paired"]),
    normalize=st.booleans(),
    reduction=st.sampled_from(["sum", "mean"]),
)
def test_info_nce_reductions_are_permutation_invariant(isa, seed, n, m, d, dtype, mode, normalize, reduction):
    """Permuting (query, positive) pairs together, and a shared queue's rows, leaves the set of
    row losses unchanged; in-batch, the permutation moves each label with its row."""
    rng, q, k, neg = _nce_case(seed, n, m, d, dtype, mode)
    perm = rng.permutation(n)
    if mode == "paired":
        permuted_neg = neg[perm][:, rng.permutation(m)]
    elif mode == "unpaired":
        permuted_neg = neg[rng.permutation(m)]
    else:
        permuted_neg = None
    kwargs = _nce_kwargs(mode, 0.2, normalize, reduction)
    got = fastloss.info_nce(q[perm], k[perm], permuted_neg, **kwargs)
    assert_permutation_close(got, fastloss.info_nce(q, k, neg, **kwargs), dtype, f"info_nce {mode}")


# ---------------------------------------------------------------------------------------------
# InfoNCE with one negative is a 2-way cross-entropy


@PROPERTY
@given(
    seed=seeds,
    n=st.integers(1, 30),
    d=st.integers(1, 24),
    dtype=dtypes,
    mode=st.sampled_from(["unpaired", "paired"]),
    temperature=st.sampled_from([0.07, 1.0, 3.0]),
)
def test_info_nce_with_one_negative_is_two_way_cross_entropy(isa, seed, n, d, dtype, mode, temperature):
    rng, q, k, _ = _nce_case(seed, n, 1, d, dtype, None)
    neg = _values(rng, (1, d) if mode == "unpaired" else (n, 1, d), dtype, 1.0)
    got = fastloss.info_nce(q, k, neg, temperature=temperature, negative_mode=mode, reduction="none")
    negative_rows = np.broadcast_to(neg.reshape(-1, d), (n, d))
    # The two logits, formed in float64 from the formula; their CE is the loss with label 0.
    logits = (
        np.stack(
            [np.sum(q.astype(np.float64) * k, axis=1), np.sum(q.astype(np.float64) * negative_rows, axis=1)],
            axis=1,
        )
        / temperature
    )
    labels = np.zeros(n, dtype=np.int64)
    two_way = fastloss.cross_entropy(logits, labels, reduction="none")
    # The float dot products in `got` carry the error info_nce_scale accounts for.
    scale = info_nce_scale(q, k, neg, temperature=temperature, negative_mode=mode, reduction="none")
    assert_scaled_close(got, two_way, scale, dtype, "info_nce vs 2-way ce")
    # ... and log(1 + exp(neg - pos)) written out, independently of either kernel.
    margin = logits[:, 1] - logits[:, 0]
    assert_scaled_close(got, np.logaddexp(0.0, margin), scale, dtype, "info_nce vs softplus")


# ---------------------------------------------------------------------------------------------
# scaling laws


@PROPERTY
@given(
    seed=seeds,
    kind=st.sampled_from(["mse", "mae"]),
    n=st.integers(1, 50),
    f=st.integers(1, 12),
    dtype=dtypes,
    exponent=st.integers(-20, 20),
    reduction=st.sampled_from(SCALAR_REDUCTIONS),
    weighted=st.booleans(),
)
def test_regression_scales_exactly_by_powers_of_two(
    isa, seed, kind, n, f, dtype, exponent, reduction, weighted
):
    """MSE(c p, c t) = c^2 MSE(p, t), MAE(c p, c t) = |c| MAE(p, t): with c a power of two every
    rounding scales with it, so the equality is exact (no overflow or underflow in range)."""
    _, pred, target, weights = _regression_case(seed, n, f, dtype, 1.0, weighted)
    c = 2.0**exponent
    fn = getattr(fastloss, kind)
    base = fn(pred, target, reduction=reduction, sample_weight=weights)
    scaled = fn(pred * dtype(c), target * dtype(c), reduction=reduction, sample_weight=weights)
    factor = c * c if kind == "mse" else c
    assert scaled == base * factor or (np.isnan(scaled) and np.isnan(base))


@PROPERTY
@given(
    seed=seeds,
    kind=st.sampled_from(["mse", "mae"]),
    n=st.integers(1, 50),
    f=st.integers(1, 12),
    c=st.floats(-100.0, 100.0).filter(lambda x: abs(x) > 1e-3),
    reduction=st.sampled_from(SCALAR_REDUCTIONS),
)
def test_regression_scaling_law_for_any_factor(isa, seed, kind, n, f, c, reduction):
    _, pred, target, _ = _regression_case(seed, n, f, np.float64, 1.0, False)
    fn = getattr(fastloss, kind)
    factor = c * c if kind == "mse" else abs(c)
    # c * p and c * t round once each; their difference then differs from c (p - t) by about
    # 2 ulps of max(|c p|, |c t|) relative to |c (p - t)|: bounded here by comparing in float64
    # against the reference of the same scaled inputs and checking that reference's law.
    scaled_ref = (mse_ref if kind == "mse" else mae_ref)(pred * c, target * c, reduction)
    assert_rel_close(
        fn(pred * c, target * c, reduction=reduction), scaled_ref, REGRESSION_RTOL[np.dtype(np.float64)]
    )
    assert_rel_close(scaled_ref, factor * fn(pred, target, reduction=reduction), 1e-9, "scaling law")


@PROPERTY
@given(
    seed=seeds,
    n=st.integers(1, 30),
    c=st.integers(1, 40),
    soft=st.booleans(),
    shift=st.integers(-(10**6), 10**6),
    reduction=st.sampled_from(REDUCTIONS),
)
def test_cross_entropy_is_invariant_to_adding_a_constant_to_a_row(isa, seed, n, c, soft, shift, reduction):
    """softmax(x + s_i) = softmax(x). The logits are multiples of 2**-20 below 2**10 and the
    shifts integers below 2**21, so x + s_i is exact in float64 and only the kernel's rounding
    (within its error bound) may differ."""
    rng, logits, labels, weight = _ce_case(seed, n, c, np.float64, 30.0, 0.2, True)
    logits = np.round(logits * 2**20) / 2**20
    target = rng.dirichlet(np.ones(c), n) if soft else labels
    shifts = rng.integers(-abs(shift), abs(shift) + 1, (n, 1)).astype(np.float64)
    shifted = logits + shifts
    assert np.array_equal(shifted - shifts, logits)  # the shift itself is exact
    kwargs = dict(reduction=reduction, weight=weight, label_smoothing=0.1)
    got = fastloss.cross_entropy(shifted, target, **kwargs)
    base = fastloss.cross_entropy(logits, target, **kwargs)
    # Both sides carry the kernel's error: the bound is the sum of their two error scales.
    scale = np.asarray(cross_entropy_scale(shifted, target, **kwargs)) + np.asarray(
        cross_entropy_scale(logits, target, **kwargs)
    )
    assert_scaled_close(got, base, scale, np.float64, "ce shifted rows", ulps=ULPS)


@PROPERTY
@given(
    seed=seeds,
    n=st.integers(1, 16),
    m=st.integers(1, 60),
    d=st.integers(1, 16),
    dtype=dtypes,
    mode=st.sampled_from(["in_batch", "symmetric", "unpaired", "paired"]),
    exponent=st.integers(-6, 6),
    reduction=st.sampled_from(REDUCTIONS),
)
def test_info_nce_temperature_scales_with_the_query(isa, seed, n, m, d, dtype, mode, exponent, reduction):
    """logits = (s q) . k / (s tau) = q . k / tau. With s a power of two every rounding step
    scales along, so the losses are the same bits."""
    _, q, k, neg = _nce_case(seed, n, m, d, dtype, mode)
    s = 2.0**exponent
    base = fastloss.info_nce(q, k, neg, **_nce_kwargs(mode, 0.3, False, reduction))
    scaled = fastloss.info_nce(q * dtype(s), k, neg, **_nce_kwargs(mode, 0.3 * s, False, reduction))
    if reduction == "none":
        assert np.array_equal(scaled, base)
    else:
        assert scaled == base


@PROPERTY
@given(
    seed=seeds,
    n=st.integers(1, 16),
    m=st.integers(1, 60),
    d=st.integers(1, 16),
    mode=st.sampled_from(["unpaired", "paired"]),
    s=st.floats(0.01, 100.0),
    normalize=st.booleans(),
)
def test_info_nce_temperature_scaling_for_any_factor(isa, seed, n, m, d, mode, s, normalize):
    """The same law for any factor, to tolerance (normalize=True: the query's scale is divided out,
    so only the temperature changes the loss, and s q with tau gives q with tau)."""
    _, q, k, neg = _nce_case(seed, n, m, d, np.float64, mode)
    if normalize:
        got = fastloss.info_nce(q * s, k, neg, **_nce_kwargs(mode, 0.3, True, "none"))
        ref = info_nce_ref(q, k, neg, **_nce_kwargs(mode, 0.3, True, "none"))
        scale = info_nce_scale(q, k, neg, **_nce_kwargs(mode, 0.3, True, "none"))
    else:
        got = fastloss.info_nce(q * s, k, neg, **_nce_kwargs(mode, 0.3 * s, False, "none"))
        ref = info_nce_ref(q, k, neg, **_nce_kwargs(mode, 0.3, False, "none"))
        scale = info_nce_scale(q * s, k, neg, **_nce_kwargs(mode, 0.3 * s, False, "none"))
    assert_scaled_close(got, ref, scale, np.float64, "info_nce temperature scaling")
