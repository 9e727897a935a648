"""fastloss: fast, trustworthy CPU losses for NumPy arrays.

MSE, MAE, cross-entropy, InfoNCE and linear cross-entropy (from embeddings and a classifier)
computed by SIMD + OpenMP C++ kernels, with PyTorch's semantics, deterministic reductions (the
same bits for any thread count) and the GIL released.
"""

from __future__ import annotations

import platform
import sys
from typing import TextIO

import numpy as np

from . import _core
from ._losses import cross_entropy, info_nce, linear_cross_entropy, mae, mse
from ._stream import Accumulator
from ._validation import check_threads
from ._version import __version__

__all__ = [
    "Accumulator",
    "__version__",
    "cross_entropy",
    "get_num_threads",
    "info_nce",
    "linear_cross_entropy",
    "mae",
    "mse",
    "set_num_threads",
    "show_config",
]


def set_num_threads(n: int) -> None:
    """Sets how many threads the kernels use (default: the machine's cores), an int in
    ``[1, max(1024, cores)]``. Results do not depend on it."""
    _core.set_num_threads(check_threads(n, "n"))


def get_num_threads() -> int:
    """The number of threads the kernels use."""
    return int(_core.get_num_threads())


def show_config(file: TextIO | None = None) -> None:
    """Prints the version, the active CPU path, the available paths, threads and compiler."""
    lines = [
        f"fastloss {__version__}",
        f"active path: {_core.active_isa()}",
        f"compiled paths: {', '.join(_core.compiled_isas())}",
        f"available paths: {', '.join(_core.available_isas())}",
        f"threads: {get_num_threads()} (OpenMP: {'yes' if _core.openmp else 'no'})",
        f"compiler: {_core.compiler}",
        f"python: {sys.version.split()[0]} on {platform.machine()} {platform.system()}",
        f"numpy: {np.__version__}",
    ]
    print("\n".join(lines), file=file if file is not None else sys.stdout)
