"""fastloss.torch: autograd functions and modules, against torch.nn.functional and gradcheck."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
ft = pytest.importorskip("fastloss.torch")

REDUCTIONS = ("none", "sum", "mean")


def leaf(*shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_(True)


@pytest.mark.parametrize("reduction", REDUCTIONS + ("batchmean",))
@pytest.mark.parametrize("fn", ["mse_loss", "l1_loss"])
def test_regression_gradcheck(reduction, fn):
    x, t = leaf(5, 4, seed=1), leaf(5, 4, seed=2)
    assert torch.autograd.gradcheck(lambda a, b: getattr(ft, fn)(a, b, reduction=reduction), (x, t))


@pytest.mark.parametrize("reduction", REDUCTIONS + ("batchmean",))
@pytest.mark.parametrize("soft", [False, True])
def test_cross_entropy_gradcheck(reduction, soft):
    x = leaf(6, 5, seed=3)
    target = torch.softmax(leaf(6, 5, seed=4).detach(), 1) if soft else torch.tensor([0, 4, -100, 2, 1, 3])
    weight = torch.rand(5, dtype=torch.float64) + 0.1
    assert torch.autograd.gradcheck(
        lambda a: ft.cross_entropy(a, target, weight, reduction=reduction, label_smoothing=0.2), (x,)
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("mode", ["in_batch", "symmetric", "unpaired", "paired"])
def test_info_nce_gradcheck(reduction, normalize, mode):
    q, k = leaf(4, 3, seed=5), leaf(4, 3, seed=6)
    negatives = {"unpaired": leaf(7, 3, seed=7), "paired": leaf(4, 5, 3, seed=8)}.get(mode)
    inputs = (q, k) if negatives is None else (q, k, negatives)

    def f(*args):
        neg = args[2] if len(args) == 3 else None
        return ft.info_nce(
            args[0],
            args[1],
            neg,
            0.5,
            reduction,
            "paired" if mode == "paired" else "unpaired",
            normalize,
            mode == "symmetric",
        )

    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_none_reduction_backpropagates_any_grad_output(dtype):
    g = torch.Generator().manual_seed(9)
    x = torch.randn(8, 6, dtype=dtype, generator=g)
    t = torch.randn(8, 6, dtype=dtype, generator=g)
    labels = torch.randint(0, 6, (8,), generator=g)
    up = torch.randn(8, 6, dtype=dtype, generator=g)
    up_rows = torch.randn(8, dtype=dtype, generator=g)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-14)
    for ours, theirs, grad_out, args in [
        (ft.mse_loss, F.mse_loss, up, (t,)),
        (ft.l1_loss, F.l1_loss, up, (t,)),
        (ft.cross_entropy, F.cross_entropy, up_rows, (labels,)),
    ]:
        a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ours(a, *args, reduction="none").backward(grad_out)
        theirs(b, *args, reduction="none").backward(grad_out)
        torch.testing.assert_close(a.grad, b.grad, **tol)


def torch_info_nce(q, k, n, temperature, reduction, mode):
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    n = F.normalize(n, dim=-1)
    pos = (q * k).sum(1, keepdim=True)
    neg = q @ n.T if mode == "unpaired" else (q.unsqueeze(1) * n).sum(-1)
    logits = torch.cat([pos, neg], 1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long), reduction=reduction)


@pytest.mark.parametrize("mode", ["unpaired", "paired"])
def test_info_nce_module_matches_info_nce_pytorch_formulation(mode):
    g = torch.Generator().manual_seed(10)
    shape = (40, 16) if mode == "unpaired" else (12, 7, 16)
    q, k, n = (torch.randn(*s, generator=g, requires_grad=True) for s in [(12, 16), (12, 16), shape])
    up = torch.randn(12, generator=g)
    ours = ft.InfoNCE(reduction="none", negative_mode=mode)(q, k, n)
    ours.backward(up)
    got = [t.grad.clone() for t in (q, k, n)]
    for t in (q, k, n):
        t.grad = None
    torch_info_nce(q, k, n, 0.1, "none", mode).backward(up)
    torch.testing.assert_close(ours, torch_info_nce(q, k, n, 0.1, "none", mode), rtol=1e-5, atol=1e-5)
    for a, t in zip(got, (q, k, n), strict=False):
        torch.testing.assert_close(a, t.grad, rtol=1e-4, atol=1e-6)


def test_modules_match_torch_modules():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(16, 10, generator=g)
    t = torch.randn(16, 10, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    w = torch.rand(10, generator=g)
    pairs = [
        (ft.MSELoss(), torch.nn.MSELoss(), t),
        (ft.L1Loss(reduction="sum"), torch.nn.L1Loss(reduction="sum"), t),
        (
            ft.CrossEntropyLoss(weight=w, label_smoothing=0.1, ignore_index=3),
            torch.nn.CrossEntropyLoss(weight=w, label_smoothing=0.1, ignore_index=3),
            y,
        ),
    ]
    for ours, theirs, target in pairs:
        a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        la, lb = ours(a, target), theirs(b, target)
        torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
        la.backward()
        lb.backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


def test_inputs_are_not_copied():
    x = torch.randn(32, 8)
    view = ft._to_numpy(x, "input")
    assert np.shares_memory(view, x.numpy())


def test_rejects_non_cpu_and_unsupported_dtypes():
    with pytest.raises(TypeError, match="input"):
        ft.mse_loss(torch.ones(3, device="meta"), torch.ones(3, device="meta"))
    # float16 and bfloat16 are accepted (tests/test_bfloat16.py); complex and integer inputs are not.
    with pytest.raises(TypeError, match="input"):
        ft.mse_loss(torch.ones(3, dtype=torch.complex64), torch.ones(3, dtype=torch.complex64))
    with pytest.raises(TypeError, match="input"):
        ft.cross_entropy(torch.ones(2, 3, dtype=torch.int64), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="query"):
        ft.info_nce(torch.ones(2, 3, dtype=torch.int32), torch.ones(2, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="reduction"):
        ft.MSELoss(reduction="avg")


def test_training_loop_lowers_the_loss():
    """The README example: a linear classifier trained with fastloss's CrossEntropyLoss."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 20, generator=g) * 3
    labels = torch.randint(0, 4, (512,), generator=g)
    features = centers[labels] + torch.randn(512, 20, generator=g)
    model = torch.nn.Linear(20, 4)
    loss_fn = ft.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(50):
        optimizer.zero_grad()
        loss = loss_fn(model(features), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    accuracy = (model(features).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.9


# ---------------------------------------------------------------------------------------------
# Only first-order reverse mode is supported: everything else raises, never a silent zero.


def _fixture_calls():
    """(name, fastloss.torch call, the same loss written in torch ops, inputs that require grad)."""
    g = torch.Generator().manual_seed(12)
    x = torch.randn(5, 4, dtype=torch.float64, generator=g)
    t = torch.randn(5, 4, dtype=torch.float64, generator=g)
    labels = torch.tensor([0, 3, 1, 2, 3])
    weight = torch.rand(4, dtype=torch.float64, generator=g) + 0.5
    negatives = torch.randn(6, 4, dtype=torch.float64, generator=g)
    return [
        ("mse_loss", lambda a: ft.mse_loss(a, t), lambda a: F.mse_loss(a, t), x),
        (
            "l1_loss",
            lambda a: ft.l1_loss(a, t, reduction="sum"),
            lambda a: F.l1_loss(a, t, reduction="sum"),
            x,
        ),
        (
            "cross_entropy",
            lambda a: ft.cross_entropy(a, labels, weight, label_smoothing=0.1),
            lambda a: F.cross_entropy(a, labels, weight, label_smoothing=0.1),
            x,
        ),
        (
            "info_nce",
            lambda a: ft.info_nce(a, t, negatives, 0.5, normalize=True),
            lambda a: torch_info_nce(a, t, negatives, 0.5, "mean", "unpaired"),
            x,
        ),
    ]


CALLS = [c[0] for c in _fixture_calls()]


def _call(name):
    return next(c for c in _fixture_calls() if c[0] == name)


@pytest.mark.parametrize("name", CALLS)
def test_double_backward_raises(name):
    """A Hessian-vector product: torch's is nonzero (MAE's is zero), ours raises instead of
    silently giving zero. It raises as soon as the gradient is asked for with create_graph=True:
    nothing it would hand out could be differentiated correctly."""
    _, ours, theirs, x = _call(name)
    v = torch.linspace(-1.0, 1.0, x.numel(), dtype=x.dtype).reshape(x.shape)
    b = x.clone().requires_grad_(True)
    (gb,) = torch.autograd.grad(theirs(b), b, create_graph=True)
    if name != "l1_loss":
        (hvp,) = torch.autograd.grad((gb * v).sum(), b)
        assert hvp.abs().max() > 1e-3  # there is a second-order term to lose
    message = f"fastloss.torch.{name}: double backward is not supported"
    a = x.clone().requires_grad_(True)
    with pytest.raises(RuntimeError, match=message):
        torch.autograd.grad(ours(a), a, create_graph=True)
    with pytest.raises(RuntimeError, match=message):
        ours(a).backward(create_graph=True)
    # Mixed with a term torch can differentiate twice, the fastloss term still refuses rather
    # than contributing a zero to the Hessian.
    with pytest.raises(RuntimeError, match=message):
        torch.autograd.grad(ours(a) + (a**3).sum(), a, create_graph=True)
    # ... and first order is unaffected by the guard.
    (ga,) = torch.autograd.grad(ours(a), a)
    torch.testing.assert_close(ga, gb.detach(), rtol=1e-10, atol=1e-12)


def test_double_backward_wrt_target_raises():
    g = torch.Generator().manual_seed(13)
    x = torch.randn(3, 2, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randn(3, 2, dtype=torch.float64, generator=g, requires_grad=True)
    with pytest.raises(RuntimeError, match="mse_loss: double backward"):
        torch.autograd.grad(ft.mse_loss(x.detach(), t), t, create_graph=True)


# torch's own forward-AD machinery imports a module that uses the deprecated torch.jit.script.
_TORCH_JIT_DEPRECATION = "ignore:`torch.jit.script` is deprecated:DeprecationWarning"


@pytest.mark.filterwarnings(_TORCH_JIT_DEPRECATION)
@pytest.mark.parametrize("name", CALLS)
def test_forward_mode_ad_raises(name):
    _, ours, _, x = _call(name)
    import torch.autograd.forward_ad as fwad

    with fwad.dual_level():
        dual = fwad.make_dual(x, torch.ones_like(x))
        with pytest.raises(RuntimeError, match=f"fastloss.torch.{name}: forward-mode AD"):
            ours(dual)


@pytest.mark.filterwarnings(_TORCH_JIT_DEPRECATION)
@pytest.mark.parametrize("name", CALLS)
def test_functorch_jvp_raises(name):
    """torch.func refuses the function (an autograd.Function without setup_context) with a
    RuntimeError of its own, before our jvp could run."""
    _, ours, _, x = _call(name)
    with pytest.raises(RuntimeError, match="autograd.Function"):
        torch.func.jvp(ours, (x,), (torch.ones_like(x),))
