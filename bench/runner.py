"""``fastloss bench``: run the workloads against every available peer and report.

``add_arguments`` defines the options (the ``fastloss`` command line and ``python -m bench``
share them); ``run`` does the work and returns the exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fnmatch
import io
import os
import platform
import sys
import time

import numpy as np
from fastloss.cli import _positive_int

from . import memory as memory_mod
from . import report
from . import workloads as wl
from .peers import PEER_NAMES, FastlossPeer, all_peers
from .timing import BlasThreads, cpu_count, default_threads, measure

__all__ = ["add_arguments", "run", "main", "DEFAULT_CHART"]

DEFAULT_CHART = os.path.join("bench_results", "bench.png")
#: Workloads whose peak extra memory is measured (in a fresh subprocess), and by whom.
MEMORY_WORKLOADS = ("infonce_moco",)
MEMORY_IMPLS = ("fastloss", "numpy_ref", "numpy_fast", "torch")


def add_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    names = ", ".join(w.name for w in wl.WORKLOADS)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smaller large workloads and fewer samples: a smoke run of seconds",
    )
    ap.add_argument("--json", metavar="FILE", help="write every figure and the machine to FILE")
    ap.add_argument(
        "--threads",
        metavar="N",
        type=_positive_int,
        nargs="+",
        help="thread counts to run at (default: 1 and all cores, here "
        f"{' '.join(map(str, default_threads()))})",
    )
    ap.add_argument(
        "--repeat",
        metavar="R",
        type=_positive_int,
        help="timed samples per measurement (default 7; 3 with --quick); the median is reported",
    )
    ap.add_argument(
        "--chart",
        metavar="FILE.png",
        help=f"bar chart of the speedups (default {DEFAULT_CHART} when matplotlib is installed)",
    )
    ap.add_argument("--no-chart", action="store_true", help="do not draw the chart")
    ap.add_argument(
        "--workloads",
        metavar="NAME",
        nargs="+",
        help=f"only these workloads (shell patterns allowed, e.g. 'mse_*'): {names}",
    )
    ap.add_argument(
        "--peers",
        metavar="NAME",
        nargs="+",
        choices=PEER_NAMES,
        help=f"only these peers (fastloss always runs): {', '.join(PEER_NAMES)}",
    )
    ap.add_argument(
        "--min-time",
        metavar="SECONDS",
        type=float,
        help="shortest timed sample; fast calls are looped (default 0.005; 0.001 with --quick)",
    )
    ap.add_argument(
        "--max-time",
        metavar="SECONDS",
        type=float,
        help="time budget of one measurement after which sampling stops (keeping "
        "at least 3 samples; default 10; 1 with --quick)",
    )
    ap.add_argument(
        "--no-memory", action="store_true", help="skip the peak-memory measurement (fresh subprocesses)"
    )
    ap.add_argument("--no-sgemm", action="store_true", help="skip the NumPy float32 matmul reference rate")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return ap


# --- machine information ---------------------------------------------------------------------


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _mem_total() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _fastloss_info(fl) -> dict:
    buf = io.StringIO()
    returned = None
    try:
        with contextlib.redirect_stdout(buf):
            returned = fl.show_config()
    except Exception as exc:  # show_config must not stop the benchmark
        buf.write(f"show_config() failed: {type(exc).__name__}: {exc}")
    info = {"version": getattr(fl, "__version__", None), "show_config": buf.getvalue().strip()}
    if returned is not None:
        info["show_config_returned"] = returned if isinstance(returned, (dict, list, str)) else repr(returned)
    try:
        info["active_isa"] = fl._core.active_isa()
    except Exception:
        info["active_isa"] = None
    try:
        info["default_threads"] = fl.get_num_threads()
    except Exception:
        info["default_threads"] = None
    return info


def _machine_info(peers, blas: BlasThreads) -> dict:
    by = {p.name: p for p in peers}
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_model": _cpu_model(),
        "cpu_count": cpu_count(),
        "os_cpu_count": os.cpu_count(),
        "memory_bytes": _mem_total(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "numpy": np.__version__,
        "torch": by["torch"].version if "torch" in by and by["torch"].available() else None,
        "jax": by["jax"].version if "jax" in by and by["jax"].available() else None,
        "threadpoolctl": blas.version,
        "blas": blas.info(),
    }
    try:
        import matplotlib

        info["matplotlib"] = matplotlib.__version__
    except Exception:
        info["matplotlib"] = None
    return info


def _cpu_seconds():
    """(busy CPU seconds of the whole machine, CPU seconds of this process and its children),
    from /proc/stat (Linux); None elsewhere."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
        tick = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = (sum(fields[:8]) - idle) / tick  # user..steal; guest time is already in user
    t = os.times()
    return busy, t.user + t.system + t.children_user + t.children_system


# --- the run ---------------------------------------------------------------------------------


def _select_workloads(patterns: list[str] | None) -> list[wl.Workload]:
    if not patterns:
        return list(wl.WORKLOADS)
    chosen = []
    for pat in patterns:
        hits = [w for w in wl.WORKLOADS if fnmatch.fnmatchcase(w.name, pat)]
        if not hits:
            raise ValueError(
                f"no workload matches {pat!r}; known: " + ", ".join(w.name for w in wl.WORKLOADS)
            )
        chosen += [w for w in hits if w not in chosen]
    return [w for w in wl.WORKLOADS if w in chosen]


def _loss_of(value):
    return value[0] if isinstance(value, tuple) else value


def _grads_of(value):
    return value[1] if isinstance(value, tuple) and len(value) == 2 else None


def _sgemm_rates(threads: list[int], blas: BlasThreads, quick: bool, repeat: int, log) -> dict:
    """NumPy's float32 n x n matmul rate, the yardstick of the InfoNCE dot products."""
    n = 1024 if quick else 4096
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    rates = {}
    for t in threads if blas.available else [None]:
        if t is not None:
            blas.set(t)
        timing, _ = measure(
            lambda: np.matmul(a, b, out=out), repeat=min(repeat, 3), min_time=0.0, max_time=5.0
        )
        label = str(t) if t is not None else "default"
        rates[label] = 2.0 * n**3 / timing.median / 1e9
        log(f"  numpy sgemm {n}x{n} at {label} threads: {rates[label]:.1f} GFLOP/s")
    blas.restore()
    return {f"numpy float32 matmul {n}x{n}": rates}


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args`` (see ``add_arguments``); return an exit code.

    The results (printed as a table, written with ``--json``) are a dict::

        settings   quick, repeat, threads, min_time, max_time, command
        machine    platform, cpu model and count, memory, python, numpy/torch/jax versions, BLAS
        fastloss   version, show_config text, active_isa, default_threads
        peers      name -> description, version, available, reason
        workloads  [{name, family, grad, dims, label, reference, work {bytes, flops},
                     fastloss_rel_err,
                     results [{impl, threads, median_s, times_s, repeats, number, warmup_s,
                               value, rel_err, grad_rel_err, speedup, error}]}]
        memory     [{workload, impl, extra_bytes, method, ...}]
        machine_reference  {"numpy float32 matmul 4096x4096": {threads: GFLOP/s}}
        notes      [str]
    """

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    quick = bool(args.quick)
    repeat = args.repeat or (3 if quick else 7)
    min_time = args.min_time if args.min_time is not None else (0.001 if quick else 0.005)
    max_time = args.max_time if args.max_time is not None else (1.0 if quick else 10.0)
    threads = sorted(set(args.threads)) if args.threads else default_threads()
    try:
        selected = _select_workloads(args.workloads)
    except ValueError as exc:
        print(f"fastloss bench: error: {exc}", file=sys.stderr)
        return 2

    peers = all_peers(args.peers)
    fl_peer = next(p for p in peers if isinstance(p, FastlossPeer))
    fl = fl_peer.fl
    blas = BlasThreads()
    notes: list[str] = []
    if blas.note():
        notes.append(blas.note())
    for p in peers:
        if not p.available():
            notes.append(f"{p.name} skipped: {p.reason}")
        elif not p.threads_controlled:
            notes.append(
                f"{p.name}: its thread count is fixed when it is imported; measured "
                f"at {max(threads)} threads only"
            )
    if any(w.grad for w in selected) and not fl_peer.supports_grad():
        dropped = [w.name for w in selected if w.grad]
        selected = [w for w in selected if not w.grad]
        notes.append(
            "loss+gradient workloads skipped (this fastloss has no return_grad yet): " + ", ".join(dropped)
        )

    results = {
        "schema": 1,
        "tool": "fastloss bench",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {
            "quick": quick,
            "repeat": repeat,
            "threads": threads,
            "min_time": min_time,
            "max_time": max_time,
            "command": getattr(args, "command_line", None),
        },
        "machine": _machine_info(peers, blas),
        "fastloss": _fastloss_info(fl),
        "peers": {p.name: p.info() for p in peers},
        "workloads": [],
        "memory": [],
        "memory_context": [],
        "machine_reference": {},
        "notes": notes,
    }
    cpu_start = _cpu_seconds()
    original_threads = results["fastloss"].get("default_threads")
    active = [p for p in peers if p.available()]
    fastloss_failed = False
    started = time.perf_counter()
    try:
        for w in selected:
            log(f"{w.name}: making data and the float64 reference")
            data = wl.make_data(w, quick)
            ref_loss, ref_grads = wl.reference(w, data)
            entry = {
                "name": w.name,
                "family": w.family,
                "grad": w.grad,
                "dims": w.sizes(quick),
                "label": wl.size_label(w, data),
                "reference": ref_loss,
                "work": wl.work(w, data),
                "results": [],
                "fastloss_rel_err": None,
            }
            fns = {}
            for p in active:
                try:
                    fns[p.name] = p.prepare(w, data)
                except Exception as exc:
                    fns[p.name] = exc
            for t in threads:
                blas.set(t)
                for p in active:
                    fn = fns.get(p.name)
                    if fn is None or (not p.threads_controlled and t != max(threads)):
                        continue
                    row = {"impl": p.name, "threads": t}
                    try:
                        if isinstance(fn, Exception):
                            raise fn
                        p.set_threads(t)
                        timing, value = measure(fn, repeat, min_time, max_time)
                    except Exception as exc:
                        row["error"] = f"{type(exc).__name__}: {exc}"
                        if p.name == "fastloss":
                            fastloss_failed = True
                        log(f"  {w.name} {t} thr {p.name}: {row['error']}")
                        entry["results"].append(row)
                        continue
                    loss = _loss_of(value)
                    row.update(
                        {
                            "median_s": timing.median,
                            "times_s": timing.times,
                            "repeats": timing.repeats,
                            "number": timing.number,
                            "warmup_s": timing.warmup,
                            "value": float(loss) if loss is not None else None,
                            "rel_err": wl.rel_err(loss, ref_loss),
                            "grad_rel_err": (
                                wl.grad_rel_err(_grads_of(value), ref_grads) if w.grad else None
                            ),
                        }
                    )
                    entry["results"].append(row)
                    log(
                        f"  {w.name} {t} thr {p.name:<10} {report.fmt_time(timing.median):>9}"
                        f"  ({timing.repeats}x{timing.number})"
                    )
                    del value
            blas.restore()
            for row in entry["results"]:
                base = next(
                    (
                        r
                        for r in entry["results"]
                        if r["impl"] == "fastloss" and r["threads"] == row["threads"] and "median_s" in r
                    ),
                    None,
                )
                if base and "median_s" in row:
                    row["speedup"] = row["median_s"] / base["median_s"]
                    if row["impl"] == "fastloss" and entry["fastloss_rel_err"] is None:
                        entry["fastloss_rel_err"] = row["rel_err"]
            results["workloads"].append(entry)
            del fns, data, ref_grads

        if not args.no_memory:
            for name in MEMORY_WORKLOADS:
                if name not in {w.name for w in selected}:
                    continue
                w = wl.by_name(name)
                dims = w.sizes(quick)
                results["memory_context"].append(
                    f"{name}: the N x (M+1) float32 logits alone would take "
                    f"{report.fmt_bytes(4.0 * dims['N'] * (dims['M'] + 1))}"
                )
                for impl in MEMORY_IMPLS:
                    if impl not in {p.name for p in active}:
                        continue
                    log(f"{name}: peak extra memory of one {impl} call (fresh subprocess)")
                    results["memory"].append(memory_mod.peak_extra_memory(name, impl, quick, max(threads)))

        if not args.no_sgemm and any(w.family.startswith("infonce") for w in selected):
            results["machine_reference"] = _sgemm_rates(threads, blas, quick, repeat, log)
            rates = next(iter(results["machine_reference"].values()))
            for entry in results["workloads"]:
                if entry["name"] != "infonce_moco":
                    continue
                for row in entry["results"]:
                    rate = rates.get(str(row["threads"])) or rates.get("default")
                    if row["impl"] == "fastloss" and "median_s" in row and rate:
                        got = entry["work"]["flops"] / row["median_s"] / 1e9
                        notes.append(
                            f"infonce_moco at {row['threads']} threads: fastloss's dot "
                            f"products run at {got:.3g} GFLOP/s = "
                            f"{100 * got / rate:.0f}% of NumPy's float32 matmul"
                        )
    finally:
        blas.restore()
        if original_threads:
            with contextlib.suppress(Exception):
                fl.set_num_threads(original_threads)
    results["elapsed_s"] = time.perf_counter() - started
    cpu_end = _cpu_seconds()
    if cpu_start and cpu_end:
        # CPU time the whole machine spent busy minus what this run (and its children) used.
        others = (cpu_end[0] - cpu_start[0]) - (cpu_end[1] - cpu_start[1])
        share = max(0.0, others) / max(results["elapsed_s"] * (os.cpu_count() or 1), 1e-9)
        results["machine"]["other_processes_cpu_share"] = round(share, 3)
        if share > 0.05:
            notes.append(
                f"other processes used {100 * share:.0f}% of the machine's CPU time "
                "during the run: timings are noisy, the multi-thread ones most (a "
                "preempted thread stalls the whole call)"
            )

    print(report.table(results))
    if args.json:
        report.write_json(results, args.json)
        print(f"wrote {args.json}")
    if not args.no_chart:
        path = args.chart or DEFAULT_CHART
        why_not = report.write_chart(results, path)
        if why_not is None:
            print(f"wrote {path}")
        else:
            print(f"chart skipped: {why_not}")
    if fastloss_failed:
        print("fastloss bench: error: fastloss failed on some workloads (see the table)", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="fastloss bench", description="Benchmark fastloss against its peers.")
    add_arguments(ap)
    args = ap.parse_args(argv)
    args.command_line = ["fastloss", "bench"] + list(sys.argv[1:] if argv is None else argv)
    return run(args)
