"""fastloss.Accumulator: any split of the rows into updates and merges gives the one-call result,
bit for bit (SPEC.md, "Streaming" and "Exact reductions"); its state round-trips through
to_bytes() and pickle; bad use is a ValueError/TypeError."""

from __future__ import annotations

import math
import pickle

import fastloss
import numpy as np
import pytest
from fastloss import Accumulator

REDUCTIONS = ("sum", "mean", "batchmean")


def splits(n: int, rng) -> list[list[int]]:
    """Row boundaries: one piece, single rows, uneven random pieces."""
    cuts = sorted(set(rng.integers(1, n, size=min(n - 1, 6)).tolist())) if n > 1 else []
    return [[0, n], list(range(n + 1)), [0, *cuts, n]]


def accumulate(loss: str, arrays, bounds, options, weights=None, per_row_extra=None):
    """Updates in the given pieces, two accumulators merged, as the order of a dask reduction."""
    left, right = Accumulator(loss, **options), Accumulator(loss, **options)
    pieces = list(zip(bounds[:-1], bounds[1:], strict=True))
    for k, (a, b) in enumerate(pieces):
        target = left if k % 2 == 0 else right
        chunk = [x[a:b] for x in arrays]
        if weights is not None:
            target.update(*chunk, sample_weight=weights[a:b])
        else:
            target.update(*chunk)
    return left.merge(right).result()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", ["mse", "mae"])
@pytest.mark.parametrize("weighted", [False, True])
def test_regression_splits_give_the_one_call_bits(isa, loss, reduction, weighted):
    rng = np.random.default_rng(1)
    pred = (rng.standard_normal((37, 5)) * 10.0 ** rng.integers(-5, 5, size=(37, 1))).astype(np.float32)
    target = rng.standard_normal((37, 5)).astype(np.float32)
    weights = rng.uniform(0, 2, size=37) if weighted else None
    f = getattr(fastloss, loss)
    expected = f(pred, target, reduction=reduction, sample_weight=weights)
    for bounds in splits(37, rng):
        got = accumulate(loss, [pred, target], bounds, {"reduction": reduction}, weights)
        assert got == expected, bounds


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"weight": [0.5, 2.0, 1.0, 3.0]},
        {"ignore_index": 1},
        {"label_smoothing": 0.2, "weight": [1.0, 0.0, 2.0, 1.0]},
    ],
)
def test_cross_entropy_splits_give_the_one_call_bits(isa, reduction, options):
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((41, 4)) * 5
    labels = rng.integers(0, 4, size=41)
    expected = fastloss.cross_entropy(logits, labels, reduction=reduction, **options)
    for bounds in splits(41, rng):
        got = accumulate("cross_entropy", [logits, labels], bounds, {"reduction": reduction, **options})
        assert got == expected or (math.isnan(got) and math.isnan(expected)), bounds
    probs = rng.dirichlet(np.ones(4), size=41)
    expected = fastloss.cross_entropy(logits, probs, reduction=reduction)
    assert accumulate("cross_entropy", [logits, probs], [0, 20, 41], {"reduction": reduction}) == expected


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("mode", ["unpaired", "paired"])
def test_info_nce_splits_give_the_one_call_bits(isa, reduction, mode):
    rng = np.random.default_rng(3)
    q, k = rng.standard_normal((29, 8)), rng.standard_normal((29, 8))
    options = {"reduction": reduction, "temperature": 0.2, "normalize": True, "negative_mode": mode}
    if mode == "unpaired":
        queue = rng.standard_normal((300, 8))
        expected = fastloss.info_nce(q, k, queue, **options)
        for bounds in splits(29, rng):
            assert accumulate("info_nce", [q, k], bounds, {**options, "negative_keys": queue}) == expected
    else:
        neg = rng.standard_normal((29, 7, 8))
        expected = fastloss.info_nce(q, k, neg, **options)
        for bounds in splits(29, rng):
            assert accumulate("info_nce", [q, k, neg], bounds, options) == expected


def test_state_round_trips_and_stays_small():
    rng = np.random.default_rng(4)
    acc = Accumulator("cross_entropy", reduction="mean", weight=[1.0, 2.0, 3.0])
    for _ in range(50):
        acc.update(rng.standard_normal((1000, 3)), rng.integers(0, 3, size=1000))
    data = acc.to_bytes()
    assert len(data) < 4096
    restored = Accumulator.from_bytes(data)
    assert restored.result() == acc.result()
    assert pickle.loads(pickle.dumps(acc)).result() == acc.result()
    # merging a restored state is exact; updating it needs the class weights again
    with pytest.raises(ValueError, match="weight"):
        restored.update(np.zeros((1, 3)), [0])
    again = Accumulator.from_bytes(data, weight=[1.0, 2.0, 3.0])
    logits, labels = rng.standard_normal((10, 3)), rng.integers(0, 3, size=10)
    again.update(logits, labels)
    acc.update(logits, labels)
    assert again.result() == acc.result()
    with pytest.raises(ValueError, match="weight: not the array"):
        Accumulator.from_bytes(data, weight=[1.0, 2.0, 4.0])


def test_empty_and_reset():
    acc = Accumulator("mse", reduction="mean")
    assert math.isnan(acc.result())
    assert Accumulator("mse", reduction="sum").result() == 0.0
    acc.update(np.ones(3), np.zeros(3))
    assert acc.result() == 1.0
    acc.reset()
    assert math.isnan(acc.result())


def test_bad_use():
    with pytest.raises(ValueError, match="loss"):
        Accumulator("hinge")
    with pytest.raises(ValueError, match='"none"'):
        Accumulator("mse", reduction="none")
    with pytest.raises(TypeError, match="unexpected option"):
        Accumulator("mse", weight=[1.0])
    with pytest.raises(ValueError, match="different losses or options"):
        Accumulator("mse").merge(Accumulator("mae"))
    with pytest.raises(ValueError, match="different losses or options"):
        Accumulator("cross_entropy", label_smoothing=0.1).merge(Accumulator("cross_entropy"))
    with pytest.raises(TypeError, match="Accumulator"):
        Accumulator("mse").merge(3)
    acc = Accumulator("mse")
    acc.update(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="do not match"):
        acc.update(np.zeros((2, 4)), np.zeros((2, 4)))
    with pytest.raises(TypeError, match="takes"):
        acc.update(np.zeros(3))
    with pytest.raises(ValueError, match="in-batch"):
        Accumulator("info_nce").update(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="not an Accumulator state"):
        Accumulator.from_bytes(b"junk")
    data = bytearray(Accumulator("mse").update(np.ones(2), np.zeros(2)).to_bytes())
    data[-5] ^= 0xFF
    with pytest.raises(ValueError):
        Accumulator.from_bytes(bytes(data)).result()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("normalize", [False, True])
def test_info_nce_queue_split_over_accumulators(isa, reduction, normalize):
    # The same queries against shards of one queue, merged: each row's log-sum-exp within 2 ulp of
    # the one-call one (an exp sum in another order), and so the reduced loss.
    rng = np.random.default_rng(5)
    q, k = rng.standard_normal((37, 8)), rng.standard_normal((37, 8))
    queue = rng.standard_normal((1000, 8)) * 3
    options = {"reduction": reduction, "temperature": 0.1, "normalize": normalize}
    expected_rows = fastloss.info_nce(q, k, queue, temperature=0.1, normalize=normalize, reduction="none")
    expected = fastloss.info_nce(q, k, queue, **options)
    for cuts in ([0, 1000], [0, 300, 1000], [0, 256, 257, 600, 1000], [0, 0, 1000]):
        shards = [Accumulator("info_nce", queue_split=True, **options) for _ in cuts[:-1]]
        for acc, a, b in zip(shards, cuts[:-1], cuts[1:], strict=True):
            acc.update(q[:20], k[:20], queue[a:b])  # rows may come in pieces too
            acc.update(q[20:], k[20:], queue[a:b])
        merged = shards[0]
        for other in shards[1:]:
            merged.merge(pickle.loads(pickle.dumps(other)))
        lse_split = np.logaddexp(merged._positive, merged._shard_lse)
        lse_one = expected_rows + merged._positive
        assert np.all(np.abs(lse_split - lse_one) <= 2 * np.spacing(np.abs(lse_one))), cuts
        assert merged.result() == pytest.approx(expected, rel=1e-13)


def test_info_nce_queue_split_bad_use():
    rng = np.random.default_rng(6)
    q, k, queue = rng.standard_normal((4, 3)), rng.standard_normal((4, 3)), rng.standard_normal((9, 3))
    with pytest.raises(ValueError, match="unpaired"):
        Accumulator("info_nce", queue_split=True, negative_mode="paired")
    with pytest.raises(ValueError, match="negative_keys"):
        Accumulator("info_nce", queue_split=True, negative_keys=queue)
    a = Accumulator("info_nce", queue_split=True).update(q, k, queue[:5])
    with pytest.raises(ValueError, match="different queries"):
        a.merge(Accumulator("info_nce", queue_split=True).update(q[:3], k[:3], queue[5:]))
    with pytest.raises(ValueError, match="different losses or options"):
        a.merge(Accumulator("info_nce", negative_keys=queue))
    with pytest.raises(TypeError, match="queue_split"):
        a.update(q, k)
