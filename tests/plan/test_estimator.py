"""The estimator (`plan.estimate.estimate`) against the simulator, figure for figure.

Where no request waits and no two hops share a link, the estimate is the simulator's
timeline: latencies, makespan, throughput, energy per device, peak memory per device
and bytes per link agree to 1e-9. Where sharing or queueing occurs the estimate says
so (`exact` False, `why`); its error there is reported by `planner.errors`, not tested.
"""
import numpy as np
import pytest
from test_engine import device
from test_estimate import linear_chain

from simdl.hw.topologies import links
from simdl.nn.data import gaussian_mixture
from simdl.plan.estimate import estimate
from simdl.plan.plan import Plan, Replica, Stage, check
from simdl.plan.timeline import processor_sharing
from simdl.plan.world import Arrival, Inference, World
from simdl.planner import simulate

RTOL = 1e-9


def mesh_world(rng, n_blocks, n_devices, batch, requests=3, arrival=None, medium=False):
    """A linear chain on devices of random speeds joined by a full mesh of links of random
    bandwidths (each ordered pair its own directed link and route), or, with `medium`, by
    one access point whose airtime every flow shares."""
    widths = [int(w) for w in rng.integers(4, 200, size=n_blocks + 1)]
    devs = {f"d{i}": device(peak=float(rng.uniform(1e8, 1e10)), efficiency=1.0,
                            overhead=float(rng.uniform(0, 1e-4)),
                            mem_bw=float(rng.uniform(1e8, 1e10)), memory=2**30,
                            idle=float(rng.uniform(0.1, 2)), active=float(rng.uniform(0.5, 5)))
            for i in range(n_devices)}
    names = list(devs)
    if medium:
        spec = [{"a": d, "b": "ap", "bandwidth": float(rng.uniform(1e5, 1e7)),
                 "latency": float(rng.uniform(0, 2e-4)), "medium": "air"} for d in names]
        net = links(devs, spec, media={"air": 1e6}, nodes={"ap": "ap"},
                    overhead=float(rng.uniform(0, 1e-4)))
    else:  # one latency for all: the direct link is every pair's route
        hop = float(rng.uniform(0, 3e-3))
        spec = [{"a": a, "b": b, "bandwidth": float(rng.uniform(1e5, 1e8)),
                 "bandwidth_back": float(rng.uniform(1e5, 1e8)),
                 "latency": hop}
                for i, a in enumerate(names) for b in names[i + 1:]]
        net = links(devs, spec, overhead=float(rng.uniform(0, 1e-4)))
    source = names[int(rng.integers(n_devices))]
    load = Inference(requests, arrival or Arrival("closed", concurrency=1), batch, source)
    data = gaussian_mixture(n=64, dim=widths[0], n_classes=2, seed=0)
    return World("t", 0, {"main": linear_chain(widths)}, devs, net, load, data)


def random_pipeline(rng, world, microbatches):
    names, n = list(world.devices), len(world.chain)
    k = int(rng.integers(1, min(len(names), n) + 1))
    order = [names[i] for i in rng.permutation(len(names))[:k]]
    cuts = sorted(int(c) for c in rng.choice(np.arange(1, n), size=k - 1, replace=False))
    bounds = [0, *cuts, n]
    stages = tuple(Stage((d,), a, b) for d, a, b in zip(order, bounds, bounds[1:]))
    return Plan("pipeline", (Replica(stages),), world.workload.source, microbatches)


def assert_same(est, sim):
    assert est.p50 == pytest.approx(sim.p50, rel=RTOL)
    assert est.p99 == pytest.approx(sim.p99, rel=RTOL)
    assert est.makespan == pytest.approx(sim.makespan, rel=RTOL)
    assert est.throughput == pytest.approx(sim.throughput, rel=RTOL)
    for d, joules in sim.energy.items():
        assert est.energy[d] == pytest.approx(joules, rel=RTOL), d
    for d, peak in sim.peak_memory.items():
        assert est.peak_memory[d] == pytest.approx(peak, rel=RTOL), d
    assert est.link_bytes.keys() == sim.link_bytes.keys()
    for r, b in sim.link_bytes.items():
        assert est.link_bytes[r] == pytest.approx(b, rel=RTOL), r


def test_uncontended_pipelines_are_the_simulators_timeline():
    """Random chains cut over random ordered subsets of a random mesh, any number of
    micro-batches: the flows of one hop share it (processor sharing, computed exactly) and
    nothing else meets, so the estimate claims to be exact and is."""
    rng = np.random.default_rng(15)
    for _ in range(40):
        n, k = int(rng.integers(2, 9)), int(rng.integers(1, 5))
        batch = int(rng.integers(1, 9))
        world = mesh_world(rng, n, k, batch)
        plan = random_pipeline(rng, world, int(rng.integers(1, batch + 1)))
        check(plan, world)
        est = estimate(plan, world)
        assert est.exact, est.why
        assert_same(est, simulate(plan, world))


@pytest.mark.parametrize("dispatch", ["round_robin", "weighted", "least_loaded", "one"])
def test_data_parallel_plans_where_nothing_queues_are_the_simulators_timeline(dispatch):
    """Replicas of random pipelines on disjoint devices, one request at a time: each
    request's path is its dispatch's pick, and every figure matches."""
    rng = np.random.default_rng(len(dispatch))
    for _ in range(15):
        n = int(rng.integers(2, 7))
        world = mesh_world(rng, n, 5, int(rng.integers(1, 6)), requests=7)
        names = list(world.devices)
        split = int(rng.integers(1, 5))
        reps = []
        for group in (names[:split], names[split:]):
            cuts = sorted(rng.choice(np.arange(1, n), size=min(len(group), n) - 1, replace=False))
            bounds = [0, *map(int, cuts), n]
            reps.append(Replica(tuple(Stage((d,), a, b) for d, a, b in
                                      zip(group, bounds, bounds[1:])),
                                share=float(rng.uniform(0.1, 1))))
        reps = reps[:1] if dispatch == "one" else reps
        plan = Plan("data_parallel", tuple(reps), world.workload.source, 1, dispatch)
        est = estimate(plan, world)
        assert est.exact, est.why
        assert_same(est, simulate(plan, world))


def test_when_the_estimate_says_exact_it_is_even_on_a_shared_airtime():
    """On one access point every flow crosses the airtime, so hops of one request often
    overlap (micro-batches), and Poisson arrivals make requests meet. Whatever the
    estimate claims exact matches the simulator; some of what it flags does not."""
    rng = np.random.default_rng(3)
    verdicts, differ = [], 0
    for trial in range(40):
        n, batch = int(rng.integers(2, 7)), int(rng.integers(2, 6))
        arrival = (Arrival("poisson", rate=float(rng.uniform(5, 150))) if trial % 2 else
                   Arrival("closed", concurrency=1))
        world = mesh_world(rng, n, int(rng.integers(2, 4)), batch, requests=6,
                           arrival=arrival, medium=True)
        plan = random_pipeline(rng, world, int(rng.integers(1, batch + 1)))
        est, sim = estimate(plan, world), simulate(plan, world)
        verdicts.append(est.exact)
        if est.exact:
            assert_same(est, sim)
        else:
            differ += abs(est.p50 - sim.p50) > RTOL * sim.p50
    assert 5 <= sum(verdicts) <= 35 and differ >= 3, (verdicts, differ)


@pytest.mark.parametrize("starts, work, done", [
    ([0.0, 0.0], [1.0, 2.0], [2.0, 3.0]),            # equal shares until the first leaves
    ([0.0, 1.0], [2.0, 1.0], [3.0, 3.0]),            # the second halves the first's rate
    ([0.0, 5.0], [1.0, 1.0], [1.0, 6.0]),            # apart: each alone
    ([0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [2.0, 2.0, 0.0]),  # an empty flow needs no share
])
def test_processor_sharing_by_hand(starts, work, done):
    assert processor_sharing(starts, work) == pytest.approx(done, abs=1e-15)


def test_where_requests_queue_the_peak_memory_bound_is_the_lone_peak_times_those_in_flight():
    """A closed loop of 3 clients on one device keeps 3 requests in flight at once: the
    bound is the weights plus 3 lone activation peaks (what one request alone holds,
    read off the exact single-client estimate), well inside the device's memory."""
    rng = np.random.default_rng(5)
    lone_world = mesh_world(rng, 3, 2, batch=4, requests=6)
    source, n = lone_world.workload.source, len(lone_world.chain)
    plan = Plan("single", (Replica((Stage((source,), 0, n),)),), source)
    weights = float(lone_world.chain.param_bytes(0, n))
    alone = estimate(plan, lone_world)
    assert alone.exact
    queued = estimate(plan, World(**{**vars(lone_world), "workload": Inference(
        6, Arrival("closed", concurrency=3), 4, source)}))
    assert not queued.exact
    peak = alone.peak_memory[source] - weights
    assert peak > 0 and queued.peak_memory[source] == pytest.approx(weights + 3 * peak,
                                                                     rel=1e-12)
