"""The benchmark workloads: shapes, seeded synthetic data and float64 references.

Every workload is float32 with ``reduction="mean"``. The data is made from a seeded
``numpy.random.Generator``, so every run (and every peer in a run) sees the same numbers.
The float64 reference is computed once per workload, plainly from the formulas in SPEC.md,
from the same float32 data cast to float64; ``rel_err`` in the report is measured against it.

``quick`` shapes shrink the large workloads so that ``fastloss bench --quick`` takes seconds.

``lce`` and ``lce_grad`` (``linear_cross_entropy``: the logits ``input @ linear_weight.T`` are
never materialised by fastloss) are too large for a plain float64 reference at their full shape
(4096 x 32768 logits: 1 GiB in float64). Their loss is computed in float64 over every row, in
blocks of classes with an online log-sum-exp; their gradients are checked on a fixed subset of
rows (``Rows``): at most ``LCE_CHECK_ROWS`` rows of ``d_input`` and ``LCE_CHECK_CLASSES`` rows
of ``d_linear_weight`` (the targets of the checked input rows among them), all rows at the
``--quick`` shapes.
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
    "Rows",
    "LCE_CHECK_ROWS",
    "LCE_CHECK_CLASSES",
]

FAMILIES = ("mse", "mae", "ce", "infonce_queue", "infonce_inbatch", "lce")


@dataclasses.dataclass(frozen=True)
class Workload:
    """One benchmark case.

    ``family`` picks the loss and the layout of the data; ``dims`` are the full-run sizes
    (``N``, ``D``/``C``, ``M``), ``quick_dims`` the ``--quick`` ones. ``grad`` asks for
    the loss and its gradient (``return_grad=True``) instead of the loss alone. ``limit`` names
    the machine limit (``limits``) the workload's rate is a fraction of: ``read``, ``copy`` or
    ``triad`` bandwidth for the memory-bound ones (their bytes, ``work``, follow the same
    pattern: inputs read, a gradient written), ``matmul`` for the dot products of InfoNCE and
    ``linear_cross_entropy``, ``None`` for the small calls (in cache, bound by the fixed cost of a call).
    """

    name: str
    family: str
    dims: dict[str, int]
    quick_dims: dict[str, int]
    grad: bool = False
    temperature: float = 0.07
    data_name: str = ""  # the workload whose data this one reuses (the forward of a grad case)
    limit: str | None = None
    # InfoNCE with labels: random classes of the queries and the queue's keys; a negative of its
    # query's class is a false negative, masked out of the softmax (0: no labels).
    classes: int = 0

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
# linear_cross_entropy: N tokens, H hidden features, V classes (issue 12's measurement).
_LCE = dict(N=4096, H=1024, V=32768)
_LCE_QUICK = dict(N=256, H=128, V=2048)

#: Every workload, in report order. The ``*_grad`` cases (loss and gradient) run when the
#: installed fastloss supports ``return_grad``.
WORKLOADS: tuple[Workload, ...] = (
    _w("mse_small", "mse", dict(N=256, D=16)),
    _w("mse_large", "mse", _MSE_LARGE, _MSE_LARGE_QUICK, limit="read"),
    _w("mae_large", "mae", _MSE_LARGE, _MSE_LARGE_QUICK, limit="read"),
    _w("ce_small", "ce", dict(N=64, C=10)),
    _w("ce_large", "ce", _CE_LARGE, _CE_LARGE_QUICK, limit="read"),
    _w("infonce_moco", "infonce_queue", _MOCO, _MOCO_QUICK, limit="matmul"),
    # infonce_moco's shapes with 1000 classes: false-negative elimination, target <= 10% slower.
    _w("infonce_moco_masked", "infonce_queue", _MOCO, _MOCO_QUICK, limit="matmul", classes=1000),
    _w("infonce_inbatch", "infonce_inbatch", dict(N=4096, D=256), dict(N=512, D=128), limit="matmul"),
    _w("lce", "lce", _LCE, _LCE_QUICK, limit="matmul"),
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
    _w("lce_grad", "lce", _LCE, _LCE_QUICK, grad=True, data_name="lce", limit="matmul"),
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
            if w.classes:
                out["query_labels"] = rng.integers(0, w.classes, size=n, dtype=np.int64)
                out["key_labels"] = rng.integers(0, w.classes, size=d["M"], dtype=np.int64)
        return out
    if w.family == "lce":
        n, h, v = d["N"], d["H"], d["V"]
        x = rng.standard_normal((n, h), dtype=f32)
        weight = rng.standard_normal((v, h), dtype=f32)
        weight *= f32(2.0 / np.sqrt(h))  # logits of standard deviation about 2
        target = rng.integers(0, v, size=n, dtype=np.int64)
        return {"input": x, "linear_weight": weight, "target": target}
    raise ValueError(f"unknown workload family {w.family!r}")


def size_label(w: Workload, data: dict[str, np.ndarray]) -> str:
    """A short description of the inputs, e.g. ``q 256x128 + pos 256x128 + queue 65536x128``."""

    def s(a):
        return "x".join(str(n) for n in a.shape)

    if w.family in ("mse", "mae"):
        text = f"pred, target {s(data['pred'])}"
    elif w.family == "ce":
        text = f"logits {s(data['logits'])}, int64 labels"
    elif w.family == "lce":
        text = f"input {s(data['input'])} @ linear_weight {s(data['linear_weight'])}.T, int64 labels"
        if w.grad and _lce_checked(data)[2]:
            return text + ", loss+grad (grads checked on a subset of rows)"
    elif w.family == "infonce_queue":
        text = (
            f"q {s(data['query'])} + pos {s(data['positive'])} + queue "
            f"{s(data['negatives'])}, tau {w.temperature:g}"
        )
        if w.classes:
            text += f", {w.classes} classes (false negatives masked)"

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
    elif w.family == "lce":
        # The products a user would count: the logits (forward), d_input = P W and
        # d_linear_weight = P^T X (with the gradient), as infonce_moco_grad counts its three;
        # fastloss recomputes the logits in its backward pass, a fourth one not counted.
        n, h = data["input"].shape
        v = data["linear_weight"].shape[0]
        flops = 2.0 * n * h * v * (3 if w.grad else 1)
    elif w.grad:
        first = data["pred"] if w.family in ("mse", "mae") else data["logits"]
        nbytes += first.nbytes  # the gradient is written
    return {"bytes": nbytes, "flops": flops}


# --- float64 references, written from the formulas -------------------------------------------

#: The most rows of ``d_input`` and of ``d_linear_weight`` the ``lce_grad`` reference computes.
LCE_CHECK_ROWS = 512
LCE_CHECK_CLASSES = 2048
# float64 elements of one block of logits in the lce reference (32 MiB).
_LCE_BLOCK_ELEMS = 1 << 22


@dataclasses.dataclass(frozen=True)
class Rows:
    """The float64 reference of some rows (``index``, sorted) of a gradient of ``shape``."""

    index: np.ndarray
    values: np.ndarray
    shape: tuple[int, ...]


def _spread(n: int, k: int) -> np.ndarray:
    """At most ``k`` indices spread evenly over ``range(n)``, first and last included."""
    return np.unique(np.linspace(0, n - 1, num=min(n, k)).astype(np.int64))


def _lce_checked(data: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, bool]:
    """(rows of d_input, rows of d_linear_weight) the lce_grad reference computes, and whether
    that is a subset. The classes are the targets of the checked rows (so the ``- 1`` of the
    target's softmax is checked) and classes spread over the rest."""
    n = data["input"].shape[0]
    v = data["linear_weight"].shape[0]
    rows = _spread(n, LCE_CHECK_ROWS)
    if v <= LCE_CHECK_CLASSES:
        classes = np.arange(v)
    else:
        targets = np.unique(data["target"][rows])[: LCE_CHECK_CLASSES // 2]
        classes = np.union1d(targets, _spread(v, LCE_CHECK_CLASSES - targets.size))
    return rows, classes, rows.size < n or classes.size < v


def _lce_block(n_rows: int) -> int:
    return max(1, _LCE_BLOCK_ELEMS // max(1, n_rows))


def _lce_reference(grad: bool, data: dict[str, np.ndarray]) -> tuple[float, tuple | None]:
    """``mean_n(logsumexp_v(x_n . w_v) - x_n . w_{t_n})`` in float64, over blocks of classes
    (no N x V array); with ``grad``, ``d_input = (P - Y) W / N`` and ``d_linear_weight =
    (P - Y)^T X / N`` (P the softmax, Y the one-hot targets) on the rows ``_lce_checked``
    picks."""
    x = data["input"].astype(np.float64)
    w32 = data["linear_weight"]
    t = data["target"]
    n, v = x.shape[0], w32.shape[0]
    kb = _lce_block(n)
    run_m = np.full(n, -np.inf)
    run_s = np.zeros(n)
    for j in range(0, v, kb):
        logits = x @ w32[j : j + kb].astype(np.float64).T
        new_m = np.maximum(run_m, logits.max(axis=1))
        run_s *= np.exp(run_m - new_m)
        logits -= new_m[:, None]
        run_s += np.exp(logits).sum(axis=1)
        run_m = new_m
    lse = np.log(run_s) + run_m
    target_logit = np.einsum("ij,ij->i", x, w32[t].astype(np.float64))
    loss = float(np.mean(lse - target_logit))
    if not grad:
        return loss, None
    rows, classes, subset = _lce_checked(data)
    # d_input on the checked rows: their softmax over every class, block by block.
    dx = np.zeros((rows.size, x.shape[1]))
    rb = _lce_block(rows.size)
    for j in range(0, v, rb):
        wb = w32[j : j + rb].astype(np.float64)
        dx += np.exp(x[rows] @ wb.T - lse[rows, None]) @ wb
    dx -= w32[t[rows]].astype(np.float64)
    dx /= n
    # d_linear_weight on the checked classes: every row's softmax of them.
    dw = np.empty((classes.size, x.shape[1]))
    for j in range(0, classes.size, kb):
        cb = classes[j : j + kb]
        dw[j : j + kb] = np.exp(x @ w32[cb].astype(np.float64).T - lse[:, None]).T @ x
    hit = np.isin(t, classes)
    np.subtract.at(dw, np.searchsorted(classes, t[hit]), x[hit])
    dw /= n
    if not subset:
        return loss, (dx, dw)
    return loss, (Rows(rows, dx, (n, x.shape[1])), Rows(classes, dw, w32.shape))


def _log_softmax64(logits: np.ndarray) -> np.ndarray:
    m = logits.max(axis=1, keepdims=True)
    z = logits - m
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def reference(w: Workload, data: dict[str, np.ndarray]) -> tuple[float, tuple | None]:
    """``(loss, grads)`` in float64; ``grads`` is ``None`` unless ``w.grad``.

    ``grads`` is a tuple with one array per differentiated input: ``(d_pred,)``,
    ``(d_logits,)``, ``(d_query, d_positive[, d_negatives])``, ``(d_input, d_linear_weight)``
    (the last two as ``Rows`` of them at the full lce shapes: ``_lce_reference``).
    """
    if w.family == "lce":
        return _lce_reference(w.grad, data)
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
            if "query_labels" in data:
                # a negative of its query's class leaves the softmax
                logits[:, 1:][data["query_labels"][:, None] == data["key_labels"][None, :]] = -np.inf
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
    """The worst, over the gradient arrays, of ``||g - g64||_2 / ||g64||_2``; over the reference's
    rows only where it holds some (``Rows``)."""
    if ref_grads is None or grads is None:
        return float("nan")
    if not isinstance(grads, (tuple, list)):
        grads = (grads,)
    worst = 0.0
    for g, r in zip(grads, ref_grads, strict=False):
        if g is None:
            return float("nan")
        g = np.asarray(g)
        if g.shape != r.shape:
            return float("nan")
        if isinstance(r, Rows):
            g, r = g[r.index], r.values
        g = g.astype(np.float64)
        denom = float(np.linalg.norm(r.ravel())) or 1.0
        worst = max(worst, float(np.linalg.norm((g - r).ravel())) / denom)
    return worst
