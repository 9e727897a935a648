"""The ``fastloss`` command line (also ``python -m fastloss``).

``fastloss bench``
    The benchmark suite (``fastloss._bench``): the four losses on seeded synthetic data against
    the NumPy reference and every installed peer; a table, ``--json`` figures, a PNG chart.

``fastloss score LOSS PRED TARGET``
    A loss of two arrays stored in ``.npy`` / ``.npz`` files of any size. ``.npy`` files are
    memory-mapped read-only once their header and size are checked (pickles are never loaded);
    an ``.npz`` member (``file.npz`` for the archive's first member, i.e.
    ``np.load(file).files[0]``; ``file.npz:key`` for a named one) is memory-mapped when stored
    uncompressed (``np.savez``) and decompressed as a stream when compressed
    (``np.savez_compressed``). Rows are processed in chunks and the pages of rows
    already consumed are released, so memory use stays at about ``--chunk-mb`` whatever the file
    size. Reductions combine the chunks' sums exactly as the single call would: ``mean`` is the
    total sum over the total element count (for ``cross_entropy``, over the count or the class
    weight of the non-ignored rows, as PyTorch forms it), ``batchmean`` the total over the rows.
    ``--reduction none`` streams the per-element (per-row for ``cross_entropy``) losses into an
    ``.npy`` file written through ``np.lib.format.open_memmap``. Every ``--out`` file is written
    under a temporary name and renamed once complete; a result that cannot be printed (stdout
    closed, a broken pipe) is an error, exit code 1.

``fastloss --version``
    Prints the version.
"""

from __future__ import annotations

import argparse
import math
import mmap
import os
import struct
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import IO, Any, Protocol, cast

import numpy as np
import numpy.typing as npt

from ._validation import check_int, check_label_smoothing, check_threads
from ._version import __version__

__all__ = ["main"]

PROG = "fastloss"
LOSSES = ("mse", "mae", "cross_entropy")
REDUCTIONS = ("mean", "sum", "batchmean", "none")
# Largest ``reduction none`` result printed to the terminal instead of written with --out.
_MAX_PRINTED = 10_000_000


class CliError(Exception):
    """A user error: printed as one line, exit code 1."""


# One chunk's call of a loss: (pred rows, target rows, start, stop) -> fastloss's result for the chunk.
ChunkCall = Callable[[np.ndarray, np.ndarray, int, int], Any]


class _BenchRunner(Protocol):
    """What ``fastloss bench`` uses of ``fastloss._bench.runner`` (installed from bench/)."""

    def add_arguments(self, ap: argparse.ArgumentParser) -> argparse.ArgumentParser: ...

    def run(self, args: argparse.Namespace) -> int: ...


# --- arrays on disk, read by rows ------------------------------------------------------------


class RowSource:
    """Rows ``[start, stop)`` of an array on disk, read in increasing order."""

    def __init__(self, label: str, spec: str, shape: Iterable[int], dtype: npt.DTypeLike) -> None:
        self.label, self.spec = label, spec
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def row_bytes(self) -> int:
        return self.dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))

    def rows(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def release(self, start: int, stop: int) -> None:
        """Rows before ``stop`` will not be read again."""

    def whole(self) -> np.ndarray:
        return self.rows(0, self.shape[0]) if self.ndim else self.rows(0, 0)

    def close(self) -> None:
        pass


class MappedSource(RowSource):
    """A memory map: random access, pages read on demand and dropped by the OS under pressure."""

    def __init__(self, label: str, spec: str, array: np.ndarray) -> None:
        super().__init__(label, spec, array.shape, array.dtype)
        self.array = array

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop] if self.ndim else self.array[()]

    def release(self, start: int, stop: int) -> None:
        """Drop rows ``[start, stop)`` from this process's resident set once consumed (they
        stay in the page cache), so RSS stays near one chunk whatever the file size."""
        _drop_pages(self.array, start, stop)

    def whole(self) -> np.ndarray:
        return self.array

    def close(self) -> None:
        # A memory map closes when its last view goes; closing it earlier would leave views
        # pointing at unmapped memory (mmap refuses that anyway while buffers are exported).
        self.array = None  # type: ignore[assignment]  # drops the reference: a closed source is not read


class StreamSource(RowSource):
    """A compressed ``.npz`` member decompressed as it is read: rows in order only."""

    def __init__(
        self, label: str, spec: str, fh: IO[bytes], shape: Iterable[int], dtype: npt.DTypeLike
    ) -> None:
        super().__init__(label, spec, shape, dtype)
        self.fh = fh
        self.pos = 0

    def rows(self, start: int, stop: int) -> np.ndarray:
        if self.ndim == 0:
            return np.frombuffer(self._read(self.dtype.itemsize), self.dtype).reshape(())
        if start != self.pos:
            raise CliError(f"{self.label}: internal error: compressed member read out of order")
        n = stop - start
        buf = self._read(n * self.row_bytes)
        self.pos = stop
        return np.frombuffer(buf, dtype=self.dtype).reshape((n,) + self.shape[1:])

    def _read(self, nbytes: int) -> bytes:
        data = _read_member(self.fh, nbytes, f"{self.label}: {self.spec}")
        if len(data) != nbytes:
            raise CliError(f"{self.label}: {self.spec} is truncated")
        return data

    def close(self) -> None:
        self.fh.close()


def _drop_pages(array: np.ndarray, start: int, stop: int) -> None:
    """``madvise(MADV_DONTNEED)`` on the whole pages of rows ``[start, stop)`` of a C-ordered
    ``np.memmap`` (a no-op where that is not available). Written pages must be flushed first."""
    mm = getattr(array, "_mmap", None)
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if mm is None or advice is None or not array.flags.c_contiguous or array.ndim == 0:
        return
    try:
        base = np.frombuffer(mm, dtype=np.uint8).__array_interface__["data"][0]
        first = array.__array_interface__["data"][0] - base
        row = array.strides[0]
        lo = first + start * row
        hi = first + stop * row
        page = mmap.PAGESIZE
        lo = -(-lo // page) * page  # whole pages only: neighbours may still be in use
        hi = hi // page * page
        if hi > lo:
            mm.madvise(advice, lo, hi - lo)
    except (ValueError, OSError, AttributeError, TypeError):
        pass


def _read_member(fh: IO[bytes], nbytes: int, what: str) -> bytes:
    """``fh.read(nbytes)`` from a compressed ``.npz`` member, a damaged archive as a CliError."""
    try:
        return fh.read(nbytes)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise CliError(f"{what} is corrupt ({exc})") from None


def _read_npy_header(fh: IO[bytes], what: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(fh)
        else:
            # Private, not in NumPy's stubs: the reader of format versions after 2.0 (3.0: utf8 names).
            shape, fortran, dtype = fmt._read_array_header(fh, version)  # type: ignore[attr-defined]
    except (zipfile.BadZipFile, zlib.error) as exc:
        raise CliError(f"{what} is corrupt ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - a damaged header raises ValueError, TypeError,
        # SyntaxError or tokenize.TokenError from NumPy's parser: each means "not an .npy file"
        raise CliError(f"{what} is not a valid .npy file ({exc})") from None
    if dtype.hasobject:
        raise CliError(
            f"{what} holds Python objects (dtype {dtype}); only numeric arrays are "
            "read (pickles are never loaded)"
        )
    return shape, fortran, dtype


def _map_npy(label: str, spec: str, path: str, offset: int, what: str) -> MappedSource:
    """The ``.npy`` array stored at ``offset`` in ``path`` (a ``.npy`` file, or an uncompressed
    ``.npz`` member), memory-mapped read-only after its header and size are checked."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        shape, fortran, dtype = _read_npy_header(fh, what)
        data_offset = fh.tell()
    # Python ints: a corrupt header's shape may overflow int64.
    nbytes = math.prod(shape) * dtype.itemsize
    if data_offset + nbytes > os.path.getsize(path):
        raise CliError(
            f"{what} is truncated: its header promises {nbytes} bytes of data ("
            f"{'x'.join(map(str, shape)) or 'scalar'} {dtype})"
        )
    if nbytes == 0:
        return MappedSource(label, spec, np.empty(shape, dtype))
    arr = np.memmap(
        path, dtype=dtype, mode="r", offset=data_offset, shape=shape, order="F" if fortran else "C"
    )
    return MappedSource(label, spec, arr)


def _zip_data_offset(path: str, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes start: after its local header, whose name and extra
    fields may differ in length from the central directory's copy."""
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        header = fh.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise CliError(f"{path}: bad zip local header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + int(name_len) + int(extra_len)


def _open_npz(label: str, spec: str, path: str, key: str | None) -> RowSource:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise CliError(f"{label}: {path} is not a valid .npz file ({exc})") from None
    with zf:
        members = [n for n in zf.namelist() if n.endswith(".npy")]
        if not members:
            raise CliError(f"{label}: {path} holds no arrays")
        if key is None:
            name = members[0]
        else:
            name = key if key.endswith(".npy") else key + ".npy"
            if name not in members:
                keys = ", ".join(n[:-4] for n in members)
                raise CliError(f"{label}: {path} has no array named {key!r} (it has: {keys})")
        info = zf.getinfo(name)
    what = f"{label} ({path}:{name[:-4]})"
    if info.compress_type == zipfile.ZIP_STORED:
        return _map_npy(label, spec, path, _zip_data_offset(path, info), what)
    # Compressed: decompress while reading, in row order.
    zf = zipfile.ZipFile(path)
    try:
        fh = zf.open(name)
    except (zipfile.BadZipFile, zlib.error, NotImplementedError) as exc:
        raise CliError(f"{what} cannot be read ({exc})") from None
    shape, fortran, dtype = _read_npy_header(fh, what)
    if fortran and len(shape) > 1:
        # Rows of a Fortran-order array are not contiguous in the stream: read it whole.
        print(
            f"{PROG} score: note: {what} is a compressed Fortran-order array; reading it into memory whole",
            file=sys.stderr,
        )
        nbytes = math.prod(shape) * dtype.itemsize
        data = _read_member(fh, nbytes, what)
        fh.close()
        if len(data) != nbytes:
            raise CliError(f"{what} is truncated")
        arr = np.frombuffer(data, dtype=dtype).reshape(shape, order="F")
        return MappedSource(label, spec, arr)
    return StreamSource(label, spec, fh, shape, dtype)


def open_array(label: str, spec: str) -> RowSource:
    """``path.npy``, ``path.npz`` (its first array) or ``path.npz:key``."""
    path, key = spec, None
    if not os.path.exists(spec) and ":" in spec:
        head, _, tail = spec.rpartition(":")
        if head.lower().endswith(".npz") and tail:
            path, key = head, tail
    if not os.path.exists(path):
        raise CliError(f"{label}: no such file: {path!r}")
    if os.path.isdir(path):
        raise CliError(f"{label}: {path!r} is a directory, not a .npy/.npz file")
    with open(path, "rb") as fh:
        start = fh.read(4)
    # A zip archive starts with a local file header; a truncated one has lost the central
    # directory that zipfile.is_zipfile looks for, and _open_npz says so.
    if start == b"PK\x03\x04" or zipfile.is_zipfile(path):
        return _open_npz(label, spec, path, key)
    if key is not None:
        raise CliError(f"{label}: {path} is not an .npz archive, so it has no array {key!r}")
    return _map_npy(label, spec, path, 0, f"{label} ({path})")


def _load_small(label: str, spec: str) -> np.ndarray:
    src = open_array(label, spec)
    try:
        return np.array(src.whole())
    finally:
        src.close()


# --- progress on stderr ----------------------------------------------------------------------


class Progress:
    """``[#####.....]  48%  1.20/2.50 GiB  612 MiB/s`` on stderr, redrawn at most 10x/s."""

    def __init__(self, total_rows: int, row_bytes: int, title: str, enabled: bool) -> None:
        self.total = max(total_rows, 0)
        self.row_bytes = row_bytes
        self.title = title
        self.enabled = enabled and self.total > 0
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.done = 0

    def update(self, rows: int) -> None:
        self.done = rows
        now = time.perf_counter()
        if self.enabled and (now - self.last >= 0.1 or rows >= self.total):
            self.last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        frac = self.done / self.total if self.total else 1.0
        width = 30
        filled = int(frac * width)
        gib = 2.0**30
        speed = self.done * self.row_bytes / max(now - self.t0, 1e-9) / 2.0**20
        sys.stderr.write(
            f"\r{self.title} [{'#' * filled}{'.' * (width - filled)}] "
            f"{100 * frac:5.1f}%  {self.done * self.row_bytes / gib:.2f}/"
            f"{self.total * self.row_bytes / gib:.2f} GiB  {speed:.0f} MiB/s"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


# --- score -----------------------------------------------------------------------------------


def _divide(num: float, den: float) -> float:
    """IEEE division, as fastloss's reductions do it: x/0 is +-inf, 0/0 is nan."""
    if den == 0:
        return math.nan if num == 0 or math.isnan(num) else math.copysign(math.inf, num)
    return num / den


def _chunk_rows(args: argparse.Namespace, row_bytes: int) -> int:
    if args.chunk_rows:
        return int(args.chunk_rows)
    return max(1, int(args.chunk_mb * 2**20) // max(1, row_bytes))


def _score(args: argparse.Namespace) -> int:
    import fastloss

    # fastloss's own checks, naming the options: a bad value is refused before any file is read.
    if args.threads is not None:
        fastloss.set_num_threads(check_threads(args.threads, "--threads"))
    if args.ignore_index is not None:
        check_int(args.ignore_index, "--ignore-index")
    if args.label_smoothing is not None:
        check_label_smoothing(args.label_smoothing, "--label-smoothing")
    if args.reduction == "none" and args.out and not args.out.lower().endswith(".npy"):
        raise CliError(
            f"--out {args.out!r}: reduction 'none' writes an .npy file; give a name ending in .npy"
        )
    if args.loss != "cross_entropy":
        for opt, name in (
            (args.weight, "--weight"),
            (args.ignore_index, "--ignore-index"),
            (args.label_smoothing, "--label-smoothing"),
        ):
            if opt is not None:
                raise CliError(f"{name} applies to cross_entropy only, not {args.loss}")
    elif args.sample_weight is not None:
        raise CliError("--sample-weight applies to mse and mae; cross_entropy takes --weight")

    args.output = OutputFile(args.out) if args.out else None
    sources: list[RowSource] = []
    try:
        try:
            pred = open_array("PRED", args.pred)
            sources.append(pred)
            target = open_array("TARGET", args.target)
            sources.append(target)
            if args.loss in ("mse", "mae"):
                value, out_map = _score_regression(fastloss, args, pred, target)
            else:
                value, out_map = _score_cross_entropy(fastloss, args, pred, target)
        finally:
            for s in sources:
                s.close()
        wrote = _emit(args, value, out_map)
        if args.output is not None:
            del value, out_map  # the output map's last references: unmapped before the rename
            args.output.commit()
            print(f"wrote {args.out}{wrote}", file=sys.stderr)
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
    pred: RowSource,
    target: RowSource,
    call: ChunkCall,
    result_shape: tuple[int, ...],
) -> tuple[float, np.ndarray | None]:
    """Feed row chunks to ``call(p, t, start, stop)``; for ``reduction none`` gather its
    outputs into ``--out`` (an open_memmap) or an in-memory array. Returns the summed reduction
    values (``None`` for ``none``) and the ``none`` output."""
    n_rows = pred.shape[0]
    step = _chunk_rows(args, pred.row_bytes + target.row_bytes)
    progress = Progress(
        n_rows, pred.row_bytes + target.row_bytes, f"{PROG} score {args.loss}", _progress_enabled(args)
    )
    total = 0.0
    out: np.ndarray | None = None
    try:
        for start in range(0, n_rows, step) if n_rows else [0]:
            stop = min(start + step, n_rows)
            p, t = pred.rows(start, stop), target.rows(start, stop)
            try:
                res = call(p, t, start, stop)
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
            del p, t, res
            pred.release(start, stop)
            target.release(start, stop)
            progress.update(stop)
    finally:
        progress.close()
    if args.reduction == "none" and isinstance(out, np.memmap):
        out.flush()
    return total, out


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
    _drop_pages(out, start, stop)


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
    per_row = int(np.prod(pred.shape[1:], dtype=np.int64))
    weights = None
    if args.sample_weight is not None:
        weights = _load_small("--sample-weight", args.sample_weight)
        if weights.shape != (n_rows,):
            raise CliError(
                f"--sample-weight must have shape ({n_rows},) (one weight per row of "
                f"PRED); got {weights.shape}"
            )
    red = "none" if args.reduction == "none" else "sum"

    def call(p: np.ndarray, t: np.ndarray, start: int, stop: int) -> Any:
        w = None if weights is None else weights[start:stop]
        return f(p, t, reduction=red, sample_weight=w)

    total, out = _run_chunks(args, pred, target, call, pred.shape)
    if args.reduction in ("none", "sum"):
        return (out if args.reduction == "none" else total), out
    if weights is None:
        den = float(n_rows) * per_row if args.reduction == "mean" else float(n_rows)
    else:
        wsum = float(weights.sum(dtype=np.float64))
        den = wsum * per_row if args.reduction == "mean" else wsum
    return _divide(total, den), None


def _score_cross_entropy(
    fastloss: ModuleType, args: argparse.Namespace, logits: RowSource, target: RowSource
) -> tuple[Any, np.ndarray | None]:
    kw: dict[str, Any] = {
        "ignore_index": -100 if args.ignore_index is None else args.ignore_index,
        "label_smoothing": 0.0 if args.label_smoothing is None else args.label_smoothing,
    }
    weight = _load_small("--weight", args.weight) if args.weight is not None else None
    if weight is not None:
        kw["weight"] = weight
    if logits.ndim == 1:
        # One sample of C logits: nothing to stream.
        try:
            value = fastloss.cross_entropy(
                np.asarray(logits.whole()), np.asarray(target.whole()), reduction=args.reduction, **kw
            )
        except (ValueError, TypeError) as exc:
            raise CliError(str(exc)) from None
        out = None
        if args.reduction == "none":
            out = _open_output(args, np.shape(value), np.asarray(value).dtype)
            out[...] = value
            value = out
        return value, out
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
    red = "none" if args.reduction == "none" else "sum"
    denominator = [0.0]
    w64 = None if weight is None else np.asarray(weight, dtype=np.float64)

    def call(x: np.ndarray, y: np.ndarray, start: int, stop: int) -> Any:
        try:
            res = fastloss.cross_entropy(x, y, reduction=red, **kw)
        except ValueError:
            if not soft:
                _check_labels(np.asarray(y), start, n_classes, kw["ignore_index"])
            raise
        if not soft and args.reduction == "mean":
            yv = np.asarray(y)
            kept = yv[yv != kw["ignore_index"]]  # labels are valid: fastloss checked them
            denominator[0] += float(w64[kept].sum()) if w64 is not None else float(kept.size)
        return res

    total, out = _run_chunks(args, logits, target, call, (n_rows,))
    if args.reduction == "none":
        return out, out
    if args.reduction == "sum":
        return total, None
    if args.reduction == "batchmean" or soft:
        return _divide(total, float(n_rows)), None
    return _divide(total, denominator[0]), None


def _check_labels(y: np.ndarray, start: int, n_classes: int, ignore_index: int) -> None:
    """Name a bad label by its row in the whole file (fastloss names it within the chunk)."""
    bad = np.flatnonzero(((y < 0) | (y >= n_classes)) & (y != ignore_index))
    if bad.size:
        i = int(bad[0])
        raise CliError(
            f"TARGET value {y[i]} at row {start + i} is not a class index in "
            f"[0, {n_classes}) nor ignore_index ({ignore_index})"
        )


def _emit(args: argparse.Namespace, value: Any, out_map: np.ndarray | None) -> str:
    """Prints the result, or completes ``--out``'s temporary file and returns what it holds (for
    the "wrote FILE" line, printed once the file has its name)."""
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


def _progress_enabled(args: argparse.Namespace) -> bool:
    if args.progress is None:
        return sys.stderr.isatty()
    return bool(args.progress)


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
        description="fastloss: fast CPU losses (MSE, MAE, cross-entropy, InfoNCE) for NumPy.",
    )
    ap.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    bench = sub.add_parser(
        "bench",
        help="benchmark fastloss against NumPy and any installed peer",
        description="Run the four losses (float32) on seeded synthetic data against the NumPy "
        "reference, the fastest NumPy formulation, PyTorch and JAX when installed; "
        "print medians, speedups and agreement with a float64 reference.",
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
        help="a loss of two .npy/.npz files of any size, streamed by rows",
        description="Compute LOSS(PRED, TARGET) from .npy files (memory-mapped) or .npz archives "
        "(FILE.npz for the first array, FILE.npz:KEY for a named one), in row chunks "
        "so any size fits in memory.",
    )
    score.add_argument("loss", metavar="LOSS", choices=LOSSES, help=f"one of: {', '.join(LOSSES)}")
    score.add_argument("pred", metavar="PRED", help="predictions (cross_entropy: logits, (N, C) or (C,))")
    score.add_argument(
        "target", metavar="TARGET", help="targets (cross_entropy: class indices (N,) or probabilities (N, C))"
    )
    score.add_argument(
        "--reduction",
        choices=REDUCTIONS,
        default="mean",
        help="default mean; 'none' streams one loss per element (per row for "
        "cross_entropy) into --out FILE.npy",
    )
    score.add_argument(
        "--out",
        metavar="FILE",
        help="write the result to FILE (.npy, or text for a reduction) instead of printing it",
    )
    score.add_argument(
        "--sample-weight", metavar="FILE", help="mse/mae: (N,) weights, one per row (.npy/.npz)"
    )
    score.add_argument("--weight", metavar="FILE", help="cross_entropy: (C,) class weights (.npy/.npz)")
    score.add_argument(
        "--ignore-index", type=int, metavar="I", help="cross_entropy: label to ignore (default -100)"
    )
    score.add_argument(
        "--label-smoothing",
        type=float,
        metavar="EPS",
        help="cross_entropy: label smoothing in [0, 1] (default 0)",
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
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
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
