"""InfoNCE gives the same bits on every compiled path: each output (row losses, reductions, each
row's max and log-sum-exp, every gradient) of every path equals the scalar path's bit for bit.

The kernels make this so by summing in an order no path's vector width or micro-kernel shape can
change (cpp/kernels/virtual_lanes.inl, the fused multiply-add chains of gemm_accumulate) and by
taking every exp and log from the vecmath.inl polynomials. NaN is compared by position only: x86
and ARM make default NaNs of different signs.
"""

from __future__ import annotations

import fastloss
import numpy as np
import pytest
from fastloss import _core, _losses
from fastloss._stream import Accumulator

ISAS = list(_core.available_isas())
DIMS = (1, 7, 16, 17, 31, 33, 40, 100)
ROWS = (1, 5, 13, 97)  # 97: two query blocks, and not a multiple of any micro-kernel's rows
QUEUES = (1, 255, 256, 257, 600)  # either side of the key tile (256)
MODES = ("in-batch", "unpaired", "paired")
DTYPES = [np.float32, np.float64]


def _on(isa: str, fn):
    previous = _core.active_isa()
    _core.set_active_isa(isa)
    try:
        return fn()
    finally:
        _core.set_active_isa(previous)


def _outputs(q, k, neg, *, mode="unpaired", reductions=("mean", "sum"), **options) -> dict[str, object]:
    """Everything InfoNCE computes for these inputs on the active path, by name; a ValueError's
    message where the call refuses the inputs."""
    kwargs = {"negative_mode": mode if mode != "in-batch" else "unpaired", **options}
    out: dict[str, object] = {}
    try:
        loss, grads = fastloss.info_nce(q, k, neg, reduction="none", return_grad=True, **kwargs)
    except ValueError as error:
        return {"error": str(error)}
    out["row_loss"] = loss
    for name, grad in zip(("d_query", "d_positive", "d_negatives"), grads, strict=True):
        if grad is not None:
            out[name] = grad
    for reduction in reductions:
        value, grads = fastloss.info_nce(q, k, neg, reduction=reduction, return_grad=True, **kwargs)
        out[reduction] = np.float64(value)
        for name, grad in zip(("d_query", "d_positive", "d_negatives"), grads, strict=True):
            if grad is not None:
                out[f"{name} ({reduction})"] = grad
    # Each direction's per-row max and log of the scaled sum, which the backward pass reads.
    problem = _losses.InfoNceProblem(
        q,
        k,
        neg,
        temperature=options.get("temperature", 0.07),
        negative_mode=kwargs["negative_mode"],
        normalize=options.get("normalize", False),
        symmetric=options.get("symmetric", False),
    )
    problem.forward(keep_for_backward=True)
    out["row_stats"] = problem._row_stats
    if problem._key_stats is not None:
        out["key_stats"] = problem._key_stats
    if neg is not None:
        # a queue shard's statistics: the positive left out of the log-sum-exp
        positive, lse = problem.shard_stats()
        out["shard_positive"], out["shard_lse"] = positive, lse
    return out


def _same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if not np.array_equal(nan_a, nan_b):
        return False
    return np.array_equal(a[~nan_a].view(np.uint8), b[~nan_b].view(np.uint8))


def _assert_same_bits_on_every_path(make_outputs, *args, **kwargs) -> dict[str, object]:
    """make_outputs(*args, **kwargs) on every path; each path's outputs must be the scalar path's bits."""
    expected = _on("scalar", lambda: make_outputs(*args, **kwargs))
    for isa in ISAS:
        if isa == "scalar":
            continue
        got = _on(isa, lambda: make_outputs(*args, **kwargs))
        assert got.keys() == expected.keys(), isa
        for name, value in expected.items():
            if name == "error":
                assert got[name] == value, isa
                continue
            assert _same_bits(got[name], value), (
                f"{isa}: {name} differs from the scalar path's "
                f"(largest difference {np.nanmax(np.abs(np.asarray(got[name]) - np.asarray(value)))})"
            )
    return expected


def _case(rng, dtype, mode, n, m, d, scale=1.0):
    q = (rng.standard_normal((n, d)) * scale).astype(dtype)
    k = (rng.standard_normal((n, d)) * scale).astype(dtype)
    if mode == "in-batch":
        neg = None
    elif mode == "unpaired":
        neg = (rng.standard_normal((m, d)) * scale).astype(dtype)
    else:
        neg = (rng.standard_normal((n, m, d)) * scale).astype(dtype)
    return q, k, neg


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_shapes(dtype, mode, d):
    # Dot products of every length against the virtual lanes (32 floats, 16 doubles), the
    # micro-kernels' strips (NR) and their partial row groups (N = 1, 5, 13, 97).
    rng = np.random.default_rng(1000 + d)
    for n in ROWS:
        q, k, neg = _case(rng, dtype, mode, n, 7, d)
        for normalize in (False, True):
            _assert_same_bits_on_every_path(
                _outputs, q, k, neg, mode=mode, normalize=normalize, reductions=()
            )


@pytest.mark.parametrize("m", QUEUES)
@pytest.mark.parametrize("mode", ["unpaired", "paired"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_queue_lengths(dtype, mode, m):
    # Tiles of keys that end either side of 256, and their partial last tile.
    rng = np.random.default_rng(2000 + m)
    n, d = (13, 17) if mode == "paired" else (97, 33)
    q, k, neg = _case(rng, dtype, mode, n, m, d)
    for normalize in (False, True):
        _assert_same_bits_on_every_path(_outputs, q, k, neg, mode=mode, normalize=normalize)


@pytest.mark.parametrize("n", [255, 257])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_in_batch_tiles_and_symmetric(dtype, n):
    # In-batch keys are the positives: N keys, so N decides the tiles.
    rng = np.random.default_rng(3000 + n)
    q, k, _ = _case(rng, dtype, "in-batch", n, 0, 40)
    for normalize in (False, True):
        for symmetric in (False, True):
            _assert_same_bits_on_every_path(
                _outputs, q, k, None, mode="in-batch", normalize=normalize, symmetric=symmetric
            )


@pytest.mark.parametrize("temperature", [0.07, 1.0])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_temperatures_and_reductions(dtype, mode, temperature):
    rng = np.random.default_rng(4000)
    q, k, neg = _case(rng, dtype, mode, 13, 31, 100)
    for normalize in (False, True):
        symmetric = (False, True) if mode == "in-batch" else (False,)
        for sym in symmetric:
            _assert_same_bits_on_every_path(
                _outputs, q, k, neg, mode=mode, normalize=normalize, symmetric=sym, temperature=temperature
            )


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_several_key_chunks(dtype):
    # More than one chunk of keys (>= 1024 each): the chunks' partials are merged in chunk order.
    rng = np.random.default_rng(5000)
    q, k, neg = _case(rng, dtype, "unpaired", 13, 2100, 16)
    _assert_same_bits_on_every_path(_outputs, q, k, neg, normalize=True)


def _special(dtype, kind, rng):
    n, m, d = 13, 257, 17
    q, k, neg = _case(rng, dtype, "unpaired", n, m, d)
    tiny = np.finfo(dtype).smallest_subnormal
    if kind == "nan":
        q[2, 3] = np.nan
        k[4, 0] = np.nan
    elif kind == "nan-key":
        neg[100, 5] = np.nan
    elif kind == "inf":
        q[1, 0] = np.inf
        k[3, 2] = -np.inf
    elif kind == "inf-key":
        neg[7, 1] = np.inf
    elif kind == "huge":
        # rows of norm ~4 sqrt(max) (7e19 in float32): with normalize a ValueError by design
        # (|q| |k| would overflow the dot products), without it logits of inf and NaN
        big = np.finfo(dtype).max ** 0.5 * 4
        q[0] *= big
        neg[3] *= big
    elif kind == "large":
        # products far beyond exp's range, finite dot products
        q, k, neg = q * dtype(1e8), k * dtype(1e8), neg * dtype(1e8)
    elif kind == "subnormal":
        # products that underflow to +0 and -0: the tile max's sign of zero, the norms' floor
        q, k, neg = q * tiny * 8, k * tiny * 8, neg * tiny * 8
    elif kind == "zeros":
        q[1] = 0.0
        k[2] = -0.0
        neg[:40] = 0.0
    return q.astype(dtype), k.astype(dtype), neg.astype(dtype)


SPECIALS = ("nan", "nan-key", "inf", "inf-key", "huge", "large", "subnormal", "zeros")


@pytest.mark.parametrize("kind", SPECIALS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_special_values(dtype, kind):
    rng = np.random.default_rng(6000 + SPECIALS.index(kind))
    q, k, neg = _special(dtype, kind, rng)
    paired = np.broadcast_to(neg[:9], (q.shape[0], 9, q.shape[1])).copy()
    with np.errstate(all="ignore"):
        for normalize in (False, True):
            _assert_same_bits_on_every_path(_outputs, q, k, neg, normalize=normalize, reductions=("sum",))
            _assert_same_bits_on_every_path(
                _outputs, q, k, paired, mode="paired", normalize=normalize, reductions=("sum",)
            )
            _assert_same_bits_on_every_path(
                _outputs,
                q,
                k,
                None,
                mode="in-batch",
                normalize=normalize,
                symmetric=True,
                reductions=("sum",),
            )


def test_huge_float32_normalized_is_refused_on_every_path():
    q = np.ones((3, 4), dtype=np.float32)
    q[1] = 1e30
    k = np.ones((3, 4), dtype=np.float32)
    expected = _assert_same_bits_on_every_path(_outputs, q, k, None, mode="in-batch", normalize=True)
    assert "error" in expected


@pytest.mark.parametrize("normalize", [False, True])
def test_queue_split_accumulator(normalize):
    # The streaming API's shards merge with the kernels' exp and log, not NumPy's (dispatched per CPU).
    rng = np.random.default_rng(7000)
    q, k = rng.standard_normal((37, 8)), rng.standard_normal((37, 8))
    queue = rng.standard_normal((600, 8)) * 3

    def run():
        shards = [
            Accumulator("info_nce", queue_split=True, reduction="sum", normalize=normalize) for _ in range(3)
        ]
        for acc, (a, b) in zip(shards, [(0, 256), (256, 257), (257, 600)], strict=True):
            acc.update(q, k, queue[a:b])
        for other in shards[1:]:
            shards[0].merge(other)
        return {"result": np.float64(shards[0].result()), "lse": shards[0]._shard_lse}

    _assert_same_bits_on_every_path(run)


def _label_outputs(q, k, neg, *, mode, ql, kl, decoupled, symmetric=False, normalize=True):
    """Row losses, gradients, saved log-sum-exps and the temperature's gradient with labels."""
    problem = _losses.InfoNceProblem(
        q,
        k,
        neg,
        temperature=0.1,
        negative_mode="paired" if mode == "paired" else "unpaired",
        normalize=normalize,
        symmetric=symmetric,
        query_labels=ql,
        key_labels=kl,
        decoupled=decoupled,
    )
    out: dict[str, object] = {"row_loss": problem.forward(keep_for_backward=True)}
    out["row_stats"] = problem._row_stats.copy()
    grads, d_temperature = problem.backward_with_temperature(np.linspace(0.5, 1.5, problem.rows))
    for name, grad in zip(("d_query", "d_positive", "d_negatives"), grads, strict=True):
        if grad is not None:
            out[name] = grad
    out["d_temperature"] = np.float64(d_temperature)
    if neg is not None and mode == "unpaired":
        out["shard_positive"], out["shard_lse"] = problem.shard_stats()
    return out


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_labels_and_decoupled_on_every_path_and_thread_count(dtype, mode, decoupled):
    # Masks formed per tile from the labels: partial key tiles, two chunks of in-batch keys (1100,
    # chunks of >= 1024) and three of a queue (2100), several query groups (384), so that 2
    # threads split the work; 5 classes, so every tile holds keys to mask.
    rng = np.random.default_rng(6000)
    n, m, d = {"in-batch": (1100, 0, 9), "unpaired": (97, 2100, 17), "paired": (13, 300, 17)}[mode]
    q, k, neg = _case(rng, dtype, mode, n, m, d)
    ql = rng.integers(0, 5, n)
    kl = {
        "in-batch": rng.integers(0, 5, n),
        "unpaired": rng.integers(0, 5, m),
        "paired": rng.integers(0, 5, (n, m)),
    }[mode]
    previous = fastloss.get_num_threads()
    try:
        fastloss.set_num_threads(1)
        expected = _on(
            "scalar", lambda: _label_outputs(q, k, neg, mode=mode, ql=ql, kl=kl, decoupled=decoupled)
        )
        for threads in (1, 2):
            fastloss.set_num_threads(threads)
            for isa in ISAS:
                got = _on(
                    isa, lambda: _label_outputs(q, k, neg, mode=mode, ql=ql, kl=kl, decoupled=decoupled)
                )
                assert got.keys() == expected.keys()
                for name, value in expected.items():
                    assert _same_bits(got[name], value), f"{isa}, {threads} threads: {name}"
        if mode == "in-batch":
            fastloss.set_num_threads(2)
            _assert_same_bits_on_every_path(
                _label_outputs, q, k, neg, mode=mode, ql=ql, kl=kl, decoupled=decoupled, symmetric=True
            )
    finally:
        fastloss.set_num_threads(previous)
