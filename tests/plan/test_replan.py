"""Re-planning after the pool changes: the new plan, and exactly the weights that must move."""
from dataclasses import replace

import pytest
from test_engine import device

from simdl.errors import PlanError
from simdl.hw.topologies import links
from simdl.nn.data import gaussian_mixture
from simdl.nn.models import mlp
from simdl.plan.costs import Costs
from simdl.plan.estimate import transfer_time
from simdl.plan.plan import Plan, Replica, Stage, shard_stage, shard_weights
from simdl.plan.replan import replan, slower, weights_to_move, without
from simdl.plan.space import Space
from simdl.plan.world import Arrival, Inference, World


def world(bandwidths=None, drop=()):
    """A source and three helpers of unequal speed, each on its own link to a switch;
    an mlp of 6 blocks whose weights fit anywhere."""
    speeds = {"src": 1e8, "b": 4e9, "c": 2e9, "d": 1e9}
    bandwidths = bandwidths or {d: 1e8 for d in speeds}
    devs = {d: device(peak=p, efficiency=1.0, mem_bw=1e10, memory=2**30)
            for d, p in speeds.items() if d not in drop}
    net = links(devs, [{"a": d, "b": "sw", "bandwidth": bandwidths[d], "latency": 1e-4}
                       for d in devs], overhead=0.0)
    chain = mlp(in_dim=64, hidden=256, depth=5, n_classes=4, seed=0)
    load = Inference(8, Arrival("closed", concurrency=1), 16, "src")
    return World("t", 0, {"main": chain}, devs, net, load,
                 gaussian_mixture(n=32, dim=64, n_classes=4))


def pipeline(*stages):
    return Plan("t", (Replica(tuple(Stage((d,), a, b) for d, a, b in stages)),), "src")


def test_nothing_changed_keeps_the_plan_and_moves_nothing():
    w = world()
    first = replan(pipeline(("src", 0, 6)), w)
    again = replan(first.plan, w)
    assert again.kept and again.moves == () and again.nbytes == 0 and again.plan == first.plan


def test_a_device_gone_is_replaced_and_only_missing_weights_move():
    """The plan ran blocks 1-5 on b; b leaves. The new plan avoids b; each device receives
    exactly the blocks it did not hold, from the source (b, their holder, is gone), which
    keeps the whole model and so receives nothing."""
    current = pipeline(("src", 0, 1), ("b", 1, 6))
    after = replan(current, world(drop=("b",)))
    assert not after.kept and "b" not in after.plan.devices
    held = {(s.device, b) for r in current.replicas for s in r.stages for b in range(s.start, s.stop)}
    weights = Costs(world()).weights()
    needed = {(s.device, b) for r in after.plan.replicas for s in r.stages
              for b in range(s.start, s.stop) if s.device != "src"} - held
    assert needed and sorted((m.dst, m.block) for m in after.moves) == sorted(needed)
    assert after.nbytes == pytest.approx(sum(weights[b] for _, b in needed), rel=1e-12)
    assert {m.src for m in after.moves} == {"src"}


def test_weights_come_from_the_closest_holder_still_in_the_pool():
    """Blocks 3-5 move from c (which held them) to d, not from the far source; blocks 0-2,
    which d did not hold and only the source has, come from the source."""
    w = world(bandwidths={"src": 1e6, "b": 1e8, "c": 1e8, "d": 1e8})
    moves = weights_to_move(pipeline(("src", 0, 3), ("c", 3, 6)),
                            pipeline(("d", 0, 6)), w)
    assert sorted((m.src, m.block) for m in moves) == [("c", 3), ("c", 4), ("c", 5),
                                                         ("src", 0), ("src", 1), ("src", 2)]
    assert all(m.dst == "d" for m in moves)


def test_a_slower_link_moves_work_off_it():
    """b's link drops to a trickle: the pipeline that ran through b moves elsewhere (as one
    pipeline: a replica of its own on b would still add a little capacity)."""
    one = Space(replicas=False)
    current = replan(pipeline(("src", 0, 6)), world(), space=one).plan
    assert "b" in current.devices
    slow = world(bandwidths={"src": 1e8, "b": 1e3, "c": 1e8, "d": 1e8})
    after = replan(current, slow, space=one)
    assert "b" not in after.plan.devices and after.nbytes > 0 and after.seconds > 0


def test_a_small_gain_keeps_the_running_plan():
    """c alone is a little slower than the best; with min_gain 0.9 it stays, with 0 it goes."""
    w = world()
    current = pipeline(("src", 0, 1), ("c", 1, 6))
    assert replan(current, w, min_gain=0.9).kept
    assert not replan(current, w, min_gain=0.0).kept
    with pytest.raises(PlanError, match="min_gain"):
        replan(current, w, min_gain=-1)


def test_the_changed_world_has_no_route_through_a_device_gone():
    """src and d reach each other only through b on this line; once b is gone, no route."""
    devs = {d: device(memory=2**30) for d in ("src", "b", "d")}
    net = links(devs, [{"a": "src", "b": "b", "bandwidth": 1e8}, {"a": "b", "b": "d", "bandwidth": 1e8}],
                overhead=0.0)
    w = replace(world(), devices=devs, network=net)
    assert w.network.route("src", "d").nodes == ("src", "b", "d")
    gone = without(w, ["b"])
    assert set(gone.devices) == {"src", "d"}
    with pytest.raises(PlanError, match="no route"):
        gone.network.route("src", "d")


def test_a_slower_link_divides_both_directions():
    w = slower(world(), "b", "sw", 4.0)
    assert w.network.capacity["b>sw"] == w.network.capacity["sw>b"] == 1e8 / 4
    assert w.network.capacity["c>sw"] == 1e8
    with pytest.raises(PlanError, match="link"):
        slower(world(), "b", "c", 2.0)


# -- from an operator-mutation sweep of plan/replan.py: pieces no test could tell apart ------

def test_of_two_holders_the_nearer_sends():
    """b and c each hold the whole model; c's link is ten times b's: every block d needs
    comes from c (not from b, which the name order would pick, nor the source)."""
    w = world(bandwidths={"src": 1e6, "b": 1e7, "c": 1e8, "d": 1e8})
    current = Plan("t", (Replica((Stage(("b",), 0, 6),)), Replica((Stage(("c",), 0, 6),))), "src")
    moves = weights_to_move(current, pipeline(("d", 0, 6)), w)
    assert [(m.src, m.dst, m.block) for m in moves] == [("c", "d", b) for b in range(6)]


def test_moves_are_listed_by_destination_then_piece():
    """The new plan names d before c; the moves still come c's first, each device's in
    block order: the same inputs, the same list."""
    moves = weights_to_move(pipeline(("src", 0, 6)), pipeline(("d", 0, 3), ("c", 3, 6)), world())
    assert [(m.dst, m.block) for m in moves] == [("c", 3), ("c", 4), ("c", 5),
                                                  ("d", 0), ("d", 1), ("d", 2)]


def test_switching_takes_as_long_as_the_slowest_pair_of_devices():
    """b is gone; the new plan (a replica on c and one on d) gets the model from the
    source, to c and d at once, c over a link half as fast: the switch takes the longer
    of the two pairs' transfer times, each pair's bytes summed."""
    w = world(bandwidths={"src": 1e8, "b": 1e8, "c": 5e7, "d": 1e8})
    current = pipeline(("src", 0, 1), ("b", 1, 6))
    after = replan(current, without(w, ["b"]))
    pairs = {}
    for m in after.moves:
        pairs[(m.src, m.dst)] = pairs.get((m.src, m.dst), 0.0) + m.nbytes
    assert len(pairs) >= 2
    times = [transfer_time(without(w, ["b"]), a, b, nb) for (a, b), nb in pairs.items()]
    assert after.seconds == max(times) and max(times) > min(times)
    assert after.nbytes == sum(m.nbytes for m in after.moves)


def test_a_tensor_parallel_stage_takes_its_shards_from_a_whole_block_holder():
    """c held blocks 0-5 whole; the new stage splits them over c and d: c keeps what it
    has (its shards are in its whole blocks), and d's shards come from c, each the
    bytes the shard program gives d, all less than the whole block."""
    w = world()
    new = Plan("t", (Replica((Stage(("c", "d"), 0, 6),)),), "src")
    moves = weights_to_move(pipeline(("c", 0, 6)), new, w)
    chain = w.models["main"]
    whole = Costs(w).weights("fp32", 0.0, "unstructured", "main")
    assert [(m.src, m.dst, m.block) for m in moves] == [("c", "d", b) for b in range(6)]
    for m in moves:
        part = shard_weights(shard_stage(chain, Stage(("c", "d"), m.block, m.block + 1)), 2)
        assert m.nbytes == part[1] and 0 < m.nbytes < whole[m.block]


def test_a_slowdown_of_one_changes_nothing_and_a_link_back_of_its_own_slows_too():
    w = world()
    assert slower(w, "b", "sw", 1.0).network.capacity == w.network.capacity
    devs = w.devices
    net = links(devs, [{"a": d, "b": "sw", "bandwidth": 1e8, "latency": 1e-4,
                        "bandwidth_back": 2e7} for d in devs], overhead=0.0)
    slow = slower(replace(w, network=net), "b", "sw", 4.0)
    assert (slow.network.capacity["b>sw"], slow.network.capacity["sw>b"]) == (1e8 / 4, 2e7 / 4)
