"""How each leaf layer is cut into tensor-parallel shards, and the two shard-only kernels.

A rule looks at a layer and the sharding state of its input and answers with a
`Leaf`: the state the input must first be brought to (itself or full), one
shard layer per member, and the state of the output. Rules never emit
collectives; `shard.py` walks the layer tree and inserts them.
Knows layers; knows nothing of devices, networks or time.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from simdl.errors import SimdlError
from simdl.nn.attention import SelfAttention
from simdl.nn.compose import Sequential
from simdl.nn.conv import Conv2d
from simdl.nn.pool import AvgPool, GlobalAvgPool, MaxPool
from simdl.nn.core import Cache, Cost, Layer, Shape, nbytes
from simdl.nn.dense import GELU, Flatten, Linear, ReLU, ReLU6, kernel_cost, numel
from simdl.nn.layers import LAYERS
from simdl.nn.llm import GQAttention, RMSNorm, SwiGLU, TiedHead
from simdl.nn.norm import BatchNorm


@dataclass(frozen=True)
class State:
    """How a tensor lies over the members: "full" (replicated), "split" or "partial" (summands).

    split: member i holds the consecutive slice [bounds[i] u, bounds[i+1] u) of
    `axis`, where u = (axis length) / bounds[-1] is 1 except after a Flatten of
    channel slices, where it is H*W; the layer that reads the slices knows the
    axis length and so u. axis is 1 (channels of NCHW, or features of (N, C))
    or -1 (the last axis); the two are not assumed equal.
    """

    kind: str
    axis: int = 0
    bounds: tuple[int, ...] = ()


FULL = State("full")
PARTIAL = State("partial")


def split(axis: int, bounds: tuple[int, ...]) -> State:
    return State("split", axis, tuple(bounds))


def even(n: int, k: int) -> tuple[int, ...]:
    """k+1 offsets cutting n into k consecutive slices whose sizes differ by at most 1."""
    q, r = divmod(n, k)
    return tuple(i * q + min(i, r) for i in range(k + 1))


def spans(bounds: tuple[int, ...], unit: int = 1) -> str:
    """'0-3 | 4-6 | 7': each member's (inclusive) range, in elements."""
    return " | ".join(f"{a * unit}-{b * unit - 1}" if b * unit - 1 > a * unit else f"{a * unit}"
                      for a, b in zip(bounds, bounds[1:]))


class Leaf(NamedTuple):
    need: State                  # bring the input to this first (the input state or FULL)
    shards: tuple[Layer, ...]    # one per member
    what: str                    # how it was cut, for the op's name
    out: State


# -- the shard-only kernels -------------------------------------------------------


class Slice(Layer):
    """Takes [start, stop) of `axis`: a member's share of a full tensor. No FLOPs.

    forward returns a view; backward puts dy back in place in a zero tensor of
    the input's shape (the members' dx are then summands of the full dx).
    """

    def __init__(self, axis: int, start: int, stop: int):
        super().__init__()
        self.axis, self.start, self.stop = axis, start, stop

    def _index(self, ndim: int) -> tuple[slice, ...]:
        axis = self.axis % ndim
        return (slice(None),) * axis + (slice(self.start, self.stop),)

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        return x[self._index(x.ndim)], x.shape

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        dx = np.zeros(cache, dy.dtype)
        dx[self._index(len(cache))] = dy
        return dx

    def cost(self, in_shape: Shape) -> Cost:
        out = list(in_shape)
        out[self.axis % len(in_shape)] = self.stop - self.start
        return kernel_cost(in_shape, tuple(out), 0, 0)

    def __repr__(self) -> str:
        return f"Slice(axis={self.axis}, {self.start}:{self.stop})"


class HeadShard(SelfAttention):
    """A member's heads of a SelfAttention. (N, T, d) -> (N, T, d), a summand of the output.

    Wq, Wk, Wv: (d, h dh) and bq, bk, bv: the columns of this member's h heads;
    Wo: (h dh, d), their rows. bo is held by member 0 only, so the members'
    outputs sum to the whole layer's. SelfAttention's own arithmetic and cost
    serve any share of the heads; only the weights are sliced here.
    """

    def __init__(self, whole: SelfAttention, h0: int, h1: int, with_bo: bool):
        Layer.__init__(self)
        self.d, self.causal = whole.d, whole.causal
        self.n_heads, self.dh = h1 - h0, whole.dh
        cols = slice(h0 * self.dh, h1 * self.dh)
        for name in "qkv":
            self.params["W" + name] = whole.params["W" + name][:, cols].copy()
            self.params["b" + name] = whole.params["b" + name][cols].copy()
        self.params["Wo"] = whole.params["Wo"][cols].copy()
        if with_bo:
            self.params["bo"] = whole.params["bo"].copy()
        self._init_grads()


class KVGroupShard(GQAttention):
    """A member's query heads [q0, q1) of a GQAttention and the kv heads they read.

    Wq (bq) columns and Wo rows of its query heads; Wk, Wv (bk, bv) columns of its kv
    heads, in the layer's order (query head j reads kv head j // r, r = n_heads /
    n_kv_heads). When its query heads are whole groups, or part of one group, it holds
    each kv head once; when they straddle groups unevenly, one kv head per query head
    (plain multi-head attention on repeated kv heads). Its output is a summand of the
    whole layer's (Wo has no bias); GQAttention's arithmetic, cache and cost serve it.
    """

    def __init__(self, whole: GQAttention, q0: int, q1: int):
        Layer.__init__(self)
        r, dh = whole.h // whole.kv, whole.dh
        self.d, self.dh, self.theta = whole.d, dh, whole.theta
        reads = [j // r for j in range(q0, q1)]
        kvs = sorted(set(reads))
        if any(reads.count(v) != reads.count(kvs[0]) for v in kvs):
            kvs = reads                    # uneven groups: a kv head per query head
        self.h, self.kv = q1 - q0, len(kvs)
        q = slice(q0 * dh, q1 * dh)
        kv = np.concatenate([np.arange(v * dh, (v + 1) * dh) for v in kvs])
        for name, cols in (("q", q), ("k", kv), ("v", kv)):
            self.params["W" + name] = whole.params["W" + name][:, cols].copy()
            if "b" + name in whole.params:
                self.params["b" + name] = whole.params["b" + name][cols].copy()
        self.params["Wo"] = whole.params["Wo"][q].copy()
        self._init_grads()


# -- the rules --------------------------------------------------------------------

KIND = {cls: name for name, cls in LAYERS.items()}


def _clone(layer: Layer, params: dict[str, np.ndarray],
           buffers: dict[str, np.ndarray] | None = None, **attrs: int) -> Layer:
    """A copy of `layer` owning `params` (copied: real, smaller arrays), fresh grads, new attrs."""
    s = copy.copy(layer)
    s.params = {k: v.copy() for k, v in params.items()}
    s.buffers = {k: v.copy() for k, v in (buffers or {}).items()}
    s.__dict__.update(attrs)
    s._init_grads()
    return s


def _replicas(layer: Layer, k: int) -> tuple[Layer, ...]:
    """k copies, each owning its arrays; a layer without arrays is shared (it keeps no state)."""
    if not layer.params and not layer.buffers:
        return (layer,) * k
    return tuple(copy.deepcopy(layer) for _ in range(k))


def replicate(layer: Layer, state: State, k: int, mode: str, where: str) -> Leaf:
    """Anything without a rule: every member runs the whole layer on the full tensor."""
    return Leaf(FULL, _replicas(layer, k), "replicated", FULL)


def _scale(state: State, axis: int, length: int) -> int:
    """Elements per bound unit when `state` is a usable split of an axis of `length`, else 0."""
    if state.kind != "split" or state.axis != axis or length % state.bounds[-1]:
        return 0
    return length // state.bounds[-1]


def linear(layer: Linear, state: State, k: int, mode: str, where: str) -> Leaf:
    """Split input: row split (W rows, b on member 0) -> partial. Full: columns -> split(-1)."""
    p = layer.params
    u = _scale(state, -1, layer.n_in) if mode != "column" else 0
    if u or (mode == "row" and layer.n_in >= k):
        sliced = not u                   # row mode on a full input: each member slices its own
        b, u = (even(layer.n_in, k), 1) if sliced else (state.bounds, u)
        shards = []
        for i, (lo, hi) in enumerate(zip(b, b[1:])):
            part = {"W": p["W"][lo * u:hi * u]}
            if "b" in p and i == 0:
                part["b"] = p["b"]
            s = _clone(layer, part, n_in=(hi - lo) * u)
            shards.append(Sequential([Slice(-1, lo, hi), s]) if sliced else s)
        return Leaf(FULL if sliced else state, tuple(shards), f"rows {spans(b, u)}", PARTIAL)
    if layer.n_out < k:
        return replicate(layer, state, k, mode, where)
    b = even(layer.n_out, k)
    shards = tuple(_clone(layer, {n: v[..., lo:hi] for n, v in p.items()}, n_out=hi - lo)
                   for lo, hi in zip(b, b[1:]))
    return Leaf(FULL, shards, f"cols {spans(b)}", split(-1, b))


def conv2d(layer: Conv2d, state: State, k: int, mode: str, where: str) -> Leaf:
    """groups=1: split input -> input-channel split -> partial; full -> output-channel split.

    Grouped (depthwise too): whole groups per member, from channel slices that
    line up with groups, or from the full input (each member slices its own).
    """
    p, g = layer.params, layer.groups
    if g > 1:
        return _grouped(layer, state, k, mode, where)
    u = _scale(state, 1, layer.c_in) if mode != "column" else 0
    if u == 1 or (mode == "row" and layer.c_in >= k):
        b = state.bounds if u == 1 else even(layer.c_in, k)
        shards = []
        for i, (lo, hi) in enumerate(zip(b, b[1:])):
            part = {"W": p["W"][:, lo:hi]}
            if "b" in p and i == 0:
                part["b"] = p["b"]
            s = _clone(layer, part, c_in=hi - lo)
            shards.append(s if u == 1 else Sequential([Slice(1, lo, hi), s]))
        return Leaf(state if u == 1 else FULL, tuple(shards), f"in-channels {spans(b)}", PARTIAL)
    if layer.c_out < k:
        return replicate(layer, state, k, mode, where)
    b = even(layer.c_out, k)
    shards = tuple(_clone(layer, {n: v[lo:hi] for n, v in p.items()}, c_out=hi - lo)
                   for lo, hi in zip(b, b[1:]))
    return Leaf(FULL, shards, f"out-channels {spans(b)}", split(1, b))


def _grouped(layer: Conv2d, state: State, k: int, mode: str, where: str) -> Leaf:
    g, cin_g, cout_g = layer.groups, layer.c_in // layer.groups, layer.c_out // layer.groups
    lined_up = (mode != "column" and _scale(state, 1, layer.c_in) == 1
                and all(b % cin_g == 0 for b in state.bounds))
    if lined_up:
        gb = tuple(b // cin_g for b in state.bounds)
    elif g >= k:
        gb = even(g, k)
    else:
        return replicate(layer, state, k, mode, where)
    shards = []
    for lo, hi in zip(gb, gb[1:]):
        s = _clone(layer, {n: v[lo * cout_g:hi * cout_g] for n, v in layer.params.items()},
                   c_in=(hi - lo) * cin_g, c_out=(hi - lo) * cout_g, groups=hi - lo)
        shards.append(s if lined_up else Sequential([Slice(1, lo * cin_g, hi * cin_g), s]))
    depthwise = cin_g == cout_g == 1
    what = f"channels {spans(gb)}" if depthwise else f"groups {spans(gb)}"
    return Leaf(state if lined_up else FULL, tuple(shards), what,
                split(1, tuple(b * cout_g for b in gb)))


def batchnorm(layer: BatchNorm, state: State, k: int, mode: str, where: str) -> Leaf:
    """Channel slices: gamma, beta and the running stats sliced alike. Otherwise replicated."""
    if _scale(state, 1, layer.c) != 1:
        return replicate(layer, state, k, mode, where)
    b = state.bounds
    shards = tuple(_clone(layer, {n: v[lo:hi] for n, v in layer.params.items()},
                          {n: v[lo:hi] for n, v in layer.buffers.items()}, c=hi - lo)
                   for lo, hi in zip(b, b[1:]))
    return Leaf(state, shards, f"channels {spans(b)}", state)


def elementwise(layer: Layer, state: State, k: int, mode: str, where: str) -> Leaf:
    """Keeps full or split; a nonlinearity needs the sum of partials first."""
    if state.kind == "partial":
        return replicate(layer, state, k, mode, where)
    return Leaf(state, _replicas(layer, k), "per member" if state.kind == "split" else
                "replicated", state)


def pool(layer: Layer, state: State, k: int, mode: str, where: str) -> Leaf:
    """Per channel: keeps channel slices (GlobalAvgPool and Flatten turn them into split(-1))."""
    if state.kind == "split" and state.axis == 1:
        out = state if isinstance(layer, (MaxPool, AvgPool)) else split(-1, state.bounds)
        return Leaf(state, _replicas(layer, k), "per member", out)
    return replicate(layer, state, k, mode, where)


def attention(layer: SelfAttention, state: State, k: int, mode: str, where: str) -> Leaf:
    """Whole heads per member (Wq/Wk/Wv columns, Wo rows, bo on member 0) -> partial."""
    if k > layer.n_heads:
        raise SimdlError(f"shard.{where or 'layer'} (attention).k", k,
                         f"members get whole heads: k must be <= n_heads={layer.n_heads}")
    b = even(layer.n_heads, k)
    shards = tuple(HeadShard(layer, lo, hi, i == 0) for i, (lo, hi) in enumerate(zip(b, b[1:])))
    return Leaf(FULL, shards, f"heads {spans(b)}", PARTIAL)


def gq_attention(layer: GQAttention, state: State, k: int, mode: str, where: str) -> Leaf:
    """Whole kv heads per member with the query heads that read them (q/k/v columns, o
    rows) -> partial; uneven shares as `attention`'s. A group larger than n_kv_heads
    splits the query heads instead and repeats a kv head on every member that reads it,
    as vLLM does (distributed-llama refuses: at most as many nodes as KV heads)."""
    if k > layer.h:
        raise SimdlError(f"shard.{where or 'layer'} (gqattention).k", k,
                         f"members get whole heads: k must be <= n_heads={layer.h}")
    r = layer.h // layer.kv
    b = tuple(v * r for v in even(layer.kv, k)) if k <= layer.kv else even(layer.h, k)
    shards = tuple(KVGroupShard(layer, lo, hi) for lo, hi in zip(b, b[1:]))
    what = (f"kv heads {spans(even(layer.kv, k))}" if k <= layer.kv
            else f"heads {spans(b)}, kv heads repeated")
    return Leaf(FULL, shards, what, PARTIAL)


def swiglu(layer: SwiGLU, state: State, k: int, mode: str, where: str) -> Leaf:
    """Hidden units per member: gate W1 and up W3 columns, down W2 rows -> partial
    (Megatron's column-then-row pairing inside one layer)."""
    if layer.f < k:
        return replicate(layer, state, k, mode, where)
    b, p = even(layer.f, k), layer.params
    shards = tuple(_clone(layer, {"W1": p["W1"][:, lo:hi], "W3": p["W3"][:, lo:hi],
                                  "W2": p["W2"][lo:hi]}, f=hi - lo)
                   for lo, hi in zip(b, b[1:]))
    return Leaf(FULL, shards, f"hidden {spans(b)}", PARTIAL)


def tied_head(layer: TiedHead, state: State, k: int, mode: str, where: str) -> Leaf:
    """Vocabulary rows of the table per member, as a Linear's columns -> split(-1).
    Each shard owns its rows (a copy): the embedding block keeps the whole table."""
    vocab = layer.table.shape[0]
    if vocab < k:
        return replicate(layer, state, k, mode, where)
    b = even(vocab, k)
    shards = tuple(TiedHead(_clone(layer.embedding, {"E": layer.table[lo:hi]}, vocab=hi - lo))
                   for lo, hi in zip(b, b[1:]))
    return Leaf(FULL, shards, f"vocab {spans(b)}", split(-1, b))


Rule = Callable[[Layer, State, int, str, str], Leaf]

RULES: dict[type, Rule] = {
    Linear: linear,
    Conv2d: conv2d,
    BatchNorm: batchnorm,
    ReLU: elementwise,
    ReLU6: elementwise,
    GELU: elementwise,
    MaxPool: pool,
    AvgPool: pool,
    GlobalAvgPool: pool,
    Flatten: pool,
    SelfAttention: attention,
    GQAttention: gq_attention,
    SwiGLU: swiglu,
    TiedHead: tied_head,
    RMSNorm: replicate,   # needs the whole row (its mean square): full in, full out
}


def leaf(layer: Layer, state: State, k: int, mode: str, where: str) -> Leaf:
    """The rule for `layer`'s exact type (a subclass may change the math: it is replicated)."""
    return RULES.get(type(layer), replicate)(layer, state, k, mode, where)


def kind(layer: Layer) -> str:
    return KIND.get(type(layer), type(layer).__name__.lower())


def add_cost(shape: Shape) -> Cost:
    """One member's residual add: 1 FLOP per value; reads two tensors, writes one."""
    n = numel(shape)
    return Cost(out_shape=tuple(shape), fwd_flops=n, bwd_flops=n, in_bytes=nbytes(shape),
                out_bytes=nbytes(shape), fwd_bytes=3 * nbytes(shape))
