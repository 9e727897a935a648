"""fastloss.torch against torch 2.13, parameter for parameter: signatures, the legacy
size_average/reduce mapping and its warnings, mse/l1's elementwise weight, gradients w.r.t.
target and weight, calls under no_grad, 0-d regression inputs (also through the NumPy API)."""

from __future__ import annotations

import inspect
import itertools
import warnings

import fastloss
import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
ft = pytest.importorskip("fastloss.torch")

FUNCTIONALS = ("mse_loss", "l1_loss", "cross_entropy", "linear_cross_entropy")
MODULES = ("MSELoss", "L1Loss", "CrossEntropyLoss")


def leaf(*shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype).requires_grad_(True)


def parameters(fn, kinds):
    return [(p.name, p.default) for p in inspect.signature(fn).parameters.values() if p.kind in kinds]


POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


# -- signatures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FUNCTIONALS)
def test_functional_signature_matches_torch(name):
    ours, theirs = getattr(ft, name), getattr(F, name)
    # The positional parameters: names, order and defaults (so positional calls port unchanged).
    assert parameters(ours, POSITIONAL) == parameters(theirs, POSITIONAL)
    # torch's keyword-only parameters come first among ours, with torch's defaults; fastloss's
    # extras (z_loss, softcap) follow them.
    theirs_kw = parameters(theirs, (inspect.Parameter.KEYWORD_ONLY,))
    assert parameters(ours, (inspect.Parameter.KEYWORD_ONLY,))[: len(theirs_kw)] == theirs_kw


@pytest.mark.parametrize("name", MODULES)
def test_module_constructor_matches_torch(name):
    ours, theirs = getattr(ft, name).__init__, getattr(torch.nn, name).__init__
    assert parameters(ours, POSITIONAL) == parameters(theirs, POSITIONAL)


def test_positional_call_ported_from_torch():
    # The example: weight, size_average, ignore_index in torch's positions.
    z = leaf(6, 4, seed=1)
    t = torch.tensor([0, 1, 2, 1, 3, 1])
    for args in [(None, None, 1), (None, None, 1, None, "sum"), (None, None, -100, None, "none", 0.1)]:
        torch.testing.assert_close(ft.cross_entropy(z, t, *args), F.cross_entropy(z, t, *args))
    x, y = leaf(3, 4, seed=2), leaf(3, 4, seed=3)
    w = torch.rand(3, 4, dtype=torch.float64)
    for fn in ("mse_loss", "l1_loss"):
        ours, theirs = getattr(ft, fn), getattr(F, fn)
        torch.testing.assert_close(ours(x, y, None, None, "sum", w), theirs(x, y, None, None, "sum", w))


# -- size_average / reduce ----------------------------------------------------------------------

LEGACY = list(itertools.product((None, True, False), (None, True, False), ("mean", "sum", "none")))


def call_recording(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    return result, [(w.category, str(w.message)) for w in caught]


@pytest.mark.parametrize(("size_average", "reduce", "reduction"), LEGACY)
@pytest.mark.parametrize("name", ("mse_loss", "l1_loss", "cross_entropy"))
def test_legacy_reduction_as_torch(name, size_average, reduce, reduction):
    x = leaf(5, 3, seed=4)
    target = torch.tensor([0, 2, 1, 1, 0]) if name == "cross_entropy" else leaf(5, 3, seed=5).detach()
    kwargs = {"size_average": size_average, "reduce": reduce, "reduction": reduction}
    ours, our_warnings = call_recording(lambda: getattr(ft, name)(x, target, **kwargs))
    theirs, their_warnings = call_recording(lambda: getattr(F, name)(x, target, **kwargs))
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs)
    assert our_warnings == their_warnings
    (g_ours,) = torch.autograd.grad(ours.sum(), x)
    (g_theirs,) = torch.autograd.grad(theirs.sum(), x)
    torch.testing.assert_close(g_ours, g_theirs)


@pytest.mark.parametrize(("size_average", "reduce", "reduction"), LEGACY)
@pytest.mark.parametrize("name", MODULES)
def test_legacy_reduction_modules_as_torch(name, size_average, reduce, reduction):
    kwargs = {"size_average": size_average, "reduce": reduce, "reduction": reduction}
    ours, our_warnings = call_recording(lambda: getattr(ft, name)(**kwargs))
    theirs, their_warnings = call_recording(lambda: getattr(torch.nn, name)(**kwargs))
    assert ours.reduction == theirs.reduction
    assert our_warnings == their_warnings
    x = leaf(4, 3, seed=6)
    target = torch.tensor([0, 2, 1, 1]) if name == "CrossEntropyLoss" else leaf(4, 3, seed=7).detach()
    torch.testing.assert_close(ours(x, target), theirs(x, target))


def test_legacy_warning_points_at_the_caller():
    x = leaf(3, seed=8)
    with pytest.warns(UserWarning, match="size_average and reduce args will be deprecated") as record:
        ft.mse_loss(x, x.detach(), reduce=False)
    assert record[0].filename == __file__
    with pytest.warns(UserWarning, match="size_average and reduce") as record:
        ft.CrossEntropyLoss(size_average=False)
    assert record[0].filename == __file__


@pytest.mark.parametrize("name", ("mse_loss", "l1_loss", "cross_entropy"))
def test_elementwise_mean_as_torch(name):
    x = leaf(4, 3, seed=9)
    target = torch.tensor([0, 2, 1, 1]) if name == "cross_entropy" else leaf(4, 3, seed=10).detach()
    ours, our_warnings = call_recording(lambda: getattr(ft, name)(x, target, reduction="elementwise_mean"))
    theirs, their_warnings = call_recording(lambda: getattr(F, name)(x, target, reduction="elementwise_mean"))
    torch.testing.assert_close(ours, theirs)
    assert our_warnings == their_warnings and len(our_warnings) == 1


@pytest.mark.parametrize("name", ("mse_loss", "l1_loss", "cross_entropy"))
def test_bad_reduction_still_raises(name):
    x = leaf(4, 3, seed=11)
    target = torch.tensor([0, 2, 1, 1]) if name == "cross_entropy" else x.detach()
    with pytest.raises(ValueError, match="reduction"):
        getattr(ft, name)(x, target, reduction="avg")


# -- mse_loss / l1_loss weight ------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ("none", "sum", "mean"))
@pytest.mark.parametrize("name", ("mse_loss", "l1_loss"))
@pytest.mark.parametrize("shape", [(5, 3), (7,), (2, 3, 4), ()])
def test_weight_as_torch(name, reduction, shape):
    x, t = leaf(*shape, seed=12), leaf(*shape, seed=13)
    w = (
        torch.rand(shape, generator=torch.Generator().manual_seed(14), dtype=torch.float64) + 0.1
    ).requires_grad_()
    ours = getattr(ft, name)(x, t, reduction=reduction, weight=w)
    theirs = getattr(F, name)(x, t, reduction=reduction, weight=w)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs)
    upstream = torch.rand(ours.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(15))
    g_ours = torch.autograd.grad(ours, (x, t, w), upstream)
    g_theirs = torch.autograd.grad(theirs, (x, t, w), upstream)
    for a, b in zip(g_ours, g_theirs, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("reduction", ("none", "sum", "mean"))
def test_weight_gradcheck(reduction):
    x, t = leaf(4, 3, seed=16), leaf(4, 3, seed=17)
    w = (torch.rand(4, 3, dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b, c: ft.mse_loss(a, b, reduction=reduction, weight=c), (x, t, w)
    )


def test_weight_float32_close_to_torch():
    x, t = leaf(64, 9, dtype=torch.float32, seed=18), leaf(64, 9, dtype=torch.float32, seed=19)
    w = torch.rand(64, 9)
    ours, theirs = ft.mse_loss(x, t, weight=w), F.mse_loss(x, t, weight=w)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=0)


def test_weight_all_zero_is_nan_as_torch():
    x, t = leaf(3, seed=20), leaf(3, seed=21)
    w = torch.zeros(3, dtype=torch.float64)
    assert torch.isnan(ft.l1_loss(x, t, weight=w)) and torch.isnan(F.l1_loss(x, t, weight=w))


def test_weight_errors():
    x, t = leaf(4, 3, seed=22), leaf(4, 3, seed=23)
    with pytest.raises(ValueError, match=r"weight: expected the shape of input \(4, 3\)"):
        ft.mse_loss(x, t, weight=torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"weight.*>= 0"):
        ft.mse_loss(x, t, weight=-torch.ones(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"weight.*finite"):
        ft.l1_loss(x, t, weight=torch.full((4, 3), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match="batchmean.*weight"):
        ft.l1_loss(x, t, reduction="batchmean", weight=torch.ones(4, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="weight"):
        ft.l1_loss(x, t, weight=np.ones((4, 3)))


# torch's own forward-AD machinery imports a module that uses the deprecated torch.jit.script.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_weight_double_backward_and_forward_mode_raise():
    x, t = leaf(4, 3, seed=24), leaf(4, 3, seed=25)
    w = torch.rand(4, 3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(ft.mse_loss(x, t, weight=w), w, create_graph=True)
    import torch.autograd.forward_ad as fwad

    with fwad.dual_level():
        dual = fwad.make_dual(x.detach(), torch.ones_like(x))
        with pytest.raises(RuntimeError, match="forward-mode AD"):
            ft.mse_loss(dual, t.detach(), weight=w.detach())


# -- gradients w.r.t. target --------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ("none", "sum", "mean"))
@pytest.mark.parametrize("name", ("mse_loss", "l1_loss"))
@pytest.mark.parametrize("input_grad", [True, False])
def test_target_gradient_as_torch(name, reduction, input_grad):
    x, t = leaf(6, 5, seed=26).requires_grad_(input_grad), leaf(6, 5, seed=27)
    ours, theirs = getattr(ft, name)(x, t, reduction=reduction), getattr(F, name)(x, t, reduction=reduction)
    upstream = torch.rand(ours.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(28))
    wrt = (x, t) if input_grad else (t,)
    for a, b in zip(
        torch.autograd.grad(ours, wrt, upstream), torch.autograd.grad(theirs, wrt, upstream), strict=True
    ):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ("mse_loss", "l1_loss"))
def test_target_gradcheck(name):
    x, t = leaf(4, 3, seed=29).detach(), leaf(4, 3, seed=30)
    assert torch.autograd.gradcheck(lambda b: getattr(ft, name)(x, b, reduction="sum"), (t,))


# -- no_grad ------------------------------------------------------------------------------------


def no_grad_cases():
    x, t = leaf(4, 3, seed=31), leaf(4, 3, seed=32)
    labels = torch.tensor([0, 2, 1, 1])
    soft = torch.softmax(leaf(4, 3, seed=33).detach(), 1).requires_grad_()
    q, k, queue = leaf(4, 5, seed=34), leaf(4, 5, seed=35), leaf(6, 5, seed=36)
    head, bias = leaf(3, 5, seed=37), leaf(3, seed=38)
    w = torch.rand(4, 3, dtype=torch.float64, requires_grad=True)
    return {
        "mse_loss": lambda: ft.mse_loss(x, t),
        "mse_loss_weight": lambda: ft.mse_loss(x, t, reduction="none", weight=w),
        "l1_loss": lambda: ft.l1_loss(x, t, reduction="sum"),
        "cross_entropy": lambda: ft.cross_entropy(x, labels),
        "cross_entropy_soft": lambda: ft.cross_entropy(x, soft, reduction="none"),
        "info_nce": lambda: ft.info_nce(q, k),
        "info_nce_queue_none": lambda: ft.info_nce(q, k, queue, reduction="none"),
        "linear_cross_entropy": lambda: ft.linear_cross_entropy(q, head, labels, linear_bias=bias),
        "linear_cross_entropy_soft": lambda: ft.linear_cross_entropy(q, head, soft, reduction="none"),
        "MSELoss": lambda: ft.MSELoss()(x, t),
        "L1Loss": lambda: ft.L1Loss(reduction="none")(x, t),
        "CrossEntropyLoss": lambda: ft.CrossEntropyLoss()(x, labels),
        "CrossEntropyLoss_soft": lambda: ft.CrossEntropyLoss()(x, soft),
        "InfoNCE": lambda: ft.InfoNCE()(q, k, queue),
        "LinearCrossEntropyLoss": lambda: ft.LinearCrossEntropyLoss()(q, head, labels, bias),
        "LinearCrossEntropyLoss_soft": lambda: ft.LinearCrossEntropyLoss()(q, head, soft),
    }


@pytest.mark.parametrize("case", list(no_grad_cases()))
def test_no_grad_returns_the_value(case):
    fn = no_grad_cases()[case]
    with torch.no_grad():
        value = fn()
    assert not value.requires_grad
    # The same value as the call without grad mode's bookkeeping: every input detached.
    with torch.inference_mode():
        again = fn()
    torch.testing.assert_close(value, again, rtol=0, atol=0)


@pytest.mark.parametrize("case", [c for c in no_grad_cases() if "soft" not in c])
def test_no_grad_value_equals_grad_mode_value(case):
    fn = no_grad_cases()[case]
    with_grad = fn()
    assert with_grad.requires_grad
    with torch.no_grad():
        without = fn()
    torch.testing.assert_close(without, with_grad.detach(), rtol=0, atol=0)


def test_inputs_without_grad_return_the_value():
    x, t = leaf(4, 3, seed=39).detach(), leaf(4, 3, seed=40).detach()
    for value in (ft.mse_loss(x, t), ft.l1_loss(x, t), ft.cross_entropy(x, torch.tensor([0, 1, 2, 0]))):
        assert not value.requires_grad
    torch.testing.assert_close(ft.mse_loss(x, t), F.mse_loss(x, t))


# -- linear_cross_entropy: torch's ignore_index, options, unbatched input -----------------------


def test_linear_cross_entropy_ignore_index_none_and_options():
    x, head = leaf(5, 4, seed=41), leaf(7, 4, seed=42)
    labels = torch.tensor([0, 6, -100, 3, 1])
    soft = torch.softmax(leaf(5, 7, seed=43).detach(), 1)
    for target in (labels, soft):
        for options in (None, torch.nn.LinearCrossEntropyOptions()):
            ours = ft.linear_cross_entropy(x, head, target, options=options)
            theirs = F.linear_cross_entropy(x, head, target)
            torch.testing.assert_close(ours, theirs)
    other = torch.tensor([0, 6, 2, 3, 6])
    torch.testing.assert_close(
        ft.linear_cross_entropy(x, head, other, ignore_index=6, reduction="sum"),
        F.linear_cross_entropy(x, head, other, ignore_index=6, reduction="sum"),
    )
    with pytest.raises(ValueError, match="ignore_index cannot be specified"):
        ft.linear_cross_entropy(x, head, soft, ignore_index=-100)
    with pytest.raises(TypeError, match="options"):
        ft.linear_cross_entropy(x, head, labels, options={"batch_chunk_size": 2})


@pytest.mark.parametrize("reduction", ("none", "sum", "mean"))
@pytest.mark.parametrize("soft", [False, True])
def test_linear_cross_entropy_unbatched_as_torch(reduction, soft):
    x, head = leaf(4, seed=44), leaf(6, 4, seed=45)
    target = torch.softmax(leaf(6, seed=46).detach(), 0) if soft else torch.tensor(3)
    ours = ft.linear_cross_entropy(x, head, target, reduction=reduction)
    theirs = F.linear_cross_entropy(x, head, target, reduction=reduction)
    assert ours.shape == theirs.shape == ()
    torch.testing.assert_close(ours, theirs)
    for a, b in zip(
        torch.autograd.grad(ours, (x, head)), torch.autograd.grad(theirs, (x, head)), strict=True
    ):
        torch.testing.assert_close(a, b)


# -- 0-d regression -----------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ("none", "sum", "mean"))
@pytest.mark.parametrize("name", ("mse_loss", "l1_loss"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_dim_as_torch(name, reduction, dtype):
    x, t = leaf(seed=47, dtype=dtype), leaf(seed=48, dtype=dtype)
    ours, theirs = getattr(ft, name)(x, t, reduction=reduction), getattr(F, name)(x, t, reduction=reduction)
    assert ours.shape == theirs.shape == () and ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs)
    for a, b in zip(torch.autograd.grad(ours, (x, t)), torch.autograd.grad(theirs, (x, t)), strict=True):
        assert a.shape == ()
        torch.testing.assert_close(a, b)


def test_zero_dim_gradcheck_and_batchmean():
    x, t = leaf(seed=49), leaf(seed=50)
    assert torch.autograd.gradcheck(lambda a, b: ft.mse_loss(a, b, reduction="mean"), (x, t))
    with pytest.raises(ValueError, match="batchmean.*0-d"):
        ft.l1_loss(x, t, reduction="batchmean")


@pytest.mark.parametrize("reduction", ("none", "sum", "mean"))
@pytest.mark.parametrize("kind", ("mse", "mae"))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_zero_dim_numpy(kind, reduction, dtype):
    pred, target = (
        np.array(3.5 if dtype != np.int64 else 4, dtype=dtype),
        np.array(-1.25 if dtype != np.int64 else -2, dtype=dtype),
    )
    d = float(pred) - float(target)
    # A plain reference: one element, its loss and d(loss)/d(pred).
    expected, slope = (d * d, 2 * d) if kind == "mse" else (abs(d), float(np.sign(d)))
    fn = getattr(fastloss, kind)
    loss, grad = fn(pred, target, reduction=reduction, return_grad=True)
    # Without the gradient (the fast path declines 0-d): the same bits.
    assert np.asarray(fn(pred, target, reduction=reduction)).tobytes() == np.asarray(loss).tobytes()
    if reduction == "none":
        assert isinstance(loss, np.ndarray) and loss.shape == ()
        assert loss.dtype == (np.float32 if dtype == np.float32 else np.float64)
        assert float(loss) == pytest.approx(expected, rel=1e-7)
    else:
        assert isinstance(loss, float) and loss == pytest.approx(expected, rel=1e-7)
    assert isinstance(grad, np.ndarray) and grad.shape == ()
    assert float(grad) == pytest.approx(slope, rel=1e-7)
    # The same numbers as the one-element 1-d pair.
    loss1, grad1 = fn(pred.reshape(1), target.reshape(1), reduction=reduction, return_grad=True)
    assert np.asarray(loss).tobytes() == np.asarray(loss1).reshape(()).tobytes()
    assert grad.tobytes() == grad1.reshape(()).tobytes()


@pytest.mark.parametrize("kind", ("mse", "mae"))
def test_zero_dim_numpy_errors(kind):
    fn = getattr(fastloss, kind)
    with pytest.raises(ValueError, match=r"batchmean.*0-d"):
        fn(1.0, 2.0, reduction="batchmean")
    with pytest.raises(ValueError, match=r"sample_weight.*0-d"):
        fn(1.0, 2.0, sample_weight=[1.0])
    with pytest.raises(ValueError, match=r"same shape"):
        fn(1.0, np.ones(1))
    with pytest.raises(ValueError, match=r"update adds rows.*0-d"):
        fastloss.Accumulator(kind).update(np.float64(1.0), np.float64(2.0))
