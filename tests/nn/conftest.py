"""Shared fixtures for the kernel tests: one small example per way each registry entry is used."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

from simdl.nn.layers import (GELU, AvgPool, BatchNorm, Conv2d, Embedding, Flatten,
                             GlobalAvgPool, Layer, LayerNorm, Linear, MaxPool, ReLU, ReLU6,
                             Residual, SelfAttention, Sequential)


@dataclass(frozen=True)
class Example:
    """A layer built from a seeded rng, an input maker, and the mode to run it in."""

    id: str
    build: Callable[[np.random.Generator], Layer]
    make_x: Callable[[np.random.Generator], np.ndarray]
    train: bool = True


def normal(*shape: int, scale: float = 1.0) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda rng: (scale * rng.standard_normal(shape)).astype(np.float32)


def tokens(vocab: int, *shape: int) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda rng: rng.integers(0, vocab, shape)


# Registry name -> the variants the gradient, dtype, in-flight and shape tests run.
EXAMPLES: dict[str, list[Example]] = {
    "linear": [
        Example("2d", lambda r: Linear(5, 4, r), normal(3, 5)),
        Example("3d_tokens", lambda r: Linear(5, 4, r), normal(2, 3, 5)),
        Example("no_bias", lambda r: Linear(5, 4, r, bias=False), normal(3, 5)),
    ],
    "conv2d": [
        Example("3x3", lambda r: Conv2d(3, 4, 3, r), normal(2, 3, 6, 5)),
        Example("stride2_pad1", lambda r: Conv2d(3, 4, 3, r, stride=2, padding=1),
                normal(2, 3, 7, 6)),
        Example("depthwise", lambda r: Conv2d(4, 4, 3, r, padding=1, groups=4), normal(2, 4, 5, 5)),
        Example("groups2", lambda r: Conv2d(4, 6, 3, r, stride=2, padding=1, groups=2),
                normal(2, 4, 6, 6)),
        Example("1x1_no_bias", lambda r: Conv2d(3, 5, 1, r, bias=False), normal(2, 3, 4, 4)),
        Example("5x5_pad2", lambda r: Conv2d(2, 3, 5, r, padding=2), normal(1, 2, 5, 5)),
        Example("1x1_pad1_col2im", lambda r: Conv2d(2, 3, 1, r, padding=1), normal(2, 2, 3, 3)),
    ],
    "batchnorm": [
        Example("train_nchw", lambda r: BatchNorm(3), normal(4, 3, 3, 2), train=True),
        Example("eval_nchw", lambda r: BatchNorm(3), normal(4, 3, 3, 2), train=False),
        Example("train_nc", lambda r: BatchNorm(5), normal(6, 5), train=True),
        Example("eval_nc", lambda r: BatchNorm(5), normal(6, 5), train=False),
    ],
    "relu": [Example("nchw", lambda r: ReLU(), normal(2, 3, 4, 4))],
    "relu6": [Example("spans_0_and_6", lambda r: ReLU6(), normal(2, 3, 4, 4, scale=5.0))],
    "gelu": [Example("tokens", lambda r: GELU(), normal(2, 3, 5, scale=2.0))],
    "maxpool": [
        Example("2x2", lambda r: MaxPool(2), normal(2, 3, 4, 6)),
        Example("3x3_stride2_overlap", lambda r: MaxPool(3, 2), normal(2, 2, 7, 7)),
        Example("2x2_odd_size", lambda r: MaxPool(2), normal(1, 2, 5, 5)),
    ],
    "avgpool": [
        Example("2x2", lambda r: AvgPool(2), normal(2, 3, 4, 6)),
        Example("3x3_stride2_overlap", lambda r: AvgPool(3, 2), normal(2, 2, 7, 7)),
    ],
    "globalavgpool": [Example("nchw", lambda r: GlobalAvgPool(), normal(2, 3, 4, 5))],
    "flatten": [Example("nchw", lambda r: Flatten(), normal(2, 3, 2, 2))],
    "layernorm": [
        Example("tokens", lambda r: LayerNorm(6), normal(2, 3, 6)),
        Example("rows", lambda r: LayerNorm(4), normal(5, 4)),
    ],
    "embedding": [
        Example("positions", lambda r: Embedding(5, 4, r, max_len=6), tokens(5, 3, 4)),
        Example("no_positions", lambda r: Embedding(5, 4, r), tokens(5, 2, 6)),
    ],
    "attention": [
        Example("bidirectional", lambda r: SelfAttention(8, 2, r), normal(2, 4, 8)),
        Example("causal", lambda r: SelfAttention(8, 2, r, causal=True), normal(2, 5, 8)),
    ],
    "sequential": [
        Example("conv_bn_relu_pool_fc", lambda r: Sequential([
            Conv2d(2, 3, 3, r, padding=1), BatchNorm(3), ReLU(), MaxPool(2), Flatten(),
            Linear(12, 3, r)]), normal(3, 2, 4, 4)),
        Example("nested", lambda r: Sequential([Sequential([Linear(4, 5, r), GELU()]),
                                                Linear(5, 2, r)]), normal(3, 4)),
    ],
    "residual": [
        Example("identity", lambda r: Residual(Sequential([Linear(4, 4, r), GELU()])),
                normal(3, 4)),
        Example("conv_shortcut_relu_post", lambda r: Residual(
            Sequential([Conv2d(2, 4, 3, r, stride=2, padding=1), BatchNorm(4), ReLU(),
                        Conv2d(4, 4, 3, r, padding=1)]),
            Sequential([Conv2d(2, 4, 1, r, stride=2), BatchNorm(4)]),
            ReLU()), normal(2, 2, 5, 5)),
        Example("pre_ln_attention", lambda r: Residual(
            Sequential([LayerNorm(8), SelfAttention(8, 4, r, causal=True)])), normal(2, 3, 8)),
    ],
}


@pytest.fixture
def layer_examples() -> dict[str, list[Example]]:
    return EXAMPLES
