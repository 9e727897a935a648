"""return_grad=True on all four losses, against analytic float64 NumPy gradients
(tests/reference.py) and central finite differences of the loss itself."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import fastloss
import numpy as np
import pytest
import reference as ref
from conftest import not_under_sanitizers
from hypothesis import given, settings
from hypothesis import strategies as st

REDUCTIONS = ("none", "sum", "mean", "batchmean")
# float64 gradients agree with the float64 reference to rounding; float32 to a few ulps of the
# largest gradient entry (the entries are sums of terms of that size). Where every entry is 0 in
# exact arithmetic (one class), the terms that cancel are O(1e-2 .. 1): the floor on the scale.
TOL = {np.float64: 1e-11, np.float32: 2e-5}


def assert_grad_close(got, want, dtype, what="grad"):
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, what
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1e-2)
    err = float(np.max(np.abs(got.astype(np.float64) - want))) if want.size else 0.0
    assert err <= TOL[dtype] * scale, f"{what}: max abs error {err:.3e} vs scale {scale:.3e}"


@pytest.mark.parametrize("kind", ["mse", "mae"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shape", [(1,), (17,), (9, 33), (4, 3, 5)])
def test_regression_grad_matches_reference(isa, kind, reduction, dtype, weighted, shape):
    rng = np.random.default_rng(hash((kind, reduction, shape)) % 2**32)
    pred = rng.standard_normal(shape).astype(dtype)
    target = rng.standard_normal(shape).astype(dtype)
    w = rng.random(shape[0]) + 0.1 if weighted else None
    fn = getattr(fastloss, kind)
    loss, grad = fn(pred, target, reduction=reduction, sample_weight=w, return_grad=True)
    assert grad.dtype == dtype and grad.shape == pred.shape
    assert_grad_close(grad, ref.regression_grad_ref(kind, pred, target, reduction, w), dtype)
    # The loss returned alongside is the same as without return_grad.
    plain = fn(pred, target, reduction=reduction, sample_weight=w)
    np.testing.assert_array_equal(np.asarray(loss), np.asarray(plain))


def test_mae_grad_is_zero_where_pred_equals_target(isa):
    pred = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 5.0]])
    target = np.array([[1.0, 0.0, 3.0], [0.0, 1.0, 5.0]])
    _, grad = fastloss.mae(pred, target, reduction="sum", return_grad=True)
    np.testing.assert_array_equal(grad, [[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("layout", ["contiguous", "strided", "reversed", "fortran"], indirect=True)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=["f32", "f64", "f16"])
def test_mae_grad_at_equal_inputs_is_plus_zero(isa, dtype, layout, reduction):
    # SPEC: the MAE gradient at pred == target is +0.0 on every path, whatever the zeros' signs
    # (p - t is -0 for -0 - +0 and for -x - -x with x = 0); sizes reach the vector tails.
    for size in (1, 7, 17, 33, 65):
        rng = np.random.default_rng(size)
        target = rng.standard_normal((3, size)).astype(dtype)
        target[:, ::3] = np.array(0.0, dtype)
        target[:, 1::3] = np.array(-0.0, dtype)
        pred = layout(target.copy())
        pred_neg_zero = layout(np.where(target == 0, np.array(-0.0, dtype), target))
        for p in (pred, pred_neg_zero):
            _, grad = fastloss.mae(p, layout(target), reduction=reduction, return_grad=True)
            assert np.array_equal(grad, np.zeros_like(grad))
            assert not np.signbit(grad).any(), (
                f"-0.0 in the MAE gradient at {np.argwhere(np.signbit(grad))[:3]}"
            )


@pytest.mark.parametrize("loss", [fastloss.mse, fastloss.mae])
@pytest.mark.parametrize("cols", [1, 3, 40])
def test_float32_grad_with_a_weight_beyond_float32(isa, loss, cols):
    # grad_scale * weight = 1e308 does not fit float32: a zero element gradient must stay +0 (not
    # inf * 0 = NaN), a nonzero one overflows to +-inf as the exact product does (a fuzz finding).
    pred = np.zeros((2, cols), np.float32)
    pred[1] = np.linspace(-1, 1, cols, dtype=np.float32) + np.float32(0.5)
    target = np.zeros((2, cols), np.float32)
    for layout in (lambda a: a, lambda a: a[:, ::-1]):
        p, t = layout(pred), layout(target)
        _, grad = loss(p, t, reduction="sum", sample_weight=np.array([1e308, 1e308]), return_grad=True)
        assert not np.isnan(grad).any()
        np.testing.assert_array_equal(grad[0], np.zeros(cols, np.float32))
        assert not np.signbit(grad[0]).any()
        np.testing.assert_array_equal(grad[1], np.sign(p[1]).astype(np.float32) * np.float32(np.inf))


def test_grad_dtype_follows_the_first_argument():
    _, g16 = fastloss.mse(np.ones(5, np.float16), np.zeros(5, np.float16), return_grad=True)
    assert g16.dtype == np.float16
    _, gint = fastloss.mse(np.arange(5), np.zeros(5), return_grad=True)
    assert gint.dtype == np.float64
    np.testing.assert_allclose(gint, 2 * np.arange(5) / 5)
    _, gce = fastloss.cross_entropy(np.zeros((2, 3), np.float32), np.array([0, 1]), return_grad=True)
    assert gce.dtype == np.float32 and gce.shape == (2, 3)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("target_kind", ["index", "prob"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("shape", [(1, 1), (7, 9), (33, 17), (5,)])
def test_cross_entropy_grad_matches_reference(isa, reduction, dtype, target_kind, weighted, smoothing, shape):
    rng = np.random.default_rng(hash((reduction, target_kind, shape)) % 2**32)
    logits = (3 * rng.standard_normal(shape)).astype(dtype)
    c = shape[-1]
    if target_kind == "index":
        target = rng.integers(0, c, size=shape[:-1])
        if target.ndim and target.size > 2:
            target[1] = -100
    else:
        target = rng.random(shape).astype(dtype)
    weight = rng.random(c) + 0.1 if weighted else None
    loss, grad = fastloss.cross_entropy(
        logits, target, reduction=reduction, weight=weight, label_smoothing=smoothing, return_grad=True
    )
    assert grad.shape == logits.shape and grad.dtype == dtype
    want = ref.cross_entropy_grad_ref(logits, target, reduction, weight, -100, smoothing)
    assert_grad_close(grad, want, dtype)


def test_cross_entropy_grad_of_ignored_rows_is_zero():
    logits = np.random.default_rng(1).standard_normal((4, 5))
    _, grad = fastloss.cross_entropy(logits, np.array([1, -100, 3, -100]), return_grad=True)
    np.testing.assert_array_equal(grad[[1, 3]], 0.0)
    assert np.all(np.abs(grad[[0, 2]]).sum(axis=1) > 0)


def test_cross_entropy_grad_extreme_logits_is_finite():
    logits = np.array([[3e38, -3e38, 0.0], [1e4, -1e4, 5.0]], dtype=np.float32)
    _, grad = fastloss.cross_entropy(logits, np.array([1, 2]), reduction="sum", return_grad=True)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, [[1, -1, 0], [1, 0, -1]], atol=1e-6)


INFO_NCE_CASES = [
    ("unpaired", 7, 1, 300, 6),
    ("unpaired", 9, 17, 129, 5),
    ("paired", 7, 1, 5, 6),
    ("paired", 9, 3, 130, 4),
    ("in_batch", 1, 0, 0, 3),
    ("in_batch", 17, 0, 0, 9),
]


@pytest.mark.parametrize("mode,n,_unused,m,d", INFO_NCE_CASES)
@pytest.mark.parametrize("reduction", ("none", "sum", "mean"))
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_info_nce_grad_matches_reference(isa, mode, n, _unused, m, d, reduction, normalize, dtype):
    rng = np.random.default_rng(hash((mode, n, m, d)) % 2**32)
    q = rng.standard_normal((n, d)).astype(dtype)
    k = rng.standard_normal((n, d)).astype(dtype)
    negatives = None
    if mode == "unpaired":
        negatives = rng.standard_normal((m, d)).astype(dtype)
    elif mode == "paired":
        negatives = rng.standard_normal((n, m, d)).astype(dtype)
    symmetrics = [False, True] if mode == "in_batch" else [False]
    for symmetric in symmetrics:
        kwargs = dict(
            temperature=0.5,
            reduction=reduction,
            normalize=normalize,
            symmetric=symmetric,
            negative_mode="paired" if mode == "paired" else "unpaired",
        )
        loss, grads = fastloss.info_nce(q, k, negatives, return_grad=True, **kwargs)
        want = ref.info_nce_grad_ref(q, k, negatives, **kwargs)
        for name, got, expected in zip(
            ("d_query", "d_positive_key", "d_negative_keys"), grads, want, strict=False
        ):
            if expected is None:
                assert got is None, name
            else:
                assert got.dtype == dtype
                assert_grad_close(got, expected, dtype, f"{name} (symmetric={symmetric})")


def test_info_nce_grad_tiny_temperature_is_finite():
    rng = np.random.default_rng(3)
    q, k, queue = (rng.standard_normal(s).astype(np.float32) for s in [(8, 16), (8, 16), (500, 16)])
    loss, grads = fastloss.info_nce(q, k, queue, temperature=0.001, normalize=True, return_grad=True)
    assert np.isfinite(loss)
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_gradients_are_bit_identical_across_threads(restore_threads):
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((20000, 100)).astype(np.float32)
    labels = rng.integers(0, 100, 20000)
    q, k = (
        rng.standard_normal((300, 64)).astype(np.float32),
        rng.standard_normal((300, 64)).astype(np.float32),
    )
    queue = rng.standard_normal((5000, 64)).astype(np.float32)
    results = []
    for threads in (1, 2, 3):
        fastloss.set_num_threads(threads)
        _, g_ce = fastloss.cross_entropy(logits, labels, label_smoothing=0.1, return_grad=True)
        _, g_nce = fastloss.info_nce(q, k, queue, normalize=True, return_grad=True)
        results.append((g_ce, g_nce))
    for g_ce, g_nce in results[1:]:
        np.testing.assert_array_equal(g_ce, results[0][0])
        for a, b in zip(g_nce, results[0][1], strict=False):
            np.testing.assert_array_equal(a, b)


# --- finite differences (float64): the gradient is the derivative of the returned loss -------


def central_difference(f, x, h=1e-6):
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += h
        down[index] -= h
        grad[index] = (f(up) - f(down)) / (2 * h)
    return grad


def total(loss):
    return float(np.sum(loss))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(1, 5),
    c=st.integers(1, 6),
    reduction=st.sampled_from(REDUCTIONS),
    smoothing=st.sampled_from([0.0, 0.25]),
    weighted=st.booleans(),
    soft=st.booleans(),
)
def test_cross_entropy_grad_finite_differences(seed, n, c, reduction, smoothing, weighted, soft):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, c))
    target = rng.random((n, c)) if soft else rng.integers(0, c, n)
    weight = rng.random(c) + 0.1 if weighted else None
    kwargs = dict(reduction=reduction, weight=weight, label_smoothing=smoothing)
    _, grad = fastloss.cross_entropy(logits, target, return_grad=True, **kwargs)
    numeric = central_difference(lambda x: total(fastloss.cross_entropy(x, target, **kwargs)), logits)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    kind=st.sampled_from(["mse", "mae"]),
    n=st.integers(1, 4),
    f=st.integers(1, 5),
    reduction=st.sampled_from(REDUCTIONS),
    weighted=st.booleans(),
)
def test_regression_grad_finite_differences(seed, kind, n, f, reduction, weighted):
    rng = np.random.default_rng(seed)
    pred, target = rng.standard_normal((n, f)), rng.standard_normal((n, f))
    w = rng.random(n) + 0.1 if weighted else None
    fn = getattr(fastloss, kind)
    _, grad = fn(pred, target, reduction=reduction, sample_weight=w, return_grad=True)
    numeric = central_difference(lambda x: total(fn(x, target, reduction=reduction, sample_weight=w)), pred)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(1, 4),
    m=st.integers(0, 5),
    d=st.integers(1, 4),
    mode=st.sampled_from(["in_batch", "symmetric", "unpaired", "paired"]),
    reduction=st.sampled_from(["none", "sum", "mean"]),
    normalize=st.booleans(),
)
def test_info_nce_grad_finite_differences(seed, n, m, d, mode, reduction, normalize):
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    negatives = {"unpaired": rng.standard_normal((m, d)), "paired": rng.standard_normal((n, m, d))}.get(mode)
    kwargs = dict(
        temperature=0.7,
        reduction=reduction,
        normalize=normalize,
        symmetric=mode == "symmetric",
        negative_mode="paired" if mode == "paired" else "unpaired",
    )
    _, (d_q, d_k, d_n) = fastloss.info_nce(q, k, negatives, return_grad=True, **kwargs)
    numeric_q = central_difference(lambda x: total(fastloss.info_nce(x, k, negatives, **kwargs)), q)
    numeric_k = central_difference(lambda x: total(fastloss.info_nce(q, x, negatives, **kwargs)), k)
    np.testing.assert_allclose(d_q, numeric_q, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(d_k, numeric_k, rtol=1e-5, atol=1e-7)
    if negatives is not None:
        numeric_n = central_difference(lambda x: total(fastloss.info_nce(q, k, x, **kwargs)), negatives)
        np.testing.assert_allclose(d_n, numeric_n, rtol=1e-5, atol=1e-7)


@not_under_sanitizers
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_info_nce_backward_memory_is_outputs_plus_a_tile():
    """The backward pass streams the queue twice and keeps O(N + tile) scratch: the process's
    peak grows by the gradient outputs (the same size as the inputs) and a few MB, never by the
    67 MB that the 256 x 65537 float32 logits would take."""
    code = textwrap.dedent(
        """
        import numpy as np, fastloss
        def hwm():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        rng = np.random.default_rng(0)
        q = rng.standard_normal((256, 128), dtype=np.float32)
        k = rng.standard_normal((256, 128), dtype=np.float32)
        queue = rng.standard_normal((65536, 128), dtype=np.float32)
        fastloss.info_nce(q[:8], k[:8], queue[:64], return_grad=True)  # warm up allocators/threads
        before = hwm()
        loss, grads = fastloss.info_nce(q, k, queue, return_grad=True)
        outputs = sum(g.nbytes for g in grads)
        print(hwm() - before - outputs)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    extra = int(out.stdout.strip().splitlines()[-1])
    print(f"InfoNCE backward extra peak memory beyond its outputs: {extra / 2**20:.2f} MiB")
    assert extra < 8 * 2**20
