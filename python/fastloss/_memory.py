"""Memory for large gradients that is reused once the caller has let go of it.

``np.empty`` of a large array maps fresh pages from the kernel on every call, and the kernel
zeroes each page at its first write: for ``ce_large_grad`` (a 262 MB float32 gradient) that
zeroing took about 40% of the call (perf: ``clear_page_erms``; 66 ms per call against 40 ms
into a reused buffer, 1 thread, Intel Xeon). ``empty`` gives a gradient of at least
``MIN_BYTES`` its own private anonymous mapping instead. When the last array that uses a mapping
is garbage collected, the mapping is marked ``MADV_FREE`` and kept (at most ``KEEP`` of them, the
most recent): its pages stay the process's until the kernel needs memory, when it takes them back
without writing them anywhere (they come back as zero pages on the next write), so an idle
mapping costs no memory that the system is short of. A later gradient of the same size is
written into those pages without a fault. Where ``madvise``/``MADV_FREE`` are missing (Windows),
``empty`` is ``np.empty``.

A mapping is reused only after every array over it is gone: views, slices and tensors made with
``torch.from_numpy`` keep it (they keep the array made here alive), so reuse never changes an
array that anyone still holds.
"""

from __future__ import annotations

import collections
import mmap
import threading
import weakref

import numpy as np

# Below this, np.empty is as fast: glibc's malloc keeps and reuses freed blocks up to its largest
# mmap threshold (32 MiB on 64-bit), and one call costs little next to the writes.
MIN_BYTES = 32 << 20
# Released mappings kept: two, so that a loop which holds the previous step's gradient while it
# computes the next one (`loss, grad = f(...)` in a loop) alternates between them.
KEEP = 2

_SUPPORTED = hasattr(mmap, "MADV_FREE") and hasattr(mmap, "MAP_PRIVATE") and hasattr(mmap.mmap, "madvise")
# Released mappings, the most recent last. Only atomic deque operations touch it where a release
# can run (a weakref callback may run in any thread, also while `empty` holds _take_lock).
_released: collections.deque[mmap.mmap] = collections.deque()
_take_lock = threading.Lock()


def _release(mapping: mmap.mmap) -> None:
    """The last array over `mapping` is being collected: keep its pages for the next gradient."""
    try:
        mapping.madvise(mmap.MADV_FREE)
    except (OSError, ValueError):  # not private anonymous memory after all, or closed: drop it
        return
    _released.append(mapping)
    while len(_released) > KEEP:
        try:
            _released.popleft()  # unmapped when its last array has finished being collected
        except IndexError:
            break


def _take(nbytes: int) -> mmap.mmap | None:
    """A released mapping of exactly `nbytes`, or None."""
    with _take_lock:
        for _ in range(len(_released)):
            try:
                mapping = _released.pop()
            except IndexError:
                return None
            if len(mapping) == nbytes:
                return mapping
            _released.appendleft(mapping)
    return None


def empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous array, as ``np.empty(shape, dtype)``; at ``MIN_BYTES`` and
    above its memory is a mapping of its own that later calls may reuse once it is released."""
    dtype = np.dtype(dtype)
    count = 1
    for extent in shape:
        count *= int(extent)
    nbytes = count * dtype.itemsize
    if not _SUPPORTED or nbytes < MIN_BYTES:
        return np.empty(shape, dtype=dtype)
    mapping = _take(nbytes)
    if mapping is None:
        try:
            mapping = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except (OSError, OverflowError):
            # No such mapping (address space, overcommit policy): NumPy's allocation then raises
            # MemoryError, as for any buffer a call cannot hold (or succeeds in its own way).
            return np.empty(shape, dtype=dtype)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            mapping.madvise(mmap.MADV_HUGEPAGE)  # as NumPy does for its large arrays
    flat = np.frombuffer(mapping, dtype=dtype, count=count)
    # Every view of the result has `flat` as its base (NumPy collapses chains of views up to the
    # array over the buffer), so `flat` is collected only when the last of them is.
    weakref.finalize(flat, _release, mapping).atexit = False
    return flat.reshape(shape)
