"""The streaming API: a loss reduced over rows that arrive in pieces.

``Accumulator(loss, **options)`` takes the loss's options once; ``update(...)`` takes the
arrays of some rows; ``merge(other)`` adds another accumulator's rows; ``result()`` is the
reduced loss. Its state is the loss's :class:`~fastloss._reduction.Partial` (exact sums), so
any split of the rows into updates and merges gives exactly the one-call result, and the state
is a few hundred bytes whatever the number of rows.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from typing import Any

import numpy as np

from . import _core, _losses
from ._reduction import ExactSum, Partial, empty_partial
from ._validation import (
    as_real_array,
    check_choice,
    check_flag,
    check_int,
    check_label_smoothing,
    check_reduction,
    check_temperature,
)

LOSSES = ("mse", "mae", "cross_entropy", "info_nce", "linear_cross_entropy")
_MAGIC = b"FLACC1\0\0"
_SCALAR_REDUCTIONS = ("sum", "mean", "batchmean")


def _logaddexp(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """log(exp(x) + exp(y)) per element (float64), as np.logaddexp, but with the kernels' exp and
    log (_core.vector_exp / vector_log: the same polynomial, so the same bits, on every path and
    CPU) instead of NumPy's, which are chosen per CPU (AVX-512 and AVX2 forms may differ in the
    last bit). max + log1p(exp(-|x - y|)), log1p(e) taken as log(u) e / (u - 1) with u = 1 + e
    (exact to a few ulp where log(u) alone would lose e's low bits); equal arguments (infinities
    included) give max + log(2), NaN gives NaN."""
    x, y = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):  # inf - inf, and 0 / 0 where u == 1
        d = np.where(x == y, 0.0, -np.abs(x - y)).ravel()
        e = _core.vector_exp(np.ascontiguousarray(d))
        u = 1.0 + e
        log1p = np.where(u == 1.0, e, _core.vector_log(u) * (e / (u - 1.0)))
    result: np.ndarray = np.maximum(x, y) + log1p.reshape(x.shape)
    return result


def _array_digest(value: Any) -> str | None:
    if value is None:
        return None
    array = np.ascontiguousarray(value)
    return f"{array.dtype.str}{array.shape}:" + hashlib.sha256(array.tobytes()).hexdigest()


class Accumulator:
    """A loss reduced over rows given in any number of ``update`` calls and merges.

    Options are the loss's keyword arguments, given once: ``reduction`` (``"sum"``, ``"mean"`` or
    ``"batchmean"``; ``"none"`` has nothing to accumulate) and, for ``cross_entropy``, ``weight``,
    ``ignore_index``, ``label_smoothing``; for ``info_nce``, ``temperature``, ``normalize``,
    ``negative_mode``, ``symmetric``, ``decoupled`` and, with ``negative_mode="unpaired"``, the
    shared queue ``negative_keys`` (and its ``key_labels``), or ``queue_split=True`` to split a
    queue over accumulators of the same rows (each one's ``update(query, positive_key, shard)``
    scores the rows against its shard; merging combines each row's log-sum-exp, within 2 ulp of
    the one-call one; the state is then O(N)); for ``linear_cross_entropy``, the classifier
    ``linear_weight`` (required) and ``linear_bias``, and ``weight``, ``ignore_index``,
    ``label_smoothing``, ``z_loss``, ``softcap``. Per-row arrays go to ``update``:

    - ``mse``/``mae``: ``update(pred, target, sample_weight=None)``
    - ``cross_entropy``: ``update(logits, target, sample_weight=None)``, logits ``(N, C)`` or
      K-dimensional ``(N, C, d1, ..., dK)`` (the rows are the N samples; every update's
      ``(C, d1, ..., dK)`` must match)
    - ``info_nce``: ``update(query, positive_key)``, or ``update(query, positive_key,
      negative_keys)`` with ``negative_mode="paired"``; labels as keywords,
      ``update(..., query_labels=...)`` (and ``key_labels=...`` for paired negatives or a
      queue_split shard)
    - ``linear_cross_entropy``: ``update(input, target)``

    ``result()`` equals the loss called once on all the rows, bit for bit. ``to_bytes()`` /
    ``Accumulator.from_bytes()`` and pickling carry the state and the options; array options
    (class weights, a queue, a classifier) travel as a digest only, so a restored accumulator
    merges and gives its result, and takes further updates once given the same arrays again
    (``from_bytes(data, weight=..., negative_keys=..., linear_weight=...)``).
    """

    def __init__(self, loss: str, **options: Any) -> None:
        self.loss = check_choice(loss, "loss", LOSSES)
        restoring = options.pop("_restoring", False)  # from_bytes: the arrays may come later
        reduction = check_reduction(options.pop("reduction", "mean"))
        if reduction not in _SCALAR_REDUCTIONS:
            raise ValueError('reduction: "none" has nothing to accumulate; use "sum", "mean" or "batchmean"')
        self.reduction = reduction
        self._arrays: dict[str, Any] = {}
        scalars: dict[str, Any] = {}
        if self.loss == "cross_entropy":
            self._arrays["weight"] = options.pop("weight", None)
            scalars["ignore_index"] = check_int(options.pop("ignore_index", -100), "ignore_index")
            scalars["label_smoothing"] = check_label_smoothing(options.pop("label_smoothing", 0.0))
        elif self.loss == "info_nce":
            scalars["temperature"] = check_temperature(options.pop("temperature", 0.07))
            scalars["negative_mode"] = check_choice(
                options.pop("negative_mode", "unpaired"), "negative_mode", ("unpaired", "paired")
            )
            scalars["normalize"] = check_flag(options.pop("normalize", False), "normalize")
            scalars["symmetric"] = check_flag(options.pop("symmetric", False), "symmetric")
            scalars["queue_split"] = check_flag(options.pop("queue_split", False), "queue_split")
            if scalars["queue_split"] and scalars["negative_mode"] != "unpaired":
                raise ValueError('queue_split: splits a shared queue, so it needs negative_mode="unpaired"')
            self._arrays["negative_keys"] = options.pop("negative_keys", None)
            if scalars["queue_split"] and self._arrays["negative_keys"] is not None:
                raise ValueError(
                    "negative_keys: with queue_split=True each accumulator's shard goes to update()"
                )
            if self._arrays["negative_keys"] is not None and scalars["negative_mode"] == "paired":
                raise ValueError(
                    "negative_keys: paired negatives belong to their rows; pass them to update()"
                )
            # Kept out of the state's header unless used, so that earlier states still restore.
            if check_flag(options.pop("decoupled", False), "decoupled"):
                scalars["decoupled"] = True
            key_labels = options.pop("key_labels", None)
            if key_labels is not None:
                if self._arrays["negative_keys"] is None and not restoring:
                    raise ValueError(
                        "key_labels: the labels of a shared queue (negative_keys=...); with "
                        "queue_split=True or paired negatives, pass each update's key_labels to update()"
                    )
                self._arrays["key_labels"] = key_labels
        elif self.loss == "linear_cross_entropy":
            for name in ("linear_weight", "linear_bias", "weight"):
                self._arrays[name] = options.pop(name, None)
            scalars["ignore_index"] = check_int(options.pop("ignore_index", -100), "ignore_index")
            scalars["label_smoothing"] = check_label_smoothing(options.pop("label_smoothing", 0.0))
            scalars["z_loss"] = _losses.check_z_loss(options.pop("z_loss", 0.0))
            softcap = options.pop("softcap", None)
            scalars["softcap"] = None if softcap is None else _losses.check_softcap(softcap)
            if self._arrays["linear_weight"] is not None:
                # Every array and option checked now, on zero rows of the classifier's H.
                classifier = as_real_array(self._arrays["linear_weight"], "linear_weight")
                self._arrays["linear_weight"] = classifier
                shape = classifier.shape
                rows = np.empty((0, shape[1] if len(shape) == 2 else 0), dtype=np.float32)
                self._linear_problem(rows, np.empty(0, dtype=np.int64), scalars)
            elif not restoring:
                raise ValueError(
                    "linear_weight: Accumulator('linear_cross_entropy') needs the (V, H) classifier, "
                    "linear_weight=..."
                )
        if options:
            raise TypeError(f"{self.loss}: unexpected option(s) {sorted(options)}")
        self._scalars = scalars
        self._digests = {name: _array_digest(value) for name, value in self._arrays.items()}
        self._partial: Partial | None = None
        self._row_shape: tuple[int, ...] | None = None
        self._has_arrays = True  # False once restored without the array options it was made with
        # queue_split: every row's positive logit and log-sum-exp over this shard's negatives
        self._positive: np.ndarray | None = None
        self._shard_lse: np.ndarray | None = None

    def _linear_problem(
        self, input: Any, target: Any, scalars: dict[str, Any] | None = None
    ) -> _losses.LinearCrossEntropyProblem:
        """The linear cross-entropy of these rows under this accumulator's classifier and options."""
        scalars = self._scalars if scalars is None else scalars
        return _losses.LinearCrossEntropyProblem(
            input,
            self._arrays["linear_weight"],
            target,
            linear_bias=self._arrays["linear_bias"],
            weight=self._arrays["weight"],
            **scalars,
        )

    # -- state -----------------------------------------------------------------------------

    def _key(self) -> dict[str, Any]:
        return {"loss": self.loss, "reduction": self.reduction, **self._scalars, "arrays": self._digests}

    def _add(self, partial: Partial, row_shape: tuple[int, ...]) -> None:
        if self._row_shape is not None and row_shape != self._row_shape:
            raise ValueError(
                f"{self.loss}: rows of shape {row_shape} do not match the earlier rows' {self._row_shape}"
            )
        self._row_shape = row_shape
        self._partial = partial if self._partial is None else self._partial.merge(partial)

    def update(
        self, *arrays: Any, sample_weight: Any = None, query_labels: Any = None, key_labels: Any = None
    ) -> Accumulator:
        """Adds the rows of these arrays (the loss's positional arguments); returns self.
        ``query_labels`` / ``key_labels``: info_nce's labels of these rows (``key_labels`` of
        this update's paired negatives or queue shard; a shared queue's are an option)."""
        if (query_labels is not None or key_labels is not None) and self.loss != "info_nce":
            raise TypeError(f"{self.loss}.update takes no query_labels or key_labels")
        if not self._has_arrays:
            missing = sorted(name for name, digest in self._digests.items() if digest is not None)
            raise ValueError(f"update: restored without {missing}; pass them to from_bytes() to update")
        if self.loss in ("mse", "mae"):
            if len(arrays) != 2:
                raise TypeError(f"{self.loss}.update takes (pred, target); got {len(arrays)} arrays")
            kind = 0 if self.loss == "mse" else 1
            if np.ndim(arrays[0]) == 0:
                # fastloss.mse takes a 0-d pair as one element, but an update adds rows, and a
                # 0-d array has no row axis (its "batchmean" would be undefined).
                raise ValueError(
                    f"{self.loss}.update adds rows: pred and target must have at least 1 dimension; got "
                    "0-d arrays (pass them reshaped to (1,) for one row of one element)"
                )
            partial, _, _ = _losses.regression_partial(
                kind, arrays[0], arrays[1], sample_weight, "sum", False
            )
            self._add(partial, np.shape(arrays[0])[1:])
            return self
        if self.loss == "cross_entropy":
            if len(arrays) != 2:
                raise TypeError(f"cross_entropy.update takes (logits, target); got {len(arrays)} arrays")
            logits = np.asarray(arrays[0])
            if logits.ndim < 2:
                raise ValueError(
                    f"logits: an update takes (N, C) or (N, C, d1, ..., dK) rows; got {logits.shape}"
                )
            partial, _, _ = _losses.cross_entropy_partial(
                logits,
                arrays[1],
                self._arrays["weight"],
                self._scalars["ignore_index"],
                self._scalars["label_smoothing"],
                "sum",
                False,
                sample_weight,
            )
            self._add(partial, logits.shape[1:])
            return self
        if self.loss == "linear_cross_entropy":
            if len(arrays) != 2:
                raise TypeError(
                    f"linear_cross_entropy.update takes (input, target); got {len(arrays)} arrays"
                )
            if sample_weight is not None:
                raise TypeError("linear_cross_entropy.update takes no sample_weight")
            linear = self._linear_problem(arrays[0], arrays[1])
            self._add(linear.partial(linear.forward()), (linear.hidden,))
            return self
        if sample_weight is not None:
            raise TypeError("info_nce.update takes no sample_weight")
        if self._scalars.get("queue_split"):
            return self._update_shard(*arrays, query_labels=query_labels, key_labels=key_labels)
        paired = self._scalars["negative_mode"] == "paired"
        if len(arrays) != (3 if paired else 2):
            raise TypeError(
                "info_nce.update takes (query, positive_key"
                + (", negative_keys) with paired negatives" if paired else ")")
                + f"; got {len(arrays)} arrays"
            )
        negatives = arrays[2] if paired else self._arrays["negative_keys"]
        if not paired and key_labels is not None:
            raise TypeError(
                "info_nce.update: key_labels of a shared queue are an option, "
                "Accumulator('info_nce', negative_keys=..., key_labels=...)"
            )
        problem = _losses.InfoNceProblem(
            arrays[0],
            arrays[1],
            negatives,
            temperature=self._scalars["temperature"],
            negative_mode=self._scalars["negative_mode"],
            normalize=self._scalars["normalize"],
            symmetric=self._scalars["symmetric"],
            query_labels=query_labels,
            key_labels=key_labels if paired else self._arrays.get("key_labels"),
            decoupled=self._scalars.get("decoupled", False),
        )
        if self._scalars["symmetric"] or (negatives is None and problem.rows):
            # In-batch negatives are the other rows of the same call: rows of separate updates
            # never meet, so the result would depend on the split.
            raise ValueError(
                "info_nce: in-batch negatives (no negative_keys) cannot be accumulated over updates"
            )
        self._add(problem.partial(problem.forward()), (problem.dim,))
        return self

    def _update_shard(self, *arrays: Any, query_labels: Any = None, key_labels: Any = None) -> Accumulator:
        """queue_split: rows (query, positive_key) scored against this accumulator's shard of the
        queue (negative_keys); the rows of successive updates follow one another."""
        if len(arrays) != 3:
            raise TypeError(
                "info_nce.update with queue_split=True takes (query, positive_key, negative_keys); "
                f"got {len(arrays)} arrays"
            )
        problem = _losses.InfoNceProblem(
            arrays[0],
            arrays[1],
            arrays[2],
            temperature=self._scalars["temperature"],
            negative_mode="unpaired",
            normalize=self._scalars["normalize"],
            symmetric=False,
            query_labels=query_labels,
            key_labels=key_labels,
            decoupled=self._scalars.get("decoupled", False),
        )
        positive, lse = problem.shard_stats()
        if self._row_shape is not None and (problem.dim,) != self._row_shape:
            raise ValueError(
                f"info_nce: rows of shape {(problem.dim,)} do not match the earlier rows' {self._row_shape}"
            )
        self._row_shape = (problem.dim,)
        if self._positive is None or self._shard_lse is None:
            self._positive, self._shard_lse = positive, lse
        else:
            self._positive = np.concatenate([self._positive, positive])
            self._shard_lse = np.concatenate([self._shard_lse, lse])
        return self

    def _merge_shard(self, other: Accumulator) -> None:
        if other._positive is None or other._shard_lse is None:
            return
        if self._positive is None or self._shard_lse is None:
            self._positive, self._shard_lse = other._positive.copy(), other._shard_lse.copy()
            self._row_shape = other._row_shape
            return
        if self._positive.shape != other._positive.shape or not np.array_equal(
            self._positive, other._positive
        ):
            raise ValueError("merge: queue shards of different queries (their rows or positives differ)")
        # per row, the log-sum-exp over both shards: _logaddexp shifts by the max exactly
        self._shard_lse = _logaddexp(self._shard_lse, other._shard_lse)

    def merge(self, other: Accumulator) -> Accumulator:
        """Adds another accumulator's rows (same loss and options); returns self. With
        queue_split=True, the other holds the same rows against another shard of the queue."""
        if not isinstance(other, Accumulator):
            raise TypeError(f"merge: expected an Accumulator, got {type(other).__name__}")
        if other._key() != self._key():
            raise ValueError(
                f"merge: accumulators of different losses or options: {self._key()} and {other._key()}"
            )
        if self._scalars.get("queue_split"):
            self._merge_shard(other)
            return self
        if other._partial is not None:
            self._add(other._partial, other._row_shape or ())
        return self

    def result(self) -> float:
        """The reduced loss over every row so far (nan for no rows, as the loss of zero rows)."""
        if self._positive is not None and self._shard_lse is not None:
            # queue_split: row loss = logaddexp(positive, lse over the negatives) - positive, or
            # with decoupled (the positive outside the log-sum-exp) lse - positive
            if self._scalars.get("decoupled"):
                rows = self._shard_lse - self._positive
            else:
                rows = _logaddexp(np.zeros_like(self._positive), self._shard_lse - self._positive)
            count = Partial.count(rows.size)
            return Partial(ExactSum.of(rows), count, count).result(self.reduction)
        partial = self._partial if self._partial is not None else empty_partial()
        return partial.result(self.reduction)

    def reset(self) -> None:
        self._partial = None
        self._row_shape = None
        self._positive = self._shard_lse = None

    # -- serialisation ---------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        header = json.dumps({**self._key(), "row_shape": self._row_shape}, sort_keys=True).encode()
        states = b""
        scale = 1
        if self._positive is not None and self._shard_lse is not None:
            # queue_split: the per-row arrays (O(N) bytes), flagged by a negative scale: -N
            states = np.ascontiguousarray(np.stack([self._positive, self._shard_lse]), dtype="<f8").tobytes()
            scale = -self._positive.size
        if self._partial is not None:
            p = self._partial
            states = p.total.to_bytes() + p.mean_denominator.to_bytes() + p.batch_denominator.to_bytes()
            scale = p.mean_scale
        body = header + states
        return _MAGIC + struct.pack("<IIqI", len(header), len(states), scale, zlib.crc32(body)) + body

    @classmethod
    def from_bytes(cls, data: bytes, **arrays: Any) -> Accumulator:
        data = bytes(data)
        fixed = len(_MAGIC) + struct.calcsize("<IIqI")
        if len(data) < fixed or not data.startswith(_MAGIC):
            raise ValueError("data: not an Accumulator state (from to_bytes())")
        header_size, states_size, scale, checksum = struct.unpack("<IIqI", data[len(_MAGIC) : fixed])
        if (
            len(data) != fixed + header_size + states_size
            or (scale > 0 and states_size % 3)
            or zlib.crc32(data[fixed:]) != checksum
        ):
            raise ValueError("data: a truncated or damaged Accumulator state")
        try:
            key = json.loads(data[fixed : fixed + header_size])
            loss, reduction, digests = key.pop("loss"), key.pop("reduction"), key.pop("arrays")
            row_shape = key.pop("row_shape")
        except (ValueError, KeyError, TypeError):
            raise ValueError("data: a damaged Accumulator state header") from None
        for name, value in arrays.items():
            if name not in digests or _array_digest(value) != digests[name]:
                raise ValueError(f"{name}: not the array this state was accumulated with")
        acc = cls(loss, reduction=reduction, **key, **arrays, _restoring=True)
        acc._has_arrays = acc._digests == digests
        acc._digests = digests
        states = data[fixed + header_size :]
        if scale < 0:  # queue_split rows
            rows = np.frombuffer(states, dtype="<f8")
            if rows.size != 2 * -scale:
                raise ValueError("data: a truncated or damaged Accumulator state")
            acc._positive, acc._shard_lse = rows[:-scale].copy(), rows[-scale:].copy()
            acc._row_shape = tuple(row_shape) if row_shape is not None else None
        elif states:
            third = states_size // 3
            sums = [ExactSum.from_bytes(states[i * third : (i + 1) * third]) for i in range(3)]
            acc._partial = Partial(sums[0], sums[1], sums[2], scale)
            acc._row_shape = tuple(row_shape) if row_shape is not None else None
        return acc

    def __reduce__(self) -> tuple[Any, ...]:
        return (Accumulator.from_bytes, (self.to_bytes(),))

    def __repr__(self) -> str:
        rows = "no rows" if self._partial is None else f"result {self.result()!r}"
        return f"Accumulator({self.loss!r}, reduction={self.reduction!r}, {rows})"
