"""The kernels of the function plane, in one namespace, and the LAYERS registry.

Each kernel lives with its family (dense, conv, norm, attention, compose);
this module re-exports them and maps a lower-case name to each class.
Knows layers; knows nothing of devices, networks or time.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from simdl.errors import SimdlError
from simdl.nn.attention import SelfAttention
from simdl.nn.compose import Composite, Dotted, Residual, Sequential
from simdl.nn.conv import Conv2d
from simdl.nn.pool import AvgPool, GlobalAvgPool, MaxPool
from simdl.nn.core import Cost, Layer
from simdl.nn.dense import (GELU, Embedding, Flatten, Linear, ReLU, ReLU6, SoftmaxCrossEntropy,
                            softmax)
from simdl.nn.norm import BatchNorm, LayerNorm

__all__ = [
    "LAYERS", "get", "astype", "Layer", "Cost", "Composite", "Dotted",
    "Linear", "Conv2d", "BatchNorm", "ReLU", "ReLU6", "GELU", "MaxPool", "AvgPool",
    "GlobalAvgPool", "Flatten", "LayerNorm", "Embedding", "SelfAttention", "Sequential",
    "Residual", "SoftmaxCrossEntropy", "softmax",
]

LAYERS: dict[str, type[Layer]] = {
    "linear": Linear,
    "conv2d": Conv2d,
    "batchnorm": BatchNorm,
    "relu": ReLU,
    "relu6": ReLU6,
    "gelu": GELU,
    "maxpool": MaxPool,
    "avgpool": AvgPool,
    "globalavgpool": GlobalAvgPool,
    "flatten": Flatten,
    "layernorm": LayerNorm,
    "embedding": Embedding,
    "attention": SelfAttention,
    "sequential": Sequential,
    "residual": Residual,
}


def get(name: str) -> type[Layer]:
    """The layer class registered as `name`, or a SimdlError listing the choices."""
    try:
        return LAYERS[name]
    except KeyError:
        raise SimdlError("layer", name, f"choose one of: {', '.join(sorted(LAYERS))}") from None


def astype(layer: Layer, dtype: Any) -> Layer:
    """Cast `layer`'s floating params, grads and buffers to `dtype`, in place; returns `layer`.

    Through a composite's dotted views this replaces the children's arrays, so
    the whole tree changes together (float64 for gradient checks).
    """
    for table in (layer.params, layer.grads, layer.buffers):
        for k in list(table):
            if np.issubdtype(table[k].dtype, np.floating):
                table[k] = table[k].astype(dtype)
    return layer
