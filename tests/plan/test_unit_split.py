"""A stage shared by several units of one device (`Stage.units`): each micro-batch's rows
split among them by speed, every unit on its rows at once, the rows put back in order.

The outputs are the single-unit run's, the stage's time is the slowest unit's share, the
estimator is the simulator's timeline, the planner finds the split where it wins, and a
split that cannot run is refused naming its field.
"""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_estimate import linear_chain
from test_estimator import assert_same

from simdl import api
from simdl.errors import PlanError
from simdl.hw.devices import DeviceSpec, UnitSpec, kernel_time
from simdl.hw.topologies import links
from simdl.nn.data import gaussian_mixture
from simdl.plan.costs import Costs
from simdl.plan.estimate import estimate
from simdl.plan.plan import Plan, Replica, Stage, check, deployed_chain, split_rows
from simdl.plan.space import Menu, Space
from simdl.plan.strategies import entry, explicit
from simdl.plan.world import Arrival, Inference, World
from simdl.planner import choose, saturated, simulate
from simdl.scenario import StrategyEntry, load
from simdl.sim.engine import Simulator
from simdl.sim.inference import execute, inputs
from simdl.plan.costs import microbatch_sizes
from simdl.sim.stages import prepare

ROOT = Path(__file__).resolve().parents[2]


def units_device(peaks, overheads=None, active=None, memory=2**30, mem_bw=1e15):
    """A device with one unit per entry of `peaks` (fp32 op/s at efficiency 1)."""
    overheads = overheads or [0.0] * len(peaks)
    active = active or [1.0] * len(peaks)
    units = {f"u{k}": UnitSpec(kind="cpu", peak={"fp32": p, "fp16": 2 * p}, efficiency=1.0,
                               overhead=o, active_power=a)
             for k, (p, o, a) in enumerate(zip(peaks, overheads, active))}
    return DeviceSpec(type="test", label="test device", units=units, memory=memory,
                      mem_bw=mem_bw, idle_power=0.5, radio_tx_power=0.5, radio_rx_power=0.25,
                      battery=None, background=0.0, interfaces={"wifi": 1e6})


def world_of(devs, widths, batch, requests=3, net=None, source=None):
    names = list(devs)
    if net is None:
        spec = [{"a": a, "b": b, "bandwidth": 1e7, "latency": 1e-3}
                for i, a in enumerate(names) for b in names[i + 1:]]
        net = links(devs, spec, overhead=1e-5)
    load = Inference(requests, Arrival("closed", concurrency=1), batch, source or names[0])
    data = gaussian_mixture(n=64, dim=widths[0], n_classes=2, seed=0)
    return World("t", 0, {"main": linear_chain(widths)}, devs, net, load, data)


def one_stage(world, **stage):
    n = len(world.chain)
    return Plan("t", (Replica((Stage((world.workload.source,), 0, n, **stage),)),),
                world.workload.source)


# -- the outputs ------------------------------------------------------------------

@pytest.fixture(scope="module")
def phone():
    sc = load(ROOT / "scenarios/phone_units.yaml")
    small = sc.model_copy(update={"workload": sc.workload.model_copy(
        update={"requests": 4, "batch": 7})})
    return sc, api.build(small, timing_only=False, pretrain=False)


def outputs(plan, world):
    sim = Simulator(world.devices, world.network, timing_only=False)
    return execute(plan, world, sim, prepare(plan, world)).final, sim


@pytest.mark.parametrize("microbatches", [1, 2])
def test_a_split_computes_each_units_rows_as_that_unit_alone_would(phone, microbatches):
    """fp16 weights on the NPU and the GPU at once (7 samples: 5 + 2 rows; 4 + 3 cut 3 + 1
    and 2 + 1 with two micro-batches): the answer is, bit for bit, the deployed model run
    on each unit's rows alone, put back in order (every sample's numbers depend on that
    sample only: activation ranges never span samples). Against the whole micro-batch on
    one unit it agrees to float32 rounding only (rtol 1e-5): numpy's GEMM picks its
    kernel and blocking by the number of rows, so a row's dot products may be summed in
    another order in a part of 2 rows than in a batch of 3 (micro-batches do the same).
    The kernels did run on both units."""
    _, world = phone
    single = replace(one_stage(world, unit="npu", dtype="fp16"), microbatches=microbatches)
    split = replace(one_stage(world, dtype="fp16", units=("npu", "gpu")),
                    microbatches=microbatches)
    alone, _ = outputs(single, world)
    shared, sim = outputs(split, world)
    chain = deployed_chain(world.chain, "fp16", 0.0, "unstructured")
    shares = Costs(world).shares(split.replicas[0].stages[0], 7 if microbatches == 1 else 4)
    assert alone.keys() == shared.keys() == set(range(4))
    for r in alone:
        x, parts = inputs(world, r), []
        for mb in np.split(x, np.cumsum(microbatch_sizes(7, microbatches))[:-1]):
            for rows in np.split(mb, np.cumsum(split_rows(len(mb), shares))[:-1]):
                if len(rows):
                    for b in range(len(chain)):
                        rows = chain.forward(rows, start=b, stop=b + 1)[0]
                    parts.append(rows)
        np.testing.assert_array_equal(shared[r], np.concatenate(parts))
        np.testing.assert_allclose(shared[r], alone[r], rtol=1e-5, atol=1e-5)
    used = {unit for _, _, kind, _, unit, *_ in sim.log.rows if kind == "compute"}
    assert used == {"npu", "gpu"}


# -- the stage's time ---------------------------------------------------------------

def test_the_stage_takes_its_slowest_units_share_and_the_shares_balance_the_units():
    """Units at 3 and 1 GFLOP/s (no overhead, compute bound): 8 samples split 6 + 2, so
    both units take the same time, max(6 rows on u0, 2 rows on u1) by `kernel_time`. An
    equal split (4 + 4) or the fast unit alone (8 + 0) is strictly slower."""
    spec = units_device([3e9, 1e9])
    world = world_of({"a": spec}, [64, 256, 128, 10], batch=8, requests=1)
    chain = world.chain

    def seconds(unit, rows):
        return sum(kernel_time(spec, unit, c.fwd_flops, c.fwd_bytes) for c in chain.costs(rows))

    plan = one_stage(world, units=("u0", "u1"))
    assert Costs(world).shares(plan.replicas[0].stages[0], 8) == pytest.approx((0.75, 0.25))
    hand = max(seconds("u0", 6), seconds("u1", 2))
    assert seconds("u0", 6) == pytest.approx(seconds("u1", 2), rel=1e-12)
    sim = simulate(plan, world)
    assert sim.p50 == hand == estimate(plan, world).latency
    equal = max(seconds("u0", 4), seconds("u1", 4))
    assert hand < equal / 1.4 and hand < seconds("u0", 8) / 1.3
    assert simulate(one_stage(world, units=("u0", "u1"), unit_shares=(0.5, 0.5)),
                    world).p50 == equal
    assert simulate(one_stage(world, unit="u0"), world).p50 == seconds("u0", 8)


@pytest.mark.parametrize("total, shares, rows", [
    (8, (0.75, 0.25), (6, 2)),
    (7, (0.7, 0.3), (5, 2)),           # 4.9 + 2.1: the larger remainder gets the sample
    (1, (0.6, 0.4), (1, 0)),
    (5, (1 / 3, 1 / 3, 1 / 3), (2, 2, 1)),  # ties to the earlier
])
def test_split_rows_by_largest_remainders(total, shares, rows):
    assert split_rows(total, shares) == rows


# -- the estimator ------------------------------------------------------------------

def random_split_world(rng):
    n_dev = int(rng.integers(1, 4))
    devs = {f"d{i}": units_device([float(rng.uniform(1e8, 1e10))
                                   for _ in range(int(rng.integers(2, 4)))],
                                  [float(rng.uniform(0, 1e-4)) for _ in range(3)],
                                  [float(rng.uniform(0.5, 5)) for _ in range(3)],
                                  mem_bw=float(rng.uniform(1e8, 1e10)))
            for i in range(n_dev)}
    names = list(devs)
    spec = [{"a": a, "b": b, "bandwidth": float(rng.uniform(1e5, 1e8)),
             "bandwidth_back": float(rng.uniform(1e5, 1e8)), "latency": 1e-3}
            for i, a in enumerate(names) for b in names[i + 1:]]
    net = links(devs, spec, overhead=float(rng.uniform(0, 1e-4)))
    widths = [int(w) for w in rng.integers(4, 200, size=int(rng.integers(3, 8)))]
    batch = int(rng.integers(1, 12))
    return world_of(devs, widths, batch, requests=3, net=net,
                    source=names[int(rng.integers(n_dev))])


def random_split_plan(rng, world):
    names, n = list(world.devices), len(world.chain)
    k = int(rng.integers(1, min(len(names), n) + 1))
    order = [names[i] for i in rng.permutation(len(names))[:k]]
    cuts = sorted(int(c) for c in rng.choice(np.arange(1, n), size=k - 1, replace=False))
    bounds = [0, *cuts, n]
    stages = []
    for d, a, b in zip(order, bounds, bounds[1:]):
        units = list(world.devices[d].units)
        k = int(rng.integers(2, len(units) + 1))
        chosen = tuple(units[i] for i in rng.permutation(len(units))[:k])
        shares = ()
        if rng.random() < 0.5:
            raw = rng.uniform(0.1, 1, size=len(chosen))
            shares = tuple(float(v) for v in raw / raw.sum())
        stages.append(Stage((d,), a, b, units=chosen, unit_shares=shares))
    m = int(rng.integers(1, world.workload.batch + 1))
    return Plan("t", (Replica(tuple(stages)),), world.workload.source, m)


def test_unit_split_pipelines_are_the_simulators_timeline():
    """Random chains cut over random devices, every stage a random split over two or three
    units (shares by speed or random), any number of micro-batches: the estimate claims
    exact and matches latencies, energy, peak memory and link bytes to 1e-9."""
    rng = np.random.default_rng(15)
    for _ in range(30):
        world = random_split_world(rng)
        plan = random_split_plan(rng, world)
        check(plan, world)
        est = estimate(plan, world)
        assert est.exact, est.why
        assert_same(est, simulate(plan, world))


# -- the planner ----------------------------------------------------------------------

def test_the_planners_split_costs_are_the_estimators():
    """A split option of the menu costs blocks [0, n) as the estimator's lone request: its
    busiest unit per request (throughput) and its latency (one micro-batch)."""
    rng = np.random.default_rng(4)
    spec = units_device([2e9, 7e8, 3e8], [1e-5, 4e-5, 0.0], mem_bw=5e9)
    world = world_of({"a": spec}, [int(w) for w in rng.integers(8, 300, size=6)], batch=9)
    menu = Menu(Costs(world), Space(units=True), 3)
    splits = [g for g, o in enumerate(menu.options) if o.units]
    assert [menu.options[g].units for g in splits] == [("u0", "u1"), ("u0", "u2"),
                                                      ("u1", "u2"), ("u0", "u1", "u2")]
    n, costs = len(world.chain), Costs(world)
    for g in splits:
        plan = replace(one_stage(world, units=menu.options[g].units), microbatches=3)
        e = estimate(plan, world)
        assert menu.matrix(g, "throughput")[0, n] == pytest.approx(1 / e.capacity, rel=1e-12)
        stage, size = plan.replicas[0].stages[0], menu.sizes[0]  # 3 samples per micro-batch
        rows = split_rows(size, costs.shares(stage, size))
        first = max(sum(costs.kernels("a", r, u).tolist()) for u, r in zip(stage.units, rows) if r)
        assert menu.matrix(g, "latency")[0, n] == pytest.approx(first, rel=1e-12)
    assert not [o for o in Menu(Costs(world), Space(), 3).options if o.units]


@pytest.fixture(scope="module")
def timing_phone():
    sc = load(ROOT / "scenarios/phone_units.yaml")
    return sc, api.build(sc, timing_only=True, pretrain=False)


def test_the_planner_picks_a_split_on_the_phone_and_its_entry_reproduces_it(timing_phone):
    """With unit splits in the space the planner's simulated winner runs one stage on the
    NPU and the GPU (and the CPU) together, faster than any plan without splits; written
    as an explicit entry (`units` and all) and read back, it is the same plan and the
    simulator measures the same throughput."""
    _, world = timing_phone
    space = Space(dtypes=("fp32", "fp16"), units=True)
    chosen = choose(world, "throughput", space)
    (stage,) = chosen.plan.replicas[0].stages
    assert {"npu", "gpu"} <= set(stage.units) and stage.dtype == "fp16"
    without = choose(world, "throughput", Space(dtypes=("fp32", "fp16")))
    assert not any(s.units for r in without.plan.replicas for s in r.stages)
    assert chosen.measured[0].throughput > 1.3 * max(m.throughput for m in without.measured)
    written = entry(chosen.plan)
    assert written["name"] == "explicit"
    assert written["replicas"][0]["stages"][0]["units"] == list(stage.units)
    again = api.plan(world, StrategyEntry(**written), 0)
    assert again.replicas == chosen.plan.replicas
    loop = saturated(world)
    assert simulate(again, loop).throughput == simulate(chosen.plan, loop).throughput


def test_the_phone_units_scenario_runs_its_split_faster_than_either_unit(timing_phone):
    sc, world = timing_phone
    plans = {e.label: api.plan(world, e, i) for i, e in enumerate(sc.strategies)}
    rps = {k: simulate(p, world).throughput for k, p in plans.items()}
    assert rps["npu-gpu-fp16"] > 1.3 * max(rps["npu-fp16"], rps["gpu-fp16"])
    assert "(npu+gpu)" in plans["npu-gpu-fp16"].describe()


# -- bad input ------------------------------------------------------------------------

@pytest.mark.parametrize("stage, where, allowed", [
    ({"units": ["npu", "tpu"]}, "units", "units of phone: cpu, gpu, npu"),
    ({"units": ["npu", "npu"]}, "units", "listed twice"),
    ({"units": ["npu"]}, "units", "two or more units"),
    ({"units": ["npu", "gpu"], "unit": "npu"}, "units", "instead of `unit`"),
    ({"units": ["npu", "gpu"], "dtype": "int8"}, "units", "that run int8: cpu, npu"),
    ({"units": ["npu", "gpu"], "unit_shares": [0.5, 0.6]}, "unit_shares", "adding up to 1"),
    ({"units": ["npu", "gpu"], "unit_shares": [1.0]}, "unit_shares", "one fraction"),
    ({"units": ["npu", "gpu"], "unit_shares": [1.2, -0.2]}, "unit_shares", "in (0, 1)"),
])
def test_a_split_that_cannot_run_is_refused_naming_its_field(timing_phone, stage, where,
                                                             allowed):
    _, world = timing_phone
    s = {"devices": ["phone"], "start": 0, "stop": len(world.chain), "dtype": "fp16"} | stage
    with pytest.raises(PlanError) as err:
        check(explicit(world, [{"stages": [s]}]), world)
    assert err.value.where == f"replicas[0].stages[0].{where}"
    assert allowed in str(err.value)


def test_a_tensor_parallel_group_cannot_split_by_units():
    devs = {"a": units_device([1e9, 2e9]), "b": units_device([1e9, 2e9])}
    world = world_of(devs, [8, 16, 4], batch=2)
    plan = Plan("t", (Replica((Stage(("a", "b"), 0, 2, units=("u0", "u1")),)),), "a")
    with pytest.raises(PlanError, match="not a tensor-parallel group"):
        check(plan, world)
