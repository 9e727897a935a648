"""The ``fastloss`` command line (also ``python -m fastloss``): a thin command layer.

``fastloss bench``
    The benchmark suite (``fastloss._bench``): the four losses on seeded synthetic data against
    the NumPy reference and every installed peer, each at the same thread count, with the
    machine's limits (memory bandwidth, matmul rate) measured in the same run; a table,
    ``--json`` figures, a PNG chart with ``--chart FILE``.

``fastloss score LOSS A B [options]``
    A loss (``mse``, ``mae``, ``cross_entropy`` alias ``ce``, ``info_nce``,
    ``linear_cross_entropy`` alias ``lce``) of arrays stored in
    ``.npy`` / ``.npz`` files or Parquet columns of any size, every option of the API as a flag.
    The inputs are read by ``fastloss._readers`` (memory maps, streamed compressed members,
    Parquet row groups) in row chunks of about ``--chunk-mb``, released once consumed, so memory
    stays bounded whatever the file size. The reductions are the streaming API's: each chunk
    updates a ``fastloss.Accumulator``, whose exact sums give the one-call result bit for bit
    (the reduction rules live in ``fastloss._reduction`` alone). ``info_nce`` with in-batch
    negatives (no ``--negatives``) couples every query with every key, so it is one call over
    the whole (memory-mapped) arrays. ``--reduction none`` streams the per-element (per-row for
    the cross-entropies and ``info_nce``) losses into an ``.npy`` file written through
    ``np.lib.format.open_memmap``. Every ``--out`` file is written under a temporary name and
    renamed once complete; a result that cannot be printed (stdout closed, a broken pipe) is an
    error, exit code 1. ``--json`` prints a JSON object instead of the bare number.

``fastloss --version``
    Prints the version.
"""

from __future__ import annotations

import argparse
import json
import math
import mmap
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, Protocol, cast

import numpy as np
import numpy.typing as npt

from ._losses import check_softcap, check_z_loss
from ._readers import InputError, RowSource, drop_pages, load_small, open_array
from ._validation import check_int, check_label_smoothing, check_temperature, check_threads
from ._version import __version__

__all__ = ["main"]

PROG = "fastloss"
LOSSES = ("mse", "mae", "cross_entropy", "info_nce", "linear_cross_entropy")
ALIASES = {"ce": "cross_entropy", "lce": "linear_cross_entropy"}
REDUCTIONS = ("mean", "sum", "batchmean", "none")
NEGATIVE_MODES = ("unpaired", "paired")
# Largest ``reduction none`` result printed to the terminal instead of written with --out.
_MAX_PRINTED = 10_000_000

# A user error: printed as one line, exit code 1 (the readers' errors are the same kind).
CliError = InputError

# One chunk's call of a loss: (the chunk's rows of each streamed input, start, stop) -> the
# library's result for the chunk.
ChunkCall = Callable[[list[np.ndarray], int, int], Any]

# Each loss-specific option: its flag, its attribute in the parsed arguments, the losses it
# applies to. Given to another loss it is an error, never silently ignored.
_OPTIONS = (
    ("--sample-weight", "sample_weight", ("mse", "mae")),
    ("--weight", "weight", ("cross_entropy", "linear_cross_entropy")),
    ("--ignore-index", "ignore_index", ("cross_entropy", "linear_cross_entropy")),
    ("--label-smoothing", "label_smoothing", ("cross_entropy", "linear_cross_entropy")),
    ("--linear-weight", "linear_weight", ("linear_cross_entropy",)),
    ("--linear-bias", "linear_bias", ("linear_cross_entropy",)),
    ("--z-loss", "z_loss", ("linear_cross_entropy",)),
    ("--softcap", "softcap", ("linear_cross_entropy",)),
    ("--negatives", "negatives", ("info_nce",)),
    ("--temperature", "temperature", ("info_nce",)),
    ("--negative-mode", "negative_mode", ("info_nce",)),
    ("--normalize", "normalize", ("info_nce",)),
    ("--symmetric", "symmetric", ("info_nce",)),
)


class _BenchRunner(Protocol):
    """What ``fastloss bench`` uses of ``fastloss._bench.runner`` (installed from bench/)."""

    def add_arguments(self, ap: argparse.ArgumentParser) -> argparse.ArgumentParser: ...

    def run(self, args: argparse.Namespace) -> int: ...


# --- score -----------------------------------------------------------------------------------


def _chunk_rows(args: argparse.Namespace, row_bytes: int) -> int:
    if args.chunk_rows:
        return int(args.chunk_rows)
    return max(1, int(args.chunk_mb * 2**20) // max(1, row_bytes))


def _labels(loss: str) -> tuple[str, str]:
    """What the two positional inputs are called in messages."""
    if loss == "info_nce":
        return ("QUERY", "POSITIVE_KEY")
    return ("INPUT", "TARGET") if loss == "linear_cross_entropy" else ("PRED", "TARGET")


def _check_options(args: argparse.Namespace) -> None:
    """fastloss's own checks, naming the options, and each option against its loss: a bad value
    is refused before any file is read."""
    if args.threads is not None:
        check_threads(args.threads, "--threads")
    if args.ignore_index is not None:
        check_int(args.ignore_index, "--ignore-index")
    if args.label_smoothing is not None:
        check_label_smoothing(args.label_smoothing, "--label-smoothing")
    if args.temperature is not None:
        check_temperature(args.temperature, "--temperature")
    if args.z_loss is not None:
        check_z_loss(args.z_loss, "--z-loss")
    if args.softcap is not None:
        check_softcap(args.softcap, "--softcap")
    if args.reduction == "none" and args.out and not args.out.lower().endswith(".npy"):
        raise CliError(
            f"--out {args.out!r}: reduction 'none' writes an .npy file; give a name ending in .npy"
        )
    for flag, attr, owners in _OPTIONS:
        if getattr(args, attr) is not None and args.loss not in owners:
            hint = " (cross_entropy takes --weight)" if attr == "sample_weight" else ""
            raise CliError(f"{flag} applies to {' and '.join(owners)} only, not {args.loss}{hint}")
    if args.loss == "linear_cross_entropy" and args.linear_weight is None:
        raise CliError("linear_cross_entropy needs --linear-weight FILE: the (V, H) classifier")
    if args.loss == "info_nce":
        if args.negative_mode == "paired" and args.negatives is None:
            raise CliError(
                "--negative-mode paired needs --negatives FILE: an (N, M, D) array of each query's negatives"
            )
        if args.symmetric and args.negatives is not None:
            raise CliError("--symmetric applies to in-batch negatives only (no --negatives)")


def _score(args: argparse.Namespace) -> int:
    import fastloss

    args.loss = ALIASES.get(args.loss, args.loss)
    _check_options(args)
    if args.threads is not None:
        fastloss.set_num_threads(args.threads)

    args.output = OutputFile(args.out) if args.out else None
    sources: list[RowSource] = []
    first, second = _labels(args.loss)
    try:
        try:
            pred = open_array(first, args.pred)
            sources.append(pred)
            target = open_array(second, args.target)
            sources.append(target)
            if args.loss in ("mse", "mae"):
                value, out_map = _score_regression(fastloss, args, pred, target)
            elif args.loss == "cross_entropy":
                value, out_map = _score_cross_entropy(fastloss, args, pred, target)
            elif args.loss == "linear_cross_entropy":
                value, out_map = _score_linear_cross_entropy(fastloss, args, pred, target)
            else:
                value, out_map = _score_info_nce(fastloss, args, pred, target, sources)
            rows = 1 if args.loss == "cross_entropy" and pred.ndim == 1 else pred.shape[0]
        finally:
            for s in sources:
                s.close()
        wrote = _emit(args, value, out_map, rows)
        if args.output is not None:
            shape, dtype = np.shape(value), np.asarray(value).dtype
            report = None if not args.json else _json_report(args, value, rows)
            del value, out_map  # the output map's last references: unmapped before the rename
            args.output.commit()
            print(f"wrote {args.out}{wrote}", file=sys.stderr)
            if report is not None:
                if args.reduction == "none":
                    report.update(shape=list(shape), dtype=str(dtype))
                _print_result(json.dumps(report))
    except BaseException:
        if args.output is not None:
            args.output.discard()
        raise
    return 0


class OutputFile:
    """``--out FILE``, written under a temporary name in FILE's directory and renamed to FILE
    only once the whole result is there: a failed or interrupted run leaves no plausible-looking
    FILE (nor an existing one changed), and an input that is also the output is not truncated
    while it is still being read."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            fd, self.temp = tempfile.mkstemp(
                prefix=f".{os.path.basename(path)}.",
                suffix=".tmp",
                dir=os.path.dirname(os.path.abspath(path)),
            )
        except OSError as exc:
            raise CliError(f"--out {path!r}: cannot write ({exc.strerror or exc})") from None
        os.close(fd)

    def commit(self) -> None:
        umask = os.umask(0)
        os.umask(umask)
        try:
            # mkstemp's file is private (0600); FILE gets the mode a new file would get.
            os.chmod(self.temp, 0o666 & ~umask)
            os.replace(self.temp, self.path)
        except OSError as exc:
            raise CliError(f"--out {self.path!r}: cannot write ({exc.strerror or exc})") from None

    def discard(self) -> None:
        try:
            os.unlink(self.temp)
        except FileNotFoundError:
            pass


def _run_chunks(
    args: argparse.Namespace,
    sources: Sequence[RowSource],
    call: ChunkCall,
    result_shape: tuple[int, ...],
) -> tuple[float, np.ndarray | None]:
    """Feed the same row chunk of every source to ``call(parts, start, stop)``; for ``reduction
    none`` gather its outputs into ``--out`` (an open_memmap) or an in-memory array. Returns the
    sum of the chunks' reduction values and the ``none`` output."""
    n_rows = sources[0].shape[0]
    row_bytes = sum(s.row_bytes for s in sources)
    step = _chunk_rows(args, row_bytes)
    bar = _progress_bar(args, n_rows * row_bytes)
    total = 0.0
    out: np.ndarray | None = None
    try:
        for start in range(0, n_rows, step) if n_rows else [0]:
            stop = min(start + step, n_rows)
            parts = [s.rows(start, stop) for s in sources]
            try:
                res = call(parts, start, stop)
            except (ValueError, TypeError) as exc:
                where = f" (in rows {start}..{stop - 1})" if stop - start < n_rows else ""
                raise CliError(f"{exc}{where}") from None
            if args.reduction == "none":
                if out is None:
                    out = _open_output(args, result_shape, res.dtype)
                out[start:stop] = res
                if isinstance(out, np.memmap) and stop - start >= 1:
                    _flush_rows(out, start, stop)
            else:
                total += float(res)
            del parts, res
            for s in sources:
                s.release(start, stop)
            if bar is not None:
                bar.update((stop - start) * row_bytes)
    finally:
        if bar is not None:
            bar.close()
    if args.reduction == "none" and isinstance(out, np.memmap):
        out.flush()
    return total, out


def _progress_bar(args: argparse.Namespace, total_bytes: int) -> Any:
    """A tqdm bar on stderr (bytes read, rate, ETA), or None when it is off: ``--quiet``,
    ``--no-progress``, or stderr not a terminal (unless ``--progress``)."""
    if args.quiet:
        return None
    enabled = sys.stderr.isatty() if args.progress is None else bool(args.progress)
    if not enabled or total_bytes <= 0:
        return None
    # tqdm ships no type information.
    from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

    try:
        width = os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError, AttributeError):  # not a terminal (--progress), or no fileno
        width = 0
    # A terminal of unknown width (0 columns: some ptys) would get an empty bar from tqdm.
    size: dict[str, Any] = {"dynamic_ncols": True} if width > 0 else {"ncols": 100}
    return tqdm(
        total=total_bytes,
        desc=f"{PROG} score {args.loss}",
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        mininterval=0.1,
        **size,
    )


def _flush_rows(out: np.memmap, start: int, stop: int) -> None:
    """Write rows ``[start, stop)`` of the output map to the file and drop their pages."""
    mm = getattr(out, "_mmap", None)
    if mm is None:
        return
    try:
        row = out.strides[0] if out.ndim else out.itemsize
        base = np.frombuffer(mm, dtype=np.uint8).__array_interface__["data"][0]
        first = out.__array_interface__["data"][0] - base
        page = mmap.PAGESIZE
        lo = (first + start * row) // page * page
        hi = min(len(mm), first + stop * row)
        if hi > lo:
            mm.flush(lo, hi - lo)
    except (ValueError, OSError, TypeError):
        return
    drop_pages(out, start, stop)


def _open_output(args: argparse.Namespace, shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
    if args.output is not None:
        try:
            return np.lib.format.open_memmap(args.output.temp, mode="w+", dtype=dtype, shape=shape)
        except OSError as exc:
            raise CliError(f"--out {args.out!r}: cannot write ({exc.strerror or exc})") from None
    n = int(np.prod(shape, dtype=np.int64))
    if n > _MAX_PRINTED:
        raise CliError(f"reduction 'none' gives {n} values: write them with --out FILE.npy")
    return np.empty(shape, dtype=dtype)


def _whole_call(args: argparse.Namespace, compute: Callable[[], Any]) -> tuple[Any, np.ndarray | None]:
    """One call over whole inputs (nothing to stream): its value, and for ``none`` the output."""
    try:
        value = compute()
    except (ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None
    out = None
    if args.reduction == "none":
        out = _open_output(args, np.shape(value), np.asarray(value).dtype)
        out[...] = value
        value = out
    return value, out


def _score_regression(
    fastloss: ModuleType, args: argparse.Namespace, pred: RowSource, target: RowSource
) -> tuple[Any, np.ndarray | None]:
    if pred.ndim == 0 or target.ndim == 0:
        raise CliError("PRED and TARGET must have at least 1 dimension; got 0-d arrays")
    if pred.shape != target.shape:
        raise CliError(
            f"PRED and TARGET must have the same shape (no broadcasting); got PRED "
            f"{pred.shape} and TARGET {target.shape}"
        )
    f = fastloss.mse if args.loss == "mse" else fastloss.mae
    n_rows = pred.shape[0]
    weights = None
    if args.sample_weight is not None:
        weights = load_small("--sample-weight", args.sample_weight)
        if weights.shape != (n_rows,):
            raise CliError(
                f"--sample-weight must have shape ({n_rows},) (one weight per row of "
                f"PRED); got {weights.shape}"
            )
    if args.reduction == "none":

        def rows(parts: list[np.ndarray], start: int, stop: int) -> Any:
            w = None if weights is None else weights[start:stop]
            return f(parts[0], parts[1], reduction="none", sample_weight=w)

        _, out = _run_chunks(args, [pred, target], rows, pred.shape)
        return out, out
    acc = fastloss.Accumulator(args.loss, reduction=args.reduction)

    def update(parts: list[np.ndarray], start: int, stop: int) -> Any:
        acc.update(parts[0], parts[1], sample_weight=None if weights is None else weights[start:stop])
        return 0.0

    _run_chunks(args, [pred, target], update, pred.shape)
    return acc.result(), None


def _score_cross_entropy(
    fastloss: ModuleType, args: argparse.Namespace, logits: RowSource, target: RowSource
) -> tuple[Any, np.ndarray | None]:
    kw: dict[str, Any] = {
        "ignore_index": -100 if args.ignore_index is None else args.ignore_index,
        "label_smoothing": 0.0 if args.label_smoothing is None else args.label_smoothing,
    }
    weight = load_small("--weight", args.weight) if args.weight is not None else None
    if weight is not None:
        kw["weight"] = weight
    if logits.ndim == 1:
        # One sample of C logits: nothing to stream.
        x, y = np.asarray(logits.whole()), np.asarray(target.whole())
        return _whole_call(args, lambda: fastloss.cross_entropy(x, y, reduction=args.reduction, **kw))
    if logits.ndim != 2:
        raise CliError(f"cross_entropy PRED (logits) must be (N, C) or (C,); got shape {logits.shape}")
    n_rows, n_classes = logits.shape
    soft = target.dtype.kind == "f"
    if soft:
        if target.shape != logits.shape:
            raise CliError(
                f"cross_entropy TARGET with probabilities must have the shape of the "
                f"logits {logits.shape}; got {target.shape}"
            )
    elif target.dtype.kind in "iu":
        if target.shape != (n_rows,):
            raise CliError(
                f"cross_entropy TARGET (class indices) must have shape ({n_rows},) "
                f"for logits {logits.shape}; got {target.shape}"
            )
    else:
        raise CliError(
            f"cross_entropy TARGET must hold integer class indices or floating "
            f"probabilities; got dtype {target.dtype}"
        )
    acc = (
        None
        if args.reduction == "none"
        else fastloss.Accumulator("cross_entropy", reduction=args.reduction, **kw)
    )

    call = _class_chunk_call(
        lambda x, y: fastloss.cross_entropy(x, y, reduction="none", **kw),
        acc,
        soft,
        n_classes,
        kw["ignore_index"],
    )
    _, out = _run_chunks(args, [logits, target], call, (n_rows,))
    return (out, out) if acc is None else (acc.result(), None)


def _class_chunk_call(
    row_losses: Callable[[np.ndarray, np.ndarray], Any],
    acc: Any,
    soft: bool,
    n_classes: int,
    ignore_index: int,
) -> ChunkCall:
    """A cross-entropy chunk (logits or input rows, target): its row losses for ``none``, else an
    update of ``acc``; a bad class index is named by its row in the whole file."""

    def call(parts: list[np.ndarray], start: int, stop: int) -> Any:
        x, y = parts
        try:
            if acc is None:
                return row_losses(x, y)
            acc.update(x, y)
            return 0.0
        except ValueError:
            if not soft:
                _check_labels(np.asarray(y), start, n_classes, ignore_index)
            raise

    return call


def _class_targets(target: RowSource, n_rows: int, n_classes: int, inputs: str) -> bool:
    """Checks a cross-entropy TARGET's shape against its rows and classes; True for probabilities."""
    if target.dtype.kind == "f":
        if target.shape != (n_rows, n_classes):
            raise CliError(
                f"{inputs} TARGET with probabilities must have shape ({n_rows}, {n_classes}); "
                f"got {target.shape}"
            )
        return True
    if target.dtype.kind not in "iu":
        raise CliError(
            f"{inputs} TARGET must hold integer class indices or floating probabilities; "
            f"got dtype {target.dtype}"
        )
    if target.shape != (n_rows,):
        raise CliError(f"{inputs} TARGET (class indices) must have shape ({n_rows},); got {target.shape}")
    return False


def _score_linear_cross_entropy(
    fastloss: ModuleType, args: argparse.Namespace, input: RowSource, target: RowSource
) -> tuple[Any, np.ndarray | None]:
    # The classifier (and bias, class weights) is read once and applied to every chunk of rows.
    kw: dict[str, Any] = {
        "linear_weight": load_small("--linear-weight", args.linear_weight),
        "ignore_index": -100 if args.ignore_index is None else args.ignore_index,
        "label_smoothing": 0.0 if args.label_smoothing is None else args.label_smoothing,
        "z_loss": 0.0 if args.z_loss is None else args.z_loss,
        "softcap": args.softcap,
    }
    for flag, name in (("--linear-bias", "linear_bias"), ("--weight", "weight")):
        if getattr(args, name) is not None:
            kw[name] = load_small(flag, getattr(args, name))
    classifier = kw["linear_weight"]
    if input.ndim != 2:
        raise CliError(f"linear_cross_entropy INPUT must be (N, H); got shape {input.shape}")
    n_rows, hidden = input.shape
    if classifier.ndim != 2 or classifier.shape[1] != hidden:
        raise CliError(
            f"--linear-weight must be (V, {hidden}) for INPUT {input.shape}; got {classifier.shape}"
        )
    n_classes = classifier.shape[0]
    soft = _class_targets(target, n_rows, n_classes, "linear_cross_entropy")
    try:
        acc = (
            None
            if args.reduction == "none"
            else fastloss.Accumulator("linear_cross_entropy", reduction=args.reduction, **kw)
        )
    except (ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None
    classifier_kw = {name: value for name, value in kw.items() if name != "linear_weight"}

    call = _class_chunk_call(
        lambda x, y: fastloss.linear_cross_entropy(x, classifier, y, reduction="none", **classifier_kw),
        acc,
        soft,
        n_classes,
        kw["ignore_index"],
    )
    _, out = _run_chunks(args, [input, target], call, (n_rows,))
    return (out, out) if acc is None else (acc.result(), None)


def _score_info_nce(
    fastloss: ModuleType,
    args: argparse.Namespace,
    query: RowSource,
    key: RowSource,
    sources: list[RowSource],
) -> tuple[Any, np.ndarray | None]:
    if query.ndim != 2:
        raise CliError(f"info_nce QUERY must be (N, D); got shape {query.shape}")
    if key.shape != query.shape:
        raise CliError(
            f"info_nce QUERY and POSITIVE_KEY must have the same shape (N, D); got QUERY "
            f"{query.shape} and POSITIVE_KEY {key.shape}"
        )
    n_rows, dim = query.shape
    mode = args.negative_mode or "unpaired"
    kw: dict[str, Any] = {
        "temperature": 0.07 if args.temperature is None else args.temperature,
        "normalize": bool(args.normalize),
        "negative_mode": mode,
    }
    if args.negatives is None:
        # In-batch negatives: every query's logits hold every key, so the rows do not split
        # into chunks; one call over the whole arrays (memory-mapped: O(N) extra memory).
        kw["symmetric"] = bool(args.symmetric)
        q, k = query.whole(), key.whole()
        return _whole_call(args, lambda: fastloss.info_nce(q, k, reduction=args.reduction, **kw))
    acc = None
    call: ChunkCall
    if mode == "unpaired":
        queue = load_small("--negatives", args.negatives)  # one queue for every chunk, read once
        if queue.ndim != 2 or queue.shape[1] != dim:
            raise CliError(
                f"--negatives (--negative-mode unpaired) must be a queue (M, {dim}) for queries "
                f"{query.shape}; got {queue.shape}"
            )
        streamed = [query, key]
        if args.reduction != "none":
            acc = fastloss.Accumulator("info_nce", reduction=args.reduction, negative_keys=queue, **kw)

        def call(parts: list[np.ndarray], start: int, stop: int) -> Any:
            if acc is None:
                return fastloss.info_nce(parts[0], parts[1], queue, reduction="none", **kw)
            acc.update(parts[0], parts[1])
            return 0.0

    else:
        negatives = open_array("--negatives", args.negatives)
        sources.append(negatives)
        if negatives.ndim != 3 or negatives.shape[0] != n_rows or negatives.shape[2] != dim:
            raise CliError(
                f"--negatives (--negative-mode paired) must be ({n_rows}, M, {dim}): M negatives "
                f"for each of the queries {query.shape}; got {negatives.shape}"
            )
        streamed = [query, key, negatives]
        if args.reduction != "none":
            acc = fastloss.Accumulator("info_nce", reduction=args.reduction, **kw)

        def call(parts: list[np.ndarray], start: int, stop: int) -> Any:
            if acc is None:
                return fastloss.info_nce(parts[0], parts[1], parts[2], reduction="none", **kw)
            acc.update(parts[0], parts[1], parts[2])
            return 0.0

    _, out = _run_chunks(args, streamed, call, (n_rows,))
    return (out, out) if acc is None else (acc.result(), None)


def _check_labels(y: np.ndarray, start: int, n_classes: int, ignore_index: int) -> None:
    """Name a bad label by its row in the whole file (fastloss names it within the chunk)."""
    bad = np.flatnonzero(((y < 0) | (y >= n_classes)) & (y != ignore_index))
    if bad.size:
        i = int(bad[0])
        raise CliError(
            f"TARGET value {y[i]} at row {start + i} is not a class index in "
            f"[0, {n_classes}) nor ignore_index ({ignore_index})"
        )


def _json_value(value: Any) -> Any:
    """A float or an array as JSON data; strict JSON has no nan/inf: they are the strings
    ``"nan"``, ``"inf"``, ``"-inf"``."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        x = float(arr)
        return x if math.isfinite(x) else repr(x)
    obj = arr.astype(object)
    bad = ~np.isfinite(arr)
    if bad.any():
        obj[bad] = [repr(float(v)) for v in arr[bad]]
    return obj.tolist()


def _json_report(args: argparse.Namespace, value: Any, rows: int) -> dict[str, Any]:
    report: dict[str, Any] = {"loss": args.loss, "reduction": args.reduction, "rows": int(rows)}
    if args.output is not None:
        report["out"] = args.out
    if args.output is None or args.reduction != "none":
        report["value"] = _json_value(value)
    return report


def _emit(args: argparse.Namespace, value: Any, out_map: np.ndarray | None, rows: int) -> str:
    """Prints the result (without ``--out``), or completes ``--out``'s temporary file and returns
    what it holds (for the "wrote FILE" line, printed once the file has its name)."""
    if args.output is None and args.json:
        _print_result(json.dumps(_json_report(args, value, rows)))
        return ""
    if args.reduction == "none":
        if args.output is None:
            with np.printoptions(threshold=1000, precision=8):
                _print_result(str(np.asarray(value)))
            return ""
        if isinstance(out_map, np.memmap):
            out_map.flush()
        return f" ({'x'.join(map(str, np.shape(value))) or 'scalar'}, {np.asarray(value).dtype})"
    text = repr(float(value))
    if args.output is None:
        _print_result(text)
        return ""
    try:
        with open(args.output.temp, "wb") as fh:
            if args.out.lower().endswith(".npy"):
                np.save(fh, np.float64(value))
            else:
                fh.write((text + "\n").encode())
    except OSError as exc:
        raise CliError(f"--out {args.out!r}: cannot write ({exc.strerror or exc})") from None
    return f": {text}"


def _print_result(text: str) -> None:
    """The result on stdout: one that cannot be written there is an error, never a silent exit 0."""
    if sys.stdout is None:  # started with stdout closed (``>&-``)
        raise CliError("standard output is closed, so the result cannot be printed; write it with --out FILE")
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except OSError as exc:
        # The interpreter flushes stdout again at exit: point it at devnull so that the error is
        # reported once, here.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass
        raise CliError(
            f"cannot write the result to standard output ({exc.strerror or exc}); write it with --out FILE"
        ) from None


# --- the parser ------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _positive_float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (x > 0 and math.isfinite(x)):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return x


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=PROG,
        description="fastloss: fast CPU losses (MSE, MAE, cross-entropy, InfoNCE, linear "
        "cross-entropy) for NumPy.",
    )
    ap.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    bench = sub.add_parser(
        "bench",
        help="benchmark fastloss against NumPy and any installed peer",
        description="Run the four losses (float32) on seeded synthetic data against the NumPy "
        "reference, the fastest NumPy formulation, PyTorch and JAX when installed, at the same "
        "thread counts; print medians, speedups, agreement with a float64 reference and the "
        "fraction of the machine's limits (memory bandwidth, matmul rate) measured in the same run.",
    )
    try:
        # fastloss._bench is bench/, installed by CMake (not in python/fastloss): mypy finds it untyped
        # in site-packages, or not at all where fastloss is not installed; _BenchRunner types its use.
        from ._bench import runner  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError as exc:
        bench.set_defaults(func=lambda args, _e=exc: _no_bench(_e))
    else:
        bench_runner = cast(_BenchRunner, runner)
        bench_runner.add_arguments(bench)
        bench.set_defaults(func=lambda args: bench_runner.run(args))

    score = sub.add_parser(
        "score",
        help="a loss of .npy/.npz/Parquet inputs of any size, streamed by rows",
        description="Compute LOSS(A, B) from .npy files (memory-mapped), .npz archives "
        "(FILE.npz:KEY; FILE.npz for a single-array archive) or Parquet columns (FILE.parquet:COLUMN, "
        "a numeric or fixed-size list column; needs pyarrow), in row chunks so any size fits in memory.",
    )
    score.add_argument(
        "loss",
        metavar="LOSS",
        choices=LOSSES + tuple(ALIASES),
        help=f"one of: {', '.join(LOSSES)} (ce = cross_entropy, lce = linear_cross_entropy)",
    )
    score.add_argument(
        "pred",
        metavar="A",
        help="PRED (mse/mae), logits (cross_entropy: (N, C) or (C,)), QUERY (info_nce: (N, D)), "
        "INPUT (linear_cross_entropy: (N, H))",
    )
    score.add_argument(
        "target",
        metavar="B",
        help="TARGET (mse/mae), class indices (N,) or probabilities (N, C) (cross_entropy; "
        "(N, V) for linear_cross_entropy), POSITIVE_KEY (info_nce: (N, D))",
    )
    score.add_argument(
        "--reduction",
        choices=REDUCTIONS,
        default="mean",
        help="default mean; 'none' streams one loss per element (per row for "
        "the cross-entropies and info_nce) into --out FILE.npy",
    )
    score.add_argument(
        "--out",
        metavar="FILE",
        help="write the result to FILE (.npy, or text for a reduction) instead of printing it",
    )
    score.add_argument(
        "--json",
        action="store_true",
        help="print a JSON object (loss, reduction, value, rows; with --out: the file) on stdout",
    )
    score.add_argument("--sample-weight", metavar="FILE", help="mse/mae: (N,) weights, one per row")
    score.add_argument(
        "--weight", metavar="FILE", help="cross_entropy, linear_cross_entropy: (C,) class weights"
    )
    score.add_argument(
        "--ignore-index",
        type=int,
        metavar="I",
        help="cross_entropy, linear_cross_entropy: label to ignore (default -100)",
    )
    score.add_argument(
        "--label-smoothing",
        type=float,
        metavar="EPS",
        help="cross_entropy, linear_cross_entropy: label smoothing in [0, 1] (default 0)",
    )
    score.add_argument(
        "--linear-weight",
        metavar="FILE",
        help="linear_cross_entropy (required): the (V, H) classifier, read once; the (N, V) logits "
        "INPUT @ W.T are never stored",
    )
    score.add_argument("--linear-bias", metavar="FILE", help="linear_cross_entropy: (V,) classifier bias")
    score.add_argument(
        "--z-loss", type=float, metavar="Z", help="linear_cross_entropy: z_loss * lse**2 per row (default 0)"
    )
    score.add_argument(
        "--softcap", type=float, metavar="CAP", help="linear_cross_entropy: cap * tanh(logit / cap) (Gemma 2)"
    )
    score.add_argument(
        "--negatives",
        metavar="FILE",
        help="info_nce: a queue (M, D) of negatives shared by every query, read once; with "
        "--negative-mode paired each query's own (N, M, D), streamed with the rows (default: "
        "in-batch negatives)",
    )
    score.add_argument(
        "--temperature", type=float, metavar="T", help="info_nce: temperature > 0 (default 0.07)"
    )
    score.add_argument(
        "--negative-mode",
        choices=NEGATIVE_MODES,
        help="info_nce: how --negatives is shaped (default unpaired)",
    )
    score.add_argument(
        "--normalize",
        action="store_true",
        default=None,
        help="info_nce: L2-normalise every query and key row first",
    )
    score.add_argument(
        "--symmetric",
        action="store_true",
        default=None,
        help="info_nce, in-batch negatives: average both directions (CLIP)",
    )
    score.add_argument("--threads", type=int, metavar="N", help="kernel threads (default: all cores)")
    score.add_argument(
        "--chunk-mb",
        type=_positive_float,
        default=64.0,
        metavar="MB",
        help="input bytes per chunk (default 64)",
    )
    score.add_argument(
        "--chunk-rows", type=_positive_int, metavar="ROWS", help="rows per chunk (overrides --chunk-mb)"
    )
    score.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (rate, ETA) on stderr (default: when stderr is a terminal)",
    )
    score.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    score.set_defaults(func=_score_main)
    return ap


def _no_bench(exc: Exception) -> int:
    print(
        f"{PROG} bench: error: the benchmark suite (fastloss._bench) is not installed with this "
        f"fastloss ({exc}); reinstall fastloss from its source",
        file=sys.stderr,
    )
    return 1


def _score_main(args: argparse.Namespace) -> int:
    try:
        return _score(args)
    except CliError as exc:
        print(f"{PROG} score: error: {exc}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"{PROG} score: error: out of memory; try a smaller --chunk-mb", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f": {exc.filename!r}" if getattr(exc, "filename", None) else ""
        print(f"{PROG} score: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as exc:  # argument checks in fastloss itself
        print(f"{PROG} score: error: {exc}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastloss`` command; returns the exit code."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse has printed them
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    args.command_line = [PROG] + argv
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
