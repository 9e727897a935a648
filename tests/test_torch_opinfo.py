"""fastloss.torch against PyTorch's own test samples: the OpInfo samples (sample_inputs and
reference_inputs) of mse_loss, l1_loss and cross_entropy, and the ModuleInfo samples of MSELoss,
L1Loss and CrossEntropyLoss. Nobody here wrote these inputs: each is called as torch's tests call
it (positional arguments and keywords unchanged), and the value and the gradient of every floating
tensor torch differentiates (soft targets and regression targets included) must agree with torch's.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("expecttest")  # torch.testing._internal imports it
ft = pytest.importorskip("fastloss.torch")

from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402
from torch.testing._internal.common_modules import module_db  # noqa: E402

OPS = {
    "nn.functional.mse_loss": ft.mse_loss,
    "nn.functional.l1_loss": ft.l1_loss,
    "nn.functional.cross_entropy": ft.cross_entropy,
}
MODULES = {"MSELoss": ft.MSELoss, "L1Loss": ft.L1Loss, "CrossEntropyLoss": ft.CrossEntropyLoss}
DTYPES = (torch.float32, torch.float64)
SEED = 20261202


def _tolerance(dtype):
    return {"rtol": 2e-5, "atol": 2e-6} if dtype == torch.float32 else {"rtol": 1e-11, "atol": 1e-12}


def _op_samples(op, dtype):
    torch.manual_seed(SEED)
    return list(op.sample_inputs("cpu", dtype, requires_grad=True)) + list(
        op.reference_inputs("cpu", dtype, requires_grad=True)
    )


def _module_samples(info, dtype):
    torch.manual_seed(SEED)
    return info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True, training=True)


def _op_cases():
    for op in op_db:
        if op.name in OPS:
            for dtype in DTYPES:
                for index in range(len(_op_samples(op, dtype))):
                    yield pytest.param(op.name, dtype, index, id=f"{op.name[14:]}-{str(dtype)[6:]}-{index}")


def _module_cases():
    for info in module_db:
        name = info.module_cls.__name__
        if name in MODULES:
            for dtype in DTYPES:
                for index, sample in enumerate(_module_samples(info, dtype)):
                    case_id = f"{name}-{str(dtype)[6:]}-{index}-{sample.desc}"
                    yield pytest.param(name, dtype, index, id=case_id)


def _clone(value):
    """A fresh leaf with the same value and requires_grad (each side differentiates its own)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone().requires_grad_(value.requires_grad)
    return value


def _leaves(args, kwargs):
    return [
        v
        for v in (*args, *kwargs.values())
        if isinstance(v, torch.Tensor) and v.requires_grad and v.is_floating_point()
    ]


def _run(call, args, kwargs):
    """The output of call(*args, **kwargs) on fresh leaves, and the gradient of (output * a fixed
    random cotangent).sum() w.r.t. every leaf that requires grad."""
    args = [_clone(a) for a in args]
    kwargs = {k: _clone(v) for k, v in kwargs.items()}
    out = call(*args, **kwargs)
    leaves = _leaves(args, kwargs)
    grads = []
    if leaves:
        cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
        grads = torch.autograd.grad(out, leaves, grad_outputs=cotangent)
    return out, grads


def _compare(expected, got, dtype):
    expected_out, expected_grads = expected
    out, grads = got
    assert out.dtype == expected_out.dtype
    assert out.shape == expected_out.shape
    torch.testing.assert_close(out, expected_out, **_tolerance(dtype), equal_nan=True)
    assert len(grads) == len(expected_grads)
    for g, e in zip(grads, expected_grads, strict=True):
        assert g.shape == e.shape and g.dtype == e.dtype
        torch.testing.assert_close(g, e, **_tolerance(dtype), equal_nan=True)


@pytest.mark.parametrize(("name", "dtype", "index"), list(_op_cases()))
def test_opinfo_sample(name, dtype, index):
    op = next(o for o in op_db if o.name == name)
    sample = _op_samples(op, dtype)[index]
    args = [sample.input, *sample.args]
    expected = _run(op.op, args, sample.kwargs)
    _compare(expected, _run(OPS[name], args, sample.kwargs), dtype)


@pytest.mark.parametrize(("name", "dtype", "index"), list(_module_cases()))
def test_moduleinfo_sample(name, dtype, index):
    info = next(m for m in module_db if m.module_cls.__name__ == name)
    sample = _module_samples(info, dtype)[index]
    ctor, forward = sample.constructor_input, sample.forward_input
    reference = info.module_cls(*ctor.args, **ctor.kwargs)
    ours = MODULES[name](*ctor.args, **ctor.kwargs)
    expected = _run(reference, forward.args, forward.kwargs)
    _compare(expected, _run(ours, forward.args, forward.kwargs), dtype)
