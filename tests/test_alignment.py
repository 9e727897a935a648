"""Inputs that are not aligned to their item size (issue 8).

NumPy arrays need not be aligned: np.frombuffer at an odd offset, or the members of an np.savez
archive that the CLI memory-maps. The kernels read them through unaligned loads; reading them
through aligned-typed loads is undefined behaviour (UBSan flags it; .ci/sanitize.sh runs this file
instrumented). Every loss x gradient x option on misaligned inputs must give the same bits as on an
aligned copy, on every ISA path.
"""

from __future__ import annotations

import fastloss
import numpy as np
import pytest


def misaligned(a) -> np.ndarray:
    """A copy of `a` whose data starts one byte past an aligned address (C order)."""
    a = np.ascontiguousarray(a)
    buffer = bytearray(a.nbytes + a.itemsize + 1)
    base = np.frombuffer(buffer, dtype=np.uint8)
    start = (-base.ctypes.data) % a.itemsize + 1  # aligned address + 1
    out = np.frombuffer(buffer, dtype=a.dtype, count=a.size, offset=start).reshape(a.shape)
    out[...] = a
    assert a.itemsize == 1 or a.size == 0 or not out.flags.aligned
    return out


def misaligned_strided(a, axis: int) -> np.ndarray:
    """Every other index along `axis` of a misaligned array twice as long there."""
    a = np.asarray(a)
    wide = misaligned(np.repeat(a, 2, axis=axis))
    out = wide[(slice(None),) * (axis % a.ndim) + (slice(None, None, 2),)]
    assert not out.flags.aligned and (a.size <= 1 or not out.flags.c_contiguous)
    return out


# "columns": the element-strided loops (InfoNCE copies these to unit feature stride first);
# "rows": gaps between rows, unit stride inside them.
LAYOUTS = {
    "contiguous": misaligned,
    "columns": lambda a: misaligned_strided(a, -1),
    "rows": lambda a: misaligned_strided(a, 0),
}


def aligned_like(a, layout: str) -> np.ndarray:
    """An aligned copy of `a` in the same layout, so that only the alignment differs."""
    a = np.ascontiguousarray(a)
    if layout == "contiguous":
        return a
    axis = -1 if layout == "columns" else 0
    return np.repeat(a, 2, axis=axis)[(slice(None),) * (axis % a.ndim) + (slice(None, None, 2),)]


def assert_same_bits(got, want, what):
    if want is None:
        assert got is None, what
        return
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want), what
        for i, (g, w) in enumerate(zip(got, want, strict=False)):
            assert_same_bits(g, w, f"{what}[{i}]")
        return
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, what
    assert got.tobytes() == want.tobytes(), f"{what}: misaligned input changed the bits"


def both(fn, arrays, layout, **kwargs):
    """fn on aligned copies of `arrays` and on misaligned copies; the results must agree bitwise."""
    aligned = [None if a is None else aligned_like(a, layout) for a in arrays]
    for a in aligned:
        assert a is None or a.flags.aligned
    moved = [None if a is None else LAYOUTS[layout](a) for a in arrays]
    for a in moved:
        assert a is None or not a.flags.aligned
    want = fn(*aligned, **kwargs)
    got = fn(*moved, **kwargs)
    assert_same_bits(got, want, f"{getattr(fn, '__name__', fn)} {layout} {kwargs}")
    return want


REDUCTIONS = ("none", "sum", "mean", "batchmean")
DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", [fastloss.mse, fastloss.mae], ids=["mse", "mae"])
def test_regression(isa, loss, dtype, layout):
    rng = np.random.default_rng(81)
    for shape in [(1,), (17,), (5, 33), (1000,)]:
        pred = rng.standard_normal(shape).astype(dtype)
        target = rng.standard_normal(shape).astype(dtype)
        weight = rng.random(shape[0])
        for reduction in REDUCTIONS:
            for return_grad in (False, True):
                # No weights: C-contiguous pairs take the C++ fast path.
                both(loss, [pred, target], layout, reduction=reduction, return_grad=return_grad)
                both(
                    lambda p, t, w, **kw: loss(p, t, sample_weight=w, **kw),
                    [pred, target, weight],
                    layout,
                    reduction=reduction,
                    return_grad=return_grad,
                )


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy(isa, dtype, layout):
    rng = np.random.default_rng(82)
    for n, c in [(1, 1), (5, 17), (40, 9)]:
        logits = (3 * rng.standard_normal((n, c))).astype(dtype)
        labels = rng.integers(0, c, size=n)
        labels[::4] = -100
        probs = rng.random((n, c)).astype(dtype)
        weight = rng.random(c) + 0.5
        for reduction in REDUCTIONS:
            for return_grad in (False, True):
                # Defaults: C-contiguous logits with int64 labels take the C++ fast path.
                both(
                    fastloss.cross_entropy,
                    [logits, labels],
                    layout,
                    reduction=reduction,
                    return_grad=return_grad,
                )
                both(
                    lambda x, t, w, **kw: fastloss.cross_entropy(x, t, weight=w, **kw),
                    [logits, labels, weight],
                    layout,
                    reduction=reduction,
                    label_smoothing=0.2,
                    return_grad=return_grad,
                )
                both(
                    lambda x, p, w, **kw: fastloss.cross_entropy(x, p, weight=w, **kw),
                    [logits, probs, weight],
                    layout,
                    reduction=reduction,
                    label_smoothing=0.1,
                    return_grad=return_grad,
                )


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["in-batch", "unpaired", "paired"])
def test_info_nce(isa, mode, dtype, layout):
    rng = np.random.default_rng(83)
    # 300 keys: two key tiles, the second partial; 9 features: a vector and a tail.
    n, m, d = 7, 300, 9
    q = rng.standard_normal((n, d)).astype(dtype)
    k = rng.standard_normal((n, d)).astype(dtype)
    neg = {
        "in-batch": None,
        "unpaired": rng.standard_normal((m, d)).astype(dtype),
        "paired": rng.standard_normal((n, 5, d)).astype(dtype),
    }[mode]
    mode_kwargs = {"negative_mode": "paired"} if mode == "paired" else {}
    for reduction in ("none", "sum", "mean"):
        for normalize in (False, True):
            for symmetric in [False, True] if mode == "in-batch" else [False]:
                for return_grad in (False, True):
                    both(
                        fastloss.info_nce,
                        [q, k, neg],
                        layout,
                        temperature=0.2,
                        reduction=reduction,
                        normalize=normalize,
                        symmetric=symmetric,
                        return_grad=return_grad,
                        **mode_kwargs,
                    )


def test_misaligned_helper_is_misaligned_and_equal():
    a = np.arange(12, dtype=np.float64).reshape(3, 4)
    for make in LAYOUTS.values():
        b = make(a)
        assert not b.flags.aligned
        assert np.array_equal(b, a)
