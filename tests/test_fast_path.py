"""Plain calls take a C++ fast path (python/fastloss/_losses.py -> _core.*_fast); every other
call takes the general path. Both must give the same bits, and the fast path must decline what
it does not handle rather than compute it."""

from __future__ import annotations

import fastloss
import numpy as np
import pytest
from fastloss import _core


@pytest.mark.parametrize("kind,fn", [(0, fastloss.mse), (1, fastloss.mae)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "batchmean"])
@pytest.mark.parametrize("shape", [(1,), (33,), (300, 17), (40, 3, 7)])
def test_regression_fast_path_equals_general_path(isa, kind, fn, reduction, shape):
    rng = np.random.default_rng(1)
    p = rng.standard_normal(shape).astype(np.float32)
    t = rng.standard_normal(shape).astype(np.float32)
    fast = _core.regression_fast(kind, p, t, reduction)
    assert fast is not None
    # Big-endian input is converted by the general path, then summed in the same blocks.
    general = fn(p.astype(p.dtype.newbyteorder(">")), t, reduction=reduction)
    assert fast == general == fn(p, t, reduction=reduction)


@pytest.mark.parametrize("reduction", ["mean", "sum", "batchmean"])
def test_cross_entropy_fast_path_equals_general_path(isa, reduction):
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((257, 13)).astype(np.float64)
    labels = rng.integers(0, 13, 257)
    fast = _core.cross_entropy_fast(logits, labels, reduction)
    assert fast is not None
    general = fastloss.cross_entropy(logits.astype(">f8"), labels, reduction=reduction)
    assert fast == general == fastloss.cross_entropy(logits, labels, reduction=reduction)


def test_fast_path_declines_what_it_does_not_handle():
    a = np.ones((4, 3), np.float32)
    assert _core.regression_fast(0, a, a, "none") is None
    assert _core.regression_fast(0, a, a.astype(np.float64), "mean") is None
    assert _core.regression_fast(0, a[:, ::2], a[:, ::2], "mean") is None
    assert _core.regression_fast(0, a, a[:2], "mean") is None
    assert _core.regression_fast(0, [1.0], [1.0], "mean") is None
    labels = np.array([0, 1, 2, 0])
    assert _core.cross_entropy_fast(a, labels.astype(np.int32), "mean") is None
    assert _core.cross_entropy_fast(a, labels, "none") is None
    assert _core.cross_entropy_fast(a.T, labels[:3], "mean") is None


def test_fast_path_still_checks_labels():
    with pytest.raises(ValueError, match="target"):
        fastloss.cross_entropy(np.zeros((3, 4), np.float32), np.array([0, 4, 1]))
