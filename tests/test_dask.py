"""fastloss.dask: every loss and reduction over dask arrays chunked by rows in any way gives the
bits of the in-memory call (SPEC.md, "fastloss.dask" and "Exact reductions"), on a 2-process
dask.distributed.LocalCluster and on the default (threaded) scheduler; "none" stays lazy; bad
input is a ValueError/TypeError naming the argument."""

from __future__ import annotations

import math

import fastloss
import numpy as np
import pytest

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
fd = pytest.importorskip("fastloss.dask")

REDUCTIONS = ("sum", "mean", "batchmean", "none")
N = 50
CHUNKS = (7, 13, 1, 29)  # uneven, with a single-row chunk
OTHER_CHUNKS = (20, 5, 25)  # the second argument's rows, unaligned with the first's


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        # ":0": a free port for the dashboard (None means the default 8787, which another cluster
        # on the machine may hold; the warning is then an error here).
        n_workers=2,
        processes=True,
        threads_per_worker=1,
        dashboard_address=":0",
        silence_logs=50,
    )
    with distributed.Client(cluster, set_as_default=False) as c:
        yield c
    cluster.close()


@pytest.fixture(params=["distributed", "threads"])
def compute(request):
    """Computes a dask collection on the 2-process cluster or on the default threaded scheduler."""
    if request.param == "distributed":
        c = request.getfixturevalue("client")
        return lambda x: c.compute(x).result()
    return lambda x: x.compute(scheduler="threads")


def rows_chunked(a: np.ndarray, rows=CHUNKS, other=2) -> da.Array:
    """`a` chunked by the given rows and, to be merged by fastloss.dask, in `other` pieces along
    every other axis."""
    return da.from_array(a, chunks=(rows,) + tuple(max(1, s // other) for s in a.shape[1:]))


def same_bits(got, expected, reduction: str) -> None:
    if reduction == "none":
        assert isinstance(got, np.ndarray) and isinstance(expected, np.ndarray)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert got.tobytes() == expected.tobytes()
    else:
        assert isinstance(got, float)
        assert got == expected or (math.isnan(got) and math.isnan(expected)), (got, expected)


def check_lazy(result, reduction: str, rows: int | None = N) -> None:
    assert isinstance(result, da.Array)
    if reduction == "none":
        assert result.shape[0] == rows
    else:
        assert result.shape == () and result.dtype == np.float64


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(9)
    scale = 10.0 ** rng.integers(-6, 6, size=(N, 1))
    return {
        "pred": (rng.standard_normal((N, 6)) * scale).astype(np.float32),
        "target": rng.standard_normal((N, 6)).astype(np.float32),
        "weights": rng.uniform(0, 3, size=N),
        "logits": rng.standard_normal((N, 5)) * 4,
        "labels": rng.integers(0, 5, size=N),
        "probs": rng.dirichlet(np.ones(5), size=N),
        "query": rng.standard_normal((N, 8)).astype(np.float32),
        "key": rng.standard_normal((N, 8)).astype(np.float32),
        "queue": rng.standard_normal((37, 8)).astype(np.float32),
        "paired": rng.standard_normal((N, 6, 8)).astype(np.float32),
    }


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", ["mse", "mae"])
@pytest.mark.parametrize("weighted", [False, True])
def test_regression_same_bits(compute, data, loss, reduction, weighted):
    pred, target = data["pred"], data["target"]
    weights = data["weights"] if weighted else None
    expected = getattr(fastloss, loss)(pred, target, reduction=reduction, sample_weight=weights)
    sw = None if weights is None else da.from_array(weights, chunks=(11, 39))
    result = getattr(fd, loss)(
        rows_chunked(pred), rows_chunked(target, OTHER_CHUNKS, 3), reduction=reduction, sample_weight=sw
    )
    check_lazy(result, reduction)
    if reduction == "none":
        assert result.chunks[0] == CHUNKS
        assert result.shape == pred.shape
    same_bits(compute(result), expected, reduction)


def test_regression_numpy_arguments_and_3d(compute, data):
    pred = data["pred"].reshape(N, 2, 3)
    target = data["target"].reshape(N, 2, 3)
    for reduction in REDUCTIONS:
        expected = fastloss.mse(pred, target, reduction=reduction, sample_weight=data["weights"])
        result = fd.mse(rows_chunked(pred), target, reduction=reduction, sample_weight=data["weights"])
        check_lazy(result, reduction)
        same_bits(compute(result), expected, reduction)
    # NumPy arguments only: one chunk, still lazy.
    result = fd.mae(data["pred"], data["target"], reduction="sum")
    check_lazy(result, "sum")
    same_bits(compute(result), fastloss.mae(data["pred"], data["target"], reduction="sum"), "sum")


CE_OPTIONS = [
    {},
    {"weight": [0.5, 2.0, 1.0, 3.0, 0.25]},
    {"ignore_index": 1},
    {"label_smoothing": 0.2, "weight": [1.0, 0.0, 2.0, 1.0, 1.0], "ignore_index": 3},
]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", CE_OPTIONS, ids=["plain", "weight", "ignore", "smooth"])
def test_cross_entropy_same_bits(compute, data, reduction, options):
    logits, labels = data["logits"], data["labels"]
    expected = fastloss.cross_entropy(logits, labels, reduction=reduction, **options)
    result = fd.cross_entropy(
        rows_chunked(logits), da.from_array(labels, chunks=OTHER_CHUNKS), reduction=reduction, **options
    )
    check_lazy(result, reduction)
    same_bits(compute(result), expected, reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_probabilities_same_bits(compute, data, reduction):
    logits, probs = data["logits"], data["probs"]
    for options in ({}, {"label_smoothing": 0.1}):
        expected = fastloss.cross_entropy(logits, probs, reduction=reduction, **options)
        result = fd.cross_entropy(
            rows_chunked(logits), rows_chunked(probs, OTHER_CHUNKS), reduction=reduction, **options
        )
        check_lazy(result, reduction)
        same_bits(compute(result), expected, reduction)


def test_cross_entropy_every_row_ignored_is_nan(compute, data):
    labels = np.full(N, 2)
    result = fd.cross_entropy(rows_chunked(data["logits"]), labels, ignore_index=2)
    assert math.isnan(compute(result))
    assert math.isnan(fastloss.cross_entropy(data["logits"], labels, ignore_index=2))


def test_cross_entropy_single_sample(compute, data):
    logits = data["logits"][0]
    for reduction in REDUCTIONS:
        expected = fastloss.cross_entropy(logits, 3, reduction=reduction)
        result = fd.cross_entropy(da.from_array(logits), np.int64(3), reduction=reduction)
        assert isinstance(result, da.Array)
        got = compute(result)
        assert np.asarray(got).shape == np.shape(expected) and float(got) == float(expected)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("queue_as", ["numpy", "dask"])
@pytest.mark.parametrize("normalize", [False, True])
def test_info_nce_unpaired_same_bits(compute, data, reduction, queue_as, normalize):
    q, k, queue = data["query"], data["key"], data["queue"]
    options = {"temperature": 0.3, "normalize": normalize, "reduction": reduction}
    expected = fastloss.info_nce(q, k, queue, **options)
    negatives = queue if queue_as == "numpy" else da.from_array(queue, chunks=(10, 3))
    result = fd.info_nce(rows_chunked(q), rows_chunked(k, OTHER_CHUNKS), negatives, **options)
    check_lazy(result, reduction)
    same_bits(compute(result), expected, reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_info_nce_paired_same_bits(compute, data, reduction):
    q, k, negatives = data["query"], data["key"], data["paired"]
    expected = fastloss.info_nce(q, k, negatives, negative_mode="paired", reduction=reduction)
    result = fd.info_nce(
        rows_chunked(q),
        k,
        rows_chunked(negatives, OTHER_CHUNKS),
        negative_mode="paired",
        reduction=reduction,
    )
    check_lazy(result, reduction)
    same_bits(compute(result), expected, reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("symmetric", [False, True])
def test_info_nce_in_batch_one_row_chunk(compute, data, reduction, symmetric):
    q, k = data["query"], data["key"]
    expected = fastloss.info_nce(q, k, reduction=reduction, symmetric=symmetric)
    result = fd.info_nce(
        rows_chunked(q, (N,)), rows_chunked(k, (30, 20)), reduction=reduction, symmetric=symmetric
    )
    check_lazy(result, reduction)
    same_bits(compute(result), expected, reduction)


def test_info_nce_queue_is_one_graph_key(data):
    """A NumPy queue is one key of the graph that every row block's task depends on (so a
    distributed scheduler sends it to each worker once), not a copy inside every task."""
    result = fd.info_nce(rows_chunked(data["query"]), data["key"], data["queue"], reduction="sum")
    graph = dict(result.__dask_graph__())

    def name(key):
        return key[0] if isinstance(key, tuple) else key

    queue_keys = [key for key in graph if name(key).startswith("fastloss-queue")]
    assert len(queue_keys) == 1
    partials = [key for key in graph if "info_nce-partial" in name(key)]
    assert len(partials) == len(CHUNKS)
    for key in partials:
        assert queue_keys[0] in graph[key].dependencies


def test_results_compose_with_dask_compute(client, data):
    """Several losses in one dask.compute, different options on the same arrays, keep their bits."""
    logits, labels = rows_chunked(data["logits"]), data["labels"]
    a = fd.cross_entropy(logits, labels, ignore_index=1, reduction="sum")
    b = fd.cross_entropy(logits, labels, ignore_index=2, reduction="sum")
    c = fd.mse(rows_chunked(data["pred"]), data["target"])
    got = client.compute([a, b, c], sync=True)
    assert got == [
        fastloss.cross_entropy(data["logits"], labels, ignore_index=1, reduction="sum"),
        fastloss.cross_entropy(data["logits"], labels, ignore_index=2, reduction="sum"),
        fastloss.mse(data["pred"], data["target"]),
    ]
    assert float(fd.mse(data["pred"], data["target"])) == fastloss.mse(data["pred"], data["target"])


# -- bad input --------------------------------------------------------------------------------


def test_bad_input_names_the_argument(data):
    pred, target = rows_chunked(data["pred"]), rows_chunked(data["target"])
    with pytest.raises(ValueError, match="pred and target"):
        fd.mse(pred, target[:-1])
    with pytest.raises(ValueError, match="pred and target"):
        fd.mae(pred, target[:, :-1])
    with pytest.raises(ValueError, match="sample_weight"):
        fd.mse(pred, target, sample_weight=np.ones(N - 1))
    with pytest.raises(ValueError, match="reduction"):
        fd.mse(pred, target, reduction="avg")
    with pytest.raises(TypeError, match="pred"):
        fd.mse(pred.astype(str), target)
    unknown = pred[pred[:, 0] > -1e30]  # rows known only after computing
    with pytest.raises(ValueError, match="pred: its chunk sizes are unknown"):
        fd.mse(unknown, target)

    logits = rows_chunked(data["logits"])
    with pytest.raises(ValueError, match="target"):
        fd.cross_entropy(logits, data["labels"][:-1])
    with pytest.raises(ValueError, match="logits"):
        fd.cross_entropy(logits.reshape(N, 5, 1), data["labels"])
    with pytest.raises(ValueError, match="weight"):
        fd.cross_entropy(logits, data["labels"], weight=[1.0, 2.0])
    with pytest.raises(TypeError, match="target"):
        fd.cross_entropy(logits, data["labels"].astype(complex))
    with pytest.raises(ValueError, match="label_smoothing"):
        fd.cross_entropy(logits, data["labels"], label_smoothing=2.0)

    q, k = rows_chunked(data["query"]), rows_chunked(data["key"])
    with pytest.raises(ValueError, match="positive_key"):
        fd.info_nce(q, k[:-1], data["queue"])
    with pytest.raises(ValueError, match="negative_keys"):
        fd.info_nce(q, k, data["queue"][:, :-1])
    with pytest.raises(ValueError, match="negative_keys"):
        fd.info_nce(q, k, data["paired"][:-1], negative_mode="paired")
    with pytest.raises(ValueError, match="negative_keys"):
        fd.info_nce(q, k, [[1.0, 2.0], [3.0]])
    with pytest.raises(ValueError, match="temperature"):
        fd.info_nce(q, k, data["queue"], temperature=0.0)
    with pytest.raises(ValueError, match="in-batch.*query"):
        fd.info_nce(q, k)
    with pytest.raises(ValueError, match="in-batch.*query"):
        fd.info_nce(q, k, symmetric=True, reduction="none")


def test_bad_values_raise_at_compute_naming_the_argument(client, data):
    weights = data["weights"].copy()
    weights[30] = -1.0
    result = fd.mse(rows_chunked(data["pred"]), data["target"], sample_weight=weights)
    with pytest.raises(ValueError, match="sample_weight"):
        client.compute(result).result()
    with pytest.raises(ValueError, match="sample_weight"):
        result.compute(scheduler="threads")
