"""The published models (full-size shapes by default) and their size functions, by the
names the zoo registers them under: `nn.cnn_zoo` and `nn.transformer_zoo` hold them.

Kept apart from `nn.models` so its registries take them in one line each
(`**published.MODELS`, `**published.SIZES`).
"""
from __future__ import annotations

from collections.abc import Callable

from simdl.nn import cnn_zoo, transformer_zoo
from simdl.nn.chain import Chain
from simdl.nn.zoo_args import Size

MODELS: dict[str, Callable[..., Chain]] = {
    "resnet18": cnn_zoo.resnet18,
    "resnet50": cnn_zoo.resnet50,
    "mobilenet_v2": cnn_zoo.mobilenet_v2,
    "mobilenet_v3_small": cnn_zoo.mobilenet_v3_small,
    "efficientnet_b0": cnn_zoo.efficientnet_b0,
    "deit_tiny": transformer_zoo.deit_tiny,
    "mobilebert": transformer_zoo.mobilebert,
}

SIZES: dict[str, Callable[..., Size]] = {
    "resnet18": cnn_zoo.resnet18_size,
    "resnet50": cnn_zoo.resnet50_size,
    "mobilenet_v2": cnn_zoo.mobilenet_v2_size,
    "mobilenet_v3_small": cnn_zoo.mobilenet_v3_small_size,
    "efficientnet_b0": cnn_zoo.efficientnet_b0_size,
    "deit_tiny": transformer_zoo.deit_tiny_size,
    "mobilebert": transformer_zoo.mobilebert_size,
}
