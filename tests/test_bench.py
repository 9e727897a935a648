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
from fastloss._bench import limits, report, runner, timing

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
    """The results table's mse_small rows (not the summary's)."""
    return [
        line for line in text.splitlines() if line.split()[:2] in (["mse_small", "1"], ["mse_small", "2"])
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
