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

__all__ = [
    "Timing",
    "measure",
    "cpu_count",
    "BlasThreads",
    "default_threads",
    "THREAD_ENV_VARS",
    "blas_thread_env",
    "numpy_blas_threads",
]

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


#: The variables a child process of ``fastloss bench`` gets (``blas_thread_env``) when
#: threadpoolctl is not installed: each BLAS (and NumExpr) reads its own at load time.
THREAD_ENV_VARS = (
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

# (BLAS, function returning its thread count): OpenBLAS as NumPy's wheels ship it (symbols
# prefixed scipy_, 64-bit integers suffixed 64_), a plain OpenBLAS, MKL, BLIS.
_BLAS_GETTERS = (
    ("openblas", "scipy_openblas_get_num_threads64_"),
    ("openblas", "scipy_openblas_get_num_threads"),
    ("openblas", "openblas_get_num_threads64_"),
    ("openblas", "openblas_get_num_threads"),
    ("mkl", "MKL_Get_Max_Threads"),
    ("mkl", "mkl_get_max_threads"),
    ("blis", "bli_thread_get_num_threads"),
)


def blas_thread_env(n: int) -> dict[str, str]:
    """The environment that makes a fresh process's BLAS (and OpenMP default) use ``n`` threads."""
    return {name: str(n) for name in THREAD_ENV_VARS}


def numpy_blas_threads() -> tuple[int, str, str] | None:
    """(the thread count NumPy's BLAS reports, which BLAS, the function asked), looked up with
    ctypes in NumPy's core extension and the libraries it links; ``None`` when none of the known
    functions is found there (Accelerate, Windows, a NumPy without BLAS)."""
    import ctypes

    try:
        from numpy._core import _multiarray_umath as core  # NumPy 2
    except ImportError:
        from numpy.core import _multiarray_umath as core  # type: ignore[no-redef]
    try:
        lib = ctypes.CDLL(core.__file__)  # already loaded: the same handle, its dependencies searched
    except (OSError, AttributeError, TypeError):
        return None
    for kind, name in _BLAS_GETTERS:
        try:
            fn = getattr(lib, name)
        except AttributeError:
            continue
        fn.argtypes = []
        fn.restype = ctypes.c_int64 if kind == "blis" else ctypes.c_int
        return int(fn()), kind, name
    return None


class BlasThreads:
    """Sets NumPy's BLAS threads and says whether the setting took, in one of two ways.

    - ``threadpoolctl`` (the ``bench`` extra), in this process: ``set(n)`` limits the ``blas``
      API and is True only when threadpoolctl found NumPy's BLAS and every BLAS library it found
      now reports ``n`` threads. Only the ``blas`` API is limited: threadpoolctl's ``openmp``
      controller would call ``omp_set_num_threads`` in the OpenMP runtime fastloss uses too.
    - ``environment`` (threadpoolctl not installed): a BLAS reads its thread count once, when it
      loads, so ``fastloss bench`` runs each thread count ``T`` in a child process started with
      ``blas_thread_env(T)``; there ``BlasThreads(environment=T)``'s ``set(n)`` is True only for
      ``n == T`` and when NumPy's BLAS reports ``T`` (``numpy_blas_threads``). A BLAS that gives
      no way to read its count back (Accelerate) is not counted as controlled.

    A False ``set`` makes the ``numpy_*`` rows not like for like: the report prints no ratio
    for them.
    """

    def __init__(self, environment: int | None = None) -> None:
        self.env_threads = environment  # the T this child process was started with, if one
        self._tpc = None
        self.version: str | None = None
        if environment is None:
            try:
                import threadpoolctl
            except ImportError:
                pass
            else:
                self._tpc = threadpoolctl
                self.version = getattr(threadpoolctl, "__version__", "?")
        self._limiter = None
        self._at: int | None = None  # the thread count the last set() made every BLAS pool run at

    @property
    def available(self) -> bool:
        """Whether threadpoolctl sets the threads in this process."""
        return self._tpc is not None

    @property
    def method(self) -> str:
        """``"threadpoolctl"`` (in this process) or ``"environment"`` (a child process per count)."""
        return "threadpoolctl" if self.available else "environment"

    def note(self) -> str | None:
        if not self.available:
            text = (
                "threadpoolctl is not installed, so each thread count T runs in its own child "
                "process with OPENBLAS_NUM_THREADS=T (and OMP_, MKL_, BLIS_, VECLIB_MAXIMUM_, "
                "NUMEXPR_NUM_THREADS) set before NumPy loads; pip install 'fastloss[bench]' to set "
                "NumPy's BLAS threads in one process instead"
            )
            if numpy_blas_threads() is None:
                text += (
                    ". NumPy's BLAS gives no way to read its thread count back here, so the "
                    "numpy_* rows are not counted as controlled and get no ratio"
                )
            return text
        if not self.info():
            return (
                "threadpoolctl finds no BLAS library in this NumPy, so its threads are not "
                "controlled: the numpy_* rows get no ratio"
            )
        return None

    def how(self) -> str:
        """How the numpy_* rows' threads are set, for the report."""
        if not self.available:
            found = numpy_blas_threads()
            if found is None:
                return (
                    "not controlled: threadpoolctl is not installed and NumPy's BLAS thread count "
                    "cannot be read back"
                )
            return (
                "OPENBLAS_NUM_THREADS=T and the like, set before NumPy loads in a child process "
                f"per thread count T (threadpoolctl is not installed); {found[1]} checked with {found[2]}()"
            )
        libs = self.info()
        if not libs:
            return "not controlled: threadpoolctl finds no BLAS library in NumPy"
        names = ", ".join(f"{d.get('internal_api')} {d.get('version') or ''}".strip() for d in libs)
        return f"threadpoolctl {self.version} limits {names}; checked after every change"

    def info(self) -> list:
        if not self.available:
            found = numpy_blas_threads()
            if found is None:
                return []
            n, kind, fn = found
            return [{"user_api": "blas", "internal_api": kind, "num_threads": n, "read_back_with": fn}]
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
            # By environment: fixed when NumPy loaded; only the child's own count can be right.
            found = numpy_blas_threads() if n == self.env_threads else None
            self._at = n if found is not None and found[0] == n else None
            return self._at == n
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
