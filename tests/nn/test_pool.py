"""MaxPool with big windows: the cached arg-max must hold every one of the k*k offsets."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from simdl.nn.layers import MaxPool


def brute_max_pool(x: np.ndarray, dy: np.ndarray, k: int,
                   s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y, dx and the winning window offsets by explicit loops: dy goes to the first maximum."""
    n, c, oh, ow = dy.shape
    y, dx = np.zeros(dy.shape, x.dtype), np.zeros(x.shape, dy.dtype)
    offsets = np.zeros(dy.shape, np.int64)
    for i, ch, a, b in itertools.product(range(n), range(c), range(oh), range(ow)):
        win = x[i, ch, a * s:a * s + k, b * s:b * s + k]
        off = int(np.argmax(win))
        r, q = divmod(off, k)
        y[i, ch, a, b], offsets[i, ch, a, b] = win[r, q], off
        dx[i, ch, a * s + r, b * s + q] += dy[i, ch, a, b]
    return y, dx, offsets


@pytest.mark.parametrize("k, stride, h, w", [
    (32, None, 32, 32),   # a global max over 32x32: 1024 offsets
    (17, None, 34, 35),   # 289 offsets, non-overlapping, a spare column
    (17, 3, 20, 21),      # overlapping windows: dx accumulates
])
def test_a_window_of_more_than_256_offsets_picks_and_routes_to_the_true_max(k, stride, h, w):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
    x[:, 0] += 10 * np.arange(h, dtype=np.float32)[:, None]    # channel 0: max in a last row
    layer = MaxPool(k, stride)
    y, cache = layer.forward(x)
    dy = rng.integers(-8, 9, y.shape).astype(np.float32)       # integers: exact sums in any order
    want_y, want_dx, offsets = brute_max_pool(x, dy, k, stride or k)
    assert (offsets > 255).any(), "the case must need an offset a uint8 cannot hold"
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(layer.backward(dy, cache), want_dx)


def test_a_global_max_pool_equals_the_max_over_the_image():
    x = np.random.default_rng(6).standard_normal((2, 4, 32, 32)).astype(np.float32)
    y, _ = MaxPool(32).forward(x)
    np.testing.assert_array_equal(y[:, :, 0, 0], x.max(axis=(2, 3)))


@pytest.mark.parametrize("k, itemsize", [(2, 1), (16, 1), (17, 2), (256, 2), (257, 4)])
def test_saved_bytes_are_the_cached_arg_max_bytes(k, itemsize):
    """uint8 holds 16x16 = 256 offsets, uint16 256x256 = 65536, beyond that uint32."""
    shape = (1, 2, k + 1, 2 * k)                        # 1 x 2 windows per channel
    layer = MaxPool(k)
    _, (arg, _) = layer.forward(np.zeros(shape, np.float32))
    assert arg.nbytes == 1 * 2 * 1 * 2 * itemsize
    assert layer.cost(shape).saved_bytes == arg.nbytes
