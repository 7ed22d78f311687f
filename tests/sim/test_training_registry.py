"""Every training strategy in the registry, found by name: it builds a plan the protocol
registry runs, the plan trains (the loss falls, every step is recorded), timing-only
gives the same log, and every protocol is reached by some strategy. A new strategy
is tested here without editing a list (only a value for a new required parameter)."""
import inspect
from dataclasses import replace

import numpy as np
import pytest

from simdl.nn.models import mlp
from simdl.plan import training as T
from simdl.sim.engine import Simulator
from simdl.sim.training import PROTOCOLS, execute

from test_training_sync import world

#: A value for each required strategy parameter, by name.
REQUIRED = {"servers": ["pc"], "devices": ["phone", "laptop", "pc"], "teacher_device": "pc",
            "student": "student", "target": "phone"}


def small_world(steps=6):
    w = world(steps=steps, eval_every=steps, lr=0.2)
    return replace(w, models=dict(w.models) | {"student": mlp(16, 8, 1, 4, seed=3)})


def plan_for(name, w):
    make = T.TRAIN_STRATEGIES[name]
    params = inspect.signature(make).parameters
    missing = [p for p, v in params.items() if p != "world" and v.default is inspect.Parameter.empty
               and p not in REQUIRED]
    assert not missing, f"give tests a value for {name}'s required {missing} in REQUIRED"
    return make(w, **{p: REQUIRED[p] for p in params if p in REQUIRED
                      and params[p].default is inspect.Parameter.empty})


@pytest.mark.parametrize("name", sorted(T.TRAIN_STRATEGIES))
def test_every_training_strategy_trains_and_times_alike(name):
    w = small_world()
    plan = plan_for(name, w)
    assert plan.sync.kind in PROTOCOLS
    real_sim, timing_sim = Simulator(w.devices, w.network), Simulator(w.devices, w.network, True)
    job = execute(plan, w, real_sim)
    execute(plan, w, timing_sim)
    df = job.metrics.frame()
    assert df.step.tolist() == list(range(6))
    assert df.loss.iloc[-1] < df.loss.iloc[0], df.loss.tolist()
    assert np.isfinite(df.accuracy.iloc[-1])
    assert real_sim.log.rows == timing_sim.log.rows


def test_every_protocol_is_reached_by_a_strategy():
    w = small_world()
    assert {plan_for(n, w).sync.kind for n in T.TRAIN_STRATEGIES} == set(PROTOCOLS)
