"""A training step of each zoo model: simdl's numpy kernels against torch's CPU step.

Run `.venv/bin/python bench/train_step.py [--large] [--batch 32] [--optimizer sgd|adam]
[--repeats 7] [MODEL ...]` (about a minute). A step is what a training run does per
worker (simdl/sim/job.py, simdl/nn/fit.py): zero the grads, the chain's train-mode
forward, softmax cross-entropy, backward, one optimizer step; simdl's calls the nn
layer directly, no simulator. torch is only a reference: when it is importable, the
same model is rebuilt in torch from copies of the chain's arrays, the two first losses
are checked to agree (so both sides do the same work), and the two steps are called
alternately, best of several; otherwise simdl's times are printed alone. Both sides run
one thread (threadpoolctl for numpy's BLAS, torch.set_num_threads(1)), as simdl does in
a run, so each step's thread CPU time is printed beside its wall time: on a shared
machine it leaves out the time other jobs held the core. One difference in work: simdl's
chain also returns the gradient of its input, which torch's step does not compute.
`--large` builds the largest size of each model a shipped scenario uses.
Wall-clock time here is the simulator's own speed, never simulated time.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable

import numpy as np

from kernels import machine
from simdl.nn.chain import Chain
from simdl.nn.dense import SoftmaxCrossEntropy
from simdl.nn.models import MODELS
from simdl.nn.optim import OPTIMIZERS, Optimizer

LR = {"sgd": 0.05, "adam": 1e-3}   # the training workload's and fit's defaults
LOSS_RTOL = 1e-4                   # float32 sums in another order; a wrong model is far off


def batch_of(chain: Chain, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded input batch (tokens for token models) and its labels."""
    rng = np.random.default_rng(seed)
    shape = (n, *chain.in_shape)
    if chain.in_dtype.kind == "i":
        x = rng.integers(0, chain.n_classes, shape)
        return x, rng.integers(0, chain.n_classes, shape)
    return rng.standard_normal(shape, dtype=np.float32), rng.integers(0, chain.n_classes, n)


def simdl_step(chain: Chain, opt: Optimizer, x: np.ndarray, y: np.ndarray) -> Callable[[], float]:
    """One training step as a run does it; returns the batch loss."""
    sce, params, grads = SoftmaxCrossEntropy(), chain.params(), chain.grads()

    def step() -> float:
        chain.zero_grad()
        logits, caches = chain.forward(x, train=True)
        loss, cache = sce.forward(logits, y)
        chain.backward(sce.backward(cache), caches, need_dx=False)
        opt.step(params, grads)
        return loss
    return step


# -- the same model in torch, from copies of the chain's arrays -----------------------

try:
    import torch
    import torch.nn as tnn
    import torch.nn.functional as F
except ImportError:
    torch = None

if torch is not None:
    class TorchResidual(tnn.Module):
        """post(body(x) + shortcut(x)), as simdl's Residual."""

        def __init__(self, body: Any, shortcut: Any, post: Any) -> None:
            super().__init__()
            self.body, self.shortcut, self.post = body, shortcut, post

        def forward(self, x: Any) -> Any:
            y = self.body(x) + (x if self.shortcut is None else self.shortcut(x))
            return y if self.post is None else self.post(y)

    class TorchEmbedding(tnn.Module):
        """Token rows plus learned positions, as simdl's Embedding."""

        def __init__(self, e: Any, p: Any) -> None:
            super().__init__()
            self.e, self.p = e, p

        def forward(self, x: Any) -> Any:
            y = F.embedding(x, self.e)
            return y if self.p is None else y + self.p[:x.shape[-1]]

    class TorchAttention(tnn.Module):
        """simdl's SelfAttention with one fused qkv projection and torch's SDPA kernel."""

        def __init__(self, layer: Any) -> None:
            super().__init__()
            p = layer.params
            self.h, self.causal = layer.n_heads, layer.causal
            self.qkv = tnn.Linear(layer.d, 3 * layer.d)
            self.qkv.weight = _param(np.concatenate([p["Wq"], p["Wk"], p["Wv"]], axis=1).T)
            self.qkv.bias = _param(np.concatenate([p["bq"], p["bk"], p["bv"]]))
            self.out = tnn.Linear(layer.d, layer.d)
            self.out.weight, self.out.bias = _param(p["Wo"].T), _param(p["bo"])

        def forward(self, x: Any) -> Any:
            n, t, d = x.shape
            q, k, v = self.qkv(x).view(n, t, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
            ctx = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
            return self.out(ctx.transpose(1, 2).reshape(n, t, d))


def _param(a: np.ndarray) -> Any:
    return tnn.Parameter(torch.from_numpy(np.array(a, copy=True)))


def torch_model(chain: Chain) -> Any:
    """A torch.nn.Module computing what `chain` computes, with copies of its weights."""
    return tnn.Sequential(*[_to_torch(b.layer) for b in chain.blocks])


def _to_torch(layer: Any) -> Any:
    from simdl.nn import layers as L
    kind, p = type(layer), layer.params
    if kind is L.Sequential:
        return tnn.Sequential(*[_to_torch(c) for c in layer.layers])
    if kind is L.Residual:
        return TorchResidual(*[None if c is None else _to_torch(c)
                               for c in (layer.body, layer.shortcut, layer.post)])
    if kind in (L.Linear, L.Conv2d):
        m = (tnn.Linear(layer.n_in, layer.n_out, bias="b" in p) if kind is L.Linear else
             tnn.Conv2d(layer.c_in, layer.c_out, layer.k, layer.stride, layer.padding,
                        groups=layer.groups, bias="b" in p))
        m.weight = _param(p["W"].T if kind is L.Linear else p["W"])   # torch Linear is (out, in)
        if "b" in p:
            m.bias = _param(p["b"])
        return m
    if kind in (L.BatchNorm, L.LayerNorm):
        m = (tnn.BatchNorm2d(layer.c, layer.eps, layer.momentum) if kind is L.BatchNorm
             else tnn.LayerNorm(layer.d, layer.eps))
        m.weight, m.bias = _param(p["gamma"]), _param(p["beta"])
        return m
    if kind is L.Embedding:
        return TorchEmbedding(_param(p["E"]), _param(p["P"]) if "P" in p else None)
    if kind is L.SelfAttention:
        return TorchAttention(layer)
    if kind is L.MaxPool:
        return tnn.MaxPool2d(layer.k, layer.stride)
    if kind is L.AvgPool:
        return tnn.AvgPool2d(layer.k, layer.stride)
    simple = {L.ReLU: tnn.ReLU, L.ReLU6: tnn.ReLU6, L.Flatten: tnn.Flatten,
              L.GELU: lambda: tnn.GELU(approximate="tanh"),
              L.GlobalAvgPool: lambda: tnn.Sequential(tnn.AdaptiveAvgPool2d(1), tnn.Flatten())}
    if kind in simple:
        return simple[kind]()
    raise TypeError(f"no torch counterpart for {kind.__name__}")


def torch_step(chain: Chain, optimizer: str, x: np.ndarray,
               y: np.ndarray) -> Callable[[], float] | None:
    """torch's training step on the same weights and batch, or None without torch."""
    if torch is None:
        return None
    model = torch_model(chain).train()
    opt = (torch.optim.SGD(model.parameters(), lr=LR["sgd"]) if optimizer == "sgd"
           else torch.optim.Adam(model.parameters(), lr=LR["adam"]))
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def step() -> float:
        opt.zero_grad()
        logits = model(tx)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ty.reshape(-1))
        loss.backward()
        opt.step()
        return loss.item()
    return step


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall, CPU) seconds of one call. Both sides run on this thread alone, so its
    CPU time leaves out the time other jobs on this shared machine held the core."""
    t, c = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - t, time.thread_time() - c


# The largest size of each model a shipped scenario builds (scenarios/*.yaml), for --large.
LARGE: dict[str, dict[str, int]] = {
    "mlp": {"in_dim": 256, "hidden": 2048, "depth": 4, "n_classes": 10},
    "resnet_small": {"width": 32},
    "tiny_transformer": {"vocab": 64, "d_model": 256, "n_heads": 8, "n_layers": 4,
                         "seq_len": 32},
}


#: The models issue 14's target names: the small zoo every shipped training scenario uses.
ZOO = ["lenet", "mlp", "mobilenet_small", "resnet_small", "tiny_transformer"]


def bench(chain: Chain, batch: int, optimizer: str, repeats: int) -> dict[str, Any]:
    """(wall, CPU) times of simdl's and torch's steps, called alternately, and the two
    first losses (taken before either side has updated its weights)."""
    x, y = batch_of(chain, batch)
    try:
        tstep = torch_step(chain, optimizer, x, y)  # copies the weights before any update
    except TypeError:  # a layer without a torch counterpart here: simdl's time alone
        tstep = None
    ours = simdl_step(chain, OPTIMIZERS[optimizer](lr=LR[optimizer]), x, y)
    row: dict[str, Any] = {"loss": ours(), "ours": [], "torch": []}
    if tstep is not None:
        row["torch_loss"] = tstep()
        row["loss_ok"] = abs(row["torch_loss"] - row["loss"]) <= LOSS_RTOL * abs(row["loss"])
    for _ in range(repeats):
        row["ours"].append(timed(ours))
        if tstep is not None:
            row["torch"].append(timed(tstep))
    return row


def line(name: str, r: dict[str, Any]) -> str:
    """Best wall and CPU ms of each side and their ratios, and the loss check."""
    ours = [min(t[i] for t in r["ours"]) * 1e3 for i in (0, 1)]
    if not r["torch"]:
        return f"{name:<18} {ours[0]:9.2f} {'-':>9} {'-':>6}   {ours[1]:9.2f}"
    theirs = [min(t[i] for t in r["torch"]) * 1e3 for i in (0, 1)]
    cols = [f"{ours[i]:9.2f} {theirs[i]:9.2f} {ours[i] / theirs[i]:6.2f}" for i in (0, 1)]
    check = f"{r['loss']:.6f} vs {r['torch_loss']:.6f} " + ("ok" if r["loss_ok"] else "DIFFERENT")
    return f"{name:<18} {cols[0]}   {cols[1]}  {check}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="sgd")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--large", action="store_true",
                        help="the largest sizes the shipped scenarios use (else the defaults)")
    parser.add_argument("models", nargs="*", default=ZOO,
                        help=f"default: the small zoo of issue 14 ({' '.join(ZOO)})")
    args = parser.parse_args(argv)
    for name in set(args.models) - set(MODELS):
        parser.error(f"unknown model {name!r}; choose from {', '.join(sorted(MODELS))}")
    from threadpoolctl import threadpool_limits
    ref = "torch not importable: simdl's times alone"
    if torch is not None:
        torch.set_num_threads(1)
        ref = f"torch {torch.__version__}, 1 thread"
    sizes = "largest scenario sizes" if args.large else "default sizes"
    head = (f"{'model':<18} {'simdl ms':>9} {'torch ms':>9} {'ratio':>6}   {'simdl cpu':>9} "
            f"{'torch cpu':>9} {'ratio':>6}  first losses")
    with threadpool_limits(limits=1, user_api="blas"):
        print(machine())
        print(f"{ref}; {sizes}, batch {args.batch}, {args.optimizer}; best of "
              f"{args.repeats}, the two steps alternating\n")
        print(head)
        print("-" * len(head))
        for name in args.models:
            chain = MODELS[name](**(LARGE.get(name, {}) if args.large else {}))
            print(line(name, bench(chain, args.batch, args.optimizer, args.repeats)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
