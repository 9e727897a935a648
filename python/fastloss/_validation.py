"""Argument checks and conversions shared by the public functions.

Everything a user can pass wrong is caught here, with a message that names the argument, before
any array reaches the compiled kernels.
"""

from __future__ import annotations

import math
import numbers
import sys
from typing import Any, Literal, cast

import numpy as np

from . import _core

REDUCTIONS = ("none", "sum", "mean", "batchmean")
ReductionName = Literal["none", "sum", "mean", "batchmean"]

_FLOAT32 = np.dtype(np.float32)
_FLOAT64 = np.dtype(np.float64)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# The most threads set_num_threads accepts: far more than any CPU's cores (so any sane
# oversubscription fits), yet few enough that the OpenMP runtime can create them; libgomp ends
# the process when it cannot ("Thread creation failed"). A machine with more cores than that
# may use them all.
MAX_THREADS = max(1024, _core.default_num_threads())
# The smallest temperature whose reciprocal is finite (the kernels scale by 1/temperature; below
# this, 0 * inf would turn a zero dot product into nan).
MIN_TEMPERATURE = sys.float_info.min


def describe(value: Any) -> str:
    """``repr(value)`` short enough for a one-line message. A huge int is described by its size:
    ``repr`` of an int over 4300 digits raises ValueError (so may a Fraction's), and a shorter
    one is still noise."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**40:
        return f"{'a negative' if value < 0 else 'an'} int of {value.bit_length()} bits"
    try:
        text = repr(value)
    except ValueError:
        return f"a {type(value).__name__} too large to print"
    return text if len(text) <= 80 else text[:77] + "..."


def _interval(low: float, high: float) -> str:
    if (low, high) == (INT64_MIN, INT64_MAX):
        return "an int64, in [-2**63, 2**63 - 1]"
    return f"in [{low!r}, {high!r}]"


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {describe(value)}")
    return str(value)


def check_reduction(reduction: Any) -> ReductionName:
    return cast(ReductionName, check_choice(reduction, "reduction", REDUCTIONS))


def check_flag(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool; got {type(value).__name__}")
    return bool(value)


def check_real(value: Any, name: str, low: float, high: float, *, expected: str = "") -> float:
    """A Python or NumPy real number (not a bool) in ``[low, high]`` (nan never is), as a float.

    ``expected`` words the range in the message (default: ``in [low, high]``). A number too large
    for a float (``10**400``, a huge Fraction) is out of range, not an OverflowError.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        number = -math.inf if value < 0 else math.inf
    if not low <= number <= high:
        raise ValueError(f"{name} must be {expected or _interval(low, high)}; got {describe(value)}")
    return number


def check_int(
    value: Any, name: str, low: int = INT64_MIN, high: int = INT64_MAX, *, expected: str = ""
) -> int:
    """A Python or NumPy integer (not a bool) in ``[low, high]``, as an int: by default the int64
    range the kernels take. ``expected`` words the range in the message."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    number = int(value)
    if not low <= number <= high:
        raise ValueError(f"{name} must be {expected or _interval(low, high)}; got {describe(number)}")
    return number


def check_threads(value: Any, name: str) -> int:
    """A thread count for set_num_threads (and the CLI's --threads)."""
    return check_int(
        value,
        name,
        1,
        MAX_THREADS,
        expected=f"in [1, {MAX_THREADS}] (at most max(1024, the machine's cores) threads)",
    )


def check_temperature(value: Any, name: str = "temperature") -> float:
    return check_real(
        value,
        name,
        MIN_TEMPERATURE,
        sys.float_info.max,
        expected=f"finite and >= {MIN_TEMPERATURE!r} (so that 1/{name} is finite)",
    )


def check_label_smoothing(value: Any, name: str = "label_smoothing") -> float:
    return check_real(value, name, 0.0, 1.0)


def is_bfloat16(dtype: np.dtype) -> bool:
    """Whether `dtype` is ``ml_dtypes.bfloat16`` (which ``torch.bfloat16`` tensors also map to).

    Known by its name, so that ml_dtypes need not be installed (nor imported) for fastloss: NumPy
    reports the extension dtype as kind "V", 2 bytes, named "bfloat16"."""
    return dtype.kind == "V" and dtype.itemsize == 2 and dtype.name == "bfloat16"


def is_floating(dtype: np.dtype) -> bool:
    """A floating dtype fastloss computes with: float16/32/64 (NumPy's kind "f") or bfloat16."""
    return dtype.kind == "f" or is_bfloat16(dtype)


def as_real_array(value: Any, name: str) -> np.ndarray:
    """np.asarray(value), refusing dtypes that have no real-valued meaning."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{name}: cannot be converted to an array ({error})") from None
    if array.dtype.kind not in "fiub" and not is_bfloat16(array.dtype):
        raise TypeError(
            f"{name}: dtype {array.dtype} is not supported; expected a real floating (float16, bfloat16, "
            "float32, float64), integer or bool array"
        )
    return array


def compute_dtype(*arrays: np.ndarray) -> np.dtype:
    """float32 when every array is float16/bfloat16/float32, else float64 (ints and bools count as
    float64). bfloat16 and float16 values are exact in float32, so they compute as float32 does."""
    for array in arrays:
        if not is_floating(array.dtype) or array.dtype.itemsize > 4:
            return _FLOAT64
    return _FLOAT32


def as_input_dtype(grad: np.ndarray, original: np.ndarray) -> np.ndarray:
    """A gradient in the dtype of the argument it belongs to (float16 and bfloat16 stay so, rounded
    to nearest from the float32 computation); arguments that were integers or bools get the
    computation dtype."""
    if is_floating(original.dtype) and grad.dtype != original.dtype:
        # bfloat16 is always native (its byte-swapped form is a plain void dtype, "V2").
        native = original.dtype if is_bfloat16(original.dtype) else original.dtype.newbyteorder("=")
        return grad.astype(native)
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
        raise ValueError(
            f"sample_weight: expected shape ({rows},) (one weight per row of pred); got {weights.shape}"
        )
    weights = np.ascontiguousarray(weights, dtype=np.float64)
    if not np.isfinite(weights).all():
        raise ValueError("sample_weight: every weight must be finite")
    if (weights < 0).any():
        raise ValueError("sample_weight: every weight must be >= 0")
    check_not_subnormal(weights, "sample_weight")
    return weights


def check_not_subnormal(weights: np.ndarray, name: str) -> None:
    """Weights are 0 or at least the smallest normal double: a subnormal weight makes a "mean"
    denominator whose inverse, the gradient's scale, overflows (inf * 0 = NaN in the gradient)."""
    tiny = (weights != 0) & (np.abs(weights) < sys.float_info.min)
    if tiny.any():
        raise ValueError(
            f"{name}: {weights[tiny][0]!r} at position {int(np.argmax(tiny))} is subnormal; a weight must "
            f"be 0 or of magnitude at least {sys.float_info.min!r} (the smallest normal float)"
        )


def divide(numerator: float, denominator: float) -> float:
    """numerator / denominator with IEEE semantics: x/0 is +-inf and 0/0 is nan, never an exception."""
    if denominator == 0:
        if numerator == 0 or math.isnan(numerator):
            return math.nan
        return math.copysign(math.inf, numerator)
    return numerator / denominator
