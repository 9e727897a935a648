"""The ``fastloss`` command line: ``bench``, ``score`` and ``--version``.

``score`` is checked against the in-memory functions on small files, with tiny chunks so the
streaming path (several chunks, a short last one) is the one exercised. One ``bench --quick``
subprocess serves the bench tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import fastloss
import numpy as np
import pytest
from conftest import not_under_sanitizers
from fastloss._bench.timing import default_threads
from fastloss.cli import main

FORWARD_WORKLOADS = [
    "mse_small",
    "mse_large",
    "mae_large",
    "ce_small",
    "ce_large",
    "infonce_moco",
    "infonce_inbatch",
]


def run_cli(*args, cwd=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "fastloss", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def score(capsys, *args):
    """Run ``fastloss score`` in-process; return (exit code, stdout, stderr)."""
    code = main(["score", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


# --- --version -------------------------------------------------------------------------------


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"fastloss {fastloss.__version__}"


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "bench" in capsys.readouterr().err


# --- bench -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    proc = run_cli("bench", "--quick", "--json", tmp / "bench.json", cwd=tmp)
    return proc, tmp


def test_bench_quick_exits_0(quick_bench):
    proc, tmp = quick_bench
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for name in FORWARD_WORKLOADS:
        assert name in proc.stdout
    assert "numpy_ref" in proc.stdout and "numpy_fast" in proc.stdout
    assert "peak extra memory, infonce_moco fastloss" in proc.stdout
    # The fraction of the machine limit per row, the limits, and a summary per thread count.
    assert any(line.startswith("workload") and "of limit" in line for line in proc.stdout.splitlines())
    assert "machine limits, measured in this run" in proc.stdout
    for t in default_threads():
        assert f"summary at {t} thread" in proc.stdout
    # Every peer's threads are set on a plain install: NumPy's BLAS with threadpoolctl when it is
    # installed (the bench extra), else by environment in a child process per thread count.
    rows = [line for line in proc.stdout.splitlines() if line.split(" ", 1)[0] in FORWARD_WORKLOADS]
    assert rows and not [line for line in rows if "threads not controlled" in line]
    # No chart unless asked: the run's folder holds only the --json file.
    assert "chart" not in proc.stdout
    assert sorted(p.name for p in tmp.iterdir()) == ["bench.json"]


def test_bench_json(quick_bench):
    proc, tmp = quick_bench
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp / "bench.json").read_text())
    assert data["settings"]["quick"] is True
    assert data["fastloss"]["version"] == fastloss.__version__
    assert data["machine"]["cpu_count"] >= 1 and data["machine"]["numpy"] == np.__version__
    by_name = {w["name"]: w for w in data["workloads"]}
    assert set(FORWARD_WORKLOADS) <= set(by_name)
    # How NumPy's BLAS threads were set, and that they took at every thread count.
    control = data["thread_control"]
    assert control["blas"] in ("threadpoolctl", "environment"), control
    assert set(control["numpy_blas"]) == {str(t) for t in data["settings"]["threads"]}
    assert all(v["controlled"] for v in control["numpy_blas"].values()), control
    for name in FORWARD_WORKLOADS:
        rows = by_name[name]["results"]
        impls = {r["impl"] for r in rows}
        assert {"fastloss", "numpy_ref", "numpy_fast"} <= impls
        for r in rows:
            assert "error" not in r, r
            assert r["median_s"] > 0 and r["repeats"] >= 1 and r["speedup"] > 0
            # Every implementation computes the same loss as the float64 reference.
            assert r["rel_err"] < 1e-4, (name, r["impl"], r["rel_err"])
            assert r["threads_controlled"] is True, (name, r["impl"], r["threads"])
            if r["impl"].startswith("numpy_"):
                assert r["threads_set_by"] == control["blas"]
        threads = {r["threads"] for r in rows if r["impl"] == "fastloss"}
        assert 1 in threads
    # The machine limits at each thread count, and each large workload's fraction of its limit.
    for limit in ("read", "copy", "triad", "matmul"):
        for t in data["settings"]["threads"]:
            assert data["limits"][limit][str(t)] > 0, (limit, t)
    assert data["limits_info"]["bandwidth"]["array_bytes"] >= 128 << 20
    for name, limit in [("mse_large", "read"), ("ce_large", "read"), ("infonce_moco", "matmul")]:
        assert by_name[name]["limit"] == limit
        fl_rows = [r for r in by_name[name]["results"] if r["impl"] == "fastloss"]
        assert all(r["limit"] == limit and r["limit_fraction"] > 0 for r in fl_rows), fl_rows
    assert all(r["limit_fraction"] is None for r in by_name["mse_small"]["results"])
    for t in data["settings"]["threads"]:
        summary = {r["workload"]: r for r in data["summary"][str(t)]}
        assert set(FORWARD_WORKLOADS) <= set(summary)
        assert summary["ce_large"]["best_peer"] in {"numpy_ref", "numpy_fast", "torch", "jax"}
        assert summary["ce_large"]["x_best_peer"] > 0 and summary["ce_large"]["x_numpy_ref"] > 0
    mem = [m for m in data["memory"] if m["impl"] == "fastloss"]
    assert mem and mem[0]["workload"] == "infonce_moco"


def test_bench_unknown_workload(capsys):
    assert main(["bench", "--workloads", "nope", "--no-chart", "-q"]) == 2
    assert "no workload matches 'nope'" in capsys.readouterr().err


# --- score: results equal the in-memory functions ------------------------------------------------


@pytest.fixture
def regression_files(tmp_path):
    rng = np.random.default_rng(7)
    pred = rng.standard_normal((37, 5, 3))
    target = rng.standard_normal((37, 5, 3))
    np.save(tmp_path / "pred.npy", pred)
    np.save(tmp_path / "target.npy", target)
    return tmp_path, pred, target


@pytest.mark.parametrize("loss", ["mse", "mae"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "batchmean"])
def test_score_regression(capsys, regression_files, loss, reduction):
    tmp, pred, target = regression_files
    code, out, err = score(
        capsys, loss, tmp / "pred.npy", tmp / "target.npy", "--reduction", reduction, "--chunk-rows", 8
    )
    assert code == 0, err
    expected = getattr(fastloss, loss)(pred, target, reduction=reduction)
    assert float(out) == pytest.approx(expected, rel=1e-12)


def test_score_default_chunking_float32(capsys, tmp_path):
    rng = np.random.default_rng(3)
    pred = rng.standard_normal((1000, 17), dtype=np.float32)
    target = rng.standard_normal((1000, 17), dtype=np.float32)
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "t.npy", target)
    code, out, err = score(capsys, "mse", tmp_path / "p.npy", tmp_path / "t.npy")
    assert code == 0, err
    assert float(out) == pytest.approx(fastloss.mse(pred, target), rel=1e-6)
    code, out, err = score(
        capsys, "mae", tmp_path / "p.npy", tmp_path / "t.npy", "--chunk-mb", 0.01
    )  # ~80 rows a chunk
    assert code == 0, err
    assert float(out) == pytest.approx(fastloss.mae(pred, target), rel=1e-6)


def test_score_sample_weight(capsys, regression_files):
    tmp, pred, target = regression_files
    w = np.random.default_rng(1).uniform(0, 2, size=pred.shape[0])
    np.save(tmp / "w.npy", w)
    for reduction in ("mean", "batchmean", "sum"):
        code, out, err = score(
            capsys,
            "mse",
            tmp / "pred.npy",
            tmp / "target.npy",
            "--sample-weight",
            tmp / "w.npy",
            "--reduction",
            reduction,
            "--chunk-rows",
            5,
        )
        assert code == 0, err
        expected = fastloss.mse(pred, target, sample_weight=w, reduction=reduction)
        assert float(out) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("loss", ["mse", "mae"])
def test_score_none_out(capsys, regression_files, loss):
    tmp, pred, target = regression_files
    out_path = tmp / "out.npy"
    code, out, err = score(
        capsys,
        loss,
        tmp / "pred.npy",
        tmp / "target.npy",
        "--reduction",
        "none",
        "--out",
        out_path,
        "--chunk-rows",
        6,
    )
    assert code == 0, err
    got = np.load(out_path)
    expected = getattr(fastloss, loss)(pred, target, reduction="none")
    assert got.shape == expected.shape and got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=1e-15, atol=0)


def test_score_none_printed(capsys, regression_files):
    tmp, pred, target = regression_files
    code, out, err = score(capsys, "mse", tmp / "pred.npy", tmp / "target.npy", "--reduction", "none")
    assert code == 0, err
    assert out.startswith("[")


@pytest.fixture
def ce_files(tmp_path):
    rng = np.random.default_rng(11)
    n, c = 41, 6
    logits = (rng.standard_normal((n, c)) * 4).astype(np.float32)
    labels = rng.integers(0, c, size=n)
    labels[[3, 17, 18]] = -100
    weight = rng.uniform(0.2, 2.0, size=c)
    np.save(tmp_path / "logits.npy", logits)
    np.save(tmp_path / "labels.npy", labels)
    np.save(tmp_path / "weight.npy", weight)
    return tmp_path, logits, labels, weight


@pytest.mark.parametrize("reduction", ["mean", "sum", "batchmean"])
@pytest.mark.parametrize("options", [(), ("weight",), ("weight", "smoothing")])
def test_score_cross_entropy(capsys, ce_files, reduction, options):
    tmp, logits, labels, weight = ce_files
    args = [
        "cross_entropy",
        tmp / "logits.npy",
        tmp / "labels.npy",
        "--reduction",
        reduction,
        "--chunk-rows",
        9,
    ]
    kw = {}
    if "weight" in options:
        args += ["--weight", tmp / "weight.npy"]
        kw["weight"] = weight
    if "smoothing" in options:
        args += ["--label-smoothing", 0.2]
        kw["label_smoothing"] = 0.2
    code, out, err = score(capsys, *args)
    assert code == 0, err
    expected = fastloss.cross_entropy(logits, labels, reduction=reduction, **kw)
    assert float(out) == pytest.approx(expected, rel=1e-6)


def test_score_cross_entropy_ignore_index_and_none(capsys, ce_files):
    tmp, logits, labels, _ = ce_files
    labels = np.where(labels == -100, 2, labels)
    labels[5] = 4
    np.save(tmp / "labels4.npy", labels)
    code, out, err = score(
        capsys,
        "cross_entropy",
        tmp / "logits.npy",
        tmp / "labels4.npy",
        "--ignore-index",
        4,
        "--chunk-rows",
        10,
    )
    assert code == 0, err
    assert float(out) == pytest.approx(fastloss.cross_entropy(logits, labels, ignore_index=4), rel=1e-6)
    code, out, err = score(
        capsys,
        "cross_entropy",
        tmp / "logits.npy",
        tmp / "labels4.npy",
        "--ignore-index",
        4,
        "--reduction",
        "none",
        "--out",
        tmp / "ce.npy",
        "--chunk-rows",
        10,
    )
    assert code == 0, err
    expected = fastloss.cross_entropy(logits, labels, ignore_index=4, reduction="none")
    got = np.load(tmp / "ce.npy")
    assert got.shape == (logits.shape[0],) and got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)


def test_score_cross_entropy_probabilities(capsys, ce_files):
    tmp, logits, _, _ = ce_files
    probs = np.random.default_rng(2).dirichlet(np.ones(logits.shape[1]), size=logits.shape[0])
    np.save(tmp / "probs.npy", probs.astype(np.float32))
    code, out, err = score(capsys, "cross_entropy", tmp / "logits.npy", tmp / "probs.npy", "--chunk-rows", 8)
    assert code == 0, err
    expected = fastloss.cross_entropy(logits, probs.astype(np.float32))
    assert float(out) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("saver", [np.savez, np.savez_compressed])
def test_score_npz(capsys, tmp_path, saver):
    rng = np.random.default_rng(5)
    pred = rng.standard_normal((50, 4))
    target = rng.standard_normal((50, 4))
    saver(tmp_path / "a.npz", pred, other=target)  # members: other.npy, arr_0.npy
    saver(tmp_path / "b.npz", target=target)
    saver(tmp_path / "c.npz", pred)
    assert list(np.load(tmp_path / "a.npz").files) == ["other", "arr_0"]
    code, out, err = score(
        capsys, "mse", tmp_path / "c.npz", f"{tmp_path / 'a.npz'}:other", "--chunk-rows", 7
    )
    assert code == 0, err
    assert float(out) == pytest.approx(fastloss.mse(pred, target), rel=1e-12)
    code, out, err = score(
        capsys, "mae", f"{tmp_path / 'a.npz'}:arr_0", tmp_path / "b.npz", "--chunk-rows", 16
    )
    assert code == 0, err
    assert float(out) == pytest.approx(fastloss.mae(pred, target), rel=1e-12)
    # No key: a single-array archive's array.
    code, out, err = score(capsys, "mse", tmp_path / "c.npz", tmp_path / "b.npz", "--chunk-rows", 9)
    assert code == 0, err
    assert float(out) == pytest.approx(fastloss.mse(pred, target), rel=1e-12)
    # No key and several arrays: an error listing them (it used to score the first array
    # against itself: 0.0).
    code, out, err = score(capsys, "mse", tmp_path / "a.npz", tmp_path / "a.npz")
    assert code == 1 and out == ""
    assert err == (
        f"fastloss score: error: PRED: {tmp_path / 'a.npz'} holds 2 arrays (other, arr_0): "
        f"name one as {tmp_path / 'a.npz'}:KEY\n"
    )


def test_score_reduction_out_file(capsys, regression_files):
    tmp, pred, target = regression_files
    code, out, err = score(capsys, "mse", tmp / "pred.npy", tmp / "target.npy", "--out", tmp / "value.txt")
    assert code == 0, err
    assert float((tmp / "value.txt").read_text()) == pytest.approx(fastloss.mse(pred, target), rel=1e-12)


def test_score_progress_bar(capsys, regression_files):
    tmp, _, _ = regression_files
    code, out, err = score(
        capsys, "mse", tmp / "pred.npy", tmp / "target.npy", "--progress", "--chunk-rows", 4
    )
    assert code == 0
    # tqdm's bar: percentage, bytes read of the total, rate and ETA.
    assert "fastloss score mse" in err and "100%" in err and "B/s" in err, err


# --- score: errors are one clear line, never a traceback ---------------------------------------


def test_score_bad_loss_name_subprocess(tmp_path):
    proc = run_cli("score", "hinge", tmp_path / "p.npy", tmp_path / "t.npy")
    assert proc.returncode != 0
    assert "invalid choice: 'hinge'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_score_missing_file_subprocess(tmp_path):
    np.save(tmp_path / "t.npy", np.zeros(3))
    proc = run_cli("score", "mse", tmp_path / "missing.npy", tmp_path / "t.npy")
    assert proc.returncode == 1
    assert "PRED: no such file" in proc.stderr and "missing.npy" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "case",
    [
        "shape",
        "label",
        "not_npy",
        "npz_key",
        "none_out_txt",
        "weight_for_mse",
        "object",
        "directory",
        "npz_no_arrays",
        "sample_weight_for_ce",
        "probability_shape",
        "target_dtype",
        "sample_weight_shape",
        "fastloss_error",
        "out_unwritable",
        "zero_dim",
    ],
)
def test_score_errors(capsys, tmp_path, case):
    np.save(tmp_path / "a.npy", np.zeros((4, 3)))
    np.save(tmp_path / "b.npy", np.zeros((4, 2)))
    np.save(tmp_path / "labels.npy", np.array([0, 1, 2, 9]))
    np.savez(tmp_path / "z.npz", x=np.zeros((4, 3)))
    (tmp_path / "text.npy").write_text("not an array\n")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    import zipfile

    with zipfile.ZipFile(tmp_path / "empty.npz", "w") as zf:
        zf.writestr("notes.txt", "no arrays here")
    np.save(tmp_path / "probs.npy", np.full((4, 2), 0.5))
    np.save(tmp_path / "strings.npy", np.array(["a", "b", "c", "d"]))
    np.save(tmp_path / "negative_w.npy", np.array([1.0, -1.0, 1.0, 1.0]))
    np.save(tmp_path / "scalar.npy", np.float64(1.0))
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    args, message = {
        "directory": (("mse", tmp_path, a), "is a directory"),
        "npz_no_arrays": (("mse", tmp_path / "empty.npz", a), "holds no arrays"),
        "sample_weight_for_ce": (
            ("cross_entropy", a, tmp_path / "labels.npy", "--sample-weight", a),
            "--sample-weight applies to mse and mae",
        ),
        "probability_shape": (
            ("cross_entropy", a, tmp_path / "probs.npy"),
            "must have the shape of the logits",
        ),
        "target_dtype": (("cross_entropy", a, tmp_path / "strings.npy"), "integer class indices or floating"),
        "sample_weight_shape": (("mse", a, a, "--sample-weight", b), "--sample-weight must have shape (4,)"),
        "fastloss_error": (("mse", a, a, "--sample-weight", tmp_path / "negative_w.npy"), "sample_weight"),
        "out_unwritable": (("mse", a, a, "--out", tmp_path / "no" / "such" / "dir.txt"), "cannot write"),
        "zero_dim": (("mse", tmp_path / "scalar.npy", tmp_path / "scalar.npy"), "at least 1 dimension"),
        "shape": (("mse", a, b), "same shape"),
        "label": (
            ("cross_entropy", a, tmp_path / "labels.npy", "--chunk-rows", 2),
            "TARGET value 9 at row 3",
        ),
        "not_npy": (("mse", tmp_path / "text.npy", a), "not a valid .npy file"),
        "npz_key": (("mse", f"{tmp_path / 'z.npz'}:y", a), "no array named 'y'"),
        "none_out_txt": (("mse", a, a, "--reduction", "none", "--out", tmp_path / "o.txt"), "ending in .npy"),
        "weight_for_mse": (("mse", a, a, "--weight", a), "cross_entropy only"),
        "object": (("mse", tmp_path / "obj.npy", a), "obj.npy"),
    }[case]
    code, out, err = score(capsys, *args)
    assert code == 1
    assert err.startswith("fastloss score: error: ") and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_score_too_many_values_to_print(capsys, tmp_path, monkeypatch):
    import fastloss.cli

    monkeypatch.setattr(fastloss.cli, "_MAX_PRINTED", 11)
    np.save(tmp_path / "a.npy", np.zeros((4, 3)))
    code, out, err = score(capsys, "mse", tmp_path / "a.npy", tmp_path / "a.npy", "--reduction", "none")
    assert code == 1 and out == ""
    assert err == "fastloss score: error: reduction 'none' gives 12 values: write them with --out FILE.npy\n"


def test_score_out_of_memory(capsys, tmp_path, monkeypatch):
    def no_memory(*args, **kwargs):
        raise MemoryError

    # the reductions go through the streaming Accumulator, "none" through the function itself
    monkeypatch.setattr(fastloss.Accumulator, "update", no_memory)
    monkeypatch.setattr(fastloss, "mse", no_memory)
    np.save(tmp_path / "a.npy", np.zeros((4, 3)))
    for reduction in ("mean", "none"):
        code, out, err = score(
            capsys, "mse", tmp_path / "a.npy", tmp_path / "a.npy", "--reduction", reduction
        )
        assert code == 1 and out == ""
        assert err == "fastloss score: error: out of memory; try a smaller --chunk-mb\n"


@pytest.mark.parametrize(
    "args",
    [
        ("--threads", "1e3"),
        ("--chunk-mb", "0"),
        ("--chunk-mb", "nan"),
        ("--chunk-rows", "0"),
        ("--ignore-index", "1.5"),
        ("--nope",),
    ],
)
def test_score_usage_errors_exit_2(capsys, tmp_path, args):
    np.save(tmp_path / "a.npy", np.zeros((4, 3)))
    code, out, err = score(capsys, "mse", tmp_path / "a.npy", tmp_path / "a.npy", *args)
    assert code == 2 and out == ""
    last = err.splitlines()[-1]  # after argparse's usage line
    assert last.startswith(("fastloss score: error: ", "fastloss: error: ")) and args[0] in last, err


def test_score_fastloss_argument_error(capsys, tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((4, 3)))
    np.save(tmp_path / "labels.npy", np.array([0, 1, 2, 1]))
    code, out, err = score(
        capsys, "cross_entropy", tmp_path / "a.npy", tmp_path / "labels.npy", "--label-smoothing", 1.5
    )
    assert code == 1
    assert "--label-smoothing" in err and "Traceback" not in err


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux only")
def test_memory_module_runs():
    from fastloss._bench import memory

    res = memory.peak_extra_memory("mse_small", "fastloss", quick=True)
    assert "error" not in res, res
    assert res["extra_bytes"] is not None and res["extra_bytes"] >= 0


# --- score: scalar options get fastloss's checks, named as options ------------------------------


@pytest.mark.parametrize(
    "loss, option, value",
    [
        ("mse", "--threads", 100_000),
        ("mse", "--threads", 2**31),
        ("mse", "--threads", 0),
        ("mse", "--threads", 10**30),
        ("cross_entropy", "--ignore-index", 2**63),
        ("cross_entropy", "--ignore-index", -(2**63) - 1),
        ("cross_entropy", "--ignore-index", 10**400),
        ("cross_entropy", "--label-smoothing", "1e400"),
        ("cross_entropy", "--label-smoothing", "nan"),
        ("cross_entropy", "--label-smoothing", "inf"),
        ("cross_entropy", "--label-smoothing", "1.5"),
    ],
    ids=lambda v: str(v)[:12],
)
def test_score_absurd_scalar_options(capsys, tmp_path, loss, option, value):
    np.save(tmp_path / "a.npy", np.zeros((4, 3)))
    np.save(tmp_path / "labels.npy", np.array([0, 1, 2, 1]))
    target = tmp_path / ("labels.npy" if loss == "cross_entropy" else "a.npy")
    threads = fastloss.get_num_threads()
    code, out, err = score(capsys, loss, tmp_path / "a.npy", target, option, value)
    assert code == 1 and out == ""
    assert err.startswith(f"fastloss score: error: {option} must be "), err
    assert len(err.strip().splitlines()) == 1 and len(err) < 200, err
    assert fastloss.get_num_threads() == threads


def test_score_threads_bound_subprocess(tmp_path):
    # libgomp used to print "Thread creation failed" and the process died (SIGSEGV).
    np.save(tmp_path / "a.npy", np.zeros((4, 3)))
    proc = run_cli("score", "mse", tmp_path / "a.npy", tmp_path / "a.npy", "--threads", 100_000)
    assert proc.returncode == 1, proc.stderr
    bound = max(1024, fastloss._core.default_num_threads())
    assert proc.stderr == (
        f"fastloss score: error: --threads must be in [1, {bound}] (at most max(1024, "
        "the machine's cores) threads); got 100000\n"
    )


def test_score_ignore_index_2_63_subprocess(tmp_path):
    # 61 lines of pybind11's signature before.
    np.save(tmp_path / "a.npy", np.zeros((4, 3)))
    np.save(tmp_path / "labels.npy", np.array([0, 1, 2, 1]))
    proc = run_cli(
        "score", "cross_entropy", tmp_path / "a.npy", tmp_path / "labels.npy", "--ignore-index", 2**63
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "--ignore-index" in proc.stderr, proc.stderr


# --- score: damaged files are one line ----------------------------------------------------------


def _damaged(tmp_path, saver, damage):
    """A (300, 4) float64 archive written by `saver`, damaged as named; returns its path."""
    path = tmp_path / "x.npz"
    saver(path, x=np.random.default_rng(0).standard_normal((300, 4)))
    data = bytearray(path.read_bytes())
    if damage.startswith("cut"):
        data = data[: int(len(data) * float(damage[3:]))]
    elif damage == "last-byte":
        data = data[:-1]
    elif damage == "flip-data":  # inside the member's data (compressed: its deflate stream)
        data[len(data) // 2] ^= 0xFF
    elif damage == "zero-header":  # the member's .npy header dict
        data[100:160] = bytes(60)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("saver", [np.savez, np.savez_compressed])
@pytest.mark.parametrize(
    "damage", ["cut0.02", "cut0.1", "cut0.5", "cut0.97", "last-byte", "flip-data", "zero-header"]
)
def test_score_damaged_npz(capsys, tmp_path, saver, damage):
    path = _damaged(tmp_path, saver, damage)
    code, out, err = score(capsys, "mse", path, path, "--chunk-rows", 7)
    if saver is np.savez and damage == "flip-data":
        # A stored member is memory-mapped, its CRC unchecked (as np.load's mmap_mode does): the
        # flipped byte is just a different number.
        assert code == 0, err
        return
    assert code == 1 and out == "", (code, out)
    assert err.startswith("fastloss score: error: ") and "x.npz" in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_score_truncated_npz_subprocess(tmp_path):
    path = _damaged(tmp_path, np.savez_compressed, "cut0.5")
    proc = run_cli("score", "mse", path, path)
    assert proc.returncode == 1
    assert proc.stderr.startswith("fastloss score: error: PRED: ") and "not a valid .npz file" in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr


@pytest.mark.parametrize(
    "damage, message",
    [
        ("magic", "not a valid .npy file"),
        ("truncated", "truncated"),
        ("empty", "not a valid .npy file"),
        ("header", "not a valid .npy file"),
    ],
)
def test_score_damaged_npy(capsys, tmp_path, damage, message):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((100, 4)))
    data = bytearray(path.read_bytes())
    if damage == "magic":
        data[0] ^= 0x01  # np.load then takes it for a pickle
    elif damage == "truncated":
        data = data[:-8]
    elif damage == "empty":
        data = bytearray()
    elif damage == "header":
        data[20:40] = b"(" * 20
    path.write_bytes(bytes(data))
    code, out, err = score(capsys, "mse", path, path)
    assert code == 1 and out == ""
    assert err.startswith(f"fastloss score: error: PRED ({path})") and message in err, err
    assert "pickle" not in err and len(err.strip().splitlines()) == 1, err


# --- score: --out appears only when complete ----------------------------------------------------


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("existing", [False, True])
def test_score_failed_none_out_leaves_no_file(capsys, tmp_path, existing):
    logits = np.zeros((10, 3))
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 7])  # the last chunk fails
    np.save(tmp_path / "logits.npy", logits)
    np.save(tmp_path / "labels.npy", labels)
    out_path = tmp_path / "out.npy"
    if existing:
        np.save(out_path, np.arange(3.0))
    code, out, err = score(
        capsys,
        "cross_entropy",
        tmp_path / "logits.npy",
        tmp_path / "labels.npy",
        "--reduction",
        "none",
        "--out",
        out_path,
        "--chunk-rows",
        3,
    )
    assert code == 1 and "TARGET value 7 at row 9" in err
    if existing:
        np.testing.assert_array_equal(np.load(out_path), np.arange(3.0))
    else:
        assert not out_path.exists()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("reduction, name", [("none", "out.npy"), ("mean", "out.npy"), ("sum", "out.txt")])
def test_score_interrupted_out_leaves_no_file(capsys, tmp_path, monkeypatch, reduction, name):
    np.save(tmp_path / "a.npy", np.ones((10, 3)))
    calls = []
    # "none" chunks go through fastloss.mse, the reductions through Accumulator.update
    real_mse, real_update = fastloss.mse, fastloss.Accumulator.update

    def interrupted(real):
        def call(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(fastloss, "mse", interrupted(real_mse))
    monkeypatch.setattr(fastloss.Accumulator, "update", interrupted(real_update))
    code = main(
        [
            "score",
            "mse",
            str(tmp_path / "a.npy"),
            str(tmp_path / "a.npy"),
            "--reduction",
            reduction,
            "--out",
            str(tmp_path / name),
            "--chunk-rows",
            "3",
        ]
    )
    assert code == 130 and len(calls) == 2
    assert "interrupted" in capsys.readouterr().err
    assert not (tmp_path / name).exists() and _leftovers(tmp_path) == []


def test_score_out_mode_follows_umask(capsys, tmp_path):
    np.save(tmp_path / "a.npy", np.ones((4, 3)))
    old = os.umask(0o027)
    try:
        code, out, err = score(
            capsys,
            "mse",
            tmp_path / "a.npy",
            tmp_path / "a.npy",
            "--reduction",
            "none",
            "--out",
            tmp_path / "o.npy",
        )
    finally:
        os.umask(old)
    assert code == 0, err
    assert (tmp_path / "o.npy").stat().st_mode & 0o777 == 0o640
    np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), np.zeros((4, 3)))
    assert err == f"wrote {tmp_path / 'o.npy'} (4x3, float64)\n"


def test_score_out_over_its_own_input_subprocess(tmp_path):
    # The output used to be opened (truncated) over the input still being read: SIGBUS, or
    # losses of zeros where the shapes happened to match.
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((20000, 10))
    labels = rng.integers(0, 10, 20000)
    np.save(tmp_path / "logits.npy", logits)
    np.save(tmp_path / "labels.npy", labels)
    proc = run_cli(
        "score",
        "cross_entropy",
        tmp_path / "logits.npy",
        tmp_path / "labels.npy",
        "--reduction",
        "none",
        "--out",
        tmp_path / "logits.npy",
        "--chunk-rows",
        100,
    )
    assert proc.returncode == 0, proc.stderr
    expected = cross_entropy_rows_ref(logits, labels)
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), expected, rtol=1e-12, atol=0)


def cross_entropy_rows_ref(logits, labels):
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_softmax[np.arange(len(labels)), labels]


# --- score: a result that cannot be printed is an error -----------------------------------------


def _score_command(tmp_path, *extra):
    np.save(tmp_path / "p.npy", np.full((5, 2), 3.0))
    np.save(tmp_path / "t.npy", np.ones((5, 2)))
    return [
        sys.executable,
        "-m",
        "fastloss",
        "score",
        "mse",
        str(tmp_path / "p.npy"),
        str(tmp_path / "t.npy"),
        *extra,
    ]


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_score_stdout_closed(tmp_path, reduction):
    command = _score_command(tmp_path, "--reduction", reduction)
    proc = subprocess.run(
        ["/bin/sh", "-c", 'exec "$@" >&-', "sh", *command], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1
    assert proc.stderr == (
        "fastloss score: error: standard output is closed, so the result cannot be "
        "printed; write it with --out FILE\n"
    )


def test_score_stdout_closed_with_out_is_fine(tmp_path):
    command = _score_command(tmp_path, "--out", str(tmp_path / "r.txt"))
    proc = subprocess.run(
        ["/bin/sh", "-c", 'exec "$@" >&-', "sh", *command], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert float((tmp_path / "r.txt").read_text()) == 4.0


def test_score_stdout_broken_pipe(tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to the pipe fails with EPIPE
    try:
        proc = subprocess.run(
            _score_command(tmp_path), stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 1
    assert proc.stderr == (
        "fastloss score: error: cannot write the result to standard output (Broken pipe); "
        "write it with --out FILE\n"
    )


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_score_stdout_full(tmp_path):
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            _score_command(tmp_path), stdout=full, stderr=subprocess.PIPE, text=True, timeout=300
        )
    assert proc.returncode == 1
    assert "No space left on device" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


# --- score: every loss and option against the in-memory call --------------------------------------


@pytest.fixture
def nce_files(tmp_path):
    rng = np.random.default_rng(21)
    n, m, d = 45, 7, 6
    arrays = {
        "q": rng.standard_normal((n, d)),
        "k": rng.standard_normal((n, d)),
        "queue": rng.standard_normal((m, d)),
        "paired": rng.standard_normal((n, m, d)),
    }
    for name, a in arrays.items():
        np.save(tmp_path / f"{name}.npy", a)
    return tmp_path, arrays


NCE_CASES = {
    "in_batch": ([], {}),
    "in_batch_symmetric": (
        ["--symmetric", "--normalize", "--temperature", "0.3"],
        {"symmetric": True, "normalize": True, "temperature": 0.3},
    ),
    "queue": (["--negatives", "queue.npy"], {"negative_keys": "queue"}),
    "queue_normalize": (
        ["--negatives", "queue.npy", "--normalize", "--temperature", "0.1", "--negative-mode", "unpaired"],
        {"negative_keys": "queue", "normalize": True, "temperature": 0.1},
    ),
    "paired": (
        ["--negatives", "paired.npy", "--negative-mode", "paired", "--temperature", "0.5"],
        {"negative_keys": "paired", "negative_mode": "paired", "temperature": 0.5},
    ),
}


def _nce_call(arrays, kw, reduction):
    kw = dict(kw)
    if "negative_keys" in kw:
        kw["negative_keys"] = arrays[kw["negative_keys"]]
    return fastloss.info_nce(arrays["q"], arrays["k"], reduction=reduction, **kw)


@pytest.mark.parametrize("reduction", ["mean", "sum", "batchmean"])
@pytest.mark.parametrize("case", list(NCE_CASES))
def test_score_info_nce(capsys, nce_files, case, reduction):
    tmp, arrays = nce_files
    flags, kw = NCE_CASES[case]
    flags = [str(tmp / f) if f.endswith(".npy") else f for f in flags]
    code, out, err = score(
        capsys, "info_nce", tmp / "q.npy", tmp / "k.npy", *flags, "--reduction", reduction, "--chunk-rows", 8
    )
    assert code == 0, err
    assert float(out) == pytest.approx(_nce_call(arrays, kw, reduction), rel=1e-12)


@pytest.mark.parametrize("case", list(NCE_CASES))
def test_score_info_nce_none_out(capsys, nce_files, case):
    tmp, arrays = nce_files
    flags, kw = NCE_CASES[case]
    flags = [str(tmp / f) if f.endswith(".npy") else f for f in flags]
    code, out, err = score(
        capsys,
        "info_nce",
        tmp / "q.npy",
        tmp / "k.npy",
        *flags,
        "--reduction",
        "none",
        "--out",
        tmp / "rows.npy",
        "--chunk-rows",
        8,
    )
    assert code == 0, err
    got, expected = np.load(tmp / "rows.npy"), _nce_call(arrays, kw, "none")
    assert got.shape == (45,) and got.dtype == expected.dtype
    # A row's loss does not depend on the other rows of its call: the same bits in chunks.
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("loss", ["mse", "mae"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "batchmean", "none"])
def test_score_regression_sample_weight_every_reduction(capsys, regression_files, loss, reduction):
    tmp, pred, target = regression_files
    w = np.random.default_rng(8).uniform(0, 3, size=pred.shape[0])
    np.save(tmp / "w.npy", w)
    args = [loss, tmp / "pred.npy", tmp / "target.npy", "--sample-weight", tmp / "w.npy"]
    args += ["--reduction", reduction, "--chunk-rows", 6]
    if reduction == "none":
        args += ["--out", tmp / "o.npy"]
    code, out, err = score(capsys, *args)
    assert code == 0, err
    expected = getattr(fastloss, loss)(pred, target, sample_weight=w, reduction=reduction)
    if reduction == "none":
        np.testing.assert_array_equal(np.load(tmp / "o.npy"), expected)
    else:
        assert float(out) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", ["cross_entropy", "ce"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "batchmean"])
def test_score_cross_entropy_every_option_float64(capsys, tmp_path, name, reduction):
    rng = np.random.default_rng(12)
    logits = rng.standard_normal((61, 5)) * 3
    labels = rng.integers(0, 5, size=61)
    labels[[0, 9, 33]] = 3  # ignored below
    weight = rng.uniform(0.1, 2.0, size=5)
    np.save(tmp_path / "x.npy", logits)
    np.save(tmp_path / "y.npy", labels)
    np.save(tmp_path / "w.npy", weight)
    code, out, err = score(
        capsys,
        name,
        tmp_path / "x.npy",
        tmp_path / "y.npy",
        "--weight",
        tmp_path / "w.npy",
        "--ignore-index",
        3,
        "--label-smoothing",
        0.15,
        "--reduction",
        reduction,
        "--chunk-rows",
        7,
    )
    assert code == 0, err
    expected = fastloss.cross_entropy(
        logits, labels, weight=weight, ignore_index=3, label_smoothing=0.15, reduction=reduction
    )
    assert float(out) == pytest.approx(expected, rel=1e-12)


def test_score_cross_entropy_none_exact(capsys, ce_files):
    tmp, logits, labels, weight = ce_files
    code, out, err = score(
        capsys,
        "ce",
        tmp / "logits.npy",
        tmp / "labels.npy",
        "--weight",
        tmp / "weight.npy",
        "--label-smoothing",
        0.1,
        "--reduction",
        "none",
        "--out",
        tmp / "rows.npy",
        "--chunk-rows",
        5,
    )
    assert code == 0, err
    expected = fastloss.cross_entropy(logits, labels, weight=weight, label_smoothing=0.1, reduction="none")
    np.testing.assert_array_equal(np.load(tmp / "rows.npy"), expected)


# --- score: --json -------------------------------------------------------------------------------


def test_score_json_reduction(capsys, regression_files):
    tmp, pred, target = regression_files
    code, out, err = score(capsys, "mae", tmp / "pred.npy", tmp / "target.npy", "--json", "--chunk-rows", 5)
    assert code == 0 and err == ""
    report = json.loads(out)
    assert report == {"loss": "mae", "reduction": "mean", "rows": 37, "value": report["value"]}
    assert report["value"] == pytest.approx(fastloss.mae(pred, target), rel=1e-12)
    assert out.count("\n") == 1


def test_score_json_alias_and_out_text(capsys, ce_files):
    tmp, logits, labels, _ = ce_files
    code, out, err = score(
        capsys,
        "ce",
        tmp / "logits.npy",
        tmp / "labels.npy",
        "--json",
        "--reduction",
        "sum",
        "--out",
        tmp / "v.txt",
    )
    assert code == 0, err
    report = json.loads(out)
    expected = fastloss.cross_entropy(logits, labels, reduction="sum")
    assert report["loss"] == "cross_entropy" and report["reduction"] == "sum" and report["rows"] == 41
    assert report["out"] == str(tmp / "v.txt") and report["value"] == pytest.approx(expected, rel=1e-12)
    assert float((tmp / "v.txt").read_text()) == report["value"]
    assert err.startswith(f"wrote {tmp / 'v.txt'}: ")


def test_score_json_none_out(capsys, nce_files):
    tmp, arrays = nce_files
    code, out, err = score(
        capsys,
        "info_nce",
        tmp / "q.npy",
        tmp / "k.npy",
        "--negatives",
        tmp / "queue.npy",
        "--reduction",
        "none",
        "--out",
        tmp / "rows.npy",
        "--json",
    )
    assert code == 0, err
    assert json.loads(out) == {
        "loss": "info_nce",
        "reduction": "none",
        "rows": 45,
        "out": str(tmp / "rows.npy"),
        "shape": [45],
        "dtype": "float64",
    }
    np.testing.assert_array_equal(
        np.load(tmp / "rows.npy"),
        fastloss.info_nce(arrays["q"], arrays["k"], arrays["queue"], reduction="none"),
    )


def test_score_json_none_printed_and_non_finite(capsys, tmp_path):
    np.save(tmp_path / "p.npy", np.array([[1.0, np.inf], [np.nan, 2.0]]))
    np.save(tmp_path / "t.npy", np.array([[0.0, 0.0], [0.0, 0.5]]))
    code, out, err = score(
        capsys, "mse", tmp_path / "p.npy", tmp_path / "t.npy", "--reduction", "none", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["value"] == [[1.0, "inf"], ["nan", 2.25]]
    assert "NaN" not in out and "Infinity" not in out  # strict JSON
    code, out, err = score(capsys, "mse", tmp_path / "p.npy", tmp_path / "t.npy", "--json")
    assert code == 0, err
    assert json.loads(out)["value"] == "nan"


# --- score: Parquet columns ----------------------------------------------------------------------


@pytest.fixture
def parquet_files(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rng = np.random.default_rng(31)
    n, c, m = 53, 4, 3
    data = {
        "y": rng.standard_normal(n),
        "t": rng.standard_normal(n),
        "logits": rng.standard_normal((n, c)).astype(np.float32),
        "labels": rng.integers(0, c, size=n),
        "emb": rng.standard_normal((n, c)),
        "neg": rng.standard_normal((n, m, c)),
    }
    table = pa.table(
        {
            "y": data["y"],
            "t": data["t"],
            "logits": pa.FixedSizeListArray.from_arrays(pa.array(data["logits"].ravel()), c),
            "labels": data["labels"],
            "emb": pa.FixedSizeListArray.from_arrays(pa.array(data["emb"].ravel()), c),
            "neg": pa.FixedSizeListArray.from_arrays(
                pa.FixedSizeListArray.from_arrays(pa.array(data["neg"].ravel()), c), m
            ),
        }
    )
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=10)  # 6 row groups, the last short
    pq.write_table(pa.table({"only": data["y"]}), tmp_path / "one.parquet", row_group_size=16)
    for name in ("y", "t", "logits", "labels", "emb", "neg"):
        np.save(tmp_path / f"{name}.npy", data[name])
    return tmp_path, data


@pytest.mark.parametrize("chunk_rows", [3, 10, 17, 1000])
def test_score_parquet_numeric_columns(capsys, parquet_files, chunk_rows):
    tmp, data = parquet_files
    f = tmp / "d.parquet"
    code, out, err = score(capsys, "mse", f"{f}:y", f"{f}:t", "--chunk-rows", chunk_rows)
    assert code == 0, err
    # A chunk's rows arrive in the same order as from the .npy files: the same bits.
    from_npy = score(capsys, "mse", tmp / "y.npy", tmp / "t.npy", "--chunk-rows", chunk_rows)[1]
    assert float(out) == float(from_npy)
    assert float(out) == pytest.approx(fastloss.mse(data["y"], data["t"]), rel=1e-12)
    # A single-column file needs no :COLUMN; the other input may be an .npy file.
    code, out, err = score(capsys, "mae", tmp / "one.parquet", tmp / "t.npy", "--chunk-rows", chunk_rows)
    assert code == 0, err
    assert float(out) == pytest.approx(fastloss.mae(data["y"], data["t"]), rel=1e-12)


def test_score_parquet_list_columns(capsys, parquet_files):
    tmp, data = parquet_files
    f = tmp / "d.parquet"
    code, out, err = score(capsys, "ce", f"{f}:logits", f"{f}:labels", "--chunk-rows", 7)
    assert code == 0, err
    assert float(out) == pytest.approx(fastloss.cross_entropy(data["logits"], data["labels"]), rel=1e-12)
    code, out, err = score(capsys, "mse", f"{f}:emb", tmp / "emb.npy", "--chunk-rows", 7)
    assert code == 0 and float(out) == 0.0, err
    code, out, err = score(
        capsys,
        "info_nce",
        f"{f}:emb",
        f"{f}:emb",
        "--negatives",
        f"{f}:neg",
        "--negative-mode",
        "paired",
        "--reduction",
        "none",
        "--out",
        tmp / "rows.npy",
        "--chunk-rows",
        4,
    )
    assert code == 0, err
    expected = fastloss.info_nce(
        data["emb"], data["emb"], data["neg"], negative_mode="paired", reduction="none"
    )
    np.testing.assert_array_equal(np.load(tmp / "rows.npy"), expected)


@pytest.mark.parametrize(
    "case", ["no_column", "several_columns", "variable_list", "strings", "nulls", "corrupt", "no_pyarrow"]
)
def test_score_parquet_errors(capsys, parquet_files, monkeypatch, case):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    tmp, _ = parquet_files
    f = tmp / "d.parquet"
    pq.write_table(
        pa.table(
            {
                "ragged": pa.array([[1.0], [2.0, 3.0]]),
                "s": pa.array(["a", "b"]),
                "holes": pa.array([1.0, None]),
            }
        ),
        tmp / "bad.parquet",
    )
    (tmp / "corrupt.parquet").write_bytes(b"PAR1" + bytes(100))
    if case == "no_pyarrow":
        import builtins

        real_import = builtins.__import__

        def no_pyarrow(name, *args, **kwargs):
            if name.startswith("pyarrow"):
                raise ImportError("No module named 'pyarrow'")
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    spec, message = {
        "no_column": (
            f"{f}:nope",
            f"PRED: {f} has no column named 'nope' (it has: y, t, logits, labels, emb, neg)",
        ),
        "several_columns": (
            f,
            f"PRED: {f} has 6 columns (y, t, logits, labels, emb, neg): name one as {f}:COLUMN",
        ),
        "variable_list": (f"{tmp / 'bad.parquet'}:ragged", "is a variable-length list column"),
        "strings": (f"{tmp / 'bad.parquet'}:s", "only numeric columns and fixed-size lists of numbers"),
        "nulls": (f"{tmp / 'bad.parquet'}:holes", "holds nulls"),
        "corrupt": (tmp / "corrupt.parquet", "is not a valid Parquet file"),
        "no_pyarrow": (f"{f}:y", 'needs pyarrow: pip install "fastloss[parquet]"'),
    }[case]
    other = tmp / "y.npy" if case != "nulls" else tmp / "two.npy"
    np.save(tmp / "two.npy", np.zeros(2))
    code, out, err = score(capsys, "mse", spec, other)
    assert code == 1 and out == ""
    assert err.startswith("fastloss score: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1, err


# --- score: progress ----------------------------------------------------------------------------


def test_score_progress_off_when_not_a_terminal(capsys, regression_files):
    tmp, _, _ = regression_files
    code, out, err = score(capsys, "mse", tmp / "pred.npy", tmp / "target.npy", "--chunk-rows", 4)
    assert code == 0 and err == ""


@pytest.mark.parametrize("quiet", [False, True])
def test_score_progress_on_a_terminal_unless_quiet(capsys, regression_files, monkeypatch, quiet):
    tmp, _, _ = regression_files
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    extra = ["--quiet"] if quiet else []
    code, out, err = score(capsys, "mse", tmp / "pred.npy", tmp / "target.npy", "--chunk-rows", 4, *extra)
    assert code == 0
    assert float(out) > 0
    if quiet:
        assert err == ""
    else:
        assert "fastloss score mse" in err and "100%" in err


def test_score_quiet_wins_over_progress(capsys, regression_files):
    tmp, _, _ = regression_files
    code, out, err = score(capsys, "mse", tmp / "pred.npy", tmp / "target.npy", "--progress", "-q")
    assert code == 0 and err == ""


# --- score: the new options' errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        "negatives_for_mse",
        "normalize_for_mae",
        "temperature_for_ce",
        "symmetric_for_mse",
        "sample_weight_for_nce",
        "weight_for_nce",
        "paired_without_negatives",
        "symmetric_with_negatives",
        "queue_shape",
        "paired_shape",
        "query_1d",
        "key_shape",
        "negatives_missing",
        "temperature_zero",
        "temperature_nan",
        "temperature_negative",
        "npz_several_arrays",
        "parquet_key_on_npy",
    ],
)
def test_score_new_option_errors(capsys, nce_files, case):
    tmp, _ = nce_files
    q, k, queue, paired = (str(tmp / f"{n}.npy") for n in ("q", "k", "queue", "paired"))
    np.save(tmp / "bad_queue.npy", np.zeros((3, 5)))
    np.save(tmp / "vec.npy", np.zeros(45))
    np.save(tmp / "labels.npy", np.zeros(45, dtype=np.int64))
    np.savez(tmp / "two.npz", a=np.zeros(3), b=np.zeros(3))
    args, message = {
        "negatives_for_mse": (
            ("mse", q, q, "--negatives", queue),
            "--negatives applies to info_nce only, not mse",
        ),
        "normalize_for_mae": (("mae", q, q, "--normalize"), "--normalize applies to info_nce only, not mae"),
        "temperature_for_ce": (
            ("ce", q, tmp / "labels.npy", "--temperature", 0.1),
            "--temperature applies to info_nce only, not cross_entropy",
        ),
        "symmetric_for_mse": (("mse", q, q, "--symmetric"), "--symmetric applies to info_nce only"),
        "sample_weight_for_nce": (
            ("info_nce", q, k, "--sample-weight", tmp / "vec.npy"),
            "--sample-weight applies to mse and mae only, not info_nce",
        ),
        "weight_for_nce": (
            ("info_nce", q, k, "--weight", tmp / "vec.npy"),
            "--weight applies to cross_entropy",
        ),
        "paired_without_negatives": (
            ("info_nce", q, k, "--negative-mode", "paired"),
            "paired needs --negatives",
        ),
        "symmetric_with_negatives": (
            ("info_nce", q, k, "--negatives", queue, "--symmetric"),
            "--symmetric applies to in-batch negatives only",
        ),
        "queue_shape": (
            ("info_nce", q, k, "--negatives", tmp / "bad_queue.npy"),
            "must be a queue (M, 6) for queries (45, 6); got (3, 5)",
        ),
        "paired_shape": (
            ("info_nce", q, k, "--negatives", queue, "--negative-mode", "paired"),
            "--negatives (--negative-mode paired) must be (45, M, 6)",
        ),
        "query_1d": (("info_nce", tmp / "vec.npy", tmp / "vec.npy"), "info_nce QUERY must be (N, D)"),
        "key_shape": (("info_nce", q, queue), "QUERY and POSITIVE_KEY must have the same shape"),
        "negatives_missing": (
            ("info_nce", q, k, "--negatives", tmp / "nope.npy"),
            "--negatives: no such file",
        ),
        "temperature_zero": (("info_nce", q, k, "--temperature", 0), "--temperature must be "),
        "temperature_nan": (("info_nce", q, k, "--temperature", "nan"), "--temperature must be "),
        "temperature_negative": (("info_nce", q, k, "--temperature", -1), "--temperature must be "),
        "npz_several_arrays": (("mse", tmp / "two.npz", q), "holds 2 arrays (a, b): name one as"),
        "parquet_key_on_npy": (("mse", f"{q}:x", q), "no such file"),
    }[case]
    code, out, err = score(capsys, *args)
    assert code == 1 and out == ""
    assert err.startswith("fastloss score: error: ") and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    "args",
    [
        ("--negative-mode", "both"),
        ("--temperature", "warm"),
        ("--normalize", "yes"),
    ],
)
def test_score_new_usage_errors_exit_2(capsys, nce_files, args):
    tmp, _ = nce_files
    code, out, err = score(capsys, "info_nce", tmp / "q.npy", tmp / "k.npy", *args)
    assert code == 2 and out == ""
    last = err.splitlines()[-1]
    assert last.startswith(("fastloss score: error: ", "fastloss: error: ")), err
    assert args[0] in last or args[1] in last, err


# --- score: bounded memory on 2 x 1 GiB inputs, every loss -----------------------------------------

_BIG_ROWS, _BIG_DIM = 2**22, 64  # (N, D) float32: 1 GiB
_RSS_LIMIT = 512 * 2**20


@pytest.fixture(scope="module")
def big_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("big")
    free = os.statvfs(tmp).f_bavail * os.statvfs(tmp).f_frsize
    if free < 8 * 2**30:
        pytest.skip(
            f"needs 8 GiB free in {tmp} (3 GiB of inputs and 1 GiB of output); has {free / 2**30:.1f}"
        )
    rng = np.random.default_rng(99)
    step = 2**18
    for name, shape in (
        ("a", (_BIG_ROWS, _BIG_DIM)),
        ("b", (_BIG_ROWS, _BIG_DIM)),
        ("c", (_BIG_ROWS, 1, _BIG_DIM)),
    ):
        out = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=np.float32, shape=shape)
        for start in range(0, _BIG_ROWS, step):
            out[start : start + step] = rng.standard_normal((step, *shape[1:]), dtype=np.float32)
        out.flush()
        del out
    np.save(tmp / "labels.npy", rng.integers(0, _BIG_DIM, size=_BIG_ROWS))
    np.save(tmp / "queue.npy", rng.standard_normal((16, _BIG_DIM), dtype=np.float32))
    return tmp


@pytest.fixture(scope="module")
def big_parquet(big_files):
    """b.npy as a 1 GiB Parquet fixed-size list column, in row groups of 64 MiB."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    b = np.load(big_files / "b.npy", mmap_mode="r")
    kind = pa.list_(pa.float32(), _BIG_DIM)
    path = big_files / "b.parquet"
    with pq.ParquetWriter(path, pa.schema([("emb", kind)]), compression="none") as writer:
        step = 2**18
        for start in range(0, _BIG_ROWS, step):
            rows = np.ascontiguousarray(b[start : start + step]).ravel()
            column = pa.FixedSizeListArray.from_arrays(pa.array(rows), _BIG_DIM)
            writer.write_table(pa.table({"emb": column}), row_group_size=step)
    del b
    return path


# The child reports its own high-water mark: VmHWM, reset when the process image is replaced.
# (ru_maxrss from os.wait4 is no good: with vfork + exec it includes the parent's peak.)
_REPORT_PEAK = """
import sys
from fastloss.cli import main
code = main(sys.argv[1:])
with open("/proc/self/status") as fh:
    peak = next(line for line in fh if line.startswith("VmHWM:"))
sys.stderr.write(peak)
sys.exit(code)
"""


def _peak_rss(*args):
    """Runs ``fastloss score ARGS`` in a child process; returns (exit code, stderr, its peak RSS in bytes)."""
    proc = subprocess.run(
        [sys.executable, "-c", _REPORT_PEAK, "score", *map(str, args), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=600,
    )
    lines = proc.stderr.splitlines()
    assert lines and lines[-1].startswith("VmHWM:") and lines[-1].endswith(" kB"), proc.stderr
    return proc.returncode, "\n".join(lines[:-1]), int(lines[-1].split()[1]) * 1024


BIG_CASES = {
    "mse": ("mse", "a", "b"),
    "mse_none_out": ("mse", "a", "b", "--reduction", "none", "--out", "OUT"),
    "mae": ("mae", "a", "b", "--reduction", "sum"),
    "mse_parquet": ("mse", "a", "PARQUET"),
    "cross_entropy_probabilities": ("cross_entropy", "a", "b"),
    "cross_entropy_indices": ("ce", "a", "labels"),
    "info_nce_queue": ("info_nce", "a", "b", "--negatives", "queue", "--normalize"),
    "info_nce_paired": ("info_nce", "a", "b", "--negatives", "c", "--negative-mode", "paired"),
    "info_nce_none_out": (
        "info_nce",
        "a",
        "b",
        "--negatives",
        "queue",
        "--reduction",
        "none",
        "--out",
        "OUT",
    ),
}


@pytest.mark.slow
@not_under_sanitizers
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="VmHWM and madvise: Linux")
@pytest.mark.parametrize("case", list(BIG_CASES))
def test_score_peak_rss_2x1gib(request, big_files, case):
    args = [big_files / f"{a}.npy" if a in ("a", "b", "c", "labels", "queue") else a for a in BIG_CASES[case]]
    if case == "mse_parquet":
        args[2] = f"{request.getfixturevalue('big_parquet')}:emb"
    out = big_files / f"{case}.out.npy"
    args = [out if a == "OUT" else a for a in args]
    code, err, peak = _peak_rss(*args)
    assert code == 0, err
    print(f"peak RSS {case}: {peak / 2**20:.0f} MiB")
    assert peak < _RSS_LIMIT, f"{case}: peak RSS {peak / 2**20:.0f} MiB"
    if out.exists():
        assert out.stat().st_size > _BIG_ROWS * 4
        out.unlink()


@pytest.mark.parametrize("batch_bytes", [8, 24, 100])
def test_score_parquet_small_batches(capsys, parquet_files, monkeypatch, batch_bytes):
    # Decoded batches smaller than a chunk and straddling it: the rows are still read in order.
    import fastloss._readers

    monkeypatch.setattr(fastloss._readers.ParquetSource, "BATCH_BYTES", batch_bytes)
    tmp, data = parquet_files
    f = tmp / "d.parquet"
    code, out, err = score(
        capsys, "ce", f"{f}:logits", f"{f}:labels", "--reduction", "none", "--out", tmp / "r.npy"
    )
    assert code == 0, err
    np.testing.assert_array_equal(
        np.load(tmp / "r.npy"), fastloss.cross_entropy(data["logits"], data["labels"], reduction="none")
    )
    code, out, err = score(capsys, "mse", f"{f}:y", f"{f}:t", "--chunk-rows", 7)
    assert code == 0, err
    assert float(out) == pytest.approx(fastloss.mse(data["y"], data["t"]), rel=1e-12)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pty and TIOCSWINSZ")
@pytest.mark.parametrize("columns", [0, 120])
def test_score_progress_on_a_real_terminal(tmp_path, columns):
    """stderr a pty: a tqdm bar with the rate and the ETA, even where the terminal reports no width."""
    import fcntl
    import pty
    import struct
    import termios

    np.save(tmp_path / "p.npy", np.ones((20000, 8)))
    np.save(tmp_path / "t.npy", np.zeros((20000, 8)))
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastloss", "score", "mse", tmp_path / "p.npy", tmp_path / "t.npy"]
        + ["--chunk-rows", "1000"],
        stdout=subprocess.PIPE,
        stderr=follower,
    )
    os.close(follower)
    shown = b""
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the pty
            break
        if not data:
            break
        shown += data
    os.close(leader)
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and float(stdout) == 1.0
    last = shown.decode().replace("\r\n", "\r").split("\r")[-2]
    assert last.startswith("fastloss score mse: 100%|") and "/s]" in last and "<" in last, shown


@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean"])
def test_score_chunking_never_changes_a_bit(capsys, tmp_path, reduction):
    # The motivating defect of "Exact everywhere": `--chunk-mb 1` and the default chunking gave
    # other bits than the Python call. Now every chunking gives the Python call's bits.
    rng = np.random.default_rng(11)
    pred = (rng.standard_normal((257, 9)) * 10.0 ** rng.integers(-6, 6, size=(257, 1))).astype(np.float32)
    target = rng.standard_normal((257, 9)).astype(np.float32)
    logits, labels = rng.standard_normal((257, 9)) * 4, rng.integers(0, 9, size=257)
    queries, keys, queue = (
        rng.standard_normal((257, 9)),
        rng.standard_normal((257, 9)),
        rng.standard_normal((40, 9)),
    )
    for name, array in [
        ("p", pred),
        ("t", target),
        ("x", logits),
        ("y", labels),
        ("q", queries),
        ("k", keys),
        ("n", queue),
    ]:
        np.save(tmp_path / f"{name}.npy", array)
    cases = [
        (("mse", "p", "t"), (), fastloss.mse(pred, target, reduction=reduction)),
        (("ce", "x", "y"), (), fastloss.cross_entropy(logits, labels, reduction=reduction)),
        (
            ("info_nce", "q", "k"),
            ("--negatives", tmp_path / "n.npy", "--normalize"),
            fastloss.info_nce(queries, keys, queue, reduction=reduction, normalize=True),
        ),
    ]
    for (loss, a, b), extra, expected in cases:
        for chunking in ((), ("--chunk-rows", 1), ("--chunk-rows", 7), ("--chunk-mb", 0.001)):
            code, out, err = score(
                capsys,
                loss,
                tmp_path / f"{a}.npy",
                tmp_path / f"{b}.npy",
                "--reduction",
                reduction,
                "--json",
                *extra,
                *chunking,
            )
            assert code == 0, err
            assert json.loads(out)["value"] == expected, (loss, chunking)


# --- score linear_cross_entropy -------------------------------------------------------------


def _lce_reference(x, w, b, y, weight, smoothing, z_loss, softcap, ignore_index=-100):
    """Row losses and the "mean" denominator, in float64, written from the formulas."""
    z = x.astype(np.float64) @ w.astype(np.float64).T
    if b is not None:
        z = z + b
    if softcap is not None:
        z = softcap * np.tanh(z / softcap)
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    nll = lse[:, None] - z
    cw = np.ones(w.shape[0]) if weight is None else weight
    rows, denominator = np.zeros(len(y)), 0.0
    for i, t in enumerate(y):
        if t == ignore_index:
            continue
        rows[i] = (1 - smoothing) * cw[t] * nll[i, t] + smoothing / w.shape[0] * (cw * nll[i]).sum()
        rows[i] += z_loss * lse[i] ** 2
        denominator += cw[t]
    return rows, denominator


@pytest.fixture
def lce_files(tmp_path):
    rng = np.random.default_rng(12)
    n, h, v = 53, 24, 37
    x = rng.standard_normal((n, h)).astype(np.float32)
    w = (rng.standard_normal((v, h)) * 0.5).astype(np.float32)
    b = rng.standard_normal(v).astype(np.float32)
    y = rng.integers(0, v, size=n)
    y[[4, 30]] = -100
    weight = rng.uniform(0.2, 2.0, size=v)
    for name, value in {"x": x, "w": w, "b": b, "y": y, "weight": weight}.items():
        np.save(tmp_path / f"{name}.npy", value)
    return tmp_path, x, w, b, y, weight


@pytest.mark.parametrize("reduction", ["mean", "sum", "batchmean", "none"])
@pytest.mark.parametrize("options", [(), ("bias", "z_loss"), ("softcap", "weight", "smoothing")])
def test_score_linear_cross_entropy(capsys, lce_files, reduction, options):
    tmp, x, w, b, y, weight = lce_files
    args = ["lce", tmp / "x.npy", tmp / "y.npy", "--linear-weight", tmp / "w.npy", "--reduction", reduction]
    args += ["--chunk-rows", 7]
    kw = {}
    if "bias" in options:
        args += ["--linear-bias", tmp / "b.npy"]
        kw["linear_bias"] = b
    if "z_loss" in options:
        args += ["--z-loss", 0.01]
        kw["z_loss"] = 0.01
    if "softcap" in options:
        args += ["--softcap", 3.0]
        kw["softcap"] = 3.0
    if "weight" in options:
        args += ["--weight", tmp / "weight.npy"]
        kw["weight"] = weight
    if "smoothing" in options:
        args += ["--label-smoothing", 0.1]
        kw["label_smoothing"] = 0.1
    if reduction == "none":
        args += ["--out", tmp / "rows.npy"]
    code, out, err = score(capsys, *args)
    assert code == 0, err
    rows, denominator = _lce_reference(
        x,
        w,
        kw.get("linear_bias"),
        y,
        kw.get("weight"),
        kw.get("label_smoothing", 0.0),
        kw.get("z_loss", 0.0),
        kw.get("softcap"),
    )
    one_call = fastloss.linear_cross_entropy(x, w, y, reduction=reduction, **kw)
    if reduction == "none":
        got = np.load(tmp / "rows.npy")
        assert got.dtype == np.float32 and got.shape == (len(y),)
        np.testing.assert_allclose(got, rows, rtol=2e-5, atol=1e-6)
        assert got.tobytes() == one_call.tobytes()  # chunks of 7 rows: the one call's bits
        return
    expected = {"sum": rows.sum(), "mean": rows.sum() / denominator, "batchmean": rows.sum() / len(y)}
    assert float(out) == pytest.approx(expected[reduction], rel=2e-6)
    assert float(out) == one_call  # exact reductions: chunking does not change the bits


def test_score_linear_cross_entropy_probabilities(capsys, lce_files):
    tmp, x, w, _, _, _ = lce_files
    probs = np.random.default_rng(3).dirichlet(np.ones(w.shape[0]), size=x.shape[0]).astype(np.float32)
    np.save(tmp / "probs.npy", probs)
    code, out, err = score(
        capsys,
        "linear_cross_entropy",
        tmp / "x.npy",
        tmp / "probs.npy",
        "--linear-weight",
        tmp / "w.npy",
        "--chunk-rows",
        10,
    )
    assert code == 0, err
    z = x.astype(np.float64) @ w.astype(np.float64).T
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    expected = (probs * (lse[:, None] - z)).sum() / x.shape[0]
    assert float(out) == pytest.approx(expected, rel=2e-6)


@pytest.mark.parametrize(
    "extra, message",
    [
        ((), "needs --linear-weight FILE"),
        (("--linear-weight", "b.npy"), "--linear-weight must be (V, 24)"),
        (("--linear-weight", "w.npy", "--softcap", -1), "--softcap must be None or finite and > 0"),
        (("--linear-weight", "w.npy", "--z-loss", "nan"), "--z-loss must be finite and >= 0"),
        (("--linear-weight", "w.npy", "--linear-bias", "x.npy"), "linear_bias"),
        (
            ("--linear-weight", "w.npy", "--chunk-rows", 5, "--target", "bad_y.npy"),
            "TARGET value 37 at row 9",
        ),
        (
            ("--linear-weight", "w.npy", "--target", "x.npy"),
            "TARGET with probabilities must have shape (53, 37)",
        ),
        (("--linear-weight", "w.npy", "--sample-weight", "b.npy"), "--sample-weight applies to mse and mae"),
    ],
    ids=lambda v: str(v)[:30],
)
def test_score_linear_cross_entropy_errors(capsys, lce_files, extra, message):
    tmp = lce_files[0]
    y = np.load(tmp / "y.npy")
    y[9] = 37
    np.save(tmp / "bad_y.npy", y)
    extra = list(extra)
    target = "y.npy"
    if "--target" in extra:
        i = extra.index("--target")
        target = extra[i + 1]
        del extra[i : i + 2]
    resolved = [tmp / e if isinstance(e, str) and e.endswith(".npy") else e for e in extra]
    code, out, err = score(capsys, "lce", tmp / "x.npy", tmp / target, *resolved)
    assert code == 1 and out == ""
    assert err.startswith("fastloss score: error: ") and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_score_z_loss_is_for_linear_cross_entropy_only(capsys, ce_files):
    tmp = ce_files[0]
    code, _, err = score(capsys, "cross_entropy", tmp / "logits.npy", tmp / "labels.npy", "--z-loss", 0.1)
    assert code == 1 and "--z-loss applies to linear_cross_entropy only, not cross_entropy" in err
