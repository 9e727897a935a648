"""Type stubs for ``fastloss._core``, the compiled kernels (cpp/bindings.cpp's PYBIND11_MODULE).

Private: users call the ``fastloss`` functions, which validate and convert every argument before
they reach these. Every kernel call on the main thread that can run for more than about a
millisecond polls for signals every ~100 ms and raises (e.g. ``KeyboardInterrupt``), discarding
its partial results. Array parameters are NumPy arrays (pybind11's ``py::array`` accepts nothing
else); buffers that the kernels write (``out``, ``grad``, ``row_*``, ``d_*``) must be writeable,
C-contiguous and of the dtype the kernel computes in. tests/test_packaging.py checks that every
name the module defines has a stub here.
"""

from typing import Any, TypeAlias

import numpy as np
from numpy.typing import NDArray

_Array: TypeAlias = NDArray[Any]
_Float64Array: TypeAlias = NDArray[np.float64]

# Exact sums (cpp/exact_sum.inl): a state is bytes, the carried superaccumulator.
def exact_sum(values: _Float64Array) -> float:
    """The correctly rounded sum of a 1-D float64 array."""

def exact_state(values: _Float64Array) -> bytes:
    """The exact sum of a 1-D float64 array, as a state."""

def exact_merge(a: bytes, b: bytes) -> bytes:
    """The state of the sum of two exact sums."""

def exact_round(state: bytes) -> float:
    """An exact sum rounded once to the nearest double (ValueError for bytes that are not a state)."""

def regression(
    kind: int,
    pred: _Array,
    target: _Array,
    sample_weight: _Float64Array | None,
    out: _Array | None,
    grad: _Array | None = None,
    grad_scale: float = 1.0,
    exact_state: bool = True,
) -> bytes:
    """MSE (``kind=0``) or MAE (``kind=1``) over 2-D ``pred``/``target``; returns the exact sum of
    the (weighted) element losses as a state (with ``exact_state=False``, a state that only rounds
    to that sum's correctly rounded value, from a faster pass), writes them to ``out`` and the
    scaled gradient to ``grad`` when given."""

def cross_entropy(
    logits: _Array,
    target_index: NDArray[np.int64] | None,
    target_prob: _Array | None,
    weight: _Float64Array | None,
    ignore_index: int,
    label_smoothing: float,
    out: _Array | None,
    grad: _Array | None = None,
    grad_scale: float = 1.0,
    grad_divide_by_denominator: bool = False,
    sample_weight: _Float64Array | None = None,
    d_target: _Array | None = None,
) -> tuple[bytes, bytes]:
    """Returns the exact ``(loss sum, PyTorch's "mean" denominator)`` as states; exactly one of
    ``target_index`` and ``target_prob`` is given. ``logits`` is ``(rows, C)`` or ``(N, S, C)``
    (K-dimensional inputs, rows = N * S; any strides), ``target_prob`` likewise; ``target_index``
    has one int64 per row (1-D, or C-contiguous of the target's shape for messages that name a
    multi-index). ``out`` (rows), ``grad`` and ``d_target`` (the gradient w.r.t. probabilities;
    rows x C) are C-contiguous."""

def info_nce(
    query: _Array,
    positive: _Array,
    mode: int,
    negatives: _Array | None,
    inv_temperature: float,
    normalize: bool,
    row_loss: _Float64Array,
    row_max: _Float64Array | None = None,
    row_log_sum: _Float64Array | None = None,
    positive_in_sum: bool = True,
    positive_logit: _Float64Array | None = None,
    query_labels: NDArray[np.int64] | None = None,
    key_labels: NDArray[np.int64] | None = None,
    decoupled: bool = False,
) -> None:
    """Writes the per-row losses to ``row_loss`` (and the log-sum-exp parts for backward).
    ``positive_in_sum=False`` (a shard of a queue) leaves the positive out of the log-sum-exp and
    writes each row's positive logit to ``positive_logit``.
    ``mode``: 0 in-batch (``negatives`` None), 1 unpaired ``(M, D)``, 2 paired ``(N, M, D)``.
    ``query_labels`` (N) and ``key_labels`` (N in-batch, M unpaired, N*M paired), both or neither:
    in-batch positives / false-negative elimination; ``decoupled``: positives leave the
    log-sum-exp. A row with an empty log-sum-exp has loss -inf."""

def info_nce_backward(
    query: _Array,
    positive: _Array,
    mode: int,
    negatives: _Array | None,
    inv_temperature: float,
    normalize: bool,
    row_max: _Float64Array | None,
    row_log_sum: _Float64Array | None,
    row_grad: _Float64Array,
    d_query: _Array,
    d_positive: _Array,
    d_negatives: _Array | None,
    workspace: _Array | None = None,
    query_labels: NDArray[np.int64] | None = None,
    key_labels: NDArray[np.int64] | None = None,
    decoupled: bool = False,
    row_temperature_moment: _Float64Array | None = None,
) -> None:
    """Accumulates the gradients of ``sum_i row_grad[i] * loss_i`` into the ``d_*`` buffers.
    ``row_max`` and ``row_log_sum`` (from ``info_nce``) are required: None raises ValueError.
    ``workspace``: scratch of ``info_nce_backward_workspace(...)`` elements in the computation
    dtype, or None to let the kernel allocate it. ``query_labels`` / ``key_labels`` / ``decoupled``
    as given to ``info_nce``; ``row_temperature_moment`` (N, or None) receives each row's
    ``sum_{j in D} p_ij z_ij - mean_{p in P} z_ip`` (dL_i/dtemperature = -that / temperature)."""

def info_nce_backward_workspace(query: _Array, positive: _Array, mode: int, negatives: _Array | None) -> int:
    """Elements of scratch ``info_nce_backward`` needs for these arrays (0 for paired negatives)."""

def linear_cross_entropy(
    input: _Array,
    linear_weight: _Array,
    linear_bias: _Array | None,
    target_index: NDArray[np.int64] | None,
    target_prob: _Array | None,
    class_weight: _Float64Array | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float,
    row_loss: _Float64Array,
    row_max: _Float64Array | None,
    row_log_sum: _Float64Array | None,
) -> None:
    """Cross-entropy of the logits ``input @ linear_weight.T (+ linear_bias)`` (``(N, H)`` and
    ``(V, H)``, one dtype, unit column stride; ``softcap`` 0.0 for none) without storing them:
    writes each row's loss (z_loss term included, 0.0 for ignored rows) to ``row_loss`` and, when
    given, its log-sum-exp as ``row_max + row_log_sum`` for the backward pass. Exactly one of
    ``target_index`` (int64 ``(N,)``; a value outside ``[0, V)`` that is not ``ignore_index``
    raises ValueError) and ``target_prob`` (``(N, V)``) is given."""

def linear_cross_entropy_backward(
    input: _Array,
    linear_weight: _Array,
    linear_bias: _Array | None,
    target_index: NDArray[np.int64] | None,
    target_prob: _Array | None,
    class_weight: _Float64Array | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float,
    row_max: _Float64Array,
    row_log_sum: _Float64Array,
    row_grad: _Float64Array,
    d_input: _Array,
    d_linear_weight: _Array,
    d_linear_bias: _Array | None,
) -> None:
    """Overwrites ``d_input``, ``d_linear_weight`` (and ``d_linear_bias``) with the gradients of
    ``sum_i row_grad[i] * loss_i``, recomputing each tile of logits from the forward pass's
    ``row_max``/``row_log_sum``; the options are the forward call's."""

def regression_fast(kind: int, pred: object, target: object, reduction: object) -> float | None:
    """The reduced loss for a plain call (C-contiguous native float arrays of one shape), else None."""

def cross_entropy_fast(logits: object, target: object, reduction: object) -> float | None:
    """The reduced loss for a plain call ((N, C) C-contiguous logits, int64 labels), else None."""

def vector_exp(x: _Array) -> _Array:
    """Test hook: the active path's vector exp of a contiguous 1-D float32 or float64 array."""

def vector_exp_nonpositive_finite(x: _Array) -> _Array:
    """Test hook: InfoNCE's exp for finite x <= 0 (float32 or float64), which must give vector_exp's bits."""

def vector_log(x: _Array) -> NDArray[np.float64]:
    """Test hook: the active path's vector log of a contiguous 1-D float64 array."""

def memory_probe(
    kind: str,
    x: NDArray[np.float32],
    y: NDArray[np.float32] | None,
    out: NDArray[np.float32] | None,
    threads: int,
) -> tuple[float, int]:
    """``fastloss bench``'s bandwidth probe (cpp/memory_probe.hpp): one pass of ``"sum"`` (reads
    ``x``), ``"copy"`` (``out = x``) or ``"triad"`` (``out = x + 3 * y``) over contiguous 1-D
    float32 arrays on ``threads`` OpenMP threads; returns (the sum for ``"sum"``, else 0.0; the
    threads that ran)."""

def compiled_isas() -> list[str]:
    """Paths compiled into this build, best last."""

def available_isas() -> list[str]:
    """Compiled paths this CPU and OS can run, best last."""

def active_isa() -> str: ...
def set_active_isa(name: str) -> None: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def default_num_threads() -> int: ...

openmp: bool
compiler: str
build_version: str
