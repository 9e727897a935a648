"""Plain float64 NumPy references for the four losses, written straight from SPEC.md's formulas.

Nothing here is clever: every input is converted to float64 first, the log-softmax is the
textbook max-subtracted one (float64 holds logits of +-3e38 and their differences), and sums
of finite values use ``math.fsum`` so the reference itself is correctly rounded.

Besides the values, the CE / InfoNCE references can return a per-row *error scale*: the sum of
the magnitudes that a floating-point evaluation of that row has to cancel,

    scale_i = sum_c |coef_ic| * (|x_ic| + |max_i| + |lse_i| + 1)

where ``loss_i = sum_c coef_ic * (lse_i - x_ic)``.  SPEC.md promises that an output is within
"a few ulps of the row's log-sum-exp"; the tests turn that into ``|got - ref| <= K * eps * scale``
(see ``assert_rows_close``).  For InfoNCE the logits are themselves dot products, so the scale
also carries ``max_j sum_d |q_id * k_jd| / temperature`` (the magnitude a float dot product of
that row has to cancel).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

# ---------------------------------------------------------------------------------------------
# helpers

_ERRSTATE = dict(invalid="ignore", over="ignore", divide="ignore", under="ignore")


def f64(a) -> np.ndarray:
    """Any array-like -> native-endian float64 ndarray (bool, int, float16, big-endian...)."""
    return np.array(np.asarray(a), dtype=np.float64)


def _fraction_to_float(value: Fraction) -> float:
    """The nearest float (ties to even), +-inf beyond the double range."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def exact_sum(values) -> float:
    """Correctly rounded sum of finite values; IEEE propagation (nan / inf) otherwise."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if np.all(np.isfinite(v)):
        try:
            return math.fsum(v.tolist())
        except OverflowError:  # a partial sum beyond the double range: the sum as Fractions
            return _fraction_to_float(sum((Fraction(x) for x in v.tolist()), Fraction(0)))
    with np.errstate(**_ERRSTATE):
        return float(np.sum(v))


def _divide(numerator: float, denominator: float) -> float:
    with np.errstate(**_ERRSTATE):
        return float(np.float64(numerator) / np.float64(denominator))


def _reduce_rows(rows: np.ndarray, reduction: str, mean_denominator: float, batch: int):
    if reduction == "none":
        return rows
    total = exact_sum(rows)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return _divide(total, mean_denominator)
    if reduction == "batchmean":
        return _divide(total, batch)
    raise ValueError(f"unknown reduction {reduction!r}")


# ---------------------------------------------------------------------------------------------
# MSE / MAE


def _regression(kind: str, pred, target, reduction="mean", sample_weight=None):
    p = f64(pred)
    t = f64(target)
    assert p.shape == t.shape and p.ndim >= 1
    with np.errstate(**_ERRSTATE):
        diff = p - t
        e = diff * diff if kind == "mse" else np.abs(diff)
        n = p.shape[0]
        per_row = e.size // n if n else 0
        if sample_weight is None:
            mean_den = float(e.size)
            batch_den = float(n)
        else:
            w = f64(sample_weight)
            assert w.shape == (n,)
            e = e * w.reshape((n,) + (1,) * (e.ndim - 1))
            mean_den = exact_sum(w) * per_row
            batch_den = exact_sum(w)
    return _reduce_rows(e, reduction, mean_den, batch_den)


def mse_ref(pred, target, reduction="mean", sample_weight=None):
    """(pred - target)**2, weighted per row, reduced as SPEC.md says."""
    return _regression("mse", pred, target, reduction, sample_weight)


def mae_ref(pred, target, reduction="mean", sample_weight=None):
    """|pred - target|, weighted per row, reduced as SPEC.md says."""
    return _regression("mae", pred, target, reduction, sample_weight)


# ---------------------------------------------------------------------------------------------
# log-softmax


def log_softmax_rows(x: np.ndarray):
    """Rows of float64 logits -> (logp, max, lse), the max-subtracted textbook formula."""
    with np.errstate(**_ERRSTATE):
        m = np.max(x, axis=1, keepdims=True)
        z = x - m
        log_s = np.log(np.sum(np.exp(z), axis=1, keepdims=True))
        logp = z - log_s
        lse = m + log_s
    return logp, m[:, 0], lse[:, 0]


# ---------------------------------------------------------------------------------------------
# cross-entropy (PyTorch's torch.nn.functional.cross_entropy, to the letter)


def _ce_rows(logits, target, weight=None, ignore_index=-100, label_smoothing=0.0):
    """Row losses, row error scales, the "mean" denominator, N, and whether input was (C,)."""
    x = f64(logits)
    single = x.ndim == 1
    if single:
        x = x[None, :]
    n, c = x.shape
    tgt = np.asarray(target)
    w = np.ones(c) if weight is None else f64(weight)
    assert w.shape == (c,)
    eps = float(label_smoothing)
    logp, m, lse = log_softmax_rows(x)
    with np.errstate(**_ERRSTATE):
        if np.issubdtype(tgt.dtype, np.floating):
            # probability targets: loss_i = -sum_c w_c * ((1-eps) p_ic + eps/C) * logp_ic
            p = f64(tgt).reshape(n, c)
            if eps > 0:
                p = p * (1.0 - eps) + eps / c
            coef = w[None, :] * p
            rows = -np.sum(coef * logp, axis=1)
            denominator = float(n)
        else:
            t = tgt.astype(np.int64).reshape(n)
            ignored = t == ignore_index
            safe_t = np.where(ignored, 0, t)
            assert np.all((safe_t >= 0) & (safe_t < c))
            picked = np.arange(n), safe_t
            nll = -w[safe_t] * logp[picked]
            coef = np.zeros((n, c))
            coef[picked] = w[safe_t]
            if eps > 0:
                smooth = -np.sum(w[None, :] * logp, axis=1)
                rows = (1.0 - eps) * nll + (eps / c) * smooth
                coef = (1.0 - eps) * coef + (eps / c) * w[None, :]
            else:
                rows = nll
            rows = np.where(ignored, 0.0, rows)
            coef[ignored] = 0.0
            denominator = exact_sum(w[safe_t][~ignored])
        mag = np.abs(x) + np.abs(m)[:, None] + np.abs(lse)[:, None] + 1.0
        scale = np.sum(np.abs(coef) * mag, axis=1)
    return rows, scale, denominator, n, single


def cross_entropy_ref(logits, target, reduction="mean", weight=None, ignore_index=-100, label_smoothing=0.0):
    """PyTorch semantics:

    index targets:  loss_i = (1-eps) * (-w[t_i] logp[t_i]) + eps/C * (-sum_c w[c] logp[c]),
                    ignored rows give 0; mean = sum_i loss_i / sum_{i not ignored} w[t_i]
                    (the count when weight is None); all ignored + mean -> nan.
    prob targets:   loss_i = -sum_c w[c] ((1-eps) p_ic + eps/C) logp_ic; mean = sum / N.
    batchmean:      sum / N.
    """
    rows, _, denominator, n, single = _ce_rows(logits, target, weight, ignore_index, label_smoothing)
    out = _reduce_rows(rows, reduction, denominator, n)
    if reduction == "none" and single:
        return np.asarray(rows[0])
    return out


def cross_entropy_scale(
    logits, target, reduction="mean", weight=None, ignore_index=-100, label_smoothing=0.0
):
    """The error scale of ``cross_entropy_ref``'s result, reduced the same way."""
    _, scale, denominator, n, single = _ce_rows(logits, target, weight, ignore_index, label_smoothing)
    if reduction == "none":
        return np.asarray(scale[0]) if single else scale
    return _reduce_abs(scale, reduction, denominator, n)


def _reduce_abs(scale, reduction, denominator, n):
    total = float(np.sum(scale))
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / denominator if denominator else math.inf
    return total / n


# ---------------------------------------------------------------------------------------------
# InfoNCE


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """x / max(||x||, 1e-12) along the last axis."""
    with np.errstate(**_ERRSTATE):
        norm = np.sqrt(np.sum(x * x, axis=-1, keepdims=True))
        return x / np.maximum(norm, 1e-12)


def _ce_true_first(logits: np.ndarray, true_index: np.ndarray, dot_mag: np.ndarray):
    """Row i: lse(logits_i) - logits_i[true_i]; and its error scale."""
    with np.errstate(**_ERRSTATE):
        _, m, lse = log_softmax_rows(logits)
        picked = logits[np.arange(logits.shape[0]), true_index]
        rows = lse - picked
        scale = np.abs(lse) + np.abs(m) + np.abs(picked) + dot_mag + 1.0
    return rows, scale


def _info_nce_rows(
    query,
    positive_key,
    negative_keys=None,
    temperature=0.07,
    negative_mode="unpaired",
    normalize=False,
    symmetric=False,
):
    q = f64(query)
    k = f64(positive_key)
    neg = None if negative_keys is None else f64(negative_keys)
    if normalize:
        q = l2_normalize(q)
        k = l2_normalize(k)
        neg = None if neg is None else l2_normalize(neg)
    n = q.shape[0]
    inv_t = 1.0 / float(temperature)
    with np.errstate(**_ERRSTATE):
        if neg is None:
            logits = (q @ k.T) * inv_t
            mag = (np.abs(q) @ np.abs(k).T) * inv_t
            labels = np.arange(n)
            a, sa = _ce_true_first(logits, labels, mag.max(axis=1))
            if not symmetric:
                return a, sa
            b, sb = _ce_true_first(logits.T.copy(), labels, mag.max(axis=0))
            return (a + b) / 2.0, (sa + sb) / 2.0
        pos = np.sum(q * k, axis=1) * inv_t
        pos_mag = np.sum(np.abs(q) * np.abs(k), axis=1) * inv_t
        if negative_mode == "unpaired":
            negl = (q @ neg.T) * inv_t
            neg_mag = (np.abs(q) @ np.abs(neg).T) * inv_t
        elif negative_mode == "paired":
            negl = np.einsum("nd,nmd->nm", q, neg) * inv_t
            neg_mag = np.einsum("nd,nmd->nm", np.abs(q), np.abs(neg)) * inv_t
        else:
            raise ValueError(negative_mode)
        logits = np.concatenate([pos[:, None], negl], axis=1)
        mag = np.concatenate([pos_mag[:, None], neg_mag], axis=1)
        return _ce_true_first(logits, np.zeros(n, dtype=np.int64), mag.max(axis=1))


def info_nce_ref(
    query,
    positive_key,
    negative_keys=None,
    temperature=0.07,
    reduction="mean",
    negative_mode="unpaired",
    normalize=False,
    symmetric=False,
):
    """InfoNCE from the formulas: explicit float64 logits + cross-entropy.

    in-batch: logits = q @ k.T / T, label of row i is i; symmetric averages with the key->query
              direction (the transposed logits), per row (a_i + b_i) / 2.
    unpaired: row i = [q_i.k+_i, q_i.n_1 .. q_i.n_M] / T, label 0.
    paired:   row i = [q_i.k+_i, q_i.n_i1 .. q_i.n_iM] / T, label 0.
    "mean" and "batchmean" average over the N rows.
    """
    rows, _ = _info_nce_rows(
        query, positive_key, negative_keys, temperature, negative_mode, normalize, symmetric
    )
    n = rows.shape[0]
    return _reduce_rows(rows, reduction, n, n)


def info_nce_scale(
    query,
    positive_key,
    negative_keys=None,
    temperature=0.07,
    reduction="mean",
    negative_mode="unpaired",
    normalize=False,
    symmetric=False,
):
    """The error scale of ``info_nce_ref``'s result, reduced the same way."""
    _, scale = _info_nce_rows(
        query, positive_key, negative_keys, temperature, negative_mode, normalize, symmetric
    )
    if reduction == "none":
        return scale
    n = scale.shape[0]
    return _reduce_abs(scale, reduction, n, n)


# ---------------------------------------------------------------------------------------------
# tolerances and comparisons, stated once for the whole suite

#: Regression losses (MSE/MAE): each element loss is one or two rounded operations, so
#: float32 outputs are within 1e-6 relative (about 8 ulps) of the float64 reference and the
#: float64-accumulated reductions within the same; float64 everything within 1e-12 relative.
REGRESSION_RTOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}

#: CE / InfoNCE: |got - ref| <= ULPS * eps(dtype) * scale (scale as in the module docstring).
ULPS = 8

#: Reductions of float32 row losses are accumulated in float64: on top of the per-row errors
#: the accumulation itself may add at most this relative error.
SUM_RTOL = 1e-12


def computation_dtype(*dtypes) -> np.dtype:
    """SPEC.md: float32 / float64 natively, float16 via float32, int / bool -> float64."""
    out = np.dtype(np.float32)
    for dt in dtypes:
        dt = np.dtype(dt)
        if dt.kind == "f" and dt.itemsize <= 4:
            continue
        out = np.dtype(np.float64)
    return out


def _check_nonfinite(got: np.ndarray, ref: np.ndarray, what: str):
    """NaN exactly where the reference is NaN; +-inf exactly where it is +-inf."""
    nan_got, nan_ref = np.isnan(got), np.isnan(ref)
    assert np.array_equal(nan_got, nan_ref), (
        f"{what}: NaN at {np.argwhere(nan_got).tolist()[:10]}, "
        f"reference NaN at {np.argwhere(nan_ref).tolist()[:10]}"
    )
    inf_got, inf_ref = np.isinf(got), np.isinf(ref)
    assert np.array_equal(inf_got, inf_ref), (
        f"{what}: inf at {np.argwhere(inf_got).tolist()[:10]}, "
        f"reference inf at {np.argwhere(inf_ref).tolist()[:10]}"
    )
    assert np.array_equal(got[inf_got], ref[inf_ref]), f"{what}: sign of inf differs"


def assert_rel_close(got, ref, rtol: float, what: str = "result"):
    """Elementwise |got - ref| <= rtol * |ref| + float32's tiny; IEEE specials equal."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != reference {ref.shape}"
    _check_nonfinite(got, ref, what)
    fin = np.isfinite(ref)
    err = np.abs(got[fin] - ref[fin])
    bound = rtol * np.abs(ref[fin]) + float(np.finfo(np.float32).tiny)
    bad = err > bound
    if np.any(bad):
        i = int(np.argmax(err - bound))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} values off; worst got {got[fin][i]!r} "
            f"ref {ref[fin][i]!r} (|err| {err[i]:.3e} > {bound[i]:.3e}, rtol {rtol})"
        )


def assert_scaled_close(got, ref, scale, dtype, what: str = "result", ulps: int = ULPS):
    """|got - ref| <= ulps * eps(dtype) * scale + SUM_RTOL * |ref|, IEEE specials equal."""
    eps = float(np.finfo(dtype).eps)
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != reference {ref.shape}"
    _check_nonfinite(got, ref, what)
    fin = np.isfinite(ref)
    err = np.abs(got[fin] - ref[fin])
    bound = ulps * eps * np.broadcast_to(scale, ref.shape)[fin] + SUM_RTOL * np.abs(ref[fin])
    bad = err > bound
    if np.any(bad):
        i = int(np.argmax(err - bound))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} values off; worst got {got[fin][i]!r} "
            f"ref {ref[fin][i]!r} (|err| {err[i]:.3e} > {bound[i]:.3e} = {ulps} ulps x scale "
            f"{np.broadcast_to(scale, ref.shape)[fin][i]:.3e})"
        )


# ---------------------------------------------------------------------------------------------
# Analytic gradients, float64, written from the formulas (appended to tests/reference.py).


def _reduction_divisor(reduction: str, mean_denominator: float, batch: int) -> float:
    if reduction in ("none", "sum"):
        return 1.0
    return mean_denominator if reduction == "mean" else float(batch)


def regression_grad_ref(kind: str, pred, target, reduction="mean", sample_weight=None):
    """d/d pred of the reduced loss (for "none": of the sum of the element losses).

    MSE: 2 (p - t) w_i; MAE: sign(p - t) w_i (0 where p == t); then divided by the reduction's
    denominator (size, or sum(w) * per-row elements, or N, or sum(w)).
    """
    p, t = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    d = p - t
    grad = 2.0 * d if kind == "mse" else np.sign(d)
    n = p.shape[0]
    per_row = p.size // n if n else 0
    if sample_weight is None:
        w = np.ones(n)
    else:
        w = np.asarray(sample_weight, dtype=np.float64)
    grad = grad * w.reshape((n,) + (1,) * (p.ndim - 1))
    weight_sum = float(w.sum())
    mean_den = weight_sum * per_row if sample_weight is not None else float(p.size)
    batch_den = weight_sum if sample_weight is not None else float(n)
    divisor = {"none": 1.0, "sum": 1.0, "mean": mean_den, "batchmean": batch_den}[reduction]
    return grad / divisor


def cross_entropy_grad_ref(
    logits, target, reduction="mean", weight=None, ignore_index=-100, label_smoothing=0.0
):
    """d/d logits. Every target is a distribution q over classes: a smoothed one-hot
    (1 - eps) e_t + eps / C for an index, (1 - eps) P + eps / C for probabilities. With class
    weights w the row loss is sum_c w_c q_c (lse - x_c), whose gradient is
    softmax * sum_c w_c q_c - w * q. Ignored rows get 0."""
    x = np.asarray(logits, dtype=np.float64)
    single = x.ndim == 1
    x2 = x.reshape(1, -1) if single else x
    n, c = x2.shape
    w = np.ones(c) if weight is None else np.asarray(weight, dtype=np.float64)
    eps = label_smoothing
    t = np.asarray(target)
    softmax = np.exp(x2 - x2.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)
    if t.dtype.kind == "f":
        q = (1.0 - eps) * t.reshape(n, c).astype(np.float64) + eps / c
        keep = np.ones(n, dtype=bool)
        mean_den = float(n)
    else:
        labels = t.reshape(n)
        keep = labels != ignore_index
        q = np.full((n, c), eps / c)
        q[np.flatnonzero(keep), labels[keep]] += 1.0 - eps
        mean_den = float(w[labels[keep]].sum())
    wq = w * q
    grad = softmax * wq.sum(axis=1, keepdims=True) - wq
    grad[~keep] = 0.0
    grad /= _reduction_divisor(reduction, mean_den, n)
    return grad.reshape(x.shape)


def _normalize_backward(x, g):
    """Chain rule through x / max(||x||, 1e-12), row-wise."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    floor = np.maximum(norm, 1e-12)
    x_hat = x / floor
    projection = np.where(norm > 1e-12, np.sum(x_hat * g, axis=-1, keepdims=True), 0.0)
    return (g - x_hat * projection) / floor


def info_nce_grad_ref(
    query,
    positive_key,
    negative_keys=None,
    temperature=0.07,
    reduction="mean",
    negative_mode="unpaired",
    normalize=False,
    symmetric=False,
):
    """(d_query, d_positive_key, d_negative_keys) from the materialised logits: with
    P = softmax(logits) and Y the one-hot true class, dL/dlogits = s_i (P - Y) / T per row."""
    q = np.asarray(query, dtype=np.float64)
    k = np.asarray(positive_key, dtype=np.float64)
    neg = None if negative_keys is None else np.asarray(negative_keys, dtype=np.float64)
    n = q.shape[0]
    row_scale = (1.0 / n if n else 1.0) if reduction in ("mean", "batchmean") else 1.0
    qh, kh = (l2_normalize(q), l2_normalize(k)) if normalize else (q, k)
    nh = None if neg is None else (l2_normalize(neg) if normalize else neg)

    def softmax_minus_onehot(logits, true_index):
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(logits.shape[0]), true_index] -= 1.0
        return p

    if nh is None:
        factor = row_scale * (0.5 if symmetric else 1.0) / temperature
        g = softmax_minus_onehot(qh @ kh.T / temperature, np.arange(n)) * factor
        d_qh, d_kh = g @ kh, g.T @ qh
        if symmetric:
            g2 = softmax_minus_onehot(kh @ qh.T / temperature, np.arange(n)) * factor
            d_kh, d_qh = d_kh + g2 @ qh, d_qh + g2.T @ kh
        d_nh = None
    else:
        if negative_mode == "unpaired":
            logits = np.concatenate([np.sum(qh * kh, axis=1, keepdims=True), qh @ nh.T], axis=1)
        else:
            logits = np.concatenate(
                [np.sum(qh * kh, axis=1, keepdims=True), np.einsum("nd,nmd->nm", qh, nh)], axis=1
            )
        g = softmax_minus_onehot(logits / temperature, np.zeros(n, dtype=np.int64)) * (
            row_scale / temperature
        )
        g_pos, g_neg = g[:, :1], g[:, 1:]
        if negative_mode == "unpaired":
            d_qh = g_pos * kh + g_neg @ nh
            d_nh = g_neg.T @ qh
        else:
            d_qh = g_pos * kh + np.einsum("nm,nmd->nd", g_neg, nh)
            d_nh = g_neg[:, :, None] * qh[:, None, :]
        d_kh = g_pos * qh
    if normalize:
        d_q, d_k = _normalize_backward(q, d_qh), _normalize_backward(k, d_kh)
        d_n = None if d_nh is None else _normalize_backward(neg, d_nh)
    else:
        d_q, d_k, d_n = d_qh, d_kh, d_nh
    return d_q, d_k, d_n
