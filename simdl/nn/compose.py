"""Composite layers: Sequential (a list of layers) and Residual (body + shortcut, then post).

A composite owns no arrays. Its `params`, `grads` and `buffers` are live,
write-through views of its children's dicts under dotted names ("0.W",
"body.1.gamma"): reading gives the children's own arrays, and assigning a name
replaces the child's entry. Knows only the Layer contract; nothing of devices or time.
"""
from __future__ import annotations

from collections.abc import Iterator, MutableMapping

import numpy as np

from simdl.nn.core import Cache, Cost, Layer, Shape, nbytes
from simdl.nn.dense import numel


class Dotted(MutableMapping):
    """The `attr` dicts ("params", "grads" or "buffers") of named children as one flat dict."""

    def __init__(self, children: dict[str, Layer], attr: str):
        self._children, self._attr = children, attr

    def _split(self, key: str) -> tuple[dict[str, np.ndarray], str]:
        head, _, rest = key.partition(".")
        if head not in self._children or not rest:
            raise KeyError(key)
        return getattr(self._children[head], self._attr), rest

    def __getitem__(self, key: str) -> np.ndarray:
        table, rest = self._split(key)
        return table[rest]

    def __setitem__(self, key: str, value: np.ndarray) -> None:
        table, rest = self._split(key)
        if rest not in table:                  # a view renames, it never adds arrays
            raise KeyError(key)
        table[rest] = value

    def __delitem__(self, key: str) -> None:
        table, rest = self._split(key)
        del table[rest]

    def __iter__(self) -> Iterator[str]:
        for name, child in self._children.items():
            for k in getattr(child, self._attr):
                yield f"{name}.{k}"

    def __len__(self) -> int:
        return sum(len(getattr(c, self._attr)) for c in self._children.values())

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k!r}: {tuple(v.shape)}" for k, v in self.items()) + "}"


class Composite(Layer):
    """A layer made of named child layers; params/grads/buffers are Dotted views of theirs."""

    children: dict[str, Layer]

    def __init__(self, children: dict[str, Layer]):
        # Layer.__init__ is not called: the three tables are properties here, not dicts.
        self.children = children

    @property
    def params(self) -> Dotted:  # type: ignore[override]
        return Dotted(self.children, "params")

    @property
    def grads(self) -> Dotted:  # type: ignore[override]
        return Dotted(self.children, "grads")

    @property
    def buffers(self) -> Dotted:  # type: ignore[override]
        return Dotted(self.children, "buffers")

    def _init_grads(self) -> None:
        for child in self.children.values():
            child._init_grads()

    def zero_grad(self) -> None:
        for child in self.children.values():
            child.zero_grad()

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.children.items())
        return f"{type(self).__name__}({inner})"


class Sequential(Composite):
    """Runs `layers` in order: y = layers[-1](... layers[0](x)). Names "0.W", "1.gamma", ...

    Indexing gives a child layer; a slice gives a Sequential sharing the same layers.
    """

    def __init__(self, layers: list[Layer]):
        self.layers = list(layers)
        super().__init__({str(i): layer for i, layer in enumerate(self.layers)})

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __getitem__(self, i: int | slice) -> Layer:
        return Sequential(self.layers[i]) if isinstance(i, slice) else self.layers[i]

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        caches = []
        for layer in self.layers:
            x, cache = layer.forward(x, train)
            caches.append(cache)
        return x, caches

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        for layer, c in zip(reversed(self.layers), reversed(cache)):
            dy = layer.backward(dy, c)
        return dy

    def backward_params(self, dy: np.ndarray, cache: Cache) -> None:
        for layer, c in zip(reversed(self.layers[1:]), reversed(cache[1:])):
            dy = layer.backward(dy, c)
        if self.layers:
            self.layers[0].backward_params(dy, cache[0])

    def cost(self, in_shape: Shape) -> Cost:
        total = Cost(out_shape=tuple(in_shape), in_bytes=nbytes(in_shape),
                     out_bytes=nbytes(in_shape))
        for i, layer in enumerate(self.layers):
            c = layer.cost(in_shape if i == 0 else total.out_shape)
            total = c if i == 0 else total.then(c)
        return total


def _parallel(a: Cost, b: Cost) -> Cost:
    """Two branches on the same input: work, traffic and storage add up."""
    return Cost(out_shape=a.out_shape, fwd_flops=a.fwd_flops + b.fwd_flops,
                bwd_flops=a.bwd_flops + b.bwd_flops, param_bytes=a.param_bytes + b.param_bytes,
                in_bytes=a.in_bytes, out_bytes=a.out_bytes,
                fwd_bytes=a.fwd_bytes + b.fwd_bytes, bwd_bytes=a.bwd_bytes + b.bwd_bytes,
                saved_bytes=a.saved_bytes + b.saved_bytes,
                sparse_flops=a.sparse_flops + b.sparse_flops)


class Residual(Composite):
    """y = post(body(x) + shortcut(x)): identity shortcut when None, no post when None.

    One cuttable unit for a ResNet basic block, a MobileNetV2 inverted residual
    or a pre-LN transformer sub-block. Names "body.*", "shortcut.*", "post.*".
    """

    def __init__(self, body: Layer, shortcut: Layer | None = None, post: Layer | None = None):
        self.body, self.shortcut, self.post = body, shortcut, post
        named = {"body": body, "shortcut": shortcut, "post": post}
        super().__init__({k: v for k, v in named.items() if v is not None})

    def forward(self, x: np.ndarray, train: bool = False) -> tuple[np.ndarray, Cache]:
        y, cb = self.body.forward(x, train)
        cs = cp = None
        # Out of place: the body's last layer may keep y in its cache (ReLU does).
        if self.shortcut is None:
            y = y + x
        else:
            s, cs = self.shortcut.forward(x, train)
            y = y + s
        if self.post is not None:
            y, cp = self.post.forward(y, train)
        return y, (cb, cs, cp)

    def backward(self, dy: np.ndarray, cache: Cache) -> np.ndarray:
        cb, cs, cp = cache
        if self.post is not None:
            dy = self.post.backward(dy, cp)
        dx = self.body.backward(dy, cb)
        ds = dy if self.shortcut is None else self.shortcut.backward(dy, cs)
        return dx + ds

    def cost(self, in_shape: Shape) -> Cost:
        """Body and shortcut side by side, then the add (1 FLOP per value), then post.

        Backward of the add: dy goes to both branches; their two dx are summed
        (1 FLOP per input value).
        """
        body = self.body.cost(in_shape)
        out = body.out_shape
        n_out, n_in = numel(out), numel(in_shape)
        if self.shortcut is None:
            if tuple(out) != tuple(in_shape):
                raise ValueError(f"Residual: body maps {tuple(in_shape)} to {tuple(out)}; "
                                 "an identity shortcut needs them equal")
            both = body
        else:
            both = _parallel(body, self.shortcut.cost(in_shape))
        add = Cost(out_shape=out, fwd_flops=n_out, bwd_flops=n_in,
                   in_bytes=nbytes(out), out_bytes=nbytes(out),
                   fwd_bytes=3 * nbytes(out), bwd_bytes=3 * nbytes(in_shape))
        total = both.then(add)
        return total if self.post is None else total.then(self.post.cost(out))
