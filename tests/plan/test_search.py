"""The planner (`plan.search`) against brute force over every plan of its space.

Three links make the claim: the programs (`plan.partition`) find the brute-force
optimum of any separable cost at full size (12 blocks, 5 devices); the menu's costs are
the estimator's for every pipeline on a mesh whose hops share no link; and, end to end,
the search returns the plan the estimator scores best among every plan of a small space,
single pipelines and data-parallel splits alike. Limits are never broken.
"""
import itertools
from dataclasses import replace

import numpy as np
import pytest
from test_engine import device
from test_estimator import mesh_world

from simdl.errors import PlanError
from simdl.hw.topologies import links
from simdl.nn.data import gaussian_mixture
from simdl.nn.models import mlp
from simdl.plan.costs import Costs
from simdl.plan.estimate import estimate
from simdl.plan.partition import INF, Link, ordered, stage_matrix, subsets
from simdl.plan.plan import Plan, Replica, Stage, check
from simdl.plan.search import breaks, score, search
from simdl.plan.space import HOW, Limits, Menu, Space
from simdl.plan.world import Arrival, Inference, World

# -- the programs at full size -----------------------------------------------------------------

def brute_pipeline(stages, links_, first, last, nbytes, how, order):
    """The best cost of `order` over every way to cut n blocks into len(order) stages."""
    n, best = len(nbytes) - 1, INF
    for cuts in itertools.combinations(range(1, n), len(order) - 1):
        b = [0, *cuts, n]
        parts = [first[order[0]].alpha + first[order[0]].beta * nbytes[0]]
        for d, (i, j) in enumerate(zip(b, b[1:])):
            parts.append(stages[order[d]][i, j])
            if d < len(order) - 1:
                hop = links_[order[d]][order[d + 1]]
                parts.append(hop.alpha + hop.beta * nbytes[j])
        parts.append(last[order[-1]].alpha + last[order[-1]].beta * nbytes[n])
        best = min(best, max(parts) if how == "max" else sum(parts))
    return best


@pytest.mark.parametrize("how", ["max", "sum"])
def test_programs_find_the_brute_force_optimum_of_every_subset_and_order(how):
    """Integer costs (exact sums), up to 12 blocks and 5 devices, some blocks too big for
    some devices: per order the ordered program, per subset of devices the Held-Karp
    program, equal brute force over every order and cut."""
    rng = np.random.default_rng(12 if how == "max" else 13)
    for _ in range(6):
        n, k = int(rng.integers(6, 13)), int(rng.integers(3, 6))
        stages = [stage_matrix(rng.integers(1, 40, n).astype(float), rng.random((n + 1, n + 1)) > 0.1)
                  for _ in range(k)]
        mk = lambda: Link(float(rng.integers(0, 30)), float(rng.integers(0, 4)))
        links_ = [[mk() for _ in range(k)] for _ in range(k)]
        first, last = [mk() for _ in range(k)], [mk() for _ in range(k)]
        nbytes = rng.integers(0, 12, n + 1).astype(float)
        found = subsets(stages, links_, first, last, nbytes, how, [1 << g for g in range(k)])
        for mask in range(1, 1 << k):
            members = [g for g in range(k) if mask >> g & 1]
            brute = min(brute_pipeline(stages, links_, first, last, nbytes, how, o)
                        for o in itertools.permutations(members))
            assert (found[mask].cost if mask in found else INF) == brute
            if len(members) <= 3:
                for o in itertools.permutations(members):
                    p = ordered([stages[g] for g in o], [links_[a][b] for a, b in zip(o, o[1:])],
                                first[o[0]], last[o[-1]], nbytes, how)
                    assert p.cost == brute_pipeline(stages, links_, first, last, nbytes, how, o)


# -- the menu's costs are the estimator's -------------------------------------------------------

VALUE = {"throughput": lambda e: 1.0 / e.capacity, "latency": lambda e: e.latency,
         "energy": lambda e: e.per_request_J}


@pytest.mark.parametrize("objective", ["throughput", "latency", "energy"])
def test_the_programs_cost_of_a_pipeline_is_its_estimate(objective):
    """Random pipelines (up to 12 blocks over up to 5 devices of a mesh, any micro-batch
    count for throughput, one for the sums): the stage and hop costs the programs add up
    equal the estimator's seconds per request, lone latency or joules per request."""
    rng = np.random.default_rng(len(objective))
    for _ in range(25):
        n, k, batch = int(rng.integers(2, 13)), int(rng.integers(1, 6)), int(rng.integers(1, 9))
        m = int(rng.integers(1, batch + 1)) if objective == "throughput" else 1
        world = mesh_world(rng, n, k, batch, requests=1)
        menu = Menu(Costs(world), Space(), m)
        size = int(rng.integers(1, min(k, n) + 1))
        order = [int(g) for g in rng.permutation(len(menu.options))[:size]]
        cuts = [0, *sorted(int(c) for c in rng.choice(np.arange(1, n), size - 1, replace=False)), n]
        nbytes, parts = menu.nbytes(objective), []
        ends = [None, *order, None]
        for (a, b), j in zip(zip(ends, ends[1:]), cuts):
            hop = menu.link(a, b, objective)
            parts.append(hop.alpha + hop.beta * nbytes[j])
        parts += [stage_matrix(menu.per_block(g, objective))[i, j]
                  for g, i, j in zip(order, cuts, cuts[1:])]
        cost = max(parts) if HOW[objective] == "max" else sum(parts)
        stages = tuple(menu.options[g].stage(i, j) for g, i, j in zip(order, cuts, cuts[1:]))
        plan = Plan("t", (Replica(stages),), world.workload.source, m)
        assert cost == pytest.approx(VALUE[objective](estimate(plan, world)), rel=1e-12)


# -- end to end against every plan ---------------------------------------------------------------

def small_world(rng, batch=None):
    """3 or 4 devices of random speeds and memories on a mesh, a chain of 3 to 7 blocks."""
    n, k = int(rng.integers(3, 8)), int(rng.integers(3, 5))
    world = mesh_world(rng, n, k, batch or int(rng.integers(1, 5)))
    return replace(world, devices={d: replace(s, memory=float(rng.uniform(5e4, 5e5)))
                                   for d, s in world.devices.items()})


def pipelines_on(world, devices, m):
    n = len(world.chain)
    for order in itertools.permutations(devices):
        for cuts in itertools.combinations(range(1, n), len(order) - 1):
            b = [0, *cuts, n]
            yield Replica(tuple(Stage((d,), i, j) for d, i, j in zip(order, b, b[1:])))


def groupings(items):
    """Every way to split `items` into non-empty unordered parts."""
    if not items:
        yield []
        return
    for rest in groupings(items[1:]):
        yield [[items[0]], *rest]
        for i in range(len(rest)):
            yield [*rest[:i], [items[0], *rest[i]], *rest[i + 1:]]


def every_plan(world, m, replicas):
    """Every plan of the space: any subset of devices, split into any number of replicas
    (each any order and cuts, requests shared by capacity alone), `m` micro-batches."""
    names, source = list(world.devices), world.workload.source
    costs, alone = Costs(world), {}

    def fits(plan):
        try:
            check(plan, world)
            return True
        except PlanError:
            return False

    for k in range(1, len(names) + 1):
        for chosen in itertools.combinations(names, k):
            for parts in (groupings(list(chosen)) if replicas else [[list(chosen)]]):
                options = []
                for part in parts:
                    ok = []
                    for rep in pipelines_on(world, part, m):
                        plan = Plan("t", (rep,), source, m)
                        if rep not in alone:
                            alone[rep] = estimate(plan, world, costs).capacity if fits(plan) else 0
                        if alone[rep]:
                            ok.append(rep)
                    options.append(ok)
                for combo in itertools.product(*options):
                    total = sum(alone[r] for r in combo)
                    yield Plan("t", tuple(Replica(r.stages, share=alone[r] / total) for r in combo),
                               source, m, "weighted" if len(combo) > 1 else "one")


@pytest.mark.parametrize("objective", ["throughput", "latency", "energy"])
def test_the_search_returns_the_best_of_every_plan_by_the_estimate(objective):
    """Small random pools (memories that rule some plans out): the search's best scores
    what the best of every plan in the space scores; throughput over data-parallel
    splits and micro-batches too."""
    rng = np.random.default_rng({"throughput": 1, "latency": 2, "energy": 3}[objective])
    checked = 0
    while checked < 8:
        world = small_world(rng)
        m = int(rng.integers(1, world.workload.batch + 1)) if objective == "throughput" else 1
        costs = Costs(world)
        scores = [score([estimate(p, world, costs)], {objective: 1})[0]
                  for p in every_plan(world, m, objective == "throughput")]
        if not scores:
            with pytest.raises(PlanError, match="no plan of the space fits"):
                search(world, objective, Space(microbatches=(m,)))
            continue
        found = search(world, objective, Space(microbatches=(m,)))
        assert found.method == "exact"
        assert found.best.score == pytest.approx(min(scores), rel=1e-9)
        checked += 1


# -- limits ------------------------------------------------------------------------------------

def test_no_returned_plan_breaks_memory_or_keeps_the_input_away_from_home():
    rng = np.random.default_rng(7)
    for _ in range(8):
        world = replace(small_world(rng), input_stays_on=None)
        world = replace(world, input_stays_on=world.workload.source)
        try:
            found = search(world, "throughput")
        except PlanError:
            continue
        for s in found.ranked:
            check(s.plan, world)
            assert all(r.stages[0].devices == (world.workload.source,) for r in s.plan.replicas)


@pytest.mark.parametrize("limit", ["energy", "battery_life", "latency"])
def test_a_limit_the_unlimited_best_breaks_is_met_or_refused(limit):
    """Set each limit just inside what the unlimited best plan does: the plan returned
    meets it (a different plan), or no plan does and the search says so."""
    rng = np.random.default_rng(21)
    met = 0
    for _ in range(12):
        world = small_world(rng)
        world = replace(world, devices={d: replace(s, battery=3600.0)
                                        for d, s in world.devices.items()})
        free = search(world, "throughput")
        e = free.best.estimate
        d = free.best.plan.devices[0]
        limits = {"energy": Limits(energy={d: e.energy[d] * 0.999}),
                  "battery_life": Limits(battery_life={d: e.battery_life[d] * 1.001}),
                  "latency": Limits(latency=e.p50 * 0.999)}[limit]
        try:
            found = search(world, "throughput", limits=limits)
        except PlanError as err:
            assert "no plan of the space" in str(err)
            continue
        met += 1
        assert found.best.plan != free.best.plan and found.refused.get(limit, 0) > 0
        for s in found.ranked:
            assert breaks(s.estimate, limits) is None
    assert met >= 3


# -- policies a user expects -------------------------------------------------------------------

def weak_over_slow_link():
    """A source, a fast device on a fast link, and a weak device reached only over a slow
    one. Splitting by memory alone would give the weak device a third of the blocks."""
    devs = {"src": device(peak=2e8, efficiency=1.0, mem_bw=1e10, memory=2**30),
            "fast": device(peak=4e9, efficiency=1.0, mem_bw=1e10, memory=2**30),
            "weak": device(peak=1e8, efficiency=1.0, mem_bw=1e10, memory=2**30)}
    net = links(devs, [{"a": "src", "b": "fast", "bandwidth": 1e9, "latency": 1e-4},
                       {"a": "src", "b": "weak", "bandwidth": 2e4, "latency": 1e-2},
                       {"a": "fast", "b": "weak", "bandwidth": 2e4, "latency": 1e-2}],
                overhead=0.0)
    chain = mlp(in_dim=64, hidden=128, depth=4, n_classes=4, seed=0)
    load = Inference(20, Arrival("closed", concurrency=1), 8, "src")
    return World("t", 0, {"main": chain}, devs, net, load, gaussian_mixture(n=64, dim=64, n_classes=4))


@pytest.mark.parametrize("objective", ["throughput", "latency", "energy"])
def test_a_weak_device_over_a_slow_link_is_left_out(objective):
    """Of one pipeline (a replica of its own would add a little capacity, and its
    requests go nowhere near the others: that is no slower)."""
    world = weak_over_slow_link()
    found = search(world, objective, Space(microbatches=(1, 2, 4), replicas=False))
    assert "weak" not in found.best.plan.devices
    with_weak = [s for s in found.ranked if "weak" in s.plan.devices]
    assert with_weak and all(s.score > found.best.score for s in with_weak)


def test_adding_a_device_never_makes_the_best_plan_slower():
    """The space of a larger pool holds every plan of the smaller one."""
    rng = np.random.default_rng(5)
    for _ in range(8):
        world = small_world(rng)
        names = list(world.devices)
        smaller = Space(devices=tuple(d for d in names if d != names[-1] or d == world.workload.source))
        try:
            before = search(world, "throughput", smaller).best.estimate.capacity
        except PlanError:
            continue
        assert search(world, "throughput").best.estimate.capacity >= before * (1 - 1e-12)


def test_the_pareto_front_is_what_no_other_plan_beats():
    world = weak_over_slow_link()
    found = search(world, {"throughput": 1, "energy": 1}, Space(microbatches=(1, 2)))
    key = lambda s: (-s.estimate.capacity, s.estimate.p50, s.estimate.per_request_J)
    for s in found.ranked:
        beaten = any(all(a <= b for a, b in zip(key(o), key(s))) and key(o) != key(s)
                     for o in found.ranked)
        assert (s in found.pareto) != beaten or key(s) in [key(p) for p in found.pareto]


@pytest.mark.parametrize("bad, match", [
    (dict(objective="speed"), "objective"), (dict(objective={"energy": -1}), "objective.energy"),
    (dict(space=Space(microbatches=(0,))), "space.microbatches"),
    (dict(space=Space(dtypes=("fp8",))), "space.dtypes"),
    (dict(space=Space(devices=("nope",))), "space.devices"),
    (dict(limits=Limits(energy={"src": -1.0})), "limits.energy.src"),
    (dict(limits=Limits(latency=0.0)), "limits.latency"),
])
def test_bad_requests_are_refused_naming_the_field(bad, match):
    with pytest.raises(PlanError, match=match):
        search(weak_over_slow_link(), **bad)
