"""Timing and thread control for ``fastloss bench``.

A measurement is: one warm-up call, a calibration that picks how many calls one sample loops
over (``number``, so that a sample lasts at least ``min_time`` and the timer's resolution does
not matter for microsecond calls), then up to ``repeat`` samples timed with
``time.perf_counter`` with the garbage collector off. The figure reported is the median of the
per-call times of the samples. A measurement stops early (after at least ``MIN_REPEATS``
samples) once it has used ``max_time`` seconds, so that slow peers do not stretch the run;
the number of samples actually taken is reported with every median.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import statistics
import time
from collections.abc import Callable

__all__ = ["Timing", "measure", "cpu_count", "BlasThreads", "default_threads"]

MIN_REPEATS = 3


@dataclasses.dataclass
class Timing:
    median: float  # seconds per call
    times: list[float]  # seconds per call, one per sample
    number: int  # calls per sample
    warmup: float  # seconds taken by the first call

    @property
    def repeats(self) -> int:
        return len(self.times)


def measure(
    fn: Callable[[], object], repeat: int, min_time: float = 0.005, max_time: float = 10.0
) -> tuple[Timing, object]:
    """Time ``fn``; return the timing and the value of its last call."""
    t0 = time.perf_counter()
    result = fn()  # warm-up: first-touch page faults, thread pools, JIT compilation
    warmup = time.perf_counter() - t0
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        # Calibrate: grow the loop until one sample lasts min_time.
        number = 1
        while True:
            t0 = time.perf_counter()
            for _ in range(number):
                result = fn()
            elapsed = time.perf_counter() - t0
            if elapsed >= min_time or number >= 1_000_000:
                break
            number = min(1_000_000, max(number * 2, int(number * min_time / max(elapsed, 1e-9) * 1.2)))
        times = [elapsed / number]  # the last calibration loop ran `number` calls: a sample
        started = time.perf_counter()
        while len(times) < max(1, repeat):
            if len(times) >= MIN_REPEATS and time.perf_counter() - started > max_time:
                break
            t0 = time.perf_counter()
            for _ in range(number):
                result = fn()
            times.append((time.perf_counter() - t0) / number)
    finally:
        if gc_was_enabled:
            gc.enable()
    return Timing(statistics.median(times), times, number, warmup), result


def cpu_count() -> int:
    """The cores this process may run on (affinity-aware where the OS says)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads() -> list[int]:
    """1 thread and all cores."""
    return sorted({1, cpu_count()})


class BlasThreads:
    """Limits NumPy's BLAS pool with threadpoolctl (a dependency of fastloss, for this) and says
    whether the limit took.

    Only the ``blas`` API is limited: threadpoolctl's ``openmp`` controller would call
    ``omp_set_num_threads`` in the OpenMP runtime fastloss uses too. ``set(n)`` is True only when
    threadpoolctl found NumPy's BLAS and every BLAS library it found now reports ``n`` threads:
    a library it cannot control (or a missing threadpoolctl) makes the ``numpy_*`` rows not like
    for like, and the report then prints no ratio for them.
    """

    def __init__(self) -> None:
        try:
            import threadpoolctl
        except ImportError:
            self._tpc = None
            self.version: str | None = None
        else:
            self._tpc = threadpoolctl
            self.version = getattr(threadpoolctl, "__version__", "?")
        self._limiter = None
        self._at: int | None = None  # the thread count the last set() made every BLAS pool run at

    @property
    def available(self) -> bool:
        return self._tpc is not None

    def note(self) -> str | None:
        if not self.available:
            return (
                "threadpoolctl is not installed, so NumPy's BLAS threads are not controlled: the "
                "numpy_* rows use BLAS's default thread count and get no ratio "
                "(pip install threadpoolctl)"
            )
        if not self.info():
            return (
                "threadpoolctl finds no BLAS library in this NumPy, so its threads are not "
                "controlled: the numpy_* rows get no ratio"
            )
        return None

    def how(self) -> str:
        """How the numpy_* rows' threads are set, for the report."""
        libs = self.info()
        if not self.available:
            return "not controlled: threadpoolctl is not installed"
        if not libs:
            return "not controlled: threadpoolctl finds no BLAS library in NumPy"
        names = ", ".join(f"{d.get('internal_api')} {d.get('version') or ''}".strip() for d in libs)
        return f"threadpoolctl {self.version} limits {names}; checked after every change"

    def info(self) -> list:
        if not self.available:
            return []
        try:
            return [
                {
                    k: v
                    for k, v in d.items()
                    if k
                    in (
                        "user_api",
                        "internal_api",
                        "version",
                        "num_threads",
                        "architecture",
                        "threading_layer",
                        "filepath",
                    )
                }
                for d in self._tpc.threadpool_info()
                if d.get("user_api") == "blas"
            ]
        except Exception:  # threadpoolctl inspects native libraries; never fail the run on it
            return []

    def set(self, n: int) -> bool:
        """Limit every BLAS pool to ``n`` threads; True when each one now reports ``n``."""
        self.restore()
        if not self.available:
            return False
        self._limiter = self._tpc.threadpool_limits(limits=n, user_api="blas")
        libs = self.info()
        self._at = n if libs and all(d.get("num_threads") == n for d in libs) else None
        return self._at == n

    def runs_at(self, n: int) -> bool:
        """Whether the last ``set`` made NumPy's BLAS run at ``n`` threads."""
        return self._at == n

    def restore(self) -> None:
        self._at = None
        if self._limiter is not None:
            self._limiter.restore_original_limits()
            self._limiter = None
