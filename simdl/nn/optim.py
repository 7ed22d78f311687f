"""Optimizers: update parameter arrays in place from gradients, both keyed by name.

State lives per parameter name (so a stage or replica holds exactly the state
of the parameters it owns) and is exported as plain arrays. `slots` says how
many parameter-sized arrays of state each parameter needs, for memory
accounting before any step runs. Knows arrays and names; nothing of layers,
devices or time.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from simdl.errors import SimdlError
from simdl.nn.core import scratch

Arrays = dict[str, np.ndarray]


class Optimizer:
    """Shared bookkeeping: named state slots, a step counter, plain-array export."""

    slot_names: tuple[str, ...] = ()

    def __init__(self, lr: float) -> None:
        if not lr > 0:
            raise SimdlError("optimizer.lr", lr, "must be a positive number")
        self.lr = float(lr)
        self.t = 0  # steps taken
        self.state: dict[str, Arrays] = {s: {} for s in self.slot_names}

    @property
    def slots(self) -> int:
        """Parameter-sized state arrays kept per parameter (bytes = slots x parameter bytes)."""
        return len(self.slot_names)

    def _slot(self, slot: str, name: str, p: np.ndarray) -> np.ndarray:
        table = self.state[slot]
        if name not in table:
            table[name] = np.zeros(p.shape, p.dtype)  # zero pages mapped when first written
        return table[name]

    def step(self, params: Arrays, grads: Arrays) -> None:
        """Update every array in `params` in place from `grads[name]`."""
        self.t += 1
        for name, p in params.items():
            self._update(name, p, grads[name])

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        raise NotImplementedError

    def state_dict(self) -> Arrays:
        """All state as plain arrays: "step" and "<slot>:<param name>"."""
        out: Arrays = {"step": np.array(self.t, dtype=np.int64)}
        for slot, table in self.state.items():
            out.update({f"{slot}:{name}": a.copy() for name, a in table.items()})
        return out

    def load_state_dict(self, state: Arrays) -> None:
        """Replace all state with copies of `state` (as `state_dict` returns it)."""
        tables: dict[str, Arrays] = {s: {} for s in self.slot_names}
        for key, a in state.items():
            if key == "step":
                continue
            slot, _, name = key.partition(":")
            if slot not in tables or not name:
                raise SimdlError("optimizer.state", key,
                                 f"keys are 'step' or '<slot>:<param>' with slot in {self.slot_names}")
            tables[slot][name] = np.array(a, copy=True)
        self.t = int(state.get("step", 0))
        self.state = tables

    def state_bytes(self) -> int:
        """Bytes held by the state arrays now (the step counter is not counted)."""
        return sum(int(a.nbytes) for table in self.state.values() for a in table.values())

    #: FLOPs per parameter of one update (each subclass counts its own arithmetic).
    flops_per_param = 2.0

    def cost(self, n_params: float, itemsize: int = 4) -> tuple[float, float]:
        """(FLOPs, bytes moved) of one step over `n_params` parameters, for the
        simulator's kernel: it reads p, g and the state and writes p and the state."""
        return self.flops_per_param * n_params, (3 + 2 * self.slots) * n_params * itemsize


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov and L2 weight decay.

    PyTorch's formulation (no dampening): g += wd*p; v = mu*v + g;
    p -= lr * (g + mu*v if nesterov else v).
    """

    def __init__(self, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False) -> None:
        if nesterov and momentum <= 0:
            raise SimdlError("optimizer.nesterov", nesterov, "needs momentum > 0")
        self.slot_names = ("momentum",) if momentum else ()
        super().__init__(lr)
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov

    @property
    def flops_per_param(self) -> float:  # type: ignore[override]
        return 2.0 + 2.0 * self.slots  # scale-and-add, plus the momentum update

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            v = self._slot("momentum", name, p)
            v *= self.momentum
            v += g
            g = g + self.momentum * v if self.nesterov else v
        p -= np.multiply(g, self.lr, out=scratch("optim", g.shape, g.dtype))  # lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction; weight decay is L2 added to the gradient.

    m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
    p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps), t = this optimizer's step count
    (one counter for all parameters, as in the paper).
    """

    flops_per_param = 10.0  # two moment updates, bias corrections, sqrt, divide, step

    slot_names = ("m", "v")

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(lr)
        for i, b in enumerate(betas):
            if not 0.0 <= b < 1.0:
                raise SimdlError(f"optimizer.betas[{i}]", b, "must be in [0, 1)")
        self.betas, self.eps, self.weight_decay = (float(betas[0]), float(betas[1])), eps, weight_decay

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        b1, b2 = self.betas
        if self.weight_decay:
            g = g + self.weight_decay * p
        m, v = self._slot("m", name, p), self._slot("v", name, p)
        # p -= lr * m_hat / (sqrt(v_hat) + eps), each operation in that order and in the
        # dtype it has there (g's products in g's), through reused buffers instead of
        # eight fresh parameter-sized arrays.
        t = scratch("optim", g.shape, g.dtype)
        m *= b1
        m += np.multiply(g, 1 - b1, out=t)
        v *= b2
        v += np.multiply(np.multiply(g, g, out=t), 1 - b2, out=t)
        t, u = scratch("optim", p.shape, p.dtype), scratch("optim_v", p.shape, p.dtype)
        m_hat = np.divide(m, 1 - b1 ** self.t, out=t)
        v_hat = np.divide(v, 1 - b2 ** self.t, out=u)
        denominator = np.add(np.sqrt(v_hat, out=u), self.eps, out=u)
        p -= np.divide(np.multiply(m_hat, self.lr, out=t), denominator, out=t)


OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {
    "sgd": SGD,
    "adam": Adam,
}
