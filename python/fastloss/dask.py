"""fastloss over dask arrays (extra ``fastloss[dask]``): the losses chunked by rows.

``fastloss.dask.mse``, ``mae``, ``cross_entropy``, ``info_nce`` and ``linear_cross_entropy``
take the arguments of the
NumPy functions (no ``return_grad``) as dask arrays chunked by rows in any way, or NumPy
arrays. Chunks along the other axes are merged into one, and every per-row argument is
rechunked to the row chunks of the first one, so unaligned arguments are fine.

The result is lazy, as every ``dask.array`` function's is:

- a reduction (``"sum"``, ``"mean"``, ``"batchmean"``) is a 0-d float64 dask array;
  ``.compute()`` (or ``dask.compute``, or ``float(...)``) gives the number;
- ``"none"`` is a dask array of the element or row losses, chunked by the same rows.

Each row block is reduced to its loss's partial state (exact sums, see
``fastloss._reduction``), sent between tasks as a few hundred bytes, and the states are merged
by ``dask.array.reduction``'s tree; merging is exact, so the result has the same bits as the
in-memory call on the whole arrays, whatever the chunking, the scheduler or the cluster size.
Values are checked where the rows are (a bad weight raises ``ValueError`` at compute time);
shapes, dtypes and options are checked at once.

``info_nce``'s shared queue (``negative_mode="unpaired"``) and ``linear_cross_entropy``'s
classifier (``linear_weight``, ``linear_bias``) each become one key of the graph, sent once to
each worker that needs it, not once per task. In-batch negatives (no
``negative_keys``) pair every row with every other row, which rows of different chunks never
meet: they need a single row chunk (``ValueError`` otherwise).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Any, Literal

import dask.array as da
import numpy as np
from dask.base import tokenize

from . import _losses
from ._reduction import ExactSum, Partial
from ._validation import (
    check_choice,
    check_flag,
    check_int,
    check_label_smoothing,
    check_reduction,
    check_temperature,
)

__all__ = ["cross_entropy", "info_nce", "linear_cross_entropy", "mae", "mse"]

# dask's functions are untyped: typed names for the ones used here (mypy strict).
_blockwise: Callable[..., da.Array] = da.blockwise
_from_array: Callable[..., da.Array] = da.from_array
_rechunk: Callable[..., da.Array] = da.rechunk
_reduction: Callable[..., da.Array] = da.reduction
_reshape: Callable[..., da.Array] = da.reshape

Reduction = Literal["none", "sum", "mean", "batchmean"]
_HEADER = struct.Struct("<qIII")
_LETTERS = "abcdefghjk"


# -- partial states as bytes ----------------------------------------------------------------


def _pack(partial: Partial) -> bytes:
    states = (
        partial.total.to_bytes(),
        partial.mean_denominator.to_bytes(),
        partial.batch_denominator.to_bytes(),
    )
    return _HEADER.pack(partial.mean_scale, *map(len, states)) + b"".join(states)


def _unpack(data: bytes) -> Partial:
    scale, *sizes = _HEADER.unpack_from(data)
    sums, offset = [], _HEADER.size
    for size in sizes:
        sums.append(ExactSum.from_bytes(data[offset : offset + size]))
        offset += size
    return Partial(sums[0], sums[1], sums[2], scale)


def _one(value: bytes) -> np.ndarray:
    cell = np.empty(1, dtype=object)
    cell[0] = value
    return cell


def _merge_cells(cells: np.ndarray) -> Partial:
    partials = [_unpack(value) for value in np.asarray(cells, dtype=object).ravel()]
    merged = partials[0]
    for other in partials[1:]:
        merged = merged.merge(other)
    return merged


def _combine(cells: np.ndarray, axis: Any = None, keepdims: bool = True) -> np.ndarray:
    return _one(_pack(_merge_cells(cells)))


def _aggregate(reduction: str) -> Callable[..., np.float64]:
    def aggregate(cells: np.ndarray, axis: Any = None, keepdims: bool = False) -> np.float64:
        return np.float64(_merge_cells(cells).result(reduction))  # type: ignore[arg-type]

    return aggregate


def _reduce(states: da.Array, reduction: str) -> da.Array:
    """The tree reduction of a 1-d object array of packed partials into the 0-d result."""
    return _reduction(
        states,
        chunk=_combine,
        combine=_combine,
        aggregate=_aggregate(reduction),
        axis=0,
        keepdims=False,
        dtype=np.float64,
        concatenate=True,
        meta=np.array(0.0),
        name="fastloss-" + reduction,
    )


# -- arguments ------------------------------------------------------------------------------


def _as_dask(value: Any, name: str) -> da.Array:
    if isinstance(value, da.Array):
        _known_rows(value, name)
        return value
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{name}: cannot be converted to an array ({error})") from None
    if array.dtype == object:
        raise TypeError(f"{name}: dtype object is not supported; expected a numeric array")
    return _from_array(array, chunks=array.shape or ())


def _known_rows(array: da.Array, name: str) -> None:
    if any(math.isnan(c) for axis in array.chunks for c in axis):
        raise ValueError(
            f"{name}: its chunk sizes are unknown (nan); call .compute_chunk_sizes() on it first"
        )


def _by_rows(array: da.Array, rows: tuple[int, ...] | None) -> da.Array:
    """The array with one chunk along every axis but the first, and the given row chunks."""
    if array.ndim == 0:
        return array
    spec: dict[int, Any] = {axis: -1 for axis in range(1, array.ndim)}
    if rows is not None:
        spec[0] = rows
    return _rechunk(array, spec)  # a no-op where the chunks are already these


def _meta(array: da.Array) -> np.ndarray:
    """A zero-row NumPy array of the argument's dtype and other dimensions (for checks up front)."""
    return np.empty((0,) + tuple(array.shape[1:]), dtype=array.dtype)


def _per_block(
    function: Callable[..., Any],
    out_index: str | None,
    dtype: Any,
    name: str,
    options: Any,
    *args: Any,
) -> da.Array:
    """``function(*blocks)`` over aligned row blocks of the (array, index) pairs in ``args``
    (``dask.array.blockwise``; an index without "i" makes its one block go to every task).
    ``out_index`` None: one packed partial per row block, a 1-d object array of them; else the
    blocks' losses, with that index. ``options``: what else ``function`` depends on (in the keys'
    token, so that calls with different options never share a key)."""
    token = tokenize(function.__name__, options, *args)
    if out_index is None:

        def packed(*blocks: Any) -> np.ndarray:
            return _one(_pack(function(*blocks)))

        return _blockwise(
            packed,
            "i",
            *args,
            adjust_chunks={"i": 1},
            dtype=object,
            meta=np.empty(0, dtype=object),
            concatenate=True,
            name=f"fastloss-{name}-partial-{token}",
        )
    return _blockwise(
        function,
        out_index,
        *args,
        dtype=dtype,
        meta=np.empty((0,) * len(out_index), dtype=dtype),
        concatenate=True,
        name=f"fastloss-{name}-none-{token}",
    )


def _rows_of(array: da.Array) -> int:
    return int(array.shape[0])


def _same_rows(first: da.Array, first_name: str, other: da.Array, name: str) -> None:
    if other.ndim == 0 or _rows_of(other) != _rows_of(first):
        raise ValueError(
            f"{name}: expected {_rows_of(first)} rows (those of {first_name}); got shape {other.shape}"
        )


# -- regression -----------------------------------------------------------------------------


def _regression(kind: int, pred: Any, target: Any, reduction: Any, sample_weight: Any) -> da.Array:
    reduction = check_reduction(reduction)
    p, t = _as_dask(pred, "pred"), _as_dask(target, "target")
    if p.shape != t.shape:
        raise ValueError(
            f"pred and target must have the same shape (no broadcasting); got pred {p.shape} "
            f"and target {t.shape}"
        )
    if p.ndim == 0:
        raise ValueError("pred and target must have at least 1 dimension; got 0-d arrays")
    w = None if sample_weight is None else _as_dask(sample_weight, "sample_weight")
    if w is not None and w.shape != (p.shape[0],):
        raise ValueError(
            f"sample_weight: expected shape ({p.shape[0]},) (one weight per row of pred); got {w.shape}"
        )
    # dtypes and options now, on zero rows (values are checked where the rows are).
    meta = _losses.regression_partial(
        kind, _meta(p), _meta(t), None if w is None else _meta(w), "none", False
    )
    p = _by_rows(p, None)
    rows = p.chunks[0]
    t = _by_rows(t, rows)
    w = None if w is None else _by_rows(w, rows)
    name = ("mse", "mae")[kind]
    index = "i" + _LETTERS[: p.ndim - 1]
    args: list[Any] = [p, index, t, index] + ([] if w is None else [w, "i"])
    if reduction == "none":
        loss = _losses.mse if kind == 0 else _losses.mae

        def element_losses(pb: np.ndarray, tb: np.ndarray, wb: np.ndarray | None = None) -> np.ndarray:
            return loss(pb, tb, reduction="none", sample_weight=wb)

        assert meta[1] is not None
        return _per_block(element_losses, index, meta[1].dtype, name, kind, *args)

    def partial(pb: np.ndarray, tb: np.ndarray, wb: np.ndarray | None = None) -> Partial:
        return _losses.regression_partial(kind, pb, tb, wb, "sum", False)[0]

    return _reduce(_per_block(partial, None, object, name, kind, *args), reduction)


def mse(pred: Any, target: Any, *, reduction: Reduction = "mean", sample_weight: Any = None) -> da.Array:
    """:func:`fastloss.mse` over dask arrays chunked by rows: a 0-d dask array for a reduction
    (``.compute()`` gives the in-memory call's float, bit for bit), a lazy dask array of the
    element losses for ``"none"``. ``sample_weight``: ``(N,)``, chunked in any way."""
    return _regression(0, pred, target, reduction, sample_weight)


def mae(pred: Any, target: Any, *, reduction: Reduction = "mean", sample_weight: Any = None) -> da.Array:
    """:func:`fastloss.mae` over dask arrays chunked by rows (see :func:`mse`)."""
    return _regression(1, pred, target, reduction, sample_weight)


# -- cross-entropy --------------------------------------------------------------------------


def _small_array(value: Any) -> Any:
    """A per-class option (small) as a NumPy array, computed if it is a dask array."""
    if value is None:
        return None
    if isinstance(value, da.Array):
        return np.asarray(value)  # computes it
    return value


def cross_entropy(
    logits: Any,
    target: Any,
    *,
    reduction: Reduction = "mean",
    weight: Any = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> da.Array:
    """:func:`fastloss.cross_entropy` over dask arrays chunked by rows: ``logits`` ``(N, C)`` (or
    ``(C,)``, or K-dimensional ``(N, C, d1, ..., dK)``), ``target`` ``(N,)`` (``(N, d1, ..., dK)``)
    class indices or probabilities of the logits' shape, chunked in any way along N (the other
    axes are gathered into one chunk); ``weight`` ``(C,)`` class weights (a NumPy array, or a
    dask array computed once here). A 0-d dask array for a reduction, a lazy dask array of the
    target's shape (0-d for ``(C,)`` logits) for ``"none"``."""
    reduction = check_reduction(reduction)
    ignore = check_int(ignore_index, "ignore_index")
    smoothing = check_label_smoothing(label_smoothing)
    class_weight = _small_array(weight)
    x, y = _as_dask(logits, "logits"), _as_dask(target, "target")
    if x.ndim == 0:
        raise ValueError("logits must have shape (N, C), (C,) or (N, C, d1, ..., dK); got a 0-d array")
    single = x.ndim == 1
    if single:
        # One sample: its row of one.
        if y.shape not in ((), x.shape):
            raise ValueError(f"target: expected a class index () or probabilities {x.shape}; got {y.shape}")
        x, y = _reshape(x, (1,) + x.shape), _reshape(y, (1,) + y.shape)
    elif y.ndim == 0 or _rows_of(y) != _rows_of(x):
        raise ValueError(f"target: expected {_rows_of(x)} rows (those of logits); got shape {y.shape}")
    meta = _losses.cross_entropy_partial(_meta(x), _meta(y), class_weight, ignore, smoothing, "none", False)
    x = _by_rows(x, None)
    y = _by_rows(y, x.chunks[0])
    # Indices: "i" rows, "c" classes, then the K spatial axes.
    spatial = _LETTERS[: x.ndim - 2].replace("c", "l")
    index_target = "i" + spatial
    args = [x, "ic" + spatial, y, index_target if y.ndim != x.ndim else "ic" + spatial]
    ce_options = (class_weight, ignore, smoothing)

    def partial(xb: np.ndarray, yb: np.ndarray) -> Partial:
        return _losses.cross_entropy_partial(xb, yb, class_weight, ignore, smoothing, "sum", False)[0]

    if reduction != "none":
        return _reduce(_per_block(partial, None, object, "cross_entropy", ce_options, *args), reduction)

    def row_losses(xb: np.ndarray, yb: np.ndarray) -> np.ndarray:
        out = _losses.cross_entropy_partial(xb, yb, class_weight, ignore, smoothing, "none", False)[1]
        assert out is not None
        return out

    assert meta[1] is not None
    losses = _per_block(row_losses, index_target, meta[1].dtype, "cross_entropy", ce_options, *args)
    return _reshape(losses, ()) if single else losses


# -- InfoNCE --------------------------------------------------------------------------------


def _one_key(value: Any, name: str, key: str) -> da.Array:
    """An array every task reads (a queue, a classifier) as one graph key (one block), whatever it
    was given as; a NumPy array's key is named ``fastloss-<key>-<token>``."""
    if isinstance(value, da.Array):
        _known_rows(value, name)
        return _rechunk(value, -1) if value.npartitions != 1 else value
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{name}: cannot be converted to an array ({error})") from None
    return _from_array(array, chunks=-1, name=f"fastloss-{key}-" + tokenize(array))


def _queue(value: Any) -> da.Array:
    """The shared queue as one graph key (one block), whatever it was given as."""
    return _one_key(value, "negative_keys", "queue")


def info_nce(
    query: Any,
    positive_key: Any,
    negative_keys: Any = None,
    *,
    temperature: float = 0.07,
    reduction: Reduction = "mean",
    negative_mode: Literal["unpaired", "paired"] = "unpaired",
    normalize: bool = False,
    symmetric: bool = False,
    query_labels: Any = None,
    key_labels: Any = None,
    decoupled: bool = False,
) -> da.Array:
    """:func:`fastloss.info_nce` over dask arrays chunked by rows: ``query`` and ``positive_key``
    ``(N, D)``; ``negative_keys`` an ``(M, D)`` queue (``"unpaired"``: a NumPy or dask array, sent
    to the workers once as one graph key), ``(N, M, D)`` per-query negatives chunked by rows
    (``"paired"``), or None for in-batch negatives, which need ``query`` in one row chunk. A 0-d
    dask array for a reduction, a lazy ``(N,)`` dask array for ``"none"``. ``query_labels``
    ``(N,)`` are chunked with the rows; ``key_labels`` go with their keys: a queue's ``(M,)`` as
    one graph key, paired ``(N, M)`` by rows, in-batch ``(N,)`` with the rows."""
    reduction = check_reduction(reduction)
    mode = check_choice(negative_mode, "negative_mode", _losses.NEGATIVE_MODES)
    tau = check_temperature(temperature)
    norm = check_flag(normalize, "normalize")
    sym = check_flag(symmetric, "symmetric")
    q, k = _as_dask(query, "query"), _as_dask(positive_key, "positive_key")
    for array, name in ((q, "query"), (k, "positive_key")):
        if array.ndim != 2:
            raise ValueError(f"{name} must have shape (N, D); got {array.shape}")
    if k.shape != q.shape:
        raise ValueError(
            f"query and positive_key must have the same shape (N, D); got query {q.shape} "
            f"and positive_key {k.shape}"
        )
    negatives: da.Array | None = None
    paired = False
    if negative_keys is not None:
        paired = mode == "paired"
        negatives = _as_dask(negative_keys, "negative_keys") if paired else _queue(negative_keys)
        if paired and (
            negatives.ndim != 3 or negatives.shape[0] != q.shape[0] or negatives.shape[2] != q.shape[1]
        ):
            raise ValueError(
                f"negative_keys must have shape ({q.shape[0]}, M, {q.shape[1]}) with negative_mode='paired'; "
                f"got {negatives.shape}"
            )
    options: dict[str, Any] = {
        "temperature": tau,
        "negative_mode": mode,
        "normalize": norm,
        "symmetric": sym,
        "decoupled": check_flag(decoupled, "decoupled"),
    }
    meta_negatives = (
        None
        if negatives is None
        else (_meta(negatives) if paired else np.empty(negatives.shape, negatives.dtype))
    )
    labels: list[da.Array | None] = [None, None]
    shared_key_labels = negatives is not None and not paired  # a queue's: one graph key
    if query_labels is not None or key_labels is not None:
        if query_labels is not None and key_labels is None and negatives is None:
            key_labels = query_labels  # in-batch: the two views share their labels
        for index, (value, name) in enumerate(((query_labels, "query_labels"), (key_labels, "key_labels"))):
            if value is not None:
                shared = index == 1 and shared_key_labels
                labels[index] = _one_key(value, name, "labels") if shared else _as_dask(value, name)
    # Every label check (dtype, shapes) on zero rows of the same arrays.
    meta_labels = [
        None
        if array is None
        else (np.empty(array.shape, array.dtype) if index == 1 and shared_key_labels else _meta(array))
        for index, array in enumerate(labels)
    ]
    meta = _losses.InfoNceProblem(
        _meta(q), _meta(k), meta_negatives, query_labels=meta_labels[0], key_labels=meta_labels[1], **options
    )
    q = _by_rows(q, None)
    if negatives is None and q.numblocks[0] > 1:
        raise ValueError(
            f"query: in-batch negatives (negative_keys=None) pair every row with every other row, "
            f"which rows of different chunks never meet; rechunk query to one row chunk (it has "
            f"{q.numblocks[0]}) or pass negative_keys"
        )
    rows = q.chunks[0]
    k = _by_rows(k, rows)
    if paired:
        assert negatives is not None
        negatives = _by_rows(negatives, rows)
    # q, k: "id"; paired negatives "imd"; the queue "nd": no row index, so its one block (one
    # graph key) goes to every task.
    args: list[Any] = [q, "id", k, "id"]
    if negatives is not None:
        args += [negatives, "imd" if paired else "nd"]
    has_negatives = negatives is not None
    if labels[0] is not None:
        args += [_by_rows(labels[0], rows), "i"]
    if labels[1] is not None:
        if not has_negatives:
            args += [_by_rows(labels[1], rows), "i"]
        else:
            args += [_by_rows(labels[1], rows), "im"] if paired else [labels[1], "n"]

    def problem_of(blocks: tuple[Any, ...]) -> _losses.InfoNceProblem:
        qb, kb, rest = blocks[0], blocks[1], list(blocks[2:])
        nb = rest.pop(0) if has_negatives else None
        qlb = rest.pop(0) if labels[0] is not None else None
        klb = rest.pop(0) if labels[1] is not None else None
        return _losses.InfoNceProblem(qb, kb, nb, query_labels=qlb, key_labels=klb, **options)

    def partial(*blocks: Any) -> Partial:
        problem = problem_of(blocks)
        return problem.partial(problem.forward())

    if reduction != "none":
        return _reduce(_per_block(partial, None, object, "info_nce", options, *args), reduction)

    def row_losses(*blocks: Any) -> np.ndarray:
        return problem_of(blocks).forward().astype(meta.dtype)

    return _per_block(row_losses, "i", meta.dtype, "info_nce", options, *args)


# -- linear cross-entropy -------------------------------------------------------------------


def linear_cross_entropy(
    input: Any,  # noqa: A002
    linear_weight: Any,
    target: Any,
    *,
    linear_bias: Any = None,
    weight: Any = None,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> da.Array:
    """:func:`fastloss.linear_cross_entropy` over dask arrays chunked by rows: ``input`` ``(N, H)``
    and ``target`` (``(N,)`` class indices or ``(N, V)`` probabilities) chunked in any way; the
    classifier ``linear_weight`` ``(V, H)`` and ``linear_bias`` ``(V,)`` (NumPy or dask arrays)
    each sent to the workers once as one graph key; ``weight`` ``(V,)`` class weights (a NumPy
    array, or a dask array computed once here). A 0-d dask array for a reduction, a lazy
    ``(N,)`` dask array for ``"none"``."""
    reduction = check_reduction(reduction)
    options = {
        "weight": _small_array(weight),
        "ignore_index": check_int(ignore_index, "ignore_index"),
        "label_smoothing": check_label_smoothing(label_smoothing),
        "z_loss": _losses.check_z_loss(z_loss),
        "softcap": None if softcap is None else _losses.check_softcap(softcap),
    }
    x, y = _as_dask(input, "input"), _as_dask(target, "target")
    if x.ndim != 2:
        raise ValueError(f"input must have shape (N, H); got {x.shape}")
    _same_rows(x, "input", y, "target")
    w = _one_key(linear_weight, "linear_weight", "classifier")
    b = None if linear_bias is None else _one_key(linear_bias, "linear_bias", "bias")
    # Shapes, dtypes and options now, on zero rows (the class indices are checked where the rows are).
    meta = _losses.LinearCrossEntropyProblem(
        _meta(x),
        np.empty(w.shape, w.dtype),
        _meta(y),
        linear_bias=None if b is None else np.empty(b.shape, b.dtype),
        **options,
    )
    x = _by_rows(x, None)
    y = _by_rows(y, x.chunks[0])
    # input "ih", target "i" or "iv"; the classifier "vh" and bias "v" have no row index, so
    # their one block (one graph key) goes to every task.
    args: list[Any] = [x, "ih", y, "i" if y.ndim == 1 else "iv", w, "vh"]
    if b is not None:
        args += [b, "v"]

    def problem(
        xb: np.ndarray, yb: np.ndarray, wb: np.ndarray, bb: np.ndarray | None = None
    ) -> _losses.LinearCrossEntropyProblem:
        return _losses.LinearCrossEntropyProblem(xb, wb, yb, linear_bias=bb, **options)

    def partial(*blocks: np.ndarray) -> Partial:
        block_problem = problem(*blocks)
        return block_problem.partial(block_problem.forward())

    if reduction != "none":
        return _reduce(_per_block(partial, None, object, "linear_cross_entropy", options, *args), reduction)

    def row_losses(*blocks: np.ndarray) -> np.ndarray:
        return problem(*blocks).forward().astype(meta.dtype)

    return _per_block(row_losses, "i", meta.dtype, "linear_cross_entropy", options, *args)
