"""The planner prices a star stage (`Stage.collective`) as the simulator runs it, and
a star plan survives being written out (`strategies.entry`) and read back.

A star all-reduce sends every member's S to devices[0] at once (the flows share links
at max-min rates), then, once all have arrived, S back to each; an all-gather sends
S/n up and the (n-1)/n S each lacks down (`sim.collectives.star_all_*`).
"""
import numpy as np
import pytest
from test_engine import device
from test_estimator import RTOL, assert_same, mesh_world

from simdl import api
from simdl.errors import ScenarioError
from simdl.hw.topologies import links
from simdl.plan.costs import Costs
from simdl.plan.estimate import estimate
from simdl.plan.plan import check
from simdl.plan.strategies import entry, tensor_parallel
from simdl.plan.timeline import Lone, star
from simdl.plan.world import Arrival, Inference, World
from simdl.planner import simulate
from simdl.scenario import StrategyEntry
from simdl.sim import collectives as C
from simdl.sim.engine import Simulator


@pytest.mark.parametrize("k", [2, 3, 4])
def test_an_uncontended_star_group_is_the_simulators_timeline(k):
    """Random chains split (auto, column or row) over k devices of a random mesh, one
    request at a time: latencies, energy, peak memory and bytes per link agree to 1e-9.
    The same plan as a ring takes another time, so pricing a star as a ring fails."""
    rng = np.random.default_rng(k)
    for trial in range(6):
        world = mesh_world(rng, int(rng.integers(2, 6)), k, int(rng.integers(1, 5)))
        split = ("auto", "column", "row")[trial % 3]
        plan = tensor_parallel(world, list(world.devices), split=split, collective="star")
        check(plan, world)
        est, sim = estimate(plan, world), simulate(plan, world)
        assert_same(est, sim)
        ring = estimate(tensor_parallel(world, list(world.devices), split=split), world)
        assert ring.p50 != pytest.approx(sim.p50, rel=RTOL)


def switch_world(n, bandwidth=1e7, latency=1e-4, overhead=2e-5):
    """n devices on one switch, every link `bandwidth` each way: the root's link is the
    one every star flow crosses."""
    devs = {f"d{i}": device() for i in range(n)}
    net = links(devs, [{"a": d, "b": "sw", "bandwidth": bandwidth, "latency": latency}
                       for d in devs], overhead=overhead)
    return World("t", 0, {}, devs, net, Inference(1, Arrival("closed"), 1, "d0"), None)


@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("gather", [False, True])
def test_star_flows_share_the_roots_link_as_the_simulator_shares_it(n, gather):
    """On a switch the n - 1 flows to (then from) the root share its link: each phase is
    2 latency + overhead + (n - 1) x the bytes / B, exactly the simulated collective."""
    S, B, L, o = 3e5, 1e7, 1e-4, 2e-5
    world = switch_world(n, B, L, o)
    members = tuple(world.devices)
    out = Lone()
    t = star(out, members, S, gather, Costs(world))
    up, down = (S / n, S * (n - 1) / n) if gather else (S, S)
    assert t == pytest.approx(2 * (2 * L + o) + (n - 1) * (up + down) / B, rel=1e-12)
    sim = Simulator(world.devices, world.network)
    run = (C.all_gather if gather else C.all_reduce)(sim, list(members), S, "star")
    at = []
    run.callbacks.append(lambda _: at.append(sim.now))
    sim.run()
    assert t == pytest.approx(at[0], rel=1e-12)
    assert out.nbytes["sw>d0"] == pytest.approx((n - 1) * up, rel=1e-12)
    assert out.nbytes["d0>sw"] == pytest.approx((n - 1) * down, rel=1e-12)
    assert {out.nbytes[f"d{i}>sw"] for i in range(1, n)} == {up}


def test_a_star_plan_round_trips_through_its_entry():
    """`entry` writes the collective (explicit), and reading it back makes the same plan;
    a ring plan's entry does not name one."""
    world = mesh_world(np.random.default_rng(0), 3, 3, 2)
    plan = tensor_parallel(world, ["d1", "d0", "d2"], collective="star")
    written = entry(plan)
    assert written["name"] == "explicit"
    assert written["replicas"][0]["stages"][0]["collective"] == "star"
    again = api.plan(world, StrategyEntry(**written), 0)
    assert again.replicas == plan.replicas and again.replicas[0].stages[0].collective == "star"
    ring = entry(tensor_parallel(world, ["d1", "d0", "d2"]))
    assert "collective" not in ring["replicas"][0]["stages"][0]


def test_a_bad_collective_in_an_explicit_stage_names_its_field():
    world = mesh_world(np.random.default_rng(0), 3, 2, 2)
    written = entry(tensor_parallel(world, ["d0", "d1"], collective="star"))
    written["replicas"][0]["stages"][0]["collective"] = "tree"
    with pytest.raises(ScenarioError, match=r"stages\[0\]\.collective: 'tree'.*'ring' or 'star'"):
        api.plan(world, StrategyEntry(**written), 0)


def test_describe_names_a_star_and_its_root_not_a_ring():
    world = mesh_world(np.random.default_rng(0), 3, 3, 2)
    star_plan = tensor_parallel(world, ["d1", "d0", "d2"], collective="star")
    assert star_plan.describe() == "tensor_parallel: blocks 0-2 on d1+d0+d2 (star via d1)"
    assert tensor_parallel(world, ["d1", "d0", "d2"]).describe() == (
        "tensor_parallel: blocks 0-2 on d1+d0+d2")
