"""Argument checks and conversions shared by the public functions.

Everything a user can pass wrong is caught here, with a message that names the argument, before
any array reaches the compiled kernels.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Literal, cast

import numpy as np

REDUCTIONS = ("none", "sum", "mean", "batchmean")
ReductionName = Literal["none", "sum", "mean", "batchmean"]

_FLOAT32 = np.dtype(np.float32)
_FLOAT64 = np.dtype(np.float64)


def check_reduction(reduction: Any) -> ReductionName:
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}; got {reduction!r}")
    return cast(ReductionName, reduction)


def check_flag(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool; got {type(value).__name__}")
    return bool(value)


def check_real(value: Any, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__}")
    return float(value)


def check_int(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    return int(value)


def as_real_array(value: Any, name: str) -> np.ndarray:
    """np.asarray(value), refusing dtypes that have no real-valued meaning."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{name}: cannot be converted to an array ({error})") from None
    if array.dtype.kind not in "fiub":
        raise TypeError(
            f"{name}: dtype {array.dtype} is not supported; expected a real floating, integer or bool array"
        )
    return array


def compute_dtype(*arrays: np.ndarray) -> np.dtype:
    """float32 when every array is float16/float32, else float64 (ints and bools count as float64)."""
    for array in arrays:
        if array.dtype.kind != "f" or array.dtype.itemsize > 4:
            return _FLOAT64
    return _FLOAT32


def as_input_dtype(grad: np.ndarray, original: np.ndarray) -> np.ndarray:
    """A gradient in the dtype of the argument it belongs to (float16 stays float16); arguments
    that were integers or bools get the computation dtype."""
    if original.dtype.kind == "f" and grad.dtype != original.dtype:
        return grad.astype(original.dtype.newbyteorder("="))
    return grad


def to_kernel_layout(array: np.ndarray, dtype: np.dtype, *, contiguous_rows: bool = False) -> np.ndarray:
    """The array in native `dtype`, copied only when the kernels cannot read it as it is.

    The kernels take any element strides (negative, zero, Fortran order); they need native byte
    order, strides that are whole elements and, where `contiguous_rows`, a unit stride along the
    last axis.
    """
    if array.dtype != dtype:
        array = array.astype(dtype)
    itemsize = dtype.itemsize
    if any(stride % itemsize for stride in array.strides) or (
        contiguous_rows and array.size and array.shape[-1] > 1 and array.strides[-1] != itemsize
    ):
        array = np.ascontiguousarray(array)
    return array


def sample_weights(value: Any, rows: int) -> np.ndarray | None:
    if value is None:
        return None
    weights = as_real_array(value, "sample_weight")
    if weights.shape != (rows,):
        raise ValueError(f"sample_weight: expected shape ({rows},) (one weight per row of pred); got {weights.shape}")
    weights = np.ascontiguousarray(weights, dtype=np.float64)
    if not np.isfinite(weights).all():
        raise ValueError("sample_weight: every weight must be finite")
    if (weights < 0).any():
        raise ValueError("sample_weight: every weight must be >= 0")
    return weights


def divide(numerator: float, denominator: float) -> float:
    """numerator / denominator with IEEE semantics: x/0 is +-inf and 0/0 is nan, never an exception."""
    if denominator == 0:
        if numerator == 0 or math.isnan(numerator):
            return math.nan
        return math.copysign(math.inf, numerator)
    return numerator / denominator
