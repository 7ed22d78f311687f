"""Optimizers against hand-computed updates; zoo models really learn the synthetic datasets."""
from __future__ import annotations

import math

import numpy as np
import pytest

from simdl.errors import SimdlError
from simdl.nn.data import gaussian_mixture, shapes, tokens
from simdl.nn.fit import evaluate, fit
from simdl.nn.models import lenet, mlp, tiny_transformer
from simdl.nn.optim import OPTIMIZERS, SGD, Adam, Optimizer


def two_steps(opt: Optimizer) -> np.ndarray:
    """p0 = [1, 2]; gradients g1 = [1, -1] then g2 = [0.5, 0.5]."""
    p = {"w": np.array([1.0, 2.0])}
    for g in ([1.0, -1.0], [0.5, 0.5]):
        opt.step(p, {"w": np.array(g)})
    return p["w"]


def test_sgd_momentum_two_steps_by_hand():
    """lr 0.1, mu 0.9: v1 = g1 = [1, -1], p1 = [0.9, 2.1];
    v2 = 0.9*v1 + g2 = [1.4, -0.4], p2 = p1 - 0.1*v2 = [0.76, 2.14]."""
    assert np.allclose(two_steps(SGD(0.1, momentum=0.9)), [0.76, 2.14], rtol=0, atol=1e-12)


def test_sgd_nesterov_and_weight_decay_by_hand():
    """Nesterov: p1 = p0 - 0.1*(g1 + 0.9*v1) = [0.81, 2.19];
    p2 = p1 - 0.1*(g2 + 0.9*[1.4, -0.4]) = [0.81 - 0.176, 2.19 - 0.014] = [0.634, 2.176].
    Plain SGD, wd 0.1: g1' = g1 + 0.1*p0 = [1.1, -0.8] -> p1 = [0.89, 2.08];
    g2' = [0.589, 0.708] -> p2 = [0.8311, 2.0092]."""
    assert np.allclose(two_steps(SGD(0.1, momentum=0.9, nesterov=True)), [0.634, 2.176], atol=1e-12)
    assert np.allclose(two_steps(SGD(0.1, weight_decay=0.1)), [0.8311, 2.0092], atol=1e-12)


def test_adam_two_steps_by_hand():
    """lr 0.1, betas (0.9, 0.999). Step 1: m_hat = g1, v_hat = g1^2 -> p1 = p0 - 0.1*sign(g1)
    = [0.9, 2.1]. Step 2: m = 0.09*g1 + 0.1*g2 = [0.14, -0.04], m_hat = m/0.19;
    v = 0.999*0.001 + 0.001*0.25 = 0.001249 both, v_hat = 0.001249/0.001999 = 0.624812...;
    step = 0.1*m_hat/sqrt(v_hat) = [0.09321796, -0.0266337] -> p2 = [0.80678204, 2.1266337]."""
    assert np.allclose(two_steps(Adam(0.1)), [0.80678204, 2.1266337], rtol=0, atol=1e-7)


STATEFUL = {"sgd": dict(lr=0.01, momentum=0.9)}  # options that make an optimizer keep state


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_state_round_trips_and_is_counted_in_bytes(name):
    """After one step the state is slots x parameter bytes; a twin loaded from state_dict
    takes bitwise the same next step."""
    kwargs = STATEFUL.get(name, dict(lr=0.01))
    opt = OPTIMIZERS[name](**kwargs)
    p = {"a": np.ones((3, 4), np.float32), "b": np.ones(5, np.float32)}
    g = {"a": np.full((3, 4), 0.5, np.float32), "b": np.full(5, -1.0, np.float32)}
    opt.step(p, g)
    assert opt.state_bytes() == opt.slots * (12 + 5) * 4
    twin = OPTIMIZERS[name](**kwargs)
    twin.load_state_dict(opt.state_dict())
    q = {k: v.copy() for k, v in p.items()}
    opt.step(p, g)
    twin.step(q, g)
    assert all(np.array_equal(p[k], q[k]) for k in p)
    with pytest.raises(SimdlError, match="optimizer.state"):
        twin.load_state_dict({"bogus:a": np.zeros(1)})


def test_plain_sgd_keeps_no_state():
    opt = SGD(0.1)
    two_steps(opt)
    assert opt.slots == 0 and opt.state_bytes() == 0


CASES = {
    "mlp/gaussian_mixture": (lambda: mlp(in_dim=16, hidden=32, n_classes=4),
                             lambda: gaussian_mixture(n=1200, dim=16, n_classes=4), 0.01, 200, 32),
    "lenet/shapes": (lambda: lenet(in_ch=1, size=16, n_classes=4),
                     lambda: shapes(n=1200, size=16, channels=1, n_classes=4), 3e-3, 200, 32),
    "tiny_transformer/tokens": (lambda: tiny_transformer(vocab=16, d_model=32, n_heads=2,
                                                         n_layers=2, seq_len=8),
                                lambda: tokens(n=1200, seq_len=8, vocab=16), 3e-3, 200, 32),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_training_drives_loss_well_below_chance(case):
    """Adam, fixed seeds. Chance is ln(n_classes); we ask for a third of it on training
    batches and held-out accuracy at least three times chance (1/n_classes)."""
    make_model, make_data, lr, steps, batch = CASES[case]
    chain, (train_set, test_set) = make_model(), make_data().split(0.8)
    final = float(np.mean(fit(chain, train_set, steps, batch, "adam", lr)[-20:]))  # last 20 steps
    held_loss, held_acc = evaluate(chain, test_set)
    chance = math.log(chain.n_classes)
    print(f"\n{case}: train loss {final:.3f} (chance {chance:.3f}), "
          f"held-out loss {held_loss:.3f}, accuracy {held_acc:.3f} (chance {1 / chain.n_classes:.3f})")
    assert final < chance / 3
    assert held_acc > 3 / chain.n_classes
