"""Peak extra memory of one call, measured in a fresh subprocess (Linux).

The child process makes the workload's data, warms the implementation up on a tiny instance
of the same workload (thread pools, lazily loaded kernels), resets the kernel's peak-RSS
counter (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0), reads ``VmRSS``, makes one call and
reads ``VmHWM``: the difference is the most memory the call held at once beyond its inputs.
Where the counter cannot be reset, the growth of ``VmHWM`` over its value before the call is
reported instead, and marked as a lower bound. Elsewhere than Linux: ``n/a``.

Run by hand: ``python -m fastloss._bench.memory infonce_moco --impl fastloss``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys

__all__ = ["peak_extra_memory", "supported"]

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


def _tiny_dims(w) -> dict[str, int]:
    d = dict(w.dims)
    for key in d:
        d[key] = min(d[key], 64 if key == "M" else 8) if key != "D" else d[key]
    return d


def _child(workload: str, impl: str, quick: bool, threads: int | None) -> dict:
    from . import peers as peers_mod
    from . import workloads as wl

    w = wl.by_name(workload)
    peer = next(p for p in peers_mod.all_peers([impl]) if p.name == impl)
    if not peer.available():
        return {"error": f"{impl} unavailable: {peer.reason}"}
    if threads:
        peer.set_threads(threads)
    tiny = peer.prepare(w, wl.make_data(w, dims=_tiny_dims(w)))
    if tiny is None:
        return {"error": f"{impl} has no formulation of {workload}"}
    tiny()
    data = wl.make_data(w, quick)
    fn = peer.prepare(w, data)
    gc.collect()
    before = _status_kib()
    exact = _reset_peak()
    if exact:
        before = _status_kib()
    fn()
    after = _status_kib()
    base = before["VmRSS"] if exact else max(before["VmRSS"], before["VmHWM"])
    extra_kib = max(0, after["VmHWM"] - base)
    return {
        "extra_bytes": extra_kib * 1024,
        "method": "VmHWM after clear_refs" if exact else "VmHWM growth (lower bound)",
        "rss_before_bytes": before["VmRSS"] * 1024,
        "hwm_after_bytes": after["VmHWM"] * 1024,
        "input_bytes": int(sum(a.nbytes for a in data.values())),
    }


def peak_extra_memory(
    workload: str, impl: str, quick: bool = False, threads: int | None = None, timeout: float = 600.0
) -> dict:
    """Measure one call of ``impl`` on ``workload`` in a fresh interpreter.

    Returns a dict with ``extra_bytes`` (``None`` when not measurable) and ``method``, or
    ``error``.
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
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {**base, "method": "n/a", "error": f"child exited {proc.returncode}: {tail}"}
    return {**base, **json.loads(lines[-1])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m fastloss._bench.memory",
        description="Peak extra memory of one call (run in a fresh process so nothing else moved the peak).",
    )
    ap.add_argument("workload")
    ap.add_argument("--impl", default="fastloss")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    args = ap.parse_args(argv)
    if not supported():
        print("n/a: needs Linux /proc/self/status", file=sys.stderr)
        return 1
    res = _child(args.workload, args.impl, args.quick, args.threads)
    if args.json:
        print(json.dumps(res))
    elif "error" in res:
        print(res["error"], file=sys.stderr)
    else:
        print(
            f"{args.workload} {args.impl}: peak extra memory "
            f"{res['extra_bytes'] / 2**20:.2f} MiB ({res['method']})"
        )
    return 1 if "error" in res else 0


if __name__ == "__main__":
    sys.exit(main())
