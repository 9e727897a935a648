"""The outputs of ``fastloss bench``: the text table, the JSON file, the PNG chart.

All three read the same results dict built by ``runner`` (its layout is the JSON file's
layout, documented in ``runner.run``).
"""

from __future__ import annotations

import json
import math
import os

__all__ = [
    "fmt_time",
    "fmt_bytes",
    "fmt_mib",
    "table",
    "summary",
    "lce_memory_lines",
    "write_json",
    "write_chart",
    "NOT_CONTROLLED",
]


def fmt_time(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return (
                f"{seconds / scale:.3g} {unit}" if seconds / scale < 100 else f"{seconds / scale:.0f} {unit}"
            )
    return f"{seconds * 1e9:.3g} ns"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def fmt_mib(n: float | None) -> str:
    """Bytes in MiB: ``0.06 MiB``, ``94.0 MiB``, ``1059 MiB``."""
    if n is None:
        return "n/a"
    mib = n / 2**20
    return f"{mib:.2f} MiB" if mib < 10 else (f"{mib:.1f} MiB" if mib < 100 else f"{mib:.0f} MiB")


def _fmt_rate(row: dict, work: dict) -> str:
    t = row.get("median_s")
    if not t:
        return "-"
    if work.get("flops"):
        return f"{work['flops'] / t / 1e9:.3g} GFLOP/s"
    return f"{work['bytes'] / t / 1e9:.3g} GB/s"


def _fmt_err(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.1e}"


NOT_CONTROLLED = "threads not controlled"


def _fmt_fraction(fraction: float | None, limit: str | None) -> str:
    if fraction is None or limit is None:
        return "-"
    return f"{100 * fraction:.0f}% {limit}"


def _fmt_ratio(x: float | None) -> str:
    return f"{x:.2f}x" if x else "-"


def _grid(
    header: tuple[str, ...], rows: list[tuple[str, ...]], right: set[int], gap_on: int | None = 0
) -> list[str]:
    """Aligned text columns; a blank line between groups of rows that differ in column ``gap_on``."""
    widths = [
        max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i])
        for i in range(len(header))
    ]

    def fmt_row(r):
        return "  ".join(
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)
        ).rstrip()

    lines = [fmt_row(header), "  ".join("-" * n for n in widths)]
    prev = None
    for r in rows:
        if gap_on is not None and prev is not None and r[gap_on] != prev:
            lines.append("")
        prev = r[gap_on] if gap_on is not None else None
        lines.append(fmt_row(r))
    return lines


def summary(results: dict) -> dict:
    """Per thread count, per workload: fastloss against the fastest peer it can be compared
    with (one whose threads were the row's), against ``numpy_ref``, and its fraction of the
    workload's machine limit. Peers left out for their threads are listed in ``not_compared``."""
    out: dict = {}
    for t in results["settings"]["threads"]:
        rows = []
        for w in results["workloads"]:
            at = [r for r in w["results"] if r["threads"] == t and "median_s" in r]
            fl = next((r for r in at if r["impl"] == "fastloss"), None)
            if fl is None:
                continue
            peers = [r for r in at if r["impl"] != "fastloss" and r.get("speedup")]
            best = min(peers, key=lambda r: r["median_s"]) if peers else None
            ref = next((r for r in peers if r["impl"] == "numpy_ref"), None)
            rows.append(
                {
                    "workload": w["name"],
                    "fastloss_s": fl["median_s"],
                    "best_peer": best["impl"] if best else None,
                    "best_peer_s": best["median_s"] if best else None,
                    "x_best_peer": best["speedup"] if best else None,
                    "x_numpy_ref": ref["speedup"] if ref else None,
                    "limit": fl.get("limit"),
                    "limit_fraction": fl.get("limit_fraction"),
                    "not_compared": sorted(
                        r["impl"] for r in at if r["impl"] != "fastloss" and not r.get("speedup")
                    ),
                }
            )
        out[str(t)] = rows
    return out


def _limits_lines(results: dict) -> list[str]:
    limits = results.get("limits") or {}
    if not limits:
        return []
    names = [n for n in ("read", "copy", "triad", "matmul") if n in limits]
    units = {"read": "GB/s", "copy": "GB/s", "triad": "GB/s", "matmul": "GFLOP/s"}
    header = ("threads", *(f"{n} {units[n]}" for n in names))
    rows = []
    for t in results["settings"]["threads"]:
        vals = [limits[n].get(str(t)) for n in names]
        rows.append((str(t), *("not measured" if v is None else f"{v:.3g}" for v in vals)))
    lines = ["machine limits, measured in this run (the fastest sample of each):"]
    lines += ["  " + line for line in _grid(header, rows, set(range(1, len(header))), gap_on=None)]
    info = results.get("limits_info", {})
    bw = info.get("bandwidth")
    if bw:
        cache = bw.get("largest_cache_bytes")
        lines.append(
            f"  read/copy/triad: fastloss's probe (plain OpenMP loops, ordinary stores) over "
            f"{bw['arrays']} float32 arrays of {fmt_bytes(bw['array_bytes'])}"
            + (
                f" (the largest cache: {fmt_bytes(cache)}, from {bw['cache_source']})"
                if cache
                else " (no cache size found)"
            )
            + "; bytes counted as STREAM does: read 4, copy 8, triad 12 per element"
            + (
                ""
                if bw.get("out_of_cache")
                else "; NOT twice the cache size: the limits may include cache hits"
            )
        )
    mm = info.get("matmul")
    if mm:
        lines.append(f"  matmul: {mm['method']}, BLAS limited to the row's threads, GFLOP/s = 2 n^3 / time")
    return lines


def _summary_lines(results: dict) -> list[str]:
    lines: list[str] = []
    for t, rows in (results.get("summary") or {}).items():
        if not rows:
            continue
        lines.append("")
        lines.append(
            f"summary at {t} thread{'s' if t != '1' else ''}: fastloss against the fastest peer whose "
            "threads were the same, against numpy_ref, and its fraction of the machine limit"
        )
        header = (
            "workload",
            "fastloss",
            "fastest peer",
            "its median",
            "x fastest peer",
            "x numpy_ref",
            "of limit",
        )
        body = [
            (
                r["workload"],
                fmt_time(r["fastloss_s"]),
                r["best_peer"] or "(none compared)",
                fmt_time(r["best_peer_s"]),
                _fmt_ratio(r["x_best_peer"]),
                _fmt_ratio(r["x_numpy_ref"]),
                _fmt_fraction(r["limit_fraction"], r["limit"]),
            )
            for r in rows
        ]
        lines += _grid(header, body, {1, 3, 4, 5, 6}, gap_on=None)
        left_out = sorted({impl for r in rows for impl in r["not_compared"]})
        if left_out:
            lines.append(f"not compared ({NOT_CONTROLLED}): {', '.join(left_out)}")
    return lines


def _lce_cell(case: dict | None, logits: int) -> tuple[str, str, str | None]:
    """(extra, % of the logits, a footnote) of one ``memory.lce_memory`` measurement."""
    if not case:
        return "-", "-", None
    if "skipped" in case:
        return "skipped", "-", f"skipped: {case['skipped']}"
    extra = case.get("extra_beyond_outputs_bytes")
    if extra is None:
        return "n/a", "-", case.get("error") or case.get("method")
    pct = 100 * extra / logits
    return fmt_mib(extra), f"{pct:.2f}%" if pct < 10 else f"{pct:.0f}%", None


def lce_memory_lines(results: dict) -> list[str]:
    """The table of ``results["lce_memory"]`` (``--lce-memory``): per implementation and V, the
    extra peak memory beyond inputs and outputs, forward and forward + backward, and each as a
    percentage of the N x V float32 logits."""
    mem = results.get("lce_memory")
    if not mem:
        return []
    dims = mem["dims"]
    rows = mem["rows"]
    methods = sorted(
        {
            c["method"]
            for r in rows
            for c in (r["forward"], r["forward_backward"])
            if c.get("extra_bytes") is not None
        }
    )
    threads = mem.get("threads")
    lines = [
        f"linear_cross_entropy: extra peak memory beyond the inputs and the outputs (the gradients), "
        f"N={dims['N']} H={dims['H']} float32"
        + (f", {threads} thread{'s' if threads != 1 else ''}" if threads else "")
        + "; one call per fresh process"
        + (f" [{', '.join(methods)}]" if methods else "")
    ]
    header = ("impl", "V", "logits", "forward", "of logits", "fwd+bwd", "of logits")
    body = []
    notes = []
    for r in rows:
        fwd = _lce_cell(r.get("forward"), r["logits_bytes"])
        both = _lce_cell(r.get("forward_backward"), r["logits_bytes"])
        body.append((r["impl"], str(r["V"]), fmt_mib(r["logits_bytes"]), fwd[0], fwd[1], both[0], both[1]))
        for what, cell in (("forward", fwd), ("fwd+bwd", both)):
            if cell[2]:
                notes.append(f"{r['impl']} V={r['V']} {what}: {cell[2]}")
    lines += [("  " + line).rstrip() for line in _grid(header, body, {1, 2, 3, 4, 5, 6}, gap_on=1)]
    lines += ["  " + n for n in notes]
    return lines


def table(results: dict) -> str:
    """The report printed by ``fastloss bench``."""
    lines: list[str] = []
    m = results["machine"]
    fl = results["fastloss"]
    lines.append(
        f"fastloss {fl.get('version')} ({fl.get('active_isa') or '?'}), "
        f"numpy {m.get('numpy')}"
        + (f", torch {m['torch']}" if m.get("torch") else "")
        + (f", jax {m['jax']}" if m.get("jax") else "")
        + f"; {m.get('cpu_model') or m.get('processor') or m.get('machine')}, "
        f"{m.get('cpu_count')} cores, {m.get('platform')}"
    )
    s = results["settings"]
    lines.append(
        f"median of up to {s['repeat']} timed samples after a warm-up "
        f"(each sample loops until >= {s['min_time'] * 1e3:g} ms); "
        f"speedup = peer time / fastloss time at the same threads" + ("; --quick sizes" if s["quick"] else "")
    )
    peers = {k: v for k, v in results.get("peers", {}).items() if v.get("available") and v.get("threads")}
    if peers:
        lines.append(f"threads (a row not run at its thread count gets no ratio: '{NOT_CONTROLLED}'):")
        width = max(len(k) for k in peers)
        for name, p in peers.items():
            lines.append(f"  {name:<{width}}  {p['threads']}")
    lines.append("")
    for w in results["workloads"]:
        ref = w.get("reference")
        lines.append(
            f"  {w['name']:<18} {w['label']}; float64 reference loss {ref:.9g}"
            if ref is not None
            else f"  {w['name']:<18} {w['label']}"
        )
    lines.append("")
    header = (
        "workload",
        "threads",
        "impl",
        "median",
        "samples",
        "rate",
        "of limit",
        "fl speedup",
        "rel.err",
        "grad rel.err",
    )
    rows = []
    for w in results["workloads"]:
        for r in w["results"]:
            if r.get("error"):
                rows.append(
                    (w["name"], str(r["threads"]), r["impl"], "error", "", "", "", "", "", r["error"][:60])
                )
                continue
            if r["impl"] == "fastloss":
                speedup = "-" if r.get("threads_controlled", True) else NOT_CONTROLLED
            elif not r.get("threads_controlled", True):
                speedup = NOT_CONTROLLED
            else:
                speedup = _fmt_ratio(r.get("speedup"))
            rows.append(
                (
                    w["name"],
                    str(r["threads"]),
                    r["impl"],
                    fmt_time(r["median_s"]),
                    f"{r['repeats']}x{r['number']}",
                    _fmt_rate(r, w["work"]),
                    _fmt_fraction(r.get("limit_fraction"), r.get("limit")),
                    speedup,
                    _fmt_err(r.get("rel_err")),
                    _fmt_err(r.get("grad_rel_err")) if w.get("grad") else "",
                )
            )
    if not any(w.get("grad") for w in results["workloads"]):
        header = header[:-1]
        rows = [r[:-1] for r in rows]
    lines += _grid(header, rows, {3, 4, 5, 6, 7, 8, 9})
    lines.append("")
    lines.append(
        "agreement with the float64 reference (fastloss, |loss - ref| / |ref|): "
        + ", ".join(f"{w['name']} {_fmt_err(w.get('fastloss_rel_err'))}" for w in results["workloads"])
    )
    for mem in results.get("memory", []):
        extra = mem.get("extra_bytes")
        text = (
            fmt_bytes(extra)
            if extra is not None
            else ("n/a" + (f" ({mem['error']})" if mem.get("error") else ""))
        )
        lines.append(
            f"peak extra memory, {mem['workload']} {mem['impl']}: {text}"
            + (f" [{mem['method']}]" if extra is not None else "")
        )
    for mem in results.get("memory_context", []):
        lines.append(mem)
    lce_lines = lce_memory_lines(results)
    if lce_lines:
        lines.append("")
        lines += lce_lines
    limit_lines = _limits_lines(results)
    if limit_lines:
        lines.append("")
        lines += limit_lines
    lines += _summary_lines(results)
    if results.get("notes"):
        lines.append("")
    for note in results.get("notes", []):
        lines.append(f"note: {note}")
    if results.get("elapsed_s") is not None:
        lines.append(f"benchmark took {results['elapsed_s']:.3g} s")
    return "\n".join(lines)


def write_json(results: dict, path: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w") as fh:
        json.dump(_finite(results), fh, indent=1, default=_json_default)
        fh.write("\n")


def _finite(obj):
    """NaN and infinities become null: strict JSON has no spelling for them."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _json_default(obj):
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
    except ImportError:  # pragma: no cover
        pass
    return str(obj)


_PEER_COLOURS = {
    "numpy_ref": "#9e9e9e",
    "numpy_fast": "#4c72b0",
    "torch": "#dd8452",
    "torch_chunked": "#c44e52",
    "jax": "#55a868",
}


def _ratio_ticks(lo: float, hi: float) -> list[float]:
    """Ticks covering [lo, hi] on a log axis, as many as stay readable: 1-2-5 per decade over
    a short range (0.5x, 1x, 2x, 5x), 1-3 over a longer one, powers of ten beyond."""
    decades = math.log10(hi / lo)
    steps = (1.0, 2.0, 5.0) if decades <= 2.2 else ((1.0, 3.0) if decades <= 3.5 else (1.0,))
    ticks = []
    decade = 10.0 ** math.floor(math.log10(lo))
    while decade <= hi:
        ticks += [m * decade for m in steps if lo <= m * decade <= hi]
        decade *= 10
    return ticks


def _limits_title(results: dict) -> str:
    limits = results.get("limits") or {}
    parts = []
    for t in results["settings"]["threads"]:
        bits = [
            f"{name} {limits[name][str(t)]:.3g}"
            for name in ("read", "copy", "triad")
            if limits.get(name, {}).get(str(t))
        ]
        text = (", ".join(bits) + " GB/s") if bits else ""
        mm = limits.get("matmul", {}).get(str(t))
        if mm:
            text += (", " if text else "") + f"matmul {mm:.3g} GFLOP/s"
        if text:
            parts.append(f"{t} thr: {text}")
    return ("limits  " + "  |  ".join(parts)) if parts else "limits not measured"


def _fmt_bar(v: float) -> str:
    return f"{v:.2f}x" if v < 10 else (f"{v:.1f}x" if v < 100 else f"{v:.0f}x")


def write_chart(results: dict, path: str) -> str | None:
    """Horizontal bars, one per workload and peer: peer time / fastloss time (> 1: fastloss is
    faster), the value printed on each bar, a line at 1x, one panel per thread count; the machine
    and its limits in the title. Rows without a ratio (threads not controlled) are not drawn.
    Returns ``None`` on success, else why no chart was written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator
    except Exception as exc:  # ImportError, or a backend that will not load
        return (
            f"matplotlib is not importable ({type(exc).__name__}); "
            "install it with pip install 'fastloss[bench]' (or pip install matplotlib)"
        )
    threads = results["settings"]["threads"]
    names = [w["name"] for w in results["workloads"]]
    impls = [
        i for i in _PEER_COLOURS if any(r["impl"] == i for w in results["workloads"] for r in w["results"])
    ]
    impls += sorted(
        {r["impl"] for w in results["workloads"] for r in w["results"]} - set(impls) - {"fastloss"}
    )
    ratios = {
        (w["name"], r["impl"], r["threads"]): r["speedup"]
        for w in results["workloads"]
        for r in w["results"]
        if r["impl"] != "fastloss" and r.get("speedup")
    }
    if not ratios:
        return "no ratio to chart (no peer ran at a controlled thread count)"
    lo = min(min(ratios.values()), 1.0) / 1.6
    hi = max(max(ratios.values()), 1.0) * 2.2  # room for the value labels
    fractions = {
        (w["name"], r["threads"]): (r.get("limit_fraction"), r.get("limit"))
        for w in results["workloads"]
        for r in w["results"]
        if r["impl"] == "fastloss"
    }
    bar_h = 0.8 / max(1, len(impls))
    fig_h = 1.6 + 0.24 * len(names) * len(impls) + 0.25 * len(names)
    fig, axes = plt.subplots(1, len(threads), figsize=(7.0 * len(threads), fig_h), squeeze=False)
    for ax, t in zip(axes[0], threads, strict=True):
        for k, impl in enumerate(impls):
            ys, vals = [], []
            for j, name in enumerate(names):
                v = ratios.get((name, impl, t))
                if v:
                    ys.append(j - 0.4 + (k + 0.5) * bar_h)
                    vals.append(v)
            if not vals:
                continue
            colour = _PEER_COLOURS.get(impl, f"C{k}")
            ax.barh(ys, [v - lo for v in vals], height=bar_h * 0.9, left=lo, color=colour, label=f"vs {impl}")
            for y, v in zip(ys, vals, strict=True):
                ax.text(v * 1.04, y, _fmt_bar(v), va="center", fontsize=7.5)
        ax.axvline(1.0, color="black", linewidth=1.2)
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ticks = _ratio_ticks(lo, hi / 1.5)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(f"{t} thread{'s' if t != 1 else ''}", fontsize=10)
        ax.set_xlabel("peer time / fastloss time  (right of 1x: fastloss faster)", fontsize=8.5)
        # Each panel names its workloads with fastloss's fraction of their limit at its threads.
        labels = []
        for name in names:
            fraction, limit = fractions.get((name, t), (None, None))
            labels.append(
                name + (f"\nfastloss {100 * fraction:.0f}% of {limit}" if fraction is not None else "")
            )
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(labels, fontsize=8.5)
        ax.set_ylim(len(names) - 0.5, -0.5)  # the first workload on top
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), fontsize=8.5, frameon=False)
    m = results["machine"]
    fl = results["fastloss"]
    fig.suptitle(
        f"fastloss {fl.get('version')} against its peers: {m.get('cpu_model') or m.get('machine')}, "
        f"{fl.get('active_isa') or '?'} path, {m.get('cpu_count')} cores"
        + (" [--quick sizes]" if results["settings"]["quick"] else "")
        + "\n"
        + _limits_title(results),
        fontsize=9.5,
    )
    left_out = sorted(
        {
            f"{r['impl']} at {r['threads']} thr"
            for w in results["workloads"]
            for r in w["results"]
            if r["impl"] != "fastloss" and "median_s" in r and not r.get("speedup")
        }
    )
    if left_out:
        fig.text(0.01, 0.005, f"not drawn ({NOT_CONTROLLED}): " + ", ".join(left_out), fontsize=7.5)
    fig.tight_layout(rect=(0, 0.35 / fig_h + 0.01, 1, 1))
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
