"""Parts the published vision models need beyond the basic kernels: padding (ResNet's
padded max-pool), squeeze-and-excitation (MobileNetV3, EfficientNet), and a vision
transformer's patch tokens and class-token readout (DeiT).

Each is a Layer with the usual contract (explicit caches, grads added, cost beside
the math). Knows numpy and the kernels; knows nothing of devices or time.
"""
from __future__ import annotations

import numpy as np

from simdl.nn.compose import Composite, Sequential
from simdl.nn.core import Cache, Cost, Layer, Shape, nbytes
from simdl.nn.dense import Linear, kernel_cost, normal, numel
from simdl.nn.pool import GlobalAvgPool


class Pad2d(Layer):
    """Pads H and W of (N, C, H, W) by `p` on every side with `value`.

    With value -inf before a MaxPool it is PyTorch's MaxPool2d(padding=p): a pad never
    wins a window that holds a real value. No FLOPs; backward crops dy.
    """

    def __init__(self, p: int, value: float = 0.0):
        super().__init__()
        self.p, self.value = p, value

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        p = self.p
        y = np.full((*x.shape[:2], x.shape[2] + 2 * p, x.shape[3] + 2 * p), self.value, x.dtype)
        y[:, :, p:p + x.shape[2], p:p + x.shape[3]] = x
        return y, None

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        p = self.p
        return np.ascontiguousarray(dy[:, :, p:dy.shape[2] - p, p:dy.shape[3] - p])

    def cost(self, in_shape: Shape) -> Cost:
        n, c, h, w = in_shape
        return kernel_cost(in_shape, (n, c, h + 2 * self.p, w + 2 * self.p), 0, 0)


class SqueezeExcite(Composite):
    """y = x * gate(x), one gate value per sample and channel (Hu et al. 2018).

    gate = GlobalAvgPool, Linear(C, squeeze), activation, Linear(squeeze, C), a
    sigmoid-like scale: the 1x1 convolutions of PyTorch's SqueezeExcitation on a
    1x1 map are these Linear layers (same weights and biases). Names "gate.*".
    """

    def __init__(self, gate: Sequential):
        self.gate = gate
        super().__init__({"gate": gate})

    @staticmethod
    def of(c: int, squeeze: int, act: Layer, scale: Layer,
           rng: np.random.Generator) -> SqueezeExcite:
        """The block over c channels squeezed to `squeeze`, with its two activations."""
        return SqueezeExcite(Sequential([GlobalAvgPool(), Linear(c, squeeze, rng), act,
                                         Linear(squeeze, c, rng), scale]))

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        g, cg = self.gate.forward(x, train)
        return x * g[:, :, None, None], (x, g, cg)

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        x, g, cg = cache
        dg = np.einsum("nchw,nchw->nc", dy, x)
        return dy * g[:, :, None, None] + self.gate.backward(dg, cg)

    def cost(self, in_shape: Shape) -> Cost:
        """The gate, then the scale: 1 FLOP per value forward; backward dy*g, dy*x and
        its sum, and adding the gate's dx: 4 per value. Keeps x for d(gate)."""
        n = numel(in_shape)
        scale = kernel_cost(in_shape, in_shape, n, 4 * n, saved_bytes=nbytes(in_shape))
        return self.gate.cost(in_shape).then(scale)


class PatchTokens(Layer):
    """(N, d, gh, gw) patch embeddings -> (N, 1 + gh gw, d): a learned class token
    first, then the patches in row-major order, plus learned positions (ViT, Dosovitskiy
    et al. 2021; DeiT, Touvron et al. 2021). cls and pos start N(0, 0.02^2)."""

    def __init__(self, d: int, n_patches: int, rng: np.random.Generator):
        super().__init__()
        self.d, self.n_patches = d, n_patches
        self.params["cls"] = normal(rng, (d,), 0.02)
        self.params["pos"] = normal(rng, (1 + n_patches, d), 0.02)
        self._init_grads()

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        n, d = x.shape[:2]
        if d != self.d or x.shape[2] * x.shape[3] != self.n_patches:
            raise ValueError(f"PatchTokens: input {x.shape} is not (N, {self.d}, gh, gw) "
                             f"with gh*gw = {self.n_patches}")
        y = np.empty((n, 1 + self.n_patches, d), np.result_type(x, self.params["pos"]))
        y[:, 0] = self.params["cls"]
        y[:, 1:] = x.reshape(n, d, -1).transpose(0, 2, 1)
        y += self.params["pos"]
        return y, x.shape

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        self.grads["pos"] += dy.sum(axis=0)
        self.grads["cls"] += dy[:, 0].sum(axis=0)
        return np.ascontiguousarray(dy[:, 1:].transpose(0, 2, 1)).reshape(cache)

    def cost(self, in_shape: Shape) -> Cost:
        n = in_shape[0]
        out = (n, 1 + self.n_patches, self.d)
        return kernel_cost(in_shape, out, numel(out), numel(out), self.params)


class FirstToken(Layer):
    """(N, T, d) -> (N, d): the class token's row, what a ViT's head reads. No FLOPs."""

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        return x[:, 0].copy(), x.shape

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        dx = np.zeros(cache, dy.dtype)
        dx[:, 0] = dy
        return dx

    def cost(self, in_shape: Shape) -> Cost:
        return kernel_cost(in_shape, (in_shape[0], in_shape[2]), 0, 0)

