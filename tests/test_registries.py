"""Every entry of the inference registries, found by iterating the registry itself, so a
new entry is tested without editing a list here: strategies (each choice of each Literal
parameter), dispatch and fusion modes, topologies, models and collectives."""
import inspect
import itertools
import typing
from dataclasses import replace

import numpy as np
import pytest
import simpy

from test_engine import device
from test_models import SMALL
from test_policies import small_world, three_speeds
from test_topologies import EXAMPLE_PARAMS, pool as interface_pool

from simdl.errors import PlanError
from simdl.hw.topologies import TOPOLOGIES, links
from simdl.nn.models import MODELS
from simdl.plan.auto import alone
from simdl.plan.costs import Costs
from simdl.plan.estimate import block_times, transfer_time
from simdl.plan.plan import DISPATCH, FUSE, check, replica_batches
from simdl.plan.strategies import (STRATEGIES, data_parallel, ensemble, offload,
                                   pipeline, single)
from simdl.plan.world import Arrival, Inference, World
from simdl.sim import collectives as C
from simdl.sim.engine import Simulator
from simdl.sim.flows import Flows
from simdl.sim.inference import execute, fuse, inputs
from simdl.sim.stages import prepare
from simdl.world import data_for

SPEEDS = {"src": 1.0, "a": 2.0, "b": 3.0, "c": 5.0, "d": 7.0}


def pool_world(chain, requests=3, batch=6, times=None):
    """A source and four replicas-to-be of different speeds around one switch."""
    devs = {d: device(peak=1e9 * s, overhead=1e-5, mem_bw=1e9, memory=2**30)
            for d, s in SPEEDS.items()}
    net = links(devs, [{"a": d, "b": "sw", "bandwidth": 1e8, "latency": 1e-4} for d in devs],
                overhead=1e-5)
    arrival = (Arrival("closed", concurrency=2) if times is None
               else Arrival("trace", times=tuple(times)))
    load = Inference(requests, arrival, batch, "src")
    return World("t", 0, {"main": chain}, devs, net, load, data_for(chain, 0)[1])


def run(plan, world, timing_only=False):
    check(plan, world)
    sim = Simulator(world.devices, world.network, timing_only=timing_only)
    out = execute(plan, world, sim, prepare(plan, world))
    return sim, out


def reference(plan, world, r):
    """What request r's answer must be, bit for bit: each replica's model on one device,
    over the same parts of the batch (split shares, micro-batches), fused if fused."""
    x = inputs(world, r)

    def whole(model, part):
        pieces = np.array_split(part, min(plan.microbatches, len(part)))
        return np.concatenate([world.models[model].forward(p)[0] for p in pieces])

    if plan.dispatch == "all":
        return fuse(plan.fuse, [whole(rep.model, x) for rep in plan.replicas])
    if plan.dispatch == "split":
        sizes = replica_batches(plan, len(x))
        parts = np.split(x, np.cumsum(sizes)[:-1])
        return np.concatenate([whole(rep.model, p) for rep, p, n in
                               zip(plan.replicas, parts, sizes) if n > 0])
    return whole(plan.replicas[0].model, x)


# -- strategies ---------------------------------------------------------------------------

#: A value for each required parameter type a strategy may take (the pool above).
REQUIRED = {
    "str": "b",
    "list[str]": ["a", "b", "c"],
    "list[list[list[str]]]": [[["a"], ["b", "c"]], [["d"], ["b"]]],
    "list[simdl.plan.strategies.ReplicaEntry]": [
        {"stages": [{"devices": ["a"], "start": 0, "stop": 1},
                    {"devices": ["b", "c"], "start": 1, "stop": 3}], "share": 0.5},
        {"stages": [{"devices": ["d"], "start": 0, "stop": 3}], "share": 0.5}],
}


def literals(hint):
    """The Literal choices in a (possibly union) type hint."""
    if typing.get_origin(hint) is typing.Literal:
        return list(typing.get_args(hint))
    return [v for arg in typing.get_args(hint) for v in literals(arg)]


def strategy_cases():
    """Per strategy: its required parameters only, then each Literal choice of each
    parameter in turn, then two micro-batches where it takes them."""
    cases = []
    for name, fn in sorted(STRATEGIES.items()):
        hints = typing.get_type_hints(fn)
        params = list(inspect.signature(fn).parameters.values())[1:]
        cases.append((name, {}))
        for p in params:
            cases += [(name, {p.name: v}) for v in literals(hints[p.name]) if v != p.default]
        if "microbatches" in hints:
            cases.append((name, {"microbatches": 2}))
    return cases


def required_args(fn):
    hints = typing.get_type_hints(fn)
    args = {}
    for p in list(inspect.signature(fn).parameters.values())[1:]:
        if p.default is inspect.Parameter.empty:
            hint = hints[p.name]
            kind = hint.__name__ if isinstance(hint, type) else str(hint)
            assert kind in REQUIRED, f"add an example value for a required {kind} to REQUIRED"
            args[p.name] = REQUIRED[kind]
    return args


MLP = MODELS["mlp"](in_dim=16, hidden=24, depth=2, n_classes=5, seed=0)


@pytest.mark.parametrize("name, extra", strategy_cases(),
                         ids=lambda v: v if isinstance(v, str) else
                         ",".join(f"{k}={x}" for k, x in v.items()) or "defaults")
def test_every_strategy_and_choice_plans_a_checked_plan_that_computes_the_model(name, extra):
    """Stages on one device run the same kernels on the same numbers: bitwise equal answers.
    A tensor-parallel group adds partial sums in another order: float32 rounding."""
    world = pool_world(MLP)
    fn = STRATEGIES[name]
    plan = fn(world, **required_args(fn) | extra)
    _, out = run(plan, world)
    assert sorted(out.final) == [0, 1, 2]
    grouped = any(len(s.devices) > 1 for rep in plan.replicas for s in rep.stages)
    for r, y in out.final.items():
        if grouped:
            np.testing.assert_allclose(y, reference(plan, world, r), rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(y, reference(plan, world, r))


def test_the_strategies_literal_choices_are_the_plans_registries():
    dispatch = set(literals(typing.get_type_hints(data_parallel)["dispatch"]))
    assert dispatch < set(DISPATCH) and set(DISPATCH) - dispatch == {"one", "all"}
    assert literals(typing.get_type_hints(ensemble)["fuse"]) == list(FUSE)


# -- dispatch and fusion modes ------------------------------------------------------------

def assignment(dispatch):
    """Which replicas served each request, and how many of its 10 samples each got (from
    the input transfers), under `dispatch`, on the three replicas of test_policies."""
    world = small_world(*three_speeds(), batch=10, times=(0.0,) * 8 + (10.0,) * 3)
    plan = replace(data_parallel(world, ["a", "b", "c"]), dispatch=dispatch)
    sim, _ = run(plan, world, timing_only=True)
    log = sim.log.frame()
    served = log[log.kind == "request"].sort_values("request")
    sent = log[(log.kind == "transfer") & log.label.str.startswith("input")]
    samples = sent.groupby(["request", "resource"]).nbytes.sum() // (4 * 4)
    return tuple(served.label), tuple(samples.items())


def test_every_dispatch_mode_assigns_requests_its_own_way():
    """A mode the dispatcher does not know falls back to replica 0 for every request, as
    `one` does: each mode must give a different assignment on replicas of three speeds."""
    seen = {d: assignment(d) for d in DISPATCH}
    for a, b in itertools.combinations(DISPATCH, 2):
        assert seen[a] != seen[b], (a, b)
    assert set(seen["one"][0]) == {"a"}
    assert set(seen["all"][0]) == {"a | b | c"}


def test_a_dispatch_or_fusion_mode_outside_the_registries_is_refused():
    world = pool_world(MLP)
    plan = single(world)
    check(plan, world)
    for field, bad in (("dispatch", "random"), ("fuse", "max")):
        with pytest.raises(PlanError, match=f"^{field}: '{bad}' is not valid; choose one of"):
            check(replace(plan, **{field: bad}), world)


def test_every_fusion_mode_fuses_its_own_way():
    """Three members that disagree: every pair of modes gives different scores."""
    logits = [np.log(np.array([[p, 1 - p]])) for p in (0.6, 0.1, 0.45)]
    fused = {how: fuse(how, logits) for how in FUSE}
    for a, b in itertools.combinations(FUSE, 2):
        assert not np.allclose(fused[a], fused[b]), (a, b)


# -- topologies ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_every_topology_moves_a_lone_transfer_in_the_estimators_time(name):
    """Between every ordered pair of devices (relays, tethers and twice-crossed airtime
    included): latency, overhead, then the route's bottleneck share."""
    net = TOPOLOGIES[name](interface_pool(), **EXAMPLE_PARAMS.get(name, {}))
    world = World("t", 0, {}, {}, net, None, None)
    for src, dst in itertools.permutations(net.devices, 2):
        flows = Flows(simpy.Environment(), net)
        event = flows.transfer(src, dst, 123456.0)
        flows.env.run(until=event)
        took = event.value.t_end - event.value.t_request
        assert took == pytest.approx(transfer_time(world, src, dst, 123456.0), rel=1e-12), (src, dst)


# -- models -------------------------------------------------------------------------------

def small(name):
    return MODELS[name](**SMALL.get(name, {}), seed=0)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_runs_every_offload_cut_in_the_estimated_time(name):
    """A lone request, blocks [0, cut) on the source and the rest on c: the estimator's
    kernels, raw input (tokens are int64) or activation out, logits back."""
    world = pool_world(small(name), requests=1, times=[0.0])
    for cut in range(len(world.chain) + 1):
        sim, _ = run(offload(world, "c", cut=cut), world, timing_only=True)
        log = sim.log.frame()
        (t0, t1), = log[log.kind == "request"][["t_start", "t_end"]].values
        assert t1 - t0 == pytest.approx(alone(offload(world, "c", cut=cut), Costs(world)),
                                        rel=1e-12), cut
    kernels = log[log.kind == "compute"]
    assert (kernels.t_end - kernels.t_start).tolist() == pytest.approx(
        block_times(world, "src", 6), rel=1e-12)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("microbatches", [1, 2])
def test_every_model_cut_by_auto_into_a_pipeline_computes_the_whole_model(name, microbatches):
    world = pool_world(small(name))
    plan = pipeline(world, ["a", "c", "b"], microbatches=microbatches)
    _, out = run(plan, world)
    assert sorted(out.final) == [0, 1, 2]
    for r, y in out.final.items():
        np.testing.assert_array_equal(y, reference(plan, world, r))


# -- collectives --------------------------------------------------------------------------

def test_every_collective_has_algorithms_and_its_default_is_one_of_them():
    assert set(C.COLLECTIVES) == set(C.ALGORITHMS)
    for name, fn in C.COLLECTIVES.items():
        default = inspect.signature(fn).parameters["algorithm"].default
        assert default in C.ALGORITHMS[name], name


#: Who must have heard from whom when a collective ends (members[0] is the root).
HEARS = {
    "all_reduce": lambda members: {(v, u) for v in members for u in members},
    "all_gather": lambda members: {(v, u) for v in members for u in members},
    "reduce_scatter": lambda members: {(v, u) for v in members for u in members},
    "broadcast": lambda members: {(v, members[0]) for v in members},
    "reduce": lambda members: {(members[0], u) for u in members},
    "gather": lambda members: {(members[0], u) for u in members},
}
ENTRIES = sorted((c, a) for c, algs in C.ALGORITHMS.items() for a in algs)


def informed(sends, members):
    """Each member's knowledge at the end: a send carries what its sender knew once the
    sends it waits for (transitively) had arrived; nothing else may be assumed delivered."""
    before = []  # per send: the sends it transitively waits for
    for t in sends:
        seen = set(t.deps)
        for d in t.deps:
            seen |= before[d]
        before.append(seen)
    carried = []
    for i, t in enumerate(sends):
        knows = {t.src}
        for j in before[i]:
            if sends[j].dst == t.src:
                knows |= carried[j]
        carried.append(knows)
    return {v: {v}.union(*(carried[i] for i, t in enumerate(sends) if t.dst == v))
            for v in members}


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7])
@pytest.mark.parametrize("collective, algorithm", ENTRIES)
def test_every_algorithm_informs_whoever_must_hear_and_runs_each_send_once(collective, algorithm, n):
    """Checked on the schedule (the data can only flow along its dependencies), then run:
    the log holds exactly the schedule's sends. Members alternate between two switches."""
    members = [f"d{i}" for i in range(n)]
    devs = {d: device() for d in members}
    net = links(devs, [{"a": d, "b": "sA" if i % 2 else "sB", "bandwidth": 1e8, "latency": 1e-4}
                       for i, d in enumerate(members)]
                + [{"a": "sA", "b": "sB", "bandwidth": 1e7, "latency": 1e-3}], overhead=1e-5)
    s = C.Schedule("x", net)
    C.ALGORITHMS[collective][algorithm](s, members, 6e5)
    knows = informed(s.sends, members)
    for v, u in HEARS[collective](members):
        assert u in knows[v], f"{v} never hears from {u}"
    sim = Simulator(devs, net)
    root = (members[0],) if collective in ("broadcast", "reduce", "gather") else ()
    proc = C.COLLECTIVES[collective](sim, *root, members, 6e5, algorithm)
    sim.run(until=proc)
    log = sim.log.frame()
    moved = log[log.kind == "transfer"]
    assert sorted(zip(moved.device, moved.resource, moved.nbytes)) == sorted(
        (t.src, t.dst, t.nbytes) for t in s.sends)
