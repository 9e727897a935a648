"""The machine's limits, measured in the same run as the workloads, at each thread count.

- Memory bandwidth: ``read`` (a sum over one array), ``copy`` (``out = x``) and ``triad``
  (``out = x + 3 * y``), STREAM's byte counts (4, 8 and 12 bytes per float32 element: what is
  read plus what is written, no write-allocate traffic), the same counts the workloads' GB/s
  use. They run in fastloss's own probe (``_core.memory_probe``, cpp/memory_probe.cpp): plain
  loops with ordinary stores, compiled like the rest of the module and split over the row's
  OpenMP threads. NumPy cannot stand in: its reductions and ufuncs use one thread, and its copy
  is a ``memcpy`` whose large-copy paths the loss kernels do not take. Each array is twice the
  largest cache the OS reports (sysfs; ``lscpu`` elsewhere), at least 128 MiB and at most 1 GiB,
  and the three together at most a quarter of the memory available; 1 GiB in all when no cache
  size is found.
- ``matmul``: NumPy's float32 ``n x n`` matmul (n = 4096; 1024 with ``--quick``), the
  yardstick of the InfoNCE dot products (GFLOP/s counted as ``2 n^3``), with BLAS limited to the
  row's threads.

A limit is the fastest of its samples: what the machine did at best. The workloads report
medians, so a fraction of a limit errs low, never high. A workload whose inputs fit in the
largest cache can read them from there on repeated calls and exceed 100% of the bandwidth,
which is measured out of cache.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable

import numpy as np

from .timing import BlasThreads, measure

__all__ = ["BANDWIDTH_KINDS", "largest_cache_bytes", "probe_elements", "bandwidth", "matmul", "LIMIT_UNITS"]

#: limit name -> (probe kind, bytes per float32 element)
BANDWIDTH_KINDS = {"read": ("sum", 4), "copy": ("copy", 8), "triad": ("triad", 12)}
LIMIT_UNITS = {"read": "GB/s", "copy": "GB/s", "triad": "GB/s", "matmul": "GFLOP/s"}

_MIB = 1 << 20
_MIN_ARRAY = 128 * _MIB
_MAX_ARRAY = 1024 * _MIB
_FALLBACK_TOTAL = 1024 * _MIB


def _size_bytes(text: str) -> int | None:
    """``"491520K"``, ``"480 MiB"``, ``"32768"`` -> bytes."""
    m = re.match(r"\s*([\d.]+)\s*([KMG]?)(i?B)?", text, re.IGNORECASE)
    if not m:
        return None
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2).upper()]
    return int(float(m.group(1)) * scale)


def largest_cache_bytes() -> tuple[int | None, str]:
    """(the largest data or unified cache one CPU sees, where that figure came from)."""
    best = None
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in sorted(os.listdir(root)):
            if not entry.startswith("index"):
                continue
            with open(os.path.join(root, entry, "type")) as fh:
                if fh.read().strip() == "Instruction":
                    continue
            with open(os.path.join(root, entry, "size")) as fh:
                size = _size_bytes(fh.read())
            if size and (best is None or size > best):
                best = size
    except OSError:
        pass
    if best:
        return best, "sysfs"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        m = re.match(r"\s*L(\d)d? cache:\s*(.+)", line)
        if m:
            size = _size_bytes(m.group(2))
            # lscpu sums per-core caches over instances ("4 MiB (2 instances)"): take one.
            inst = re.search(r"\((\d+) instances?\)", m.group(2))
            if size and inst:
                size //= max(1, int(inst.group(1)))
            if size and (best is None or size > best):
                best = size
    return (best, "lscpu") if best else (None, "unknown")


def meminfo_bytes(field: str) -> int | None:
    """A /proc/meminfo field (``MemTotal``, ``MemAvailable``) in bytes; None where there is none."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def probe_elements(cache: int | None, available: int | None) -> int:
    """float32 elements per probe array (three arrays are allocated)."""
    per_array = min(max(2 * cache, _MIN_ARRAY), _MAX_ARRAY) if cache else _FALLBACK_TOTAL // 3
    if available:
        per_array = min(per_array, available // 12)
    return max(1 << 20, per_array // 4)


def bandwidth(threads: list[int], repeat: int, log: Callable[[str], None]) -> dict:
    """``{"read"|"copy"|"triad": {str(threads): GB/s or None}, "info": {...}}``; ``None`` at a
    thread count the probe could not run at (a build without OpenMP runs one thread)."""
    from fastloss import _core

    cache, source = largest_cache_bytes()
    n = probe_elements(cache, meminfo_bytes("MemAvailable"))
    info = {
        "method": "fastloss._core.memory_probe: plain OpenMP loops over float32 arrays, "
        "ordinary stores; STREAM byte counts (read 4, copy 8, triad 12 bytes per element)",
        "array_bytes": 4 * n,
        "arrays": 3,
        "largest_cache_bytes": cache,
        "cache_source": source,
        "out_of_cache": bool(cache) and 4 * n >= 2 * cache,
        "statistic": "fastest sample",
    }
    out: dict = {name: {} for name in BANDWIDTH_KINDS}
    x = np.full(n, 1.0, np.float32)  # written now: first-touch page faults stay out of the timings
    y = np.full(n, 2.0, np.float32)
    z = np.zeros(n, np.float32)
    try:
        for t in threads:
            for name, (kind, per_elem) in BANDWIDTH_KINDS.items():
                args = {"sum": (x, None, None), "copy": (x, None, z), "triad": (x, y, z)}[kind]
                ran = []

                def one(kind=kind, args=args, t=t, ran=ran):
                    ran.append(_core.memory_probe(kind, *args, t)[1])

                timing, _ = measure(one, repeat=max(3, min(repeat, 5)), min_time=0.0, max_time=5.0)
                if set(ran) != {t}:
                    out[name][str(t)] = None
                    log(f"  {name} bandwidth at {t} threads: the probe ran {sorted(set(ran))} threads")
                    continue
                rate = per_elem * n / min(timing.times) / 1e9
                out[name][str(t)] = rate
                log(f"  {name} bandwidth at {t} threads: {rate:.1f} GB/s")
    finally:
        del x, y, z
    return {**out, "info": info}


def matmul(threads: list[int], blas: BlasThreads, quick: bool, repeat: int, log) -> dict:
    """``{"matmul": {str(threads): GFLOP/s or None}, "info": {...}}``: NumPy's float32 matmul,
    ``None`` at a thread count NumPy's BLAS could not be set to (``BlasThreads.set``)."""
    n = 1024 if quick else 4096
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    rates: dict[str, float | None] = {}
    try:
        for t in threads:
            if not blas.set(t):
                rates[str(t)] = None
                log(f"  numpy sgemm at {t} threads: BLAS threads not controlled, not measured")
                continue
            timing, _ = measure(
                lambda: np.matmul(a, b, out=c), repeat=max(3, min(repeat, 5)), min_time=0.0, max_time=5.0
            )
            rates[str(t)] = 2.0 * n**3 / min(timing.times) / 1e9
            log(f"  numpy sgemm {n}x{n} at {t} threads: {rates[str(t)]:.1f} GFLOP/s")
    finally:
        blas.restore()
    return {
        "matmul": rates,
        "info": {"method": f"numpy float32 matmul {n}x{n}", "n": n, "statistic": "fastest sample"},
    }
