"""fastloss.cross_entropy against the float64 reference (PyTorch's semantics) and PyTorch itself.

Tolerance (reference.assert_scaled_close): |got - ref| <= 8 * eps(dtype) * scale, where scale is
the row's log-sum-exp magnitude weighted by the row's coefficients (see reference.py); reductions
add the rows' scales the same way the losses are reduced. float16 and integer logits are checked
at the precision of the dtype they are computed in (float32 / float64).
"""

from __future__ import annotations

import math

import fastloss
import numpy as np
import pytest
from conftest import SIZES, to_layout
from reference import assert_scaled_close, computation_dtype, cross_entropy_ref, cross_entropy_scale

REDUCTIONS = ("none", "sum", "mean", "batchmean")
F32_MAX = float(np.finfo(np.float32).max)

# option sets: name -> (prob targets?, weight?, some rows ignored?, label_smoothing)
OPTIONS = {
    "plain": (False, False, False, 0.0),
    "weight": (False, True, False, 0.0),
    "ignore": (False, False, True, 0.0),
    "smooth": (False, False, False, 0.1),
    "weight-ignore-smooth": (False, True, True, 0.25),
    "prob": (True, False, False, 0.0),
    "prob-weight-smooth": (True, True, False, 0.2),
}


def make_case(rng, n, c, dtype, option, scale=2.0):
    prob, weighted, ignore, smoothing = OPTIONS[option]
    logits = (rng.standard_normal((n, c)) * scale).astype(dtype)
    if prob:
        p = rng.random((n, c)) + 0.05
        target = (p / p.sum(axis=1, keepdims=True)).astype(dtype)
    else:
        target = rng.integers(0, c, n).astype(np.int64)
        if ignore:
            target[rng.random(n) < 0.3] = -100
            target[0] = -100 if n > 1 else target[0]
    kwargs = {}
    if weighted:
        kwargs["weight"] = rng.random(c) * 2.0 + 0.1
    if smoothing:
        kwargs["label_smoothing"] = smoothing
    return logits, target, kwargs


def check(logits, target, reduction, **kwargs):
    got = fastloss.cross_entropy(logits, target, reduction=reduction, **kwargs)
    ref = cross_entropy_ref(logits, target, reduction, **kwargs)
    scale = cross_entropy_scale(logits, target, reduction, **kwargs)
    comp = computation_dtype(np.asarray(logits).dtype)
    what = f"cross_entropy reduction={reduction} {sorted(kwargs)}"
    if reduction == "none":
        assert isinstance(got, np.ndarray)
        assert got.dtype == comp, f"'none' output dtype {got.dtype}, expected {comp}"
        assert got.shape == np.shape(ref)
        got_a = np.asarray(got, dtype=np.float64)
        ref_a = np.asarray(ref, dtype=np.float64)
        assert not np.any(np.isnan(got_a) & ~np.isnan(ref_a)), f"{what}: NaN where reference is not"
        if comp == np.float32:
            # a loss beyond float32's range is +inf in a float32 output (SPEC.md), else close
            over = (ref_a > F32_MAX) & np.isfinite(ref_a)
            if np.any(over):
                g, r = got_a[over], ref_a[over]
                close = np.isfinite(g) & (
                    np.abs(np.where(np.isfinite(g), g, 0.0) - r) <= 8 * 2**-23 * np.asarray(scale)[over]
                )
                assert np.all((g == np.inf) | close), f"{what}: {g} for losses {r}"
                ref_a = np.where(over, got_a, ref_a)
        assert_scaled_close(got_a, ref_a, scale, comp, what)
    else:
        assert type(got) is float, f"reduction {reduction!r} returned {type(got).__name__}"
        assert_scaled_close(got, ref, scale, comp, what)
    return got


# ---------------------------------------------------------------------------------------------
# hand-computed values


def test_known_values(isa):
    logits = np.array([[0.0, 0.0], [1.0, 2.0]])
    target = np.array([1, 0])
    l0 = math.log(2.0)
    l1 = math.log(math.exp(1.0) + math.exp(2.0)) - 1.0
    got = fastloss.cross_entropy(logits, target, reduction="none")
    np.testing.assert_allclose(got, [l0, l1], rtol=1e-14)
    assert math.isclose(fastloss.cross_entropy(logits, target), (l0 + l1) / 2, rel_tol=1e-14)
    assert math.isclose(fastloss.cross_entropy(logits, target, reduction="sum"), l0 + l1, rel_tol=1e-14)
    # class weights: mean divides by the sum of the targets' weights (PyTorch)
    w = np.array([3.0, 0.5])
    got = fastloss.cross_entropy(logits, target, weight=w)
    assert math.isclose(got, (0.5 * l0 + 3.0 * l1) / 3.5, rel_tol=1e-14)
    got = fastloss.cross_entropy(logits, target, weight=w, reduction="batchmean")
    assert math.isclose(got, (0.5 * l0 + 3.0 * l1) / 2, rel_tol=1e-14)


def test_known_values_label_smoothing(isa):
    # two classes, eps = 0.5, uniform logits: every log-prob is -log 2, so the loss is log 2
    logits = np.zeros((3, 2))
    target = np.array([0, 1, 0])
    got = fastloss.cross_entropy(logits, target, label_smoothing=0.5, reduction="none")
    np.testing.assert_allclose(got, [math.log(2.0)] * 3, rtol=1e-14)
    # eps = 1: the target no longer matters, loss = -mean_c logp_c
    logits = np.array([[0.0, 1.0, 3.0]])
    logp = logits[0] - math.log(np.exp(logits[0]).sum())
    for t in range(3):
        got = fastloss.cross_entropy(logits, np.array([t]), label_smoothing=1.0)
        assert math.isclose(got, -logp.mean(), rel_tol=1e-13)


def test_known_values_probability_targets(isa):
    logits = np.array([[1.0, 2.0, 3.0]])
    p = np.array([[0.2, 0.3, 0.5]])
    logp = logits[0] - math.log(np.exp(logits[0]).sum())
    expected = -(p[0] * logp).sum()
    assert math.isclose(fastloss.cross_entropy(logits, p), expected, rel_tol=1e-14)
    # not required to sum to one
    assert math.isclose(fastloss.cross_entropy(logits, 2 * p), 2 * expected, rel_tol=1e-14)


def test_default_ignore_index_is_minus_100(isa):
    logits = np.array([[0.0, 5.0], [1.0, 2.0]])
    l1 = math.log(math.exp(1.0) + math.exp(2.0)) - 1.0
    got = fastloss.cross_entropy(logits, np.array([-100, 0]), reduction="none")
    np.testing.assert_allclose(got, [0.0, l1], rtol=1e-14)
    assert got[0] == 0.0
    assert math.isclose(fastloss.cross_entropy(logits, np.array([-100, 0])), l1, rel_tol=1e-14)
    assert math.isclose(
        fastloss.cross_entropy(logits, np.array([-100, 0]), reduction="batchmean"), l1 / 2, rel_tol=1e-14
    )


# ---------------------------------------------------------------------------------------------
# every option x reduction x class count x dtype


@pytest.mark.parametrize("c", SIZES)
@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_classes(isa, dtype, option, c):
    rng = np.random.default_rng(c)
    logits, target, kwargs = make_case(rng, 7, c, dtype, option)
    for reduction in REDUCTIONS:
        check(logits, target, reduction, **kwargs)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("option", ["weight-ignore-smooth", "prob-weight-smooth"])
def test_rows(isa, option, n):
    rng = np.random.default_rng(100 + n)
    logits, target, kwargs = make_case(rng, n, 5, np.float32, option)
    for reduction in REDUCTIONS:
        check(logits, target, reduction, **kwargs)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("option", OPTIONS)
def test_many_rows_and_classes(isa, option, reduction):
    rng = np.random.default_rng(7)
    logits, target, kwargs = make_case(rng, 1000, 65, np.float32, option, scale=5.0)
    check(logits, target, reduction, **kwargs)


# ---------------------------------------------------------------------------------------------
# dtypes


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("option", OPTIONS)
def test_float16_logits(isa, option, reduction):
    rng = np.random.default_rng(16)
    logits, target, kwargs = make_case(rng, 9, 17, np.float16, option)
    check(logits, target, reduction, **kwargs)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "dtype", [np.int8, np.int32, np.int64, np.uint8, np.bool_], ids=["i8", "i32", "i64", "u8", "bool"]
)
def test_integer_logits_are_float64(isa, dtype, reduction):
    rng = np.random.default_rng(17)
    if dtype == np.bool_:
        logits = rng.random((9, 17)) < 0.5
    else:
        logits = rng.integers(0, 20, (9, 17)).astype(dtype)
    target = rng.integers(0, 17, 9)
    got = check(logits, target, reduction, weight=rng.random(17) + 0.5, label_smoothing=0.1)
    if reduction == "none":
        assert got.dtype == np.float64


@pytest.mark.parametrize(
    "tdtype", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
)
def test_target_integer_dtypes(isa, tdtype):
    rng = np.random.default_rng(18)
    logits = rng.standard_normal((33, 9))
    target = rng.integers(0, 9, 33).astype(tdtype)
    for reduction in REDUCTIONS:
        check(logits, target, reduction, weight=rng.random(9) + 0.5)


def test_target_python_list(isa):
    logits = np.array([[0.0, 1.0], [2.0, 0.0]])
    got = fastloss.cross_entropy(logits, [1, 0], reduction="sum")
    expected = math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(-2.0))
    assert math.isclose(got, expected, rel_tol=1e-14)
    check(logits, [1, 0], "none")


# ---------------------------------------------------------------------------------------------
# one sample of shape (C,)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("c", [1, 2, 9, 33])
def test_single_sample(isa, c, reduction):
    rng = np.random.default_rng(c)
    logits = rng.standard_normal(c).astype(np.float32)
    for target in (c - 1, np.int64(c - 1), np.array(c - 1), np.array(0, dtype=np.int32)):
        got = check(logits, target, reduction, label_smoothing=0.1, weight=rng.random(c) + 0.5)
        if reduction == "none":
            assert got.shape == () and got.dtype == np.float32
    p = rng.random(c).astype(np.float32)
    got = check(logits, p, reduction)
    if reduction == "none":
        assert got.shape == ()


def test_single_sample_equals_batch_of_one(isa):
    rng = np.random.default_rng(19)
    logits = rng.standard_normal(17)
    for reduction in REDUCTIONS:
        a = fastloss.cross_entropy(logits, 3, reduction=reduction)
        b = fastloss.cross_entropy(logits[None, :], np.array([3]), reduction=reduction)
        np.testing.assert_allclose(np.ravel(a), np.ravel(b), rtol=1e-15)


# ---------------------------------------------------------------------------------------------
# ignore_index and the "mean" denominator


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_ignore_index_inside_class_range(isa, weighted, smoothing, reduction):
    rng = np.random.default_rng(20)
    logits = rng.standard_normal((31, 7))
    target = rng.integers(0, 7, 31)
    target[:5] = 2
    kwargs = {"ignore_index": 2, "label_smoothing": smoothing}
    if weighted:
        kwargs["weight"] = rng.random(7) + 0.5
    got = check(logits, target, reduction, **kwargs)
    if reduction == "none":
        assert np.all(got[target == 2] == 0.0)


@pytest.mark.parametrize("ignore_index", [-1, 1000, -100])
def test_ignore_index_other_values(isa, ignore_index):
    rng = np.random.default_rng(21)
    logits = rng.standard_normal((17, 5))
    target = rng.integers(0, 5, 17)
    target[::3] = ignore_index
    for reduction in REDUCTIONS:
        check(
            logits,
            target,
            reduction,
            ignore_index=ignore_index,
            label_smoothing=0.2,
            weight=rng.random(5) + 0.5,
        )


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_all_ignored(isa, weighted, smoothing):
    logits = np.random.default_rng(22).standard_normal((4, 3)).astype(np.float32)
    target = np.full(4, -100)
    kwargs = {"label_smoothing": smoothing}
    if weighted:
        kwargs["weight"] = np.array([1.0, 2.0, 3.0])
    assert math.isnan(fastloss.cross_entropy(logits, target, reduction="mean", **kwargs))
    assert fastloss.cross_entropy(logits, target, reduction="sum", **kwargs) == 0.0
    assert fastloss.cross_entropy(logits, target, reduction="batchmean", **kwargs) == 0.0
    np.testing.assert_array_equal(
        fastloss.cross_entropy(logits, target, reduction="none", **kwargs), np.zeros(4)
    )


def test_ignore_index_does_not_apply_to_probabilities(isa):
    rng = np.random.default_rng(23)
    logits = rng.standard_normal((5, 4))
    p = rng.random((5, 4))
    for reduction in REDUCTIONS:
        a = fastloss.cross_entropy(logits, p, reduction=reduction, ignore_index=0)
        b = fastloss.cross_entropy(logits, p, reduction=reduction)
        np.testing.assert_array_equal(a, b)
        check(logits, p, reduction, ignore_index=0)


@pytest.mark.parametrize("smoothing", [0.0, 0.05, 0.5, 1.0])
def test_label_smoothing_range(isa, smoothing):
    rng = np.random.default_rng(24)
    logits, target, kwargs = make_case(rng, 17, 9, np.float64, "weight-ignore-smooth")
    kwargs["label_smoothing"] = smoothing
    for reduction in REDUCTIONS:
        check(logits, target, reduction, **kwargs)
        p = rng.random((17, 9))
        check(logits, p, reduction, weight=kwargs["weight"], label_smoothing=smoothing)


# ---------------------------------------------------------------------------------------------
# layouts


@pytest.mark.parametrize("option", ["weight-ignore-smooth", "prob-weight-smooth"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_layouts(isa, layout, dtype, option):
    rng = np.random.default_rng(25)
    logits, target, kwargs = make_case(rng, 9, 17, dtype, option)
    kwargs = {k: (layout(v) if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}
    for reduction in REDUCTIONS:
        check(layout(logits), layout(target), reduction, **kwargs)


def test_layouts_single_sample(isa, layout):
    rng = np.random.default_rng(26)
    logits = rng.standard_normal(33).astype(np.float32)
    for reduction in REDUCTIONS:
        check(layout(logits), np.int64(5), reduction)
        check(layout(logits), layout(rng.random(33).astype(np.float32)), reduction)


def test_mixed_layouts(isa):
    rng = np.random.default_rng(27)
    logits, target, kwargs = make_case(rng, 33, 16, np.float32, "weight-ignore-smooth")
    for a, b, c in [
        ("strided", "reversed", "bigendian"),
        ("fortran", "bigendian", "strided"),
        ("reversed", "readonly", "fortran"),
    ]:
        check(
            to_layout(logits, a),
            to_layout(target, b),
            "none",
            weight=to_layout(kwargs["weight"], c),
            label_smoothing=0.25,
        )


def test_inputs_are_not_modified(isa):
    rng = np.random.default_rng(28)
    logits, target, kwargs = make_case(rng, 9, 8, np.float32, "weight-ignore-smooth")
    copies = [logits.copy(), target.copy(), kwargs["weight"].copy()]
    for reduction in REDUCTIONS:
        fastloss.cross_entropy(logits, target, reduction=reduction, **kwargs)
    for before, after in zip(copies, [logits, target, kwargs["weight"]], strict=False):
        np.testing.assert_array_equal(before, after)


# ---------------------------------------------------------------------------------------------
# extreme logits: the correct loss, never NaN; float32 "none" is +inf only past float32's range


def extreme_logits(big, c, dtype, rng):
    rows = [
        [big] + [0.0] * (c - 1),
        [-big] + [0.0] * (c - 1),
        [big, -big] + [1.0] * (c - 2),
        [-big, big] + [-1.0] * (c - 2),
        [big] * c,
        [-big] * c,
        list(rng.choice([-big, big], c)),
        list(rng.uniform(-big, big, c)),
    ]
    return np.array(rows, dtype=dtype)


@pytest.mark.parametrize(
    "option", ["plain", "weight", "smooth", "weight-ignore-smooth", "prob", "prob-weight-smooth"]
)
@pytest.mark.parametrize("big", [1e4, 3e38], ids=["1e4", "3e38"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("c", [2, 9, 33])
def test_extreme_logits(isa, c, dtype, big, option):
    rng = np.random.default_rng(29)
    logits = extreme_logits(big, c, dtype, rng)
    n = logits.shape[0]
    _, target, kwargs = make_case(rng, n, c, dtype, option)
    if not OPTIONS[option][0]:
        target = np.array([0, 0, 1, 0, 1, c - 1, 0, c - 1])
        if OPTIONS[option][2]:
            target[6] = -100
    for reduction in REDUCTIONS:
        got = check(logits, target, reduction, **kwargs)
        got = np.asarray(got, dtype=np.float64)
        assert not np.any(np.isnan(got)), f"NaN from finite logits: {got}"
        if reduction != "none":
            assert math.isfinite(got), f"reduction {reduction} of finite logits is {got}"
        elif dtype == np.float64:
            assert np.all(np.isfinite(got))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_extreme_logits_exact_cases(isa, dtype):
    c = 17
    logits = np.zeros((3, c), dtype=dtype)
    logits[0, 3] = 3e38  # the target holds +3e38, the rest 0: loss exactly 0, not NaN
    logits[1, 3] = -3e38  # the target holds -3e38, the rest 0: loss 3e38 + log 16
    logits[2, 3] = -3e38  # ... and another class +3e38: loss 6e38, past float32's range
    logits[2, 0] = 3e38
    x3 = float(dtype(3e38))
    got = fastloss.cross_entropy(logits, np.array([3, 3, 3]), reduction="none")
    assert got[0] == 0.0
    assert math.isclose(got[1], x3 + math.log(16), rel_tol=2 * float(np.finfo(dtype).eps))
    assert got[2] == (np.inf if dtype == np.float32 else 2 * x3)
    total = fastloss.cross_entropy(logits, np.array([3, 3, 3]), reduction="sum")
    assert math.isclose(total, 3 * x3 + math.log(16), rel_tol=1e-12)
    mean = fastloss.cross_entropy(logits, np.array([3, 3, 3]), reduction="mean")
    assert math.isclose(mean, x3 + math.log(16) / 3, rel_tol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_large_uniform_logits_give_log_c(isa, dtype):
    # every logit equal and huge: exp(x) would overflow, the loss is log C
    for value in (1e4, -1e4, 3e38, -3e38):
        logits = np.full((3, 65), value, dtype=dtype)
        got = fastloss.cross_entropy(logits, np.array([0, 31, 64]), reduction="none")
        # the max-subtracted log-softmax is exact here (every x - max is 0), as in PyTorch
        np.testing.assert_allclose(got, math.log(65), rtol=1e-6)
        got = fastloss.cross_entropy(logits, np.array([0, 31, 64]), reduction="none", label_smoothing=0.5)
        np.testing.assert_allclose(got, math.log(65), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# NaN / inf propagate (IEEE), never crash


@pytest.mark.parametrize("option", ["plain", "weight-ignore-smooth", "prob"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_nan_inf_propagate(isa, dtype, option):
    rng = np.random.default_rng(30)
    logits, target, kwargs = make_case(rng, 6, 9, dtype, option)
    logits[1, 4] = np.nan
    logits[2, :] = np.nan
    logits[3, 5] = np.inf
    logits[4, 6] = -np.inf
    if not OPTIONS[option][0]:
        target[1:5] = [0, 1, 2, 3]  # row 4's -inf is not its target
        target[0] = 4
    # rows 1-3 hold nan / +inf and are NaN in the reference; rows 0 and 5 are finite
    for reduction in REDUCTIONS:
        got = fastloss.cross_entropy(logits, target, reduction=reduction, **kwargs)
        ref = cross_entropy_ref(logits, target, reduction, **kwargs)
        if reduction == "none":
            np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
            check(logits, target, reduction, **kwargs)
        else:
            assert math.isnan(got)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_minus_inf_logit(isa, dtype):
    # -inf in a non-target class: exp(-inf) = 0, the loss is finite and exact
    logits = np.array([[0.0, -np.inf, 1.0], [-np.inf, 2.0, 2.0]], dtype=dtype)
    got = fastloss.cross_entropy(logits, np.array([0, 2]), reduction="none")
    np.testing.assert_allclose(
        got, [math.log(1 + math.e), math.log(2.0)], rtol=8 * float(np.finfo(dtype).eps)
    )
    # -inf on the target itself: +inf
    got = fastloss.cross_entropy(logits, np.array([1, 0]), reduction="none")
    assert np.all(got == np.inf)


# ---------------------------------------------------------------------------------------------
# PyTorch's own cross_entropy


def _torch_ce(torch, logits, target, reduction, **kwargs):
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(target))
    if "weight" in kwargs:
        kwargs["weight"] = torch.from_numpy(kwargs["weight"]).to(torch.from_numpy(logits).dtype)
    out = F.cross_entropy(torch.from_numpy(logits), t, reduction=reduction, **kwargs)
    return out.double().numpy()


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_against_torch(isa, dtype, option, reduction):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(31)
    for n, c in [(1, 1), (7, 3), (33, 17), (200, 65)]:
        logits, target, kwargs = make_case(rng, n, c, dtype, option)
        expected = _torch_ce(torch, logits, target, reduction, **dict(kwargs))
        got = fastloss.cross_entropy(logits, target, reduction=reduction, **kwargs)
        if dtype == np.float64:
            np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13, equal_nan=True)
        else:
            # torch computes and accumulates in float32
            np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-6, equal_nan=True)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_against_torch_ignore_index_and_single_sample(isa, reduction):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(32)
    logits = rng.standard_normal((50, 9))
    target = rng.integers(0, 9, 50)
    target[::4] = 3
    w = rng.random(9) + 0.2
    for eps in (0.0, 0.4):
        expected = _torch_ce(torch, logits, target, reduction, weight=w, ignore_index=3, label_smoothing=eps)
        got = fastloss.cross_entropy(
            logits, target, reduction=reduction, weight=w, ignore_index=3, label_smoothing=eps
        )
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)
    # (torch 2.13 cannot smooth an unbatched (C,) input: compare with its batch of one)
    expected = _torch_ce(torch, logits[:1], np.array([4]), reduction, label_smoothing=0.1)
    got = fastloss.cross_entropy(logits[0], 4, reduction=reduction, label_smoothing=0.1)
    if reduction == "none":
        assert np.shape(got) == ()
        expected = expected[0]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    expected = _torch_ce(torch, logits[0], np.array(4), reduction)
    got = fastloss.cross_entropy(logits[0], 4, reduction=reduction)
    assert np.shape(got) == np.shape(expected)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # all ignored: NaN for mean, like PyTorch
    expected = _torch_ce(torch, logits[:3], np.full(3, -100), reduction)
    got = fastloss.cross_entropy(logits[:3], np.full(3, -100), reduction=reduction)
    np.testing.assert_allclose(got, expected, equal_nan=True)


def test_against_torch_extreme_float64(isa):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(33)
    logits = extreme_logits(3e38, 9, np.float64, rng)
    target = rng.integers(0, 9, logits.shape[0])
    for reduction in ("none", "sum", "mean"):
        expected = _torch_ce(torch, logits, target, reduction, label_smoothing=0.1)
        got = fastloss.cross_entropy(logits, target, reduction=reduction, label_smoothing=0.1)
        assert not np.any(np.isnan(got))
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_soft_targets_of_both_signs_at_huge_logits_sum_to_the_infinity(isa):
    # A fuzz finding: the row's terms are finite ones whose plain partial sum overflows to +inf
    # and terms that are -inf themselves; their sum is -inf, not inf - inf = NaN.
    x = np.array([1.7976931348623157e308, 1.17549435e-38, 0, 0.5, 2, 1, -65504, -1e4, 1.4e-45])
    q = np.array([-0.1573, 0.7876, 0.62, -1.0205, 0.07306, -2.006, 0.4443, 0.1006, -1.53], np.float16)
    q = q.astype(np.float64)
    with np.errstate(over="ignore"):
        terms = q * (0.0 - (x - x[0]))  # lse = max here: the other exps vanish next to 1
    with np.errstate(over="ignore"):
        assert np.isneginf(terms).any() and math.isnan(sum(terms.tolist()))  # the plain sum's NaN
    assert fastloss.cross_entropy(x, q, reduction="none") == -np.inf
    assert fastloss.cross_entropy(x, q, reduction="sum") == -np.inf


# ---------------------------------------------------------------------------------------------
# short rows: rows of at most 128 bytes of logits (32 float32, 16 float64) are taken 16 at a time
# with the rows in vector lanes when no gradient is asked for; the row losses must have the bits
# of the row-by-row pass, which the gradient call takes.


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_short_rows_give_the_row_by_row_bits(isa, dtype):
    rng = np.random.default_rng(31)
    for c in (1, 2, 3, 7, 8, 9, 10, 15, 16, 17, 31, 32, 33):
        for n in (1, 5, 16, 17, 40):
            for scale in (1.0, 30.0, 1e4):
                logits = (rng.standard_normal((n, c)) * scale).astype(dtype)
                labels = rng.integers(0, c, n)
                labels[::7] = -100
                if n > 5 and c > 1:
                    logits[1, 0] = np.inf  # rows with inf, -inf and NaN logits in a group of finite ones
                    logits[2, c - 1] = -np.inf
                    logits[3, 0] = np.nan
                    logits[4, :] = -np.inf
                batched = fastloss.cross_entropy(logits, labels, reduction="none")
                by_row = fastloss.cross_entropy(logits, labels, reduction="none", return_grad=True)[0]
                assert batched.tobytes() == by_row.tobytes(), (c, n, scale)
