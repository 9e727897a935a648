"""fastloss.info_nce against the float64 reference (explicit logits + cross-entropy) and PyTorch.

Tolerance (reference.assert_scaled_close): |got - ref| <= 8 * eps(dtype) * scale, where a row's
scale is its log-sum-exp magnitude plus the magnitude its dot products cancel,
max_j sum_d |q_id k_jd| / temperature (see reference.py); reductions reduce the scales alike.
"""

from __future__ import annotations

import math

import fastloss
import numpy as np
import pytest
from conftest import SIZES, to_layout
from reference import assert_scaled_close, computation_dtype, info_nce_ref, info_nce_scale

REDUCTIONS = ("none", "sum", "mean", "batchmean")
MODES = ("in-batch", "unpaired", "paired")


def make_case(rng, mode, n, m, d, dtype):
    q = rng.standard_normal((n, d)).astype(dtype)
    k = (q.astype(np.float64) + rng.standard_normal((n, d))).astype(dtype)  # positives correlate
    if mode == "in-batch":
        neg, kwargs = None, {}
    elif mode == "unpaired":
        neg, kwargs = rng.standard_normal((m, d)).astype(dtype), {"negative_mode": "unpaired"}
    else:
        neg, kwargs = rng.standard_normal((n, m, d)).astype(dtype), {"negative_mode": "paired"}
    return q, k, neg, kwargs


def check(q, k, neg, reduction, **kwargs):
    got = fastloss.info_nce(q, k, neg, reduction=reduction, **kwargs)
    ref = info_nce_ref(q, k, neg, reduction=reduction, **kwargs)
    scale = info_nce_scale(q, k, neg, reduction=reduction, **kwargs)
    dtypes = [np.asarray(q).dtype, np.asarray(k).dtype]
    if neg is not None:
        dtypes.append(np.asarray(neg).dtype)
    comp = computation_dtype(*dtypes)
    what = f"info_nce reduction={reduction} {kwargs}"
    if reduction == "none":
        assert isinstance(got, np.ndarray)
        assert got.dtype == comp, f"'none' output dtype {got.dtype}, expected {comp}"
        assert got.shape == (np.shape(q)[0],)
    else:
        assert type(got) is float, f"reduction {reduction!r} returned {type(got).__name__}"
    assert_scaled_close(got, ref, scale, comp, what)
    return got


# ---------------------------------------------------------------------------------------------
# hand-computed values


def test_known_values_in_batch(isa):
    q = np.eye(3)
    k = np.eye(3)
    # logits = I / T; every row: log(e^(1/T) + 2) - 1/T
    for t in (1.0, 0.5):
        expected = math.log(math.exp(1 / t) + 2) - 1 / t
        got = fastloss.info_nce(q, k, temperature=t, reduction="none")
        np.testing.assert_allclose(got, [expected] * 3, rtol=1e-14)
        assert math.isclose(fastloss.info_nce(q, k, temperature=t), expected, rel_tol=1e-14)
        assert math.isclose(
            fastloss.info_nce(q, k, temperature=t, reduction="sum"), 3 * expected, rel_tol=1e-14
        )


def test_known_values_with_negatives(isa):
    q = np.array([[1.0, 0.0], [0.0, 2.0]])
    k = np.array([[2.0, 0.0], [0.0, 1.0]])
    queue = np.array([[1.0, 1.0], [-1.0, 0.0], [0.0, 0.0]])
    # row 0 logits [2, 1, -1, 0]; row 1 logits [2, 2, 0, 0]
    r0 = math.log(math.exp(2) + math.exp(1) + math.exp(-1) + 1) - 2
    r1 = math.log(2 * math.exp(2) + 2) - 2
    got = fastloss.info_nce(q, k, queue, temperature=1.0, reduction="none")
    np.testing.assert_allclose(got, [r0, r1], rtol=1e-14)
    paired = np.stack([queue, queue[::-1]])  # row 1: negatives [0,0], [-1,0], [1,1]
    got = fastloss.info_nce(q, k, paired, temperature=1.0, negative_mode="paired", reduction="none")
    np.testing.assert_allclose(got, [r0, r1], rtol=1e-14)


def test_default_temperature_is_0_07(isa):
    rng = np.random.default_rng(1)
    q, k, neg, _ = make_case(rng, "unpaired", 5, 9, 8, np.float64)
    expected = info_nce_ref(q, k, neg, temperature=0.07)
    assert math.isclose(fastloss.info_nce(q, k, neg), expected, rel_tol=1e-12)
    expected = info_nce_ref(q, k, None, temperature=0.07)
    assert math.isclose(fastloss.info_nce(q, k), expected, rel_tol=1e-12)


def test_symmetric_known_values(isa):
    # a non-symmetric logits matrix: the two directions differ
    q = np.array([[1.0, 0.0], [1.0, 1.0]])
    k = np.array([[1.0, 0.0], [0.0, 1.0]])
    logits = q @ k.T  # [[1, 0], [1, 1]]
    a = [math.log(math.e + 1) - 1, math.log(2 * math.e) - 1]
    b = [math.log(2 * math.e) - 1, math.log(1 + math.e) - 1]  # columns of the logits
    assert np.allclose(logits, [[1, 0], [1, 1]])
    got = fastloss.info_nce(q, k, temperature=1.0, symmetric=True, reduction="none")
    np.testing.assert_allclose(got, [(a[0] + b[0]) / 2, (a[1] + b[1]) / 2], rtol=1e-14)
    got = fastloss.info_nce(q, k, temperature=1.0, symmetric=True)
    assert math.isclose(got, (sum(a) / 2 + sum(b) / 2) / 2, rel_tol=1e-14)


# ---------------------------------------------------------------------------------------------
# every mode x reduction x size x option


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("symmetric", [False, True], ids=["onesided", "symmetric"])
@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalized"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_in_batch(isa, dtype, normalize, symmetric, n):
    rng = np.random.default_rng(n)
    q, k, _, _ = make_case(rng, "in-batch", n, 0, 17, dtype)
    for reduction in REDUCTIONS:
        check(q, k, None, reduction, temperature=0.5, normalize=normalize, symmetric=symmetric)


@pytest.mark.parametrize("m", SIZES)
@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalized"])
@pytest.mark.parametrize("mode", ["unpaired", "paired"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_negatives(isa, dtype, mode, normalize, m):
    rng = np.random.default_rng(m)
    q, k, neg, kwargs = make_case(rng, mode, 5, m, 9, dtype)
    for reduction in REDUCTIONS:
        check(q, k, neg, reduction, temperature=0.2, normalize=normalize, **kwargs)


@pytest.mark.parametrize("d", SIZES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_feature_dims(isa, dtype, mode, d):
    rng = np.random.default_rng(d)
    q, k, neg, kwargs = make_case(rng, mode, 7, 9, d, dtype)
    for reduction in REDUCTIONS:
        for normalize in (False, True):
            check(q, k, neg, reduction, temperature=0.3, normalize=normalize, **kwargs)


@pytest.mark.parametrize("n", [1, 9, 65])
@pytest.mark.parametrize("mode", ["unpaired", "paired"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_long_queue(isa, dtype, mode, n):
    # many tiles of negatives per query: the online log-sum-exp carries across tile edges
    rng = np.random.default_rng(n)
    m = 4099 if mode == "unpaired" else 1031
    q, k, neg, kwargs = make_case(rng, mode, n, m, 33, dtype)
    for reduction in ("none", "mean"):
        check(q, k, neg, reduction, temperature=0.07, **kwargs)
        check(q, k, neg, reduction, temperature=0.1, normalize=True, **kwargs)


def test_large_in_batch(isa):
    rng = np.random.default_rng(2)
    q, k, _, _ = make_case(rng, "in-batch", 1000, 0, 31, np.float32)
    for reduction in ("none", "sum"):
        check(q, k, None, reduction, temperature=0.07, symmetric=True, normalize=True)
        check(q, k, None, reduction, temperature=0.3)


@pytest.mark.parametrize("mode", MODES)
def test_batchmean_equals_mean(isa, mode):
    rng = np.random.default_rng(3)
    q, k, neg, kwargs = make_case(rng, mode, 9, 17, 8, np.float64)
    a = fastloss.info_nce(q, k, neg, reduction="batchmean", **kwargs)
    b = fastloss.info_nce(q, k, neg, reduction="mean", **kwargs)
    assert a == b
    check(q, k, neg, "batchmean", **kwargs)


def test_unpaired_equals_paired_with_a_repeated_queue(isa):
    rng = np.random.default_rng(4)
    q, k, neg, _ = make_case(rng, "unpaired", 6, 17, 16, np.float64)
    a = fastloss.info_nce(q, k, neg, reduction="none")
    b = fastloss.info_nce(q, k, np.broadcast_to(neg, (6, 17, 16)), negative_mode="paired", reduction="none")
    np.testing.assert_allclose(a, b, rtol=1e-13)


def test_normalize_zero_vector(isa):
    # x / max(||x||, 1e-12): a zero row stays zero (no division by zero, no NaN)
    q = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]])
    k = np.array([[3.0, 0.0, 4.0], [0.0, 0.0, 0.0]])
    neg = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    for negatives in (None, neg):
        got = fastloss.info_nce(q, k, negatives, normalize=True, reduction="none", temperature=0.5)
        assert np.all(np.isfinite(got))
        check(q, k, negatives, "none", normalize=True, temperature=0.5)
    # zero query row: all its logits are 0 -> log(M+1)
    got = fastloss.info_nce(q, k, neg, normalize=True, reduction="none", temperature=0.5)
    assert math.isclose(got[0], math.log(3), rel_tol=1e-14)


def test_normalize_tiny_norms(isa):
    # norms below 1e-12 are divided by 1e-12, not by themselves
    q = np.array([[1e-13, 0.0], [0.0, 5.0]])
    k = np.array([[1.0, 0.0], [0.0, 1.0]])
    got = fastloss.info_nce(q, k, normalize=True, temperature=1.0, reduction="none")
    # row 0: q -> [0.1, 0]: logits [0.1, 0]; row 1: q -> [0, 1]: logits [0, 1]
    np.testing.assert_allclose(got, [math.log(math.exp(0.1) + 1) - 0.1, math.log(1 + math.e) - 1], rtol=1e-12)


def test_normalize_is_scale_invariant(isa):
    rng = np.random.default_rng(5)
    q, k, neg, kwargs = make_case(rng, "paired", 8, 9, 16, np.float64)
    a = fastloss.info_nce(q, k, neg, normalize=True, reduction="none", **kwargs)
    b = fastloss.info_nce(q * 1e3, k * 1e-3, neg * 7.0, normalize=True, reduction="none", **kwargs)
    np.testing.assert_allclose(a, b, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# dtypes


@pytest.mark.parametrize("mode", MODES)
def test_float16_inputs(isa, mode):
    rng = np.random.default_rng(6)
    q, k, neg, kwargs = make_case(rng, mode, 9, 17, 16, np.float16)
    for reduction in REDUCTIONS:
        got = check(q, k, neg, reduction, temperature=0.5, **kwargs)
        if reduction == "none":
            assert got.dtype == np.float32


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.bool_], ids=["i8", "i32", "i64", "bool"])
@pytest.mark.parametrize("mode", MODES)
def test_integer_inputs_are_float64(isa, mode, dtype):
    rng = np.random.default_rng(7)
    q, k, neg, kwargs = make_case(rng, mode, 7, 9, 8, np.float64)
    if dtype == np.bool_:
        cast = lambda a: None if a is None else a > 0  # noqa: E731
    else:
        cast = lambda a: None if a is None else np.round(a * 3).astype(dtype)  # noqa: E731
    q, k, neg = cast(q), cast(k), cast(neg)
    for reduction in REDUCTIONS:
        got = check(q, k, neg, reduction, temperature=2.0, normalize=True, **kwargs)
        if reduction == "none":
            assert got.dtype == np.float64


# ---------------------------------------------------------------------------------------------
# layouts


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_layouts(isa, layout, dtype, mode):
    rng = np.random.default_rng(8)
    q, k, neg, kwargs = make_case(rng, mode, 9, 17, 15, dtype)
    for reduction in ("none", "mean"):
        check(layout(q), layout(k), to_layout(neg, "contiguous"), reduction, **kwargs)
        check(layout(q), layout(k), layout(neg), reduction, normalize=True, **kwargs)
        if mode == "in-batch":
            check(layout(q), layout(k), None, reduction, symmetric=True, **kwargs)


def test_mixed_layouts(isa):
    rng = np.random.default_rng(9)
    q, k, neg, kwargs = make_case(rng, "paired", 7, 33, 16, np.float32)
    for a, b, c in [
        ("strided", "reversed", "bigendian"),
        ("fortran", "bigendian", "strided"),
        ("reversed", "readonly", "reversed"),
    ]:
        check(to_layout(q, a), to_layout(k, b), to_layout(neg, c), "none", **kwargs)


def test_queue_view_of_a_larger_buffer(isa):
    # a MoCo-style ring buffer: the queue is a slice, and a transposed-then-transposed view
    rng = np.random.default_rng(10)
    buf = rng.standard_normal((100, 32))
    queue = buf[10:75]
    q, k = rng.standard_normal((5, 32)), rng.standard_normal((5, 32))
    check(q, k, queue, "none")
    check(q, k, np.asfortranarray(queue), "none")
    check(q, k, buf.T.copy().T[10:75], "mean")


def test_inputs_are_not_modified(isa):
    rng = np.random.default_rng(11)
    q, k, neg, kwargs = make_case(rng, "paired", 5, 9, 8, np.float32)
    copies = [q.copy(), k.copy(), neg.copy()]
    for reduction in REDUCTIONS:
        fastloss.info_nce(q, k, neg, reduction=reduction, normalize=True, **kwargs)
    for before, after in zip(copies, [q, k, neg], strict=False):
        np.testing.assert_array_equal(before, after)


# ---------------------------------------------------------------------------------------------
# tiny temperatures and large logits stay finite


@pytest.mark.parametrize("temperature", [0.001, 0.01, 1e-4])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_tiny_temperature(isa, dtype, mode, temperature):
    rng = np.random.default_rng(12)
    q, k, neg, kwargs = make_case(rng, mode, 17, 65, 64, dtype)
    for normalize in (False, True):
        for reduction in REDUCTIONS:
            extra = {"symmetric": True} if mode == "in-batch" and normalize else {}
            got = check(q, k, neg, reduction, temperature=temperature, normalize=normalize, **kwargs, **extra)
            assert np.all(np.isfinite(got)), f"non-finite loss at temperature {temperature}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_large_values(isa, dtype):
    # dot products of 1e4-sized vectors: logits ~1e8 / T, far beyond exp's range
    rng = np.random.default_rng(13)
    q, k, neg, kwargs = make_case(rng, "unpaired", 9, 33, 16, dtype)
    q, k, neg = (q * 1e4).astype(dtype), (k * 1e4).astype(dtype), (neg * 1e4).astype(dtype)
    for reduction in REDUCTIONS:
        got = check(q, k, neg, reduction, temperature=0.07)
        assert np.all(np.isfinite(got))
        got = check(q, k, None, reduction, temperature=0.07, symmetric=True)
        assert np.all(np.isfinite(got))


# ---------------------------------------------------------------------------------------------
# NaN / inf propagate (IEEE), never crash


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_nan_propagates(isa, dtype):
    rng = np.random.default_rng(14)
    q, k, neg, kwargs = make_case(rng, "unpaired", 6, 9, 8, dtype)
    q[2, 3] = np.nan
    got = fastloss.info_nce(q, k, neg, reduction="none")
    assert np.isnan(got[2]) and np.all(np.isfinite(np.delete(got, 2)))
    check(q, k, neg, "none")
    assert math.isnan(fastloss.info_nce(q, k, neg, reduction="mean"))
    # a NaN negative reaches every query of the shared queue
    q2, k2, neg2, _ = make_case(rng, "unpaired", 6, 9, 8, dtype)
    neg2[4, 0] = np.nan
    assert np.all(np.isnan(fastloss.info_nce(q2, k2, neg2, reduction="none")))
    # paired: only its own query
    q3, k3, neg3, kw3 = make_case(rng, "paired", 6, 9, 8, dtype)
    neg3[1, 4, 0] = np.nan
    got = fastloss.info_nce(q3, k3, neg3, reduction="none", **kw3)
    np.testing.assert_array_equal(np.isnan(got), np.arange(6) == 1)
    # in-batch: a NaN key is in every row's logits
    k2[3, 1] = np.nan
    assert np.all(np.isnan(fastloss.info_nce(q2, k2, reduction="none")))
    assert math.isnan(fastloss.info_nce(q2, k2, symmetric=True))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_inf_propagates(isa, dtype):
    rng = np.random.default_rng(15)
    for mode in MODES:
        q, k, neg, kwargs = make_case(rng, mode, 6, 9, 8, dtype)
        q[1, 0] = np.inf
        got = fastloss.info_nce(q, k, neg, reduction="none", **kwargs)  # must not crash
        ref = info_nce_ref(q, k, neg, reduction="none", **kwargs)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        check(q, k, neg, "none", **kwargs)


# ---------------------------------------------------------------------------------------------
# PyTorch: explicit logits + F.cross_entropy


def _torch_info_nce(
    torch, q, k, neg, temperature, reduction, mode="unpaired", normalize=False, symmetric=False
):
    import torch.nn.functional as F

    q, k = torch.from_numpy(q), torch.from_numpy(k)
    neg = None if neg is None else torch.from_numpy(neg)
    if normalize:
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        neg = None if neg is None else F.normalize(neg, dim=-1)
    if neg is None:
        logits = q @ k.T / temperature
        labels = torch.arange(q.shape[0])
        loss = F.cross_entropy(logits, labels, reduction=reduction)
        if symmetric:
            loss = (loss + F.cross_entropy(logits.T, labels, reduction=reduction)) / 2
        return loss.double().numpy()
    pos = (q * k).sum(dim=1, keepdim=True)
    if mode == "unpaired":
        negl = q @ neg.T
    else:
        negl = (q.unsqueeze(1) @ neg.transpose(-2, -1)).squeeze(1)
    logits = torch.cat([pos, negl], dim=1) / temperature
    labels = torch.zeros(q.shape[0], dtype=torch.long)
    return F.cross_entropy(logits, labels, reduction=reduction).double().numpy()


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalized"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_against_torch(isa, dtype, mode, normalize, reduction):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(16)
    for n, m, d in [(1, 1, 1), (9, 17, 16), (64, 300, 33)]:
        q, k, neg, kwargs = make_case(rng, mode, n, m, d, dtype)
        for t in (0.07, 0.5):
            sym = [False, True] if mode == "in-batch" else [False]
            for symmetric in sym:
                expected = _torch_info_nce(
                    torch,
                    q,
                    k,
                    neg,
                    t,
                    reduction,
                    kwargs.get("negative_mode", "unpaired"),
                    normalize,
                    symmetric,
                )
                got = fastloss.info_nce(
                    q,
                    k,
                    neg,
                    temperature=t,
                    reduction=reduction,
                    normalize=normalize,
                    symmetric=symmetric,
                    **kwargs,
                )
                if dtype == np.float64:
                    np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-11)
                else:
                    # torch works in float32 throughout; logits here reach ~|q||k|/T ~ 1e3
                    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)


def test_against_info_nce_pytorch_defaults(isa):
    # info-nce-pytorch's InfoNCE(): normalize, temperature 0.1, mean, unpaired
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(17)
    q, k, neg, _ = make_case(rng, "unpaired", 32, 128, 64, np.float64)
    expected = _torch_info_nce(torch, q, k, neg, 0.1, "mean", normalize=True)
    got = fastloss.info_nce(q, k, neg, temperature=0.1, normalize=True)
    assert math.isclose(got, float(expected), rel_tol=1e-12)
    expected = _torch_info_nce(torch, q, k, None, 0.1, "mean", normalize=True)
    got = fastloss.info_nce(q, k, temperature=0.1, normalize=True)
    assert math.isclose(got, float(expected), rel_tol=1e-12)
