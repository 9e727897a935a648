"""Rows/s of fastloss.dask on a 2-process dask.distributed.LocalCluster against the in-memory call
on the same data (the README's "Scale-out with dask" figure).

    python bench/dask_scaling.py [--rows-log2 22] [--cols 64] [--repeats 5]

The arrays are made on the workers (dask.array.random, seeded) and persisted there, so the
dask timing is the loss (per-block kernels, the partial states' tree reduction, scheduling), not
the data's transfer; the same arrays are then gathered into this process for the in-memory
call. Each worker runs one dask thread and one kernel thread; the in-memory call uses every
core. Every dask result is checked to have the in-memory call's bits. Prints medians.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def _median_seconds(run: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    result = run()  # warm-up (and the value checked)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _set_one_kernel_thread() -> None:
    import fastloss

    fastloss.set_num_threads(1)


def main(argv: list[str] | None = None) -> None:
    import dask.array as da
    import distributed
    import fastloss
    import fastloss.dask as fd
    import numpy as np

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows-log2", type=int, default=22)
    parser.add_argument("--cols", type=int, default=64)
    parser.add_argument("--chunk-rows", type=int, default=2**18)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    rows, cols = 2**args.rows_log2, args.cols

    cluster = distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, memory_limit=0, dashboard_address=":0"
    )
    client = distributed.Client(cluster)
    client.run(_set_one_kernel_thread)
    try:
        state = da.random.RandomState(0)
        chunks = (args.chunk_rows, cols)
        pred = state.standard_normal((rows, cols), chunks=chunks).astype(np.float32)
        target = state.standard_normal((rows, cols), chunks=chunks).astype(np.float32)
        labels = state.randint(0, cols, size=rows, chunks=args.chunk_rows)
        pred, target, labels = client.persist([pred, target, labels])
        distributed.wait([pred, target, labels])
        local = client.gather(client.compute([pred, target, labels]))

        print(f"machine: {_cpu_model()} ({len(os.sched_getaffinity(0))} cores)")
        print(
            f"data: {rows} x {cols} float32 ({rows // args.chunk_rows} row chunks), medians of {args.repeats}"
        )
        print(f"fastloss {fastloss.__version__}, in-memory threads: {fastloss.get_num_threads()}")
        print()
        print(f"{'loss':<16}{'in-memory rows/s':>20}{'dask 2-proc rows/s':>22}{'ratio':>8}  bits")
        cases = [
            ("mse", fastloss.mse, fd.mse, (pred, target), local[:2]),
            ("cross_entropy", fastloss.cross_entropy, fd.cross_entropy, (pred, labels), (local[0], local[2])),
        ]
        for name, memory_fn, dask_fn, dask_args, memory_args in cases:
            t_mem, expected = _median_seconds(lambda f=memory_fn, a=memory_args: f(*a), args.repeats)
            t_dask, got = _median_seconds(
                lambda f=dask_fn, a=dask_args: client.compute(f(*a)).result(), args.repeats
            )
            same = "same" if got == expected else f"DIFFER {got!r} vs {expected!r}"
            print(f"{name:<16}{rows / t_mem:>20.3g}{rows / t_dask:>22.3g}{t_mem / t_dask:>8.2f}  {same}")
    finally:
        client.close()
        cluster.close()


if __name__ == "__main__":
    main()
