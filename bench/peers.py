"""The implementations measured by ``fastloss bench``: fastloss and its peers.

Each peer turns a workload's data into a zero-argument callable (``prepare``), doing every
conversion a user would do once (tensors, device arrays, workspaces) outside the timed call.
The callable returns the loss as a Python float, or ``(loss, grads)`` for gradient workloads,
``grads`` being a tuple with one array per differentiated input (see ``workloads.reference``).
``prepare`` returns ``None`` when the peer has no formulation of that workload.
"""

from __future__ import annotations

import importlib
import inspect
import os
import warnings
from collections.abc import Callable

import numpy as np

from .timing import BlasThreads, cpu_count
from .workloads import Workload

__all__ = ["Peer", "all_peers", "PEER_NAMES"]

Fn = Callable[[], object]

# The numpy_fast workspace: blocks of about this many float32 elements (1 MiB) stay in L2.
_BLOCK_ELEMS = 1 << 18


class Peer:
    """One implementation under test."""

    name = ""
    description = ""
    #: False when the peer's thread count is fixed when it is imported: it is then measured at
    #: one thread count only (``measured_at``).
    threads_settable = True

    def __init__(self) -> None:
        self.version: str | None = None
        self.reason = ""  # why the peer is unavailable

    def available(self) -> bool:
        return True

    def set_threads(self, n: int) -> bool:
        """Run the peer's calls on ``n`` threads; True when it is known to do so now (its own
        pool reports ``n``). A row measured after False is not like for like: it gets no ratio."""
        return True

    def threads_how(self) -> str:
        """How the peer's threads are set, for the report."""
        return "single-threaded"

    def threads_set_by(self) -> str:
        """What sets the threads, in a word or two (each row's ``threads_set_by`` in the JSON)."""
        return "single-threaded"

    def measured_at(self, threads: list[int]) -> list[int]:
        """The ``--threads`` values the peer is measured at."""
        return list(threads)

    def prepare(self, w: Workload, data: dict[str, np.ndarray]) -> Fn | None:
        raise NotImplementedError

    def info(self) -> dict:
        return {
            "description": self.description,
            "version": self.version,
            "available": self.available(),
            "reason": self.reason,
            "threads": self.threads_how() if self.available() else None,
        }


# --- fastloss ------------------------------------------------------------------------------------


class FastlossPeer(Peer):
    name = "fastloss"
    description = "fastloss (the library under test)"

    def __init__(self) -> None:
        super().__init__()
        import fastloss

        self.fl = fastloss
        self.version = getattr(fastloss, "__version__", None)

    def set_threads(self, n: int) -> bool:
        self.fl.set_num_threads(n)
        # A build without OpenMP runs every call on one thread, whatever it is told.
        return self.fl.get_num_threads() == n and (n == 1 or bool(self.fl._core.openmp))

    def threads_set_by(self) -> str:
        return "fastloss.set_num_threads"

    def threads_how(self) -> str:
        if not self.fl._core.openmp:
            return "fastloss.set_num_threads, but this build has no OpenMP: one thread always"
        return "fastloss.set_num_threads (OpenMP)"

    def supports_lce(self) -> bool:
        """Whether this fastloss build has ``linear_cross_entropy`` (issue 12)."""
        return hasattr(self.fl, "linear_cross_entropy")

    def prepare(self, w, data):
        fl = self.fl
        g = w.grad
        if w.family == "lce":
            if not self.supports_lce():
                return None
            f = fl.linear_cross_entropy
            x, weight, y = data["input"], data["linear_weight"], data["target"]
            if g:

                def lce_grad():
                    loss, (d_input, d_weight, _d_bias) = f(x, weight, y, return_grad=True)
                    return loss, (d_input, d_weight)

                return lce_grad
            return lambda: f(x, weight, y)
        if w.family in ("mse", "mae"):
            f = fl.mse if w.family == "mse" else fl.mae
            p, t = data["pred"], data["target"]
            if g:
                return lambda: f(p, t, return_grad=True)
            return lambda: f(p, t)
        if w.family == "ce":
            x, y = data["logits"], data["target"]
            if g:
                return lambda: fl.cross_entropy(x, y, return_grad=True)
            return lambda: fl.cross_entropy(x, y)
        q, k, tau = data["query"], data["positive"], w.temperature
        neg = data.get("negatives")
        labels = {"query_labels": data["query_labels"], "key_labels": data["key_labels"]} if w.classes else {}
        if labels and "query_labels" not in inspect.signature(fl.info_nce).parameters:
            return None  # a fastloss before labels
        if g:
            return lambda: fl.info_nce(q, k, neg, temperature=tau, return_grad=True, **labels)
        return lambda: fl.info_nce(q, k, neg, temperature=tau, **labels)

    def supports_grad(self) -> bool:
        """Whether this fastloss build has ``return_grad`` (issue "Gradients")."""
        a = np.ones((2, 3), np.float32)
        try:
            out = self.fl.mse(a, a, return_grad=True)
        except (TypeError, NotImplementedError, ValueError):
            return False
        return isinstance(out, tuple) and len(out) == 2


# --- NumPy, as a user writes it ------------------------------------------------------------------


def _np_ce_mean(logits, labels):
    m = logits.max(axis=1, keepdims=True)
    z = logits - m
    lse = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(lse - z[np.arange(logits.shape[0]), labels]))


class _NumpyPeer(Peer):
    """NumPy's ufuncs run on one thread; its BLAS calls (dot, matmul) on the pool ``blas``
    limits, so a row is like for like only when that limit took."""

    def __init__(self, blas: BlasThreads) -> None:
        super().__init__()
        self.version = np.__version__
        self.blas = blas

    def set_threads(self, n: int) -> bool:
        return self.blas.runs_at(n)

    def threads_how(self) -> str:
        return "ufuncs on one thread; BLAS " + self.blas.how()

    def threads_set_by(self) -> str:
        # "threadpoolctl" (in this process) or "environment" (OPENBLAS_NUM_THREADS and the like,
        # in a child process per thread count)
        return self.blas.method


class NumpyRefPeer(_NumpyPeer):
    name = "numpy_ref"
    description = (
        "NumPy as a user writes it: float32, one expression per formula, the InfoNCE and "
        "linear_cross_entropy logits materialised"
    )

    def prepare(self, w, data):
        if w.family == "lce":
            return self._lce(w, data)
        if w.family in ("mse", "mae"):
            p, t = data["pred"], data["target"]
            if w.family == "mse":
                if w.grad:

                    def mse_grad():
                        d = p - t
                        return float(np.mean(d**2)), (d * np.float32(2.0 / d.size),)

                    return mse_grad
                return lambda: float(np.mean((p - t) ** 2))
            if w.grad:

                def mae_grad():
                    d = p - t
                    return float(np.mean(np.abs(d))), (np.sign(d) / np.float32(d.size),)

                return mae_grad
            return lambda: float(np.mean(np.abs(p - t)))
        if w.family == "ce":
            x, y = data["logits"], data["target"]
            if w.grad:

                def ce_grad():
                    n = x.shape[0]
                    rows = np.arange(n)
                    z = x - x.max(axis=1, keepdims=True)
                    e = np.exp(z)
                    s = e.sum(axis=1, keepdims=True)
                    loss = float(np.mean(np.log(s[:, 0]) - z[rows, y]))
                    g = e / s
                    g[rows, y] -= 1
                    g /= n
                    return loss, (g,)

                return ce_grad
            return lambda: _np_ce_mean(x, y)
        q, k, tau = data["query"], data["positive"], np.float32(w.temperature)
        if w.family == "infonce_queue":
            neg = data["negatives"]
            zeros = np.zeros(q.shape[0], dtype=np.int64)
            if w.grad:

                def moco_grad():
                    n = q.shape[0]
                    logits = np.concatenate([np.sum(q * k, axis=1, keepdims=True), q @ neg.T], axis=1) / tau
                    z = logits - logits.max(axis=1, keepdims=True)
                    e = np.exp(z)
                    s = e.sum(axis=1, keepdims=True)
                    loss = float(np.mean(np.log(s[:, 0]) - z[:, 0]))
                    g = e / s
                    g[:, 0] -= 1
                    g /= n * tau
                    dq = g[:, :1] * k + g[:, 1:] @ neg
                    return loss, (dq, g[:, :1] * q, g[:, 1:].T @ q)

                return moco_grad

            if w.classes:
                if w.grad:
                    return None
                same = data["query_labels"][:, None] == data["key_labels"][None, :]

                def moco_masked():
                    l_pos = np.sum(q * k, axis=1, keepdims=True)
                    l_neg = q @ neg.T
                    l_neg[same] = -np.inf  # false negatives leave the softmax
                    return _np_ce_mean(np.concatenate([l_pos, l_neg], axis=1) / tau, zeros)

                return moco_masked

            def moco():
                l_pos = np.sum(q * k, axis=1, keepdims=True)
                l_neg = q @ neg.T
                return _np_ce_mean(np.concatenate([l_pos, l_neg], axis=1) / tau, zeros)

            return moco
        if w.grad:
            return None
        labels = np.arange(q.shape[0])
        return lambda: _np_ce_mean((q @ k.T) / tau, labels)

    def _lce(self, w, data):
        x, weight, y = data["input"], data["linear_weight"], data["target"]
        if w.grad:

            def lce_grad():
                n = x.shape[0]
                rows = np.arange(n)
                logits = x @ weight.T
                z = logits - logits.max(axis=1, keepdims=True)
                e = np.exp(z)
                s = e.sum(axis=1, keepdims=True)
                loss = float(np.mean(np.log(s[:, 0]) - z[rows, y]))
                g = e / s
                g[rows, y] -= 1
                g /= n
                return loss, (g @ weight, g.T @ x)

            return lce_grad
        return lambda: _np_ce_mean(x @ weight.T, y)


# --- NumPy, as fast as we can write it -----------------------------------------------------------


def _rows_per_block(row_elems: int) -> int:
    return max(1, _BLOCK_ELEMS // max(1, row_elems))


class NumpyFastPeer(_NumpyPeer):
    name = "numpy_fast"
    description = (
        "the fastest NumPy we could write: BLAS dot products, in-place ufuncs on a "
        "reused L2-sized workspace, blocked online log-sum-exp for InfoNCE and "
        "linear_cross_entropy"
    )

    def prepare(self, w, data):
        f = getattr(self, "_" + w.family)
        return f(w, data)

    def _mse(self, w, data):
        p = data["pred"].reshape(data["pred"].shape[0], -1)
        t = data["target"].reshape(p.shape)
        n_rows, row = p.shape
        rb = _rows_per_block(row)
        inv_n = 1.0 / p.size
        if w.grad:
            scale = np.float32(2.0 * inv_n)

            def mse_grad():
                g = np.empty_like(p)
                acc = 0.0
                for i in range(0, n_rows, rb):
                    b = np.subtract(p[i : i + rb], t[i : i + rb], out=g[i : i + rb]).ravel()
                    acc += float(np.dot(b, b))
                    np.multiply(b, scale, out=b)
                return acc * inv_n, (g.reshape(data["pred"].shape),)

            return mse_grad
        buf = np.empty((min(rb, n_rows), row), np.float32)

        def mse():
            acc = 0.0
            for i in range(0, n_rows, rb):
                b = np.subtract(p[i : i + rb], t[i : i + rb], out=buf[: min(rb, n_rows - i)]).ravel()
                acc += float(np.dot(b, b))
            return acc * inv_n

        return mse

    def _mae(self, w, data):
        if w.grad:
            return None
        p = data["pred"].reshape(data["pred"].shape[0], -1)
        t = data["target"].reshape(p.shape)
        n_rows, row = p.shape
        rb = _rows_per_block(row)
        inv_n = 1.0 / p.size
        buf = np.empty((min(rb, n_rows), row), np.float32)

        def mae():
            acc = 0.0
            for i in range(0, n_rows, rb):
                b = np.subtract(p[i : i + rb], t[i : i + rb], out=buf[: min(rb, n_rows - i)])
                np.abs(b, out=b)
                acc += float(b.sum())
            return acc * inv_n

        return mae

    def _ce(self, w, data):
        x, y = data["logits"], data["target"]
        n, c = x.shape
        rb = _rows_per_block(c)
        rows = np.arange(n)
        if w.grad:

            def ce_grad():
                g = np.empty_like(x)
                acc = 0.0
                for i in range(0, n, rb):
                    xb, gb = x[i : i + rb], g[i : i + rb]
                    m = xb.max(axis=1)
                    np.subtract(xb, m[:, None], out=gb)
                    np.exp(gb, out=gb)
                    s = gb.sum(axis=1)
                    acc += float(np.log(s).sum(dtype=np.float64) + m.sum(dtype=np.float64))
                    gb *= (1.0 / (s * n)).astype(np.float32)[:, None]
                g[rows, y] -= np.float32(1.0 / n)
                acc -= float(x[rows, y].sum(dtype=np.float64))
                return acc / n, (g,)

            return ce_grad
        buf = np.empty((min(rb, n), c), np.float32)

        def ce():
            acc = 0.0
            for i in range(0, n, rb):
                xb = x[i : i + rb]
                b = buf[: xb.shape[0]]
                m = xb.max(axis=1)
                np.subtract(xb, m[:, None], out=b)
                np.exp(b, out=b)
                acc += float(np.log(b.sum(axis=1)).sum(dtype=np.float64) + m.sum(dtype=np.float64))
            acc -= float(x[rows, y].sum(dtype=np.float64))
            return acc / n

        return ce

    def _infonce_queue(self, w, data):
        if w.classes and w.grad:
            return None  # the gradient is not formulated with labels
        q, k, neg = data["query"], data["positive"], data["negatives"]
        n = q.shape[0]
        m_total = neg.shape[0]
        kb = max(1024, (8 * _BLOCK_ELEMS) // max(1, n))  # measured best: ~8 MiB logit blocks
        inv_tau = np.float32(1.0 / w.temperature)
        buf = np.empty((n, min(kb, m_total)), np.float32)
        query_labels = data["query_labels"][:, None] if w.classes else None
        key_labels = data["key_labels"] if w.classes else None

        def lse_pass(qs, pos):
            # Online log-sum-exp over blocks of the queue: running max and sum per query.
            run_m = pos.astype(np.float64)
            run_s = np.ones(n)
            for j in range(0, m_total, kb):
                b = buf[:, : min(kb, m_total - j)]
                np.matmul(qs, neg[j : j + kb].T, out=b)
                if key_labels is not None:  # false negatives leave the softmax
                    np.putmask(b, query_labels == key_labels[j : j + kb], np.float32(-np.inf))
                new_m = np.maximum(run_m, b.max(axis=1))
                run_s *= np.exp(run_m - new_m)
                np.subtract(b, new_m.astype(np.float32)[:, None], out=b)
                np.exp(b, out=b)
                run_s += b.sum(axis=1)
                run_m = new_m
            return np.log(run_s) + run_m

        if w.grad:

            def moco_grad():
                qs = q * inv_tau
                pos = np.einsum("ij,ij->i", qs, k)
                lse = lse_pass(qs, pos)
                loss = float(np.mean(lse - pos))
                # Second pass: recompute each block's logits, turn them into the softmax
                # gradient and accumulate the three products.
                scale = 1.0 / (n * w.temperature)
                g_pos = ((np.exp(pos - lse) - 1.0) * scale).astype(np.float32)
                dq = g_pos[:, None] * k
                dk = g_pos[:, None] * q
                dneg = np.empty_like(neg)
                lse32 = lse.astype(np.float32)[:, None]
                for j in range(0, m_total, kb):
                    b = buf[:, : min(kb, m_total - j)]
                    np.matmul(qs, neg[j : j + kb].T, out=b)
                    np.subtract(b, lse32, out=b)
                    np.exp(b, out=b)
                    b *= np.float32(scale)
                    dq += b @ neg[j : j + kb]
                    np.matmul(b.T, q, out=dneg[j : j + kb])
                return loss, (dq, dk, dneg)

            return moco_grad

        def moco():
            qs = q * inv_tau
            pos = np.einsum("ij,ij->i", qs, k)
            return float(np.mean(lse_pass(qs, pos) - pos))

        return moco

    def _lce(self, w, data):
        x, weight, y = data["input"], data["linear_weight"], data["target"]
        n = x.shape[0]
        v = weight.shape[0]
        kb = max(1024, (8 * _BLOCK_ELEMS) // max(1, n))  # ~8 MiB logit blocks, as for MoCo
        buf = np.empty((n, min(kb, v)), np.float32)
        rows = np.arange(n)

        def block(j):
            """The logits of classes j..j+kb into the workspace, and the rows whose target is
            among them (their index in the block)."""
            b = buf[:, : min(kb, v - j)]
            np.matmul(x, weight[j : j + kb].T, out=b)
            hit = (y >= j) & (y < j + b.shape[1])
            return b, hit, y[hit] - j

        def lse_pass():
            # Online log-sum-exp over blocks of classes; the target's logit picked on the way.
            run_m = np.full(n, -np.inf)
            run_s = np.zeros(n)
            target_logit = np.empty(n)
            for j in range(0, v, kb):
                b, hit, col = block(j)
                target_logit[hit] = b[rows[hit], col]
                new_m = np.maximum(run_m, b.max(axis=1))
                run_s *= np.exp(run_m - new_m)
                np.subtract(b, new_m.astype(np.float32)[:, None], out=b)
                np.exp(b, out=b)
                run_s += b.sum(axis=1)
                run_m = new_m
            return np.log(run_s) + run_m, target_logit

        if w.grad:

            def lce_grad():
                lse, target_logit = lse_pass()
                loss = float(np.mean(lse - target_logit))
                # Second pass: recompute each block, turn it into (softmax - one-hot) / n and
                # accumulate both products.
                inv_n = np.float32(1.0 / n)
                lse32 = lse.astype(np.float32)[:, None]
                d_input = np.zeros_like(x)
                d_weight = np.empty_like(weight)
                part = np.empty_like(x)
                for j in range(0, v, kb):
                    b, hit, col = block(j)
                    np.subtract(b, lse32, out=b)
                    np.exp(b, out=b)
                    b *= inv_n
                    b[rows[hit], col] -= inv_n
                    np.matmul(b, weight[j : j + kb], out=part)
                    d_input += part
                    np.matmul(b.T, x, out=d_weight[j : j + kb])
                return loss, (d_input, d_weight)

            return lce_grad

        def lce():
            lse, target_logit = lse_pass()
            return float(np.mean(lse - target_logit))

        return lce

    def _infonce_inbatch(self, w, data):
        if w.grad:
            return None
        q, k = data["query"], data["positive"]
        n = q.shape[0]
        rb = 512
        inv_tau = np.float32(1.0 / w.temperature)
        buf = np.empty((min(rb, n), n), np.float32)

        def inbatch():
            qs = q * inv_tau
            pos = np.einsum("ij,ij->i", qs, k)
            acc = 0.0
            for i in range(0, n, rb):
                b = buf[: min(rb, n - i)]
                np.matmul(qs[i : i + rb], k.T, out=b)
                m = b.max(axis=1)
                b -= m[:, None]
                np.exp(b, out=b)
                acc += float(np.log(b.sum(axis=1)).sum(dtype=np.float64) + m.sum(dtype=np.float64))
            return (acc - float(pos.sum(dtype=np.float64))) / n

        return inbatch


# --- PyTorch -------------------------------------------------------------------------------------


class TorchPeer(Peer):
    name = "torch"
    description = "PyTorch torch.nn.functional on CPU tensors (zero-copy from NumPy)"

    def __init__(self) -> None:
        super().__init__()
        try:
            self.torch = importlib.import_module("torch")
            self.F = importlib.import_module("torch.nn.functional")
            self.version = self.torch.__version__
        except Exception as exc:  # ImportError, or a broken install
            self.torch = None
            self.reason = f"not importable ({type(exc).__name__}: {exc})"

    def available(self) -> bool:
        return self.torch is not None

    def set_threads(self, n: int) -> bool:
        self.torch.set_num_threads(n)
        return bool(self.torch.get_num_threads() == n)

    def threads_how(self) -> str:
        return "torch.set_num_threads, checked with torch.get_num_threads"

    def threads_set_by(self) -> str:
        return "torch.set_num_threads"

    def prepare(self, w, data):
        torch, F = self.torch, self.F
        t = {key: torch.from_numpy(a) for key, a in data.items()}
        if w.family == "lce":
            return self._lce(w, t)
        if w.family in ("mse", "mae"):
            f = F.mse_loss if w.family == "mse" else F.l1_loss
            p, tg = t["pred"], t["target"]
            if w.grad:
                p.requires_grad_(True)

                def mse_grad():
                    p.grad = None
                    loss = f(p, tg)
                    loss.backward()
                    return loss.item(), (p.grad.numpy(),)

                return mse_grad

            def fwd():
                with torch.no_grad():
                    return f(p, tg).item()

            return fwd
        if w.family == "ce":
            x, y = t["logits"], t["target"]
            if w.grad:
                x.requires_grad_(True)

                def ce_grad():
                    x.grad = None
                    loss = F.cross_entropy(x, y)
                    loss.backward()
                    return loss.item(), (x.grad.numpy(),)

                return ce_grad

            def ce():
                with torch.no_grad():
                    return F.cross_entropy(x, y).item()

            return ce
        q, k, tau = t["query"], t["positive"], w.temperature
        if w.family == "infonce_queue":
            neg = t["negatives"]
            zeros = torch.zeros(q.shape[0], dtype=torch.int64)

            same = None
            if w.classes:
                same = t["query_labels"][:, None] == t["key_labels"][None, :]

            def moco_loss():
                l_neg = q @ neg.T
                if same is not None:  # false negatives leave the softmax
                    l_neg = l_neg.masked_fill(same, float("-inf"))
                logits = torch.cat([(q * k).sum(dim=1, keepdim=True), l_neg], dim=1) / tau
                return F.cross_entropy(logits, zeros)

            if w.grad:
                for a in (q, k, neg):
                    a.requires_grad_(True)

                def moco_grad():
                    q.grad = k.grad = neg.grad = None
                    loss = moco_loss()
                    loss.backward()
                    return loss.item(), (q.grad.numpy(), k.grad.numpy(), neg.grad.numpy())

                return moco_grad

            def moco():
                with torch.no_grad():
                    return moco_loss().item()

            return moco
        if w.grad:
            return None
        labels = torch.arange(q.shape[0])

        def inbatch():
            with torch.no_grad():
                return F.cross_entropy(q @ k.T / tau, labels).item()

        return inbatch

    def _lce_options(self):
        """``options`` of ``F.linear_cross_entropy``: None, its reference path (the logits
        materialised, then ``cross_entropy``)."""
        return None

    def _lce(self, w, t):
        torch = self.torch
        f = getattr(self.F, "linear_cross_entropy", None)  # PyTorch >= 2.13
        if f is None:
            return None
        options = self._lce_options()
        kw = {} if options is None else {"options": options}
        x, weight, y = t["input"], t["linear_weight"], t["target"]

        def checked(call):
            # The chunked path falls back to the reference one with a warning when it cannot
            # run a configuration: such a row would measure the wrong path, so it is an error.
            if options is None:
                return call()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = call()
            fell_back = [str(c.message) for c in caught if "options" in str(c.message)]
            if fell_back:
                raise RuntimeError(f"the chunked path did not run: {fell_back[0][:200]}")
            return out

        if w.grad:
            x.requires_grad_(True)
            weight.requires_grad_(True)

            def lce_grad_call():
                x.grad = weight.grad = None
                loss = f(x, weight, y, **kw)
                loss.backward()
                return loss.item(), (x.grad.numpy(), weight.grad.numpy())

            return lambda: checked(lce_grad_call)

        def lce_call():
            with torch.no_grad():
                return f(x, weight, y, **kw).item()

        return lambda: checked(lce_call)


class TorchChunkedPeer(TorchPeer):
    name = "torch_chunked"
    description = (
        "PyTorch's chunked linear_cross_entropy (options=torch.nn.LinearCrossEntropyOptions()), "
        "linear_cross_entropy workloads only"
    )

    def __init__(self) -> None:
        super().__init__()
        if self.torch is not None and not hasattr(self.torch.nn, "LinearCrossEntropyOptions"):
            self.reason = f"torch {self.version} has no torch.nn.LinearCrossEntropyOptions (2.13 has)"
            self.torch = None

    def _lce_options(self):
        return self.torch.nn.LinearCrossEntropyOptions()

    def prepare(self, w, data):
        if w.family != "lce":
            return None  # the chunked path is linear_cross_entropy's only
        return super().prepare(w, data)


# --- JAX -----------------------------------------------------------------------------------------


class JaxPeer(Peer):
    name = "jax"
    description = "JAX, jax.jit-compiled, block_until_ready (threads fixed by XLA at import)"
    threads_settable = False

    def __init__(self) -> None:
        super().__init__()
        try:
            self.jax = importlib.import_module("jax")
            self.jnp = importlib.import_module("jax.numpy")
            self.version = self.jax.__version__
        except Exception as exc:
            self.jax = None
            self.reason = f"not importable ({type(exc).__name__}: {exc})"
        # XLA's CPU client sizes its pool once, to the cores this process may run on, unless
        # XLA_FLAGS changes that (then the count is unknown here).
        flags = os.environ.get("XLA_FLAGS", "")
        self.fixed_threads: int | None = None if ("thread" in flags or "eigen" in flags) else cpu_count()

    def available(self) -> bool:
        return self.jax is not None

    def set_threads(self, n: int) -> bool:
        return n == self.fixed_threads

    def threads_how(self) -> str:
        if self.fixed_threads is None:
            return "fixed by XLA at import (XLA_FLAGS sets it; count unknown): not controlled"
        return f"fixed by XLA at import to all {self.fixed_threads} cores: like for like at that count only"

    def threads_set_by(self) -> str:
        return "XLA, at import"

    def measured_at(self, threads: list[int]) -> list[int]:
        # One measurement: at the count XLA runs at when it is asked for, else (marked as not
        # controlled) at the largest.
        return [self.fixed_threads] if self.fixed_threads in threads else [max(threads)]

    def prepare(self, w, data):
        jax, jnp = self.jax, self.jnp
        if w.family == "lce" or w.classes:
            return None  # not formulated here
        arrs = {key: jax.device_put(a) for key, a in data.items()}

        def ce_mean(logits, labels):
            logp = jax.nn.log_softmax(logits, axis=1)
            return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))

        tau = w.temperature
        if w.family == "mse":

            def loss(p, t):
                return jnp.mean((p - t) ** 2)

            args = (arrs["pred"], arrs["target"])
        elif w.family == "mae":

            def loss(p, t):
                return jnp.mean(jnp.abs(p - t))

            args = (arrs["pred"], arrs["target"])
        elif w.family == "ce":
            loss = ce_mean
            args = (arrs["logits"], arrs["target"])
        elif w.family == "infonce_queue":
            zeros = jnp.zeros(data["query"].shape[0], dtype=jnp.int32)

            def loss(q, k, neg):
                logits = jnp.concatenate([jnp.sum(q * k, axis=1, keepdims=True), q @ neg.T], axis=1) / tau
                return ce_mean(logits, zeros)

            args = (arrs["query"], arrs["positive"], arrs["negatives"])
        else:
            labels = jnp.arange(data["query"].shape[0])

            def loss(q, k):
                return ce_mean(q @ k.T / tau, labels)

            args = (arrs["query"], arrs["positive"])

        if w.grad:
            n_diff = 1 if w.family in ("mse", "mae", "ce") else len(args)
            f = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(n_diff))))

            def run_grad():
                value, grads = f(*args)
                value.block_until_ready()
                return float(value), tuple(np.asarray(g) for g in grads)

            return run_grad
        f = jax.jit(loss)

        def run():
            return float(f(*args).block_until_ready())

        return run


PEER_NAMES: list[str] = ["fastloss", "numpy_ref", "numpy_fast", "torch", "torch_chunked", "jax"]
_CLASSES = {
    c.name: c for c in (FastlossPeer, NumpyRefPeer, NumpyFastPeer, TorchPeer, TorchChunkedPeer, JaxPeer)
}


def all_peers(names: list[str] | None = None, blas: BlasThreads | None = None) -> list[Peer]:
    """The peers to measure, fastloss first; unavailable ones are included (``available()`` is
    False and ``reason`` says why) so the report can say what was skipped. ``blas`` is the
    limiter the runner sets per thread count (the numpy_* peers ask it whether the limit took)."""
    wanted = names or PEER_NAMES
    if "fastloss" not in wanted:
        wanted = ["fastloss"] + list(wanted)
    blas = blas if blas is not None else BlasThreads()
    return [
        _CLASSES[n](blas) if issubclass(_CLASSES[n], _NumpyPeer) else _CLASSES[n]()
        for n in PEER_NAMES
        if n in wanted
    ]
