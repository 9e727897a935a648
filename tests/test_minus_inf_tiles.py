"""Logits of -inf in the online log-sum-exp: they add exp(-inf) = 0 and nothing else.

The defect (issue "Every CPU, proven"): a whole key tile of -inf logits gave the tile max -inf,
and exp(-inf - -inf) = NaN poisoned the row. -inf logits come from -inf inputs, and from finite
float32 inputs whose logits overflow float32 at a tiny temperature. The references are float64
logits written out and reduced with a max shift taken over the finite logits only, and PyTorch's
cross_entropy on the same logits. (InfoNCE's key tile is 256 keys, cpp/kernels/info_nce.inl.)
"""

from __future__ import annotations

import math

import fastloss
import numpy as np
import pytest

REDUCTIONS = ("none", "sum", "mean", "batchmean")
KEY_TILE = 256


def rows_from_logits(logits: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[:, 0] in float64; -inf logits contribute exp(-inf) = 0."""
    shift = logits.max(axis=1, keepdims=True)
    return np.log(np.exp(logits - shift).sum(axis=1)) + shift[:, 0] - logits[:, 0]


def reduce_rows(rows: np.ndarray, reduction: str):
    if reduction == "none":
        return rows
    return float(rows.sum()) if reduction == "sum" else float(rows.mean())


def queue_case(mode: str, m: int, first_inf: int, dtype=np.float64, seed: int = 0):
    """Queries with a positive first feature and negatives whose first feature is -inf from key
    first_inf on: those logits are -inf, the others finite."""
    rng = np.random.default_rng(seed)
    n, d = 5, 8
    q = rng.standard_normal((n, d))
    q[:, 0] = np.abs(q[:, 0]) + 0.1
    k = rng.standard_normal((n, d))
    shape = (m, d) if mode == "unpaired" else (n, m, d)
    neg = rng.standard_normal(shape)
    neg[..., first_inf:, :] = 0.0
    neg[..., first_inf:, 0] = -np.inf
    return q.astype(dtype), k.astype(dtype), neg.astype(dtype)


def queue_logits(q, k, neg, mode: str, temperature: float) -> np.ndarray:
    q64, k64, n64 = (np.asarray(a, np.float64) for a in (q, k, neg))
    with np.errstate(invalid="ignore"):  # 0 * -inf in the dot products of the zero features
        if mode == "unpaired":
            neg_logits = np.stack([[np.sum(qi * nj) for nj in n64] for qi in q64])
        else:
            neg_logits = np.stack([[np.sum(qi * nj) for nj in n64[i]] for i, qi in enumerate(q64)])
    pos = np.sum(q64 * k64, axis=1, keepdims=True)
    logits = np.concatenate([pos, neg_logits], axis=1) / temperature
    assert not np.isnan(logits).any()
    return logits


# The issue's reproducer (300 negatives, the last 44 -inf: a partial tile of -inf after a full
# finite one), a whole -inf tile inside a long queue, and -inf from the first key on.
QUEUES = [(300, 256), (2500, 2 * KEY_TILE), (2500, 2 * KEY_TILE + 1), (600, 0)]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("mode", ["unpaired", "paired"])
@pytest.mark.parametrize(("m", "first_inf"), QUEUES, ids=[f"m{m}-inf_from{f}" for m, f in QUEUES])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_minus_inf_negatives_add_nothing(isa, dtype, m, first_inf, mode, reduction):
    q, k, neg = queue_case(mode, m, first_inf, dtype)
    temperature = 0.5
    expected = reduce_rows(rows_from_logits(queue_logits(q, k, neg, mode, temperature)), reduction)
    got = fastloss.info_nce(q, k, neg, temperature=temperature, reduction=reduction, negative_mode=mode)
    assert not np.isnan(got).any(), f"NaN with {m - first_inf} -inf negatives"
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol)


def test_issue_reproducer_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((4, 8)), rng.standard_normal((4, 8))
    q[:, 0] = abs(q[:, 0])
    neg = rng.standard_normal((300, 8))
    neg[256:] = 0
    neg[256:, 0] = -np.inf
    logits = torch.from_numpy(queue_logits(q, k, neg, "unpaired", 0.07))
    expected = torch.nn.functional.cross_entropy(logits, torch.zeros(4, dtype=torch.long)).item()
    got = fastloss.info_nce(q, k, neg)
    assert math.isfinite(got)
    assert math.isclose(got, expected, rel_tol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("mode", ["unpaired", "paired", "in-batch"])
def test_float32_logits_that_overflow_to_minus_inf(isa, mode, reduction):
    # 1 / 1e-35 = 1e35 is a finite float32 logit; -1e4 / 1e-35 = -1e39 overflows to -inf: the
    # negatives have probability 0 and every row's loss is 0 (torch gives 0.0 on these logits).
    n, m = 3, 600
    q = np.ones((n, 1), np.float32)
    if mode == "in-batch":
        k = np.ones((n, 1), np.float32)
        k[1:] = -1e4  # row 0: its positive 1e35 and two -inf; rows 1, 2 lose to key 0
        got = fastloss.info_nce(q, k, temperature=1e-35, reduction="none")
        assert got[0] == 0.0 and not np.isnan(got).any()
        return
    neg = np.full((m, 1) if mode == "unpaired" else (n, m, 1), -1e4, np.float32)
    got = fastloss.info_nce(q, q, neg, temperature=1e-35, reduction=reduction, negative_mode=mode)
    expected = np.zeros(n) if reduction == "none" else 0.0
    np.testing.assert_array_equal(got, expected)
    _, grads = fastloss.info_nce(
        q, q, neg, temperature=1e-35, reduction=reduction, negative_mode=mode, return_grad=True
    )
    for name, g in zip(("query", "positive_key", "negative_keys"), grads, strict=False):
        assert np.isfinite(g).all(), f"non-finite gradient of {name}"


def test_issue_tiny_temperature_reproducer_matches_torch():
    torch = pytest.importorskip("torch")
    o = np.ones((1, 1), np.float32)
    neg = np.full((3, 1), -1e4, np.float32)
    logits32 = torch.tensor([[1.0 / 1e-35] + [-1e4 / 1e-35] * 3], dtype=torch.float32)
    expected = torch.nn.functional.cross_entropy(logits32, torch.zeros(1, dtype=torch.long)).item()
    assert expected == 0.0
    assert fastloss.info_nce(o, o, neg, temperature=1e-35) == expected


@pytest.mark.parametrize("c", [1, 3, 17, 300])
def test_cross_entropy_rows_of_minus_inf_logits(isa, c):
    # The same pattern in cross-entropy's row log-sum-exp: -inf logits beside a finite target.
    logits = np.full((4, c + 1), -np.inf, np.float32)
    logits[:, 0] = np.array([0.0, 5.0, -3.0, 80.0])
    got = fastloss.cross_entropy(logits, np.zeros(4, np.int64), reduction="none")
    np.testing.assert_array_equal(got, np.zeros(4, np.float32))
    logits[:, 1] = 1.0
    expected = np.log1p(np.exp(1.0 - logits[:, 0].astype(np.float64)))
    got = fastloss.cross_entropy(logits, np.zeros(4, np.int64), reduction="none")
    # float32 resolves a row's loss to a few ulps of its log-sum-exp (80 in the last row)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=8 * np.finfo(np.float32).eps * 80)
