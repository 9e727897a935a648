"""Arrays on disk, read by rows: the inputs of ``fastloss score``.

``open_array(label, spec)`` opens one input named on the command line:

- ``file.npy``: memory-mapped read-only once its header and size are checked (pickles are never
  loaded);
- ``file.npz:KEY`` (or ``file.npz`` when the archive holds exactly one array): the member is
  memory-mapped when stored uncompressed (``np.savez``) and decompressed as a stream when
  compressed (``np.savez_compressed``);
- ``file.parquet:COLUMN`` (or ``file.parquet`` when it has exactly one column): a numeric column
  (rows of scalars) or a fixed-size list column (rows of features, logits or embeddings; nested
  fixed-size lists give ``(N, M, D)``), read one row group at a time (decoded in batches) with pyarrow
  (``pip install "fastloss[parquet]"``).

Rows are read in increasing order and released once consumed (``release``), so a reader holds
about one chunk (a Parquet reader: one row group and one chunk) whatever the file size. Every
problem with a file is an ``InputError`` whose message names the input and the file.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
import sys
import zipfile
import zlib
from collections.abc import Iterable
from typing import IO, Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "InputError",
    "MappedSource",
    "ParquetSource",
    "RowSource",
    "StreamSource",
    "drop_pages",
    "load_small",
    "open_array",
]


class InputError(Exception):
    """A problem with an input file (or a command-line value): printed as one line, exit code 1."""


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
        drop_pages(self.array, start, stop)

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
            raise InputError(f"{self.label}: internal error: compressed member read out of order")
        n = stop - start
        buf = self._read(n * self.row_bytes)
        self.pos = stop
        return np.frombuffer(buf, dtype=self.dtype).reshape((n,) + self.shape[1:])

    def _read(self, nbytes: int) -> bytes:
        data = _read_member(self.fh, nbytes, f"{self.label}: {self.spec}")
        if len(data) != nbytes:
            raise InputError(f"{self.label}: {self.spec} is truncated")
        return data

    def close(self) -> None:
        self.fh.close()


def drop_pages(array: np.ndarray, start: int, stop: int) -> None:
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
    """``fh.read(nbytes)`` from a compressed ``.npz`` member, a damaged archive as a InputError."""
    try:
        return fh.read(nbytes)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise InputError(f"{what} is corrupt ({exc})") from None


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
        raise InputError(f"{what} is corrupt ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - a damaged header raises ValueError, TypeError,
        # SyntaxError or tokenize.TokenError from NumPy's parser: each means "not an .npy file"
        raise InputError(f"{what} is not a valid .npy file ({exc})") from None
    if dtype.hasobject:
        raise InputError(
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
        raise InputError(
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
        raise InputError(f"{path}: bad zip local header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + int(name_len) + int(extra_len)


def _open_npz(label: str, spec: str, path: str, key: str | None) -> RowSource:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise InputError(f"{label}: {path} is not a valid .npz file ({exc})") from None
    with zf:
        members = [n for n in zf.namelist() if n.endswith(".npy")]
        if not members:
            raise InputError(f"{label}: {path} holds no arrays")
        if key is None:
            if len(members) > 1:
                # np.load(...).files[0] would be a guess (`score mse a.npz a.npz` scored an
                # array against itself: 0.0): the user names the member.
                keys = ", ".join(n[:-4] for n in members)
                raise InputError(
                    f"{label}: {path} holds {len(members)} arrays ({keys}): name one as {path}:KEY"
                )
            name = members[0]
        else:
            name = key if key.endswith(".npy") else key + ".npy"
            if name not in members:
                keys = ", ".join(n[:-4] for n in members)
                raise InputError(f"{label}: {path} has no array named {key!r} (it has: {keys})")
        info = zf.getinfo(name)
    what = f"{label} ({path}:{name[:-4]})"
    if info.compress_type == zipfile.ZIP_STORED:
        return _map_npy(label, spec, path, _zip_data_offset(path, info), what)
    # Compressed: decompress while reading, in row order.
    zf = zipfile.ZipFile(path)
    try:
        fh = zf.open(name)
    except (zipfile.BadZipFile, zlib.error, NotImplementedError) as exc:
        raise InputError(f"{what} cannot be read ({exc})") from None
    shape, fortran, dtype = _read_npy_header(fh, what)
    if fortran and len(shape) > 1:
        # Rows of a Fortran-order array are not contiguous in the stream: read it whole.
        print(
            f"fastloss score: note: {what} is a compressed Fortran-order array; reading it into memory whole",
            file=sys.stderr,
        )
        nbytes = math.prod(shape) * dtype.itemsize
        data = _read_member(fh, nbytes, what)
        fh.close()
        if len(data) != nbytes:
            raise InputError(f"{what} is truncated")
        arr = np.frombuffer(data, dtype=dtype).reshape(shape, order="F")
        return MappedSource(label, spec, arr)
    return StreamSource(label, spec, fh, shape, dtype)


def _split_spec(spec: str) -> tuple[str, str | None]:
    """``path``, or ``(path, key)`` for ``file.npz:KEY`` / ``file.parquet:COLUMN`` (the last
    colon; a file whose name holds the colon wins)."""
    if not os.path.exists(spec) and ":" in spec:
        head, _, tail = spec.rpartition(":")
        if head.lower().endswith((".npz", ".parquet", ".pq")) and tail:
            return head, tail
    return spec, None


def open_array(label: str, spec: str) -> RowSource:
    """``path.npy``; ``path.npz:key`` (``path.npz`` for a single-array archive);
    ``path.parquet:column`` (``path.parquet`` for a single-column file). The kind of file is
    told by its first bytes, not its name."""
    path, key = _split_spec(spec)
    if not os.path.exists(path):
        raise InputError(f"{label}: no such file: {path!r}")
    if os.path.isdir(path):
        raise InputError(f"{label}: {path!r} is a directory, not a .npy/.npz/.parquet file")
    with open(path, "rb") as fh:
        start = fh.read(4)
    # A zip archive starts with a local file header; a truncated one has lost the central
    # directory that zipfile.is_zipfile looks for, and _open_npz says so.
    if start == b"PK\x03\x04" or zipfile.is_zipfile(path):
        return _open_npz(label, spec, path, key)
    if start == b"PAR1":
        return ParquetSource(label, spec, path, key)
    if key is not None:
        raise InputError(
            f"{label}: {path} is not an .npz archive nor a Parquet file, so it has no array {key!r}"
        )
    return _map_npy(label, spec, path, 0, f"{label} ({path})")


def load_small(label: str, spec: str) -> np.ndarray:
    """A small input (class weights, sample weights, a queue of negatives) read whole into memory."""
    src = open_array(label, spec)
    try:
        return np.array(src.whole())
    finally:
        src.close()


# --- Parquet ---------------------------------------------------------------------------------


def _pyarrow(label: str, path: str) -> tuple[Any, Any]:
    try:
        # pyarrow ships no type information: its objects are Any here.
        import pyarrow  # type: ignore[import-untyped, import-not-found, unused-ignore]
        import pyarrow.parquet  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError:
        raise InputError(
            f'{label}: {path} is a Parquet file, which needs pyarrow: pip install "fastloss[parquet]"'
        ) from None
    return pyarrow, pyarrow.parquet


class ParquetSource(RowSource):
    """One column of a Parquet file, read in order: one row group at a time, decoded in batches
    of about ``BATCH_BYTES`` (rows in order only).

    A numeric column gives ``(N,)``; a ``fixed_size_list<...>[D]`` column ``(N, D)``, and nested
    fixed-size lists ``(N, M, D)``. Nulls and variable-length lists are refused (rows must all
    have the same shape). Pages are read through a small buffer (``pre_buffer=False``: pyarrow
    would otherwise read whole column chunks, or the whole file, ahead), and only the decoded
    batches that the current chunk needs are held."""

    BATCH_BYTES = 16 * 2**20

    def __init__(self, label: str, spec: str, path: str, column: str | None) -> None:
        pa, pq = _pyarrow(label, path)
        self._pa = pa
        try:
            self.file = pq.ParquetFile(path, pre_buffer=False, buffer_size=2**20)
            schema = self.file.schema_arrow
            n_rows = int(self.file.metadata.num_rows)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise InputError(f"{label}: {path} is not a valid Parquet file ({exc})") from None
        names = list(schema.names)
        if column is None:
            if len(names) != 1:
                cols = ", ".join(names) or "none"
                raise InputError(
                    f"{label}: {path} has {len(names)} columns ({cols}): name one as {path}:COLUMN"
                )
            column = names[0]
        elif column not in names:
            raise InputError(f"{label}: {path} has no column named {column!r} (it has: {', '.join(names)})")
        self.column = column
        self.what = f"{label} ({path}:{column})"
        kind = schema.field(column).type
        inner: list[int] = []
        while pa.types.is_fixed_size_list(kind):
            inner.append(int(kind.list_size))
            kind = kind.value_type
        if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_list_view(kind):
            raise InputError(
                f"{self.what} is a variable-length list column ({schema.field(column).type}); rows "
                "of features must be a fixed-size list column (pyarrow.list_(type, size))"
            )
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
            raise InputError(
                f"{self.what} has type {schema.field(column).type}: only numeric columns and "
                "fixed-size lists of numbers are read"
            )
        super().__init__(label, spec, (n_rows, *inner), np.dtype(kind.to_pandas_dtype()))
        batch_rows = max(1, self.BATCH_BYTES // max(1, self.row_bytes))
        self.batches = iter(self.file.iter_batches(batch_size=batch_rows, columns=[column]))
        self.pieces: list[np.ndarray] = []  # decoded rows not yet released, in file order
        self.buf_start = 0  # file row of self.pieces[0][0]
        self.buffered = 0  # rows in self.pieces
        self.pos = 0

    def _next_batch(self, stop: int) -> np.ndarray:
        pa = self._pa
        try:
            batch = next(self.batches)
        except StopIteration:
            raise InputError(
                f"{self.what} is truncated: its row groups hold fewer than {stop} rows"
            ) from None
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise InputError(f"{self.what} cannot be read ({exc})") from None
        values = batch.column(0)
        n = len(values)
        for _ in self.shape[1:]:
            if values.null_count:
                break
            values = values.flatten()  # one level of fixed-size lists, slicing offsets applied
        first = self.buf_start + self.buffered
        if values.null_count:
            raise InputError(
                f"{self.what} holds nulls (in rows {first}..{first + n - 1}); rows must be complete"
            )
        flat = np.asarray(values.to_numpy(zero_copy_only=False), dtype=self.dtype)
        if flat.size != n * math.prod(self.shape[1:]):  # pragma: no cover - nulls are refused above
            raise InputError(f"{self.what}: rows {first}..{first + n - 1} are of the wrong size")
        return flat.reshape((n, *self.shape[1:]))

    def rows(self, start: int, stop: int) -> np.ndarray:
        if start != self.pos:
            raise InputError(f"{self.what}: internal error: Parquet rows read out of order")
        while self.buf_start + self.buffered < stop:
            piece = self._next_batch(stop)
            self.pieces.append(piece)
            self.buffered += len(piece)
        parts = []
        offset = self.buf_start
        for piece in self.pieces:
            lo, hi = max(start, offset), min(stop, offset + len(piece))
            if hi > lo:
                parts.append(piece[lo - offset : hi - offset])
            offset += len(piece)
        self.pos = stop
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return np.empty((0, *self.shape[1:]), self.dtype)
        return np.concatenate(parts)

    def release(self, start: int, stop: int) -> None:
        while self.pieces and self.buf_start + len(self.pieces[0]) <= stop:
            done = self.pieces.pop(0)
            self.buf_start += len(done)
            self.buffered -= len(done)

    def close(self) -> None:
        self.pieces = []
        self.batches = iter(())
        self.file = None
