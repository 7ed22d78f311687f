"""Published small transformers at their published shapes: DeiT-tiny (a vision
transformer) and MobileBERT, as cuttable chains.

DeiT-tiny (Touvron et al. 2021, "Training data-efficient image transformers", Table 1:
embedding 192, 3 heads, 12 layers, 5M parameters; 1.3G multiply-adds at 224x224 as
timm's `deit_tiny_patch16_224` counts them) is 5,717,416 parameters: 16x16 patches
embedded by a strided conv, a class token and learned positions, 12 pre-LayerNorm
encoder layers (eps 1e-6, 4x GELU MLP), a final LayerNorm and a Linear on the class
token. GELU is the tanh approximation (`nn.dense.GELU`); timm's is exact erf, which
changes values, not counts.

MobileBERT (Sun et al. 2020, Table 1 and sec. 3: 24 layers, hidden 512, bottleneck
128, 4 heads, FFN 512 stacked 4 times, embedding 128 with the trigram projection,
NoNorm, ReLU; 25.3M parameters and 5.7G FLOPs at sequence 128 in its Table 3) follows
HuggingFace's `MobileBertConfig` defaults (google/mobilebert-uncased): vocabulary
30,522, 512 positions, 2 token types. Its encoder counts 24,581,888 parameters
(embeddings 4,368,128 + 24 x 842,240); the paper's 25.3M is 3% more, which no
reading of the layer shapes here reproduces, and 2,692,874,240 multiply-adds at
sequence 128 (5.39G FLOPs at 2 each), 5.5% under the paper's 5.7G (both pinned in
tests/nn/test_full_models.py). Weights are N(0, 0.02^2) as BERT's (no LayerNorm
renormalises, and He-scale weights overflow float32 over 24 layers). The head is per
token, Linear(hidden, n_classes) (token classification), so the chain's output is
(N, T, n_classes) as the world's token data expects.

Defaults are the published shapes; every size is an argument, for a small real run.
"""
from __future__ import annotations

import math

import numpy as np

from simdl.errors import SimdlError
from simdl.nn.attention import SelfAttention
from simdl.nn.bert_parts import AddPositions, BottleneckAttention, NoNorm, Trigram
from simdl.nn.chain import Block, Chain
from simdl.nn.compose import Composite, Residual, Sequential
from simdl.nn.conv import Conv2d
from simdl.nn.core import Layer
from simdl.nn.dense import GELU, Embedding, Linear, ReLU
from simdl.nn.norm import LayerNorm
from simdl.nn.vision_parts import FirstToken, PatchTokens
from simdl.nn.zoo_args import Size, check
from simdl.rng import stream

VIT_LN_EPS = 1e-6
#: std of MobileBERT's weights (HuggingFace MobileBertConfig.initializer_range).
BERT_INIT_STD = 0.02


def _deit_check(in_ch: int, size: int, patch: int, dim: int, n_heads: int, n_layers: int,
                n_classes: int) -> int:
    """Checks the sizes; returns the number of patches."""
    check("deit_tiny", in_ch=in_ch, size=size, patch=patch, dim=dim, n_heads=n_heads,
          n_layers=n_layers, n_classes=n_classes)
    if size % patch:
        raise SimdlError("model.deit_tiny.size", size, f"must be a multiple of patch={patch}")
    if dim % n_heads:
        raise SimdlError("model.deit_tiny.n_heads", n_heads, f"must divide dim={dim}")
    return (size // patch) ** 2


def deit_tiny(in_ch: int = 3, size: int = 224, patch: int = 16, dim: int = 192,
              n_heads: int = 3, n_layers: int = 12, n_classes: int = 1000,
              seed: int = 0) -> Chain:
    """A ViT/DeiT encoder: x (N, in_ch, size, size) -> logits (N, n_classes).
    Blocks: embed (patch conv, class token, positions), layer1..n_layers, head."""
    n_patches = _deit_check(in_ch, size, patch, dim, n_heads, n_layers, n_classes)
    rng = stream(seed, "deit_tiny")
    d = dim
    blocks = [Block("embed", Sequential([Conv2d(in_ch, d, patch, rng, stride=patch),
                                         PatchTokens(d, n_patches, rng)]))]
    for i in range(n_layers):
        attn = Residual(Sequential([LayerNorm(d, VIT_LN_EPS), SelfAttention(d, n_heads, rng)]))
        mlp = Residual(Sequential([LayerNorm(d, VIT_LN_EPS), Linear(d, 4 * d, rng), GELU(),
                                   Linear(4 * d, d, rng)]))
        blocks.append(Block(f"layer{i + 1}", Sequential([attn, mlp])))
    blocks.append(Block("head", Sequential([LayerNorm(d, VIT_LN_EPS), FirstToken(),
                                            Linear(d, n_classes, rng)])))
    return Chain(blocks, (in_ch, size, size), np.float32, n_classes, "deit_tiny")


def deit_tiny_size(in_ch: int = 3, size: int = 224, patch: int = 16, dim: int = 192,
                   n_heads: int = 3, n_layers: int = 12, n_classes: int = 1000,
                   seed: int = 0) -> Size:
    """`deit_tiny`'s size from its arguments, nothing allocated."""
    n_patches = _deit_check(in_ch, size, patch, dim, n_heads, n_layers, n_classes)
    d = dim
    embed = (in_ch * patch * patch + 1) * d + d + (1 + n_patches) * d
    layer = 2 * d + 4 * (d + 1) * d + 2 * d + (d + 1) * 4 * d + (4 * d + 1) * d
    return Size(embed + n_layers * layer + 2 * d + (d + 1) * n_classes, (in_ch, size, size))


def _bert_check(vocab: int, hidden: int, bottleneck: int, n_layers: int, n_heads: int,
                ffn: int, n_ffn: int, embed: int, max_len: int, seq_len: int,
                n_classes: int) -> None:
    check("mobilebert", vocab=vocab, hidden=hidden, bottleneck=bottleneck, n_layers=n_layers,
          n_heads=n_heads, ffn=ffn, n_ffn=n_ffn, embed=embed, max_len=max_len,
          seq_len=seq_len, n_classes=n_classes)
    if bottleneck % n_heads:
        raise SimdlError("model.mobilebert.n_heads", n_heads,
                         f"must divide bottleneck={bottleneck}")
    if seq_len > max_len:
        raise SimdlError("model.mobilebert.seq_len", seq_len, f"must be at most max_len={max_len}")
    if n_classes > vocab:
        raise SimdlError("model.mobilebert.n_classes", n_classes,
                         f"must be at most vocab={vocab} (inputs are token ids below it)")


def _ffn(inner: int, ffn: int, rng: np.random.Generator) -> Residual:
    """NoNorm(x + Linear(ReLU(Linear(x)))): one of MobileBERT's stacked feed-forwards."""
    return Residual(Sequential([Linear(inner, ffn, rng), ReLU(), Linear(ffn, inner, rng)]),
                    post=NoNorm(inner))


def mobilebert(vocab: int = 30522, hidden: int = 512, bottleneck: int = 128,
               n_layers: int = 24, n_heads: int = 4, ffn: int = 512, n_ffn: int = 4,
               embed: int = 128, max_len: int = 512, seq_len: int = 128, n_classes: int = 2,
               seed: int = 0) -> Chain:
    """MobileBERT: tokens (N, seq_len) int64 -> (N, seq_len, n_classes).

    Blocks: embed (lookup at `embed` wide, trigram, projection to `hidden`, positions and
    token type, NoNorm); layer1..n_layers, each NoNorm(h + up(FFN^n_ffn(attention(h))))
    with the attention and FFNs at `bottleneck` wide; head (Linear per token).
    """
    _bert_check(vocab, hidden, bottleneck, n_layers, n_heads, ffn, n_ffn, embed, max_len,
                seq_len, n_classes)
    rng = stream(seed, "mobilebert")
    blocks = [Block("embed", Sequential([Embedding(vocab, embed, rng), Trigram(),
                                         Linear(3 * embed, hidden, rng),
                                         AddPositions(max_len, hidden, rng), NoNorm(hidden)]))]
    for i in range(n_layers):
        body = [BottleneckAttention(hidden, bottleneck, n_heads, rng)]
        body += [_ffn(bottleneck, ffn, rng) for _ in range(n_ffn)]
        body.append(Linear(bottleneck, hidden, rng))
        blocks.append(Block(f"layer{i + 1}", Residual(Sequential(body), post=NoNorm(hidden))))
    blocks.append(Block("head", Sequential([Linear(hidden, n_classes, rng)])))
    for block in blocks:
        _bert_init(block.layer)
    return Chain(blocks, (seq_len,), np.int64, n_classes, "mobilebert")


def _bert_init(layer: Layer) -> None:
    """Every Linear weight scaled from He-normal to N(0, BERT_INIT_STD^2), BERT's
    initializer range: NoNorm does not renormalise, and at He scale 24 layers of
    residual branches overflow float32."""
    if isinstance(layer, Composite):
        for child in layer.children.values():
            _bert_init(child)
    elif isinstance(layer, Linear):
        layer.params["W"] *= np.float32(BERT_INIT_STD / math.sqrt(2.0 / layer.n_in))


def mobilebert_size(vocab: int = 30522, hidden: int = 512, bottleneck: int = 128,
                    n_layers: int = 24, n_heads: int = 4, ffn: int = 512, n_ffn: int = 4,
                    embed: int = 128, max_len: int = 512, seq_len: int = 128,
                    n_classes: int = 2, seed: int = 0) -> Size:
    """`mobilebert`'s size from its arguments, nothing allocated."""
    _bert_check(vocab, hidden, bottleneck, n_layers, n_heads, ffn, n_ffn, embed, max_len,
                seq_len, n_classes)
    h, b = hidden, bottleneck
    emb = vocab * embed + (3 * embed + 1) * h + (max_len + 2) * h + 2 * h
    attention = 2 * ((h + 1) * b + 2 * b) + 2 * (b + 1) * b + (h + 1) * b + (b + 1) * b + 2 * b
    stack = n_ffn * ((b + 1) * ffn + (ffn + 1) * b + 2 * b)
    layer = attention + stack + (b + 1) * h + 2 * h
    return Size(emb + n_layers * layer + (h + 1) * n_classes, (seq_len,))
