"""A user's script that calls every public fastloss function; ``mypy --strict`` must accept it.

tests/test_packaging.py type-checks it against the installed package (``py.typed``, the
annotations of ``fastloss/__init__.py`` and ``_losses.py``, the ``_core.pyi`` stubs) and runs it.
The results are narrowed with ``isinstance`` because a loss is typed ``float | ndarray`` (or a
``(loss, grad)`` tuple with ``return_grad=True``).
"""

from __future__ import annotations

import io

import fastloss
import numpy as np
import numpy.typing as npt


def regression(pred: npt.NDArray[np.float32], target: npt.NDArray[np.float32]) -> float:
    mean = fastloss.mse(pred, target)
    assert isinstance(mean, float)
    weighted = fastloss.mae(pred, target, reduction="batchmean", sample_weight=np.ones(len(pred)))
    assert isinstance(weighted, float)
    elements = fastloss.mse(pred, target, reduction="none")
    assert isinstance(elements, np.ndarray) and elements.shape == pred.shape
    with_grad = fastloss.mae(pred, target, return_grad=True)
    assert isinstance(with_grad, tuple)
    loss, grad = with_grad
    assert isinstance(loss, float) and isinstance(grad, np.ndarray) and grad.shape == pred.shape
    return mean + weighted + loss


def cross_entropy(logits: npt.NDArray[np.float32], labels: npt.NDArray[np.int64]) -> float:
    plain = fastloss.cross_entropy(logits, labels)
    assert isinstance(plain, float)
    smoothed = fastloss.cross_entropy(
        logits,
        labels,
        reduction="sum",
        weight=np.linspace(0.5, 2.0, logits.shape[1]),
        ignore_index=-1,
        label_smoothing=0.1,
    )
    assert isinstance(smoothed, float)
    rows = fastloss.cross_entropy(logits, labels, reduction="none")
    assert isinstance(rows, np.ndarray) and rows.shape == (logits.shape[0],)
    with_grad = fastloss.cross_entropy(logits, labels, return_grad=True)
    assert isinstance(with_grad, tuple)
    loss, grad = with_grad
    assert isinstance(loss, float) and isinstance(grad, np.ndarray) and grad.shape == logits.shape
    return plain + smoothed + loss


def info_nce(
    query: npt.NDArray[np.float32], key: npt.NDArray[np.float32], queue: npt.NDArray[np.float32]
) -> float:
    moco = fastloss.info_nce(query, key, queue, temperature=0.07)
    assert isinstance(moco, float)
    clip = fastloss.info_nce(query, key, normalize=True, symmetric=True, reduction="none")
    assert isinstance(clip, np.ndarray) and clip.shape == (query.shape[0],)
    paired = fastloss.info_nce(query, key, np.stack([queue[:3]] * query.shape[0]), negative_mode="paired")
    assert isinstance(paired, float)
    with_grad = fastloss.info_nce(query, key, queue, normalize=True, return_grad=True)
    assert isinstance(with_grad, tuple)
    loss, (d_query, d_key, d_queue) = with_grad
    assert isinstance(loss, float)
    assert (
        isinstance(d_query, np.ndarray) and isinstance(d_key, np.ndarray) and isinstance(d_queue, np.ndarray)
    )
    assert d_queue.shape == queue.shape
    in_batch = fastloss.info_nce(query, key, return_grad=True)
    assert isinstance(in_batch, tuple)
    loss_in_batch, (_, _, no_negatives) = in_batch
    assert no_negatives is None
    return moco + paired + loss + float(loss_in_batch)


def runtime() -> str:
    previous: int = fastloss.get_num_threads()
    fastloss.set_num_threads(1)
    assert fastloss.get_num_threads() == 1
    fastloss.set_num_threads(previous)
    buffer = io.StringIO()
    fastloss.show_config(file=buffer)
    fastloss.show_config()
    version: str = fastloss.__version__
    assert version in buffer.getvalue()
    return version


def main() -> None:
    rng = np.random.default_rng(0)
    pred = rng.standard_normal((16, 4), dtype=np.float32)
    target = rng.standard_normal((16, 4), dtype=np.float32)
    logits = rng.standard_normal((16, 5), dtype=np.float32)
    labels = rng.integers(0, 5, size=16)
    query = rng.standard_normal((16, 8), dtype=np.float32)
    key = query + np.float32(0.1) * rng.standard_normal((16, 8), dtype=np.float32)
    queue = rng.standard_normal((32, 8), dtype=np.float32)
    total = regression(pred, target) + cross_entropy(logits, labels) + info_nce(query, key, queue)
    assert np.isfinite(total)
    print(f"fastloss {runtime()}: every public function called, total {total:.6f}")


if __name__ == "__main__":
    main()
