"""Runtime promises: version and config, threads, determinism, thread safety, InfoNCE memory."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import fastloss
import numpy as np
import pytest
from conftest import not_under_sanitizers
from fastloss import _core
from reference import cross_entropy_ref, info_nce_ref, mae_ref, mse_ref

REDUCTIONS = ("none", "sum", "mean", "batchmean")


def run_python(code: str, env_update=None, env_remove=()):
    env = dict(os.environ)
    for key in env_remove:
        env.pop(key, None)
    env.update(env_update or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)


def bits(result):
    """An exact, hashable picture of a result: float bits, or dtype + shape + bytes."""
    if isinstance(result, float):
        return ("float", result.hex())
    arr = np.asarray(result)
    return (str(arr.dtype), arr.shape, np.ascontiguousarray(arr).tobytes())


# ---------------------------------------------------------------------------------------------
# version, config, threads


def test_version_is_a_string():
    assert isinstance(fastloss.__version__, str)
    assert re.match(r"^\d+\.\d+", fastloss.__version__), fastloss.__version__


def test_show_config_prints_version_and_active_path(isa, capsys):
    fastloss.show_config()
    out = capsys.readouterr().out
    assert fastloss.__version__ in out
    assert _core.active_isa() == isa
    assert re.search(rf"\b{re.escape(isa)}\b", out), out
    for name in _core.available_isas():
        assert name in out


def test_available_isas_include_scalar():
    names = list(_core.available_isas())
    assert "scalar" in names
    assert _core.active_isa() in names


def test_forced_isa_is_the_one_running():
    for name in _core.available_isas():
        proc = run_python(
            "import fastloss, fastloss._core as c; print(c.active_isa()); fastloss.show_config()",
            env_update={"FASTLOSS_ISA": name},
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[0] == name, proc.stdout


def test_forcing_an_unknown_isa_is_a_clear_error():
    proc = run_python("import fastloss", env_update={"FASTLOSS_ISA": "no-such-isa"})
    assert proc.returncode != 0
    assert "FASTLOSS_ISA" in proc.stderr and "no-such-isa" in proc.stderr, proc.stderr
    assert "Segmentation" not in proc.stderr


def test_num_threads_round_trip(restore_threads):
    for n in (1, 2, 3, 7, 1, 64):
        fastloss.set_num_threads(n)
        assert fastloss.get_num_threads() == n
        assert type(fastloss.get_num_threads()) is int


def test_num_threads_accepts_numpy_integers(restore_threads):
    fastloss.set_num_threads(np.int64(3))
    assert fastloss.get_num_threads() == 3


def test_default_num_threads_is_cpu_count():
    proc = run_python(
        "import os, fastloss; print(fastloss.get_num_threads(), os.cpu_count())",
        env_remove=("OMP_NUM_THREADS",),
    )
    assert proc.returncode == 0, proc.stderr
    got, cpus = proc.stdout.split()
    assert int(got) == int(cpus)


# ---------------------------------------------------------------------------------------------
# bit-identical results for any thread count and every call


def regression_calls(dtype):
    rng = np.random.default_rng(0)
    pred = rng.standard_normal((3000, 1000)).astype(dtype)
    target = rng.standard_normal((3000, 1000)).astype(dtype)
    w = rng.random(3000)
    calls = []
    for func in (fastloss.mse, fastloss.mae):
        for reduction in REDUCTIONS:
            calls.append(
                (f"{func.__name__}-{reduction}", lambda f=func, r=reduction: f(pred, target, reduction=r))
            )
            calls.append(
                (
                    f"{func.__name__}-{reduction}-weighted",
                    lambda f=func, r=reduction: f(pred, target, reduction=r, sample_weight=w),
                )
            )
    # a reference value for one of them, so that a wrong-but-deterministic result fails too
    expected = {
        "mse-sum": mse_ref(pred, target, "sum"),
        "mae-mean-weighted": mae_ref(pred, target, "mean", w),
    }
    return calls, expected


def cross_entropy_calls():
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((20000, 100)) * 3).astype(np.float32)
    target = rng.integers(0, 100, 20000)
    target[::7] = -100
    probs = rng.random((20000, 100)).astype(np.float32)
    w = rng.random(100) + 0.5
    calls = []
    for reduction in REDUCTIONS:
        calls.append(
            (
                f"ce-{reduction}",
                lambda r=reduction: fastloss.cross_entropy(
                    logits, target, reduction=r, weight=w, label_smoothing=0.1
                ),
            )
        )
        calls.append(
            (
                f"ce-prob-{reduction}",
                lambda r=reduction: fastloss.cross_entropy(logits, probs, reduction=r, weight=w),
            )
        )
    expected = {"ce-mean": cross_entropy_ref(logits, target, "mean", weight=w, label_smoothing=0.1)}
    return calls, expected


def info_nce_calls():
    rng = np.random.default_rng(2)
    q = rng.standard_normal((300, 64)).astype(np.float32)
    k = rng.standard_normal((300, 64)).astype(np.float32)
    queue = rng.standard_normal((5000, 64)).astype(np.float32)
    paired = rng.standard_normal((300, 100, 64)).astype(np.float32)
    big_q = rng.standard_normal((1000, 64)).astype(np.float32)
    big_k = rng.standard_normal((1000, 64)).astype(np.float32)
    calls = []
    for reduction in ("none", "sum", "mean"):
        calls.append(
            (
                f"nce-unpaired-{reduction}",
                lambda r=reduction: fastloss.info_nce(
                    q, k, queue, reduction=r, normalize=True, temperature=0.05
                ),
            )
        )
        calls.append(
            (
                f"nce-paired-{reduction}",
                lambda r=reduction: fastloss.info_nce(q, k, paired, negative_mode="paired", reduction=r),
            )
        )
        calls.append(
            (
                f"nce-inbatch-{reduction}",
                lambda r=reduction: fastloss.info_nce(big_q, big_k, reduction=r, symmetric=True),
            )
        )
    expected = {
        "nce-unpaired-mean": info_nce_ref(q, k, queue, reduction="mean", normalize=True, temperature=0.05)
    }
    return calls, expected


def check_deterministic(calls, expected, rtol):
    fastloss.set_num_threads(1)
    baseline = {name: call() for name, call in calls}
    for name, value in expected.items():
        assert math.isclose(baseline[name], value, rel_tol=rtol), (name, baseline[name], value)
    for n in (2, 3, 1):  # the last round repeats the single-threaded calls
        fastloss.set_num_threads(n)
        for name, call in calls:
            assert bits(call()) == bits(baseline[name]), f"{name} differs with {n} threads"
    fastloss.set_num_threads(2)
    for name, call in calls:  # and a second call at the same thread count
        assert bits(call()) == bits(baseline[name]), f"{name} differs on a repeated call"


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_regression_bit_identical_across_threads(isa, restore_threads, dtype):
    calls, expected = regression_calls(dtype)
    check_deterministic(calls, expected, 1e-6 if dtype == np.float32 else 1e-12)


def test_cross_entropy_bit_identical_across_threads(isa, restore_threads):
    calls, expected = cross_entropy_calls()
    check_deterministic(calls, expected, 1e-5)


def test_info_nce_bit_identical_across_threads(isa, restore_threads):
    calls, expected = info_nce_calls()
    check_deterministic(calls, expected, 1e-5)


# ---------------------------------------------------------------------------------------------
# 8 Python threads at once


def test_eight_python_threads_get_the_single_threaded_result(isa, restore_threads):
    rng = np.random.default_rng(3)
    workers = 8
    jobs = []
    for _ in range(workers):
        pred = rng.standard_normal((400, 1000)).astype(np.float32)
        target = rng.standard_normal((400, 1000)).astype(np.float32)
        logits = rng.standard_normal((5000, 100))
        labels = rng.integers(0, 100, 5000)
        q = rng.standard_normal((100, 64)).astype(np.float32)
        k = rng.standard_normal((100, 64)).astype(np.float32)
        queue = rng.standard_normal((2000, 64)).astype(np.float32)
        jobs.append(
            [
                lambda p=pred, t=target: fastloss.mse(p, t, reduction="sum"),
                lambda p=pred, t=target: fastloss.mae(p, t, reduction="none"),
                lambda x=logits, y=labels: fastloss.cross_entropy(x, y, label_smoothing=0.1),
                lambda x=logits, y=labels: fastloss.cross_entropy(x, y, reduction="none"),
                lambda a=q, b=k, c=queue: fastloss.info_nce(a, b, c, reduction="none"),
                lambda a=q, b=k: fastloss.info_nce(a, b, symmetric=True),
            ]
        )
    fastloss.set_num_threads(1)
    expected = [[bits(call()) for call in calls] for calls in jobs]
    # the single-threaded results are right, not just repeatable
    for i in (0, workers - 1):
        p, t = jobs[i][0].__defaults__
        assert math.isclose(float.fromhex(expected[i][0][1]), mse_ref(p, t, "sum"), rel_tol=1e-6)
    fastloss.set_num_threads(2)
    barrier = threading.Barrier(workers)

    def work(i):
        barrier.wait()
        out = []
        for _ in range(3):
            out.append([bits(call()) for call in jobs[i]])
        return out

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(work, range(workers)))
    for i, rounds in enumerate(results):
        for r in rounds:
            assert r == expected[i], f"python thread {i} got a different result"


# ---------------------------------------------------------------------------------------------
# InfoNCE never materialises the N x (M+1) logits

MEMORY_PROBE = r"""
import json
import numpy as np
import fastloss

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise KeyError(key)

def reset_peak():
    # Linux >= 4.0: writing 5 resets VmHWM to the current RSS
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False

rng = np.random.default_rng(0)
N, M, D = 256, 65536, 128
q = rng.standard_normal((N, D), dtype=np.float32)
p = rng.standard_normal((N, D), dtype=np.float32)
queue = rng.standard_normal((M, D), dtype=np.float32)
for a in (q, p, queue):
    a += 0  # touched: every page is resident
fastloss.info_nce(q[:8], p[:8], queue[:256])  # one small call: lazy one-time set-up

reset = reset_peak()
before, rss = status("VmHWM"), status("VmRSS")
loss = fastloss.info_nce(q, p, queue)
after = status("VmHWM")

reset_peak()
before_np, rss_np = status("VmHWM"), status("VmRSS")
logits = q @ queue.T
after_np = status("VmHWM")

# the loss itself, from the materialised logits, in float64
pos = np.einsum("nd,nd->n", q.astype(np.float64), p.astype(np.float64)) / 0.07
neg = logits.astype(np.float64) / 0.07
m = np.maximum(neg.max(axis=1), pos)
lse = m + np.log(np.exp(pos - m) + np.exp(neg - m[:, None]).sum(axis=1))
print(json.dumps({
    "reset": reset, "before": before, "rss": rss, "after": after,
    "before_np": before_np, "rss_np": rss_np, "after_np": after_np,
    "loss": loss, "expected": float(np.mean(lse - pos)),
}))
"""


@not_under_sanitizers
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_info_nce_memory_is_not_the_logits_matrix():
    proc = run_python(MEMORY_PROBE)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    mib = 1024 * 1024
    growth = r["after"] - r["before"]
    growth_np = r["after_np"] - r["before_np"]
    print(
        f"info_nce(N=256, M=65536, D=128, float32): peak memory grew {growth / mib:.2f} MiB; "
        f"numpy q @ queue.T grew it {growth_np / mib:.2f} MiB "
        f"(the logits are {256 * 65536 * 4 / mib:.0f} MiB); VmHWM reset: {r['reset']}"
    )
    # the measurement is only meaningful if the peak started at the current RSS
    assert r["before"] - r["rss"] < 2 * mib, r
    # ... and it can see a materialised logits matrix
    assert growth_np > 60e6, r
    assert growth < 8 * mib, f"info_nce raised the peak by {growth / mib:.1f} MiB"
    assert math.isclose(r["loss"], r["expected"], rel_tol=1e-4), r
