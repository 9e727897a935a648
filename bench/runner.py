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
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
from fastloss.cli import _positive_int

from . import limits as limits_mod
from . import memory as memory_mod
from . import report
from . import workloads as wl
from .peers import PEER_NAMES, FastlossPeer, all_peers
from .timing import THREAD_ENV_VARS, BlasThreads, blas_thread_env, cpu_count, default_threads, measure

__all__ = ["add_arguments", "run", "main"]

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
        help="also draw the speedups as a bar chart into FILE.png (needs matplotlib: "
        "pip install 'fastloss[bench]'); no chart is written unless asked",
    )
    # Accepted and ignored: scripts written when a chart was drawn by default keep running.
    ap.add_argument("--no-chart", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument(
        "-w",
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
    ap.add_argument(
        "--lce-memory",
        metavar="V",
        type=_positive_int,
        nargs="*",
        help="also measure linear_cross_entropy's extra peak memory beyond its inputs and outputs "
        "(fastloss, torch's reference and chunked paths; forward, and forward + backward) at these "
        "numbers of classes, each call in a fresh process (default: V = "
        + " and ".join(map(str, memory_mod.LCE_MEMORY_V))
        + " at N x H = 4096 x 1024; with --quick, V = "
        + " and ".join(map(str, memory_mod.LCE_MEMORY_V_QUICK))
        + " at the quick N x H)",
    )
    ap.add_argument(
        "--no-bandwidth",
        action="store_true",
        help="skip the memory-bandwidth limits (read, copy, triad; arrays of twice the largest cache)",
    )
    ap.add_argument(
        "--no-sgemm", action="store_true", help="skip the matmul limit (NumPy's float32 matmul rate)"
    )
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    # Internal: a child process measuring one thread count when threadpoolctl is not installed
    # (SPEC: a JSON file with the parent's options, the count and where to write the rows).
    ap.add_argument("--bench-child", metavar="SPEC", help=argparse.SUPPRESS)
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
        "memory_bytes": limits_mod.meminfo_bytes("MemTotal"),
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


def _fraction_of_limits(results: dict) -> None:
    """Each row's rate as a fraction of its workload's limit at the row's threads (``limit``,
    ``limit_fraction``); ``None`` when the limit was not measured or the row's threads are not
    known to be the row's count."""
    limits = results.get("limits", {})
    for entry in results["workloads"]:
        name = entry.get("limit")
        for row in entry["results"]:
            row["limit"] = name
            row["limit_fraction"] = None
            limit = limits.get(name, {}).get(str(row["threads"])) if name else None
            if not limit or "median_s" not in row or not row.get("threads_controlled"):
                continue
            work = entry["work"]
            amount = work["flops"] if name == "matmul" else work["bytes"]
            row["limit_fraction"] = amount / row["median_s"] / 1e9 / limit


def _speedups(entry: dict) -> None:
    """``speedup`` = peer time / fastloss time at the same threads, only when both rows ran at
    the row's thread count (``threads_controlled``): a ratio that is not like for like is left out."""
    for row in entry["results"]:
        base = next(
            (
                r
                for r in entry["results"]
                if r["impl"] == "fastloss" and r["threads"] == row["threads"] and "median_s" in r
            ),
            None,
        )
        if row["impl"] == "fastloss" and "median_s" in row and entry["fastloss_rel_err"] is None:
            entry["fastloss_rel_err"] = row["rel_err"]
        if base and "median_s" in row:
            if row.get("threads_controlled") and base.get("threads_controlled"):
                row["speedup"] = row["median_s"] / base["median_s"]
            else:
                row["speedup"] = None


def _cache_note(results: dict) -> str | None:
    info = results.get("limits_info", {}).get("bandwidth")
    cache = info.get("largest_cache_bytes") if info else None
    if not cache:
        return None
    fits = [
        f"{w['name']} ({report.fmt_bytes(w['work']['bytes'])})"
        for w in results["workloads"]
        if w.get("limit") in limits_mod.BANDWIDTH_KINDS and w["work"]["bytes"] < cache
    ]
    if not fits:
        return None
    return (
        f"the data of {', '.join(fits)} fits in the {report.fmt_bytes(cache)} cache: repeated calls "
        "can read it from there, so their fraction of the (out-of-cache) bandwidth can pass 100%"
    )


def _limit_notes(results: dict) -> list[str]:
    """A limit that drops as threads are added means another process held a core meanwhile."""
    notes = []
    for name, per in results.get("limits", {}).items():
        measured = sorted((int(t), v) for t, v in per.items() if v)
        for (t1, v1), (t2, v2) in zip(measured, measured[1:], strict=False):
            if v2 < 0.9 * v1:
                notes.append(
                    f"the {name} limit at {t2} threads ({v2:.3g}) came out below the one at {t1} "
                    f"({v1:.3g}): other processes were likely using the cores, so the fractions "
                    f"of it at {t2} threads read high"
                )
    return notes


def _measure(
    args: argparse.Namespace,
    selected: list[wl.Workload],
    active: list,
    blas: BlasThreads,
    threads: list[int],
    run_at: list[int],
    log,
) -> dict:
    """Measure the selected workloads with the active peers at the thread counts ``run_at`` (all
    of the run's ``threads``, or one of them in a child process; a peer measured at one count
    only picks it from ``threads``), then the machine limits at ``run_at``.

    Returns ``{"workloads", "limits", "limits_info", "numpy_blas", "fastloss_failed"}``, JSON-ready:
    the rows carry no ratio yet (``_speedups``, after the parts of a run are merged)."""
    quick = bool(args.quick)
    repeat = args.repeat or (3 if quick else 7)
    min_time = args.min_time if args.min_time is not None else (0.001 if quick else 0.005)
    max_time = args.max_time if args.max_time is not None else (1.0 if quick else 10.0)
    fl_peer = next(p for p in active if isinstance(p, FastlossPeer))
    fl = fl_peer.fl
    original_threads = fl.get_num_threads()
    out: dict = {"workloads": [], "limits": {}, "limits_info": {}, "numpy_blas": {}, "fastloss_failed": False}
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
                "limit": w.limit,
                "results": [],
                "fastloss_rel_err": None,
            }
            fns = {}
            for p in active:
                try:
                    fns[p.name] = p.prepare(w, data)
                except Exception as exc:
                    fns[p.name] = exc
            for t in run_at:
                controlled = blas.set(t)
                out["numpy_blas"][str(t)] = {
                    "controlled": controlled,
                    "num_threads": [d.get("num_threads") for d in blas.info()],
                }
                for p in active:
                    fn = fns.get(p.name)
                    if fn is None or t not in p.measured_at(threads):
                        continue
                    row = {"impl": p.name, "threads": t, "threads_set_by": p.threads_set_by()}
                    try:
                        if isinstance(fn, Exception):
                            raise fn
                        row["threads_controlled"] = p.set_threads(t)
                        timing, value = measure(fn, repeat, min_time, max_time)
                    except Exception as exc:
                        row["error"] = f"{type(exc).__name__}: {exc}"
                        if p.name == "fastloss":
                            out["fastloss_failed"] = True
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
                        + ("" if row["threads_controlled"] else "  threads not controlled")
                    )
                    del value
            blas.restore()
            out["workloads"].append(entry)
            del fns, data, ref_grads

        wanted = {w.limit for w in selected}
        if not args.no_bandwidth and wanted & set(limits_mod.BANDWIDTH_KINDS):
            log("machine limits: memory bandwidth (fastloss's probe, out of cache)")
            bw = limits_mod.bandwidth(run_at, repeat, log)
            out["limits_info"]["bandwidth"] = bw.pop("info")
            out["limits"].update(bw)
        if not args.no_sgemm and "matmul" in wanted:
            log("machine limits: NumPy's float32 matmul")
            mm = limits_mod.matmul(run_at, blas, quick, repeat, log)
            out["limits_info"]["matmul"] = mm.pop("info")
            out["limits"].update(mm)
    finally:
        blas.restore()
        if original_threads:
            with contextlib.suppress(Exception):
                fl.set_num_threads(original_threads)
    return out


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _measure_in_children(args: argparse.Namespace, threads: list[int], log) -> tuple[dict, list[str]]:
    """Without threadpoolctl: NumPy's BLAS reads its thread count when it loads, so each count
    ``T`` is measured by a child process (this interpreter, ``python -m <this package>
    --bench-child SPEC``) started with ``blas_thread_env(T)``. Returns the merged parts (as
    ``_measure``) and the errors of children that failed."""
    spec_args = {k: v for k, v in vars(args).items() if k not in ("func", "bench_child") and _jsonable(v)}
    spec_args["threads"] = threads
    parts, errors = [], []
    with tempfile.TemporaryDirectory(prefix="fastloss-bench-") as tmp:
        for t in threads:
            spec_path = os.path.join(tmp, f"spec-{t}.json")
            out_path = os.path.join(tmp, f"threads-{t}.json")
            with open(spec_path, "w") as fh:
                json.dump({"args": spec_args, "threads": t, "out": out_path}, fh)
            log(
                f"{t} thread{'s' if t > 1 else ''}: measured in a child process with "
                f"OPENBLAS_NUM_THREADS={t} and the like"
            )
            proc = subprocess.run(
                [sys.executable, "-m", __package__, "--bench-child", spec_path],
                env={**os.environ, **blas_thread_env(t)},
                stdout=subprocess.PIPE,
                text=True,
            )
            if proc.stdout.strip():
                print(proc.stdout.rstrip(), file=sys.stderr)
            if proc.returncode != 0 or not os.path.exists(out_path):
                errors.append(
                    f"the child process measuring {t} threads failed (exit code {proc.returncode}; "
                    "its messages are on stderr): no rows at that count"
                )
                continue
            with open(out_path) as fh:
                parts.append(json.load(fh))
    return _merge(parts), errors


def _merge(parts: list[dict]) -> dict:
    """One ``_measure`` result from several (one per thread count, in the run's order)."""
    merged: dict = {
        "workloads": [],
        "limits": {},
        "limits_info": {},
        "numpy_blas": {},
        "fastloss_failed": False,
    }
    by_name: dict = {}
    for part in parts:
        merged["fastloss_failed"] = merged["fastloss_failed"] or part["fastloss_failed"]
        for entry in part["workloads"]:
            if entry["name"] in by_name:
                by_name[entry["name"]]["results"].extend(entry["results"])
            else:
                by_name[entry["name"]] = entry
                merged["workloads"].append(entry)
        for name, per in part["limits"].items():
            merged["limits"].setdefault(name, {}).update(per)
        for key, info in part["limits_info"].items():
            merged["limits_info"].setdefault(key, info)
        merged["numpy_blas"].update(part["numpy_blas"])
    return merged


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args`` (see ``add_arguments``); return an exit code.

    The results (printed as a table, written with ``--json``) are a dict::

        settings   quick, repeat, threads, min_time, max_time, command
        machine    platform, cpu model and count, memory, python, numpy/torch/jax versions, BLAS
        fastloss   version, show_config text, active_isa, default_threads
        peers      name -> description, version, available, reason, threads (how they are set)
        thread_control  {blas: "threadpoolctl" | "environment", processes, environment [names],
                         numpy_blas {threads: {controlled, num_threads [per BLAS library]}}}
        workloads  [{name, family, grad, dims, label, reference, work {bytes, flops}, limit,
                     fastloss_rel_err,
                     results [{impl, threads, threads_set_by, threads_controlled, median_s,
                               times_s, repeats, number, warmup_s, value, rel_err, grad_rel_err,
                               speedup, limit, limit_fraction, error}]}]
        limits     {"read"|"copy"|"triad": {threads: GB/s}, "matmul": {threads: GFLOP/s}}
        limits_info  {"bandwidth": {method, array_bytes, largest_cache_bytes, ...},
                      "matmul": {method, n, statistic}}
        summary    {threads: [{workload, fastloss_s, best_peer, best_peer_s, x_best_peer,
                               x_numpy_ref, limit, limit_fraction}]}
        memory     [{workload, impl, extra_bytes, method, ...}]
        lce_memory (with --lce-memory) {dims {N, H}, threads, available_bytes,
                    rows [{impl, V, logits_bytes, forward, forward_backward}]}: each of the last
                    two {extra_bytes, output_bytes, extra_beyond_outputs_bytes, method, ...},
                    {error} or {skipped} (memory.lce_memory)
        machine_reference  {"numpy float32 matmul 4096x4096": {threads: GFLOP/s}}
        notes      [str]

    ``speedup`` is ``None`` (and ``limit_fraction`` too) for a row whose threads could not be
    set to the row's count: such a row is shown, not compared.

    NumPy's BLAS threads are set with threadpoolctl in this process when it is importable;
    otherwise each thread count runs in a child process started with OPENBLAS_NUM_THREADS (and
    the like, ``timing.THREAD_ENV_VARS``) set to it, and the parts are merged here
    (``thread_control`` says which; the numpy_* rows' ``threads_set_by`` too).
    """
    child = None
    if getattr(args, "bench_child", None):
        # A child process of a run without threadpoolctl: measure one thread count, write it.
        with open(args.bench_child) as fh:
            child = json.load(fh)
        args = argparse.Namespace(**child["args"])

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

    blas = BlasThreads(environment=child["threads"] if child else None)
    peers = all_peers(args.peers, blas)
    fl_peer = next(p for p in peers if isinstance(p, FastlossPeer))
    fl = fl_peer.fl
    active = [p for p in peers if p.available()]
    notes: list[str] = []
    if any(w.grad for w in selected) and not fl_peer.supports_grad():
        dropped = [w.name for w in selected if w.grad]
        selected = [w for w in selected if not w.grad]
        notes.append(
            "loss+gradient workloads skipped (this fastloss has no return_grad yet): " + ", ".join(dropped)
        )
    if not fl_peer.supports_lce():
        lce = [w.name for w in selected if w.family == "lce"]
        if lce:
            notes.append(
                "this fastloss has no linear_cross_entropy yet: " + ", ".join(lce) + " measured for the "
                "peers only (no fastloss row, no ratio)"
            )
    if child:
        part = _measure(args, selected, active, blas, threads, [child["threads"]], log)
        with open(child["out"], "w") as fh:
            json.dump(part, fh)
        return 0

    if blas.note():
        notes.insert(0, blas.note())
    for p in peers:
        if not p.available():
            notes.append(f"{p.name} skipped: {p.reason}")
        elif not p.threads_settable:
            at = p.measured_at(threads)
            notes.append(
                f"{p.name}: its threads are {p.threads_how()}; measured at {at[0]} threads only"
                + ("" if p.set_threads(at[0]) else " (threads not controlled: no ratio)")
            )

    in_process = blas.available
    results = {
        "schema": 2,
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
        "thread_control": {
            "blas": blas.method,
            "processes": "this process" if in_process else "one child process per thread count",
            "environment": [] if in_process else list(THREAD_ENV_VARS),
            "numpy_blas": {},
        },
        "workloads": [],
        "limits": {},
        "limits_info": {},
        "summary": {},
        "memory": [],
        "memory_context": [],
        "machine_reference": {},
        "notes": notes,
    }
    cpu_start = _cpu_seconds()
    started = time.perf_counter()
    errors: list[str] = []
    if in_process:
        part = _measure(args, selected, active, blas, threads, threads, log)
    else:
        part, errors = _measure_in_children(args, threads, log)
        notes.extend(errors)
    fastloss_failed = part["fastloss_failed"]
    for entry in part["workloads"]:
        _speedups(entry)
    results["workloads"] = part["workloads"]
    results["limits"] = part["limits"]
    results["limits_info"] = part["limits_info"]
    results["thread_control"]["numpy_blas"] = part["numpy_blas"]
    if "matmul" in part["limits"]:
        results["machine_reference"] = {part["limits_info"]["matmul"]["method"]: part["limits"]["matmul"]}

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
    lce_vs = getattr(args, "lce_memory", None)
    if lce_vs is not None and args.no_memory:
        notes.append("--lce-memory not measured: --no-memory was given too")
    elif lce_vs is not None:
        by_name = {p.name: p for p in peers}
        impls = [i for i in memory_mod.LCE_MEMORY_IMPLS if i in by_name and by_name[i].available()]
        for impl in memory_mod.LCE_MEMORY_IMPLS:
            if impl not in by_name:
                notes.append(f"linear_cross_entropy memory: {impl} not measured (not among --peers)")
        results["lce_memory"] = memory_mod.lce_memory(
            impls,
            list(lce_vs) or list(memory_mod.LCE_MEMORY_V_QUICK if quick else memory_mod.LCE_MEMORY_V),
            quick,
            max(threads),
            limits_mod.meminfo_bytes("MemAvailable"),
            log,
            skip={} if fl_peer.supports_lce() else {"fastloss": "this fastloss has no linear_cross_entropy"},
        )

    _fraction_of_limits(results)
    results["summary"] = report.summary(results)
    notes.extend(_limit_notes(results))
    note = _cache_note(results)
    if note:
        notes.append(note)
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
    if args.chart:
        why_not = report.write_chart(results, args.chart)
        if why_not is None:
            print(f"wrote {args.chart}")
        else:
            print(f"chart not written: {why_not}")
    if fastloss_failed:
        print("fastloss bench: error: fastloss failed on some workloads (see the table)", file=sys.stderr)
    if errors:
        print("fastloss bench: error: " + "; ".join(errors), file=sys.stderr)
    return 1 if fastloss_failed or errors else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="fastloss bench", description="Benchmark fastloss against its peers.")
    add_arguments(ap)
    args = ap.parse_args(argv)
    args.command_line = ["fastloss", "bench"] + list(sys.argv[1:] if argv is None else argv)
    return run(args)
