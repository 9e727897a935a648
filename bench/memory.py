"""Peak extra memory of one call, measured in a fresh subprocess (Linux).

The child process makes the workload's data, warms the implementation up on a tiny instance
of the same workload (thread pools, lazily loaded kernels), resets the kernel's peak-RSS
counter (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0), reads ``VmRSS``, makes one call and
reads ``VmHWM``: the difference is the most memory the call held at once beyond its inputs.
Where the counter cannot be reset, the growth of ``VmHWM`` over its value before the call is
reported instead, and marked as a lower bound. Elsewhere than Linux: ``n/a``. The arrays the
call returns (gradients) are counted too (``output_bytes``), so that ``extra_beyond_outputs_bytes``
is what the call held beyond its inputs and outputs.

``lce_memory`` does this for ``linear_cross_entropy`` (issue 12): fastloss and torch's two paths,
the forward (``lce``) and the forward with the gradients (``lce_grad``), at several numbers of
classes ``V``, each (implementation, V, workload) in its own process; a case whose estimated
need (``lce_need_bytes``) exceeds ``MemAvailable`` is skipped with a message instead of run.

Run by hand: ``python -m fastloss._bench.memory infonce_moco --impl fastloss``, or
``python -m fastloss._bench.memory lce_grad --impl torch_chunked --dim V=131072``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable

__all__ = [
    "peak_extra_memory",
    "supported",
    "parse_dims",
    "output_bytes",
    "lce_need_bytes",
    "lce_memory",
    "LCE_MEMORY_IMPLS",
    "LCE_MEMORY_V",
    "LCE_MEMORY_V_QUICK",
]

#: linear_cross_entropy's memory table: who, and at which numbers of classes (issue 12: V = 32768
#: and 131072 at N = 4096, H = 1024; the --quick shapes at a sixteenth of that).
LCE_MEMORY_IMPLS = ("fastloss", "torch", "torch_chunked")
LCE_MEMORY_V = (32768, 131072)
LCE_MEMORY_V_QUICK = (2048, 8192)
# The most extra memory each implementation is expected to need, in N x V float32 logits, with a
# margin over what issue 12 measured (torch's reference path: 2.1 forward, 3.5 with the backward;
# the chunked path: 0.2 and 1.1); fastloss's target is 0.01, estimated at 1 here.
_LCE_LOGITS_FACTOR = {
    ("torch", False): 3.0,
    ("torch", True): 5.0,
    ("torch_chunked", False): 1.0,
    ("torch_chunked", True): 2.0,
}
_INTERPRETER_BYTES = 1 << 30  # the child's interpreter, NumPy and torch, and a margin

_STATUS = "/proc/self/status"


def supported() -> bool:
    return sys.platform.startswith("linux") and os.path.exists(_STATUS)


def _status_kib() -> dict[str, int]:
    out = {}
    with open(_STATUS) as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0])  # kB
    return out


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    st = _status_kib()
    # The reset worked if the high-water mark came down to (about) the current RSS.
    return st["VmHWM"] <= st["VmRSS"] + 64


def parse_dims(items: list[str] | None) -> dict[str, int]:
    """``["V=131072", "N=64"]`` -> ``{"V": 131072, "N": 64}``."""
    out: dict[str, int] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"expected NAME=POSITIVE_INTEGER, got {item!r}")
        out[key.strip()] = int(value)
    return out


def output_bytes(value) -> int:
    """Bytes of the arrays a peer's call returned: its gradients (``(loss, grads)``), 0 for a loss."""
    if not isinstance(value, tuple) or len(value) != 2 or not isinstance(value[1], (tuple, list)):
        return 0
    return int(sum(getattr(g, "nbytes", 0) for g in value[1] if g is not None))


def _tiny_dims(w) -> dict[str, int]:
    d = dict(w.dims)
    for key in d:
        d[key] = min(d[key], 64 if key == "M" else 8) if key != "D" else d[key]
    return d


def _child(workload: str, impl: str, quick: bool, threads: int | None, dims: dict | None = None) -> dict:
    from . import peers as peers_mod
    from . import workloads as wl

    w = wl.by_name(workload)
    sizes = {**w.sizes(quick), **(dims or {})}
    unknown = set(dims or {}) - set(w.dims)
    if unknown:
        return {"error": f"{workload} has no size {', '.join(sorted(unknown))}; it has {', '.join(w.dims)}"}
    peer = next(p for p in peers_mod.all_peers([impl]) if p.name == impl)
    if not peer.available():
        return {"error": f"{impl} unavailable: {peer.reason}"}
    if threads:
        peer.set_threads(threads)
    tiny = peer.prepare(w, wl.make_data(w, dims=_tiny_dims(w)))
    if tiny is None:
        return {"error": f"{impl} has no formulation of {workload}"}
    tiny()
    del tiny
    data = wl.make_data(w, dims=sizes)
    fn = peer.prepare(w, data)
    if fn is None:
        return {"error": f"{impl} has no formulation of {workload}"}
    gc.collect()
    before = _status_kib()
    exact = _reset_peak()
    if exact:
        before = _status_kib()
    value = fn()
    after = _status_kib()
    base = before["VmRSS"] if exact else max(before["VmRSS"], before["VmHWM"])
    extra = max(0, after["VmHWM"] - base) * 1024
    out = output_bytes(value)
    return {
        "extra_bytes": extra,
        "output_bytes": out,
        "extra_beyond_outputs_bytes": max(0, extra - out),
        "method": "VmHWM after clear_refs" if exact else "VmHWM growth (lower bound)",
        "rss_before_bytes": before["VmRSS"] * 1024,
        "hwm_after_bytes": after["VmHWM"] * 1024,
        "input_bytes": int(sum(a.nbytes for a in data.values())),
        "dims": sizes,
    }


def peak_extra_memory(
    workload: str,
    impl: str,
    quick: bool = False,
    threads: int | None = None,
    timeout: float = 600.0,
    dims: dict[str, int] | None = None,
) -> dict:
    """Measure one call of ``impl`` on ``workload`` (its sizes changed by ``dims``) in a fresh
    interpreter.

    Returns a dict with ``extra_bytes`` (``None`` when not measurable), ``output_bytes``,
    ``extra_beyond_outputs_bytes`` and ``method``, or ``error``.
    """
    base = {"workload": workload, "impl": impl, "extra_bytes": None}
    if not supported():
        return {**base, "method": "n/a (needs Linux /proc/self/status)"}
    pkg = __package__ or "bench"
    cmd = [sys.executable, "-m", f"{pkg}.memory", workload, "--impl", impl, "--json"]
    if quick:
        cmd.append("--quick")
    if threads:
        cmd += ["--threads", str(threads)]
    for key, value in (dims or {}).items():
        cmd += ["--dim", f"{key}={value}"]
    env = dict(os.environ)
    if pkg.split(".")[0] != "fastloss":
        # Running from a source checkout (``python -m bench``): let the child find the package.
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {**base, "method": "n/a", "error": f"{type(exc).__name__}: {exc}"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode not in (0, 1) or not lines:  # 1: the child's error, in its JSON line
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {**base, "method": "n/a", "error": f"child exited {proc.returncode}: {tail}"}
    return {**base, **json.loads(lines[-1])}


def lce_need_bytes(impl: str, grad: bool, dims: dict[str, int]) -> int:
    """What measuring one ``linear_cross_entropy`` call may need at most: the inputs, the
    gradients, the implementation's extra memory (in logits, ``_LCE_LOGITS_FACTOR``; 1 for one
    not listed) and the interpreter."""
    n, h, v = dims["N"], dims["H"], dims["V"]
    inputs = 4 * (n * h + v * h) + 8 * n
    outputs = 4 * (n * h + v * h) if grad else 0
    logits = 4 * n * v
    return int(inputs + outputs + _LCE_LOGITS_FACTOR.get((impl, grad), 1.0) * logits + _INTERPRETER_BYTES)


def lce_memory(
    impls: list[str],
    vs: list[int],
    quick: bool,
    threads: int | None,
    available: int | None,
    log: Callable[[str], None],
    measure: Callable[..., dict] | None = None,
    skip: dict[str, str] | None = None,
) -> dict:
    """The extra peak memory of ``linear_cross_entropy`` beyond its inputs and outputs, forward
    (``lce``) and forward + backward (``lce_grad``), per implementation and number of classes.

    Returns ``{"dims": {N, H}, "threads", "available_bytes", "rows": [{impl, V, logits_bytes,
    forward, forward_backward}]}``, each of the last two a ``measure`` (``peak_extra_memory``) result or
    ``{"skipped": why}`` when its estimated need is more than ``available`` (MemAvailable) or
    the implementation is in ``skip`` (name -> why: a fastloss without ``linear_cross_entropy``)."""
    from . import workloads as wl

    measure = measure or peak_extra_memory  # looked up now: tests replace it
    sizes = wl.by_name("lce").sizes(quick)
    rows = []
    for v in vs:
        dims = {"N": sizes["N"], "H": sizes["H"], "V": v}
        for impl in impls:
            row: dict = {"impl": impl, "V": v, "logits_bytes": 4 * dims["N"] * v}
            for key, workload, grad in (("forward", "lce", False), ("forward_backward", "lce_grad", True)):
                need = lce_need_bytes(impl, grad, dims)
                why = (skip or {}).get(impl)
                if why is None and available is not None and need > available:
                    why = f"needs up to {need / 2**30:.1f} GiB, MemAvailable is {available / 2**30:.1f} GiB"
                if why is not None:
                    log(f"lce memory: {impl} {workload} V={v} skipped: {why}")
                    row[key] = {"skipped": why}
                    continue
                log(f"lce memory: {impl} {workload} V={v} (fresh subprocess)")
                row[key] = measure(workload, impl, quick, threads, dims=dims)
            rows.append(row)
    return {
        "dims": {"N": sizes["N"], "H": sizes["H"]},
        "threads": threads,
        "available_bytes": available,
        "rows": rows,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m fastloss._bench.memory",
        description="Peak extra memory of one call (run in a fresh process so nothing else moved the peak).",
    )
    ap.add_argument("workload")
    ap.add_argument("--impl", default="fastloss")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--dim", action="append", metavar="NAME=N", help="change one of the workload's sizes (e.g. V=131072)"
    )
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    args = ap.parse_args(argv)
    try:
        dims = parse_dims(args.dim)
    except ValueError as exc:
        ap.error(f"--dim: {exc}")
    if not supported():
        print("n/a: needs Linux /proc/self/status", file=sys.stderr)
        return 1
    res = _child(args.workload, args.impl, args.quick, args.threads, dims)
    if args.json:
        print(json.dumps(res))
    elif "error" in res:
        print(res["error"], file=sys.stderr)
    else:
        outputs = res["output_bytes"]
        print(
            f"{args.workload} {args.impl}: peak extra memory "
            f"{res['extra_bytes'] / 2**20:.2f} MiB ({res['method']})"
            + (
                f", {res['extra_beyond_outputs_bytes'] / 2**20:.2f} MiB beyond the "
                f"{outputs / 2**20:.2f} MiB of outputs"
                if outputs
                else ""
            )
        )
    return 1 if "error" in res else 0


if __name__ == "__main__":
    sys.exit(main())
