"""K-dimensional cross-entropy, (N, C, d1, ..., dK) logits (SPEC.md), and gradients w.r.t.
probability targets.

References: torch.nn.functional.cross_entropy (values and autograd gradients) for every option
and reduction, a float64 NumPy formula for sample weights, and, for exactness, the 2-D call on
the same rows given contiguously (np.moveaxis(logits, 1, -1).reshape(-1, C)): the K-dim call
must give those bits on every ISA path, whatever the layout.
"""

from __future__ import annotations

import re
import tracemalloc

import fastloss
import numpy as np
import pytest
from fastloss import _core, _losses

torch = pytest.importorskip("torch")
F = torch.nn.functional

# (N, C, d1, ..., dK): K = 1, 2, 3, tiny and odd sizes, C = 1, a zero-size spatial axis.
SHAPES = [
    (2, 3, 4),
    (1, 1, 5),
    (3, 7, 5, 1),
    (2, 5, 3, 4),
    (2, 1, 3, 3),
    (1, 2, 1, 1),
    (1, 3, 2, 3, 2),
    (2, 17, 3, 5),
    (2, 3, 0, 2),
]
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


def _rows_2d(a: np.ndarray) -> np.ndarray:
    """The K-dim array's rows (n, position) as a contiguous (rows, C) array."""
    return np.ascontiguousarray(np.moveaxis(a, 1, -1).reshape(-1, a.shape[1]))


def _case(shape, dtype, seed=0, ignored=True, soft=False):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    classes = shape[1]
    index_shape = (shape[0],) + shape[2:]
    if soft:
        t = rng.random(shape).astype(dtype)
    else:
        t = rng.integers(0, classes, index_shape)
        if ignored and t.size > 2:
            t.reshape(-1)[:: max(2, t.size // 3)] = -100
    w = rng.random(classes) + 0.5
    return x, t, w


def _torch_loss(x, t, reduction, w, smoothing, requires_grad=False):
    xt = torch.from_numpy(x).requires_grad_(requires_grad)
    tt = torch.from_numpy(t).requires_grad_(requires_grad and t.dtype.kind == "f")
    wt = None if w is None else torch.from_numpy(w).to(xt.dtype)
    red = "sum" if reduction == "batchmean" else reduction
    loss = F.cross_entropy(xt, tt, weight=wt, reduction=red, label_smoothing=smoothing)
    if reduction == "batchmean":
        loss = loss / (1 if x.ndim == 1 else x.shape[0])  # N samples; one for (C,) logits
    return xt, tt, loss


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("soft", [False, True], ids=["index", "prob"])
def test_matches_torch_every_option(shape, dtype, soft):
    x, t, w = _case(shape, dtype, soft=soft)
    for weight in (None, w):
        for smoothing in (0.0, 0.15):
            for reduction in ("none", "sum", "mean", "batchmean"):
                xt, _, ref = _torch_loss(x, t, reduction, weight, smoothing, requires_grad=True)
                got, grad = fastloss.cross_entropy(
                    x, t, reduction=reduction, weight=weight, label_smoothing=smoothing, return_grad=True
                )
                ref.sum().backward()
                if reduction == "none":
                    assert got.shape == (shape[0],) + shape[2:] and got.dtype == dtype
                    np.testing.assert_allclose(got, ref.detach().numpy(), **TOL[dtype])
                else:
                    assert isinstance(got, float)
                    np.testing.assert_allclose(got, float(ref.detach()), **TOL[dtype])
                assert grad.shape == shape and grad.dtype == dtype
                np.testing.assert_allclose(grad, xt.grad.numpy(), **TOL[dtype])


def test_all_ignored_mean_is_nan_like_torch():
    x = np.random.default_rng(1).standard_normal((2, 4, 3, 3))
    t = np.full((2, 3, 3), -100)
    ref = F.cross_entropy(torch.from_numpy(x), torch.from_numpy(t))
    assert np.isnan(float(ref))
    assert np.isnan(fastloss.cross_entropy(x, t))
    assert fastloss.cross_entropy(x, t, reduction="sum") == 0.0
    np.testing.assert_array_equal(fastloss.cross_entropy(x, t, reduction="none"), np.zeros((2, 3, 3)))


def test_custom_ignore_index():
    x, t, _ = _case((2, 5, 4, 3), np.float64, ignored=False)
    t[0, 1, :] = 2
    got = fastloss.cross_entropy(x, t, ignore_index=2)
    ref = F.cross_entropy(torch.from_numpy(x), torch.from_numpy(t), ignore_index=2)
    assert got == pytest.approx(float(ref), rel=1e-13)


# -- sample weights ---------------------------------------------------------------------------


def _weighted_ref(x, t, w_elem, w_n, weight, reduction):
    """The formula in float64: element losses (torch "none") times their sample weight; "mean"
    divides by sum(w * weight[t]) over kept elements (sum(w) for probabilities), "batchmean" by
    sum(w_n) for (N,) weights, sum(w) / S for element weights."""
    losses = F.cross_entropy(
        torch.from_numpy(x), torch.from_numpy(t), weight=torch.from_numpy(weight), reduction="none"
    ).numpy()
    total = float(np.sum(losses * w_elem, dtype=np.float64))
    if reduction == "sum":
        return total
    if reduction == "mean":
        if t.dtype.kind == "f":
            return total / float(np.sum(w_elem))
        kept = t != -100
        return total / float(np.sum(w_elem[kept] * weight[t[kept]]))
    positions = int(np.prod(x.shape[2:]))
    return total / (float(np.sum(w_n)) if w_n is not None else float(np.sum(w_elem)) / positions)


@pytest.mark.parametrize("soft", [False, True], ids=["index", "prob"])
@pytest.mark.parametrize("per", ["sample", "element"])
def test_sample_weight(soft, per):
    shape = (3, 4, 2, 5)
    x, t, weight = _case(shape, np.float64, seed=3, soft=soft)
    rng = np.random.default_rng(4)
    if per == "sample":
        w_n = rng.random(shape[0]) + 0.25
        w_elem = np.broadcast_to(w_n[:, None, None], t.shape if not soft else (shape[0],) + shape[2:])
        sample_weight = w_n
    else:
        w_n = None
        w_elem = rng.random((shape[0],) + shape[2:])
        w_elem[0, 0, 0] = 0.0
        sample_weight = w_elem
    for reduction in ("sum", "mean", "batchmean"):
        got, grad = fastloss.cross_entropy(
            x, t, reduction=reduction, weight=weight, sample_weight=sample_weight, return_grad=True
        )
        assert got == pytest.approx(_weighted_ref(x, t, w_elem, w_n, weight, reduction), rel=1e-12)
        # The gradient of the same formula through torch autograd.
        xt = torch.from_numpy(x).requires_grad_()
        losses = F.cross_entropy(xt, torch.from_numpy(t), weight=torch.from_numpy(weight), reduction="none")
        total = (losses * torch.from_numpy(np.ascontiguousarray(w_elem))).sum()
        divisor = (
            total.detach() / _weighted_ref(x, t, w_elem, w_n, weight, reduction) if reduction != "sum" else 1
        )
        (total / divisor).backward()
        np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-11, atol=1e-14)
    none = fastloss.cross_entropy(x, t, reduction="none", weight=weight, sample_weight=sample_weight)
    ref = F.cross_entropy(
        torch.from_numpy(x), torch.from_numpy(t), weight=torch.from_numpy(weight), reduction="none"
    ).numpy()
    np.testing.assert_allclose(none, ref * w_elem, rtol=1e-13, atol=1e-15)


def test_sample_weight_errors():
    x, t, _ = _case((2, 3, 4), np.float64)
    with pytest.raises(
        ValueError, match=re.escape("sample_weight: expected shape (2,)") + ".*" + r"\(2, 4\)"
    ):
        fastloss.cross_entropy(x, t, sample_weight=np.ones(4))
    with pytest.raises(ValueError, match="sample_weight.*>= 0"):
        fastloss.cross_entropy(x, t, sample_weight=-np.ones((2, 4)))
    with pytest.raises(ValueError, match="sample_weight.*finite"):
        fastloss.cross_entropy(x, t, sample_weight=np.array([1.0, np.inf]))


# -- layouts and bits ------------------------------------------------------------------------


def _layouts(x: np.ndarray) -> dict[str, np.ndarray]:
    """The same values in other memory: channels-last, Fortran, reversed axes, transposed spatial
    axes, a strided slice (spatial axes that do not merge: copied), read-only."""
    channels_last = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1)
    big = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)
    big[..., ::2] = x
    transposed = np.ascontiguousarray(np.swapaxes(x, 2, -1))
    reversed_ = np.ascontiguousarray(x[:, ::-1, ::-1])[:, ::-1, ::-1]
    readonly = x.copy()
    readonly.flags.writeable = False
    return {
        "natural": x,
        "channels-last": channels_last,
        "fortran": np.asfortranarray(x),
        "reversed": reversed_,
        "transposed-spatial": np.swapaxes(transposed, 2, -1),
        "strided": big[..., ::2],
        "readonly": readonly,
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "shape",
    # Small groups, odd sizes, C = 1, and C large enough for blocks of one group (C >= 1024)
    # and for groups beyond a reduction block (C >= 16384).
    [(2, 3, 5, 3), (3, 17, 2, 7), (1, 40, 3, 6), (2, 1, 4, 4), (2, 1500, 3, 7), (1, 16400, 3, 7)],
    ids=str,
)
def test_bits_equal_the_2d_contiguous_call(isa, shape, dtype):
    x, t, w = _case(shape, dtype, seed=7)
    _, q, _ = _case(shape, dtype, seed=8, soft=True)
    x2, t2, q2 = _rows_2d(x), t.reshape(-1), _rows_2d(q)
    options = dict(weight=w, label_smoothing=0.1)
    ref_none = fastloss.cross_entropy(x2, t2, reduction="none", **options)
    ref_reductions = {r: fastloss.cross_entropy(x2, t2, reduction=r, **options) for r in ("sum", "mean")}
    ref_grad = fastloss.cross_entropy(x2, t2, return_grad=True, **options)[1]
    ref_soft = _losses.cross_entropy_pass(x2, q2, w, -100, 0.1, "sum", True, None, return_target_grad=True)
    for name, xl in _layouts(x).items():
        assert np.array_equal(xl, x)
        none = fastloss.cross_entropy(xl, t, reduction="none", **options)
        assert none.shape == t.shape
        assert none.reshape(-1).tobytes() == ref_none.tobytes(), name
        for reduction, value in ref_reductions.items():
            assert fastloss.cross_entropy(xl, t, reduction=reduction, **options) == value, (name, reduction)
        grad = fastloss.cross_entropy(xl, t, return_grad=True, **options)[1]
        assert grad.shape == shape
        assert _rows_2d(grad).tobytes() == ref_grad.tobytes(), name
        for qname, ql in (("natural", q), ("layout", _layouts(q)[name])):
            partial, _, d_logits, d_target = _losses.cross_entropy_pass(
                xl, ql, w, -100, 0.1, "sum", True, None, return_target_grad=True
            )
            assert partial.result("sum") == ref_soft[0].result("sum"), (name, qname)
            assert _rows_2d(d_logits).tobytes() == ref_soft[2].tobytes(), (name, qname)
            assert d_target.shape == shape
            assert _rows_2d(d_target).tobytes() == ref_soft[3].tobytes(), (name, qname)


def test_threads_do_not_change_bits(restore_threads):
    x, t, w = _case((4, 6, 80, 80), np.float32, seed=9)
    fastloss.set_num_threads(1)
    one = fastloss.cross_entropy(x, t, reduction="none", weight=w), fastloss.cross_entropy(x, t, weight=w)
    fastloss.set_num_threads(2)
    two = fastloss.cross_entropy(x, t, reduction="none", weight=w), fastloss.cross_entropy(x, t, weight=w)
    assert one[0].tobytes() == two[0].tobytes() and one[1] == two[1]


def test_natural_layout_is_not_copied():
    # 4 MB of (N, C, H, W) float32 logits with class stride H * W: the call allocates (through
    # NumPy) only the small outputs, not a copy of the logits.
    x, t, _ = _case((4, 64, 64, 64), np.float32, seed=10, ignored=False)
    tracemalloc.start()
    try:
        fastloss.cross_entropy(x, t, reduction="none")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < x.nbytes // 8


def test_fast_path_declines_kdim():
    x, t, _ = _case((2, 3, 4), np.float64, ignored=False)
    assert _core.cross_entropy_fast(x, t, "mean") is None
    assert fastloss.cross_entropy(x, t) == pytest.approx(
        float(F.cross_entropy(torch.from_numpy(x), torch.from_numpy(t))), rel=1e-13
    )


# -- gradients w.r.t. probability targets ------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4, 5), (5,), (2, 3, 4), (2, 4, 3, 2)], ids=str)
def test_target_gradient_matches_torch(shape, dtype):
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape).astype(dtype)
    q = rng.random(shape).astype(dtype)
    w = rng.random(shape[0] if len(shape) == 1 else shape[1]) + 0.5
    for weight in (None, w):
        for smoothing in (0.0, 0.2):
            for reduction in ("none", "sum", "mean", "batchmean"):
                xt, qt, ref = _torch_loss(x, q, reduction, weight, smoothing, requires_grad=True)
                ref.sum().backward()
                _, _, d_logits, d_target = _losses.cross_entropy_pass(
                    x, q, weight, -100, smoothing, reduction, True, None, return_target_grad=True
                )
                assert d_target.dtype == dtype and d_target.shape == shape
                np.testing.assert_allclose(d_target, qt.grad.numpy(), **TOL[dtype])
                np.testing.assert_allclose(d_logits, xt.grad.numpy(), **TOL[dtype])


def test_target_gradient_only_for_probabilities():
    x, t, _ = _case((3, 4), np.float64)
    *_, d_target = _losses.cross_entropy_pass(
        x, t, None, -100, 0.0, "mean", True, None, return_target_grad=True
    )
    assert d_target is None
    # The NumPy API's gradient stays the one w.r.t. logits.
    q = np.full((3, 4), 0.25)
    loss, grad = fastloss.cross_entropy(x, q, return_grad=True)
    assert grad.shape == x.shape
    xt = torch.from_numpy(x).requires_grad_()
    F.cross_entropy(xt, torch.from_numpy(q)).backward()
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-12)


# -- streaming and dask -------------------------------------------------------------------------


@pytest.mark.parametrize("soft", [False, True], ids=["index", "prob"])
def test_accumulator_kdim_same_bits(soft):
    x, t, w = _case((7, 5, 3, 4), np.float64, seed=12, soft=soft)
    sw = np.random.default_rng(13).random((7, 3, 4))
    for reduction in ("sum", "mean", "batchmean"):
        for sample_weight in (None, sw):
            acc = fastloss.Accumulator("cross_entropy", reduction=reduction, weight=w, label_smoothing=0.1)
            other = fastloss.Accumulator("cross_entropy", reduction=reduction, weight=w, label_smoothing=0.1)
            for lo, hi, into in ((0, 2, acc), (2, 3, other), (3, 7, acc)):
                into.update(
                    x[lo:hi], t[lo:hi], sample_weight=None if sample_weight is None else sample_weight[lo:hi]
                )
            acc.merge(other)
            one = fastloss.cross_entropy(
                x, t, reduction=reduction, weight=w, label_smoothing=0.1, sample_weight=sample_weight
            )
            assert acc.result() == one, (reduction, sample_weight is None)


def test_accumulator_kdim_shape_mismatch():
    x, t, _ = _case((4, 5, 3, 4), np.float64)
    acc = fastloss.Accumulator("cross_entropy")
    acc.update(x, t)
    with pytest.raises(ValueError, match="do not match"):
        acc.update(x[:, :, :2], t[:, :2])
    with pytest.raises(ValueError, match="logits"):
        acc.update(x[0, :, 0, 0], t[0, 0, 0])


def test_dask_kdim_same_bits():
    da = pytest.importorskip("dask.array")
    import fastloss.dask as fd

    x, t, w = _case((7, 5, 3, 4), np.float64, seed=14)
    _, q, _ = _case((7, 5, 3, 4), np.float64, seed=15, soft=True)
    for target in (t, q):
        for reduction in ("none", "sum", "mean", "batchmean"):
            got = fd.cross_entropy(
                da.from_array(x, chunks=(3, 2, 3, 2)),
                da.from_array(target, chunks=2),
                reduction=reduction,
                weight=w,
            ).compute()
            one = fastloss.cross_entropy(x, target, reduction=reduction, weight=w)
            assert np.asarray(got).tobytes() == np.asarray(one).tobytes(), reduction


# -- errors -----------------------------------------------------------------------------------


def test_single_sample_logits_with_n_targets_says_n_c():
    with pytest.raises(
        ValueError, match=re.escape("logits must be (N, C) for N targets; got logits (64,) and target (64,)")
    ):
        fastloss.cross_entropy(np.zeros(64), np.zeros(64, dtype=np.int64))


def test_float_class_indices_say_integers():
    with pytest.raises(ValueError, match=r"class indices must be integers.*target\.astype\(np\.int64\)"):
        fastloss.cross_entropy(np.zeros((6, 5)), np.array([0.0, 1.0, 2.0, 3.0, 4.0, 0.0]))
    with pytest.raises(ValueError, match=r"class indices must be integers.*astype\(np\.int64\)"):
        fastloss.cross_entropy(np.zeros((2, 5, 3, 3)), np.zeros((2, 3, 3)))


@pytest.mark.parametrize("target_shape", [(2, 3), (2, 4, 3), (3, 3, 4), (2, 3, 4, 1), (2,)], ids=str)
def test_kdim_target_shape_mismatch(target_shape):
    x = np.zeros((2, 5, 3, 4))
    message = re.escape(
        "target: class indices for logits (2, 5, 3, 4) must have shape (N, d1, ..., dK) = (2, 3, 4)"
    )
    with pytest.raises(ValueError, match=message + re.escape(f"; got {target_shape}")):
        fastloss.cross_entropy(x, np.zeros(target_shape, dtype=np.int64))
    with pytest.raises(
        ValueError, match=re.escape("probabilities must have the shape of logits (2, 5, 3, 4)")
    ):
        fastloss.cross_entropy(x, np.zeros(target_shape + (1,)))


def test_kdim_bad_label_names_value_and_multi_index():
    x = np.zeros((2, 5, 3, 4))
    t = np.zeros((2, 3, 4), dtype=np.int64)
    t[1, 2, 0] = 9
    with pytest.raises(ValueError, match=re.escape("class index 9 at position (1, 2, 0) is out of range")):
        fastloss.cross_entropy(x, t)
    # Any layout of the target: the position is that of the target's own indices.
    tf = np.asfortranarray(t)
    with pytest.raises(ValueError, match=re.escape("at position (1, 2, 0)")):
        fastloss.cross_entropy(x, tf)
    with pytest.raises(ValueError, match=re.escape("class index -2 at position (0, 1, 3)")):
        t[1, 2, 0] = 0
        t[0, 1, 3] = -2
        fastloss.cross_entropy(x, t.astype(np.int32))
    big = np.zeros((2, 3, 4), dtype=np.uint64)
    big[0, 2, 1] = 2**63
    with pytest.raises(ValueError, match=re.escape(f"class index {2**63} at position (0, 2, 1)")):
        fastloss.cross_entropy(x, big)


# -- fastloss.torch -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 4, 3), (2, 5, 3, 4), (1, 3, 2, 2, 2)], ids=str)
def test_torch_kdim_values_and_gradients(shape, dtype):
    import fastloss.torch as ft

    gen = torch.Generator().manual_seed(16)
    x = torch.randn(*shape, generator=gen, dtype=dtype)
    t = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=gen)
    t.view(-1)[0] = -100
    q = torch.rand(*shape, generator=gen, dtype=dtype)
    w = torch.rand(shape[1], generator=gen, dtype=dtype) + 0.5
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    for target in (t, q):
        for reduction in ("none", "sum", "mean"):
            a = x.clone().requires_grad_()
            b = x.clone().requires_grad_()
            ta = target.clone().requires_grad_(target.is_floating_point())
            tb = target.clone().requires_grad_(target.is_floating_point())
            got = ft.cross_entropy(a, ta, w, ignore_index=-100, reduction=reduction, label_smoothing=0.1)
            ref = F.cross_entropy(b, tb, weight=w, reduction=reduction, label_smoothing=0.1)
            torch.testing.assert_close(got, ref, **tol)
            upstream = torch.rand(got.shape, generator=gen, dtype=dtype)
            (got * upstream).sum().backward()
            (ref * upstream).sum().backward()
            torch.testing.assert_close(a.grad, b.grad, **tol)
            if target.is_floating_point():
                torch.testing.assert_close(ta.grad, tb.grad, **tol)
    module = ft.CrossEntropyLoss(weight=w, label_smoothing=0.1)
    torch.testing.assert_close(
        module(x, t), torch.nn.CrossEntropyLoss(weight=w, label_smoothing=0.1)(x, t), **tol
    )


@pytest.mark.parametrize("shape", [(3, 4), (4,), (2, 3, 2), (2, 3, 2, 2)], ids=str)
def test_torch_gradcheck_logits_and_soft_target(shape):
    import fastloss.torch as ft

    gen = torch.Generator().manual_seed(17)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)
    q = torch.rand(*shape, generator=gen, dtype=torch.float64, requires_grad=True)
    classes = shape[0] if len(shape) == 1 else shape[1]
    w = torch.rand(classes, generator=gen, dtype=torch.float64) + 0.5
    for reduction in ("none", "sum", "mean"):
        assert torch.autograd.gradcheck(
            lambda a, b, r=reduction: ft.cross_entropy(
                a, b, w, ignore_index=-100, reduction=r, label_smoothing=0.2
            ),
            (x, q),
        )
        assert torch.autograd.gradcheck(
            lambda b, r=reduction: ft.cross_entropy(
                x.detach(), b, None, ignore_index=-100, reduction=r, label_smoothing=0.0
            ),
            (q,),
        )
    if len(shape) > 1:
        t = torch.randint(0, classes, (shape[0],) + shape[2:], generator=gen)
        assert torch.autograd.gradcheck(
            lambda a: ft.cross_entropy(a, t, w, ignore_index=-100, reduction="mean", label_smoothing=0.1),
            (x,),
        )


def test_torch_soft_target_grad_only_target_and_no_grad():
    import fastloss.torch as ft

    x = torch.randn(3, 4, 2, dtype=torch.float64)
    q = torch.rand(3, 4, 2, dtype=torch.float64, requires_grad=True)
    ref_q = q.detach().clone().requires_grad_()
    ft.cross_entropy(x, q).backward()
    F.cross_entropy(x, ref_q).backward()
    torch.testing.assert_close(q.grad, ref_q.grad, rtol=1e-12, atol=1e-14)
    with torch.no_grad():
        value = ft.cross_entropy(x, q)
    torch.testing.assert_close(value, F.cross_entropy(x, q.detach()), rtol=1e-12, atol=0)


def test_torch_linear_cross_entropy_soft_target_grad_is_refused():
    import fastloss.torch as ft

    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    q = torch.rand(4, 5, dtype=torch.float64, requires_grad=True)
    with pytest.raises(
        NotImplementedError, match="linear_cross_entropy: gradients w.r.t. probability targets"
    ):
        ft.linear_cross_entropy(x, w, q)
