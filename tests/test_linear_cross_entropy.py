"""fastloss.linear_cross_entropy (SPEC.md): against torch.nn.functional.linear_cross_entropy
(PyTorch 2.13; values and the gradients of input, weight and bias), against a float64 NumPy
reference for z_loss and softcap (which torch lacks), gradcheck through fastloss.torch, the same
bits for any thread count, layout, streaming split or dask chunking, and the errors.

Tolerances: float64 rtol 1e-10 against torch; float32 rtol 2e-4 (the logits are float32 dot
products over H), both relative to the largest magnitude of the compared values (or of the
logits, for extreme ones). torch runs in float64 on the (rounded) inputs in every comparison.
"""

from __future__ import annotations

import math
import pickle

import fastloss
import numpy as np
import pytest
from conftest import to_layout
from fastloss import Accumulator

REDUCTIONS = ("none", "sum", "mean", "batchmean")
SCALAR_REDUCTIONS = ("sum", "mean", "batchmean")
RTOL = {np.float32: 2e-4, np.float64: 1e-10}


def _torch():
    return pytest.importorskip("torch")


# ---------------------------------------------------------------------------------------------
# the float64 reference, written from the formulas


def reference(
    x,
    w,
    target,
    *,
    bias=None,
    weight=None,
    ignore_index=-100,
    label_smoothing=0.0,
    z_loss=0.0,
    softcap=None,
    reduction="mean",
    return_grad=False,
):
    """The loss (and, with return_grad, (d_x, d_w, d_b)) in float64, step by step:
    logits z = x @ w.T + b; s = softcap * tanh(z / softcap); lse = m + log(sum exp(s - m)) with
    m the row max; row loss = sum_c a_c (lse - s_c) + z_loss * lse**2, where a_c is the target's
    weighted, smoothed distribution:
      class index t: a_c = (1 - eps) * w_t * [c == t] + eps / V * w_c  (0 for ignored rows)
      probabilities y: a_c = w_c * ((1 - eps) * y_c + eps / V)
    "mean" divides by sum over non-ignored rows of w_t (index targets) or by N (probabilities)."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    target = np.asarray(target)
    n, v = x.shape[0], w.shape[0]
    z = x @ w.T
    if bias is not None:
        z = z + np.asarray(bias, dtype=np.float64)
    s = z if softcap is None else softcap * np.tanh(z / softcap)
    m = s.max(axis=1, keepdims=True)
    lse = m + np.log(np.exp(s - m).sum(axis=1, keepdims=True))
    class_w = np.ones(v) if weight is None else np.asarray(weight, dtype=np.float64)
    eps = label_smoothing
    if target.dtype.kind in "iu":
        keep = target != ignore_index
        a = np.zeros((n, v))
        for i in np.nonzero(keep)[0]:
            a[i] = eps / v * class_w
            a[i, target[i]] += (1 - eps) * class_w[target[i]]
        denominator = math.fsum(class_w[target[keep]])
    else:
        keep = np.ones(n, dtype=bool)
        a = class_w * ((1 - eps) * target.astype(np.float64) + eps / v)
        denominator = float(n)
    rows = (a * (lse - s)).sum(axis=1) + np.where(keep, z_loss * lse[:, 0] ** 2, 0.0)
    divisor = {"none": 1.0, "sum": 1.0, "mean": denominator, "batchmean": float(n)}[reduction]
    with np.errstate(divide="ignore", invalid="ignore"):
        loss = rows if reduction == "none" else float(np.float64(math.fsum(rows)) / divisor)
    if not return_grad:
        return loss
    # d row / d s_c = (sum_c a_c) p_c - a_c + 2 z_loss lse p_c (non-ignored rows), p = softmax(s)
    p = np.exp(s - lse)
    d_s = a.sum(axis=1, keepdims=True) * p - a + np.where(keep[:, None], 2 * z_loss * lse * p, 0.0)
    # d s / d z = 1 - tanh(z / softcap)**2
    d_z = d_s if softcap is None else d_s * (1 - np.tanh(z / softcap) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        d_z = d_z / divisor if reduction != "none" else d_z
    d_z = np.where(keep[:, None], d_z, 0.0)
    return loss, (d_z @ w, d_z.T @ x, None if bias is None else d_z.sum(axis=0))


def torch_reference(
    x, w, target, *, bias=None, weight=None, ignore_index=-100, label_smoothing=0.0, reduction="mean"
):
    """torch.nn.functional.linear_cross_entropy in float64 and its autograd gradients."""
    torch = _torch()
    F = torch.nn.functional
    xt = torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
    wt = torch.tensor(np.asarray(w, dtype=np.float64), requires_grad=True)
    bt = None if bias is None else torch.tensor(np.asarray(bias, dtype=np.float64), requires_grad=True)
    target = np.asarray(target)
    soft = target.dtype.kind == "f"
    tt = torch.tensor(target.astype(np.float64) if soft else target.astype(np.int64))
    cw = None if weight is None else torch.tensor(np.asarray(weight, dtype=np.float64))
    loss = F.linear_cross_entropy(
        xt,
        wt,
        tt,
        linear_bias=bt,
        weight=cw,
        reduction="sum" if reduction == "batchmean" else reduction,
        ignore_index=None if soft else ignore_index,
        label_smoothing=label_smoothing,
    )
    if reduction == "batchmean":
        loss = loss / x.shape[0]
    loss.sum().backward()
    value = loss.detach().numpy() if reduction == "none" else float(loss.detach())
    grads = (xt.grad.numpy(), wt.grad.numpy(), None if bt is None else bt.grad.numpy())
    return value, grads


def assert_close(got, ref, dtype, what, scale=None):
    """|got - ref| <= rtol * scale, scale the largest |ref| (at least 1) unless given."""
    rtol = RTOL[dtype]
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    assert not np.isnan(got).any() or np.array_equal(np.isnan(got), np.isnan(ref)), what
    if scale is None:
        scale = max(float(np.abs(ref).max(initial=0.0)), 1.0)
    np.testing.assert_allclose(got, ref, rtol=0, atol=rtol * scale, err_msg=what)


def check(x, w, target, dtype, reference_fn, *, reduction, what="", scale=None, **options):
    """fastloss's loss and gradients against reference_fn's."""
    loss, grads = fastloss.linear_cross_entropy(
        x, w, target, reduction=reduction, return_grad=True, **_fastloss_options(options)
    )
    ref_loss, ref_grads = reference_fn(x, w, target, reduction=reduction, return_grad=True, **options)
    what = f"{what} {reduction} {dtype.__name__}"
    if reduction == "none":
        assert isinstance(loss, np.ndarray) and loss.dtype == dtype and loss.shape == (x.shape[0],)
    else:
        assert type(loss) is float
    assert_close(loss, ref_loss, dtype, "loss " + what, scale)
    for name, got, ref in zip(("d_input", "d_linear_weight", "d_linear_bias"), grads, ref_grads, strict=True):
        if ref is None:
            assert got is None, name
            continue
        assert got.dtype == dtype and got.shape == ref.shape, name
        assert np.isfinite(got).all(), name
        assert_close(got, ref, dtype, f"{name} {what}")
    return loss, grads


def _fastloss_options(options):
    options = dict(options)
    if "bias" in options:
        options["linear_bias"] = options.pop("bias")
    return options


def _torch_fn(x, w, target, *, reduction, return_grad, **options):
    value, grads = torch_reference(x, w, target, reduction=reduction, **options)
    return value, grads


def make_case(rng, n, h, v, dtype, *, soft=False, bias=False, weight=False, ignore=None, scale=1.0):
    x = (rng.standard_normal((n, h)) * scale).astype(dtype)
    w = (rng.standard_normal((v, h)) / math.sqrt(h)).astype(dtype)
    options = {}
    if bias:
        options["bias"] = rng.standard_normal(v).astype(dtype)
    if weight:
        options["weight"] = rng.uniform(0.1, 2.0, size=v)
    if soft:
        target = rng.dirichlet(np.ones(v), size=n).astype(dtype)
    else:
        target = rng.integers(0, v, size=n)
        if ignore is not None:
            target[rng.random(n) < 0.3] = ignore
            options["ignore_index"] = ignore
    return x, w, target, options


# ---------------------------------------------------------------------------------------------
# against torch.nn.functional.linear_cross_entropy

TORCH_CASES = {
    "plain": {},
    "bias": {"bias": True},
    "weight": {"weight": True},
    "ignore": {"ignore": -100},
    "ignore_in_range": {"ignore": 3},
    "smoothing": {"label_smoothing": 0.2},
    "everything": {"bias": True, "weight": True, "ignore": -100, "label_smoothing": 0.1},
    "soft": {"soft": True},
    "soft_everything": {"soft": True, "bias": True, "weight": True, "label_smoothing": 0.3},
}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", list(TORCH_CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_against_torch(isa, dtype, case, reduction):
    spec = dict(TORCH_CASES[case])
    smoothing = spec.pop("label_smoothing", 0.0)
    rng = np.random.default_rng(len(case))
    x, w, target, options = make_case(rng, 97, 64, 129, dtype, **spec)
    if smoothing:
        options["label_smoothing"] = smoothing
    check(x, w, target, dtype, _torch_fn, reduction=reduction, what=case, **options)


@pytest.mark.parametrize("h", [1, 3, 64, 130])
@pytest.mark.parametrize("n", [1, 5, 97, 200])
@pytest.mark.parametrize("v", [1, 7, 127, 128, 129, 300, 1000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_sizes_straddle_tiles(dtype, v, n, h):
    rng = np.random.default_rng(1000 * v + 10 * n + h)
    x, w, target, options = make_case(rng, n, h, v, dtype, bias=True, weight=True, ignore=-100)
    for reduction in ("none", "mean"):
        check(x, w, target, dtype, _torch_fn, reduction=reduction, what=f"N={n} H={h} V={v}", **options)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_extreme_logits(isa, dtype, soft, reduction):
    """Logits of about 1e4 (float32 and float64) and mixed +-3e4 (float64): a finite loss, the
    right one, no nan anywhere. Errors are relative to the logits' magnitude."""
    rng = np.random.default_rng(7)
    x, w, target, options = make_case(rng, 33, 16, 129, dtype, soft=soft, scale=1e4 / math.sqrt(16) * 4)
    logits = x.astype(np.float64) @ w.astype(np.float64).T
    scale = float(np.abs(logits).max())
    assert scale > 5e3
    loss, _ = check(x, w, target, dtype, _torch_fn, reduction=reduction, scale=scale, what="1e4", **options)
    assert np.isfinite(loss).all()
    if dtype is np.float64:
        bias = rng.choice([-3e4, 3e4], size=129) + rng.standard_normal(129)
        loss, _ = check(
            x / 1e4,
            w,
            target,
            dtype,
            _torch_fn,
            reduction=reduction,
            scale=3e4,
            what="3e4",
            bias=bias,
            **options,
        )
        assert np.isfinite(loss).all()


def test_all_ignored_mean_is_nan_and_gradients_are_zero(isa):
    rng = np.random.default_rng(3)
    x, w, _, options = make_case(rng, 6, 5, 7, np.float64, bias=True)
    target = np.full(6, -100)
    loss, (dx, dw, db) = fastloss.linear_cross_entropy(
        x, w, target, linear_bias=options["bias"], return_grad=True
    )
    assert math.isnan(loss)
    torch_loss, _ = torch_reference(x, w, target, bias=options["bias"])
    assert math.isnan(torch_loss)
    for g in (dx, dw, db):
        assert np.array_equal(g, np.zeros_like(g))
    assert fastloss.linear_cross_entropy(x, w, target, reduction="sum") == 0.0
    assert fastloss.linear_cross_entropy(x, w, target, reduction="batchmean") == 0.0
    assert np.array_equal(fastloss.linear_cross_entropy(x, w, target, reduction="none"), np.zeros(6))


def test_ignored_rows_contribute_nothing(isa):
    rng = np.random.default_rng(4)
    x, w, target, options = make_case(rng, 40, 9, 130, np.float64, bias=True, weight=True, ignore=5)
    target[target == 5] = 6  # only the rows that make_case ignored
    target[::3] = 5
    kept = target != 5
    for reduction in SCALAR_REDUCTIONS:
        if reduction == "batchmean":
            continue  # its denominator counts the ignored rows
        full = fastloss.linear_cross_entropy(x, w, target, reduction=reduction, **_fastloss_options(options))
        part = fastloss.linear_cross_entropy(
            x[kept], w, target[kept], reduction=reduction, **_fastloss_options(options)
        )
        assert full == part, reduction
    _, (dx, dw, db) = fastloss.linear_cross_entropy(
        x, w, target, reduction="sum", return_grad=True, **_fastloss_options(options)
    )
    assert np.array_equal(dx[~kept], np.zeros_like(dx[~kept]))


def test_default_is_mean_and_ignore_index_minus_100(isa):
    rng = np.random.default_rng(5)
    x, w, target, _ = make_case(rng, 8, 4, 6, np.float64, ignore=-100)
    got = fastloss.linear_cross_entropy(x, w, target)
    expected, _ = torch_reference(x, w, target)
    assert got == pytest.approx(expected, rel=1e-12)


def test_equals_cross_entropy_of_the_logits(isa):
    """The same loss as fastloss.cross_entropy of the materialised logits (to rounding)."""
    rng = np.random.default_rng(6)
    x, w, target, options = make_case(rng, 50, 20, 300, np.float64, bias=True, weight=True, ignore=-100)
    logits = x @ w.T + options["bias"]
    for reduction in REDUCTIONS:
        got = fastloss.linear_cross_entropy(x, w, target, reduction=reduction, **_fastloss_options(options))
        expected = fastloss.cross_entropy(
            logits, target, reduction=reduction, weight=options["weight"], ignore_index=-100
        )
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# z_loss and softcap, against the NumPy reference


def test_reference_agrees_with_torch():
    """The NumPy reference is torch's loss and gradients where torch has the options."""
    rng = np.random.default_rng(8)
    for spec in TORCH_CASES.values():
        spec = dict(spec)
        smoothing = spec.pop("label_smoothing", 0.0)
        x, w, target, options = make_case(rng, 11, 6, 13, np.float64, **spec)
        options["label_smoothing"] = smoothing
        for reduction in REDUCTIONS:
            loss, grads = reference(x, w, target, reduction=reduction, return_grad=True, **options)
            t_loss, t_grads = torch_reference(x, w, target, reduction=reduction, **options)
            np.testing.assert_allclose(loss, t_loss, rtol=1e-12)
            for a, b in zip(grads, t_grads, strict=True):
                if a is not None:
                    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


EXTRA_CASES = {
    "z_loss": {"z_loss": 1e-2},
    "softcap": {"softcap": 2.5},
    "z_loss_softcap": {"z_loss": 0.3, "softcap": 10.0},
}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("extra", list(EXTRA_CASES))
@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_z_loss_and_softcap(isa, dtype, soft, extra, reduction):
    rng = np.random.default_rng(9)
    x, w, target, options = make_case(
        rng, 97, 33, 300, dtype, soft=soft, bias=True, weight=True, ignore=None if soft else -100, scale=3.0
    )
    options.update(EXTRA_CASES[extra], label_smoothing=0.1)
    check(x, w, target, dtype, reference, reduction=reduction, what=extra, **options)


def test_softcap_bounds_the_logits(isa):
    """With a softcap every logit is in (-cap, cap): huge logits give a loss of at most
    2 cap + log(V), and the loss tends to torch's without a cap as the cap grows."""
    rng = np.random.default_rng(10)
    x, w, target, _ = make_case(rng, 20, 8, 50, np.float64, scale=1e5)
    losses = fastloss.linear_cross_entropy(x, w, target, softcap=3.0, reduction="none")
    assert np.all(losses <= 6.0 + math.log(50) + 1e-9)
    x, w, target, _ = make_case(rng, 20, 8, 50, np.float64)
    plain = fastloss.linear_cross_entropy(x, w, target)
    assert fastloss.linear_cross_entropy(x, w, target, softcap=1e8) == pytest.approx(plain, rel=1e-12)


def test_z_loss_is_added_per_non_ignored_row(isa):
    rng = np.random.default_rng(11)
    x, w, target, options = make_case(rng, 30, 6, 40, np.float64, bias=True, ignore=-100)
    b = options["bias"]
    plain = fastloss.linear_cross_entropy(x, w, target, linear_bias=b, reduction="none")
    with_z = fastloss.linear_cross_entropy(x, w, target, linear_bias=b, reduction="none", z_loss=0.5)
    logits = x @ w.T + b
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    expected = np.where(target != -100, 0.5 * lse**2, 0.0)
    np.testing.assert_allclose(with_z - plain, expected, rtol=1e-11, atol=1e-12)
    assert np.array_equal(with_z[target == -100], np.zeros(int((target == -100).sum())))


# ---------------------------------------------------------------------------------------------
# dtypes


def test_dtypes(isa):
    rng = np.random.default_rng(12)
    x, w, target, _ = make_case(rng, 9, 5, 11, np.float64)
    # float16 and float32 compute in float32; anything with float64 or integers in float64
    for xd, wd, expected in [
        (np.float16, np.float32, np.float32),
        (np.float16, np.float16, np.float32),
        (np.float32, np.float64, np.float64),
        (np.int64, np.float32, np.float64),
    ]:
        xi = (x * 4).astype(xd)
        loss, (dx, dw, _) = fastloss.linear_cross_entropy(
            xi, w.astype(wd), target, reduction="none", return_grad=True
        )
        assert loss.dtype == expected, (xd, wd)
        ref = reference(xi, w.astype(wd), target, reduction="none")
        np.testing.assert_allclose(loss, ref, rtol=1e-3 if expected == np.float32 else 1e-12)
        # each gradient in its argument's floating dtype (the computation dtype for integers)
        assert dx.dtype == (xd if np.dtype(xd).kind == "f" else expected)
        assert dw.dtype == wd
    # the bias follows the computation dtype
    loss = fastloss.linear_cross_entropy(
        x.astype(np.float32), w.astype(np.float32), target, linear_bias=np.ones(11), reduction="none"
    )
    assert loss.dtype == np.float32
    # integer targets of any width; unsigned too
    for td in (np.int8, np.int32, np.uint16):
        assert fastloss.linear_cross_entropy(x, w, target.astype(td)) == fastloss.linear_cross_entropy(
            x, w, target
        )


def test_inputs_are_not_modified(isa):
    rng = np.random.default_rng(13)
    x, w, target, options = make_case(rng, 9, 5, 11, np.float32, bias=True, weight=True)
    copies = [a.copy() for a in (x, w, target, options["bias"], options["weight"])]
    fastloss.linear_cross_entropy(x, w, target, return_grad=True, z_loss=0.1, **_fastloss_options(options))
    for a, b in zip((x, w, target, options["bias"], options["weight"]), copies, strict=True):
        assert np.array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# the same bits: threads, layouts, CPU paths


def _all_outputs(x, w, target, **options):
    """Every reduction's value and every gradient of "mean" and "none"."""
    out = []
    for reduction in REDUCTIONS:
        loss, grads = fastloss.linear_cross_entropy(
            x, w, target, reduction=reduction, return_grad=True, **options
        )
        out.append(np.asarray(loss))
        out.extend(g for g in grads if g is not None)
    return out


def _same(a, b):
    assert len(a) == len(b)
    for i, (p, q) in enumerate(zip(a, b, strict=True)):
        assert p.dtype == q.dtype and p.shape == q.shape, i
        assert p.tobytes() == q.tobytes(), i


@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_same_bits_for_any_thread_count(restore_threads, dtype, soft):
    rng = np.random.default_rng(14)
    x, w, target, options = make_case(rng, 200, 130, 1000, dtype, soft=soft, bias=True, weight=True)
    options = _fastloss_options(options) | {"z_loss": 1e-3, "softcap": 30.0}
    fastloss.set_num_threads(1)
    one = _all_outputs(x, w, target, **options)
    fastloss.set_num_threads(2)
    two = _all_outputs(x, w, target, **options)
    _same(one, two)


@pytest.mark.parametrize("layout", ["strided", "reversed", "fortran", "readonly", "bigendian"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_same_bits_for_any_layout(dtype, layout):
    rng = np.random.default_rng(15)
    x, w, target, options = make_case(rng, 97, 33, 129, dtype, bias=True, weight=True, ignore=-100)
    options = _fastloss_options(options)
    expected = _all_outputs(x, w, target, **options)
    laid = {key: to_layout(value, layout) for key, value in options.items() if key != "ignore_index"}
    got = _all_outputs(
        to_layout(x, layout), to_layout(w, layout), to_layout(target, layout), **(options | laid)
    )
    _same(got, expected)
    soft = rng.dirichlet(np.ones(129), size=97).astype(dtype)
    _same(
        _all_outputs(x, w, to_layout(soft, layout), linear_bias=options["linear_bias"]),
        _all_outputs(x, w, soft, linear_bias=options["linear_bias"]),
    )


def test_same_bits_on_every_cpu_path():
    from fastloss import _core

    rng = np.random.default_rng(16)
    previous = _core.active_isa()
    for dtype in (np.float32, np.float64):
        x, w, target, options = make_case(rng, 97, 65, 300, dtype, bias=True, weight=True, ignore=-100)
        options = _fastloss_options(options) | {"z_loss": 1e-2, "softcap": 15.0, "label_smoothing": 0.1}
        results = {}
        try:
            for isa in _core.available_isas():
                _core.set_active_isa(isa)
                results[isa] = _all_outputs(x, w, target, **options)
        finally:
            _core.set_active_isa(previous)
        for outputs in results.values():
            _same(outputs, results["scalar"])


# ---------------------------------------------------------------------------------------------
# fastloss.torch


def _leaf(torch, *shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)


GRADCHECK_CASES = {
    "plain": {},
    "bias": {"bias": True},
    "weight_ignore": {"weight": True, "target": [0, -100, 4, 2]},
    "smoothing": {"label_smoothing": 0.2, "bias": True},
    "soft": {"soft": True, "label_smoothing": 0.1, "weight": True},
    "z_loss": {"z_loss": 0.1, "bias": True},
    "softcap": {"softcap": 1.5},
    "everything": {
        "bias": True,
        "weight": True,
        "target": [3, -100, 1, 1],
        "label_smoothing": 0.1,
        "z_loss": 0.05,
        "softcap": 2.0,
    },
}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", list(GRADCHECK_CASES))
def test_gradcheck(case, reduction):
    torch = _torch()
    ft = pytest.importorskip("fastloss.torch")
    spec = dict(GRADCHECK_CASES[case])
    x, w = _leaf(torch, 4, 3, seed=1), _leaf(torch, 5, 3, seed=2)
    inputs = [x, w] + ([_leaf(torch, 5, seed=3)] if spec.pop("bias", False) else [])
    if spec.pop("soft", False):
        target = torch.softmax(_leaf(torch, 4, 5, seed=4).detach(), 1)
    else:
        target = torch.tensor(spec.pop("target", [0, 4, 2, 1]))
    weight = torch.rand(5, dtype=torch.float64) + 0.1 if spec.pop("weight", False) else None

    def f(*args):
        bias = args[2] if len(args) == 3 else None
        return ft.linear_cross_entropy(
            args[0], args[1], target, linear_bias=bias, weight=weight, reduction=reduction, **spec
        )

    assert torch.autograd.gradcheck(f, tuple(inputs))


@pytest.mark.parametrize("reduction", ("none", "sum", "mean"))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_functional_and_module_match_torch(dtype, reduction):
    torch = _torch()
    ft = pytest.importorskip("fastloss.torch")
    F = torch.nn.functional
    dt = getattr(torch, dtype)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(37, 16, generator=g, dtype=dt, requires_grad=True)
    w = torch.randn(129, 16, generator=g, dtype=dt, requires_grad=True)
    b = torch.randn(129, generator=g, dtype=dt, requires_grad=True)
    target = torch.randint(0, 129, (37,), generator=g)
    target[::5] = -100
    weight = torch.rand(129, generator=g, dtype=dt) + 0.5
    upstream = torch.rand(37, generator=g, dtype=dt) if reduction == "none" else torch.tensor(1.5, dtype=dt)
    results = []
    for fn in (
        lambda: F.linear_cross_entropy(
            x, w, target, linear_bias=b, weight=weight, reduction=reduction, label_smoothing=0.1
        ),
        lambda: ft.linear_cross_entropy(
            x, w, target, linear_bias=b, weight=weight, reduction=reduction, label_smoothing=0.1
        ),
        lambda: ft.LinearCrossEntropyLoss(weight, reduction=reduction, label_smoothing=0.1)(x, w, target, b),
    ):
        for t in (x, w, b):
            t.grad = None
        loss = fn()
        assert loss.dtype == dt
        loss.backward(upstream)
        results.append([loss.detach(), x.grad.clone(), w.grad.clone(), b.grad.clone()])
    rtol = 2e-4 if dtype == "float32" else 1e-10
    for got in results[1:]:
        for a, e in zip(got, results[0], strict=True):
            torch.testing.assert_close(a, e, rtol=rtol, atol=rtol * float(e.abs().max().clamp(min=1)))


def test_torch_gradients_only_where_asked():
    torch = _torch()
    ft = pytest.importorskip("fastloss.torch")
    x = _leaf(torch, 4, 3, seed=1)
    w = _leaf(torch, 5, 3, seed=2).detach()
    b = _leaf(torch, 5, seed=3)
    loss = ft.linear_cross_entropy(x, w, torch.tensor([0, 1, 2, 3]), linear_bias=b)
    loss.backward()
    assert x.grad is not None and b.grad is not None and w.grad is None
    with torch.no_grad():
        assert ft.linear_cross_entropy(x, w, torch.tensor([0, 1, 2, 3])).requires_grad is False


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torch_unsupported_raise():
    torch = _torch()
    ft = pytest.importorskip("fastloss.torch")
    x, w = _leaf(torch, 4, 3, seed=1), _leaf(torch, 5, 3, seed=2)
    target = torch.tensor([0, 1, 2, 3])
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(ft.linear_cross_entropy(x, w, target), x, create_graph=True)
    import torch.autograd.forward_ad as fwad

    with fwad.dual_level():
        dual = fwad.make_dual(x.detach(), torch.ones_like(x))
        with pytest.raises(RuntimeError, match="fastloss.torch.linear_cross_entropy: forward-mode AD"):
            ft.linear_cross_entropy(dual, w.detach(), target)
    with pytest.raises(NotImplementedError, match="probability targets"):
        ft.linear_cross_entropy(x, w, torch.softmax(_leaf(torch, 4, 5, seed=3), 1))
    with pytest.raises(TypeError, match="linear_weight"):
        ft.linear_cross_entropy(x, w.float(), target)
    with pytest.raises(TypeError, match="input"):
        ft.linear_cross_entropy(x.to(torch.bfloat16), w, target)
    with pytest.raises(ValueError, match="reduction"):
        ft.LinearCrossEntropyLoss(reduction="avg")


# ---------------------------------------------------------------------------------------------
# streaming and dask: the bits of one call


def _splits(n, rng):
    cuts = sorted(set(rng.integers(1, n, size=6).tolist()))
    return [[0, n], list(range(0, n + 1, 7)) + ([n] if n % 7 else []), [0, *cuts, n]]


STREAM_OPTIONS = {
    "plain": {},
    "everything": {"bias": True, "weight": True, "ignore": -100, "label_smoothing": 0.1},
    "extras": {"bias": True, "z_loss": 1e-2, "softcap": 5.0},
    "soft": {"soft": True, "weight": True, "label_smoothing": 0.2},
}


def _stream_case(name, dtype=np.float32):
    spec = dict(STREAM_OPTIONS[name])
    extra = {key: spec.pop(key) for key in ("label_smoothing", "z_loss", "softcap") if key in spec}
    rng = np.random.default_rng(17)
    x, w, target, options = make_case(rng, 61, 20, 129, dtype, **spec)
    return x, w, target, _fastloss_options(options) | extra


@pytest.mark.parametrize("reduction", SCALAR_REDUCTIONS)
@pytest.mark.parametrize("case", list(STREAM_OPTIONS))
def test_accumulator_splits_give_the_one_call_bits(reduction, case):
    x, w, target, options = _stream_case(case)
    expected = fastloss.linear_cross_entropy(x, w, target, reduction=reduction, **options)
    rng = np.random.default_rng(18)
    for bounds in _splits(x.shape[0], rng):
        left = Accumulator("linear_cross_entropy", linear_weight=w, reduction=reduction, **options)
        right = Accumulator("linear_cross_entropy", linear_weight=w, reduction=reduction, **options)
        for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            (left if k % 2 == 0 else right).update(x[a:b], target[a:b])
        got = left.merge(pickle.loads(pickle.dumps(right))).result()
        assert got == expected or (math.isnan(got) and math.isnan(expected)), bounds


def test_accumulator_state_travels_without_the_classifier():
    x, w, target, options = _stream_case("everything")
    acc = Accumulator("linear_cross_entropy", linear_weight=w, reduction="mean", **options)
    acc.update(x[:30], target[:30])
    data = acc.to_bytes()
    assert len(data) < 4096  # the classifier is a digest, not the array
    restored = Accumulator.from_bytes(data)
    assert restored.result() == acc.result()
    with pytest.raises(ValueError, match="restored without"):
        restored.update(x[30:], target[30:])
    arrays = {"linear_weight": w, "linear_bias": options["linear_bias"], "weight": options["weight"]}
    again = Accumulator.from_bytes(data, **arrays)
    again.update(x[30:], target[30:])
    assert again.result() == fastloss.linear_cross_entropy(x, w, target, **options)
    with pytest.raises(ValueError, match="linear_weight: not the array"):
        Accumulator.from_bytes(data, linear_weight=w + 1)
    other = Accumulator("linear_cross_entropy", linear_weight=w + 1, reduction="mean", **options)
    with pytest.raises(ValueError, match="different losses or options"):
        acc.merge(other)


def test_accumulator_bad_use():
    x, w, target, _ = _stream_case("plain")
    with pytest.raises(ValueError, match="linear_weight"):
        Accumulator("linear_cross_entropy")
    with pytest.raises(ValueError, match="linear_weight"):
        Accumulator("linear_cross_entropy", linear_weight=np.ones(3))
    with pytest.raises(ValueError, match="linear_bias"):
        Accumulator("linear_cross_entropy", linear_weight=w, linear_bias=np.ones(3))
    with pytest.raises(ValueError, match="z_loss"):
        Accumulator("linear_cross_entropy", linear_weight=w, z_loss=-1.0)
    with pytest.raises(ValueError, match="softcap"):
        Accumulator("linear_cross_entropy", linear_weight=w, softcap=0.0)
    with pytest.raises(TypeError, match="unexpected option"):
        Accumulator("linear_cross_entropy", linear_weight=w, temperature=0.1)
    acc = Accumulator("linear_cross_entropy", linear_weight=w)
    with pytest.raises(TypeError, match="takes"):
        acc.update(x)
    with pytest.raises(TypeError, match="sample_weight"):
        acc.update(x, target, sample_weight=np.ones(len(x)))
    with pytest.raises(ValueError, match="linear_weight"):
        acc.update(x[:, :-1], target)


def _dask():
    pytest.importorskip("dask")
    da = pytest.importorskip("dask.array")
    fd = pytest.importorskip("fastloss.dask")
    return da, fd


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", list(STREAM_OPTIONS))
def test_dask_gives_the_in_memory_bits(reduction, case):
    da, fd = _dask()
    x, w, target, options = _stream_case(case)
    expected = fastloss.linear_cross_entropy(x, w, target, reduction=reduction, **options)
    xd = da.from_array(x, chunks=((7, 13, 1, 40), (10, 10)))
    td = da.from_array(target, chunks=(20,) + tuple(max(1, n // 2) for n in target.shape[1:]))
    extra = dict(options)
    if "linear_bias" in extra:
        extra["linear_bias"] = da.from_array(extra["linear_bias"], chunks=50)
    result = fd.linear_cross_entropy(xd, da.from_array(w, chunks=(50, 7)), td, reduction=reduction, **extra)
    assert isinstance(result, da.Array)
    got = result.compute(scheduler="threads")
    if reduction == "none":
        assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes()
    else:
        assert float(got) == expected or (math.isnan(float(got)) and math.isnan(expected))


def test_dask_classifier_is_one_graph_key():
    da, fd = _dask()
    x, w, target, options = _stream_case("extras")
    result = fd.linear_cross_entropy(da.from_array(x, chunks=10), w, target, reduction="sum", **options)
    graph = dict(result.__dask_graph__())

    def name(key):
        return key[0] if isinstance(key, tuple) else key

    classifier = [key for key in graph if name(key).startswith("fastloss-classifier")]
    assert len(classifier) == 1
    partials = [key for key in graph if "linear_cross_entropy-partial" in name(key)]
    assert len(partials) == 7
    for key in partials:
        assert classifier[0] in graph[key].dependencies


def test_dask_bad_input_names_the_argument():
    da, fd = _dask()
    x, w, target, _ = _stream_case("plain")
    xd = da.from_array(x, chunks=10)
    with pytest.raises(ValueError, match="target"):
        fd.linear_cross_entropy(xd, w, target[:-1])
    with pytest.raises(ValueError, match="input"):
        fd.linear_cross_entropy(xd[:, :, None], w, target)
    with pytest.raises(ValueError, match="linear_weight"):
        fd.linear_cross_entropy(xd, w[:, :-1], target)
    with pytest.raises(ValueError, match="linear_bias"):
        fd.linear_cross_entropy(xd, w, target, linear_bias=np.ones(3))
    with pytest.raises(ValueError, match="softcap"):
        fd.linear_cross_entropy(xd, w, target, softcap=-1.0)
    bad = target.copy()
    bad[30] = 500
    with pytest.raises(ValueError, match="500"):
        fd.linear_cross_entropy(xd, w, bad).compute(scheduler="threads")


# ---------------------------------------------------------------------------------------------
# errors: every bad argument named


def _args():
    rng = np.random.default_rng(19)
    x, w, target, _ = make_case(rng, 6, 4, 5, np.float64)
    return x, w, target


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"input": np.ones(4)}, ValueError, "input must have shape"),
        ({"input": np.ones((6, 4, 1))}, ValueError, "input must have shape"),
        ({"input": np.ones((6, 4), dtype=complex)}, TypeError, "input"),
        ({"input": [[1.0, 2.0], [3.0]]}, ValueError, "input"),
        ({"linear_weight": np.ones((5, 3))}, ValueError, "linear_weight"),
        ({"linear_weight": np.ones(4)}, ValueError, "linear_weight"),
        ({"linear_weight": np.ones((0, 4))}, ValueError, "linear_weight.*V >= 1"),
        ({"linear_weight": np.array([["a"] * 4] * 5)}, TypeError, "linear_weight"),
        ({"target": np.zeros(5, dtype=np.int64)}, ValueError, "target"),
        ({"target": np.zeros((6, 4))}, ValueError, "target: probabilities"),
        ({"target": np.zeros(6, dtype=complex)}, TypeError, "target"),
        ({"target": np.zeros(6, dtype=bool)}, TypeError, "target"),
        ({"target": np.array([0, 1, 2, 5, 0, 0])}, ValueError, "5"),
        ({"target": np.array([0, 1, 2, -1, 0, 0])}, ValueError, "-1"),
        ({"linear_bias": np.ones(4)}, ValueError, "linear_bias"),
        ({"linear_bias": np.ones((5, 1))}, ValueError, "linear_bias"),
        ({"linear_bias": np.ones(5, dtype=complex)}, TypeError, "linear_bias"),
        ({"weight": np.ones(4)}, ValueError, "weight"),
        ({"weight": np.array([1.0, np.nan, 1, 1, 1])}, ValueError, "weight"),
        ({"weight": np.array([1.0, np.inf, 1, 1, 1])}, ValueError, "weight"),
        ({"reduction": "avg"}, ValueError, "reduction"),
        ({"reduction": None}, ValueError, "reduction"),
        ({"ignore_index": 1.5}, TypeError, "ignore_index"),
        ({"ignore_index": True}, TypeError, "ignore_index"),
        ({"ignore_index": 2**70}, ValueError, "ignore_index"),
        ({"label_smoothing": 1.5}, ValueError, "label_smoothing"),
        ({"label_smoothing": -0.1}, ValueError, "label_smoothing"),
        ({"label_smoothing": "0.1"}, TypeError, "label_smoothing"),
        ({"z_loss": -1e-3}, ValueError, "z_loss"),
        ({"z_loss": math.inf}, ValueError, "z_loss"),
        ({"z_loss": math.nan}, ValueError, "z_loss"),
        ({"z_loss": None}, TypeError, "z_loss"),
        ({"softcap": 0.0}, ValueError, "softcap"),
        ({"softcap": -2.0}, ValueError, "softcap"),
        ({"softcap": math.inf}, ValueError, "softcap"),
        ({"softcap": math.nan}, ValueError, "softcap"),
        ({"softcap": "5"}, TypeError, "softcap"),
        ({"return_grad": "yes"}, TypeError, "return_grad"),
    ],
)
def test_bad_arguments_name_themselves(change, error, match):
    x, w, target = _args()
    arguments = {"input": x, "linear_weight": w, "target": target} | change
    positional = [arguments.pop(key) for key in ("input", "linear_weight", "target")]
    with pytest.raises(error, match=match):
        fastloss.linear_cross_entropy(*positional, **arguments)


def test_float32_softcap_below_its_range_is_refused():
    x, w, target = _args()
    with pytest.raises(ValueError, match="softcap"):
        fastloss.linear_cross_entropy(x.astype(np.float32), w.astype(np.float32), target, softcap=1e-39)
    assert math.isfinite(fastloss.linear_cross_entropy(x, w, target, softcap=1e-39))


def test_out_of_range_target_names_value_and_position():
    x, w, target = _args()
    target[4] = 7
    with pytest.raises(ValueError, match="7") as info:
        fastloss.linear_cross_entropy(x, w, target)
    assert "4" in str(info.value)
