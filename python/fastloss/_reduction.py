"""The one owner of the reduction rules.

Every loss reduces through a :class:`Partial`: the exact sum of its (weighted) element or row
losses and the exact sums that "mean" and "batchmean" divide by. Merging two partials is exact,
so any split of the rows into calls, updates, chunks or dask partitions gives the same partial,
and :meth:`Partial.result` rounds each sum once and divides once. The functions in ``_losses``,
the streaming :class:`fastloss.Accumulator`, the command line, ``fastloss.torch`` and
``fastloss.dask`` all form their results here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _core
from ._validation import ReductionName, divide


class ExactSum:
    """An exact, order-independent sum of doubles (a superaccumulator state from the C++ core),
    rounded to the nearest double only by ``float()``."""

    __slots__ = ("_state",)

    def __init__(self, state: bytes | None = None) -> None:
        self._state = _core.exact_state(_EMPTY) if state is None else state

    @classmethod
    def of(cls, values: object) -> ExactSum:
        """The exact sum of the values of a float64-convertible array."""
        return cls(_core.exact_state(np.ascontiguousarray(values, dtype=np.float64).ravel()))

    def __add__(self, other: ExactSum) -> ExactSum:
        return ExactSum(_core.exact_merge(self._state, other._state))

    def __float__(self) -> float:
        return _core.exact_round(self._state)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExactSum) and self._state == other._state

    def __hash__(self) -> int:
        return hash(self._state)

    def __repr__(self) -> str:
        return f"ExactSum({float(self)!r})"

    def to_bytes(self) -> bytes:
        return self._state

    @classmethod
    def from_bytes(cls, data: bytes) -> ExactSum:
        _core.exact_round(data)  # validates it
        return cls(bytes(data))


_EMPTY = np.empty(0, dtype=np.float64)


@dataclass(frozen=True)
class Partial:
    """A loss's reduction state over some rows.

    ``total`` sums the (weighted) element or row losses; "mean" divides it by
    ``mean_denominator * mean_scale`` (elements; ``sum(w) * elements per row`` for weighted
    regression; PyTorch's weighted count for cross-entropy), "batchmean" by
    ``batch_denominator`` (rows, or ``sum(w)``)."""

    total: ExactSum
    mean_denominator: ExactSum
    batch_denominator: ExactSum
    mean_scale: int = 1

    def merge(self, other: Partial) -> Partial:
        if other.mean_scale != self.mean_scale:
            raise ValueError(
                f"cannot merge partial sums over rows of {self.mean_scale} and {other.mean_scale} elements"
            )
        return Partial(
            self.total + other.total,
            self.mean_denominator + other.mean_denominator,
            self.batch_denominator + other.batch_denominator,
            self.mean_scale,
        )

    def result(self, reduction: ReductionName) -> float:
        """The reduced loss: the exact total rounded once, divided once (IEEE: x/0 is inf or nan)."""
        total = float(self.total)
        if reduction == "sum":
            return total
        if reduction == "mean":
            return divide(total, float(self.mean_denominator) * self.mean_scale)
        if reduction == "batchmean":
            return divide(total, float(self.batch_denominator))
        raise ValueError(f"reduction {reduction!r} has no scalar result")

    def divisor(self, reduction: ReductionName) -> float:
        """What result() divides the total by (1 for "sum" and "none"): the scale of a gradient."""
        if reduction == "mean":
            return float(self.mean_denominator) * self.mean_scale
        if reduction == "batchmean":
            return float(self.batch_denominator)
        return 1.0

    @staticmethod
    def count(n: int) -> ExactSum:
        """An exact count (as a sum of ones)."""
        return ExactSum.of([float(n)])


def class_weighted_count(
    target_index: np.ndarray, class_weight: np.ndarray | None, ignore_index: int
) -> ExactSum:
    """PyTorch's "mean" denominator for class-index targets, as an exact sum: the class weights
    of the rows whose target is not ``ignore_index`` (their count without class weights).
    The targets must be checked already (each in ``[0, C)`` or ``ignore_index``)."""
    kept = target_index[target_index != ignore_index]
    if class_weight is None:
        return Partial.count(kept.size)
    return ExactSum.of(class_weight[kept])


def empty_partial(mean_scale: int = 1) -> Partial:
    zero = ExactSum()
    return Partial(zero, zero, zero, mean_scale)
