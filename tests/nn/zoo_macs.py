"""Multiply-adds of a chain's GEMM work (convolutions, Linear layers, attention scores and
weighted sums), walked from shapes alone: the figure papers call "FLOPs" or "MAdds".

A test helper (tests/conftest.py puts this folder on sys.path). It follows the same
composition rules the layers' `cost` methods do, and records each GEMM leaf with the
input shape it was given, so a test can hold the walk against a real forward's calls.
"""
from __future__ import annotations

from simdl.nn.attention import SelfAttention
from simdl.nn.bert_parts import BottleneckAttention
from simdl.nn.chain import Chain
from simdl.nn.compose import Residual, Sequential
from simdl.nn.conv import Conv2d
from simdl.nn.core import Layer
from simdl.nn.dense import Linear
from simdl.nn.vision_parts import SqueezeExcite


def walk(layer: Layer, shape: tuple, calls: list) -> tuple[int, tuple]:
    """(multiply-adds, out shape) of `layer` on `shape`; appends (leaf, in shape) per GEMM leaf."""
    if isinstance(layer, Sequential):
        total = 0
        for child in layer.layers:
            m, shape = walk(child, shape, calls)
            total += m
        return total, shape
    if isinstance(layer, Residual):
        m, out = walk(layer.body, shape, calls)
        if layer.shortcut is not None:
            m += walk(layer.shortcut, shape, calls)[0]
        if layer.post is not None:
            p, out = walk(layer.post, out, calls)
            m += p
        return m, out
    if isinstance(layer, SqueezeExcite):
        return walk(layer.gate, shape, calls)[0], shape
    if isinstance(layer, BottleneckAttention):
        n, t, _ = shape
        p = layer.parts
        inner = p["q"].n_out
        narrow = (n, t, inner)
        m = (walk(p["bottleneck_in"], shape, calls)[0] + walk(p["bottleneck_att"], shape, calls)[0]
             + walk(p["q"], narrow, calls)[0] + walk(p["k"], narrow, calls)[0]
             + walk(p["v"], shape, calls)[0] + walk(p["o"], narrow, calls)[0])
        return m + 2 * n * t * t * inner, narrow
    if isinstance(layer, SelfAttention):
        n, t, d = shape
        calls.append((layer, tuple(shape)))
        return 4 * n * t * d * d + 2 * n * t * t * d, tuple(shape)
    cost = layer.cost(shape)
    if isinstance(layer, (Conv2d, Linear)):
        calls.append((layer, tuple(shape)))
        return int(cost.fwd_flops) // 2, cost.out_shape
    return 0, cost.out_shape


def chain_macs(chain: Chain, batch: int = 1) -> tuple[int, list]:
    """The chain's multiply-adds for `batch` samples and its GEMM leaves with input shapes."""
    calls: list = []
    shape = (batch, *chain.in_shape)
    total = 0
    for block in chain:
        m, shape = walk(block.layer, shape, calls)
        total += m
    return total, calls
