"""Reused gradient memory (python/fastloss/_memory.py): a mapping is reused only once no array
over it is left, and a gradient that is still held never changes."""

from __future__ import annotations

import gc
import threading

import fastloss
import numpy as np
import pytest
from fastloss import _memory

pytestmark = pytest.mark.skipif(not _memory._SUPPORTED, reason="no madvise(MADV_FREE) on this platform")

SMALL = 1 << 16  # MIN_BYTES for these tests, so that they stay small


@pytest.fixture(autouse=True)
def small_threshold(monkeypatch):
    monkeypatch.setattr(_memory, "MIN_BYTES", SMALL)
    _memory._released.clear()
    yield
    _memory._released.clear()


def address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_below_the_threshold_is_plain_numpy():
    a = _memory.empty((SMALL // 8 - 1,), np.float64)
    assert a.flags.owndata and a.shape == (SMALL // 8 - 1,)


def test_released_memory_is_reused_for_the_same_size_only():
    a = _memory.empty((64, 1024), np.float32)
    assert a.shape == (64, 1024) and a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable
    first = address(a)
    del a
    gc.collect()
    b = _memory.empty((128, 512), np.float32)  # the same bytes, another shape
    assert address(b) == first
    c = _memory.empty((64, 1025), np.float32)  # another size: fresh memory
    assert address(c) != first


def test_memory_held_through_a_view_is_not_reused():
    a = _memory.empty((64, 1024), np.float32)
    first = address(a)
    a[:] = 7.0
    view = a[3:5]
    del a
    gc.collect()
    b = _memory.empty((64, 1024), np.float32)
    b[:] = -1.0
    assert np.all(view == 7.0)
    del view
    gc.collect()
    assert address(b) != first
    c = _memory.empty((64, 1024), np.float32)
    assert address(c) == first


def test_at_most_keep_released_mappings_are_kept():
    arrays = [_memory.empty((64, 1024), np.float32) for _ in range(_memory.KEEP + 3)]
    del arrays
    gc.collect()
    assert len(_memory._released) == _memory.KEEP


def test_a_held_gradient_never_changes():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 1000)).astype(np.float32)
    y = rng.integers(0, 1000, 64)
    _, g1 = fastloss.cross_entropy(x, y, return_grad=True)
    kept = g1.copy()
    for _ in range(3):  # the loop pattern: the previous gradient is held during the next call
        _, g2 = fastloss.cross_entropy(x * 2, y, return_grad=True)
        assert np.array_equal(g1, kept)
        del g2
    _, g3 = fastloss.cross_entropy(x, y, return_grad=True)
    assert np.array_equal(g3, kept)  # into reused memory: the same bits as into fresh memory


def test_float16_gradient_through_reused_buffers():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 1000)).astype(np.float16)
    y = rng.integers(0, 1000, 64)
    want = fastloss.cross_entropy(x, y, return_grad=True)[1]
    for _ in range(3):
        got = fastloss.cross_entropy(x, y, return_grad=True)[1]
        assert got.dtype == np.float16 and np.array_equal(got, want)


def test_threads_never_share_live_memory():
    errors: list[str] = []

    def work(seed: int) -> None:
        for k in range(200):
            a = _memory.empty((16 + k % 2, 1024), np.float32)
            a[:] = seed
            if not np.all(a == seed):
                errors.append(f"thread {seed} saw another thread's writes")
            del a

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_a_torch_tensor_keeps_the_memory():
    torch = pytest.importorskip("torch")
    a = _memory.empty((64, 1024), np.float32)
    a[:] = 3.0
    tensor = torch.from_numpy(a)
    del a
    gc.collect()
    b = _memory.empty((64, 1024), np.float32)
    b[:] = 0.0
    assert bool((tensor == 3.0).all())
