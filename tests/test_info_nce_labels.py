"""info_nce with labels (SupCon positives in-batch, false-negative elimination with a queue or
paired negatives), decoupled (DCL) and, in fastloss.torch, a learnable temperature.

The reference is float64 NumPy written from the definitions, row by row:
  in-batch:  P(i) = {i} | {j : key_labels[j] == query_labels[i]}, loss_i = LSE_{j in D(i)} z_ij -
             mean_{p in P(i)} z_ip, D(i) = all keys, or (decoupled) the keys outside P(i);
  negatives: z_i0 the positive, a negative of the query's label dropped, D(i) = {0} + kept
             negatives, or (decoupled) the kept negatives; loss_i = LSE_D - z_i0;
  an empty D(i) gives -inf.
Gradients: dz_ij = softmax_D(i)(j) [j in D(i)] - [j in P(i)] / |P(i)|, through the products by
hand (normalize=False), by central differences of the reference (normalize=True).
"""

from __future__ import annotations

import fastloss
import numpy as np
import pytest
from fastloss import _core

ISAS = list(_core.available_isas())


def _unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _lse(values):
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return -np.inf
    top = values.max()
    return top + np.log(np.exp(values - top).sum())


def _softmax(values):
    values = np.asarray(values, dtype=np.float64)
    return np.exp(values - _lse(values))


def ref_rows(q, k, neg, *, mode, tau, normalize, ql, kl, decoupled):
    """Row losses and the dz of every row (as dict: logit name -> coefficient of sum_i loss_i)."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    if normalize:
        q, k = _unit(q), _unit(k)
    n = q.shape[0]
    losses = np.empty(n)
    dq, dk = np.zeros_like(q), np.zeros_like(k)
    dneg = None
    if mode == "in-batch":
        z = q @ k.T / tau
        for i in range(n):
            positive = np.zeros(n, bool)
            positive[i] = True
            if ql is not None:
                positive |= np.asarray(kl) == ql[i]
            in_sum = ~positive if decoupled else np.ones(n, bool)
            losses[i] = _lse(z[i, in_sum]) - z[i, positive].mean()
            dz = np.zeros(n)
            if in_sum.any():
                dz[in_sum] = _softmax(z[i, in_sum])
            dz[positive] -= 1.0 / positive.sum()
            dq[i] += dz @ k / tau
            dk += np.outer(dz, q[i]) / tau
        return losses, (dq, dk, None)
    neg = np.asarray(neg, np.float64)
    if normalize:
        neg = _unit(neg)
    dneg = np.zeros_like(neg)
    for i in range(n):
        keys = neg if mode == "unpaired" else neg[i]
        labels = None if ql is None else (np.asarray(kl) if mode == "unpaired" else np.asarray(kl)[i])
        kept = np.ones(len(keys), bool) if labels is None else labels != ql[i]
        z0 = q[i] @ k[i] / tau
        zn = keys @ q[i] / tau
        values = zn[kept] if decoupled else np.concatenate([[z0], zn[kept]])
        losses[i] = _lse(values) - z0
        p = _softmax(values) if values.size else np.zeros(0)
        dzn = np.zeros(len(keys))
        dzn[kept] = p if decoupled else p[1:]
        dz0 = (0.0 if decoupled else p[0]) - 1.0
        dq[i] += (dz0 * k[i] + dzn @ keys) / tau
        dk[i] += dz0 * q[i] / tau
        if mode == "unpaired":
            dneg += np.outer(dzn, q[i]) / tau
        else:
            dneg[i] += np.outer(dzn, q[i]) / tau
    return losses, (dq, dk, dneg)


def ref_loss(q, k, neg, *, mode, tau, normalize, ql, kl, decoupled, symmetric=False):
    rows = ref_rows(q, k, neg, mode=mode, tau=tau, normalize=normalize, ql=ql, kl=kl, decoupled=decoupled)[0]
    if symmetric:
        back = ref_rows(
            k, q, None, mode=mode, tau=tau, normalize=normalize, ql=kl, kl=ql, decoupled=decoupled
        )
        rows = 0.5 * (rows + back[0])
    return rows


def numeric_grads(q, k, neg, h=1e-6, **options):
    def total(arrays):
        return ref_loss(*arrays, **options).sum()

    arrays = [np.array(a, np.float64) for a in (q, k)] + (
        [None] if neg is None else [np.array(neg, np.float64)]
    )
    grads = []
    for array in arrays:
        if array is None:
            grads.append(None)
            continue
        grad = np.zeros_like(array)
        for position in np.ndindex(array.shape):
            saved = array[position]
            array[position] = saved + h
            up = total(arrays)
            array[position] = saved - h
            down = total(arrays)
            array[position] = saved
            grad[position] = (up - down) / (2 * h)
        grads.append(grad)
    return grads


def case(mode, n=7, m=9, d=4, classes=3, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, d)).astype(dtype)
    k = rng.standard_normal((n, d)).astype(dtype)
    ql = rng.integers(0, classes, n)
    if mode == "in-batch":
        return q, k, None, ql, rng.integers(0, classes, n)
    if mode == "unpaired":
        return q, k, rng.standard_normal((m, d)).astype(dtype), ql, rng.integers(0, classes, m)
    return q, k, rng.standard_normal((n, m, d)).astype(dtype), ql, rng.integers(0, classes, (n, m))


MODES = ["in-batch", "unpaired", "paired"]


def _call(q, k, neg, mode, **options):
    return fastloss.info_nce(q, k, neg, negative_mode="paired" if mode == "paired" else "unpaired", **options)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("labels", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_forward_and_gradients_match_reference(mode, labels, decoupled, isa):
    q, k, neg, ql, kl = case(mode, seed=MODES.index(mode) * 4 + 2 * labels + decoupled)
    if not labels:
        ql = kl = None
    tau = 0.5
    previous = _core.active_isa()
    _core.set_active_isa(isa)
    try:
        rows, grads = _call(
            q,
            k,
            neg,
            mode,
            temperature=tau,
            reduction="none",
            query_labels=ql,
            key_labels=kl,
            decoupled=decoupled,
            return_grad=True,
        )
    finally:
        _core.set_active_isa(previous)
    expected, expected_grads = ref_rows(
        q, k, neg, mode=mode, tau=tau, normalize=False, ql=ql, kl=kl, decoupled=decoupled
    )
    np.testing.assert_allclose(rows, expected, rtol=1e-12, atol=1e-12)
    # return_grad with reduction="none" is the gradient of sum_i loss_i
    for got, want in zip(grads, expected_grads, strict=True):
        if want is None:
            assert got is None
        else:
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_normalized_gradients_match_central_differences(mode, decoupled):
    q, k, neg, ql, kl = case(mode, n=5, m=6, d=3, seed=7)
    options = dict(mode=mode, tau=0.3, normalize=True, ql=ql, kl=kl, decoupled=decoupled)
    loss, grads = _call(
        q,
        k,
        neg,
        mode,
        temperature=0.3,
        normalize=True,
        reduction="sum",
        query_labels=ql,
        key_labels=kl,
        decoupled=decoupled,
        return_grad=True,
    )
    np.testing.assert_allclose(loss, ref_loss(q, k, neg, **options).sum(), rtol=1e-12)
    for got, want in zip(grads, numeric_grads(q, k, neg, **options), strict=True):
        if want is None:
            assert got is None
        else:
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("decoupled", [False, True])
def test_symmetric_swaps_the_labels(decoupled):
    q, k, _, ql, kl = case("in-batch", n=6, d=3, seed=3)
    options = dict(mode="in-batch", tau=0.4, normalize=False, ql=ql, kl=kl, decoupled=decoupled)
    got, grads = fastloss.info_nce(
        q,
        k,
        temperature=0.4,
        symmetric=True,
        reduction="none",
        query_labels=ql,
        key_labels=kl,
        decoupled=decoupled,
        return_grad=True,
    )
    np.testing.assert_allclose(got, ref_loss(q, k, None, symmetric=True, **options), rtol=1e-12)

    numeric = numeric_grads(q, k, None, symmetric=True, **options)
    np.testing.assert_allclose(grads[0], numeric[0], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(grads[1], numeric[1], rtol=1e-6, atol=1e-8)


def test_key_labels_default_to_query_labels_in_batch():
    q, k, _, ql, _ = case("in-batch", seed=4)
    assert fastloss.info_nce(q, k, query_labels=ql) == fastloss.info_nce(q, k, query_labels=ql, key_labels=ql)
    expected = ref_loss(q, k, None, mode="in-batch", tau=0.07, normalize=False, ql=ql, kl=ql, decoupled=False)
    np.testing.assert_allclose(fastloss.info_nce(q, k, query_labels=ql), expected.mean(), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("mode", MODES)
def test_many_tiles_and_chunks(mode, dtype):
    # N = 300 in-batch: two key tiles (256) and four query blocks (96); a queue of 2100: three
    # chunks (>= 1024 keys each) and partial tiles; 2 classes, so every tile holds labels to mask.
    n, m = (300, 0) if mode == "in-batch" else ((20, 2100) if mode == "unpaired" else (6, 600))
    q, k, neg, ql, kl = case(mode, n=n, m=m, d=9, classes=4, seed=11, dtype=dtype)
    q, k = _unit(q).astype(dtype), _unit(k).astype(dtype)
    neg = None if neg is None else _unit(neg).astype(dtype)
    rtol = 1e-4 if dtype == np.float32 else 1e-11
    for decoupled in (False, True):
        got, grads = _call(
            q,
            k,
            neg,
            mode,
            temperature=0.2,
            reduction="none",
            query_labels=ql,
            key_labels=kl,
            decoupled=decoupled,
            return_grad=True,
        )
        expected, expected_grads = ref_rows(
            q, k, neg, mode=mode, tau=0.2, normalize=False, ql=ql, kl=kl, decoupled=decoupled
        )
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol)
        for g, want in zip(grads, expected_grads, strict=True):
            if want is not None:
                np.testing.assert_allclose(g, want, rtol=rtol, atol=rtol * 10)


def test_unsigned_and_narrow_integer_labels():
    q, k, neg, ql, kl = case("unpaired", seed=5)
    expected = _call(q, k, neg, "unpaired", query_labels=ql, key_labels=kl)
    for dtype in (np.uint8, np.int16, np.uint64):
        assert (
            _call(q, k, neg, "unpaired", query_labels=ql.astype(dtype), key_labels=kl.astype(dtype))
            == expected
        )


# -- an empty log-sum-exp ----------------------------------------------------------------------


@pytest.mark.parametrize("isa", ISAS)
def test_empty_denominator_is_minus_inf_with_finite_gradients(isa):
    rng = np.random.default_rng(6)
    q, k = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    same = np.zeros(5, dtype=np.int64)  # every key a positive: decoupled leaves nothing to sum
    previous = _core.active_isa()
    _core.set_active_isa(isa)
    try:
        rows, (dq, dk, _) = fastloss.info_nce(
            q, k, query_labels=same, decoupled=True, reduction="none", temperature=0.5, return_grad=True
        )
        # a queue whose every negative is a false negative, decoupled
        neg = rng.standard_normal((300, 3))
        queue_rows, queue_grads = fastloss.info_nce(
            q,
            k,
            neg,
            query_labels=same,
            key_labels=np.zeros(300, np.int64),
            decoupled=True,
            reduction="none",
            temperature=0.5,
            return_grad=True,
        )
        # one row, no labels, decoupled: its only key is its positive
        single = fastloss.info_nce(q[:1], k[:1], decoupled=True, reduction="none")
        # mixed: only some rows empty (paired)
        pneg = rng.standard_normal((5, 4, 3))
        plabels = np.ones((5, 4), np.int64)
        plabels[0] = 0
        paired_rows, paired_grads = fastloss.info_nce(
            q,
            k,
            pneg,
            negative_mode="paired",
            query_labels=same,
            key_labels=plabels,
            decoupled=True,
            reduction="none",
            temperature=0.5,
            return_grad=True,
        )
    finally:
        _core.set_active_isa(previous)
    assert np.all(rows == -np.inf) and np.all(queue_rows == -np.inf) and single[0] == -np.inf
    assert paired_rows[0] == -np.inf and np.all(np.isfinite(paired_rows[1:]))
    # the gradient is the positives' term alone: dz_ip = -1 / |P(i)| = -1/5
    np.testing.assert_allclose(dq, -(k.sum(0) / 5)[None, :].repeat(5, 0) / 0.5, rtol=1e-12)
    np.testing.assert_allclose(dk, -(q.sum(0) / 5)[None, :].repeat(5, 0) / 0.5, rtol=1e-12)
    np.testing.assert_allclose(queue_grads[0], -k / 0.5, rtol=1e-12)
    np.testing.assert_allclose(queue_grads[1], -q / 0.5, rtol=1e-12)
    assert np.all(queue_grads[2] == 0.0)
    assert np.all(paired_grads[2][0] == 0.0)
    assert np.all(np.isfinite(paired_grads[0])) and np.all(np.isfinite(paired_grads[2]))
    expected = ref_rows(
        q, k, pneg, mode="paired", tau=0.5, normalize=False, ql=same, kl=plabels, decoupled=True
    )
    np.testing.assert_allclose(paired_rows, expected[0], rtol=1e-12)
    for got, want in zip(paired_grads, expected[1], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert fastloss.info_nce(q, k, query_labels=same, decoupled=True) == -np.inf


# -- argument checks ---------------------------------------------------------------------------


def test_label_errors_name_the_argument():
    q, k, neg, ql, kl = case("unpaired", n=4, m=6)
    with pytest.raises(TypeError, match="query_labels"):
        fastloss.info_nce(q, k, query_labels=ql.astype(np.float64))
    with pytest.raises(TypeError, match="key_labels"):
        fastloss.info_nce(q, k, query_labels=ql, key_labels=np.zeros(4))
    with pytest.raises(ValueError, match=r"query_labels.*\(4,\).*\(3,\)"):
        fastloss.info_nce(q, k, query_labels=ql[:3])
    with pytest.raises(ValueError, match=r"key_labels.*\(4,\).*\(5,\)"):
        fastloss.info_nce(q, k, query_labels=ql, key_labels=np.zeros(5, np.int64))
    with pytest.raises(ValueError, match=r"key_labels.*\(6,\).*\(4,\)"):
        fastloss.info_nce(q, k, neg, query_labels=ql, key_labels=ql)
    with pytest.raises(ValueError, match="key_labels: given without query_labels"):
        fastloss.info_nce(q, k, key_labels=ql)
    with pytest.raises(ValueError, match="key_labels: required"):
        fastloss.info_nce(q, k, neg, query_labels=ql)
    with pytest.raises(ValueError, match="key_labels: given without query_labels"):
        fastloss.info_nce(q, k, neg, key_labels=kl)
    pneg = np.zeros((4, 6, 3 + 1))
    with pytest.raises(ValueError, match=r"key_labels.*\(4, 6\).*\(6,\)"):
        fastloss.info_nce(q, k, pneg, negative_mode="paired", query_labels=ql, key_labels=kl)
    with pytest.raises(ValueError, match="^query_labels: cannot be converted"):
        fastloss.info_nce(q, k, query_labels=[[0, 1], [2]])
    with pytest.raises(TypeError, match="^key_labels must hold integers"):
        fastloss.info_nce(q, k, query_labels=ql, key_labels=["a", "b", "c", "d"])
    with pytest.raises(TypeError, match="^query_labels must hold integers"):
        fastloss.info_nce(q, k, query_labels=np.array([True, False, True, True]))
    with pytest.raises(TypeError, match="decoupled"):
        fastloss.info_nce(q, k, decoupled="yes")


# -- fastloss.torch: labels and a learnable temperature -----------------------------------------


def torch_reference(q, k, neg, tau, *, mode, normalize, ql, kl, decoupled, symmetric=False):
    """Row losses by plain torch operations (full logits, masks), differentiable in everything."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    if normalize:
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        neg = None if neg is None else F.normalize(neg, dim=-1)
    minus_inf = torch.tensor(-torch.inf, dtype=q.dtype)

    def in_batch(a, b, la, lb):
        z = a @ b.T / tau
        positive = torch.eye(len(a), dtype=torch.bool)
        if la is not None:
            positive = positive | (la[:, None] == lb[None, :])
        in_sum = ~positive if decoupled else torch.ones_like(positive)
        lse = torch.logsumexp(torch.where(in_sum, z, minus_inf), dim=1)
        return lse - (z * positive).sum(1) / positive.sum(1)

    if mode == "in-batch":
        rows = in_batch(q, k, ql, kl)
        return 0.5 * (rows + in_batch(k, q, kl, ql)) if symmetric else rows
    z0 = (q * k).sum(1, keepdim=True) / tau
    zn = q @ neg.T / tau if mode == "unpaired" else torch.einsum("nd,nmd->nm", q, neg) / tau
    kept = torch.ones_like(zn, dtype=torch.bool)
    if ql is not None:
        kept = (kl[None, :] if mode == "unpaired" else kl) != ql[:, None]
    zn = torch.where(kept, zn, minus_inf)
    logits = zn if decoupled else torch.cat([z0, zn], dim=1)
    return torch.logsumexp(logits, dim=1) - z0[:, 0]


def _torch_case(mode, dtype, seed=0, n=6, m=7, d=4):
    torch = pytest.importorskip("torch")
    q, k, neg, ql, kl = case(mode, n=n, m=m, d=d, seed=seed)
    tensors = [torch.tensor(x, dtype=dtype, requires_grad=True) for x in (q, k)]
    neg_t = None if neg is None else torch.tensor(neg, dtype=dtype, requires_grad=True)
    return tensors[0], tensors[1], neg_t, torch.tensor(ql), torch.tensor(kl)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_torch_learnable_temperature_matches_autograd(mode, decoupled, reduction):
    torch = pytest.importorskip("torch")
    import fastloss.torch as ft

    q, k, neg, ql, kl = _torch_case(mode, torch.float64, seed=2)
    log_scale = torch.tensor(np.log(1 / 0.3), dtype=torch.float64, requires_grad=True)
    up = torch.linspace(0.5, 2.0, q.shape[0], dtype=torch.float64)
    got = ft.info_nce(
        q,
        k,
        neg,
        1 / log_scale.exp(),
        reduction,
        "paired" if mode == "paired" else "unpaired",
        True,
        query_labels=ql,
        key_labels=kl,
        decoupled=decoupled,
    )
    (got * up if reduction == "none" else got).sum().backward()
    ours = [x.grad.clone() for x in (q, k, neg, log_scale) if x is not None]
    for x in (q, k, neg, log_scale):
        if x is not None:
            x.grad = None
    rows = torch_reference(
        q, k, neg, 1 / log_scale.exp(), mode=mode, normalize=True, ql=ql, kl=kl, decoupled=decoupled
    )
    want = rows if reduction == "none" else rows.mean()
    (want * up if reduction == "none" else want).sum().backward()
    torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)
    for a, b in zip(ours, [x.grad for x in (q, k, neg, log_scale) if x is not None], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_torch_symmetric_temperature_and_module():
    torch = pytest.importorskip("torch")
    import fastloss.torch as ft

    q, k, _, ql, kl = _torch_case("in-batch", torch.float64, seed=8)
    tau = torch.nn.Parameter(torch.tensor([0.25], dtype=torch.float64))
    module = ft.InfoNCE(temperature=tau, symmetric=True, decoupled=True)
    assert [p is tau for p in module.parameters()] == [True]
    got = module(q, k, query_labels=ql, key_labels=kl)
    got.backward()
    ours = [x.grad.clone() for x in (q, k, tau)]
    for x in (q, k, tau):
        x.grad = None
    want = torch_reference(
        q, k, None, tau, mode="in-batch", normalize=True, ql=ql, kl=kl, decoupled=True, symmetric=True
    ).mean()
    want.backward()
    torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)
    for a, b in zip(ours, [q.grad, k.grad, tau.grad], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert ours[2].shape == (1,)


def test_torch_float32_and_constant_tensor_temperature():
    torch = pytest.importorskip("torch")
    import fastloss.torch as ft

    q, k, neg, ql, kl = _torch_case("unpaired", torch.float32, seed=9, n=20, m=300, d=8)
    tau = torch.tensor(0.1, requires_grad=True)
    got = ft.info_nce(q, k, neg, tau, normalize=True, query_labels=ql, key_labels=kl)
    got.backward()
    want = torch_reference(
        q.double(),
        k.double(),
        neg.double(),
        tau.double(),
        mode="unpaired",
        normalize=True,
        ql=ql,
        kl=kl,
        decoupled=False,
    ).mean()
    (d_tau,) = torch.autograd.grad(want, tau)
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tau.grad.double(), d_tau.double(), rtol=1e-4, atol=1e-4)
    # a tensor temperature that does not require grad is a constant; a Python float as before
    fixed = torch.tensor(0.1, dtype=torch.float64)
    with torch.no_grad():
        assert (
            ft.info_nce(q, k, neg, fixed, normalize=True).item()
            == ft.info_nce(q, k, neg, 0.1, normalize=True).item()
        )
    with pytest.raises(ValueError, match="temperature"):
        ft.info_nce(q, k, neg, torch.ones(2))
    with pytest.raises(TypeError, match="temperature"):
        ft.info_nce(q, k, neg, torch.tensor(1))
    with pytest.raises(ValueError, match="temperature"):
        ft.info_nce(q, k, neg, torch.tensor(-1.0))


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_torch_gradcheck_with_temperature(mode, decoupled):
    torch = pytest.importorskip("torch")
    import fastloss.torch as ft

    q, k, neg, ql, kl = _torch_case(mode, torch.float64, seed=10, n=4, m=5, d=3)
    tau = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    negative_mode = "paired" if mode == "paired" else "unpaired"

    def loss(*args):
        q_, k_, t_ = args[0], args[1], args[-1]
        n_ = args[2] if len(args) == 4 else None
        return ft.info_nce(
            q_, k_, n_, t_, "sum", negative_mode, True, query_labels=ql, key_labels=kl, decoupled=decoupled
        )

    inputs = (q, k, tau) if neg is None else (q, k, neg, tau)
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-6)


# -- streaming and dask ------------------------------------------------------------------------


def _bits(x):
    return np.float64(x).tobytes()


@pytest.mark.parametrize("decoupled", [False, True])
def test_accumulator_with_queue_labels_gives_the_one_call_bits(decoupled):
    q, k, neg, ql, kl = case("unpaired", n=30, m=500, d=8, classes=6, seed=12)
    once = fastloss.info_nce(q, k, neg, query_labels=ql, key_labels=kl, decoupled=decoupled, normalize=True)
    acc = fastloss.Accumulator(
        "info_nce", negative_keys=neg, key_labels=kl, decoupled=decoupled, normalize=True
    )
    for a, b in ((0, 7), (7, 20), (20, 30)):
        acc.update(q[a:b], k[a:b], query_labels=ql[a:b])
    assert _bits(acc.result()) == _bits(once)
    restored = fastloss.Accumulator.from_bytes(acc.to_bytes(), negative_keys=neg, key_labels=kl)
    assert _bits(restored.result()) == _bits(once)
    restored.update(q[:3], k[:3], query_labels=ql[:3])  # takes further updates with the arrays
    with pytest.raises(ValueError, match="key_labels"):
        fastloss.Accumulator("info_nce", negative_keys=neg, key_labels=kl).update(q, k)
    with pytest.raises(TypeError, match="key_labels"):
        fastloss.Accumulator("info_nce", negative_keys=neg, key_labels=kl).update(
            q, k, query_labels=ql, key_labels=kl
        )
    with pytest.raises(ValueError, match="key_labels"):
        fastloss.Accumulator("info_nce", key_labels=kl)
    with pytest.raises(TypeError, match="query_labels"):
        fastloss.Accumulator("mse").update(q, k, query_labels=ql)


def test_accumulator_paired_and_queue_split_labels():
    q, k, neg, ql, kl = case("paired", n=12, m=9, d=5, seed=13)
    once = fastloss.info_nce(q, k, neg, negative_mode="paired", query_labels=ql, key_labels=kl)
    acc = fastloss.Accumulator("info_nce", negative_mode="paired")
    acc.update(q[:5], k[:5], neg[:5], query_labels=ql[:5], key_labels=kl[:5])
    acc.update(q[5:], k[5:], neg[5:], query_labels=ql[5:], key_labels=kl[5:])
    assert _bits(acc.result()) == _bits(once)

    q, k, neg, ql, kl = case("unpaired", n=10, m=600, d=6, classes=4, seed=14)
    for decoupled in (False, True):
        once = fastloss.info_nce(q, k, neg, query_labels=ql, key_labels=kl, decoupled=decoupled)
        shards = []
        for a, b in ((0, 250), (250, 600)):
            shard = fastloss.Accumulator("info_nce", queue_split=True, decoupled=decoupled)
            shard.update(q, k, neg[a:b], query_labels=ql, key_labels=kl[a:b])
            shards.append(shard)
        merged = shards[0].merge(shards[1]).result()
        np.testing.assert_allclose(merged, once, rtol=1e-14)  # the documented 2 ulp


def test_dask_labels_match_one_call():
    da = pytest.importorskip("dask.array")
    import fastloss.dask as fd

    q, k, neg, ql, kl = case("unpaired", n=40, m=300, d=6, classes=5, seed=15)
    once = fastloss.info_nce(q, k, neg, query_labels=ql, key_labels=kl, decoupled=True, reduction="none")
    got = fd.info_nce(
        da.from_array(q, chunks=(13, 6)),
        da.from_array(k, chunks=(13, 6)),
        neg,
        query_labels=da.from_array(ql, chunks=7),
        key_labels=kl,
        decoupled=True,
        reduction="none",
    ).compute()
    assert np.array_equal(got, once)
    q, k, neg, ql, kl = case("paired", n=20, m=7, d=4, seed=16)
    once = fastloss.info_nce(q, k, neg, negative_mode="paired", query_labels=ql, key_labels=kl)
    got = fd.info_nce(
        da.from_array(q, chunks=(6, 4)),
        da.from_array(k, chunks=(6, 4)),
        da.from_array(neg, chunks=(6, 7, 4)),
        negative_mode="paired",
        query_labels=ql,
        key_labels=da.from_array(kl, chunks=(5, 7)),
    ).compute()
    assert _bits(got) == _bits(once)
    q, k, _, ql, kl = case("in-batch", n=20, d=4, seed=17)
    once = fastloss.info_nce(q, k, query_labels=ql, symmetric=True)
    assert _bits(
        fd.info_nce(da.from_array(q), da.from_array(k), query_labels=ql, symmetric=True).compute()
    ) == _bits(once)
    with pytest.raises(ValueError, match="key_labels"):
        fd.info_nce(da.from_array(q), da.from_array(k), key_labels=kl)


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_torch_float32_values_and_gradients(mode, decoupled):
    torch = pytest.importorskip("torch")
    import fastloss.torch as ft

    q, k, neg, ql, kl = _torch_case(mode, torch.float32, seed=18, n=40, m=300, d=16)
    tau = torch.tensor(0.2, requires_grad=True)
    leaves = [x for x in (q, k, neg, tau) if x is not None]
    got = ft.info_nce(
        q,
        k,
        neg,
        tau,
        "mean",
        "paired" if mode == "paired" else "unpaired",
        True,
        query_labels=ql,
        key_labels=kl,
        decoupled=decoupled,
    )
    ours = torch.autograd.grad(got, leaves)
    want = torch_reference(
        q, k, neg, tau, mode=mode, normalize=True, ql=ql, kl=kl, decoupled=decoupled
    ).mean()
    theirs = torch.autograd.grad(want, leaves)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
