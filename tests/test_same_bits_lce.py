"""The linear cross-entropy kernel gives the same bits on every compiled path and for every thread
count: row losses, the saved log-sum-exp parts and all three gradients of each path equal the
scalar path's bit for bit, with 1 or 2 threads.

The kernel makes this so as InfoNCE's does (tests/test_same_bits_infonce.py): class chunks and
tiles fixed by the problem's size, merged in a fixed order; every element of a matrix product one
chain of fused multiply-adds in class or row order; exp, log and the soft cap's tanh from the
vecmath.inl polynomials.
"""

from __future__ import annotations

import fastloss
import numpy as np
import pytest
from fastloss import _core

ISAS = list(_core.available_isas())
DTYPES = [np.float32, np.float64]

# Shapes either side of the forward class tile (128), the backward one (96), the class chunk
# (1024), the row block (96), the backward row group (384 at one thread) and the depth block (256).
SHAPES = [
    (1, 1, 1),
    (13, 7, 95),
    (97, 33, 129),
    (5, 300, 300),
    (400, 17, 200),
    (40, 16, 2100),
]
OPTIONS = [
    {},
    {"bias": True, "label_smoothing": 0.1},
    {"weight": True, "ignore": True, "z_loss": 1e-3},
    {"bias": True, "softcap": 2.5},
    {"prob": True, "weight": True, "label_smoothing": 0.2, "softcap": 30.0},
]


def _on(isa: str, fn):
    previous = _core.active_isa()
    _core.set_active_isa(isa)
    try:
        return fn()
    finally:
        _core.set_active_isa(previous)


def _case(dtype, n, h, v, options, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h)).astype(dtype)
    w = (rng.standard_normal((v, h)) * (2.0 / np.sqrt(h))).astype(dtype)
    bias = rng.standard_normal(v).astype(dtype) if options.get("bias") else None
    class_weight = rng.uniform(0.2, 3.0, v) if options.get("weight") else None
    if options.get("prob"):
        q = rng.uniform(0.0, 1.0, (n, v)).astype(dtype)
        index, prob = None, q / q.sum(axis=1, keepdims=True)
    else:
        index, prob = rng.integers(0, v, n), None
        if options.get("ignore"):
            index[::4] = -100
    row_grad = rng.uniform(0.1, 2.0, n)
    return x, w, bias, index, prob, class_weight, row_grad


def _outputs(case, options) -> dict[str, np.ndarray]:
    x, w, bias, index, prob, class_weight, row_grad = case
    scalars = (
        -100,
        options.get("label_smoothing", 0.0),
        options.get("z_loss", 0.0),
        options.get("softcap", 0.0),
    )
    n = x.shape[0]
    row_loss, row_max, row_log_sum = np.empty(n), np.empty(n), np.empty(n)
    _core.linear_cross_entropy(
        x, w, bias, index, prob, class_weight, *scalars, row_loss, row_max, row_log_sum
    )
    d_input, d_weight = np.empty_like(x), np.empty_like(w)
    d_bias = None if bias is None else np.empty_like(bias)
    _core.linear_cross_entropy_backward(
        x,
        w,
        bias,
        index,
        prob,
        class_weight,
        *scalars,
        row_max,
        row_log_sum,
        row_grad,
        d_input,
        d_weight,
        d_bias,
    )
    out = {
        "row_loss": row_loss,
        "row_max": row_max,
        "row_log_sum": row_log_sum,
        "d_input": d_input,
        "d_weight": d_weight,
    }
    if d_bias is not None:
        out["d_bias"] = d_bias
    return out


def _assert_same_bits(got: dict[str, np.ndarray], expected: dict[str, np.ndarray], where: str) -> None:
    assert got.keys() == expected.keys(), where
    for name, value in expected.items():
        assert got[name].dtype == value.dtype, (where, name)
        assert np.array_equal(got[name].view(np.uint8), value.view(np.uint8)), (
            f"{where}: {name} differs (largest difference {np.max(np.abs(got[name] - value))})"
        )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "plain")
def test_every_path_and_thread_count(dtype, shape, options):
    case = _case(dtype, *shape, options)
    previous = fastloss.get_num_threads()
    try:
        fastloss.set_num_threads(1)
        expected = _on("scalar", lambda: _outputs(case, options))
        assert np.isfinite(expected["row_loss"]).all()
        for isa in ISAS:
            for threads in (1, 2):
                fastloss.set_num_threads(threads)
                _assert_same_bits(
                    _on(isa, lambda: _outputs(case, options)), expected, f"{isa}, {threads} threads"
                )
    finally:
        fastloss.set_num_threads(previous)


def test_the_outputs_depend_on_the_inputs():
    """A guard that the comparisons above compare something: another input gives other bits."""
    options = {"bias": True}
    a = _outputs(_case(np.float32, 13, 7, 95, options, seed=1), options)
    b = _outputs(_case(np.float32, 13, 7, 95, options, seed=2), options)
    assert not np.array_equal(a["row_loss"], b["row_loss"])
    assert not np.array_equal(a["d_weight"], b["d_weight"])
