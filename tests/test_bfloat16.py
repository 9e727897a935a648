"""bfloat16 inputs (SPEC "Numbers"): ``ml_dtypes.bfloat16`` arrays and ``torch.bfloat16`` tensors
are computed in float32, so every value equals, bit for bit, the float32 call on the same values
converted (exactly) to float32; gradients come back in bfloat16 (the float32 gradient rounded
once), "none" losses in float32.

The NumPy tests need ml_dtypes (the ``test`` extra) and skip without it; the torch tests need only
torch. fastloss itself never imports ml_dtypes."""

from __future__ import annotations

import subprocess
import sys

import fastloss
import numpy as np
import pytest

# -- NumPy: ml_dtypes.bfloat16 ------------------------------------------------------------------


@pytest.fixture(scope="module")
def bf16():
    return np.dtype(pytest.importorskip("ml_dtypes").bfloat16)


def values(bf16, *shape, seed=0, scale=1.0):
    """bfloat16 values and the same values in float32 (exact: bfloat16 is float32's top half)."""
    rng = np.random.default_rng(seed)
    low = (rng.standard_normal(shape) * scale).astype(bf16)
    return low, low.astype(np.float32)


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def assert_matches_float32(low_call, f32_call, bf16):
    """low_call() on bfloat16 inputs and f32_call() on their float32 copies: the same loss bits
    ("none": float32 arrays; a reduction: a Python float) and gradients, rounded to bfloat16."""
    low_loss, low_grad = low_call()
    f32_loss, f32_grad = f32_call()
    if isinstance(f32_loss, np.ndarray):
        assert low_loss.dtype == np.float32 and same_bits(low_loss, f32_loss)
    else:
        assert isinstance(low_loss, float) and low_loss == f32_loss
    low_grads = low_grad if isinstance(low_grad, tuple) else (low_grad,)
    f32_grads = f32_grad if isinstance(f32_grad, tuple) else (f32_grad,)
    for low, f32 in zip(low_grads, f32_grads, strict=True):
        if f32 is None:
            assert low is None
            continue
        assert low.dtype == bf16
        assert same_bits(low, f32.astype(bf16))


REDUCTIONS = ("none", "sum", "mean", "batchmean")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ("mse", "mae"))
@pytest.mark.parametrize("shape", [(1,), (17,), (9, 33), (3, 4, 5)])
def test_regression(bf16, kind, reduction, shape):
    (p, p32), (t, t32) = values(bf16, *shape, seed=1), values(bf16, *shape, seed=2)
    fn = getattr(fastloss, kind)
    assert_matches_float32(
        lambda: fn(p, t, reduction=reduction, return_grad=True),
        lambda: fn(p32, t32, reduction=reduction, return_grad=True),
        bf16,
    )
    # Without the gradient (another path through the binding): the same loss.
    assert same_bits(fn(p, t, reduction=reduction), fn(p32, t32, reduction=reduction))


def test_regression_mixed_and_zero_dim(bf16):
    (p, p32), (t, t32) = values(bf16, 8, 3, seed=3), values(bf16, 8, 3, seed=4)
    # bfloat16 with float32 computes in float32; with float64, in float64.
    assert fastloss.mse(p, t32) == fastloss.mse(p32, t32)
    assert fastloss.mse(p, t32.astype(np.float64)) == fastloss.mse(
        p32.astype(np.float64), t32.astype(np.float64)
    )
    loss, grad = fastloss.mae(p[0, 0], t[0, 0], reduction="none", return_grad=True)
    assert loss.shape == grad.shape == () and loss.dtype == np.float32 and grad.dtype == bf16
    assert same_bits(loss, fastloss.mae(p32[0, 0], t32[0, 0], reduction="none"))


def test_regression_sample_weight_and_layouts(bf16):
    (p, p32), (t, t32) = values(bf16, 10, 7, seed=5), values(bf16, 10, 7, seed=6)
    w = np.linspace(0.5, 2.0, 10)
    assert_matches_float32(
        lambda: fastloss.mse(p[::-1, ::2], t[::-1, ::2], sample_weight=w, return_grad=True),
        lambda: fastloss.mse(p32[::-1, ::2], t32[::-1, ::2], sample_weight=w, return_grad=True),
        bf16,
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("soft", [False, True])
def test_cross_entropy(bf16, reduction, soft):
    z, z32 = values(bf16, 13, 9, seed=7, scale=3.0)
    if soft:
        raw = np.random.default_rng(8).random((13, 9))
        target = (raw / raw.sum(1, keepdims=True)).astype(bf16)
        target32 = target.astype(np.float32)
    else:
        target = target32 = np.random.default_rng(8).integers(0, 9, 13)
    assert_matches_float32(
        lambda: fastloss.cross_entropy(z, target, reduction=reduction, label_smoothing=0.1, return_grad=True),
        lambda: fastloss.cross_entropy(
            z32, target32, reduction=reduction, label_smoothing=0.1, return_grad=True
        ),
        bf16,
    )


def test_cross_entropy_single_sample(bf16):
    z, z32 = values(bf16, 5, seed=9)
    assert_matches_float32(
        lambda: fastloss.cross_entropy(z, 3, reduction="none", return_grad=True),
        lambda: fastloss.cross_entropy(z32, 3, reduction="none", return_grad=True),
        bf16,
    )


@pytest.mark.parametrize("reduction", ("none", "sum", "mean"))
@pytest.mark.parametrize("mode", ["in_batch", "symmetric", "unpaired", "paired"])
def test_info_nce(bf16, reduction, mode):
    (q, q32), (k, k32) = values(bf16, 6, 8, seed=10), values(bf16, 6, 8, seed=11)
    negatives = {"unpaired": values(bf16, 11, 8, seed=12), "paired": values(bf16, 6, 4, 8, seed=13)}.get(mode)
    options = {
        "reduction": reduction,
        "temperature": 0.5,
        "negative_mode": "paired" if mode == "paired" else "unpaired",
        "symmetric": mode == "symmetric",
        "normalize": True,
        "return_grad": True,
    }
    n, n32 = (None, None) if negatives is None else negatives
    assert_matches_float32(
        lambda: fastloss.info_nce(q, k, n, **options),
        lambda: fastloss.info_nce(q32, k32, n32, **options),
        bf16,
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("soft", [False, True])
def test_linear_cross_entropy(bf16, reduction, soft):
    (x, x32), (w, w32), (b, b32) = (
        values(bf16, 7, 5, seed=14),
        values(bf16, 11, 5, seed=15),
        values(bf16, 11, seed=16),
    )
    if soft:
        raw = np.random.default_rng(17).random((7, 11))
        target = (raw / raw.sum(1, keepdims=True)).astype(bf16)
        target32 = target.astype(np.float32)
    else:
        target = target32 = np.random.default_rng(17).integers(0, 11, 7)
    options = {"reduction": reduction, "z_loss": 1e-3, "return_grad": True}
    assert_matches_float32(
        lambda: fastloss.linear_cross_entropy(x, w, target, linear_bias=b, **options),
        lambda: fastloss.linear_cross_entropy(x32, w32, target32, linear_bias=b32, **options),
        bf16,
    )


@pytest.mark.parametrize("loss", ("mse", "mae", "cross_entropy"))
def test_accumulator(bf16, loss):
    (a, a32), (b, b32) = values(bf16, 9, 5, seed=18), values(bf16, 9, 5, seed=19)
    if loss == "cross_entropy":
        b = b32 = np.arange(9) % 5
    acc = fastloss.Accumulator(loss, reduction="sum").update(a[:4], b[:4]).update(a[4:], b[4:])
    assert acc.result() == getattr(fastloss, loss)(a32, b32, reduction="sum")


def test_byte_swapped_void_is_still_refused():
    # bfloat16 is known by name: a plain 2-byte void dtype is not a number.
    with pytest.raises(TypeError, match="pred: dtype"):
        fastloss.mse(np.zeros(3, dtype="V2"), np.zeros(3, dtype="V2"))


def test_fastloss_does_not_import_ml_dtypes():
    code = (
        "import sys, numpy, fastloss, fastloss._losses\n"
        "fastloss.mse(numpy.ones(3, numpy.float16), numpy.zeros(3, numpy.float16))\n"
        "print('ml_dtypes' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -- torch.bfloat16 -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ft():
    pytest.importorskip("torch")
    return pytest.importorskip("fastloss.torch")


def tensors(*shape, seed=0, scale=1.0):
    """A bfloat16 leaf and a float32 leaf holding the same values."""
    import torch

    g = torch.Generator().manual_seed(seed)
    low = (torch.randn(shape, generator=g) * scale).to(torch.bfloat16)
    return low.clone().requires_grad_(), low.float().requires_grad_()


def assert_torch_matches_float32(low_call, f32_call, low_inputs, f32_inputs, reduction):
    """The bfloat16 call against the float32 one on the same values: the loss bits (a reduction
    in bfloat16, the float32 result rounded; "none" in float32, unrounded) and the gradients
    (bfloat16: the float32 gradients rounded once)."""
    import torch

    low, f32 = low_call(), f32_call()
    if reduction == "none":
        assert low.dtype == torch.float32
        assert torch.equal(low.detach(), f32.detach())
    else:
        assert low.dtype == torch.bfloat16
        assert torch.equal(low.detach(), f32.detach().to(torch.bfloat16))
    upstream = torch.linspace(0.5, 1.5, f32.numel()).reshape(f32.shape)
    low_grads = torch.autograd.grad(low, low_inputs, upstream.to(low.dtype))
    f32_grads = torch.autograd.grad(f32, f32_inputs, upstream)
    for a, b in zip(low_grads, f32_grads, strict=True):
        assert a.dtype == torch.bfloat16
        assert torch.equal(a, b.to(torch.bfloat16))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", ("mse_loss", "l1_loss"))
def test_torch_regression(ft, name, reduction):
    (p, p32), (t, t32) = tensors(9, 7, seed=20), tensors(9, 7, seed=21)
    fn = getattr(ft, name)
    assert_torch_matches_float32(
        lambda: fn(p, t, reduction=reduction),
        lambda: fn(p32, t32, reduction=reduction),
        (p, t),
        (p32, t32),
        reduction,
    )


@pytest.mark.parametrize("reduction", ("none", "sum", "mean"))
def test_torch_regression_weight(ft, reduction):
    import torch

    (p, p32), (t, t32) = tensors(4, 6, seed=22), tensors(4, 6, seed=23)
    w = torch.rand(4, 6).to(torch.bfloat16)
    assert_torch_matches_float32(
        lambda: ft.mse_loss(p, t, reduction=reduction, weight=w),
        lambda: ft.mse_loss(p32, t32, reduction=reduction, weight=w.float()),
        (p, t),
        (p32, t32),
        reduction,
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("soft", [False, True])
def test_torch_cross_entropy(ft, reduction, soft):
    import torch

    z, z32 = tensors(10, 6, seed=24, scale=3.0)
    if soft:
        target32 = torch.softmax(torch.randn(10, 6, generator=torch.Generator().manual_seed(25)), 1)
        target = target32.to(torch.bfloat16)
        target32 = target.float()
    else:
        target = target32 = torch.tensor([0, 5, 2, -100, 1, 3, 4, 4, 0, 2])
    assert_torch_matches_float32(
        lambda: ft.cross_entropy(z, target, reduction=reduction, label_smoothing=0.05),
        lambda: ft.cross_entropy(z32, target32, reduction=reduction, label_smoothing=0.05),
        (z,),
        (z32,),
        reduction,
    )


@pytest.mark.parametrize("reduction", ("none", "sum", "mean"))
@pytest.mark.parametrize("queue", [False, True])
def test_torch_info_nce(ft, reduction, queue):
    (q, q32), (k, k32), (n, n32) = tensors(5, 8, seed=26), tensors(5, 8, seed=27), tensors(9, 8, seed=28)
    low_inputs, f32_inputs = ((q, k, n), (q32, k32, n32)) if queue else ((q, k), (q32, k32))
    assert_torch_matches_float32(
        lambda: ft.info_nce(q, k, n if queue else None, 0.5, reduction),
        lambda: ft.info_nce(q32, k32, n32 if queue else None, 0.5, reduction),
        low_inputs,
        f32_inputs,
        reduction,
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_torch_linear_cross_entropy(ft, reduction):
    import torch

    (x, x32), (w, w32), (b, b32) = tensors(6, 5, seed=29), tensors(13, 5, seed=30), tensors(13, seed=31)
    target = torch.tensor([0, 12, 3, 3, -100, 7])
    assert_torch_matches_float32(
        lambda: ft.linear_cross_entropy(x, w, target, linear_bias=b, reduction=reduction, softcap=20.0),
        lambda: ft.linear_cross_entropy(x32, w32, target, linear_bias=b32, reduction=reduction, softcap=20.0),
        (x, w, b),
        (x32, w32, b32),
        reduction,
    )


def test_torch_float16_and_mixed_dtypes(ft):
    import torch

    p, t = torch.randn(5, 3).half().requires_grad_(), torch.randn(5, 3).half()
    loss = ft.mse_loss(p, t)
    assert loss.dtype == torch.float16
    (grad,) = torch.autograd.grad(loss, p)
    assert grad.dtype == torch.float16
    with pytest.raises(TypeError, match="input and target"):
        ft.mse_loss(p.to(torch.bfloat16), t.float())
