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


def cross_entropy_grad_ref(logits, target, reduction="mean", weight=None, ignore_index=-100,
                           label_smoothing=0.0):
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


def info_nce_grad_ref(query, positive_key, negative_keys=None, temperature=0.07, reduction="mean",
                      negative_mode="unpaired", normalize=False, symmetric=False):
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
            logits = np.concatenate([np.sum(qh * kh, axis=1, keepdims=True),
                                     np.einsum("nd,nmd->nm", qh, nh)], axis=1)
        g = softmax_minus_onehot(logits / temperature, np.zeros(n, dtype=np.int64)) * (row_scale / temperature)
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
