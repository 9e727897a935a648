"""atheris fuzz target over fastloss's public API.

Every input drives one call of ``fastloss.mse``, ``mae``, ``cross_entropy``, ``info_nce`` (each
with ``return_grad`` either way) or ``set_num_threads``, with arrays of any dtype (float16/32/64,
ints, bool, complex, object, strings), shape (empty, 0-d, up to 6-d), layout (negative and zero
strides, non-contiguous, Fortran, read-only, big-endian, unaligned buffers), values (NaN, inf,
subnormals, huge, int64 extremes), and absurd Python scalars for every scalar parameter.

A finding is anything but ``ValueError``/``TypeError`` escaping (``MemoryError`` only for the
absurd-size views), a crash or hang, a result of the wrong structure, or a NaN where every input
is finite and the loss is defined (the float64 reference of tests/reference.py has no NaN
there, and the computation dtype does not overflow on the way). The known defects of issue 8
are findings too; nothing here steps around them.

    python tests/fuzz/fuzz_api.py -max_total_time=60          # what .ci/fuzz.sh runs
    python tests/fuzz/fuzz_api.py crash-<sha1>                 # replay one finding
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any

import atheris

with atheris.instrument_imports(include=["fastloss"]):
    import fastloss

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import reference  # noqa: E402  (tests/reference.py: the float64 formulas)

NAN, INF = math.nan, math.inf

FLOAT_DTYPES = ["<f2", "<f4", "<f8", ">f2", ">f4", ">f8"]
OTHER_DTYPES = ["<i1", "<i2", "<i4", "<i8", ">i8", "<u1", "<u8", "?", "<c8", "<c16", "O", "<U3", "<M8[s]"]
INT_DTYPES = ["<i1", "<i2", "<i4", "<i8", ">i8", "<u1", "<u2", "<u4", "<u8", ">u8"]
SPECIAL_FLOATS = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    2.0,
    NAN,
    INF,
    -INF,
    5e-324,
    -5e-324,
    1e-310,
    1.17549435e-38,
    1.4e-45,
    6e-8,
    3.4028235e38,
    -3.4028235e38,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    65504.0,
    -65504.0,
    1e4,
    -1e4,
    2.0**53,
    1e19,
    -1e19,
    1e-20,
]
SPECIAL_INTS = [0, 1, -1, -100, 2, 3, 127, -128, 255, 2**31 - 1, -(2**31), 2**32, 2**63 - 1, -(2**63)]
DIMS = [0, 1, 1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33]
MAX_ELEMENTS = 4096
# Every Python value a scalar parameter should survive: huge ints, ints past int64, non-finite
# floats, bools, strings, None, NumPy scalars, other number types.
ABSURD_SCALARS: list[Any] = [
    0,
    1,
    -1,
    2,
    3,
    -100,
    7,
    2**31 - 1,
    2**31,
    2**32,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64,
    10**400,
    -(10**400),
    0.0,
    -0.0,
    0.07,
    1e-35,
    1e-300,
    5e-324,
    1e308,
    1.7976931348623157e308,
    NAN,
    INF,
    -INF,
    0.5,
    1.0,
    1.0000000000000002,
    True,
    False,
    "0.1",
    "mean",
    "",
    None,
    b"1",
    [],
    [1],
    (0.1,),
    {},
    1j,
    np.float32(0.1),
    np.float64(NAN),
    np.float16(1e-5),
    np.int64(-100),
    np.int64(2**62),
    np.uint64(2**64 - 1),
    np.int8(-1),
    np.bool_(True),
    np.array(0.5),
    np.array([0.5]),
    Fraction(1, 3),
    Fraction(10**400, 3),
    Decimal("0.1"),
    Decimal("1e400"),
]
REDUCTIONS = ["none", "sum", "mean", "batchmean"]
ODD_REDUCTIONS: list[Any] = ["avg", "MEAN", "", None, 1, b"sum", ["mean"], np.str_("sum")]
# float32 views of 2**40 elements (terabytes) up to 2**60 (the largest NumPy can describe).
ABSURD_SHAPES = {
    1: [(2**40,), (2**60,)],
    2: [(2**20, 2**20), (2**37, 8), (2**59, 2), (2**20, 2**40)],
    3: [(2, 2**36, 8), (2**30, 2**29, 2)],
}
# Views bigger than this may fail to allocate (MemoryError) without that being a bug.
ABSURD_SIZE = 2**32
# A thread count above both of these is absurd; accepting it is a finding (libgomp then fails to
# create the threads and the next parallel call crashes).
THREAD_BOUND = max(1024, os.cpu_count() or 1)
DEFAULT_THREADS = fastloss.get_num_threads()


class Finding(AssertionError):
    """A wrong result (not an exception the API raised): the message is the reproducer."""


class Input:
    """The fuzzer's bytes as choices; every array made is described for the reproducer."""

    def __init__(self, data: bytes) -> None:
        self.fdp = atheris.FuzzedDataProvider(data)
        self.absurd = False

    def int(self, lo: int, hi: int) -> int:
        return self.fdp.ConsumeIntInRange(lo, hi)

    def pick(self, options: list[Any]) -> Any:
        return options[self.int(0, len(options) - 1)]

    def chance(self, percent: int) -> bool:
        return self.int(0, 99) < percent

    def shape(self, ndim: int | None = None) -> tuple[int, ...]:
        if ndim is None:
            ndim = self.pick([0, 1, 1, 2, 2, 2, 3, 4, 6])
        dims = [self.pick(DIMS) for _ in range(ndim)]
        # Small enough that an input runs in milliseconds; the size-specific tests cover 2**31.
        while int(np.prod(dims, dtype=np.int64)) > MAX_ELEMENTS:
            dims[dims.index(max(dims))] //= 2
        return tuple(dims)

    def values(self, shape: tuple[int, ...]) -> np.ndarray:
        """float64 values: plain normals, scaled by a power of ten, or a mix of special values."""
        size = int(np.prod(shape, dtype=np.int64))
        rng = np.random.default_rng(self.int(0, 2**32 - 1))
        mode = self.int(0, 3)
        with np.errstate(all="ignore"):
            if mode == 0:
                out = rng.standard_normal(size)
            elif mode == 1:
                out = rng.standard_normal(size) * 10.0 ** self.int(-320, 308)
            elif mode == 2:
                out = np.array(SPECIAL_FLOATS)[rng.integers(0, len(SPECIAL_FLOATS), size)]
            else:
                out = rng.standard_normal(size)
                specials = np.array(SPECIAL_FLOATS)[rng.integers(0, len(SPECIAL_FLOATS), size)]
                out = np.where(rng.random(size) < 0.1, specials, out)
        return out.reshape(shape)

    def cast(self, values: np.ndarray, dtype: str) -> np.ndarray:
        kind = np.dtype(dtype).kind
        with np.errstate(all="ignore"):
            if kind in "iu":
                info = np.iinfo(dtype)
                rng = np.random.default_rng(self.int(0, 2**32 - 1))
                ints = [v for v in SPECIAL_INTS if info.min <= v <= info.max]
                picks = np.array(ints, dtype=object)[rng.integers(0, len(ints), values.size)]
                return np.array(picks.tolist() or [], dtype=dtype).reshape(values.shape)
            if kind == "c":
                return np.asarray(values + 1j * values[::-1] if values.ndim else values + 0j).astype(dtype)
            if kind == "M":
                return np.zeros(values.shape, dtype=dtype)
            return values.astype(dtype)

    def layout(self, base: np.ndarray) -> np.ndarray:
        """`base`'s values in one of the memory layouts a caller can hand over."""
        choice = self.int(0, 8)
        if choice == 1 and base.ndim:
            flip = (slice(None, None, -1),) * base.ndim
            return np.ascontiguousarray(base[flip])[flip]
        if choice == 2 and base.ndim:
            wide = np.zeros(base.shape[:-1] + (2 * base.shape[-1],), dtype=base.dtype)
            wide[..., ::2] = base
            return wide[..., ::2]
        if choice == 3:
            return np.asfortranarray(base)
        if choice == 4:  # zero strides: one row (or one element) broadcast over the rest
            if base.ndim == 0 or base.size == 0:
                return base
            return np.broadcast_to(base[(slice(0, 1),) * base.ndim], base.shape)
        if choice == 5 and base.dtype.kind != "O":  # one byte past an aligned buffer
            buffer = bytearray(base.nbytes + base.dtype.itemsize + 1)
            out = np.frombuffer(buffer, dtype=base.dtype, count=base.size, offset=1).reshape(base.shape)
            out[...] = base
            return out
        if choice == 6:
            out = base.copy()
            out.flags.writeable = False
            return out
        if choice == 7 and base.dtype.kind in "fiuc" and base.dtype.itemsize > 1:
            return base.astype(base.dtype.newbyteorder("S"))
        return np.ascontiguousarray(base)

    def array(self, shape: tuple[int, ...] | None = None, *, dtype: str | None = None) -> Any:
        """Mostly an array of `shape` (random when None); sometimes something that is not one."""
        roll = self.int(0, 99)
        if roll < 2:
            return self.pick([None, "abc", [[1.0, 2.0], [3.0]], {"a": 1}, object(), 1.5, [], [[]]])
        if roll < 4:
            self.absurd = True
            ndim = len(shape) if shape else self.pick([1, 2, 3])
            big = self.pick(ABSURD_SHAPES.get(ndim, ABSURD_SHAPES[1]))
            return np.broadcast_to(np.float32(self.pick([0.0, 1.0, NAN])), big)
        if shape is None:
            shape = self.shape()
        if int(np.prod(shape, dtype=np.int64)) > MAX_ELEMENTS:
            # Sized after an absurd argument (a weight per row of 2**40 rows): a view as well.
            self.absurd = True
            return np.broadcast_to(np.float32(self.pick([0.0, 1.0])), shape)
        if dtype is None:
            dtype = self.pick(FLOAT_DTYPES) if self.chance(80) else self.pick(OTHER_DTYPES)
        out = self.layout(self.cast(self.values(shape), dtype))
        if roll < 7:
            return out.tolist()  # plain nested lists: np.asarray's path
        return out

    def labels(self, shape: tuple[int, ...], classes: int) -> Any:
        """Class indices: mostly valid, sometimes -100 / out of range / int64 extremes / floats."""
        if self.chance(8):
            return self.array(shape)
        rng = np.random.default_rng(self.int(0, 2**32 - 1))
        out = rng.integers(0, max(classes, 1), shape)
        if self.chance(30) and out.size:
            flat = out.reshape(-1)
            flat[rng.integers(0, flat.size)] = self.pick([-100, -1, classes, 2**63 - 1, -(2**63), 2**31, 7])
        dtype = self.pick(["<i8", "<i8", "<i4", ">i8", "<u1", "<u8", "<i2"])
        with np.errstate(all="ignore"):
            if np.dtype(dtype).kind == "u" and (out < 0).any():
                dtype = "<i8"
            if np.dtype(dtype).itemsize < 8 and (np.abs(out.astype(np.float64)) > 30000).any():
                dtype = "<i8"
            cast = out.astype(dtype)
        return self.layout(cast) if cast.ndim else cast

    def scalar(self, usual: list[Any], percent_usual: int = 75) -> Any:
        return self.pick(usual) if self.chance(percent_usual) else self.pick(ABSURD_SCALARS)

    def reduction(self) -> Any:
        return self.pick(REDUCTIONS) if self.chance(92) else self.pick(ODD_REDUCTIONS)

    def flag(self) -> Any:
        return (
            self.pick([True, False])
            if self.chance(92)
            else self.pick([1, 0, None, "True", np.bool_(True), 1.0])
        )


# ---------------------------------------------------------------------------------------------
# describing a call (the reproducer printed with a finding)


def describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        with np.printoptions(threshold=40, edgeitems=3, precision=17):
            body = np.array2string(value, separator=", ") if value.size <= 4096 else "..."
        return (
            f"array({body}, dtype={value.dtype.str!r}) [shape {value.shape}, strides {value.strides}, "
            f"aligned={value.flags.aligned}, writeable={value.flags.writeable}]"
        )
    text = repr(value)
    return text if len(text) < 400 else text[:400] + "..."


def describe_call(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    parts = [describe(a) for a in args] + [f"{k}={describe(v)}" for k, v in kwargs.items()]
    return f"fastloss.{name}(\n    " + ",\n    ".join(parts) + ")"


# ---------------------------------------------------------------------------------------------
# the oracle


def _finite_array(value: Any) -> bool:
    """A real-valued array-like all of whose values are finite (None: no array, counts as finite)."""
    if value is None:
        return True
    try:
        array = np.asarray(value)
    except Exception:  # noqa: BLE001 - an unconvertible value was rejected by the call anyway
        return False
    if array.dtype.kind not in "fiub":
        return False
    return bool(np.isfinite(array.astype(np.float64)).all())


def _finite_scalar(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (OverflowError, ValueError, TypeError):
        return False


def _as64(value: Any) -> np.ndarray:
    return np.asarray(value).astype(np.float64)


def _computes_in_float32(*values: Any) -> bool:
    arrays = [np.asarray(v) for v in values if v is not None]
    return reference.computation_dtype(*(a.dtype for a in arrays)) == np.float32


def _nan_mask(value: Any) -> np.ndarray:
    return np.isnan(np.asarray(value, dtype=np.float64))


def _leaves(result: Any) -> list[np.ndarray]:
    if isinstance(result, tuple):
        return [leaf for item in result for leaf in _leaves(item)]
    return [] if result is None else [np.asarray(result, dtype=np.float64)]


F32_MAX = float(np.finfo(np.float32).max)


def reference_value(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The float64 reference of a call that succeeded, or None where the computation dtype may
    legitimately overflow to inf - inf (so a NaN there is no finding)."""
    if any(np.asarray(a).size == 0 for a in args if a is not None):
        return None  # a reduction over nothing is 0 / 0 by definition
    with np.errstate(all="ignore"):
        if name in ("mse", "mae"):
            pred, target = args
            weight = kwargs.get("sample_weight")
            if (
                _computes_in_float32(pred, target)
                and np.nanmax(np.abs(_as64(pred) - _as64(target)), initial=0) > 1e19
            ):
                return None  # the float32 element loss is inf; times a zero weight it is nan
            fn = reference.mse_ref if name == "mse" else reference.mae_ref
            return fn(pred, target, kwargs["reduction"], weight)
        if name == "cross_entropy":
            logits, target = args
            weight = kwargs.get("weight")
            if weight is not None and np.abs(_as64(weight)).max(initial=0) > 1e30:
                return None
            if np.asarray(target).dtype.kind == "f" and np.abs(_as64(target)).max(initial=0) > 1e30:
                return None  # huge probabilities of both signs: inf - inf in the weighted sum
            return _cross_entropy_reference(logits, target, kwargs, weight)
        query, positive, negatives = args
        # With labels or decoupled there is no float64 reference here (tests/test_info_nce_labels.py
        # has one): the call without them stands in for where inf - inf can legitimately occur,
        # since masking and decoupling only drop logits (an empty log-sum-exp is -inf, not NaN).
        options = {
            k: v
            for k, v in kwargs.items()
            if k not in ("return_grad", "query_labels", "key_labels", "decoupled")
        }
        if _computes_in_float32(query, positive, negatives):
            # float32 dot products are taken before 1/temperature (and the norms) scale them
            # (README, "Numbers"): beyond float32's range they are inf, whatever the logits.
            if _raw_dot_bound(query, positive, negatives) > F32_MAX:
                return None
            logits = _info_nce_logits(query, positive, negatives, options)
            # A logit above float32's range is +inf (inf - inf follows); a row whose every logit
            # is below it is all -inf. A few negatives below -max are fine: they weigh nothing.
            if (logits > F32_MAX).any() or (np.nanmax(logits, axis=1, initial=-INF) < -F32_MAX).any():
                return None
        return reference.info_nce_ref(query, positive, negatives, **options)


def _cross_entropy_reference(logits: Any, target: Any, kwargs: dict[str, Any], weight: Any) -> Any:
    """cross_entropy_ref, with K-dimensional (N, C, d1, ..., dK) logits as the (N * d1 * ... * dK, C)
    rows they hold: the same losses, the same "mean" denominators; "batchmean" divides by N."""
    options = (weight, kwargs["ignore_index"], kwargs["label_smoothing"])
    x, t = np.asarray(logits), np.asarray(target)
    if x.ndim < 3:
        return reference.cross_entropy_ref(x, t, kwargs["reduction"], *options)
    rows = np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])
    soft = t.shape == x.shape
    flat = np.moveaxis(t, 1, -1).reshape(-1, x.shape[1]) if soft else t.reshape(-1)
    reduction = kwargs["reduction"]
    if reduction == "batchmean":
        return reference.cross_entropy_ref(rows, flat, "sum", *options) / x.shape[0]
    out = reference.cross_entropy_ref(rows, flat, reduction, *options)
    return np.asarray(out).reshape(x.shape[:1] + x.shape[2:]) if reduction == "none" else out


def _raw_dot_bound(query: Any, positive: Any, negatives: Any) -> float:
    """max |q| |k| over the rows (Cauchy-Schwarz: a bound on every partial dot-product sum)."""

    def largest_norm(a: Any) -> float:
        a64 = _as64(a)
        return float(np.sqrt(np.sum(a64 * a64, axis=-1)).max(initial=0)) if a64.size else 0.0

    keys = max(largest_norm(positive), 0.0 if negatives is None else largest_norm(negatives))
    return max(largest_norm(query), largest_norm(positive)) * max(keys, largest_norm(query))


def _info_nce_logits(query: Any, positive: Any, negatives: Any, options: dict[str, Any]) -> np.ndarray:
    q, k = _as64(query), _as64(positive)
    n = None if negatives is None else _as64(negatives)
    if options["normalize"]:
        q, k = reference.l2_normalize(q), reference.l2_normalize(k)
        n = None if n is None else reference.l2_normalize(n)
    inv_t = 1.0 / float(options["temperature"])
    if n is None:
        rows = q @ k.T
        if options["symmetric"]:
            rows = np.concatenate([rows, rows.T], axis=0)
    elif n.ndim == 2:
        rows = np.concatenate([np.sum(q * k, axis=1, keepdims=True), q @ n.T], axis=1)
    else:
        rows = np.concatenate([np.sum(q * k, axis=1, keepdims=True), np.einsum("nd,nmd->nm", q, n)], axis=1)
    return rows * inv_t


def _info_nce_gradient_overflows(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether InfoNCE's gradient scale leaves the computation dtype: each row's gradient is
    (1 / temperature) times softmax-weighted keys, and with normalize also times the inverse norm,
    up to 1e12 (F.normalize's floor) - a product that can overflow even where the gradient is 0
    (zero rows), giving inf * 0 = NaN on the way."""
    arrays = [a for a in args if a is not None]
    limit = F32_MAX if _computes_in_float32(*arrays) else float(np.finfo(np.float64).max)
    scale = 1.0 / float(kwargs["temperature"])
    if kwargs["normalize"]:
        scale *= 1e12
    else:
        largest = max(float(np.abs(_as64(a)).max(initial=0)) for a in arrays)
        scale *= largest * largest  # inf beyond the range (** would raise OverflowError)
    return not scale < limit / 1e3


def check_result(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
    call = describe_call(name, args, kwargs)
    return_grad = bool(kwargs.get("return_grad"))
    loss, grad = result if return_grad else (result, None)
    if return_grad and not (isinstance(result, tuple) and len(result) == 2):
        raise Finding(f"return_grad=True did not return (loss, grad): {type(result)}\n{call}")
    if kwargs["reduction"] == "none":
        if not isinstance(loss, np.ndarray) or loss.dtype not in (np.float32, np.float64):
            raise Finding(f"reduction='none' returned {type(loss)} {getattr(loss, 'dtype', '')}\n{call}")
    elif type(loss) is not float:
        raise Finding(f"reduction={kwargs['reduction']!r} returned {type(loss)}, not a Python float\n{call}")
    if return_grad:
        first = np.asarray(args[0])
        grads = grad if name == "info_nce" else (grad,)
        shapes = [np.shape(a) for a in args[:3] if a is not None] if name == "info_nce" else [first.shape]
        got = [g.shape for g in grads if g is not None]
        if got != shapes or any(g.dtype.kind != "f" for g in grads if g is not None):
            raise Finding(f"gradient shapes {got} for inputs {shapes}\n{call}")

    scalars = [kwargs.get(k) for k in ("temperature", "label_smoothing")]
    finite = all(_finite_array(a) for a in args) and all(
        _finite_array(kwargs.get(k)) for k in ("sample_weight", "weight")
    )
    finite = finite and all(s is None or _finite_scalar(s) for s in scalars)
    if not finite or not any(_nan_mask(leaf).any() for leaf in _leaves(result)):
        return
    ref = reference_value(name, args, kwargs)
    if ref is None:
        return
    ref_nan = _nan_mask(ref)
    got_nan = _nan_mask(loss)
    if got_nan.shape == ref_nan.shape and (got_nan & ~ref_nan).any():
        raise Finding(f"NaN loss from finite inputs (reference {describe(np.asarray(ref))})\n{call}")
    # A gradient is defined wherever the loss is finite, and representable where its scale fits
    # the computation dtype.
    if (
        grad is not None
        and np.isfinite(np.asarray(ref, dtype=np.float64)).all()
        and not (name == "info_nce" and _info_nce_gradient_overflows(args, kwargs))
    ):
        for leaf in _leaves(grad):
            if np.isnan(leaf).any():
                raise Finding(f"NaN gradient from finite inputs with a finite loss\n{call}")


# ---------------------------------------------------------------------------------------------
# the calls


def regression_call(inp: Input, name: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    pred = inp.array()
    if inp.absurd:
        target: Any = np.broadcast_to(np.float32(0), np.shape(pred))
    else:
        shape = np.shape(pred) if isinstance(pred, np.ndarray) else None
        target = inp.array(shape) if inp.chance(90) else inp.array()
    kwargs: dict[str, Any] = {"reduction": inp.reduction(), "return_grad": inp.flag()}
    if inp.chance(35):
        rows = pred.shape[0] if isinstance(pred, np.ndarray) and pred.ndim else 1
        kwargs["sample_weight"] = inp.array((rows,)) if inp.chance(85) else inp.array()
    if inp.absurd:  # an absurd view must allocate something, or the pass would run for hours
        kwargs["reduction"], kwargs["return_grad"] = "none", True
    return (pred, target), kwargs


def cross_entropy_call(inp: Input) -> tuple[tuple[Any, ...], dict[str, Any]]:
    shape = inp.shape(inp.pick([1, 2, 2, 2, 0, 3, 3, 4]))
    logits = inp.array(shape)
    # (C,), (N, C) or K-dimensional (N, C, d1, ..., dK): the class axis is 1 from 2-D on.
    classes = (shape[0] if len(shape) == 1 else shape[1]) if shape else 1
    if inp.chance(65):
        target = inp.labels(shape[:1] + shape[2:] if len(shape) >= 2 else (), classes)
    else:
        target = inp.array(shape)  # probabilities (or anything else of that shape)
    kwargs: dict[str, Any] = {
        "reduction": inp.reduction(),
        "ignore_index": inp.scalar([-100, -100, 0, 1, -1, classes, 2**63 - 1, -(2**63)]),
        "label_smoothing": inp.scalar([0.0, 0.0, 0.1, 1.0, 0.5, 1e-300]),
        "return_grad": inp.flag(),
        "weight": inp.array((classes,)) if inp.chance(30) else None,
    }
    if inp.absurd:
        kwargs["return_grad"] = True
    return (logits, target), kwargs


def info_nce_call(inp: Input) -> tuple[tuple[Any, ...], dict[str, Any]]:
    n, d = inp.pick(DIMS), inp.pick(DIMS)
    query = inp.array((n, d)) if inp.chance(92) else inp.array()
    positive = inp.array((n, d)) if inp.chance(92) else inp.array()
    mode = inp.pick(["unpaired", "paired"]) if inp.chance(95) else inp.pick(ABSURD_SCALARS)
    negatives = None
    m = 0
    if inp.chance(65):
        m = inp.pick(DIMS)
        negatives = inp.array((m, d) if mode == "unpaired" else (n, m, d)) if inp.chance(92) else inp.array()
    kwargs: dict[str, Any] = {
        "temperature": inp.scalar([0.07, 0.1, 1.0, 1e-3, 1e3, 1e-30, 1e-35, 1e30, 1e-300]),
        "reduction": inp.reduction(),
        "negative_mode": mode,
        "normalize": inp.flag(),
        "symmetric": inp.flag() if inp.chance(50) else False,
        "return_grad": inp.flag(),
    }
    if inp.chance(30):
        # Labels from a few classes, so that positives and false negatives are common.
        classes = inp.pick([1, 2, 3, 1000])
        kwargs["query_labels"] = inp.labels((n,), classes)
        if negatives is None:
            key_shape: tuple[int, ...] | None = (n,) if inp.chance(60) else None
        else:
            key_shape = (n, m) if mode == "paired" else (m,)  # the shape the negatives were meant to have
        if key_shape is not None:
            kwargs["key_labels"] = inp.labels(tuple(key_shape), classes)
    if inp.chance(25):
        kwargs["decoupled"] = inp.flag()
    return (query, positive, negatives), kwargs


CALLS: dict[str, Callable[[Input], tuple[tuple[Any, ...], dict[str, Any]]]] = {
    "mse": lambda inp: regression_call(inp, "mse"),
    "mae": lambda inp: regression_call(inp, "mae"),
    "cross_entropy": cross_entropy_call,
    "info_nce": info_nce_call,
}


def thread_call(inp: Input) -> None:
    n = inp.scalar([1, 2, 3, 0, -1, THREAD_BOUND + 1, 100_000, 2**31, 2**63], percent_usual=60)
    try:
        fastloss.set_num_threads(n)
    except (ValueError, TypeError):
        return
    finally:
        accepted = fastloss.get_num_threads()
        # Restored at once: an absurd count would have libgomp try to start that many threads.
        fastloss.set_num_threads(DEFAULT_THREADS)
    if accepted > THREAD_BOUND or accepted < 1:
        raise Finding(f"set_num_threads({n!r}) accepted {accepted} threads (bound {THREAD_BOUND})")


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris's name
    inp = Input(data)
    which = inp.int(0, 9)
    if which == 9:
        thread_call(inp)
        return
    name = ["mse", "mse", "mae", "mae", "cross_entropy", "cross_entropy", "info_nce", "info_nce", "info_nce"][
        which
    ]
    args, kwargs = CALLS[name](inp)
    kwargs = {k: v for k, v in kwargs.items() if not (k in ("weight", "sample_weight") and v is None)}
    fn = getattr(fastloss, name)
    # NumPy's floating-point warnings (a float16 gradient that underflows in its cast) are IEEE
    # results, not findings; they are silenced so that the run's output stays readable.
    with np.errstate(all="ignore"):
        try:
            result = fn(*args, **kwargs)
        except (ValueError, TypeError):
            return
        except MemoryError:
            if inp.absurd:
                return
            raise
    check_result(name, args, kwargs, result)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
