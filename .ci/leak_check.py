"""Calls every fastloss function, with every option and gradient, many times on every ISA path.

Run by .ci/sanitize.sh under LeakSanitizer (ASAN_OPTIONS=detect_leaks=1): a block that fastloss
allocates and never frees is unreachable at exit and fails the run. Python objects that fastloss
keeps alive by a missing decref stay reachable from nowhere too, but they are allocated by
CPython, whose exit-time allocations .ci/lsan.supp suppresses; the block count check below
catches those instead (sys.getallocatedblocks() grows with every leaked object).

Usage: python .ci/leak_check.py [REPEATS]
"""

from __future__ import annotations

import sys

import fastloss
import numpy as np
from fastloss import _core


def calls(rng):
    """One call of every public function x option x gradient, on small inputs of both dtypes."""
    for dtype in (np.float32, np.float64):
        pred = rng.standard_normal((7, 9)).astype(dtype)
        target = rng.standard_normal((7, 9)).astype(dtype)
        weight = rng.random(7)
        for loss in (fastloss.mse, fastloss.mae):
            for reduction in ("none", "sum", "mean", "batchmean"):
                loss(pred, target, reduction=reduction)
                loss(pred, target, reduction=reduction, sample_weight=weight, return_grad=True)
                loss(pred[:, ::2], target[::-1, ::2], reduction=reduction, return_grad=True)

        logits = rng.standard_normal((6, 5)).astype(dtype)
        labels = rng.integers(0, 5, size=6)
        labels[0] = -100
        probs = rng.random((6, 5)).astype(dtype)
        for reduction in ("none", "sum", "mean", "batchmean"):
            fastloss.cross_entropy(logits, labels, reduction=reduction)
            fastloss.cross_entropy(
                logits,
                labels,
                reduction=reduction,
                weight=rng.random(5),
                label_smoothing=0.1,
                return_grad=True,
            )
            fastloss.cross_entropy(logits[:, ::-1], probs, reduction=reduction, return_grad=True)

        q = rng.standard_normal((5, 8)).astype(dtype)
        k = rng.standard_normal((5, 8)).astype(dtype)
        queue = rng.standard_normal((300, 8)).astype(dtype)
        paired = rng.standard_normal((5, 3, 8)).astype(dtype)
        for reduction in ("none", "sum", "mean"):
            for normalize in (False, True):
                fastloss.info_nce(
                    q, k, reduction=reduction, normalize=normalize, symmetric=True, return_grad=True
                )
                fastloss.info_nce(q, k, queue, reduction=reduction, normalize=normalize, return_grad=True)
                fastloss.info_nce(
                    q,
                    k,
                    paired,
                    negative_mode="paired",
                    reduction=reduction,
                    normalize=normalize,
                    return_grad=True,
                )

    # Error paths allocate and unwind too.
    for bad in (
        lambda: fastloss.mse(np.ones(3), np.ones(4)),
        lambda: fastloss.cross_entropy(np.ones((2, 3)), np.array([0, 7])),
        lambda: fastloss.info_nce(np.ones((2, 3)), np.ones((2, 3)), temperature=-1.0),
    ):
        try:
            bad()
        except (ValueError, TypeError):
            pass
        else:
            sys.exit("leak_check: an invalid call did not raise")


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    isas = list(_core.available_isas())
    rng = np.random.default_rng(0)
    for isa in isas:
        _core.set_active_isa(isa)
        calls(rng)  # warm-up: caches, interned strings, NumPy's small-array cache
    before = sys.getallocatedblocks()
    for _ in range(repeats):
        for isa in isas:
            _core.set_active_isa(isa)
            calls(rng)
    grown = sys.getallocatedblocks() - before
    print(f"leak_check: {repeats} rounds on {isas}; Python blocks grew by {grown}")
    # One leaked object per call would add thousands; the slack absorbs allocator noise.
    if grown > 100:
        sys.exit(f"leak_check: {grown} Python blocks more after {repeats} rounds: a reference leak")


if __name__ == "__main__":
    main()
