"""The benchmark's own logic (``fastloss._bench``), on made-up results: ratios only between rows
that ran at their thread count, fractions of the machine limits, the summary, the chart, the
bandwidth probe, and NumPy's BLAS threads set by environment in a child process per thread count
when threadpoolctl is not installed. The end-to-end ``fastloss bench --quick`` run is in
test_cli.py."""

from __future__ import annotations

import copy
import json
import sys

import fastloss
import numpy as np
import pytest
from fastloss import _core
from fastloss._bench import limits, memory, peers, report, runner, timing
from fastloss._bench import workloads as wl

NC = report.NOT_CONTROLLED


def _row(impl, threads, median, controlled=True):
    return {
        "impl": impl,
        "threads": threads,
        "threads_controlled": controlled,
        "median_s": median,
        "times_s": [median],
        "repeats": 1,
        "number": 1,
        "warmup_s": median,
        "value": 1.0,
        "rel_err": 1e-9,
        "grad_rel_err": None,
    }


def _results(rows_by_workload, limits_=None):
    """A results dict as runner.run builds it, with speedups, fractions and the summary."""
    works = {
        "mse_large": ({"bytes": 2e9, "flops": 0.0}, "read"),
        "infonce_moco": ({"bytes": 1e6, "flops": 4e9}, "matmul"),
        "mse_small": ({"bytes": 3e4, "flops": 0.0}, None),
    }
    workloads = []
    for name, rows in rows_by_workload.items():
        work, limit = works[name]
        entry = {
            "name": name,
            "family": "mse",
            "grad": False,
            "dims": {},
            "label": "made up",
            "reference": 1.0,
            "work": work,
            "limit": limit,
            "results": copy.deepcopy(rows),
            "fastloss_rel_err": None,
        }
        runner._speedups(entry)
        workloads.append(entry)
    results = {
        "settings": {"quick": True, "repeat": 3, "threads": [1, 2], "min_time": 0.001, "max_time": 1.0},
        "machine": {"cpu_model": "Made-up CPU", "cpu_count": 2, "numpy": np.__version__, "platform": "x"},
        "fastloss": {"version": fastloss.__version__, "active_isa": "avx2"},
        "peers": {
            "fastloss": {"available": True, "threads": "fastloss.set_num_threads (OpenMP)"},
            "jax": {"available": True, "threads": "fixed by XLA at import"},
        },
        "workloads": workloads,
        "limits": limits_
        if limits_ is not None
        else {"read": {"1": 20.0, "2": 40.0}, "matmul": {"1": 100.0}},
        "limits_info": {},
        "memory": [],
        "memory_context": [],
        "notes": [],
    }
    runner._fraction_of_limits(results)
    results["summary"] = report.summary(results)
    return results


ROWS = {
    "mse_large": [
        _row("fastloss", 1, 0.2),  # 2e9 bytes / 0.2 s = 10 GB/s = 50% of 20 GB/s
        _row("numpy_ref", 1, 0.8),
        _row("torch", 1, 0.5),
        _row("jax", 1, 0.1, controlled=False),  # faster, but on every core: not comparable
        _row("fastloss", 2, 0.125),  # 16 GB/s = 40% of 40 GB/s
        _row("numpy_ref", 2, 0.75),
        _row("jax", 2, 0.25),
    ],
    "infonce_moco": [
        _row("fastloss", 1, 0.05),  # 4e9 flops / 0.05 s = 80 GFLOP/s = 80% of 100
        _row("numpy_fast", 1, 0.1),
        _row("fastloss", 2, 0.03),  # no matmul limit at 2 threads
        _row("numpy_fast", 2, 0.06, controlled=False),
    ],
}


def test_no_ratio_for_a_row_whose_threads_are_not_controlled():
    res = _results(ROWS)
    rows = {
        (r["impl"], r["threads"]): r
        for w in res["workloads"]
        for r in w["results"]
        if w["name"] == "mse_large"
    }
    assert rows[("torch", 1)]["speedup"] == pytest.approx(2.5)
    assert rows[("jax", 2)]["speedup"] == pytest.approx(2.0)
    assert rows[("jax", 1)]["speedup"] is None
    # Nor when fastloss itself did not run at the row's threads (a build without OpenMP).
    broken = copy.deepcopy(ROWS["mse_large"])
    broken[4]["threads_controlled"] = False
    res2 = _results({"mse_large": broken})
    two = [r for r in res2["workloads"][0]["results"] if r["threads"] == 2]
    assert all(r.get("speedup") is None for r in two)


def test_table_marks_uncontrolled_rows_and_prints_the_fraction_of_the_limit():
    text = report.table(_results(ROWS))
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("workload") and "of limit" in line)
    assert "fl speedup" in header
    jax1 = next(line for line in lines if line.startswith("mse_large") and " 1 " in line and "jax" in line)
    assert NC in jax1 and "x " not in jax1.split("jax", 1)[1].split(NC)[0]
    torch1 = next(line for line in lines if line.startswith("mse_large") and "torch" in line)
    assert "2.50x" in torch1 and "20% read" in torch1  # 2e9 bytes / 0.5 s of 20 GB/s
    fl1 = next(
        line for line in lines if line.startswith("mse_large") and " 1 " in line and "fastloss" in line
    )
    assert "50% read" in fl1
    fl2 = next(
        line for line in lines if line.startswith("mse_large") and " 2 " in line and "fastloss" in line
    )
    assert "40% read" in fl2
    moco1 = next(
        line for line in lines if line.startswith("infonce_moco") and " 1 " in line and "fastloss" in line
    )
    assert "80% matmul" in moco1
    assert "machine limits, measured in this run" in text


def test_summary_compares_with_the_fastest_controlled_peer():
    res = _results(ROWS)
    one = {r["workload"]: r for r in res["summary"]["1"]}
    two = {r["workload"]: r for r in res["summary"]["2"]}
    # jax was fastest at 1 thread but not on one thread: torch is the fastest comparable peer.
    assert one["mse_large"]["best_peer"] == "torch"
    assert one["mse_large"]["x_best_peer"] == pytest.approx(2.5)
    assert one["mse_large"]["x_numpy_ref"] == pytest.approx(4.0)
    assert one["mse_large"]["not_compared"] == ["jax"]
    assert one["mse_large"]["limit_fraction"] == pytest.approx(0.5)
    assert two["mse_large"]["best_peer"] == "jax"
    assert one["infonce_moco"]["limit_fraction"] == pytest.approx(0.8)
    assert two["infonce_moco"]["limit_fraction"] is None  # no limit measured at 2 threads
    assert two["infonce_moco"]["best_peer"] is None
    text = report.table(res)
    assert "summary at 1 thread:" in text and "summary at 2 threads:" in text
    assert f"not compared ({NC}): jax" in text


def test_no_fraction_for_an_uncontrolled_row_or_a_small_workload():
    res = _results({**ROWS, "mse_small": [_row("fastloss", 1, 1e-6), _row("numpy_ref", 1, 1e-5)]})
    by = {(w["name"], r["impl"], r["threads"]): r for w in res["workloads"] for r in w["results"]}
    assert by[("mse_large", "jax", 1)]["limit_fraction"] is None
    assert by[("mse_large", "jax", 2)]["limit_fraction"] == pytest.approx(2e9 / 0.25 / 1e9 / 40)
    assert by[("mse_small", "fastloss", 1)]["limit_fraction"] is None


def test_blas_threads_reports_whether_the_limit_took(monkeypatch):
    blas = timing.BlasThreads()
    if not blas.available or not blas.info():
        pytest.skip("threadpoolctl finds no BLAS in this NumPy")
    try:
        assert blas.set(1) and blas.runs_at(1) and not blas.runs_at(2)
        # A BLAS library that ignores the limit: set() must say so.
        real = blas._tpc.threadpool_info
        monkeypatch.setattr(
            blas._tpc,
            "threadpool_info",
            lambda: [{**d, "num_threads": 7} if d.get("user_api") == "blas" else d for d in real()],
        )
        assert not blas.set(1) and not blas.runs_at(1)
    finally:
        blas.restore()


def test_numpy_rows_are_not_controlled_in_process_without_threadpoolctl(monkeypatch):
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)
    blas = timing.BlasThreads()
    assert not blas.available and blas.method == "environment" and not blas.set(1)
    assert "threadpoolctl is not installed" in blas.note() and "child process" in blas.note()
    from fastloss._bench.peers import NumpyRefPeer

    assert NumpyRefPeer(blas).set_threads(1) is False


def test_blas_threads_by_environment_count_only_what_numpy_reports(monkeypatch):
    found = timing.numpy_blas_threads()
    if found is None:
        pytest.skip("NumPy's BLAS thread count cannot be read back here")
    n = found[0]
    blas = timing.BlasThreads(environment=n)  # as in a child started with blas_thread_env(n)
    assert blas.method == "environment" and blas._tpc is None
    assert blas.set(n) and blas.runs_at(n)
    assert not blas.set(n + 1)  # fixed when NumPy loaded: another count cannot be right
    wrong = timing.BlasThreads(environment=n + 1)  # the environment did not reach the BLAS
    assert not wrong.set(n + 1) and not wrong.runs_at(n + 1)
    monkeypatch.setattr(timing, "numpy_blas_threads", lambda: None)  # no way to read it back
    assert not timing.BlasThreads(environment=n).set(n)
    assert timing.blas_thread_env(3)["OPENBLAS_NUM_THREADS"] == "3"
    assert set(timing.blas_thread_env(3)) == set(timing.THREAD_ENV_VARS)


def _table_rows(text):
    """The results table's mse_small rows (workload, threads, implementation, ...), not the
    summary's (workload, fastloss's time, ...): a time of exactly "1 us" or "2 us" there also
    starts with "mse_small 1" / "mse_small 2", so the implementation column tells them apart."""
    impls = {"fastloss", "numpy_ref", "numpy_fast", "torch", "jax"}
    return [
        line
        for line in text.splitlines()
        if line.split()[:2] in (["mse_small", "1"], ["mse_small", "2"])
        and len(line.split()) > 2
        and line.split()[2] in impls
    ]


def _bench_without_threadpoolctl(monkeypatch, tmp_path, capsys):
    """``fastloss bench --quick -w mse_small --threads 1 2`` with threadpoolctl hidden; returns
    (exit code, stdout, the JSON)."""
    if timing.cpu_count() < 2:
        pytest.skip("needs 2 cores: a BLAS caps its threads at the cores it has")
    if timing.numpy_blas_threads() is None:
        pytest.skip("NumPy's BLAS thread count cannot be read back here")
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)
    for name in timing.THREAD_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "b.json"
    args = ["bench", "--quick", "-w", "mse_small", "--threads", "1", "2", "--peers", "numpy_ref"]
    args += ["numpy_fast", "--no-memory", "-q", "--repeat", "1", "--json", str(out)]
    code = fastloss.cli.main(args)
    return code, capsys.readouterr().out, json.loads(out.read_text())


def test_without_threadpoolctl_each_thread_count_runs_in_a_child_with_the_environment(
    monkeypatch, tmp_path, capsys
):
    code, text, data = _bench_without_threadpoolctl(monkeypatch, tmp_path, capsys)
    assert code == 0
    control = data["thread_control"]
    assert control["blas"] == "environment"
    assert control["processes"] == "one child process per thread count"
    assert "OPENBLAS_NUM_THREADS" in control["environment"]
    # Each child's BLAS reported the child's count.
    assert control["numpy_blas"] == {
        "1": {"controlled": True, "num_threads": [1]},
        "2": {"controlled": True, "num_threads": [2]},
    }
    (entry,) = data["workloads"]
    rows = {(r["impl"], r["threads"]): r for r in entry["results"]}
    # The merged output holds both thread counts for every implementation, once each.
    assert len(rows) == len(entry["results"]) == 6
    assert set(rows) == {(i, t) for i in ("fastloss", "numpy_ref", "numpy_fast") for t in (1, 2)}
    for impl in ("numpy_ref", "numpy_fast"):
        for t in (1, 2):
            r = rows[(impl, t)]
            assert r["threads_set_by"] == "environment" and r["threads_controlled"] is True
            assert r["speedup"] is not None and r["speedup"] > 0, r
    assert rows[("fastloss", 2)]["threads_set_by"] == "fastloss.set_num_threads"
    assert set(data["summary"]) == {"1", "2"}
    assert all(s["x_numpy_ref"] for t in ("1", "2") for s in data["summary"][t])
    assert len(_table_rows(text)) == 6 and not [line for line in _table_rows(text) if NC in line]
    assert "summary at 1 thread:" in text and "summary at 2 threads:" in text


def test_a_child_whose_blas_missed_its_count_gets_no_ratio(monkeypatch, tmp_path, capsys):
    # The same run with the children started without the variables: NumPy's BLAS then uses its
    # default (every core), which is not 1, and the 1-thread numpy rows must not be compared.
    monkeypatch.setattr(runner, "blas_thread_env", lambda n: {})
    code, text, data = _bench_without_threadpoolctl(monkeypatch, tmp_path, capsys)
    assert code == 0
    assert data["thread_control"]["numpy_blas"]["1"]["controlled"] is False
    one = [r for r in data["workloads"][0]["results"] if r["threads"] == 1 and r["impl"] != "fastloss"]
    assert one and all(r["threads_controlled"] is False and r["speedup"] is None for r in one)
    assert [line for line in _table_rows(text) if line.split()[1] == "1" and NC in line]


def test_runtime_dependencies_are_numpy_and_tqdm_only():
    """SPEC.md, Package: threadpoolctl belongs to the bench extra, not to ``pip install .``."""
    from importlib.metadata import requires

    reqs = [r.replace(" ", "") for r in requires("fastloss") or []]
    runtime = sorted(r.split(">")[0].split("=")[0].split("<")[0] for r in reqs if "extra==" not in r)
    assert runtime == ["numpy", "tqdm"]
    assert any(r.startswith("threadpoolctl") and 'extra=="bench"' in r for r in reqs), reqs


def test_chart_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "sub" / "chart.png"
    assert report.write_chart(_results(ROWS), str(path)) is None
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_chart_without_matplotlib_says_why(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    why = report.write_chart(_results(ROWS), str(tmp_path / "c.png"))
    assert why is not None and "matplotlib" in why and "pip install" in why
    assert not (tmp_path / "c.png").exists()


def test_chart_only_when_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = [
        "bench",
        "--quick",
        "-w",
        "mse_small",
        "--peers",
        "numpy_ref",
        "--no-memory",
        "-q",
        "--repeat",
        "1",
    ]
    assert fastloss.cli.main(args) == 0
    out = capsys.readouterr().out
    assert "wrote" not in out and "chart" not in out
    assert list(tmp_path.iterdir()) == []  # no bench_results/, no PNG
    assert fastloss.cli.main([*args, "--chart", "c.png"]) == 0
    out = capsys.readouterr().out
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "chart not written: matplotlib is not importable" in out
        assert list(tmp_path.iterdir()) == []
    else:
        assert "wrote c.png" in out
        assert [p.name for p in tmp_path.iterdir()] == ["c.png"]


# --- the bandwidth probe -------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 17, (1 << 14) + 5, 3 * (1 << 14)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_memory_probe_computes_its_loops(n, threads):
    rng = np.random.default_rng(n)
    x = rng.integers(-8, 8, n).astype(np.float32)  # small integers: every sum exact
    y = rng.integers(-8, 8, n).astype(np.float32)
    out = np.full(n, np.nan, np.float32)
    value, ran = _core.memory_probe("sum", x, None, None, threads)
    assert value == float(x.astype(np.float64).sum())
    assert ran == (threads if _core.openmp else 1)
    assert _core.memory_probe("copy", x, None, out, threads) == (0.0, ran)
    np.testing.assert_array_equal(out, x)
    _core.memory_probe("triad", x, y, out, threads)
    np.testing.assert_array_equal(out, x + np.float32(3) * y)


@pytest.mark.parametrize(
    "args, match",
    [
        (("load", "x", None, None, 1), "kind"),
        (("sum", "x64", None, None, 1), "x:"),
        (("sum", "x", None, None, 0), "threads"),
        (("copy", "x", None, None, 1), "out"),
        (("copy", "x", None, "short", 1), "out"),
        (("copy", "x", None, "readonly", 1), "out"),
        (("triad", "x", None, "out", 1), "y:"),
        (("triad", "x", [1.0], "out", 1), "y:"),
        (("triad", "x", "short", "out", 1), "y:"),
    ],
)
def test_memory_probe_rejects_bad_arguments(args, match):
    x = np.ones(8, np.float32)
    readonly = np.ones(8, np.float32)
    readonly.flags.writeable = False
    arrays = {
        "x": x,
        "x64": np.ones(8),
        "out": np.ones(8, np.float32),
        "short": np.ones(5, np.float32),
        "readonly": readonly,
    }
    real = [arrays.get(a, a) if isinstance(a, str) and i > 0 else a for i, a in enumerate(args)]
    with pytest.raises(ValueError, match=match):
        _core.memory_probe(*real)


def test_probe_arrays_are_twice_the_largest_cache_within_bounds():
    mib = 1 << 20
    assert limits.probe_elements(480 * mib, None) * 4 == 960 * mib
    assert limits.probe_elements(32 * mib, None) * 4 == 128 * mib  # at least 128 MiB
    assert limits.probe_elements(2048 * mib, None) * 4 == 1024 * mib  # at most 1 GiB
    assert limits.probe_elements(None, None) * 4 == pytest.approx(1024 * mib / 3, rel=1e-6)  # 1 GiB in all
    assert limits.probe_elements(480 * mib, 1200 * mib) * 4 == 100 * mib  # a quarter of what is free
    assert limits._size_bytes("491520K") == 480 * mib
    assert limits._size_bytes("480 MiB") == 480 * mib
    size, source = limits.largest_cache_bytes()
    assert (size is None and source == "unknown") or (size > 0 and source in ("sysfs", "lscpu"))


def test_a_limit_that_drops_with_more_threads_is_flagged():
    assert (
        runner._limit_notes({"limits": {"read": {"1": 20.0, "2": 38.0}, "matmul": {"1": 100.0, "2": None}}})
        == []
    )
    (note,) = runner._limit_notes({"limits": {"read": {"1": 20.0, "2": 15.0}}})
    assert "read limit at 2 threads" in note and "other processes" in note


# --- linear_cross_entropy: workloads, reference, peers, memory table ---------------------------

# Small, with a tail block of classes in numpy_fast (blocks of at least 1024 classes).
LCE_SMALL = {"N": 37, "H": 16, "V": 1500}


def _dense_lce64(data):
    """The float64 loss and (d_input, d_linear_weight) with every logit materialised."""
    x = data["input"].astype(np.float64)
    w = data["linear_weight"].astype(np.float64)
    t = data["target"]
    n = x.shape[0]
    logits = x @ w.T
    m = logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(logits - m).sum(axis=1)) + m[:, 0]
    g = np.exp(logits - lse[:, None])
    g[np.arange(n), t] -= 1.0
    g /= n
    return float(np.mean(lse - logits[np.arange(n), t])), (g @ w, g.T @ x)


def test_lce_workloads_shapes_limit_and_flops():
    fwd, grad = wl.by_name("lce"), wl.by_name("lce_grad")
    assert fwd.dims == grad.dims == {"N": 4096, "H": 1024, "V": 32768}  # issue 12's measurement
    assert fwd.quick_dims == {"N": 256, "H": 128, "V": 2048}
    assert fwd.limit == grad.limit == "matmul" and grad.grad and not fwd.grad
    assert grad.seed == fwd.seed  # the same data
    data = wl.make_data(fwd, quick=True)
    assert data["input"].shape == (256, 128) and data["input"].dtype == np.float32
    assert data["linear_weight"].shape == (2048, 128) and data["linear_weight"].dtype == np.float32
    assert data["target"].dtype == np.int64 and 0 <= data["target"].min() <= data["target"].max() < 2048
    assert all(a.flags.c_contiguous for a in data.values())
    nhv = 256 * 128 * 2048
    assert wl.work(fwd, data)["flops"] == 2.0 * nhv
    assert wl.work(grad, data)["flops"] == 6.0 * nhv  # logits, d_input, d_linear_weight
    assert wl.size_label(fwd, data) == "input 256x128 @ linear_weight 2048x128.T, int64 labels"
    assert wl.size_label(grad, data).endswith(", loss+grad")


def test_lce_reference_is_the_dense_float64_formula():
    w = wl.by_name("lce_grad")
    data = wl.make_data(w, dims=LCE_SMALL)
    loss, (dx, dw) = _dense_lce64(data)
    ref_loss, ref_grads = wl.reference(w, data)
    assert ref_loss == pytest.approx(loss, rel=1e-13)
    assert wl.reference(wl.by_name("lce"), data) == (ref_loss, None)
    # Small enough for every row: plain arrays.
    np.testing.assert_allclose(ref_grads[0], dx, rtol=1e-12, atol=1e-18)
    np.testing.assert_allclose(ref_grads[1], dw, rtol=1e-12, atol=1e-18)
    assert wl.grad_rel_err((dx.astype(np.float32), dw.astype(np.float32)), ref_grads) < 1e-6


def test_lce_reference_of_a_large_shape_checks_a_subset_of_rows(monkeypatch):
    monkeypatch.setattr(wl, "LCE_CHECK_ROWS", 8)
    monkeypatch.setattr(wl, "LCE_CHECK_CLASSES", 64)
    monkeypatch.setattr(wl, "_LCE_BLOCK_ELEMS", 1000)  # several blocks of classes, a short last one
    w = wl.by_name("lce_grad")
    data = wl.make_data(w, dims={"N": 50, "H": 8, "V": 300})
    assert "grads checked on a subset of rows" in wl.size_label(w, data)
    loss, (dx, dw) = _dense_lce64(data)
    ref_loss, (rx, rw) = wl.reference(w, data)
    assert ref_loss == pytest.approx(loss, rel=1e-13)
    assert isinstance(rx, wl.Rows) and isinstance(rw, wl.Rows)
    assert rx.shape == dx.shape and rw.shape == dw.shape
    assert rx.index.size == 8 and rx.index[0] == 0 and rx.index[-1] == 49
    assert set(data["target"][rx.index]) <= set(rw.index)  # the targets' "- 1" is checked
    assert 8 < rw.index.size <= 64 and np.all(np.diff(rw.index) > 0)
    np.testing.assert_allclose(rx.values, dx[rx.index], rtol=1e-12, atol=1e-18)
    np.testing.assert_allclose(rw.values, dw[rw.index], rtol=1e-12, atol=1e-18)
    # Measured on the checked rows only, of full-shape gradients.
    assert wl.grad_rel_err((dx, dw), (rx, rw)) < 1e-12
    wrong = dw.copy()
    wrong[rw.index[0]] += 1.0
    assert wl.grad_rel_err((dx, wrong), (rx, rw)) > 1e-3
    assert np.isnan(wl.grad_rel_err((dx, dw[:-1]), (rx, rw)))  # a wrong shape


def _available_peers(names):
    return [p for p in peers.all_peers(names) if p.available() and p.name in names]


@pytest.mark.parametrize("grad", [False, True], ids=["lce", "lce_grad"])
def test_lce_peers_agree_with_the_reference(grad):
    w = wl.by_name("lce_grad" if grad else "lce")
    data = wl.make_data(w, dims=LCE_SMALL)
    ref_loss, ref_grads = wl.reference(w, data)
    checked = []
    for peer in _available_peers(["numpy_ref", "numpy_fast", "torch", "torch_chunked"]):
        fn = peer.prepare(w, data)
        if fn is None:  # a torch without F.linear_cross_entropy
            continue
        value = fn()
        loss = value[0] if grad else value
        assert isinstance(loss, float), peer.name
        assert wl.rel_err(loss, ref_loss) < 1e-5, peer.name
        if grad:
            assert len(value[1]) == 2, peer.name
            assert wl.grad_rel_err(value[1], ref_grads) < 1e-5, peer.name
        checked.append(peer.name)
    assert {"numpy_ref", "numpy_fast"} <= set(checked)


def test_torch_chunked_peer_only_formulates_lce_and_its_threads_are_checked():
    (peer,) = _available_peers(["torch_chunked"]) or [None]
    if peer is None:
        pytest.skip("torch with LinearCrossEntropyOptions is not importable")
    data = wl.make_data(wl.by_name("mse_small"))
    assert peer.prepare(wl.by_name("mse_small"), data) is None
    assert peer.set_threads(1) and peer.torch.get_num_threads() == 1
    assert peer.threads_set_by() == "torch.set_num_threads"


def test_torch_chunked_peer_refuses_a_fallback_to_the_reference_path(monkeypatch):
    (peer,) = _available_peers(["torch_chunked"]) or [None]
    if peer is None:
        pytest.skip("torch with LinearCrossEntropyOptions is not importable")
    import warnings

    def falls_back(*args, **kw):
        warnings.warn("linear_cross_entropy: ``options`` ignored; chunked path needs ...", stacklevel=2)
        return peer.torch.zeros(())

    monkeypatch.setattr(peer.F, "linear_cross_entropy", falls_back)
    fn = peer.prepare(wl.by_name("lce"), wl.make_data(wl.by_name("lce"), dims=LCE_SMALL))
    with pytest.raises(RuntimeError, match="chunked path did not run"):
        fn()


def _fake_lce(calls):
    """A NumPy stand-in for fastloss.linear_cross_entropy (issue 12's signature)."""

    def linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, return_grad=False, **kw):
        calls.append({"shapes": (input.shape, linear_weight.shape), "return_grad": return_grad, **kw})
        loss, (dx, dw) = _dense_lce64({"input": input, "linear_weight": linear_weight, "target": target})
        if not return_grad:
            return loss
        return loss, (dx.astype(np.float32), dw.astype(np.float32), None)

    return linear_cross_entropy


def test_fastloss_peer_without_linear_cross_entropy_has_no_lce_formulation(monkeypatch):
    monkeypatch.delattr(fastloss, "linear_cross_entropy", raising=False)
    peer = peers.FastlossPeer()
    assert not peer.supports_lce()
    data = wl.make_data(wl.by_name("lce"), dims=LCE_SMALL)
    assert peer.prepare(wl.by_name("lce"), data) is None
    assert peer.prepare(wl.by_name("lce_grad"), data) is None


def test_fastloss_peer_calls_linear_cross_entropy(monkeypatch):
    calls = []
    monkeypatch.setattr(fastloss, "linear_cross_entropy", _fake_lce(calls), raising=False)
    peer = peers.FastlossPeer()
    assert peer.supports_lce()
    w = wl.by_name("lce_grad")
    data = wl.make_data(w, dims=LCE_SMALL)
    loss, grads = peer.prepare(w, data)()
    assert len(grads) == 2 and grads[0].shape == (37, 16) and grads[1].shape == (1500, 16)
    assert wl.grad_rel_err(grads, wl.reference(w, data)[1]) < 1e-6
    assert isinstance(peer.prepare(wl.by_name("lce"), data)(), float)
    assert [c["return_grad"] for c in calls] == [True, False]
    assert calls[0]["shapes"] == ((37, 16), (1500, 16))


def _bench_lce(tmp_path, *extra):
    out = tmp_path / "lce.json"
    args = ["bench", "--quick", "-w", "lce*", "--threads", "1", "--peers", "numpy_ref"]
    args += ["--no-memory", "--no-sgemm", "-q", "--repeat", "1", "--json", str(out), *extra]
    code = fastloss.cli.main(args)
    return code, json.loads(out.read_text())


def test_bench_runs_lce_for_the_peers_when_fastloss_has_no_linear_cross_entropy(
    monkeypatch, tmp_path, capsys
):
    monkeypatch.delattr(fastloss, "linear_cross_entropy", raising=False)
    code, data = _bench_lce(tmp_path)
    text = capsys.readouterr().out
    assert code == 0
    assert [w["name"] for w in data["workloads"]] == ["lce", "lce_grad"]
    for entry in data["workloads"]:
        assert {r["impl"] for r in entry["results"]} == {"numpy_ref"}
        assert all(r["rel_err"] < 1e-5 and "error" not in r for r in entry["results"])
    assert any("no linear_cross_entropy yet: lce, lce_grad" in n for n in data["notes"])
    assert "no linear_cross_entropy yet" in text


def test_bench_compares_lce_with_fastloss_when_it_has_linear_cross_entropy(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(fastloss, "linear_cross_entropy", _fake_lce([]), raising=False)
    code, data = _bench_lce(tmp_path)
    capsys.readouterr()
    assert code == 0
    assert not any("linear_cross_entropy" in n for n in data["notes"])
    grad = data["workloads"][1]
    rows = {r["impl"]: r for r in grad["results"]}
    assert set(rows) == {"fastloss", "numpy_ref"}
    assert rows["fastloss"]["grad_rel_err"] < 1e-6 and rows["numpy_ref"]["speedup"] > 0
    assert grad["work"]["flops"] == 6.0 * 256 * 128 * 2048


# The memory table, on made-up measurements.


def _fake_measure(calls):
    def measure(workload, impl, quick, threads, dims):
        calls.append((workload, impl, dims["V"]))
        logits = 4 * dims["N"] * dims["V"]
        extra = {"fastloss": 0.005, "torch": 2.0, "torch_chunked": 0.2}[impl] * logits
        out = 4 * (dims["N"] + dims["V"]) * dims["H"] if workload == "lce_grad" else 0
        return {
            "workload": workload,
            "impl": impl,
            "extra_bytes": int(extra) + out,
            "output_bytes": out,
            "extra_beyond_outputs_bytes": int(extra),
            "method": "VmHWM after clear_refs",
        }

    return measure


def test_lce_memory_table_measures_each_case_and_skips_what_does_not_fit():
    calls = []
    logs = []
    v_small, v_large = 2048, 8192
    big_need = memory.lce_need_bytes("torch", True, {"N": 256, "H": 128, "V": v_large})
    assert big_need > memory.lce_need_bytes("fastloss", True, {"N": 256, "H": 128, "V": v_large})
    assert big_need > memory.lce_need_bytes("torch", True, {"N": 256, "H": 128, "V": v_small})
    mem = memory.lce_memory(
        ["fastloss", "torch", "torch_chunked"],
        [v_small, v_large],
        quick=True,
        threads=2,
        available=big_need - 1,  # torch's forward + backward at the large V does not fit
        log=logs.append,
        measure=_fake_measure(calls),
        skip={"torch_chunked": "made-up reason"},
    )
    assert mem["dims"] == {"N": 256, "H": 128} and mem["threads"] == 2
    assert [(r["impl"], r["V"]) for r in mem["rows"]] == [
        (i, v) for v in (v_small, v_large) for i in ("fastloss", "torch", "torch_chunked")
    ]
    # One fresh process per (implementation, V, forward or forward + backward), none for a skip.
    assert ("lce_grad", "torch", v_large) not in calls and ("lce", "torch", v_large) in calls
    assert not [c for c in calls if c[1] == "torch_chunked"]
    assert len(calls) == 7
    big = next(r for r in mem["rows"] if r["impl"] == "torch" and r["V"] == v_large)
    assert "MemAvailable" in big["forward_backward"]["skipped"]
    assert big["logits_bytes"] == 4 * 256 * v_large
    assert any("skipped" in line for line in logs)

    text = "\n".join(report.lce_memory_lines({"lce_memory": mem}))
    assert "N=256 H=128 float32, 2 threads" in text and "[VmHWM after clear_refs]" in text
    lines = text.splitlines()
    assert lines[1].split() == ["impl", "V", "logits", "forward", "of", "logits", "fwd+bwd", "of", "logits"]
    fl = next(line for line in lines if line.split()[:2] == ["fastloss", str(v_small)])
    # 0.5% of the 2 MiB logits, beyond the outputs, forward and forward + backward.
    assert fl.split() == ["fastloss", "2048", "2.00", "MiB", "0.01", "MiB", "0.50%", "0.01", "MiB", "0.50%"]
    torch_large = next(line for line in lines if line.split()[:2] == ["torch", str(v_large)])
    assert torch_large.split()[4:] == ["16.0", "MiB", "200%", "skipped", "-"]
    assert report.fmt_mib(94.04 * 2**20) == "94.0 MiB" and report.fmt_mib(1059.4 * 2**20) == "1059 MiB"
    assert f"torch V={v_large} fwd+bwd: skipped: needs up to" in text
    assert f"torch_chunked V={v_small} forward: skipped: made-up reason" in text
    assert not [line for line in lines if line != line.rstrip()]


def test_lce_memory_table_goes_into_the_json_and_the_report(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(memory, "peak_extra_memory", _fake_measure(calls))
    monkeypatch.setattr(fastloss, "linear_cross_entropy", _fake_lce([]), raising=False)
    out = tmp_path / "m.json"
    args = ["bench", "--quick", "-w", "mse_small", "--threads", "1", "--peers", "torch", "torch_chunked"]
    args += ["-q", "--repeat", "1", "--lce-memory", "512", "--json", str(out)]
    if not _available_peers(["torch_chunked"]):
        pytest.skip("torch with LinearCrossEntropyOptions is not importable")
    assert fastloss.cli.main(args) == 0
    text = capsys.readouterr().out
    data = json.loads(out.read_text())
    mem = data["lce_memory"]
    assert [(r["impl"], r["V"]) for r in mem["rows"]] == [(i, 512) for i in memory.LCE_MEMORY_IMPLS]
    assert mem["rows"][0]["forward_backward"]["extra_beyond_outputs_bytes"] == int(0.005 * 4 * 256 * 512)
    assert len(calls) == 6
    assert "linear_cross_entropy: extra peak memory beyond the inputs and the outputs" in text
    # Asked for with --no-memory: not measured, and said so.
    calls.clear()
    assert fastloss.cli.main([*args, "--no-memory"]) == 0
    capsys.readouterr()
    data = json.loads(out.read_text())
    assert "lce_memory" not in data and not calls
    assert "--lce-memory not measured: --no-memory was given too" in data["notes"]


def test_lce_memory_defaults_and_dims_parsing():
    ap = runner.add_arguments(__import__("argparse").ArgumentParser())
    assert ap.parse_args([]).lce_memory is None
    assert ap.parse_args(["--lce-memory"]).lce_memory == []
    assert ap.parse_args(["--lce-memory", "32768", "131072"]).lce_memory == [32768, 131072]
    assert memory.LCE_MEMORY_V == (32768, 131072)
    assert memory.parse_dims(["V=131072", " N = 64 "]) == {"V": 131072, "N": 64}
    for bad in ("V", "V=", "=3", "V=0", "V=-1", "V=2.5"):
        with pytest.raises(ValueError, match="NAME=POSITIVE_INTEGER"):
            memory.parse_dims([bad])
    grads = (np.zeros((3, 4), np.float32), np.zeros(5), None)
    assert memory.output_bytes((1.0, grads)) == 48 + 40
    assert memory.output_bytes(1.0) == 0


@pytest.mark.skipif(not memory.supported(), reason="Linux only")
def test_lce_memory_child_counts_the_gradients_as_outputs():
    dims = {"N": 64, "H": 16, "V": 512}
    res = memory.peak_extra_memory("lce_grad", "numpy_ref", quick=True, dims=dims)
    assert "error" not in res, res
    assert res["dims"] == dims
    assert res["output_bytes"] == 4 * (64 * 16 + 512 * 16)
    assert res["extra_beyond_outputs_bytes"] == max(0, res["extra_bytes"] - res["output_bytes"])
    bad = memory.peak_extra_memory("lce", "numpy_ref", quick=True, dims={"X": 3})
    assert "has no size X" in bad["error"]
