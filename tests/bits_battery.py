"""The outputs that must have the same bits on every CPU path (SPEC.md, "Same bits on every CPU
path"): element and row losses, reductions and gradients of every loss, and the vector exp/log,
on sizes that straddle every lane width and inputs with NaN, inf, huge and subnormal values.

tests/test_same_bits.py compares every path with the scalar one in this process, and under an
emulated CPU (.ci/emulate.sh, .ci/emulate-arm64.sh) compares the path there with the digests
this file writes natively:  python tests/bits_battery.py OUT.json  (with the scalar path).
NaN is compared by position: x86 and ARM make different default NaNs (sign bit).
"""

from __future__ import annotations

import hashlib
import json
import sys

import fastloss
import numpy as np
from fastloss import _core, _losses

SPECIAL = [np.nan, np.inf, -np.inf, 3e38, -3e38, 1e-45, -1e-45, 0.0, -0.0, 1.5, -2.25]


class _Inputs:
    """Inputs with the same bits under any NumPy version and CPU (the arm64 step runs Debian's
    NumPy 1.24): a 64-bit LCG, and values on a power-of-two grid, so every step is exact."""

    def __init__(self, seed: int) -> None:
        self.state = seed

    def ints(self, n: int, bound: int) -> np.ndarray:
        out = []
        for _ in range(n):
            self.state = (self.state * 6364136223846793005 + 1442695040888963407) % 2**64
            out.append((self.state >> 24) % bound)
        return np.array(out, dtype=np.int64)

    def uniform(self, shape, dtype, scale: float = 1.0) -> np.ndarray:
        """Values in [-scale, scale) on a grid of scale * 2^-20 (scale a power of two)."""
        n = int(np.prod(shape))
        grid = (self.ints(n, 2**21) - 2**20).astype(np.float64) * 2.0**-20
        return (grid * scale).astype(dtype).reshape(shape)

    def positive(self, shape, low: float, dtype=np.float64) -> np.ndarray:
        """Values in [low, low + 1) on a grid of 2^-20 (low a multiple of it)."""
        n = int(np.prod(shape))
        return (low + self.ints(n, 2**20).astype(np.float64) * 2.0**-20).astype(dtype).reshape(shape)


def _canonical(value) -> np.ndarray:
    a = np.array(value)
    if a.dtype.kind == "f":
        a = np.where(np.isnan(a), np.array(np.nan, a.dtype), a)  # one NaN
    return np.ascontiguousarray(a)


def _regression(rng) -> dict[str, list]:
    out = {}
    for dtype in (np.float32, np.float64):
        for shape in [(1,), (7,), (15,), (16,), (17,), (31,), (32,), (33,), (64,), (100,), (1031,), (13, 37)]:
            p = rng.uniform(shape, dtype, 4.0)
            t = rng.uniform(shape, dtype)
            w = rng.positive(shape[0], 0.125)
            for name in ("mse", "mae"):
                f = getattr(fastloss, name)
                out[f"{name}-{np.dtype(dtype).name}-{shape}"] = [
                    f(p, t, reduction="none"),
                    f(p, t, reduction="sum"),
                    f(p, t, reduction="mean", sample_weight=w),
                    f(p, t, return_grad=True)[1],
                    f(p, t, reduction="none", sample_weight=w, return_grad=True)[1],
                ]
        special = np.array(SPECIAL, dtype)
        for name in ("mse", "mae"):
            f = getattr(fastloss, name)
            pairs = np.array(np.meshgrid(special, special)).reshape(2, -1).astype(dtype)
            out[f"{name}-{np.dtype(dtype).name}-special"] = [
                f(pairs[0], pairs[1], reduction="none"),
                f(pairs[0], pairs[1], return_grad=True)[1],
            ]
    return out


def _cross_entropy(rng) -> dict[str, list]:
    out = {}
    for dtype in (np.float32, np.float64):
        for classes, rows in [
            (1, 3),
            (3, 5),
            (5, 19),
            (15, 2),
            (16, 2),
            (17, 5),
            (31, 2),
            (32, 2),
            (33, 4),
            (64, 2),
            (65, 2),
            (100, 3),
            (1000, 2),
        ]:
            x = rng.uniform((rows, classes), dtype, 16.0)
            y = rng.ints(rows, classes)
            y[0] = -100
            q = rng.positive((rows, classes), 0.0, dtype)  # soft targets (unnormalised, as torch allows)
            w = rng.positive(classes, 0.5)
            key = f"ce-{np.dtype(dtype).name}-{classes}"
            out[key] = [
                fastloss.cross_entropy(x, y, reduction="none"),
                *fastloss.cross_entropy(x, y, return_grad=True),
                *fastloss.cross_entropy(x, y, weight=w, label_smoothing=0.1, return_grad=True),
                *fastloss.cross_entropy(x, q, reduction="sum", label_smoothing=0.2, return_grad=True),
                fastloss.cross_entropy(x, q, reduction="none", weight=w),
            ]
        # K-dimensional (N, C, H, W) in its natural layout (class stride H * W: rows gathered),
        # with the gradients w.r.t. logits and probability targets.
        for classes, shape in [(3, (2, 5, 3)), (17, (3, 2, 7)), (40, (1, 4, 5))]:
            n, h, wd = shape
            x = rng.uniform((n, classes, h, wd), dtype, 16.0)
            y = rng.ints(n * h * wd, classes).reshape(n, h, wd)
            y[0, 0, 0] = -100
            q = rng.positive((n, classes, h, wd), 0.0, dtype)
            w = rng.positive(classes, 0.5)
            _, _, soft_grad, soft_target_grad = _losses.cross_entropy_pass(
                x, q, w, -100, 0.1, "mean", True, None, return_target_grad=True
            )
            out[f"ce-kdim-{np.dtype(dtype).name}-{classes}"] = [
                fastloss.cross_entropy(x, y, reduction="none"),
                *fastloss.cross_entropy(x, y, weight=w, label_smoothing=0.1, return_grad=True),
                fastloss.cross_entropy(x, q, reduction="none"),
                soft_grad,
                soft_target_grad,
            ]
        special = np.array(SPECIAL + [-1e30, 1e30, 88.0, -87.5], dtype)
        rows = np.stack([np.roll(special, k) for k in range(len(special))])
        labels = np.arange(len(special)) % len(special)
        out[f"ce-{np.dtype(dtype).name}-special"] = [
            fastloss.cross_entropy(rows, labels, reduction="none"),
            fastloss.cross_entropy(rows, labels, return_grad=True)[1],
        ]
    return out


def _info_nce(rng: _Inputs) -> dict[str, list]:
    out = {}
    for dtype in (np.float32, np.float64):
        name = np.dtype(dtype).name
        for n, d in [(1, 1), (5, 7), (13, 17), (97, 33)]:
            q, k = rng.uniform((n, d), dtype, 2.0), rng.uniform((n, d), dtype, 2.0)
            for normalize in (False, True):
                loss, grads = fastloss.info_nce(q, k, normalize=normalize, symmetric=True, return_grad=True)
                out[f"infonce-inbatch-{name}-{n}x{d}-{normalize}"] = [
                    fastloss.info_nce(q, k, normalize=normalize, reduction="none"),
                    loss,
                    *grads,
                ]
        for n, d, m in [(13, 17, 1), (13, 17, 257), (5, 40, 600)]:
            q, k = rng.uniform((n, d), dtype), rng.uniform((n, d), dtype)
            queue = rng.uniform((m, d), dtype)
            loss, grads = fastloss.info_nce(q, k, queue, temperature=0.07, return_grad=True)
            out[f"infonce-queue-{name}-{n}x{d}x{m}"] = [
                fastloss.info_nce(q, k, queue, reduction="none"),
                loss,
                *grads,
            ]
        q, k = rng.uniform((5, 33), dtype), rng.uniform((5, 33), dtype)
        paired = rng.uniform((5, 3, 33), dtype)
        loss, grads = fastloss.info_nce(
            q, k, paired, negative_mode="paired", normalize=True, return_grad=True
        )
        out[f"infonce-paired-{name}"] = [loss, *grads]
        # Labels (SupCon positives in-batch, false negatives masked out of a queue spanning
        # several key tiles and of paired negatives) and decoupled denominators.
        q, k = rng.uniform((13, 17), dtype), rng.uniform((13, 17), dtype)
        query_labels = rng.ints(13, 4)
        for decoupled in (False, True):
            loss, grads = fastloss.info_nce(
                q, k, query_labels=query_labels, decoupled=decoupled, symmetric=True, return_grad=True
            )
            out[f"infonce-supcon-{name}-{decoupled}"] = [loss, *grads]
        queue = rng.uniform((600, 17), dtype)
        queue_labels = rng.ints(600, 4)
        for decoupled in (False, True):
            loss, grads = fastloss.info_nce(
                q,
                k,
                queue,
                query_labels=query_labels,
                key_labels=queue_labels,
                decoupled=decoupled,
                return_grad=True,
            )
            rows = fastloss.info_nce(
                q,
                k,
                queue,
                query_labels=query_labels,
                key_labels=queue_labels,
                decoupled=decoupled,
                reduction="none",
            )
            out[f"infonce-queue-masked-{name}-{decoupled}"] = [rows, loss, *grads]
        paired = rng.uniform((13, 5, 17), dtype)
        loss, grads = fastloss.info_nce(
            q,
            k,
            paired,
            negative_mode="paired",
            query_labels=query_labels,
            key_labels=rng.ints(65, 4).reshape(13, 5),
            return_grad=True,
        )
        out[f"infonce-paired-masked-{name}"] = [loss, *grads]
    return out


def _linear_cross_entropy(rng: _Inputs) -> dict[str, list]:
    """The kernel through _core: row losses, the saved log-sum-exp parts and the three gradients,
    with every option (bias, class weights, smoothing, z_loss, softcap, probability targets)."""
    out = {}
    for dtype in (np.float32, np.float64):
        name = np.dtype(dtype).name
        for n, h, v in [(1, 1, 1), (13, 17, 97), (97, 33, 300), (5, 300, 129)]:
            x, w = rng.uniform((n, h), dtype), rng.uniform((v, h), dtype, 0.5)
            bias = rng.uniform((v,), dtype)
            labels = rng.ints(n, v)
            labels[::5] = -100
            probs = rng.positive((n, v), 0.0, dtype)
            class_weight = rng.positive((v,), 0.5)
            row_grad = rng.positive((n,), 0.5)
            for label, target, options in [
                ("plain", (labels, None), (None, None, 0.0, 0.0, 0.0)),
                ("all", (labels, None), (bias, class_weight, 0.1, 1e-3, 2.5)),
                ("prob", (None, probs), (bias, class_weight, 0.2, 0.0, 30.0)),
            ]:
                b, cw, smoothing, z_loss, softcap = options
                stats = [np.empty(n), np.empty(n), np.empty(n)]
                _core.linear_cross_entropy(x, w, b, *target, cw, -100, smoothing, z_loss, softcap, *stats)
                grads = [np.empty_like(x), np.empty_like(w), None if b is None else np.empty_like(b)]
                _core.linear_cross_entropy_backward(
                    x,
                    w,
                    b,
                    *target,
                    cw,
                    -100,
                    smoothing,
                    z_loss,
                    softcap,
                    stats[1],
                    stats[2],
                    row_grad,
                    *grads,
                )
                out[f"lce-{label}-{name}-{n}x{h}x{v}"] = [*stats, *grads]
    return out


def _vecmath(rng: _Inputs) -> dict[str, list]:
    f32 = np.concatenate([rng.uniform(2003, np.float32, 128.0), np.array(SPECIAL, np.float32)])
    f64 = np.concatenate([rng.uniform(2003, np.float64, 1024.0), np.array(SPECIAL)])
    pos = np.ldexp(rng.positive(2003, 1.0), rng.ints(2003, 2000) - 1000)
    pos = np.concatenate([pos, rng.positive(1001, 0.5), np.array(SPECIAL)])
    return {
        "exp-f32": [_core.vector_exp(f32)],
        "exp-f64": [_core.vector_exp(f64)],
        "log-f64": [_core.vector_log(pos)],
    }


def battery() -> dict[str, list[np.ndarray]]:
    """Every output, on the active path, canonicalised (one NaN)."""
    rng = _Inputs(20261201)
    cases = {
        **_regression(rng),
        **_cross_entropy(rng),
        **_info_nce(rng),
        **_linear_cross_entropy(rng),
        **_vecmath(rng),
    }
    # (an absent gradient, None, e.g. d_negatives of in-batch InfoNCE, is left out)
    return {name: [_canonical(v) for v in values if v is not None] for name, values in cases.items()}


def digests(outputs: dict[str, list[np.ndarray]]) -> dict[str, str]:
    return {
        name: hashlib.sha256(b"".join(str(a.dtype).encode() + a.tobytes() for a in arrays)).hexdigest()
        for name, arrays in outputs.items()
    }


if __name__ == "__main__":
    _core.set_active_isa("scalar")
    golden = digests(battery())
    with open(sys.argv[1], "w") as f:
        json.dump(golden, f, indent=1, sort_keys=True)
    print(f"bits_battery: {len(golden)} digests of the scalar path in {sys.argv[1]}")
