"""The baselines a user would try, each against its rule computed by hand."""
import pytest
from test_engine import device
from test_search import weak_over_slow_link

from simdl.errors import PlanError
from simdl.hw.topologies import links
from simdl.nn.data import gaussian_mixture
from simdl.nn.models import mlp
from simdl.plan.baselines import BASELINES, baselines, shares
from simdl.plan.estimate import estimate
from simdl.plan.plan import check
from simdl.plan.search import search
from simdl.plan.world import Arrival, Inference, World


def cuts(plan):
    return [(s.device, s.start, s.stop) for s in plan.replicas[0].stages]


def pool(memories=(2**30, 2**30, 2**30), peaks=(1e9, 3e9, 2e9)):
    """Three devices a, b, c listed in that order on a switch; an mlp of 7 blocks."""
    devs = {n: device(peak=p, efficiency=1.0, mem_bw=1e10, memory=m)
            for n, p, m in zip("abc", peaks, memories)}
    net = links(devs, [{"a": d, "b": "sw", "bandwidth": 1e8} for d in devs], overhead=0.0)
    chain = mlp(in_dim=16, hidden=32, depth=6, n_classes=4, seed=0)
    load = Inference(4, Arrival("closed", concurrency=1), 4, "a")
    return World("t", 0, {"main": chain}, devs, net, load, gaussian_mixture(n=16, dim=16, n_classes=4))


@pytest.mark.parametrize("weights, n, counts", [
    ([1, 1, 1], 7, [3, 2, 2]),        # remainders .33 each: the earliest gets the extra
    ([3, 1], 4, [3, 1]),
    ([1] * 5, 3, [1, 1, 1, 0, 0]),    # more devices than blocks: the last are left out
    ([100, 1, 1], 5, [5, 0, 0]),      # 4.9, 0.05, 0.05
    ([1, 2, 3], 6, [1, 2, 3]),
])
def test_blocks_are_shared_in_proportion_by_largest_remainders(weights, n, counts):
    assert shares(weights, n) == counts


def test_each_baseline_follows_its_rule():
    """7 blocks over a (1 GFLOP/s), b (3), c (2), listed a b c; memories 1 : 4 : 2."""
    world = pool(memories=(2**28, 2**30, 2**29))
    got = baselines(world)
    assert cuts(got["equal_layers"]) == [("a", 0, 3), ("b", 3, 5), ("c", 5, 7)]
    # peaks 1 : 3 : 2 of 7 -> 1.17, 3.5, 2.33 -> 1, 3, 2 and the largest remainder (b) +1
    assert cuts(got["flops_proportional"]) == [("a", 0, 1), ("b", 1, 5), ("c", 5, 7)]
    # exo's ring: by memory, largest first; 4 : 2 : 1 of 7 -> 4, 2, 1
    assert cuts(got["memory_proportional"]) == [("b", 0, 4), ("c", 4, 6), ("a", 6, 7)]
    # compute balanced in the listed order: stage times by speed
    ring = cuts(got["ring_listed"])
    assert [d for d, _, _ in ring] == ["a", "b", "c"] and ring[0][2] < ring[1][2] - ring[1][1]
    assert cuts(got["fastest_single"]) == [("b", 0, 7)]
    assert set(got) == set(BASELINES)
    for plan in got.values():
        check(plan, world)


def test_the_fastest_single_device_is_one_the_model_fits():
    """b is fastest but holds too little for the whole model: c, the next fastest, is taken."""
    world = pool(memories=(2**30, 10_000, 2**30))
    assert cuts(baselines(world)["fastest_single"]) == [("c", 0, 7)]


def test_the_planner_beats_or_equals_every_baseline_by_its_own_estimate():
    world = weak_over_slow_link()
    best = search(world, "throughput").best.estimate.capacity
    for name, plan in baselines(world).items():
        try:
            check(plan, world)
        except PlanError:
            continue
        assert estimate(plan, world).capacity <= best * (1 + 1e-12), name
    ring = estimate(baselines(world)["ring_listed"], world).capacity
    assert ring < best / 2  # the weak device over its slow link drags the listed ring down


def test_unknown_devices_are_refused():
    with pytest.raises(PlanError, match="devices"):
        baselines(pool(), ["a", "nope"])
