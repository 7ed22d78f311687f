"""The activations of the mobile vision models: Sigmoid, SiLU, Hardsigmoid, Hardswish.

Each is per value with a closed-form derivative. Definitions follow PyTorch's
(torch.nn.Hardsigmoid is relu6(x + 3) / 6, Hardswish is x times that; Howard et al.
2019, "Searching for MobileNetV3", sec. 5.2), so a torch reference can check them.
FLOPs per value count each add, multiply, compare or tanh as 1.
Knows numpy and `core`; knows nothing of devices, time or composite layers.
"""
from __future__ import annotations

import numpy as np

from simdl.nn.core import Cache, Cost, Layer, Shape, nbytes
from simdl.nn.dense import kernel_cost, numel


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) as 0.5 (1 + tanh(x / 2)): no overflow for any x."""
    y = np.tanh(0.5 * x)
    y += 1.0
    y *= 0.5
    return y


class _Pointwise(Layer):
    """An activation applied value by value; caches its input x."""

    FWD_FLOPS = 1
    BWD_FLOPS = 1

    def cost(self, in_shape: Shape) -> Cost:
        n = numel(in_shape)
        return kernel_cost(in_shape, in_shape, self.FWD_FLOPS * n, self.BWD_FLOPS * n,
                           saved_bytes=nbytes(in_shape))


class Sigmoid(_Pointwise):
    """s = 1 / (1 + exp(-x)); ds/dx = s (1 - s). Caches s (the gate of EfficientNet's SE)."""

    FWD_FLOPS, BWD_FLOPS = 4, 3

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        s = sigmoid(x)
        return s, s

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        return dy * (cache * (1.0 - cache))


class SiLU(_Pointwise):
    """x sigmoid(x) (swish, EfficientNet's activation); d/dx = s (1 + x (1 - s)). Caches x."""

    FWD_FLOPS, BWD_FLOPS = 5, 8

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        return x * sigmoid(x), x

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        s = sigmoid(cache)
        return dy * (s * (1.0 + cache * (1.0 - s)))


class Hardsigmoid(_Pointwise):
    """relu6(x + 3) / 6; d/dx = 1/6 for -3 < x < 3, else 0. Caches x."""

    FWD_FLOPS, BWD_FLOPS = 3, 3

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        return np.clip(x + 3.0, 0.0, 6.0) * (1.0 / 6.0), x

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        inside = (cache > -3.0) & (cache < 3.0)
        return np.where(inside, dy * (1.0 / 6.0), 0.0).astype(dy.dtype, copy=False)


class Hardswish(_Pointwise):
    """x relu6(x + 3) / 6; d/dx = 0 below -3, 1 above 3, (2x + 3) / 6 between. Caches x."""

    FWD_FLOPS, BWD_FLOPS = 4, 5

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        return x * np.clip(x + 3.0, 0.0, 6.0) * (1.0 / 6.0), x

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        x = cache
        slope = np.where(x <= -3.0, 0.0, np.where(x >= 3.0, 1.0, (2.0 * x + 3.0) * (1.0 / 6.0)))
        return dy * slope.astype(dy.dtype, copy=False)
