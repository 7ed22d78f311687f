"""The analytic estimator against brute force and against the simulator where nothing
queues or shares, and the `auto` choices built on it (balanced cuts, the offload cut)."""
import itertools
from dataclasses import replace

import numpy as np
import pytest

from test_engine import device
from test_policies import fixed, requests, serve, small_world, three_speeds

from simdl.hw.devices import UnitSpec
from simdl.hw.topologies import links
from simdl.nn.chain import Block, Chain
from simdl.nn.data import gaussian_mixture
from simdl.nn.layers import Linear, Sequential
from simdl.nn.models import MODELS
from simdl.plan.auto import alone
from simdl.plan.costs import Costs
from simdl.plan.estimate import (balanced_cuts, block_times, capacity, estimate,
                                 group_block_times, transfer_time)
from simdl.plan.strategies import (data_parallel, hybrid, offload, pipeline, single,
                                   tensor_parallel)
from simdl.plan.world import Arrival, Inference, World
from simdl.sim.engine import Simulator
from simdl.world import data_for


def bottleneck(times, cuts):
    """The slowest stage when row d of `times` runs blocks [bounds[d], bounds[d+1])."""
    bounds = [0, *cuts, len(times[0])]
    return max(sum(row[a:b]) for row, a, b in zip(times, bounds, bounds[1:]))


def brute_force(times):
    """The best bottleneck over every way to give each row at least one block, in order."""
    k, n = len(times), len(times[0])
    return min(bottleneck(times, cuts) for cuts in itertools.combinations(range(1, n), k - 1))


def even(n, k):
    return [n * i // k for i in range(1, k)]


# -- balanced cuts ---------------------------------------------------------------------------

def test_balanced_cuts_reach_the_brute_force_optimum_on_random_integer_times():
    """Integer times add exactly, so the optimum compares with ==."""
    rng = np.random.default_rng(2024)
    for _ in range(400):
        k = int(rng.integers(2, 5))
        n = int(rng.integers(k, 9))
        times = rng.integers(1, 60, size=(k, n)).astype(float).tolist()
        cuts = balanced_cuts(times)
        assert len(cuts) == k - 1 and 0 < cuts[0] and cuts[-1] < n
        assert all(a < b for a, b in zip(cuts, cuts[1:]))
        assert bottleneck(times, cuts) == brute_force(times), (times, cuts)


@pytest.mark.parametrize("times, cuts", [
    ([[1.0, 1.0, 1.0, 1.0], [3.0, 3.0, 3.0, 3.0]], [3]),      # the fast device takes three
    ([[3.0, 3.0, 3.0, 3.0], [1.0, 1.0, 1.0, 1.0]], [1]),      # ... wherever it stands
    ([[5.0, 1.0, 1.0], [5.0, 1.0, 1.0], [5.0, 1.0, 1.0]], [1, 2]),  # one block each
    ([[1.0, 1.0, 1.0, 8.0], [1.0, 1.0, 1.0, 8.0]], [3]),      # the heavy last block alone
    ([[9.0, 1.0, 1.0, 1.0, 1.0], [9.0, 1.0, 1.0, 1.0, 1.0]], [1]),
])
def test_balanced_cuts_by_hand(times, cuts):
    assert balanced_cuts(times) == cuts


def linear_chain(widths, seed=0):
    rng = np.random.default_rng(seed)
    blocks = [Block(f"b{i}", Sequential([Linear(a, b, rng)]))
              for i, (a, b) in enumerate(zip(widths, widths[1:]))]
    return Chain(blocks, (widths[0],), np.float32, widths[-1], "linear")


def dyadic(rng):
    """A device whose kernel times are exact binary fractions: power-of-two peak (efficiency
    1) and memory bandwidth, an overhead of a whole number of 2^-20 s; sums of a few such
    times are exact, so the optimum compares with ==."""
    return device(peak=2.0 ** int(rng.integers(18, 31)), efficiency=1.0,
                  mem_bw=2.0 ** int(rng.integers(22, 33)),
                  overhead=int(rng.integers(0, 1024)) * 2.0 ** -20, memory=2**30)


def random_world(rng, n_blocks, n_devices, batch):
    widths = [int(w) for w in rng.integers(1, 65, size=n_blocks + 1)]
    devs = {f"d{i}": dyadic(rng) for i in range(n_devices)}
    net = links(devs, [{"a": d, "b": "sw", "bandwidth": 1e9} for d in devs], overhead=0.0)
    load = Inference(1, Arrival("trace", times=(0.0,)), batch, "d0")
    data = gaussian_mixture(n=8, dim=widths[0], n_classes=2, seed=0)
    return World("t", 0, {"main": linear_chain(widths)}, devs, net, load, data)


def best_capacity(world, make, stages):
    """The most requests/s the estimator gives any cuts of the chain over `stages` stages."""
    n = len(world.chain)
    return max(estimate(make(list(cuts)), world).capacity
               for cuts in itertools.combinations(range(1, n), stages - 1))


def test_pipeline_auto_cuts_reach_the_brute_force_optimum_on_random_chains_and_pools():
    """Up to 8 blocks of random widths on 2-4 devices of random speeds, per micro-batch
    size: `cuts: auto` serves as many requests/s as the best of every cut, links included."""
    rng = np.random.default_rng(7)
    for _ in range(60):
        k = int(rng.integers(2, 5))
        n = int(rng.integers(k, 9))
        batch = int(rng.integers(1, 9))
        m = int(rng.integers(1, batch + 1))
        world = random_world(rng, n, k, batch)
        names = list(world.devices)
        plan = pipeline(world, names, microbatches=m)
        assert [s.devices for s in plan.replicas[0].stages] == [(d,) for d in names]
        best = best_capacity(world, lambda c: pipeline(world, names, c, m), k)
        assert estimate(plan, world).capacity == pytest.approx(best, rel=1e-12)


def test_pipeline_auto_cuts_weigh_the_link_not_only_the_kernels():
    """Two equal devices on a slow link and a chain whose third activation is narrow: the
    kernels alone balance at cut 2 (4 ms of 64x64 blocks on a, 2.2 ms on b), but 1 KB
    would cross the link there (10 ms a request); the planner cuts at 3, where 32 B do."""
    same = device(peak=2.0 ** 24, efficiency=1.0, mem_bw=2.0 ** 30, overhead=0.0, memory=2**30)
    devs = {"a": same, "b": same}
    net = links(devs, [{"a": "a", "b": "b", "bandwidth": 1e5}], overhead=0.0)
    widths = [64, 64, 64, 2, 64, 64, 2]  # block 2 outputs two values per sample
    load = Inference(1, Arrival("trace", times=(0.0,)), 4, "a")
    data = gaussian_mixture(n=8, dim=widths[0], n_classes=2, seed=0)
    world = World("t", 0, {"main": linear_chain(widths)}, devs, net, load, data)
    times = [block_times(world, d, 4) for d in devs]
    assert balanced_cuts(times) == [2]  # the kernels alone
    assert pipeline(world, ["a", "b"]).params["cuts"] == [3]


def test_hybrid_auto_cuts_reach_the_brute_force_optimum_with_tensor_parallel_groups():
    """Each stage a single device or a pair: `cuts: auto` is as good as the best cuts."""
    rng = np.random.default_rng(11)
    for _ in range(30):
        sizes = [int(s) for s in rng.integers(1, 3, size=int(rng.integers(2, 4)))]
        n = int(rng.integers(len(sizes), 8))
        world = random_world(rng, n, sum(sizes), 4)
        names = iter(world.devices)
        groups = [[next(names) for _ in range(s)] for s in sizes]
        for order in (groups, groups[::-1]):
            plan = hybrid(world, [order])
            best = best_capacity(world, lambda c: hybrid(world, [order], c), len(order))
            assert estimate(plan, world).capacity == pytest.approx(best, rel=1e-12)


def test_hybrid_shares_requests_by_each_replicas_throughput():
    """A replica streams at one request per slowest stage: a|b with 2 + 2 ms of kernels
    (2 ms), c|d with 8 + 2 ms (8 ms); shares 1/2 : 1/8, i.e. 0.8 and 0.2 (not by the
    4 and 10 ms latencies)."""
    devs = {"a": fixed(1e-3), "b": fixed(1e-3), "c": fixed(4e-3), "d": fixed(1e-3)}
    net = links(devs, [{"a": d, "b": "sw", "bandwidth": 1e9} for d in devs], overhead=0.0)
    world = small_world(devs, net, batch=2, source="a")
    plan = hybrid(world, [[["a"], ["b"]], [["c"], ["d"]]], cuts=[2])
    assert [r.share for r in plan.replicas] == pytest.approx([0.8, 0.2], rel=1e-12)


def test_an_even_split_is_strictly_worse_where_devices_differ():
    """Four equal blocks, d0 three times as fast as d1: auto gives d0 three blocks
    (bottleneck 3 t) where an even split leaves d1 two (6 t)."""
    devs = {"d0": fixed(2**-10), "d1": fixed(3 * 2**-10)}
    net = links(devs, [{"a": "d0", "b": "d1", "bandwidth": 1e9}], overhead=0.0)
    world = small_world(devs, net, batch=2, source="d0")
    times = [block_times(world, d, 2) for d in devs]
    plan = pipeline(world, ["d0", "d1"])
    assert plan.params["cuts"] == [3]
    assert bottleneck(times, [3]) == 3 * 2**-10 < bottleneck(times, even(4, 2)) == 6 * 2**-10


# -- the estimator against the simulator ------------------------------------------------------

def test_block_times_are_the_kernels_of_a_lone_request_on_one_device():
    """A compute- and memory-bound mix on a loaded device, on its default and its other
    unit: each kernel lasts its block's estimate, the request their sum."""
    fast = UnitSpec(kind="gpu", peak={"fp32": 3e8}, efficiency=0.7, overhead=3e-5,
                    active_power=1.0)
    spec = device(peak=1e8, efficiency=0.5, overhead=1e-4, mem_bw=2e8, background=0.25,
                  memory=2**30)
    spec = replace(spec, units={"cpu": spec.units["cpu"], "gpu": fast})
    devs = {"dev": spec}
    net = links(devs, [{"a": "dev", "b": "sw", "bandwidth": 1e9}], overhead=0.0)
    chain = MODELS["mlp"](in_dim=40, hidden=96, depth=3, n_classes=5, seed=0)
    load = Inference(1, Arrival("trace", times=(0.0,)), 6, "dev")
    world = World("t", 0, {"main": chain}, devs, net, load, data_for(chain, 0)[1])
    for unit in (None, "cpu"):
        plan = single(world, "dev", unit=unit)
        _, log = serve(plan, world)
        kernels = log[log.kind == "compute"]
        assert set(kernels.resource) == {unit or "gpu"}
        expected = block_times(world, "dev", 6, unit)
        assert (kernels.t_end - kernels.t_start).tolist() == pytest.approx(expected, rel=1e-12)
        (t0, t1), = requests(log)[["t_start", "t_end"]].values
        assert t1 - t0 == pytest.approx(sum(expected), rel=1e-12)


def wifi_pair():
    """a - ap - b, both hops on one airtime "air" (crossed twice by a -> b); the ap-b link
    is asymmetric."""
    devs = {"a": device(), "b": device()}
    net = links(devs, [
        {"a": "a", "b": "ap", "bandwidth": 2e6, "latency": 1e-3, "medium": "air"},
        {"a": "ap", "b": "b", "bandwidth": 4e6, "bandwidth_back": 1e6, "latency": 2e-3,
         "medium": "air"}], media={"air": 3e6}, nodes={"ap": "ap"}, overhead=1e-4)
    return devs, net


def lone_transfer(devs, net, src, dst, nbytes):
    sim = Simulator(devs, net)
    flow = sim.transfer(src, dst, nbytes)
    sim.run(until=flow)
    return flow.value.t_end - flow.value.t_request


@pytest.mark.parametrize("src, dst, nbytes, rate", [
    ("a", "b", 3e5, 1.5e6),   # min(2e6, air 3e6 / 2, 4e6)
    ("b", "a", 3e5, 1e6),     # min(back 1e6, air / 2, 2e6)
    ("a", "b", 0.0, 1.0),     # latency and overhead only
])
def test_transfer_time_is_latency_overhead_then_the_bottleneck_rate(src, dst, nbytes, rate):
    devs, net = wifi_pair()
    world = World("t", 0, {}, devs, net, None, None)
    expected = 3e-3 + 1e-4 + nbytes / rate
    assert transfer_time(world, src, dst, nbytes) == pytest.approx(expected, rel=1e-12)
    assert lone_transfer(devs, net, src, dst, nbytes) == pytest.approx(expected, rel=1e-12)
    assert transfer_time(world, src, src, nbytes) == 0.0


SMALL = {"mlp": dict(in_dim=12, hidden=16, depth=2, n_classes=4),
         "tiny_transformer": dict(vocab=8, d_model=24, n_heads=6, n_layers=2, seq_len=4),
         "mobilenet_small": dict(in_ch=2, size=8, width=4, n_classes=3)}


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("speeds", [(1.0, 1.0), (1.0, 3.0), (2.0, 1.0, 5.0), (1, 2, 3, 4)])
def test_group_block_times_are_the_busiest_members_simulated_kernels_a_lower_bound(name, speeds):
    """Per block, the group's estimate is the most any member's shard kernels take in a
    lone request (splits need not be even: mobilenet's 4 stem channels go 2 | 1 | 1 over
    three members, so the slowest member may do least); the request, with its collectives
    and hand-overs, takes longer than the blocks' sum."""
    devs = {f"d{i}": device(peak=1e9 * s, overhead=1e-5, mem_bw=1e9, memory=2**30)
            for i, s in enumerate(speeds)}
    net = links(devs, [{"a": d, "b": "sw", "bandwidth": 1e8, "latency": 1e-4} for d in devs],
                overhead=0.0)
    chain = MODELS[name](**SMALL[name], seed=0)
    load = Inference(1, Arrival("trace", times=(0.0,)), 4, "d0")
    world = World("t", 0, {"main": chain}, devs, net, load, data_for(chain, 0)[1])
    plan = tensor_parallel(world, list(devs))
    _, log = serve(plan, world)
    kernels = log[log.kind == "compute"].assign(
        block=lambda f: f.label.str.split(" ").str[0], seconds=lambda f: f.t_end - f.t_start)
    busiest = kernels.groupby(["block", "device"]).seconds.sum().groupby("block").max()
    estimate = group_block_times(world, tuple(devs), 4)
    assert estimate == pytest.approx([busiest[b] for b in chain.names], rel=1e-12)
    (t0, t1), = requests(log)[["t_start", "t_end"]].values
    assert t1 - t0 > sum(estimate)


def test_a_group_of_one_is_its_device():
    world = offload_world(1e6)
    assert group_block_times(world, ("phone",), 4) == block_times(world, "phone", 4)


# -- offload ---------------------------------------------------------------------------------

def offload_world(bandwidth, stays=None):
    """A slow phone (4 ms per kernel) and a fast server (0.1 ms) on one link. A wide input
    (1024 features) shrinks to 8 after the first block, so shipping raw input costs
    16 KB per request and shipping an activation 128 B."""
    devs = {"phone": fixed(4e-3), "server": fixed(1e-4)}
    net = links(devs, [{"a": "phone", "b": "server", "bandwidth": bandwidth, "latency": 1e-3}],
                overhead=1e-4)
    chain = MODELS["mlp"](in_dim=1024, hidden=8, depth=3, n_classes=3, seed=0)
    load = Inference(1, Arrival("trace", times=(0.0,)), 4, "phone")
    data = gaussian_mixture(n=8, dim=1024, n_classes=3, seed=0)
    return World("t", 0, {"main": chain}, devs, net, load, data, input_stays_on=stays)


def simulated_latency(world, cut):
    _, log = serve(offload(world, "server", cut=cut), world)
    (t0, t1), = requests(log)[["t_start", "t_end"]].values
    return t1 - t0


@pytest.mark.parametrize("bandwidth, stays, best", [
    (1e6, None, 1),       # 16 ms for the raw input, 4 ms to shrink it first: cut 1
    (1e9, None, 0),       # a fast link: ship the raw input
    (1e9, "phone", 1),    # ... unless it must stay on the phone
    (1e4, None, 4),       # a very slow link: all local
])
def test_offload_auto_takes_the_cut_with_the_least_simulated_latency(bandwidth, stays, best):
    world = offload_world(bandwidth, stays)
    n = len(world.chain)
    first = 0 if stays is None else 1
    simulated = {c: simulated_latency(world, c) for c in range(first, n + 1)}
    for c, latency in simulated.items():
        assert alone(offload(world, "server", c), Costs(world)) == pytest.approx(
            latency, rel=1e-12), c
    ranked = sorted(simulated, key=simulated.get)
    assert ranked[0] == best and simulated[ranked[0]] < simulated[ranked[1]]
    assert offload(world, "server").params["cut"] == best


def test_offload_latency_hand_computed_for_the_interior_cut():
    """Cut 1 on a 1 MB/s link: one 4 ms kernel, 128 B out (1.1 ms + 0.128 ms), three
    0.1 ms kernels, 48 B back (1.1 ms + 0.048 ms)."""
    world = offload_world(1e6)
    expected = 4e-3 + (1.1e-3 + 128 / 1e6) + 3e-4 + (1.1e-3 + 48 / 1e6)
    assert alone(offload(world, "server", 1), Costs(world)) == pytest.approx(expected, rel=1e-12)
    assert simulated_latency(world, 1) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("dispatch, rps, where", [
    ("round_robin", 3 * 64, "c/cpu"), ("weighted", 448, "a/cpu"),
    ("least_loaded", 256 + 128 + 64, "a/cpu"), ("split", 64, "c/cpu"),
])
def test_capacity_combines_the_replicas_as_the_dispatch_sends_them_work(dispatch, rps, where):
    """Replicas a, b, c run 4 one-kernel blocks of 2^-10, 2^-9, 2^-8 s: 256, 128 and 64
    requests/s alone (transfers are ~1e-8 s). Round robin gives each a third: 3 x 64;
    weighted gives each its share 4/7, 2/7, 1/7: 256 x 7/4 = 448 from every replica;
    least loaded keeps all busy: the sum; split sends every request to all three (each
    kernel's time does not depend on its part of the batch): the slowest, 64. Where all
    are equally busy the bottleneck named is the first by name."""
    devs, net = three_speeds()
    world = small_world(devs, net, batch=7)
    plan = data_parallel(world, ["a", "b", "c"], dispatch=dispatch)
    scored = estimate(plan, world)
    assert scored.capacity == pytest.approx(rps, rel=1e-6) and scored.bottleneck == where
    assert capacity(plan, world) == (scored.capacity, where)  # without the run's replay
