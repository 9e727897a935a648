"""The outputs of ``fastloss bench``: the text table, the JSON file, the PNG chart.

All three read the same results dict built by ``runner`` (its layout is the JSON file's
layout, documented in ``runner.run``).
"""

from __future__ import annotations

import json
import math
import os

__all__ = ["fmt_time", "fmt_bytes", "table", "write_json", "write_chart"]


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
        "fl speedup",
        "rel.err",
        "grad rel.err",
    )
    rows = []
    for w in results["workloads"]:
        for r in w["results"]:
            if r.get("error"):
                rows.append(
                    (w["name"], str(r["threads"]), r["impl"], "error", "", "", "", "", r["error"][:60])
                )
                continue
            sp = r.get("speedup")
            rows.append(
                (
                    w["name"],
                    str(r["threads"]),
                    r["impl"],
                    fmt_time(r["median_s"]),
                    f"{r['repeats']}x{r['number']}",
                    _fmt_rate(r, w["work"]),
                    "-" if r["impl"] == "fastloss" else (f"{sp:.2f}x" if sp else "-"),
                    _fmt_err(r.get("rel_err")),
                    _fmt_err(r.get("grad_rel_err")) if w.get("grad") else "",
                )
            )
    if not any(w.get("grad") for w in results["workloads"]):
        header = header[:-1]
        rows = [r[:-1] for r in rows]
    widths = [
        max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i])
        for i in range(len(header))
    ]
    right = {3, 4, 5, 6, 7, 8}

    def fmt_row(r):
        return "  ".join(
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)
        ).rstrip()

    lines.append(fmt_row(header))
    lines.append("  ".join("-" * n for n in widths))
    prev = None
    for r in rows:
        if prev is not None and r[0] != prev:
            lines.append("")
        prev = r[0]
        lines.append(fmt_row(r))
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
    for name, per in results.get("machine_reference", {}).items():
        lines.append(f"{name}: " + ", ".join(f"{v:.3g} GFLOP/s at {t} threads" for t, v in per.items()))
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


def write_chart(results: dict, path: str) -> str | None:
    """A grouped bar chart of the speedups; returns ``None`` on success, else why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:  # ImportError, or a backend that will not load
        return f"matplotlib not importable ({type(exc).__name__})"
    series = {}  # (impl, threads) -> {workload: speedup}
    names = [w["name"] for w in results["workloads"]]
    for w in results["workloads"]:
        for r in w["results"]:
            if r["impl"] != "fastloss" and r.get("speedup"):
                series.setdefault((r["impl"], r["threads"]), {})[w["name"]] = r["speedup"]
    if not series:
        return "no peer results to chart"
    order = [r["impl"] for w in results["workloads"] for r in w["results"]]
    keys = sorted(series, key=lambda k: (order.index(k[0]), k[1]))
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(names) + 2), 5))
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        xs = [j + (i - (len(keys) - 1) / 2) * width for j in range(len(names))]
        ys = [series[key].get(n, float("nan")) for n in names]
        # Bars start at 1x: up when fastloss is faster than the peer, down when slower.
        ax.bar(xs, [y - 1.0 for y in ys], width, bottom=1.0, label=f"vs {key[0]}, {key[1]} thr")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=20, ha="right")
    ax.set_ylabel("fastloss speedup (peer time / fastloss time)")
    m = results["machine"]
    ax.set_title(
        f"fastloss {results['fastloss'].get('version')} "
        f"({results['fastloss'].get('active_isa') or '?'}) on "
        f"{m.get('cpu_model') or m.get('machine')}, {m.get('cpu_count')} cores"
        + (" [quick]" if results["settings"]["quick"] else ""),
        fontsize=10,
    )
    ax.legend(fontsize=8, ncol=2)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
