"""The ``fastloss`` command line: ``bench``, ``score`` and ``--version``.

``score`` is checked against the in-memory functions on small files, with tiny chunks so the
streaming path (several chunks, a short last one) is the one exercised. One ``bench --quick``
subprocess serves the bench tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastloss
from fastloss.cli import main

FORWARD_WORKLOADS = ["mse_small", "mse_large", "mae_large", "ce_small", "ce_large",
                     "infonce_moco", "infonce_inbatch"]


def run_cli(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "fastloss", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


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
    if importlib.util.find_spec("matplotlib") is None:
        assert "chart skipped" in proc.stdout
    else:
        assert (tmp / "bench_results" / "bench.png").stat().st_size > 0


def test_bench_json(quick_bench):
    proc, tmp = quick_bench
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp / "bench.json").read_text())
    assert data["settings"]["quick"] is True
    assert data["fastloss"]["version"] == fastloss.__version__
    assert data["machine"]["cpu_count"] >= 1 and data["machine"]["numpy"] == np.__version__
    by_name = {w["name"]: w for w in data["workloads"]}
    assert set(FORWARD_WORKLOADS) <= set(by_name)
    for name in FORWARD_WORKLOADS:
        rows = by_name[name]["results"]
        impls = {r["impl"] for r in rows}
        assert {"fastloss", "numpy_ref", "numpy_fast"} <= impls
        for r in rows:
            assert "error" not in r, r
            assert r["median_s"] > 0 and r["repeats"] >= 1 and r["speedup"] > 0
            # Every implementation computes the same loss as the float64 reference.
            assert r["rel_err"] < 1e-4, (name, r["impl"], r["rel_err"])
        threads = {r["threads"] for r in rows if r["impl"] == "fastloss"}
        assert 1 in threads
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
    code, out, err = score(capsys, loss, tmp / "pred.npy", tmp / "target.npy",
                           "--reduction", reduction, "--chunk-rows", 8)
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
    code, out, err = score(capsys, "mae", tmp_path / "p.npy", tmp_path / "t.npy",
                           "--chunk-mb", 0.01)  # ~80 rows a chunk
    assert code == 0, err
    assert float(out) == pytest.approx(fastloss.mae(pred, target), rel=1e-6)


def test_score_sample_weight(capsys, regression_files):
    tmp, pred, target = regression_files
    w = np.random.default_rng(1).uniform(0, 2, size=pred.shape[0])
    np.save(tmp / "w.npy", w)
    for reduction in ("mean", "batchmean", "sum"):
        code, out, err = score(capsys, "mse", tmp / "pred.npy", tmp / "target.npy",
                               "--sample-weight", tmp / "w.npy", "--reduction", reduction,
                               "--chunk-rows", 5)
        assert code == 0, err
        expected = fastloss.mse(pred, target, sample_weight=w, reduction=reduction)
        assert float(out) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("loss", ["mse", "mae"])
def test_score_none_out(capsys, regression_files, loss):
    tmp, pred, target = regression_files
    out_path = tmp / "out.npy"
    code, out, err = score(capsys, loss, tmp / "pred.npy", tmp / "target.npy",
                           "--reduction", "none", "--out", out_path, "--chunk-rows", 6)
    assert code == 0, err
    got = np.load(out_path)
    expected = getattr(fastloss, loss)(pred, target, reduction="none")
    assert got.shape == expected.shape and got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=1e-15, atol=0)


def test_score_none_printed(capsys, regression_files):
    tmp, pred, target = regression_files
    code, out, err = score(capsys, "mse", tmp / "pred.npy", tmp / "target.npy",
                           "--reduction", "none")
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
    args = ["cross_entropy", tmp / "logits.npy", tmp / "labels.npy", "--reduction", reduction,
            "--chunk-rows", 9]
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
    code, out, err = score(capsys, "cross_entropy", tmp / "logits.npy", tmp / "labels4.npy",
                           "--ignore-index", 4, "--chunk-rows", 10)
    assert code == 0, err
    assert float(out) == pytest.approx(
        fastloss.cross_entropy(logits, labels, ignore_index=4), rel=1e-6)
    code, out, err = score(capsys, "cross_entropy", tmp / "logits.npy", tmp / "labels4.npy",
                           "--ignore-index", 4, "--reduction", "none", "--out", tmp / "ce.npy",
                           "--chunk-rows", 10)
    assert code == 0, err
    expected = fastloss.cross_entropy(logits, labels, ignore_index=4, reduction="none")
    got = np.load(tmp / "ce.npy")
    assert got.shape == (logits.shape[0],) and got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)


def test_score_cross_entropy_probabilities(capsys, ce_files):
    tmp, logits, _, _ = ce_files
    probs = np.random.default_rng(2).dirichlet(np.ones(logits.shape[1]), size=logits.shape[0])
    np.save(tmp / "probs.npy", probs.astype(np.float32))
    code, out, err = score(capsys, "cross_entropy", tmp / "logits.npy", tmp / "probs.npy",
                           "--chunk-rows", 8)
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
    code, out, err = score(capsys, "mse", tmp_path / "c.npz", f"{tmp_path / 'a.npz'}:other",
                           "--chunk-rows", 7)
    assert code == 0, err
    assert float(out) == pytest.approx(fastloss.mse(pred, target), rel=1e-12)
    code, out, err = score(capsys, "mae", f"{tmp_path / 'a.npz'}:arr_0", tmp_path / "b.npz",
                           "--chunk-rows", 16)
    assert code == 0, err
    assert float(out) == pytest.approx(fastloss.mae(pred, target), rel=1e-12)
    # No key: the archive's first member, as np.load(...).files[0].
    code, out, err = score(capsys, "mse", tmp_path / "a.npz", tmp_path / "b.npz")
    assert code == 0, err
    assert float(out) == 0.0


def test_score_reduction_out_file(capsys, regression_files):
    tmp, pred, target = regression_files
    code, out, err = score(capsys, "mse", tmp / "pred.npy", tmp / "target.npy",
                           "--out", tmp / "value.txt")
    assert code == 0, err
    assert float((tmp / "value.txt").read_text()) == pytest.approx(fastloss.mse(pred, target),
                                                                    rel=1e-12)


def test_score_progress_bar(capsys, regression_files):
    tmp, _, _ = regression_files
    code, out, err = score(capsys, "mse", tmp / "pred.npy", tmp / "target.npy", "--progress",
                           "--chunk-rows", 4)
    assert code == 0
    assert "100.0%" in err and "[" in err


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


@pytest.mark.parametrize("case", ["shape", "label", "not_npy", "npz_key", "none_out_txt",
                                  "weight_for_mse", "object"])
def test_score_errors(capsys, tmp_path, case):
    np.save(tmp_path / "a.npy", np.zeros((4, 3)))
    np.save(tmp_path / "b.npy", np.zeros((4, 2)))
    np.save(tmp_path / "labels.npy", np.array([0, 1, 2, 9]))
    np.savez(tmp_path / "z.npz", x=np.zeros((4, 3)))
    (tmp_path / "text.npy").write_text("not an array\n")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    args, message = {
        "shape": (("mse", a, b), "same shape"),
        "label": (("cross_entropy", a, tmp_path / "labels.npy", "--chunk-rows", 2),
                  "TARGET value 9 at row 3"),
        "not_npy": (("mse", tmp_path / "text.npy", a), "not a valid .npy file"),
        "npz_key": (("mse", f"{tmp_path / 'z.npz'}:y", a), "no array named 'y'"),
        "none_out_txt": (("mse", a, a, "--reduction", "none", "--out", tmp_path / "o.txt"),
                         "ending in .npy"),
        "weight_for_mse": (("mse", a, a, "--weight", a), "cross_entropy only"),
        "object": (("mse", tmp_path / "obj.npy", a), "obj.npy"),
    }[case]
    code, out, err = score(capsys, *args)
    assert code == 1
    assert err.startswith("fastloss score: error: ") and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_score_fastloss_argument_error(capsys, tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((4, 3)))
    np.save(tmp_path / "labels.npy", np.array([0, 1, 2, 1]))
    code, out, err = score(capsys, "cross_entropy", tmp_path / "a.npy", tmp_path / "labels.npy",
                           "--label-smoothing", 1.5)
    assert code == 1
    assert "--label-smoothing" in err and "Traceback" not in err


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux only")
def test_memory_module_runs():
    from fastloss._bench import memory
    res = memory.peak_extra_memory("mse_small", "fastloss", quick=True)
    assert "error" not in res, res
    assert res["extra_bytes"] is not None and res["extra_bytes"] >= 0
