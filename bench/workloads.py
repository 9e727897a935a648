"""The benchmark workloads: shapes, seeded synthetic data and float64 references.

Every workload is float32 with ``reduction="mean"``. The data is made from a seeded
``numpy.random.Generator``, so every run (and every peer in a run) sees the same numbers.
The float64 reference is computed once per workload, plainly from the formulas in SPEC.md,
from the same float32 data cast to float64; ``rel_err`` in the report is measured against it.

``quick`` shapes shrink the large workloads so that ``fastloss bench --quick`` takes seconds.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import numpy as np

__all__ = [
    "Workload",
    "WORKLOADS",
    "by_name",
    "make_data",
    "reference",
    "work",
    "size_label",
    "rel_err",
    "grad_rel_err",
]

FAMILIES = ("mse", "mae", "ce", "infonce_queue", "infonce_inbatch")


@dataclasses.dataclass(frozen=True)
class Workload:
    """One benchmark case.

    ``family`` picks the loss and the layout of the data; ``dims`` are the full-run sizes
    (``N``, ``D``/``C``, ``M``), ``quick_dims`` the ``--quick`` ones. ``grad`` asks for
    the loss and its gradient (``return_grad=True``) instead of the loss alone. ``limit`` names
    the machine limit (``limits``) the workload's rate is a fraction of: ``read``, ``copy`` or
    ``triad`` bandwidth for the memory-bound ones (their bytes, ``work``, follow the same
    pattern: inputs read, a gradient written), ``matmul`` for the dot products of InfoNCE,
    ``None`` for the small calls (in cache, bound by the fixed cost of a call).
    """

    name: str
    family: str
    dims: dict[str, int]
    quick_dims: dict[str, int]
    grad: bool = False
    temperature: float = 0.07
    data_name: str = ""  # the workload whose data this one reuses (the forward of a grad case)
    limit: str | None = None

    def sizes(self, quick: bool) -> dict[str, int]:
        return dict(self.quick_dims if quick else self.dims)

    @property
    def seed(self) -> int:
        # Stable across runs and Python versions (unlike hash()).
        return zlib.crc32((self.data_name or self.name).encode())


def _w(name, family, dims, quick_dims=None, **kw):
    return Workload(name, family, dict(dims), dict(quick_dims or dims), **kw)


_MSE_LARGE = dict(N=16384, D=1024)
_MSE_LARGE_QUICK = dict(N=2048, D=512)
_CE_LARGE = dict(N=65536, C=1000)
_CE_LARGE_QUICK = dict(N=4096, C=250)
_MOCO = dict(N=256, D=128, M=65536)
_MOCO_QUICK = dict(N=256, D=128, M=4096)

#: Every workload, in report order. The ``*_grad`` cases (loss and gradient) run when the
#: installed fastloss supports ``return_grad``.
WORKLOADS: tuple[Workload, ...] = (
    _w("mse_small", "mse", dict(N=256, D=16)),
    _w("mse_large", "mse", _MSE_LARGE, _MSE_LARGE_QUICK, limit="read"),
    _w("mae_large", "mae", _MSE_LARGE, _MSE_LARGE_QUICK, limit="read"),
    _w("ce_small", "ce", dict(N=64, C=10)),
    _w("ce_large", "ce", _CE_LARGE, _CE_LARGE_QUICK, limit="read"),
    _w("infonce_moco", "infonce_queue", _MOCO, _MOCO_QUICK, limit="matmul"),
    _w("infonce_inbatch", "infonce_inbatch", dict(N=4096, D=256), dict(N=512, D=128), limit="matmul"),
    _w(
        "mse_large_grad", "mse", _MSE_LARGE, _MSE_LARGE_QUICK, grad=True, data_name="mse_large", limit="triad"
    ),
    _w("ce_large_grad", "ce", _CE_LARGE, _CE_LARGE_QUICK, grad=True, data_name="ce_large", limit="copy"),
    _w(
        "infonce_moco_grad",
        "infonce_queue",
        _MOCO,
        _MOCO_QUICK,
        grad=True,
        data_name="infonce_moco",
        limit="matmul",
    ),
)


def by_name(name: str) -> Workload:
    for w in WORKLOADS:
        if w.name == name:
            return w
    raise KeyError(f"unknown workload {name!r}; known: {', '.join(w.name for w in WORKLOADS)}")


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalised rows, as MoCo/SimCLR/CLIP feed their features to InfoNCE."""
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_data(w: Workload, quick: bool = False, dims: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """The workload's float32 inputs (C-contiguous), from a generator seeded by its name.

    Arrays are drawn directly in float32 so that no float64 temporary inflates the process's
    memory high-water mark (``memory`` measures against it).
    """
    d = dims if dims is not None else w.sizes(quick)
    rng = np.random.default_rng(w.seed)
    f32 = np.float32
    if w.family in ("mse", "mae"):
        pred = rng.standard_normal((d["N"], d["D"]), dtype=f32)
        target = rng.standard_normal((d["N"], d["D"]), dtype=f32)
        return {"pred": pred, "target": target}
    if w.family == "ce":
        logits = rng.standard_normal((d["N"], d["C"]), dtype=f32)
        logits *= f32(3.0)
        target = rng.integers(0, d["C"], size=d["N"], dtype=np.int64)
        return {"logits": logits, "target": target}
    if w.family in ("infonce_queue", "infonce_inbatch"):
        n, dim = d["N"], d["D"]
        query = _unit_rows(rng.standard_normal((n, dim), dtype=f32))
        # Positives correlated with their queries, so the loss is that of a half-trained model.
        noise = rng.standard_normal((n, dim), dtype=f32)
        noise *= f32(0.7)
        noise += query
        positive = _unit_rows(noise)
        out = {"query": query, "positive": positive}
        if w.family == "infonce_queue":
            out["negatives"] = _unit_rows(rng.standard_normal((d["M"], dim), dtype=f32))
        return out
    raise ValueError(f"unknown workload family {w.family!r}")


def size_label(w: Workload, data: dict[str, np.ndarray]) -> str:
    """A short description of the inputs, e.g. ``q 256x128 + pos 256x128 + queue 65536x128``."""

    def s(a):
        return "x".join(str(n) for n in a.shape)

    if w.family in ("mse", "mae"):
        text = f"pred, target {s(data['pred'])}"
    elif w.family == "ce":
        text = f"logits {s(data['logits'])}, int64 labels"
    elif w.family == "infonce_queue":
        text = (
            f"q {s(data['query'])} + pos {s(data['positive'])} + queue "
            f"{s(data['negatives'])}, tau {w.temperature:g}"
        )
    else:
        text = f"q, k {s(data['query'])} in-batch, tau {w.temperature:g}"
    return text + (", loss+grad" if w.grad else "")


def work(w: Workload, data: dict[str, np.ndarray]) -> dict[str, float]:
    """Bytes the inputs take (and outputs write, for gradients) and floating point operations
    of the dot products, for the throughput column (GB/s or GFLOP/s)."""
    nbytes = float(sum(a.nbytes for a in data.values()))
    flops = 0.0
    if w.family == "infonce_queue":
        n, dim = data["query"].shape
        m = data["negatives"].shape[0]
        flops = 2.0 * n * (m + 1) * dim * (3 if w.grad else 1)
    elif w.family == "infonce_inbatch":
        n, dim = data["query"].shape
        flops = 2.0 * n * n * dim * (3 if w.grad else 1)
    elif w.grad:
        first = data["pred"] if w.family in ("mse", "mae") else data["logits"]
        nbytes += first.nbytes  # the gradient is written
    return {"bytes": nbytes, "flops": flops}


# --- float64 references, written from the formulas -------------------------------------------


def _log_softmax64(logits: np.ndarray) -> np.ndarray:
    m = logits.max(axis=1, keepdims=True)
    z = logits - m
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def reference(w: Workload, data: dict[str, np.ndarray]) -> tuple[float, tuple | None]:
    """``(loss, grads)`` in float64; ``grads`` is ``None`` unless ``w.grad``.

    ``grads`` is a tuple with one array per differentiated input: ``(d_pred,)``,
    ``(d_logits,)``, ``(d_query, d_positive[, d_negatives])``.
    """
    if w.family in ("mse", "mae"):
        d = data["pred"].astype(np.float64) - data["target"].astype(np.float64)
        n = d.size
        if w.family == "mse":
            loss = float(np.dot(d.ravel(), d.ravel()) / n)
            grads = (2.0 * d / n,) if w.grad else None
        else:
            loss = float(np.abs(d).sum() / n)
            grads = (np.sign(d) / n,) if w.grad else None
        return loss, grads
    if w.family == "ce":
        logits = data["logits"].astype(np.float64)
        y = data["target"]
        n = logits.shape[0]
        logp = _log_softmax64(logits)
        rows = np.arange(n)
        loss = float(-logp[rows, y].sum() / n)
        grads = None
        if w.grad:
            g = np.exp(logp)
            g[rows, y] -= 1.0
            g /= n
            grads = (g,)
        return loss, grads
    if w.family in ("infonce_queue", "infonce_inbatch"):
        tau = w.temperature
        q = data["query"].astype(np.float64)
        k = data["positive"].astype(np.float64)
        n = q.shape[0]
        if w.family == "infonce_queue":
            neg = data["negatives"].astype(np.float64)
            logits = np.concatenate([np.sum(q * k, axis=1, keepdims=True), q @ neg.T], axis=1)
            logits /= tau
            label = np.zeros(n, dtype=np.int64)
        else:
            neg = None
            logits = (q @ k.T) / tau
            label = np.arange(n)
        logp = _log_softmax64(logits)
        loss = float(-logp[np.arange(n), label].sum() / n)
        grads = None
        if w.grad:
            g = np.exp(logp)
            g[np.arange(n), label] -= 1.0
            g /= n * tau
            if neg is None:
                grads = (g @ k, g.T @ q)
            else:
                grads = (g[:, :1] * k + g[:, 1:] @ neg, g[:, :1] * q, g[:, 1:].T @ q)
        return loss, grads
    raise ValueError(f"unknown workload family {w.family!r}")


def rel_err(value: Any, ref: float) -> float:
    """``|value - ref| / |ref|`` (absolute error when ``ref == 0``); ``nan`` if not a number."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return float("nan")
    scale = abs(ref) if ref != 0 else 1.0
    return abs(v - ref) / scale


def grad_rel_err(grads: Any, ref_grads: tuple | None) -> float:
    """The worst, over the gradient arrays, of ``||g - g64||_2 / ||g64||_2``."""
    if ref_grads is None or grads is None:
        return float("nan")
    if not isinstance(grads, (tuple, list)):
        grads = (grads,)
    worst = 0.0
    for g, r in zip(grads, ref_grads, strict=False):
        if g is None:
            return float("nan")
        g = np.asarray(g, dtype=np.float64)
        if g.shape != r.shape:
            return float("nan")
        denom = float(np.linalg.norm(r.ravel())) or 1.0
        worst = max(worst, float(np.linalg.norm((g - r).ravel())) / denom)
    return worst
