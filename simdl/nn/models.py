"""The model zoo: small, cuttable chains built from the kernels in `layers.py`.

A model is one function (size parameters and a `seed`) plus one `MODELS` entry.
Weights come from `simdl.rng.stream(seed, "<model name>")`, so a seed fixes
them bit for bit. Knows layers and shapes; knows nothing of devices or time.
Run `python -m simdl.nn.models NAME [--batch N]` for a model's summary table.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, NamedTuple

import numpy as np

from simdl.errors import SimdlError
from simdl.nn import published
from simdl.nn.chain import Block, Chain
from simdl.nn.layers import (BatchNorm, Conv2d, Embedding, Flatten, GELU,
                             GlobalAvgPool, LayerNorm, Linear, MaxPool, ReLU, ReLU6,
                             Residual, SelfAttention, Sequential)
from simdl.nn.llm import GQAttention, RMSNorm, SwiGLU, TiedHead
from simdl.nn.llm_shapes import LMShape
from simdl.rng import stream

__all__ = ["MODELS", "SIZES", "Size", "build", "mlp", "lenet", "resnet_small",
           "mobilenet_small", "tiny_transformer", "decoder_lm", "decoder_lm_from"]


def _positive(model: str, **sizes: int) -> None:
    for field, value in sizes.items():
        if int(value) != value or value < 1:
            raise SimdlError(f"model.{model}.{field}", value, "must be a positive integer")


def mlp(in_dim: int = 32, hidden: int = 64, depth: int = 2, n_classes: int = 4,
        seed: int = 0) -> Chain:
    """`depth` hidden Linear+ReLU blocks, then a Linear head. x: (N, in_dim) -> (N, n_classes)."""
    _positive("mlp", in_dim=in_dim, hidden=hidden, depth=depth, n_classes=n_classes)
    rng = stream(seed, "mlp")
    blocks, width = [], in_dim
    for i in range(depth):
        blocks.append(Block(f"fc{i + 1}", Sequential([Linear(width, hidden, rng), ReLU()])))
        width = hidden
    blocks.append(Block("head", Sequential([Linear(width, n_classes, rng)])))
    return Chain(blocks, (in_dim,), np.float32, n_classes, "mlp")


def lenet(in_ch: int = 1, size: int = 28, n_classes: int = 10, seed: int = 0) -> Chain:
    """LeNet-5 (LeCun et al. 1998) with ReLU and max pooling: conv-pool, conv-pool, fc, fc, head.

    x: (N, in_ch, size, size); conv1 pads 2 so 28x28 gives the classic 16x5x5 features.
    """
    _positive("lenet", in_ch=in_ch, size=size, n_classes=n_classes)
    feat = (size // 2 - 4) // 2  # conv1 keeps size, pool halves, conv2 (5x5) trims 4, pool halves
    if feat < 1:
        raise SimdlError("model.lenet.size", size, "must be at least 12 (two 5x5 convs, two pools)")
    rng = stream(seed, "lenet")
    blocks = [
        Block("conv1", Sequential([Conv2d(in_ch, 6, 5, rng, padding=2), ReLU(), MaxPool(2)])),
        Block("conv2", Sequential([Conv2d(6, 16, 5, rng), ReLU(), MaxPool(2)])),
        Block("fc1", Sequential([Flatten(), Linear(16 * feat * feat, 120, rng), ReLU()])),
        Block("fc2", Sequential([Linear(120, 84, rng), ReLU()])),
        Block("head", Sequential([Linear(84, n_classes, rng)])),
    ]
    return Chain(blocks, (in_ch, size, size), np.float32, n_classes, "lenet")


def _conv_bn(c_in: int, c_out: int, k: int, rng: np.random.Generator, stride: int = 1,
             groups: int = 1) -> list[Any]:
    """Conv (no bias: BatchNorm's shift replaces it) then BatchNorm."""
    conv = Conv2d(c_in, c_out, k, rng, stride=stride, padding=k // 2, groups=groups, bias=False)
    return [conv, BatchNorm(c_out)]


def _basic_block(c_in: int, c_out: int, stride: int, rng: np.random.Generator) -> Residual:
    """ResNet basic block (He et al. 2016): relu(bn(conv(relu(bn(conv x)))) + shortcut x).

    When the shape changes, the shortcut is a strided 1x1 conv + BatchNorm ("option B").
    """
    body = Sequential([*_conv_bn(c_in, c_out, 3, rng, stride), ReLU(),
                       *_conv_bn(c_out, c_out, 3, rng)])
    shortcut = None
    if stride != 1 or c_in != c_out:
        shortcut = Sequential(_conv_bn(c_in, c_out, 1, rng, stride))
    return Residual(body, shortcut, ReLU())


def resnet_small(in_ch: int = 3, size: int = 32, width: int = 16, n_classes: int = 10,
                 seed: int = 0) -> Chain:
    """A CIFAR-style ResNet: 3x3 stem, four basic blocks (two of them stride 2), pool, head.

    x: (N, in_ch, size, size); channels width, width, 2*width, 2*width, 4*width.
    """
    _positive("resnet_small", in_ch=in_ch, size=size, width=width, n_classes=n_classes)
    rng = stream(seed, "resnet_small")
    w = width
    blocks = [Block("stem", Sequential([*_conv_bn(in_ch, w, 3, rng), ReLU()]))]
    for name, c_in, c_out, stride in (("res1", w, w, 1), ("res2", w, 2 * w, 2),
                                      ("res3", 2 * w, 2 * w, 1), ("res4", 2 * w, 4 * w, 2)):
        blocks.append(Block(name, _basic_block(c_in, c_out, stride, rng)))
    blocks.append(Block("head", Sequential([GlobalAvgPool(), Linear(4 * w, n_classes, rng)])))
    return Chain(blocks, (in_ch, size, size), np.float32, n_classes, "resnet_small")


def _separable(c_in: int, c_out: int, stride: int, rng: np.random.Generator) -> Sequential:
    """MobileNet depthwise-separable block (Howard et al. 2017), with ReLU6 as in MobileNetV2."""
    return Sequential([*_conv_bn(c_in, c_in, 3, rng, stride, groups=c_in), ReLU6(),
                       *_conv_bn(c_in, c_out, 1, rng), ReLU6()])


def mobilenet_small(in_ch: int = 3, size: int = 32, width: int = 16, n_classes: int = 10,
                    seed: int = 0) -> Chain:
    """A narrow MobileNetV1 for CIFAR-sized input: 3x3 stem, five separable blocks, pool, head.

    x: (N, in_ch, size, size); the stem keeps the resolution (CIFAR practice),
    blocks sep2 and sep4 halve it; channels grow from width to 8*width.
    """
    _positive("mobilenet_small", in_ch=in_ch, size=size, width=width, n_classes=n_classes)
    rng = stream(seed, "mobilenet_small")
    w = width
    blocks = [Block("stem", Sequential([*_conv_bn(in_ch, w, 3, rng), ReLU6()]))]
    plan = ((w, 2 * w, 1), (2 * w, 4 * w, 2), (4 * w, 4 * w, 1), (4 * w, 8 * w, 2),
            (8 * w, 8 * w, 1))
    for i, (c_in, c_out, stride) in enumerate(plan):
        blocks.append(Block(f"sep{i + 1}", _separable(c_in, c_out, stride, rng)))
    blocks.append(Block("head", Sequential([GlobalAvgPool(), Linear(8 * w, n_classes, rng)])))
    return Chain(blocks, (in_ch, size, size), np.float32, n_classes, "mobilenet_small")


def tiny_transformer(vocab: int = 32, d_model: int = 64, n_heads: int = 4, n_layers: int = 2,
                     seq_len: int = 16, seed: int = 0) -> Chain:
    """A decoder-only, causal, pre-LayerNorm transformer (GPT-2 layout, Radford et al. 2019).

    tokens (N, seq_len) int64 -> logits (N, seq_len, vocab). Blocks: embed
    (tokens + learned positions), one block per layer (attention residual, then
    a 4x GELU MLP residual), head (final LayerNorm + Linear).
    """
    _positive("tiny_transformer", vocab=vocab, d_model=d_model, n_heads=n_heads,
              n_layers=n_layers, seq_len=seq_len)
    if d_model % n_heads:
        raise SimdlError("model.tiny_transformer.n_heads", n_heads,
                         f"must divide d_model={d_model}")
    rng = stream(seed, "tiny_transformer")
    d = d_model
    blocks = [Block("embed", Embedding(vocab, d, rng, max_len=seq_len))]
    for i in range(n_layers):
        attn = Residual(Sequential([LayerNorm(d), SelfAttention(d, n_heads, rng, causal=True)]))
        ffn = Residual(Sequential([LayerNorm(d), Linear(d, 4 * d, rng), GELU(),
                                   Linear(4 * d, d, rng)]))
        blocks.append(Block(f"layer{i + 1}", Sequential([attn, ffn])))
    blocks.append(Block("head", Sequential([LayerNorm(d), Linear(d, vocab, rng)])))
    return Chain(blocks, (seq_len,), np.int64, vocab, "tiny_transformer")


def decoder_lm_from(shape: LMShape, seq_len: int, seed: int = 0) -> Chain:
    """The real decoder of `shape` (Llama layout; see `decoder_lm`), inputs of seq_len tokens."""
    _positive("decoder_lm", seq_len=seq_len)
    rng = stream(seed, "decoder_lm")
    s, d = shape, shape.dim
    embed = Embedding(s.vocab, d, rng)
    blocks = [Block("embed", embed)]
    for i in range(s.n_layers):
        attn = GQAttention(d, s.n_heads, s.n_kv_heads, s.head_dim, rng, s.rope_theta, s.qkv_bias)
        blocks.append(Block(f"layer{i + 1}", Sequential([
            Residual(Sequential([RMSNorm(d, s.norm_eps), attn])),
            Residual(Sequential([RMSNorm(d, s.norm_eps), SwiGLU(d, s.ffn_hidden, rng)]))])))
    proj = TiedHead(embed) if s.tied else Linear(d, s.vocab, rng, bias=False)
    blocks.append(Block("head", Sequential([RMSNorm(d, s.norm_eps), proj])))
    return Chain(blocks, (seq_len,), np.int64, s.vocab, "decoder_lm")


def decoder_lm(vocab: int = 32, dim: int = 16, n_layers: int = 2, n_heads: int = 4,
               n_kv_heads: int = 2, ffn_hidden: int = 24, tied: bool = True,
               rope_theta: float = 10000.0, qkv_bias: bool = False, seq_len: int = 8,
               seed: int = 0) -> Chain:
    """A Llama-style decoder: tokens (N, seq_len) int64 -> logits (N, seq_len, vocab).

    Blocks: embed (no learned positions: rotary ones in attention), one block per layer
    (pre-RMSNorm grouped-query attention with RoPE, residual; pre-RMSNorm SwiGLU MLP,
    residual), head (final RMSNorm, then the tied embedding or its own matrix).
    The shape is an `nn.llm_shapes.LMShape`; `nn.kv` runs it with a KV cache.
    """
    shape = LMShape(vocab, dim, n_layers, n_heads, n_kv_heads, ffn_hidden, tied=tied,
                    rope_theta=rope_theta, context=seq_len, qkv_bias=qkv_bias)
    return decoder_lm_from(shape, seq_len, seed)


class Size(NamedTuple):
    """A zoo model's trainable scalars and one sample's input shape, known before it is built."""

    params: int
    in_shape: tuple[int, ...]


def _conv(c_in: int, c_out: int, k: int, groups: int = 1, bias: bool = True) -> int:
    return c_out * (c_in // groups) * k * k + (c_out if bias else 0)


def _conv_bn_params(c_in: int, c_out: int, k: int, groups: int = 1) -> int:
    return _conv(c_in, c_out, k, groups, bias=False) + 2 * c_out


def mlp_size(in_dim: int = 32, hidden: int = 64, depth: int = 2, n_classes: int = 4,
             seed: int = 0) -> Size:
    """`mlp`'s size from its arguments, with nothing allocated."""
    _positive("mlp", in_dim=in_dim, hidden=hidden, depth=depth, n_classes=n_classes)
    params = (in_dim + 1) * hidden + (depth - 1) * (hidden + 1) * hidden + (hidden + 1) * n_classes
    return Size(params, (in_dim,))


def lenet_size(in_ch: int = 1, size: int = 28, n_classes: int = 10, seed: int = 0) -> Size:
    """`lenet`'s size from its arguments, with nothing allocated."""
    _positive("lenet", in_ch=in_ch, size=size, n_classes=n_classes)
    feat = max((size // 2 - 4) // 2, 0)
    params = (_conv(in_ch, 6, 5) + _conv(6, 16, 5) + (16 * feat * feat + 1) * 120
              + 121 * 84 + 85 * n_classes)
    return Size(params, (in_ch, size, size))


def resnet_small_size(in_ch: int = 3, size: int = 32, width: int = 16, n_classes: int = 10,
                      seed: int = 0) -> Size:
    """`resnet_small`'s size from its arguments, with nothing allocated."""
    _positive("resnet_small", in_ch=in_ch, size=size, width=width, n_classes=n_classes)
    w = width
    params = _conv_bn_params(in_ch, w, 3)
    for c_in, c_out, stride in ((w, w, 1), (w, 2 * w, 2), (2 * w, 2 * w, 1), (2 * w, 4 * w, 2)):
        params += _conv_bn_params(c_in, c_out, 3) + _conv_bn_params(c_out, c_out, 3)
        if stride != 1 or c_in != c_out:
            params += _conv_bn_params(c_in, c_out, 1)
    return Size(params + (4 * w + 1) * n_classes, (in_ch, size, size))


def mobilenet_small_size(in_ch: int = 3, size: int = 32, width: int = 16, n_classes: int = 10,
                         seed: int = 0) -> Size:
    """`mobilenet_small`'s size from its arguments, with nothing allocated."""
    _positive("mobilenet_small", in_ch=in_ch, size=size, width=width, n_classes=n_classes)
    w = width
    params = _conv_bn_params(in_ch, w, 3)
    for c_in, c_out in ((w, 2 * w), (2 * w, 4 * w), (4 * w, 4 * w), (4 * w, 8 * w),
                        (8 * w, 8 * w)):
        params += _conv_bn_params(c_in, c_in, 3, groups=c_in) + _conv_bn_params(c_in, c_out, 1)
    return Size(params + (8 * w + 1) * n_classes, (in_ch, size, size))


def tiny_transformer_size(vocab: int = 32, d_model: int = 64, n_heads: int = 4,
                          n_layers: int = 2, seq_len: int = 16, seed: int = 0) -> Size:
    """`tiny_transformer`'s size from its arguments, with nothing allocated."""
    _positive("tiny_transformer", vocab=vocab, d_model=d_model, n_heads=n_heads,
              n_layers=n_layers, seq_len=seq_len)
    d = d_model
    layer = 2 * d + 4 * (d + 1) * d + 2 * d + (d + 1) * 4 * d + (4 * d + 1) * d
    params = (vocab + seq_len) * d + n_layers * layer + 2 * d + (d + 1) * vocab
    return Size(params, (seq_len,))


def decoder_lm_size(vocab: int = 32, dim: int = 16, n_layers: int = 2, n_heads: int = 4,
                    n_kv_heads: int = 2, ffn_hidden: int = 24, tied: bool = True,
                    rope_theta: float = 10000.0, qkv_bias: bool = False, seq_len: int = 8,
                    seed: int = 0) -> Size:
    """`decoder_lm`'s size from its arguments, with nothing allocated."""
    _positive("decoder_lm", seq_len=seq_len)
    shape = LMShape(vocab, dim, n_layers, n_heads, n_kv_heads, ffn_hidden, tied=tied,
                    rope_theta=rope_theta, context=seq_len, qkv_bias=qkv_bias)
    return Size(shape.n_params(), (seq_len,))


#: Model name -> its size function: the builder's own signature, nothing allocated.
SIZES: dict[str, Callable[..., Size]] = {
    "mlp": mlp_size,
    "lenet": lenet_size,
    "resnet_small": resnet_small_size,
    "mobilenet_small": mobilenet_small_size,
    "tiny_transformer": tiny_transformer_size,
    "decoder_lm": decoder_lm_size,
    **published.SIZES,  # full-size published shapes by default (nn.cnn_zoo, nn.transformer_zoo)
}


MODELS: dict[str, Callable[..., Chain]] = {
    "mlp": mlp,
    "lenet": lenet,
    "resnet_small": resnet_small,
    "mobilenet_small": mobilenet_small,
    "tiny_transformer": tiny_transformer,
    "decoder_lm": decoder_lm,
    **published.MODELS,
}


def build(name: str, **kwargs: Any) -> Chain:
    """The zoo model `name` built with `kwargs` (sizes and seed)."""
    if name not in MODELS:
        raise SimdlError("model.name", name, f"choose one of: {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)


def main(argv: list[str] | None = None) -> int:
    """Print a zoo model's summary table."""
    parser = argparse.ArgumentParser(prog="python -m simdl.nn.models",
                                     description="Print a zoo model's blocks, FLOPs and bytes.")
    parser.add_argument("name", help=f"one of: {', '.join(sorted(MODELS))}")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    args = parser.parse_args(argv)
    try:
        if args.batch < 1:
            raise SimdlError("--batch", args.batch, "must be a positive integer")
        print(build(args.name).summary(args.batch))
    except SimdlError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
