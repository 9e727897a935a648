"""The losses: argument checks and layout here, arithmetic in the compiled kernels."""

from __future__ import annotations

import math
import sys
from typing import Any, Literal, overload

import numpy as np
from numpy.typing import ArrayLike

from . import _core, _memory
from ._reduction import ExactSum, Partial, class_weighted_count
from ._validation import (
    as_input_dtype,
    as_real_array,
    check_choice,
    check_flag,
    check_int,
    check_label_smoothing,
    check_not_subnormal,
    check_real,
    check_reduction,
    check_temperature,
    compute_dtype,
    is_floating,
    sample_weights,
    to_kernel_layout,
)

Reduction = Literal["none", "sum", "mean", "batchmean"]
# The reductions that return a Python float ("none" returns an ndarray).
ScalarReduction = Literal["sum", "mean", "batchmean"]
LossResult = float | np.ndarray
# info_nce's gradient: (d_query, d_positive_key, d_negative_keys); the last is None without negatives.
InfoNceGrads = tuple[np.ndarray, np.ndarray, np.ndarray | None]
# With return_grad=True: (loss, grad); for info_nce, (loss, (d_query, d_positive_key, d_negative_keys)).
LossAndGrad = LossResult | tuple[LossResult, np.ndarray]
InfoNceLossAndGrad = LossResult | tuple[LossResult, InfoNceGrads]

_SQUARED, _ABSOLUTE = 0, 1
_IN_BATCH, _UNPAIRED, _PAIRED = 0, 1, 2
NEGATIVE_MODES = ("unpaired", "paired")


def _gradient_buffers(
    shape: tuple[int, ...], dtype: np.dtype, original: np.ndarray, fill: Any = _memory.empty
) -> tuple[np.ndarray, np.ndarray]:
    """(the buffer a kernel writes, in the computation dtype; the gradient returned, in the
    argument's dtype by as_input_dtype's rule), both allocated before any work, so that a call
    that cannot hold its gradient fails at once. They are one array unless the dtypes differ
    (e.g. float16 computed in float32); _finish_gradient then casts one into the other. The
    default fill leaves them uninitialised, for kernels that write every element; large ones
    reuse the memory of released gradients (_memory.py)."""
    grad = fill(shape, dtype=dtype)
    returned_dtype = as_input_dtype(grad[:0] if grad.ndim else grad, original).dtype
    return grad, (grad if returned_dtype == grad.dtype else _memory.empty(shape, dtype=returned_dtype))


def _finish_gradient(grad: np.ndarray, returned: np.ndarray) -> np.ndarray:
    if returned is not grad:
        np.copyto(returned, grad, casting="unsafe")
    return returned


def _regression(
    kind: int, pred: ArrayLike, target: ArrayLike, reduction: Any, sample_weight: Any, return_grad: Any
) -> LossAndGrad:
    reduction = check_reduction(reduction)
    return_grad = check_flag(return_grad, "return_grad")
    partial, out, grad = regression_partial(
        kind, pred, target, sample_weight, reduction, return_grad, exact_state=False
    )
    loss = out if out is not None else partial.result(reduction)
    return (loss, grad) if grad is not None else loss


def regression_partial(
    kind: int,
    pred: ArrayLike,
    target: ArrayLike,
    sample_weight: Any,
    reduction: str,
    return_grad: bool,
    *,
    exact_state: bool = True,
) -> tuple[Partial, np.ndarray | None, np.ndarray | None]:
    """One MSE/MAE pass: its partial sums, and the element losses ("none") and the gradient of
    the `reduction` when asked for (the gradient is scaled as it is written, by the divisor the
    partial's own denominators give). With ``exact_state=False`` the partial's total is fit only
    for ``result()`` (the correctly rounded sum, from a faster pass), not for merging."""
    pred_array = as_real_array(pred, "pred")
    target_array = as_real_array(target, "target")
    if pred_array.shape != target_array.shape:
        raise ValueError(
            f"pred and target must have the same shape (no broadcasting); got pred {pred_array.shape} "
            f"and target {target_array.shape}"
        )
    shape = pred_array.shape
    if pred_array.ndim == 0:
        # A 0-d pair is one element (as in torch): one row of one element, with no row axis, so
        # neither "batchmean" (sum / shape[0]) nor per-row weights have a meaning.
        if reduction == "batchmean":
            raise ValueError(
                "reduction='batchmean' divides by pred.shape[0], which 0-d pred and target do not have; "
                "use 'mean' or 'sum' (equal for one element), or pass arrays of shape (1,)"
            )
        if sample_weight is not None:
            raise ValueError(
                "sample_weight: 0-d pred and target have no rows to weight; pass arrays of shape (1,)"
            )
        rows, cols = 1, 1
    else:
        rows = shape[0]
        cols = int(np.prod(shape[1:], dtype=np.int64))
    dtype = compute_dtype(pred_array, target_array)
    # The outputs first: a call too large to hold them fails at once, before the weights are
    # converted and checked (a pass over N values).
    out = np.empty(shape, dtype=dtype) if reduction == "none" else None
    grad, returned_grad = _gradient_buffers(shape, dtype, pred_array) if return_grad else (None, None)
    weights = sample_weights(sample_weight, rows)
    # (N, ...) -> (N, F) is a view for most layouts; the kernels read the strides as they are.
    pred2d = to_kernel_layout(pred_array, dtype).reshape(rows, cols)
    target2d = to_kernel_layout(target_array, dtype).reshape(rows, cols)

    if weights is None:
        mean_denominator, batch_denominator, scale = Partial.count(rows * cols), Partial.count(rows), 1
    else:
        weight_sum = ExactSum.of(weights)
        mean_denominator, batch_denominator, scale = weight_sum, weight_sum, cols
    denominators = Partial(ExactSum(), mean_denominator, batch_denominator, scale)
    divisor = denominators.divisor(reduction)  # type: ignore[arg-type]
    total = ExactSum(
        _core.regression(
            kind, pred2d, target2d, weights, out, grad, 1.0 / divisor if divisor else np.inf, exact_state
        )
    )
    partial = Partial(total, mean_denominator, batch_denominator, scale)
    finished = (
        _finish_gradient(grad, returned_grad) if grad is not None and returned_grad is not None else None
    )
    return partial, out, finished


@overload
def mse(
    pred: ArrayLike,
    target: ArrayLike,
    *,
    reduction: ScalarReduction = ...,
    sample_weight: ArrayLike | None = ...,
    return_grad: Literal[False] = ...,
) -> float: ...
@overload
def mse(
    pred: ArrayLike,
    target: ArrayLike,
    *,
    reduction: Literal["none"],
    sample_weight: ArrayLike | None = ...,
    return_grad: Literal[False] = ...,
) -> np.ndarray: ...
@overload
def mse(
    pred: ArrayLike,
    target: ArrayLike,
    *,
    reduction: ScalarReduction = ...,
    sample_weight: ArrayLike | None = ...,
    return_grad: Literal[True],
) -> tuple[float, np.ndarray]: ...
@overload
def mse(
    pred: ArrayLike,
    target: ArrayLike,
    *,
    reduction: Literal["none"],
    sample_weight: ArrayLike | None = ...,
    return_grad: Literal[True],
) -> tuple[np.ndarray, np.ndarray]: ...
@overload
def mse(
    pred: ArrayLike,
    target: ArrayLike,
    *,
    reduction: Reduction = ...,
    sample_weight: ArrayLike | None = ...,
    return_grad: bool = ...,
) -> LossAndGrad: ...
def mse(
    pred: ArrayLike,
    target: ArrayLike,
    *,
    reduction: Reduction = "mean",
    sample_weight: ArrayLike | None = None,
    return_grad: bool = False,
) -> LossAndGrad:
    """Mean squared error: element loss ``(pred - target) ** 2``.

    Args:
        pred, target: arrays of the same shape; no broadcasting. A 0-d pair is one element
            (as in torch), for which ``"batchmean"`` and ``sample_weight`` are ValueErrors.
        reduction: ``"none"`` (element losses, shape of ``pred``), ``"sum"``, ``"mean"`` (sum /
            number of elements, like ``torch.nn.functional.mse_loss``) or ``"batchmean"`` (sum /
            ``pred.shape[0]``: the per-sample sum over features averaged over the batch).
        sample_weight: optional ``(N,)`` finite weights >= 0, one per row; ``"mean"`` then divides
            by ``sum(w) * elements per row`` (scikit-learn's ``mean_squared_error``) and
            ``"batchmean"`` by ``sum(w)``.
        return_grad: also return the gradient of the returned loss (for ``"none"``: of the sum of
            the element losses) with respect to ``pred``, computed in the same pass.

    Returns:
        A Python float for a reduction; an ndarray in the computation dtype for ``"none"``.
        float32 inputs compute in float32, float16 and bfloat16 in float32, ints and bools in
        float64.
        With ``return_grad``: ``(loss, grad)``, ``grad`` shaped like ``pred`` and in its floating
        dtype (float64 for integer ``pred``).
    """
    if sample_weight is None and return_grad is False:
        result = _core.regression_fast(_SQUARED, pred, target, reduction)
        if result is not None:
            return result
    return _regression(_SQUARED, pred, target, reduction, sample_weight, return_grad)


@overload
def mae(
    pred: ArrayLike,
    target: ArrayLike,
    *,
    reduction: ScalarReduction = ...,
    sample_weight: ArrayLike | None = ...,
    return_grad: Literal[False] = ...,
) -> float: ...
@overload
def mae(
    pred: ArrayLike,
    target: ArrayLike,
    *,
    reduction: Literal["none"],
    sample_weight: ArrayLike | None = ...,
    return_grad: Literal[False] = ...,
) -> np.ndarray: ...
@overload
def mae(
    pred: ArrayLike,
    target: ArrayLike,
    *,
    reduction: ScalarReduction = ...,
    sample_weight: ArrayLike | None = ...,
    return_grad: Literal[True],
) -> tuple[float, np.ndarray]: ...
@overload
def mae(
    pred: ArrayLike,
    target: ArrayLike,
    *,
    reduction: Literal["none"],
    sample_weight: ArrayLike | None = ...,
    return_grad: Literal[True],
) -> tuple[np.ndarray, np.ndarray]: ...
@overload
def mae(
    pred: ArrayLike,
    target: ArrayLike,
    *,
    reduction: Reduction = ...,
    sample_weight: ArrayLike | None = ...,
    return_grad: bool = ...,
) -> LossAndGrad: ...
def mae(
    pred: ArrayLike,
    target: ArrayLike,
    *,
    reduction: Reduction = "mean",
    sample_weight: ArrayLike | None = None,
    return_grad: bool = False,
) -> LossAndGrad:
    """Mean absolute error: element loss ``|pred - target|``.

    Same arguments, reductions and dtypes as :func:`mse` (``"mean"`` matches
    ``torch.nn.functional.l1_loss``). The gradient at ``pred == target`` is 0, like ``sign``.
    """
    if sample_weight is None and return_grad is False:
        result = _core.regression_fast(_ABSOLUTE, pred, target, reduction)
        if result is not None:
            return result
    return _regression(_ABSOLUTE, pred, target, reduction, sample_weight, return_grad)


def _class_indices(target: np.ndarray, expected_shape: tuple[int, ...]) -> np.ndarray:
    if target.shape != expected_shape:
        raise ValueError(f"target: class indices must have shape {expected_shape}; got {target.shape}")
    if target.dtype.kind == "u" and target.size and target.max() > np.iinfo(np.int64).max:
        position = int(np.argmax(target > np.iinfo(np.int64).max))
        raise ValueError(
            f"target: class index {int(target.reshape(-1)[position])} at position {position} is out of range"
        )
    return to_kernel_layout(target.reshape(-1), np.dtype(np.int64))


def _targets(
    target: ArrayLike,
    index_shape: tuple[int, ...],
    prob_shape: tuple[int, ...],
    dtype: np.dtype,
    prob_what: str,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(class indices as int64, flattened from `index_shape`; None) for an integer target, (None;
    probabilities as (rows, classes) in `dtype`) for a floating one of `prob_shape`, which
    `prob_what` words in the message. The kernels check the index values."""
    try:
        target_array = np.asarray(target)
    except (ValueError, TypeError) as error:
        raise ValueError(f"target: cannot be converted to an array ({error})") from None
    kind = target_array.dtype.kind
    if kind in "iu":
        return _class_indices(target_array, index_shape), None
    if is_floating(target_array.dtype):
        if target_array.shape != prob_shape:
            raise ValueError(
                f"target: probabilities must have {prob_what} {prob_shape}; got "
                f"{target_array.shape} (class indices must be an integer array)"
            )
        return None, to_kernel_layout(target_array.reshape(-1, prob_shape[-1]), dtype)
    raise TypeError(
        f"target: dtype {target_array.dtype} is not supported; expected integer class indices "
        "or floating class probabilities"
    )


def _class_weights(weight: ArrayLike | None, classes: int) -> np.ndarray | None:
    """Class weights as contiguous float64 ``(classes,)``, finite and not subnormal; or None."""
    if weight is None:
        return None
    weight_array = as_real_array(weight, "weight")
    if weight_array.shape != (classes,):
        raise ValueError(
            f"weight: expected shape ({classes},) (one weight per class); got {weight_array.shape}"
        )
    class_weight = np.ascontiguousarray(weight_array, dtype=np.float64)
    if not np.isfinite(class_weight).all():
        raise ValueError("weight: every class weight must be finite")
    check_not_subnormal(class_weight, "weight")
    return class_weight


@overload
def cross_entropy(
    logits: ArrayLike,
    target: ArrayLike,
    *,
    reduction: ScalarReduction = ...,
    weight: ArrayLike | None = ...,
    ignore_index: int = ...,
    label_smoothing: float = ...,
    sample_weight: ArrayLike | None = ...,
    return_grad: Literal[False] = ...,
) -> float: ...
@overload
def cross_entropy(
    logits: ArrayLike,
    target: ArrayLike,
    *,
    reduction: Literal["none"],
    weight: ArrayLike | None = ...,
    ignore_index: int = ...,
    label_smoothing: float = ...,
    sample_weight: ArrayLike | None = ...,
    return_grad: Literal[False] = ...,
) -> np.ndarray: ...
@overload
def cross_entropy(
    logits: ArrayLike,
    target: ArrayLike,
    *,
    reduction: ScalarReduction = ...,
    weight: ArrayLike | None = ...,
    ignore_index: int = ...,
    label_smoothing: float = ...,
    sample_weight: ArrayLike | None = ...,
    return_grad: Literal[True],
) -> tuple[float, np.ndarray]: ...
@overload
def cross_entropy(
    logits: ArrayLike,
    target: ArrayLike,
    *,
    reduction: Literal["none"],
    weight: ArrayLike | None = ...,
    ignore_index: int = ...,
    label_smoothing: float = ...,
    sample_weight: ArrayLike | None = ...,
    return_grad: Literal[True],
) -> tuple[np.ndarray, np.ndarray]: ...
@overload
def cross_entropy(
    logits: ArrayLike,
    target: ArrayLike,
    *,
    reduction: Reduction = ...,
    weight: ArrayLike | None = ...,
    ignore_index: int = ...,
    label_smoothing: float = ...,
    sample_weight: ArrayLike | None = ...,
    return_grad: bool = ...,
) -> LossAndGrad: ...
def cross_entropy(
    logits: ArrayLike,
    target: ArrayLike,
    *,
    reduction: Reduction = "mean",
    weight: ArrayLike | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    sample_weight: ArrayLike | None = None,
    return_grad: bool = False,
) -> LossAndGrad:
    """Cross-entropy of softmax(logits) against class indices or class probabilities.

    Semantics are those of ``torch.nn.functional.cross_entropy``, computed with a stable
    (max-subtracted) log-softmax, so finite logits of any magnitude give a finite, correct loss.

    Args:
        logits: ``(N, C)``, ``(C,)`` or K-dimensional ``(N, C, d1, ..., dK)`` scores (e.g.
            segmentation ``(N, C, H, W)``), any strides (a class stride other than 1 is read
            without copying the logits).
        target: integer class indices of shape ``(N,)`` (a scalar for ``(C,)`` logits,
            ``(N, d1, ..., dK)`` for K-dimensional ones), each in ``[0, C)`` or equal to
            ``ignore_index``; or floating class probabilities with the shape of ``logits`` (not
            checked to sum to 1; ``ignore_index`` does not apply).
        reduction: ``"none"``, ``"sum"``, ``"mean"`` (PyTorch's: divided by the summed weight of
            the non-ignored targets for indices, by the number of rows, ``N * d1 * ... * dK``, for
            probabilities; ``nan`` when every row is ignored) or ``"batchmean"`` (sum / N, N =
            ``logits.shape[0]``).
        weight: optional ``(C,)`` class weights.
        ignore_index: class index whose rows contribute nothing.
        label_smoothing: in ``[0, 1]``; mixes the target with the uniform distribution.
        sample_weight: optional ``(N,)`` finite weights >= 0 (scikit-learn's ``log_loss``; for
            K-dimensional inputs applied at every position of the sample, or of the target's
            shape, one per element): each multiplies its element's loss and gradient and its share
            of the denominators: ``"mean"`` divides by ``sum(w_i * weight[t_i])`` over the
            non-ignored elements (``sum(w)`` for probabilities), ``"batchmean"`` by ``sum(w)``
            over the samples (element weights: ``sum(w) / (d1 * ... * dK)``).
        return_grad: also return the gradient w.r.t. ``logits`` (softmax minus the target
            distribution, scaled by the reduction), written in the same pass as the loss.

    Returns:
        A Python float for a reduction (accumulated in float64); for ``"none"``, the losses of
        the target's shape (``(N,)``; a 0-d array for ``(C,)`` logits; ``(N, d1, ..., dK)``) in
        the computation dtype. With ``return_grad``: ``(loss, grad)``, ``grad`` shaped like
        ``logits`` (for K-dimensional logits a channels-last view, ``np.moveaxis`` of the
        contiguous ``(N, d1, ..., dK, C)`` array the kernel writes).
    """
    if (
        weight is None
        and sample_weight is None
        and return_grad is False
        and type(ignore_index) is int
        and ignore_index == -100
        and type(label_smoothing) is float
        and label_smoothing == 0.0
    ):
        # The common call: C-contiguous logits, int64 labels, a plain reduction, no options.
        result = _core.cross_entropy_fast(logits, target, reduction)
        if result is not None:
            return result
    reduction = check_reduction(reduction)
    return_grad = check_flag(return_grad, "return_grad")
    ignore_index = check_int(ignore_index, "ignore_index")
    smoothing = check_label_smoothing(label_smoothing)
    partial, out, grad = cross_entropy_partial(
        logits, target, weight, ignore_index, smoothing, reduction, return_grad, sample_weight
    )
    loss = out if out is not None else partial.result(reduction)
    return (loss, grad) if grad is not None else loss


def cross_entropy_partial(
    logits: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None,
    ignore_index: int,
    smoothing: float,
    reduction: str,
    return_grad: bool,
    sample_weight: ArrayLike | None = None,
) -> tuple[Partial, np.ndarray | None, np.ndarray | None]:
    """One cross-entropy pass over checked scalars: its partial sums, and the row losses ("none",
    0-d for a single sample, the target's shape for K-dimensional inputs) and the gradient of
    `reduction` w.r.t. the logits when asked for."""
    partial, out, grad, _ = cross_entropy_pass(
        logits, target, weight, ignore_index, smoothing, reduction, return_grad, sample_weight
    )
    return partial, out, grad


def _position(flat: int, shape: tuple[int, ...]) -> str:
    """Flat element `flat` of an array of `shape` in a message: ``5``, or ``(1, 2, 0)`` past 1-D
    (the form bindings.cpp's class-index check uses)."""
    if len(shape) <= 1:
        return str(flat)
    return str(tuple(int(i) for i in np.unravel_index(flat, shape)))


def _ce_index_shape(logits_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of the class indices that go with `logits_shape`: () for (C,), (N,) for (N, C),
    (N, d1, ..., dK) for (N, C, d1, ..., dK)."""
    return () if len(logits_shape) == 1 else (logits_shape[0],) + logits_shape[2:]


def _ce_rows(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Logits (or probabilities of their shape) as the kernel's rows: (1, C) for (C,), (N, C) for
    (N, C), and for (N, C, d1, ..., dK) the (N, S, C) view, S = d1 * ... * dK, whose row (n, s)
    is position s of sample n, in the array's own memory (class stride H * W for the natural
    (N, C, H, W) layout: the kernel gathers such rows, not a copy here). Only spatial axes that do
    not merge into one stride (e.g. a slice of W) make a copy, channels-last."""
    array = to_kernel_layout(array, dtype)
    if array.ndim <= 2:
        return array.reshape(1, -1) if array.ndim == 1 else array
    shape = array.shape
    rows_per_sample = int(np.prod(shape[2:], dtype=np.int64))
    moved = np.moveaxis(array, 1, -1)
    try:
        return moved.reshape((shape[0], rows_per_sample, shape[1]), copy=False)
    except ValueError:
        return np.ascontiguousarray(moved).reshape(shape[0], rows_per_sample, shape[1])


def _ce_targets(
    target: ArrayLike, logits_shape: tuple[int, ...], dtype: np.dtype
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
    """(int64 class indices, one per row; None; the target array) for an integer target of the
    index shape (1-D: any stride; K-dimensional: C-contiguous of that shape, so that the kernel's
    check names a multi-index), or (None; probabilities as rows, _ce_rows; the target array) for
    a floating one of the logits' shape. The kernels check the index values."""
    try:
        target_array = np.asarray(target)
    except (ValueError, TypeError) as error:
        raise ValueError(f"target: cannot be converted to an array ({error})") from None
    index_shape = _ce_index_shape(logits_shape)
    kind = target_array.dtype.kind
    if kind in "iu":
        if target_array.shape != index_shape:
            if len(logits_shape) == 1:
                raise ValueError(
                    f"logits must be (N, C) for N targets; got logits {logits_shape} and target "
                    f"{target_array.shape} (a single sample's logits (C,) take a scalar class index)"
                )
            what = "(N,)" if len(logits_shape) == 2 else "(N, d1, ..., dK)"
            raise ValueError(
                f"target: class indices for logits {logits_shape} must have shape {what} = "
                f"{index_shape}; got {target_array.shape}"
            )
        int64_max = np.iinfo(np.int64).max
        if target_array.dtype.kind == "u" and target_array.size and target_array.max() > int64_max:
            flat = int(np.argmax(target_array.reshape(-1) > int64_max))
            raise ValueError(
                f"target: class index {int(target_array.reshape(-1)[flat])} at position "
                f"{_position(flat, index_shape)} is out of range"
            )
        if target_array.ndim <= 1:
            return to_kernel_layout(target_array.reshape(-1), np.dtype(np.int64)), None, target_array
        return np.ascontiguousarray(target_array, dtype=np.int64), None, target_array
    if is_floating(target_array.dtype):
        if target_array.shape == logits_shape:
            return None, _ce_rows(target_array, dtype), target_array
        if target_array.shape == index_shape:
            raise ValueError(
                f"target: class indices must be integers; got a {target_array.dtype} target of shape "
                f"{target_array.shape} for logits {logits_shape} (convert it with "
                f"target.astype(np.int64)); class probabilities must have the shape of logits"
            )
        raise ValueError(
            f"target: probabilities must have the shape of logits {logits_shape}; got "
            f"{target_array.shape} (class indices must be an integer array of shape {index_shape})"
        )
    raise TypeError(
        f"target: dtype {target_array.dtype} is not supported; expected integer class indices "
        "or floating class probabilities"
    )


def _ce_sample_weights(
    value: ArrayLike | None, index_shape: tuple[int, ...], samples: int
) -> tuple[np.ndarray | None, ExactSum]:
    """(one float64 weight per row, or None; "batchmean"'s denominator). Weights are ``(N,)``
    (K-dimensional inputs: applied to every position of sample n) or, for K-dimensional inputs,
    of the target's shape (one per element). The denominator is N unweighted, ``sum(w)`` for
    ``(N,)`` weights, and for element weights the sum of ``w / S`` (S positions per sample: the
    weight of a sample is its mean element weight, so equal element weights give what ``(N,)``
    weights give)."""
    if value is None:
        return None, Partial.count(samples)
    positions = int(np.prod(index_shape[1:], dtype=np.int64)) if len(index_shape) > 1 else 1
    if len(index_shape) <= 1:
        weights = sample_weights(value, samples)
        assert weights is not None
        return weights, ExactSum.of(weights)
    weight_array = as_real_array(value, "sample_weight")
    if weight_array.shape == (samples,):
        weights = sample_weights(weight_array, samples)
        assert weights is not None
        return np.repeat(weights, positions), ExactSum.of(weights)
    if weight_array.shape != index_shape:
        raise ValueError(
            f"sample_weight: expected shape ({samples},) (one weight per sample) or the target's shape "
            f"{index_shape} (one per element); got {weight_array.shape}"
        )
    weights = sample_weights(weight_array.reshape(-1), samples * positions)
    assert weights is not None
    return weights, ExactSum.of(weights / positions)


def cross_entropy_pass(
    logits: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None,
    ignore_index: int,
    smoothing: float,
    reduction: str,
    return_grad: bool,
    sample_weight: ArrayLike | None = None,
    return_target_grad: bool = False,
) -> tuple[Partial, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """:func:`cross_entropy_partial`, and with ``return_target_grad`` the gradient of `reduction`
    w.r.t. probability targets (None for class indices), written in the same pass.

    Gradients of K-dimensional inputs are returned as ``np.moveaxis`` views of the kernel's
    contiguous ``(N, d1, ..., dK, C)`` buffer: shape ``(N, C, d1, ..., dK)``, channels-last
    strides."""
    logits_array = as_real_array(logits, "logits")
    if logits_array.ndim == 0:
        raise ValueError("logits must have shape (N, C), (C,) or (N, C, d1, ..., dK); got a 0-d array")
    shape = logits_array.shape
    single = logits_array.ndim == 1
    classes = shape[0] if single else shape[1]
    if classes == 0:
        raise ValueError("logits: need at least one class (C >= 1)")
    dtype = compute_dtype(logits_array)
    # Rows in the logits' own memory, any strides: the kernel reads every row one way (gathering
    # rows whose classes are not adjacent), so the loss has the same bits whatever the layout.
    logits_rows = _ce_rows(logits_array, dtype)
    samples = 1 if single else shape[0]
    rows = logits_rows.shape[0] * (logits_rows.shape[1] if logits_rows.ndim == 3 else 1)
    index_shape = _ce_index_shape(shape)

    target_index, target_prob, target_array = _ce_targets(target, shape, dtype)
    class_weight = _class_weights(weight, classes)

    sample_weight_array, batch_denominator = _ce_sample_weights(sample_weight, index_shape, samples)
    # Every divisor but PyTorch's weighted "mean" (and a sample-weighted one) is known up front;
    # that one the kernel forms from the labels and weights before it writes the gradient.
    by_denominator = reduction == "mean" and (target_index is not None or sample_weight_array is not None)
    if reduction == "batchmean":
        divisor = float(batch_denominator)
    elif reduction == "mean" and not by_denominator:
        divisor = float(rows)
    else:
        divisor = 1.0
    out = np.empty(rows, dtype=dtype) if reduction == "none" else None
    # Gradients in the kernel's row order: (N, d1, ..., dK, C) for K-dimensional inputs.
    grad_shape = shape if logits_array.ndim <= 2 else (shape[0],) + shape[2:] + (classes,)
    grad, returned_grad = _gradient_buffers(grad_shape, dtype, logits_array) if return_grad else (None, None)
    want_target_grad = return_target_grad and target_prob is not None
    d_target, returned_d_target = (
        _gradient_buffers(grad_shape, dtype, target_array) if want_target_grad else (None, None)
    )
    loss_state, denominator_state = _core.cross_entropy(
        logits_rows,
        target_index,
        target_prob,
        class_weight,
        ignore_index,
        smoothing,
        out,
        None if grad is None else grad.reshape(rows, classes),
        1.0 / divisor if divisor else np.inf,
        by_denominator,
        sample_weight_array,
        None if d_target is None else d_target.reshape(rows, classes),
    )
    partial = Partial(ExactSum(loss_state), ExactSum(denominator_state), batch_denominator)

    def finish(buffer: np.ndarray | None, returned: np.ndarray | None) -> np.ndarray | None:
        if buffer is None or returned is None:
            return None
        finished = _finish_gradient(buffer, returned)
        return finished if logits_array.ndim <= 2 else np.moveaxis(finished, -1, 1)

    losses = None if out is None else out.reshape(index_shape)
    return partial, losses, finish(grad, returned_grad), finish(d_target, returned_d_target)


def _matrix(value: ArrayLike, name: str) -> np.ndarray:
    array = as_real_array(value, name)
    if array.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D); got {array.shape}")
    return array


@overload
def info_nce(
    query: ArrayLike,
    positive_key: ArrayLike,
    negative_keys: ArrayLike | None = ...,
    *,
    temperature: float = ...,
    reduction: ScalarReduction = ...,
    negative_mode: Literal["unpaired", "paired"] = ...,
    normalize: bool = ...,
    symmetric: bool = ...,
    query_labels: ArrayLike | None = ...,
    key_labels: ArrayLike | None = ...,
    decoupled: bool = ...,
    return_grad: Literal[False] = ...,
) -> float: ...
@overload
def info_nce(
    query: ArrayLike,
    positive_key: ArrayLike,
    negative_keys: ArrayLike | None = ...,
    *,
    temperature: float = ...,
    reduction: Literal["none"],
    negative_mode: Literal["unpaired", "paired"] = ...,
    normalize: bool = ...,
    symmetric: bool = ...,
    query_labels: ArrayLike | None = ...,
    key_labels: ArrayLike | None = ...,
    decoupled: bool = ...,
    return_grad: Literal[False] = ...,
) -> np.ndarray: ...
@overload
def info_nce(
    query: ArrayLike,
    positive_key: ArrayLike,
    negative_keys: ArrayLike | None = ...,
    *,
    temperature: float = ...,
    reduction: ScalarReduction = ...,
    negative_mode: Literal["unpaired", "paired"] = ...,
    normalize: bool = ...,
    symmetric: bool = ...,
    query_labels: ArrayLike | None = ...,
    key_labels: ArrayLike | None = ...,
    decoupled: bool = ...,
    return_grad: Literal[True],
) -> tuple[float, InfoNceGrads]: ...
@overload
def info_nce(
    query: ArrayLike,
    positive_key: ArrayLike,
    negative_keys: ArrayLike | None = ...,
    *,
    temperature: float = ...,
    reduction: Literal["none"],
    negative_mode: Literal["unpaired", "paired"] = ...,
    normalize: bool = ...,
    symmetric: bool = ...,
    query_labels: ArrayLike | None = ...,
    key_labels: ArrayLike | None = ...,
    decoupled: bool = ...,
    return_grad: Literal[True],
) -> tuple[np.ndarray, InfoNceGrads]: ...
@overload
def info_nce(
    query: ArrayLike,
    positive_key: ArrayLike,
    negative_keys: ArrayLike | None = ...,
    *,
    temperature: float = ...,
    reduction: Reduction = ...,
    negative_mode: Literal["unpaired", "paired"] = ...,
    normalize: bool = ...,
    symmetric: bool = ...,
    query_labels: ArrayLike | None = ...,
    key_labels: ArrayLike | None = ...,
    decoupled: bool = ...,
    return_grad: bool = ...,
) -> InfoNceLossAndGrad: ...
def info_nce(
    query: ArrayLike,
    positive_key: ArrayLike,
    negative_keys: ArrayLike | None = None,
    *,
    temperature: float = 0.07,
    reduction: Reduction = "mean",
    negative_mode: Literal["unpaired", "paired"] = "unpaired",
    normalize: bool = False,
    symmetric: bool = False,
    query_labels: ArrayLike | None = None,
    key_labels: ArrayLike | None = None,
    decoupled: bool = False,
    return_grad: bool = False,
) -> InfoNceLossAndGrad:
    """InfoNCE: a (K+1)-way cross-entropy whose true class is the positive key.

    Row ``i``'s logits are ``[q_i . k+_i, q_i . k_1, ..., q_i . k_M] / temperature`` with the true
    class at index 0. The logits are produced tile by tile with an online log-sum-exp, so the
    ``N x (M+1)`` matrix is never stored: extra memory is O(N) plus a fixed tile.

    Args:
        query: ``(N, D)``.
        positive_key: ``(N, D)``.
        negative_keys: ``None`` for in-batch negatives (``logits = query @ positive_key.T /
            temperature``, row ``i``'s label is ``i``, as SimCLR/CLIP); ``(M, D)`` for one shared
            queue (``negative_mode="unpaired"``, MoCo); ``(N, M, D)`` for per-query negatives
            (``negative_mode="paired"``).
        temperature: finite and > 0; small values sharpen the softmax, large ones flatten it.
        reduction: ``"mean"`` (= ``"batchmean"``), ``"sum"`` or ``"none"`` (one loss per query).
        negative_mode: ``"unpaired"`` or ``"paired"``; checked even when ``negative_keys`` is None.
        normalize: L2-normalise every query and key row first (``x / max(||x||, 1e-12)``), as
            ``info-nce-pytorch``'s ``InfoNCE`` does.
        symmetric: with in-batch negatives only, average the query->key and key->query losses
            (CLIP). With labels, the key->query direction takes ``key_labels`` as its query labels
            and ``query_labels`` as its key labels.
        query_labels: ``(N,)`` integer class labels of the queries, or None. In-batch, row ``i``'s
            positives are ``P(i) = {i} | {j : key_labels[j] == query_labels[i]}`` and its loss is
            ``logsumexp_j z_ij - mean_{p in P(i)} z_ip`` (SupCon's L_out). With explicit
            negatives, a negative of the query's label is a false negative and leaves the softmax.
        key_labels: integer labels of the keys: ``(N,)`` in-batch (the rows of ``positive_key``;
            default ``query_labels``, the two views of one sample sharing its label), ``(M,)``
            for a queue, ``(N, M)`` for paired negatives (required with explicit negatives).
        decoupled: leave the positives out of the log-sum-exp (DCL): in-batch, the sum runs over
            the keys outside ``P(i)``; with explicit negatives, over the kept negatives. A row left
            with nothing to sum has loss ``-inf`` (the log of an empty sum, log 0); its gradient is
            the positives' term alone (the empty log-sum-exp is a constant).
        return_grad: also return ``(d_query, d_positive_key, d_negative_keys)``
            (``d_negative_keys`` is None without negatives), from a second streaming pass that
            recomputes each tile's logits from the saved log-sum-exps: memory stays O(N + tile).
    """
    reduction = check_reduction(reduction)
    return_grad = check_flag(return_grad, "return_grad")
    problem = InfoNceProblem(
        query,
        positive_key,
        negative_keys,
        temperature=temperature,
        negative_mode=negative_mode,
        normalize=normalize,
        symmetric=symmetric,
        query_labels=query_labels,
        key_labels=key_labels,
        decoupled=decoupled,
    )
    if return_grad:
        # Every buffer before any work: an allocation that fails does so now, not after the forward pass.
        problem.allocate_backward()
    row_loss = problem.forward(keep_for_backward=return_grad)
    if reduction == "none":
        loss: LossResult = row_loss.astype(problem.dtype)
    else:
        loss = problem.partial(row_loss).result(reduction)
    if not return_grad:
        return loss
    divisor = problem.partial(row_loss).divisor(reduction)
    scale = 1.0 / divisor if divisor else 1.0
    return loss, problem.backward(np.full(problem.rows, scale))


class _InfoNceBuffers:
    """Everything one InfoNCE backward pass writes: each gradient as the buffer the kernel
    accumulates into and the array returned (see _gradient_buffers), and the kernel's scratch."""

    def __init__(self, problem: InfoNceProblem) -> None:
        query, positive, negatives = problem._originals
        self.query = _gradient_buffers(query.shape, problem.dtype, query, fill=np.zeros)
        self.positive = _gradient_buffers(positive.shape, problem.dtype, positive, fill=np.zeros)
        self.negatives = (
            None
            if negatives is None
            else _gradient_buffers(negatives.shape, problem.dtype, negatives, fill=np.zeros)
        )
        # One scratch serves both directions of a symmetric call: they run one after the other.
        size = _core.info_nce_backward_workspace(
            problem.query, problem.positive, problem.mode, problem.negatives
        )
        self.workspace = np.empty(size, dtype=problem.dtype)


def _labels(value: ArrayLike, name: str, shape: tuple[int, ...], shape_text: str) -> np.ndarray:
    """Integer labels of exactly `shape`, as aligned contiguous int64 (the kernels' layout;
    unsigned values wrap to int64, which keeps equality)."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as error:  # ragged nested sequences
        raise ValueError(f"{name}: cannot be converted to an array ({error})") from None
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers (any integer dtype); got dtype {array.dtype}")
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape_text} = {shape}; got {array.shape}")
    return np.require(array.astype(np.int64, copy=False), dtype=np.int64, requirements=["C", "A"])


def _stats_rows(stats: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    return (None, None) if stats is None else (stats[0], stats[1])


class InfoNceProblem:
    """One validated InfoNCE call: the arrays in kernel layout, a forward pass that keeps the
    per-row log-sum-exps, and a backward pass for any per-row upstream gradient (which is what
    ``reduction="none"`` needs under autograd)."""

    def __init__(
        self,
        query: ArrayLike,
        positive_key: ArrayLike,
        negative_keys: ArrayLike | None,
        *,
        temperature: Any,
        negative_mode: Any,
        normalize: Any,
        symmetric: Any,
        query_labels: Any = None,
        key_labels: Any = None,
        decoupled: Any = False,
    ) -> None:
        check_choice(negative_mode, "negative_mode", NEGATIVE_MODES)
        tau = check_temperature(temperature)
        self.temperature = tau
        self.normalize = check_flag(normalize, "normalize")
        self.symmetric = check_flag(symmetric, "symmetric")
        self.decoupled = check_flag(decoupled, "decoupled")
        self.inv_tau = 1.0 / tau

        query_array = _matrix(query, "query")
        positive_array = _matrix(positive_key, "positive_key")
        if positive_array.shape != query_array.shape:
            raise ValueError(
                f"query and positive_key must have the same shape (N, D); got query {query_array.shape} "
                f"and positive_key {positive_array.shape}"
            )
        rows, dim = query_array.shape
        negatives_array = None
        self.mode = _IN_BATCH
        if negative_keys is not None:
            if self.symmetric:
                raise ValueError(
                    "symmetric=True is defined for in-batch negatives only: pass negative_keys=None"
                )
            negatives_array = as_real_array(negative_keys, "negative_keys")
            if negative_mode == "unpaired":
                self.mode = _UNPAIRED
                if negatives_array.ndim != 2 or negatives_array.shape[1] != dim:
                    raise ValueError(
                        f"negative_keys must have shape (M, {dim}) with negative_mode='unpaired'; got "
                        f"{negatives_array.shape}"
                    )
            else:
                self.mode = _PAIRED
                if (
                    negatives_array.ndim != 3
                    or negatives_array.shape[0] != rows
                    or negatives_array.shape[2] != dim
                ):
                    raise ValueError(
                        f"negative_keys must have shape ({rows}, M, {dim}) with negative_mode='paired'; got "
                        f"{negatives_array.shape}"
                    )
        self.rows, self.dim = rows, dim
        self.query_labels, self.key_labels = self._check_labels(query_labels, key_labels, negatives_array)
        self._originals = (query_array, positive_array, negatives_array)
        arrays = (query_array, positive_array) + (() if negatives_array is None else (negatives_array,))
        self.dtype = compute_dtype(*arrays)
        if self.inv_tau > float(np.finfo(self.dtype).max):
            raise ValueError(
                f"temperature: {tau!r} is below 1 / {np.finfo(self.dtype).max} (the largest "
                f"{np.dtype(self.dtype).name}, the computation dtype of these inputs), so 1 / temperature "
                "overflows it; pass float64 arrays"
            )
        self.query = to_kernel_layout(query_array, self.dtype, contiguous_rows=True)
        self.positive = to_kernel_layout(positive_array, self.dtype, contiguous_rows=True)
        self.negatives = (
            None
            if negatives_array is None
            else to_kernel_layout(negatives_array, self.dtype, contiguous_rows=True)
        )
        # Each direction's per-row log-sum-exp as (max, log of the scaled sum), for backward.
        self._row_stats: np.ndarray | None = None
        self._key_stats: np.ndarray | None = None
        self._backward_buffers: _InfoNceBuffers | None = None

    def _check_labels(
        self, query_labels: ArrayLike | None, key_labels: ArrayLike | None, negatives: np.ndarray | None
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        if query_labels is None:
            if key_labels is not None:
                raise ValueError("key_labels: given without query_labels; pass query_labels too")
            return None, None
        queries = _labels(query_labels, "query_labels", (self.rows,), "(N,)")
        if self.mode == _IN_BATCH:
            if key_labels is None:  # the two views of one sample share its label (SimCLR, SupCon)
                return queries, queries
            return queries, _labels(key_labels, "key_labels", (self.rows,), "(N,) with in-batch negatives")
        if key_labels is None:
            raise ValueError(
                "key_labels: required with query_labels and explicit negatives (the labels of the "
                "negative_keys rows)"
            )
        assert negatives is not None
        if self.mode == _UNPAIRED:
            return queries, _labels(key_labels, "key_labels", negatives.shape[:1], "(M,) with a queue")
        keys = _labels(key_labels, "key_labels", negatives.shape[:2], "(N, M) with paired negatives")
        return queries, keys

    def _label_args(self, swapped: bool = False) -> dict[str, Any]:
        """The kernel's label arguments; swapped for the keys -> queries direction."""
        queries, keys = (
            (self.key_labels, self.query_labels) if swapped else (self.query_labels, self.key_labels)
        )
        return {"query_labels": queries, "key_labels": keys, "decoupled": self.decoupled}

    def shard_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """For one shard of a queue of negatives: each row's positive logit and the log-sum-exp of
        its logits against these negatives alone (-inf for none), both float64."""
        if self.mode == _IN_BATCH:
            raise ValueError("negative_keys: a queue shard needs explicit negatives")
        row_loss = np.empty(self.rows, dtype=np.float64)
        stats = np.empty((2, self.rows), dtype=np.float64)
        positive = np.empty(self.rows, dtype=np.float64)
        _core.info_nce(
            self.query,
            self.positive,
            self.mode,
            self.negatives,
            self.inv_tau,
            self.normalize,
            row_loss,
            stats[0],
            stats[1],
            positive_in_sum=False,
            positive_logit=positive,
            **self._label_args(),
        )
        with np.errstate(invalid="ignore"):  # no negatives: max -inf, log of a zero sum -inf
            lse = np.where(np.isneginf(stats[0]), -np.inf, stats[0] + stats[1])
        return positive, lse

    def partial(self, row_loss: np.ndarray) -> Partial:
        """The reduction state of these row losses: "mean" and "batchmean" both divide by N."""
        rows = Partial.count(self.rows)
        return Partial(ExactSum.of(row_loss), rows, rows)

    def allocate_backward(self) -> None:
        """Allocates what backward() writes (the gradients and the kernel's scratch), so a call can
        fail with MemoryError before its forward pass rather than after it."""
        self._backward_buffers = _InfoNceBuffers(self)

    def forward(self, keep_for_backward: bool = False) -> np.ndarray:
        """The per-query losses in float64 (averaged over both directions when symmetric)."""
        row_loss = np.empty(self.rows, dtype=np.float64)
        self._row_stats = np.empty((2, self.rows)) if keep_for_backward else None
        key_loss = np.empty(self.rows, dtype=np.float64) if self.symmetric else row_loss
        self._key_stats = np.empty((2, self.rows)) if keep_for_backward and self.symmetric else None
        _core.info_nce(
            self.query,
            self.positive,
            self.mode,
            self.negatives,
            self.inv_tau,
            self.normalize,
            row_loss,
            *_stats_rows(self._row_stats),
            **self._label_args(),
        )
        if self.symmetric:
            _core.info_nce(
                self.positive,
                self.query,
                _IN_BATCH,
                None,
                self.inv_tau,
                self.normalize,
                key_loss,
                *_stats_rows(self._key_stats),
                **self._label_args(swapped=True),
            )
            row_loss = 0.5 * (row_loss + key_loss)
        return row_loss

    def backward(self, row_grad: np.ndarray) -> InfoNceGrads:
        """Gradients of sum_i row_grad[i] * loss_i: (d_query, d_positive_key, d_negative_keys)."""
        return self.backward_with_temperature(row_grad, temperature=False)[0]

    def backward_with_temperature(
        self, row_grad: np.ndarray, temperature: bool = True
    ) -> tuple[InfoNceGrads, float | None]:
        """backward(), and with temperature=True the derivative of sum_i row_grad[i] * loss_i
        w.r.t. the temperature: -(1/tau) sum_i row_grad[i] m_i, with the kernel's per-row
        m_i = sum_{j in D(i)} p_ij z_ij - mean_{p in P(i)} z_ip, summed exactly (math.fsum) so
        the result does not depend on any summation order."""
        if self._row_stats is None:
            raise RuntimeError("InfoNceProblem.backward needs forward(keep_for_backward=True) first")
        row_grad = np.ascontiguousarray(row_grad, dtype=np.float64)
        if self.symmetric:
            row_grad = 0.5 * row_grad
        # Buffers serve one backward pass (the kernels accumulate into them).
        buffers, self._backward_buffers = self._backward_buffers, None
        if buffers is None:
            buffers = _InfoNceBuffers(self)
        d_query, d_positive, workspace = buffers.query[0], buffers.positive[0], buffers.workspace
        d_negatives = None if buffers.negatives is None else buffers.negatives[0]
        moments = np.empty((2 if self.symmetric else 1, self.rows)) if temperature else None
        _core.info_nce_backward(
            self.query,
            self.positive,
            self.mode,
            self.negatives,
            self.inv_tau,
            self.normalize,
            *_stats_rows(self._row_stats),
            row_grad,
            d_query,
            d_positive,
            d_negatives,
            workspace,
            row_temperature_moment=None if moments is None else moments[0],
            **self._label_args(),
        )
        if self.symmetric:
            # The keys -> queries direction: the two arrays swap roles.
            _core.info_nce_backward(
                self.positive,
                self.query,
                _IN_BATCH,
                None,
                self.inv_tau,
                self.normalize,
                *_stats_rows(self._key_stats),
                row_grad,
                d_positive,
                d_query,
                None,
                workspace,
                row_temperature_moment=None if moments is None else moments[1],
                **self._label_args(swapped=True),
            )
        d_temperature = None
        if moments is not None:
            # row_grad is already halved when symmetric: each direction's rows weigh half
            weighted = (moments * row_grad).ravel()
            d_temperature = -self.inv_tau * math.fsum(weighted.tolist())
        grads = (
            _finish_gradient(*buffers.query),
            _finish_gradient(*buffers.positive),
            None if buffers.negatives is None else _finish_gradient(*buffers.negatives),
        )
        return grads, d_temperature


# -- linear cross-entropy -------------------------------------------------------------------

# linear_cross_entropy's gradient: (d_input, d_linear_weight, d_linear_bias); the last is None
# without a bias.
LinearGrads = tuple[np.ndarray, np.ndarray, np.ndarray | None]
LinearLossAndGrad = LossResult | tuple[LossResult, LinearGrads]
# Each gradient as (the buffer the kernel writes, the array returned): see _gradient_buffers.
_LinearBuffers = tuple[
    tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray] | None
]


def check_z_loss(value: Any, name: str = "z_loss") -> float:
    return check_real(value, name, 0.0, sys.float_info.max, expected="finite and >= 0")


def check_softcap(value: Any, name: str = "softcap") -> float:
    """None (no cap) as 0.0, the kernels' "none"; else a finite number > 0."""
    if value is None:
        return 0.0
    return check_real(value, name, sys.float_info.min, sys.float_info.max, expected="None or finite and > 0")


class LinearCrossEntropyProblem:
    """One validated linear cross-entropy call: the arrays in kernel layout, a forward pass that
    keeps each row's log-sum-exp, and a backward pass for any per-row upstream gradient (which
    is what ``reduction="none"`` needs under autograd). The ``N x V`` logits never exist."""

    def __init__(
        self,
        input: ArrayLike,  # noqa: A002
        linear_weight: ArrayLike,
        target: ArrayLike,
        *,
        linear_bias: ArrayLike | None,
        weight: ArrayLike | None,
        ignore_index: Any,
        label_smoothing: Any,
        z_loss: Any,
        softcap: Any,
    ) -> None:
        self.ignore_index = check_int(ignore_index, "ignore_index")
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.z_loss = check_z_loss(z_loss)
        self.softcap = check_softcap(softcap)

        input_array = as_real_array(input, "input")
        if input_array.ndim != 2:
            raise ValueError(f"input must have shape (N, H); got {input_array.shape}")
        rows, hidden = input_array.shape
        weight_array = as_real_array(linear_weight, "linear_weight")
        if weight_array.ndim != 2 or weight_array.shape[1] != hidden:
            raise ValueError(
                f"linear_weight must have shape (V, {hidden}) (V classes, the H of input "
                f"{input_array.shape}); got {weight_array.shape}"
            )
        classes = weight_array.shape[0]
        if classes == 0:
            raise ValueError("linear_weight: need at least one class (V >= 1); got shape (0, H)")
        self.rows, self.hidden, self.classes = rows, hidden, classes
        self.dtype = compute_dtype(input_array, weight_array)
        if self.softcap and 1.0 / self.softcap > float(np.finfo(self.dtype).max):
            raise ValueError(
                f"softcap: {softcap!r} is below 1 / {np.finfo(self.dtype).max} (the largest "
                f"{np.dtype(self.dtype).name}, the computation dtype of these inputs), so x / softcap "
                "overflows it; pass float64 arrays"
            )
        bias_array = None
        if linear_bias is not None:
            bias_array = as_real_array(linear_bias, "linear_bias")
            if bias_array.shape != (classes,):
                raise ValueError(
                    f"linear_bias: expected shape ({classes},) (one bias per row of linear_weight); got "
                    f"{bias_array.shape}"
                )
        self._originals = (input_array, weight_array, bias_array)
        self.input = np.ascontiguousarray(to_kernel_layout(input_array, self.dtype, contiguous_rows=True))
        self.linear_weight = np.ascontiguousarray(
            to_kernel_layout(weight_array, self.dtype, contiguous_rows=True)
        )
        self.linear_bias = None if bias_array is None else np.ascontiguousarray(bias_array, dtype=self.dtype)
        target_index, target_prob = _targets(target, (rows,), (rows, classes), self.dtype, "shape (N, V) =")
        self.target_index = None if target_index is None else np.ascontiguousarray(target_index)
        self.target_prob = None if target_prob is None else np.ascontiguousarray(target_prob)
        self.class_weight = _class_weights(weight, classes)
        # Each row's log-sum-exp as (max, log of the scaled sum), for backward.
        self._row_stats: np.ndarray | None = None
        self._backward_buffers: _LinearBuffers | None = None

    def _options(
        self,
    ) -> tuple[
        np.ndarray,
        np.ndarray,
        np.ndarray | None,
        np.ndarray | None,
        np.ndarray | None,
        np.ndarray | None,
        int,
        float,
        float,
        float,
    ]:
        """The arguments both kernels take first: the arrays, then the options."""
        return (
            self.input,
            self.linear_weight,
            self.linear_bias,
            self.target_index,
            self.target_prob,
            self.class_weight,
            self.ignore_index,
            self.label_smoothing,
            self.z_loss,
            self.softcap,
        )

    def forward(self, keep_for_backward: bool = False) -> np.ndarray:
        """The per-row losses in float64 (z_loss included; 0 for ignored rows). Checks the
        class indices (ValueError naming a bad one and its position)."""
        row_loss = np.empty(self.rows, dtype=np.float64)
        self._row_stats = np.empty((2, self.rows)) if keep_for_backward else None
        _core.linear_cross_entropy(*self._options(), row_loss, *_stats_rows(self._row_stats))
        return row_loss

    def partial(self, row_loss: np.ndarray) -> Partial:
        """The reduction state of these (checked) row losses: "mean" divides by PyTorch's
        denominator (the summed class weight of the non-ignored rows; N for probabilities),
        "batchmean" by N."""
        rows = Partial.count(self.rows)
        mean = (
            rows
            if self.target_index is None
            else class_weighted_count(self.target_index, self.class_weight, self.ignore_index)
        )
        return Partial(ExactSum.of(row_loss), mean, rows)

    def _buffers(self) -> _LinearBuffers:
        input_array, weight_array, bias_array = self._originals
        return (
            _gradient_buffers(input_array.shape, self.dtype, input_array),
            _gradient_buffers(weight_array.shape, self.dtype, weight_array),
            None if bias_array is None else _gradient_buffers(bias_array.shape, self.dtype, bias_array),
        )

    def allocate_backward(self) -> None:
        """Allocates the gradients backward() writes, so that a call can fail with MemoryError
        before its forward pass rather than after it."""
        self._backward_buffers = self._buffers()

    def backward(self, row_grad: np.ndarray) -> LinearGrads:
        """Gradients of sum_i row_grad[i] * loss_i: (d_input, d_linear_weight, d_linear_bias)."""
        if self._row_stats is None:
            raise RuntimeError(
                "LinearCrossEntropyProblem.backward needs forward(keep_for_backward=True) first"
            )
        row_grad = np.array(row_grad, dtype=np.float64)
        if self.target_index is not None:
            # An ignored row's loss is the constant 0: nothing flows back through it, also when
            # the upstream gradient is inf ("mean" of rows that all have zero weight).
            row_grad[self.target_index == self.ignore_index] = 0.0
        # The kernel overwrites the buffers; each serves one backward pass.
        buffers, self._backward_buffers = self._backward_buffers, None
        if buffers is None:
            buffers = self._buffers()
        d_input, d_weight, d_bias = buffers
        _core.linear_cross_entropy_backward(
            *self._options(),
            self._row_stats[0],
            self._row_stats[1],
            row_grad,
            d_input[0],
            d_weight[0],
            None if d_bias is None else d_bias[0],
        )
        return (
            _finish_gradient(*d_input),
            _finish_gradient(*d_weight),
            None if d_bias is None else _finish_gradient(*d_bias),
        )


def reduction_row_grad(partial: Partial, reduction: str, rows: int) -> np.ndarray:
    """d(result)/d(row loss) for every row: 1 / what the reduction divides by ("none": 1, the
    gradient of the sum). A zero divisor ("mean" of rows that all carry zero weight) gives inf:
    IEEE's x / 0, as the loss itself."""
    divisor = partial.divisor(reduction)  # type: ignore[arg-type]
    return np.full(rows, 1.0 / divisor if divisor else np.inf)


@overload
def linear_cross_entropy(
    input: ArrayLike,  # noqa: A002
    linear_weight: ArrayLike,
    target: ArrayLike,
    *,
    linear_bias: ArrayLike | None = ...,
    weight: ArrayLike | None = ...,
    reduction: ScalarReduction = ...,
    ignore_index: int = ...,
    label_smoothing: float = ...,
    z_loss: float = ...,
    softcap: float | None = ...,
    return_grad: Literal[False] = ...,
) -> float: ...
@overload
def linear_cross_entropy(
    input: ArrayLike,  # noqa: A002
    linear_weight: ArrayLike,
    target: ArrayLike,
    *,
    linear_bias: ArrayLike | None = ...,
    weight: ArrayLike | None = ...,
    reduction: Literal["none"],
    ignore_index: int = ...,
    label_smoothing: float = ...,
    z_loss: float = ...,
    softcap: float | None = ...,
    return_grad: Literal[False] = ...,
) -> np.ndarray: ...
@overload
def linear_cross_entropy(
    input: ArrayLike,  # noqa: A002
    linear_weight: ArrayLike,
    target: ArrayLike,
    *,
    linear_bias: ArrayLike | None = ...,
    weight: ArrayLike | None = ...,
    reduction: ScalarReduction = ...,
    ignore_index: int = ...,
    label_smoothing: float = ...,
    z_loss: float = ...,
    softcap: float | None = ...,
    return_grad: Literal[True],
) -> tuple[float, LinearGrads]: ...
@overload
def linear_cross_entropy(
    input: ArrayLike,  # noqa: A002
    linear_weight: ArrayLike,
    target: ArrayLike,
    *,
    linear_bias: ArrayLike | None = ...,
    weight: ArrayLike | None = ...,
    reduction: Literal["none"],
    ignore_index: int = ...,
    label_smoothing: float = ...,
    z_loss: float = ...,
    softcap: float | None = ...,
    return_grad: Literal[True],
) -> tuple[np.ndarray, LinearGrads]: ...
@overload
def linear_cross_entropy(
    input: ArrayLike,  # noqa: A002
    linear_weight: ArrayLike,
    target: ArrayLike,
    *,
    linear_bias: ArrayLike | None = ...,
    weight: ArrayLike | None = ...,
    reduction: Reduction = ...,
    ignore_index: int = ...,
    label_smoothing: float = ...,
    z_loss: float = ...,
    softcap: float | None = ...,
    return_grad: bool = ...,
) -> LinearLossAndGrad: ...
def linear_cross_entropy(
    input: ArrayLike,  # noqa: A002
    linear_weight: ArrayLike,
    target: ArrayLike,
    *,
    linear_bias: ArrayLike | None = None,
    weight: ArrayLike | None = None,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    return_grad: bool = False,
) -> LinearLossAndGrad:
    """Cross-entropy of the logits ``input @ linear_weight.T + linear_bias`` against ``target``,
    without the logits: tiles of them feed an online log-sum-exp while in cache, so extra memory
    is O(N) plus fixed tiles per thread, whatever the number of classes.

    Semantics are those of ``torch.nn.functional.linear_cross_entropy`` (PyTorch 2.13), i.e.
    ``cross_entropy(input @ linear_weight.T + linear_bias, target, weight, ...)``, plus ``z_loss``
    and ``softcap``.

    Args:
        input: ``(N, H)`` embeddings.
        linear_weight: ``(V, H)`` classifier, one row per class. ``input`` and ``linear_weight``
            are computed in float32 when both are float32/float16, else in float64.
        target: integer class indices ``(N,)``, each in ``[0, V)`` or equal to ``ignore_index``;
            or floating class probabilities ``(N, V)`` (not checked to sum to 1; ``ignore_index``
            does not apply).
        linear_bias: optional ``(V,)`` bias added to the logits.
        weight: optional ``(V,)`` finite class weights.
        reduction: ``"none"`` (the ``(N,)`` row losses), ``"sum"``, ``"mean"`` (PyTorch's: divided
            by the summed class weight of the non-ignored rows for indices, by N for
            probabilities; ``nan`` when every row is ignored) or ``"batchmean"`` (sum / N).
        ignore_index: class index whose rows contribute nothing.
        label_smoothing: in ``[0, 1]``; mixes the target with the uniform distribution.
        z_loss: finite, >= 0: adds ``z_loss * lse_i ** 2`` (PaLM's auxiliary loss; ``lse_i`` the
            row's log-sum-exp of its logits) to each non-ignored row's loss; ``"mean"`` divides
            by the same denominator.
        softcap: None, or finite and > 0: every logit ``x`` becomes ``softcap * tanh(x / softcap)``
            (Gemma 2) before the softmax.
        return_grad: also return ``(d_input, d_linear_weight, d_linear_bias)`` (``d_linear_bias``
            is None without a bias), shaped like their arguments, from a second pass that
            recomputes each tile of logits from the saved log-sum-exps (no ``N x V`` buffer).

    Returns:
        A Python float for a reduction (an exact sum, rounded once); for ``"none"``, the ``(N,)``
        row losses in the computation dtype. With ``return_grad``: ``(loss, grads)``.
    """
    reduction = check_reduction(reduction)
    return_grad = check_flag(return_grad, "return_grad")
    problem = LinearCrossEntropyProblem(
        input,
        linear_weight,
        target,
        linear_bias=linear_bias,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
    )
    if return_grad:
        # Every buffer before any work: an allocation that fails does so now, not after the forward pass.
        problem.allocate_backward()
    row_loss = problem.forward(keep_for_backward=return_grad)
    partial = problem.partial(row_loss)
    loss: LossResult = row_loss.astype(problem.dtype) if reduction == "none" else partial.result(reduction)
    if not return_grad:
        return loss
    return loss, problem.backward(reduction_row_grad(partial, reduction, problem.rows))
