"""Published convolutional networks at their published shapes: ResNet-18 and -50,
MobileNetV2, MobileNetV3-small and EfficientNet-B0, as cuttable chains.

Layouts are torchvision's (v0.15+ `torchvision/models/{resnet,mobilenetv2,mobilenetv3,
efficientnet}.py`), whose documented parameter counts at 224x224x3 and 1000 classes
these reproduce exactly: resnet18 11,689,512; resnet50 25,557,032; mobilenet_v2
3,504,872; mobilenet_v3_small 2,542,856; efficientnet_b0 5,288,548
(pytorch.org/vision/stable/models, "num_params"). Their multiply-adds round to the
published figures (tests/nn/test_full_models.py): ResNet-18 1.81G and ResNet-50 4.09G
(torchvision's "GFLOPS", which count multiply-adds), MobileNetV2 300M (Sandler et al.
2018, Table 4), EfficientNet-B0 0.39B (Tan & Le 2019, Table 2); MobileNetV3-small is
56.5M, torchvision's 0.06G, 0.9% over the paper's 56M (Howard et al. 2019, Table 3).
Differences from torchvision that change no count: dropout is left out (an identity
at inference) and ResNet's padded max-pool is Pad2d(-inf) then MaxPool.

Every builder takes its size (`size` the input resolution, `width`, `n_classes`) so
a real-mode run can be small; the defaults are the published model. Each has a size
function (parameters and input shape from the arguments, nothing allocated).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from itertools import pairwise
from typing import NamedTuple

import numpy as np

from simdl.nn.activations import Hardsigmoid, Hardswish, Sigmoid, SiLU
from simdl.nn.chain import Block, Chain
from simdl.nn.compose import Residual, Sequential
from simdl.nn.conv import Conv2d
from simdl.nn.core import Layer
from simdl.nn.dense import Linear, ReLU, ReLU6
from simdl.nn.norm import BatchNorm
from simdl.nn.pool import GlobalAvgPool, MaxPool
from simdl.nn.vision_parts import Pad2d, SqueezeExcite
from simdl.nn.zoo_args import Size, check
from simdl.rng import stream

Act = Callable[[], Layer]


def divisible(v: float, divisor: int = 8) -> int:
    """torchvision's `_make_divisible`: v rounded to a multiple of `divisor`, at least
    `divisor`, and never more than 10% below v."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def conv_bn(c_in: int, c_out: int, k: int, rng: np.random.Generator, stride: int = 1,
            groups: int = 1, act: Act | None = None) -> list[Layer]:
    """Conv (no bias: BatchNorm's shift replaces it, padding k // 2), BatchNorm, activation."""
    conv = Conv2d(c_in, c_out, k, rng, stride=stride, padding=k // 2, groups=groups, bias=False)
    return [conv, BatchNorm(c_out)] + ([act()] if act else [])


def conv_bn_params(c_in: int, c_out: int, k: int, groups: int = 1) -> int:
    return c_out * (c_in // groups) * k * k + 2 * c_out


def _chain(blocks: list[Block], in_ch: int, size: int, n_classes: int, name: str) -> Chain:
    return Chain(blocks, (in_ch, size, size), np.float32, n_classes, name)


# -- ResNet (He et al. 2016; torchvision's v1.5: the stride sits on the 3x3 conv) ------------

RESNET_STAGES = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet50": ("bottleneck", (3, 4, 6, 3))}


def _resnet_plan(kind: str, depths: tuple[int, ...], width: int) -> list[tuple[int, int, int]]:
    """(c_in, inner width, stride) of every residual block, in order."""
    expansion = 4 if kind == "bottleneck" else 1
    plan, c_in = [], width
    for stage, n in enumerate(depths):
        inner = width * 2 ** stage
        for i in range(n):
            plan.append((c_in, inner, 2 if i == 0 and stage > 0 else 1))
            c_in = inner * expansion
    return plan


def _residual_block(kind: str, c_in: int, inner: int, stride: int,
                    rng: np.random.Generator) -> Residual:
    if kind == "basic":
        c_out = inner
        body = Sequential([*conv_bn(c_in, inner, 3, rng, stride, act=ReLU),
                           *conv_bn(inner, inner, 3, rng)])
    else:
        c_out = 4 * inner
        body = Sequential([*conv_bn(c_in, inner, 1, rng, act=ReLU),
                           *conv_bn(inner, inner, 3, rng, stride, act=ReLU),
                           *conv_bn(inner, c_out, 1, rng)])
    shortcut = None
    if stride != 1 or c_in != c_out:
        shortcut = Sequential(conv_bn(c_in, c_out, 1, rng, stride))
    return Residual(body, shortcut, ReLU())


def _resnet(name: str, in_ch: int, size: int, width: int, n_classes: int, seed: int) -> Chain:
    check(name, in_ch=in_ch, size=size, width=width, n_classes=n_classes)
    kind, depths = RESNET_STAGES[name]
    rng = stream(seed, name)
    blocks = [Block("stem", Sequential([*conv_bn(in_ch, width, 7, rng, 2, act=ReLU),
                                        Pad2d(1, -np.inf), MaxPool(3, 2)]))]
    c_out = width
    for i, (c_in, inner, stride) in enumerate(_resnet_plan(kind, depths, width)):
        blocks.append(Block(f"res{i + 1}", _residual_block(kind, c_in, inner, stride, rng)))
        c_out = inner * (4 if kind == "bottleneck" else 1)
    blocks.append(Block("head", Sequential([GlobalAvgPool(), Linear(c_out, n_classes, rng)])))
    return _chain(blocks, in_ch, size, n_classes, name)


def _resnet_params(name: str, in_ch: int, width: int, n_classes: int) -> int:
    kind, depths = RESNET_STAGES[name]
    params, c_out = conv_bn_params(in_ch, width, 7), width
    for c_in, inner, stride in _resnet_plan(kind, depths, width):
        if kind == "basic":
            c_out = inner
            params += conv_bn_params(c_in, inner, 3) + conv_bn_params(inner, inner, 3)
        else:
            c_out = 4 * inner
            params += (conv_bn_params(c_in, inner, 1) + conv_bn_params(inner, inner, 3)
                       + conv_bn_params(inner, c_out, 1))
        if stride != 1 or c_in != c_out:
            params += conv_bn_params(c_in, c_out, 1)
    return params + (c_out + 1) * n_classes


def resnet18(in_ch: int = 3, size: int = 224, width: int = 64, n_classes: int = 1000,
             seed: int = 0) -> Chain:
    """ResNet-18: 7x7 stem and padded 3x3 max-pool, eight basic blocks, pool, head.
    x: (N, in_ch, size, size); stage widths width, 2, 4, 8 x width."""
    return _resnet("resnet18", in_ch, size, width, n_classes, seed)


def resnet50(in_ch: int = 3, size: int = 224, width: int = 64, n_classes: int = 1000,
             seed: int = 0) -> Chain:
    """ResNet-50: the ResNet-18 stem, sixteen bottleneck blocks (1x1, 3x3, 1x1 at 4x out)."""
    return _resnet("resnet50", in_ch, size, width, n_classes, seed)


# -- inverted residuals: MobileNetV2, MobileNetV3-small, EfficientNet-B0 --------------------

class IR(NamedTuple):
    """One inverted-residual block's shape."""

    c_in: int
    expanded: int
    c_out: int
    k: int
    stride: int
    squeeze: int    # SE squeeze width; 0: no SE
    act: str        # "relu6", "relu", "hswish" or "silu"


ACTS: dict[str, Act] = {"relu6": ReLU6, "relu": ReLU, "hswish": Hardswish, "silu": SiLU}
SE_GATE: dict[str, tuple[Act, Act]] = {"hswish": (ReLU, Hardsigmoid), "relu": (ReLU, Hardsigmoid),
                                       "silu": (SiLU, Sigmoid)}


def _inverted(b: IR, rng: np.random.Generator) -> Layer:
    """Expand 1x1 (unless expanded == c_in), depthwise k x k, optional SE, project 1x1
    (linear: no activation); a residual when the shape is kept (Sandler et al. 2018)."""
    c_in, exp, c_out, k, stride, squeeze, act = b
    layers = conv_bn(c_in, exp, 1, rng, act=ACTS[act]) if exp != c_in else []
    layers += conv_bn(exp, exp, k, rng, stride, groups=exp, act=ACTS[act])
    if squeeze:
        mid, gate = SE_GATE[act]
        layers.append(SqueezeExcite.of(exp, squeeze, mid(), gate(), rng))
    body = Sequential(layers + conv_bn(exp, c_out, 1, rng))
    return Residual(body) if stride == 1 and c_in == c_out else body


def _inverted_params(b: IR) -> int:
    c_in, exp, c_out, k, _, squeeze, _ = b
    se = (exp + 1) * squeeze + (squeeze + 1) * exp if squeeze else 0
    expand = conv_bn_params(c_in, exp, 1) if exp != c_in else 0
    return expand + conv_bn_params(exp, exp, k, exp) + se + conv_bn_params(exp, c_out, 1)


def _v2_plan(width: float) -> tuple[int, list[IR], int]:
    """MobileNetV2 (t, c, n, s) table, Sandler et al. 2018 Table 2."""
    table = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1))
    stem = c_in = divisible(32 * width)
    plan = []
    for t, c, n, s in table:
        c_out = divisible(c * width)
        for i in range(n):
            plan.append(IR(c_in, round(c_in * t), c_out, 3, s if i == 0 else 1, 0, "relu6"))
            c_in = c_out
    return stem, plan, divisible(1280 * max(1.0, width))


def _v3_small_plan(width: float) -> tuple[int, list[IR], int]:
    """MobileNetV3-small: Howard et al. 2019 Table 2 (c_in, k, expanded, c_out, SE, act, s)."""
    table = ((16, 3, 16, 16, 1, "relu", 2), (16, 3, 72, 24, 0, "relu", 2),
             (24, 3, 88, 24, 0, "relu", 1), (24, 5, 96, 40, 1, "hswish", 2),
             (40, 5, 240, 40, 1, "hswish", 1), (40, 5, 240, 40, 1, "hswish", 1),
             (40, 5, 120, 48, 1, "hswish", 1), (48, 5, 144, 48, 1, "hswish", 1),
             (48, 5, 288, 96, 1, "hswish", 2), (96, 5, 576, 96, 1, "hswish", 1),
             (96, 5, 576, 96, 1, "hswish", 1))
    plan = []
    for c_in, k, exp, c_out, se, act, s in table:
        e = divisible(exp * width)
        plan.append(IR(divisible(c_in * width), e, divisible(c_out * width), k, s,
                       divisible(e // 4) if se else 0, act))
    return plan[0].c_in, plan, divisible(1024 * width)


def _b0_plan(width: float, depth: float) -> tuple[int, list[IR], int]:
    """EfficientNet-B0 (expand, k, s, c_in, c_out, layers): Tan & Le 2019 Table 1; the
    SE squeeze is a quarter of the block's input channels."""
    table = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
             (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
             (6, 3, 1, 192, 320, 1))
    plan = []
    for t, k, s, c_in, c_out, n in table:
        c_in, c_out = divisible(c_in * width), divisible(c_out * width)
        for i in range(math.ceil(n * depth)):
            src = c_in if i == 0 else c_out
            plan.append(IR(src, divisible(src * t), c_out, k, s if i == 0 else 1,
                           max(1, src // 4), "silu"))
    return plan[0].c_in, plan, 4 * plan[-1].c_out


def _mobile(name: str, stem: int, plan: list[IR], last: int, head: list[int], act: str,
            in_ch: int, size: int, n_classes: int, seed: int) -> Chain:
    """Stem conv 3x3 stride 2, the inverted residuals, a 1x1 conv to `last` channels,
    global pooling, then Linear layers through `head` widths to the classes."""
    rng = stream(seed, name)
    a = ACTS[act]
    blocks = [Block("stem", Sequential(conv_bn(in_ch, stem, 3, rng, 2, act=a)))]
    blocks += [Block(f"ir{i + 1}", _inverted(b, rng)) for i, b in enumerate(plan)]
    blocks.append(Block("last", Sequential(conv_bn(plan[-1].c_out, last, 1, rng, act=a))))
    layers: list[Layer] = [GlobalAvgPool()]
    widths = [last, *head, n_classes]
    for i, (n_in, n_out) in enumerate(pairwise(widths)):
        layers += [Linear(n_in, n_out, rng)] + ([a()] if i < len(widths) - 2 else [])
    blocks.append(Block("head", Sequential(layers)))
    return _chain(blocks, in_ch, size, n_classes, name)


def _mobile_params(stem: int, plan: list[IR], last: int, head: list[int], in_ch: int,
                   n_classes: int) -> int:
    params = conv_bn_params(in_ch, stem, 3) + sum(map(_inverted_params, plan))
    params += conv_bn_params(plan[-1].c_out, last, 1)
    widths = [last, *head, n_classes]
    return params + sum((a + 1) * b for a, b in pairwise(widths))


def _v3_head(width: float) -> tuple[int, list[IR], int, list[int]]:
    stem, plan, hidden = _v3_small_plan(width)
    return stem, plan, 6 * plan[-1].c_out, [hidden]


def mobilenet_v2(in_ch: int = 3, size: int = 224, width: float = 1.0, n_classes: int = 1000,
                 seed: int = 0) -> Chain:
    """MobileNetV2: 17 inverted residuals (ReLU6), 1x1 conv to 1280, pool, Linear."""
    check("mobilenet_v2", in_ch=in_ch, size=size, n_classes=n_classes, width_mult=width)
    stem, plan, last = _v2_plan(width)
    return _mobile("mobilenet_v2", stem, plan, last, [], "relu6", in_ch, size, n_classes, seed)


def mobilenet_v3_small(in_ch: int = 3, size: int = 224, width: float = 1.0,
                       n_classes: int = 1000, seed: int = 0) -> Chain:
    """MobileNetV3-small: 11 blocks (ReLU or hard-swish, SE with hard-sigmoid), 1x1 conv
    to 6x the last width, pool, Linear to 1024, hard-swish, Linear."""
    check("mobilenet_v3_small", in_ch=in_ch, size=size, n_classes=n_classes, width_mult=width)
    stem, plan, last, head = _v3_head(width)
    return _mobile("mobilenet_v3_small", stem, plan, last, head, "hswish", in_ch, size,
                   n_classes, seed)


def efficientnet_b0(in_ch: int = 3, size: int = 224, width: float = 1.0, depth: float = 1.0,
                    n_classes: int = 1000, seed: int = 0) -> Chain:
    """EfficientNet-B0: 16 MBConv blocks (SiLU, SE with sigmoid), 1x1 conv to 1280, pool,
    Linear. `width` and `depth` scale channels and blocks per stage as B1-B7 do."""
    check("efficientnet_b0", in_ch=in_ch, size=size, n_classes=n_classes, width_mult=width,
           depth_mult=depth)
    stem, plan, last = _b0_plan(width, depth)
    return _mobile("efficientnet_b0", stem, plan, last, [], "silu", in_ch, size, n_classes,
                   seed)


# -- sizes before building -------------------------------------------------------------------

def resnet18_size(in_ch: int = 3, size: int = 224, width: int = 64, n_classes: int = 1000,
                  seed: int = 0) -> Size:
    """`resnet18`'s (parameters, input shape), nothing allocated."""
    check("resnet18", in_ch=in_ch, size=size, width=width, n_classes=n_classes)
    return Size(_resnet_params("resnet18", in_ch, width, n_classes), (in_ch, size, size))


def resnet50_size(in_ch: int = 3, size: int = 224, width: int = 64, n_classes: int = 1000,
                  seed: int = 0) -> Size:
    """`resnet50`'s (parameters, input shape), nothing allocated."""
    check("resnet50", in_ch=in_ch, size=size, width=width, n_classes=n_classes)
    return Size(_resnet_params("resnet50", in_ch, width, n_classes), (in_ch, size, size))


def mobilenet_v2_size(in_ch: int = 3, size: int = 224, width: float = 1.0,
                      n_classes: int = 1000, seed: int = 0) -> Size:
    """`mobilenet_v2`'s (parameters, input shape), nothing allocated."""
    check("mobilenet_v2", in_ch=in_ch, size=size, n_classes=n_classes, width_mult=width)
    stem, plan, last = _v2_plan(width)
    return Size(_mobile_params(stem, plan, last, [], in_ch, n_classes), (in_ch, size, size))


def mobilenet_v3_small_size(in_ch: int = 3, size: int = 224, width: float = 1.0,
                            n_classes: int = 1000, seed: int = 0) -> Size:
    """`mobilenet_v3_small`'s (parameters, input shape), nothing allocated."""
    check("mobilenet_v3_small", in_ch=in_ch, size=size, n_classes=n_classes, width_mult=width)
    stem, plan, last, head = _v3_head(width)
    return Size(_mobile_params(stem, plan, last, head, in_ch, n_classes), (in_ch, size, size))


def efficientnet_b0_size(in_ch: int = 3, size: int = 224, width: float = 1.0,
                         depth: float = 1.0, n_classes: int = 1000,
                         seed: int = 0) -> Size:
    """`efficientnet_b0`'s (parameters, input shape), nothing allocated."""
    check("efficientnet_b0", in_ch=in_ch, size=size, n_classes=n_classes, width_mult=width,
           depth_mult=depth)
    stem, plan, last = _b0_plan(width, depth)
    return Size(_mobile_params(stem, plan, last, [], in_ch, n_classes), (in_ch, size, size))

