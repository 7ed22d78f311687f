"""The training estimator against the simulator, and the training search's choices.

Exact where the estimator's model is the simulator's: one device (its data's flows
at max-min shares), a ring all-reduce whose flows share no link, a synchronous
parameter server, GPipe whose hops each share only with themselves. The rest (tree
and halving-doubling all-reduce, asynchronous servers, gossip, sampled clients, 1F1B
under contention) report their error in bench/planner.py.
"""
from dataclasses import replace

import numpy as np
import pytest
from test_engine import device

from simdl.errors import PlanError
from simdl.hw.topologies import links
from simdl.nn.data import gaussian_mixture
from simdl.nn.models import mlp
from simdl.plan.costs import Costs
from simdl.plan.train_costs import fluid
from simdl.plan.train_estimate import train_estimate
from simdl.plan.train_search import TrainSpace, train_search
from simdl.plan.training import (
    allreduce,
    parameter_server,
    pipeline_train,
    single_device,
)
from simdl.plan.world import Training, World
from simdl.sim.engine import Simulator
from simdl.sim.training import train

RTOL = 1e-9


def training_world(rng, k=4, depth=3, batch=16, data_on=None, memory=2**30, steps=3):
    """k devices of random speeds, each on its own link of random bandwidth to one switch
    (flows into or out of one device share its link); an mlp of depth + 1 blocks."""
    names = [f"d{i}" for i in range(k)]
    devs = {d: device(peak=float(rng.uniform(1e8, 1e10)), efficiency=1.0,
                      overhead=float(rng.uniform(0, 1e-4)), mem_bw=float(rng.uniform(1e8, 1e10)),
                      memory=memory) for d in names}
    net = links(devs, [{"a": d, "b": "sw", "bandwidth": float(rng.uniform(1e5, 1e8)),
                        "bandwidth_back": float(rng.uniform(1e5, 1e8)),
                        "latency": float(rng.uniform(0, 1e-3))} for d in names],
                overhead=float(rng.uniform(0, 1e-4)))
    width = int(rng.integers(4, 64))
    data = gaussian_mixture(n=256, dim=width, n_classes=4, seed=1)
    tr, te = data.split(0.8)
    load = Training(steps=steps, batch=batch, data_on=tuple(data_on or names))
    chain = mlp(in_dim=width, hidden=int(rng.integers(4, 64)), depth=depth, n_classes=4, seed=2)
    return World("t", 0, {"main": chain}, devs, net, load, te, train_data=tr)


def simulated(plan, world):
    sim = Simulator(world.devices, world.network, timing_only=True)
    train(plan, world, sim)
    return sim.now


@pytest.mark.parametrize("make", ["single", "ring", "ps_bsp", "gpipe"])
def test_exact_kinds_are_the_simulators_time(make):
    """Random pools and models; the data owned by every device, so workers receive some
    from several owners at once, over their one link; the estimate of the whole
    workload equals the simulated run."""
    rng = np.random.default_rng(len(make))
    for _ in range(8):
        world = training_world(rng)
        names = list(world.devices)
        k, m = int(rng.integers(2, 5)), int(rng.integers(1, 5))
        if make == "single":
            plan = single_device(world, names[k - 1])
        elif make == "ring":
            plan = allreduce(world, names[:k], "ring")
        elif make == "ps_bsp":
            plan = parameter_server(world, [names[0]], names[1:], "bsp")
        else:
            plan = pipeline_train(world, names[:k], "auto", m, "gpipe")
        est = train_estimate(plan, world)
        assert est.total == pytest.approx(simulated(plan, world), rel=RTOL), est.why


def test_flows_at_once_share_their_links_max_min_and_speed_up_as_others_end():
    """Two flows into one device over a 1 MB/s link, 1 MB and 3 MB, no latency: 0.5 MB/s
    each until the first ends at 2 s, then 1 MB/s: the second ends at 4 s."""
    devs = {d: device() for d in "abc"}
    net = links(devs, [{"a": "a", "b": "sw", "bandwidth": 1e9}, {"a": "b", "b": "sw", "bandwidth": 1e9},
                       {"a": "sw", "b": "c", "bandwidth": 1e6}], overhead=0.0)
    world = World("t", 0, {}, devs, net, None, None)
    assert fluid(Costs(world), [("a", "c", 1e6, 0.0), ("b", "c", 3e6, 0.0)]) == pytest.approx(
        [2.0, 4.0], rel=1e-12)


def test_the_training_search_returns_its_fastest_feasible_plan():
    rng = np.random.default_rng(9)
    world = training_world(rng, k=4)
    found = train_search(world, TrainSpace(microbatches=(2, 4)))
    assert found.best.total == min(e.total for e in found.ranked)
    assert found.examined > 50


def test_devices_too_small_for_a_replica_are_never_workers():
    """A replica's weights and gradients need more than d0 and d1 hold: no
    data-parallel plan uses them, though a pipeline may give them a stage."""
    rng = np.random.default_rng(4)
    world = training_world(rng, k=4, depth=5)
    need = 1.5 * 4 * world.chain.n_params()  # not even weights and gradients
    devs = {d: replace(s, memory=need if d in ("d0", "d1") else 2**30)
            for d, s in world.devices.items()}
    world = replace(world, devices=devs)
    found = train_search(world)
    assert found.refused > 0
    for e in found.ranked:
        if e.plan.sync.kind != "pipeline":
            assert not {"d0", "d1"} & set(e.plan.workers)


def test_an_unknown_sync_is_refused():
    with pytest.raises(PlanError, match="space.syncs"):
        train_search(training_world(np.random.default_rng(0)), TrainSpace(syncs=("magic",)))
