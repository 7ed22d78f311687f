"""Inference policies against hand derivations: which replica each dispatch policy picks,
how `split` shares a batch, the pipelined makespan of micro-batches, and the radio's
share of energy and of a battery's life."""
from dataclasses import replace

import numpy as np
import pytest

from simdl.errors import DeviceGone
from simdl.hw.topologies import links
from simdl.nn.data import gaussian_mixture
from simdl.nn.models import mlp
from simdl.plan.plan import Plan, Replica, Stage, check, replica_batches
from simdl.plan.strategies import data_parallel, pipeline, single
from simdl.plan.world import Arrival, Inference, RequestClass, World
from simdl.sim.engine import Simulator
from simdl.sim.inference import execute, fuse
from simdl.sim.stages import prepare
from test_engine import device


def fixed(overhead, **kw):
    """A device on which every kernel of these tiny models takes exactly `overhead` s:
    the roofline terms (< 1e-24 s at 1e30 op/s and B/s) vanish below its last bit."""
    return device(peak=1e30, efficiency=1.0, overhead=overhead, mem_bw=1e30, memory=2**30, **kw)


def small_world(devices, network, *, batch, times=(0.0,), depth=3, width=4, source="src"):
    """An mlp of depth + 1 blocks; requests arrive at `times`."""
    chain = mlp(in_dim=width, hidden=width, depth=depth, n_classes=3, seed=0)
    data = gaussian_mixture(n=64, dim=width, n_classes=3, seed=0)
    load = Inference(len(times), Arrival("trace", times=tuple(times)), batch, source)
    return World("t", 0, {"main": chain}, devices, network, load, data)


def serve(plan, world, timing_only=True):
    check(plan, world)
    sim = Simulator(world.devices, world.network, timing_only=timing_only)
    execute(plan, world, sim, prepare(plan, world))
    return sim, sim.log.frame()


def requests(log):
    return log[log.kind == "request"].sort_values("request")


# -- dispatch --------------------------------------------------------------------------------

def three_speeds():
    """A source and three replicas whose kernels take 1, 2 and 4 units of 2^-10 s: speeds
    4 : 2 : 1, so shares 4/7, 2/7, 1/7 (power-of-two ratios: ties below are exact in floats)."""
    devs = {"src": fixed(1e-3), "a": fixed(2**-10), "b": fixed(2**-9), "c": fixed(2**-8)}
    net = links(devs, [{"a": "src", "b": d, "bandwidth": 1e9, "latency": 0.0} for d in "abc"],
                overhead=0.0)
    return devs, net


#: Eight requests at t=0 (all dispatched before any ends), three more at t=10 (all done by then).
#: round_robin: 0 1 2 0 1 2 0 1 | 2 0 1.
#: weighted (smooth WRR, credits in sevenths, +4 +2 +1 per pick, the largest pays 7):
#:   (4,2,1)->a (-3,2,1); (1,4,2)->b (1,-3,2); (5,-1,3)->a (-2,-1,3); (2,1,4)->c (2,1,-3);
#:   (6,3,-2)->a (-1,3,-2); (3,5,-1)->b (3,-2,-1); (7,0,0)->a (0,0,0); and over: a | b a c.
#: least_loaded: key (busy+1)/share, i.e. b0+1 : 2(b1+1) : 4(b2+1); ties to the faster:
#:   (1,2,4)->a; (2,2,4)->a; (3,2,4)->b; (3,4,4)->a; (4,4,4)->a; (5,4,4)->b; (5,6,4)->c;
#:   (5,6,8)->a; at t=10 nothing is in flight again: a a b.
SEQUENCES = {
    "round_robin": "abcabcab" + "cab",
    "weighted": "abacaba" + "abac",
    "least_loaded": "aabaabca" + "aab",
}


@pytest.mark.parametrize("dispatch", sorted(SEQUENCES))
def test_each_dispatch_policy_sends_each_request_to_the_replica_derived_by_hand(dispatch):
    devs, net = three_speeds()
    world = small_world(devs, net, batch=2, times=(0.0,) * 8 + (10.0,) * 3)
    plan = data_parallel(world, ["a", "b", "c"], dispatch=dispatch)
    assert [r.share for r in plan.replicas] == pytest.approx([4 / 7, 2 / 7, 1 / 7], rel=1e-12)
    _, log = serve(plan, world)
    assert "".join(requests(log).label) == SEQUENCES[dispatch]


@pytest.mark.parametrize("dispatch", ["round_robin", "least_loaded", "weighted"])
def test_on_equal_replicas_every_policy_takes_them_in_turn_from_the_first(dispatch):
    """Equal shares tie every key exactly: ties go to the first replica, so each policy
    is plain round robin (least_loaded: all in flight at once)."""
    devs = {"src": fixed(1e-3), "a": fixed(2**-9), "b": fixed(2**-9), "c": fixed(2**-9)}
    net = links(devs, [{"a": "src", "b": d, "bandwidth": 1e9, "latency": 0.0} for d in "abc"],
                overhead=0.0)
    world = small_world(devs, net, batch=2, times=(0.0,) * 7)
    _, log = serve(data_parallel(world, ["a", "b", "c"], dispatch=dispatch), world)
    assert "".join(requests(log).label) == "abcabca"


def test_the_three_sequences_differ_from_each_other_and_from_always_the_first():
    assert len({*SEQUENCES.values(), "a" * 11}) == 4


def test_split_shares_a_batch_by_largest_remainders_in_the_run():
    """Batch 10 at 4/7, 2/7, 1/7: exact 5.71, 2.86, 1.43; floors 5, 2, 1 leave two samples,
    which go to the largest remainders (.86 then .71): 6, 3, 1. Each replica's input
    transfer carries its samples (4 float32 each)."""
    devs, net = three_speeds()
    world = small_world(devs, net, batch=10, times=(0.0, 1.0))
    plan = data_parallel(world, ["a", "b", "c"], dispatch="split")
    assert replica_batches(plan, 10) == [6, 3, 1]
    _, log = serve(plan, world)
    inputs = log[(log.kind == "transfer") & log.label.str.startswith("input")]
    for r in (0, 1):
        sent = inputs[inputs.request == r].groupby("resource").nbytes.sum().to_dict()
        assert sent == {"a": 6 * 16, "b": 3 * 16, "c": 1 * 16}
    assert list(requests(log).label) == ["a | b | c"] * 2


def shares(*values):
    return Plan("t", tuple(Replica((Stage(("d",), 0, 1),), share=s) for s in values), "d",
                dispatch="split")


@pytest.mark.parametrize("batch, plan, sizes", [
    (10, shares(0.5, 0.3, 0.2), [5, 3, 2]),          # exact: no remainder
    (7, shares(0.5, 0.3, 0.2), [4, 2, 1]),           # 3.5 2.1 1.4 -> one left, to .5
    (7, shares(0.2, 0.3, 0.5), [1, 2, 4]),           # the same, the other way round
    (4, shares(1 / 3, 1 / 3, 1 / 3), [2, 1, 1]),     # equal remainders: the first replica
    (5, shares(0.1, 0.1, 0.8), [1, 0, 4]),           # .5 .5 4: a tie, to the first
    (6, shares(0.05, 0.05, 0.9), [0, 0, 6]),         # .3 .3 5.4: the one left to .4
    (1, shares(0.3, 0.7), [0, 1]),                   # a lone sample to the larger share
    (3, shares(0.1, 0.1, 0.1, 0.7), [1, 0, 0, 2]),   # .3 .3 .3 2.1: to the first .3
    (3, shares(0.5, 0.5), [2, 1]),                   # 1.5 1.5: floors, not rounding
    (10, shares(0.46, 0.27, 0.27), [4, 3, 3]),       # 4.6 2.7 2.7: the two .7s, not the .6
])
def test_split_gives_floors_then_one_more_to_each_largest_remainder(batch, plan, sizes):
    assert replica_batches(plan, batch) == sizes


@pytest.mark.parametrize("how, scores", [
    ("mean", [1.15 / 3, 1.85 / 3]),                                   # average probability
    ("vote", [1.0, 2.0]),                                             # .6 for 0; .9, .55 for 1
    ("confidence", [(0.36 + 0.09 + 0.2475) / 2.05, (0.24 + 0.81 + 0.3025) / 2.05]),
])
def test_fusion_modes_by_hand(how, scores):
    """Members whose softmax is (.6 .4), (.1 .9), (.45 .55); confidence weights each by
    its top probability (.6, .9, .55; they add to 2.05). Each sample is fused on its own
    (a second sample, the classes swapped, gets the scores swapped), and so is each
    position of a sequence (N, T, C)."""
    logits = [np.log(np.array([[p, 1 - p], [1 - p, p]])) for p in (0.6, 0.1, 0.45)]
    fused = fuse(how, logits)
    np.testing.assert_allclose(fused, [scores, scores[::-1]], rtol=1e-12)
    sequences = [z[None] for z in logits]  # (1, 2, 2): one sequence of two positions
    np.testing.assert_allclose(fuse(how, sequences)[0], fused, rtol=1e-12)


def test_progress_hears_once_per_request_as_it_ends():
    devs, net = three_speeds()
    world = small_world(devs, net, batch=2, times=(0.0, 0.0, 1.0), source="src")
    plan = data_parallel(world, ["a", "b", "c"], dispatch="round_robin")
    sim, calls = Simulator(world.devices, world.network, timing_only=True), []
    execute(plan, world, sim, prepare(plan, world), calls.append)
    assert calls == [1, 1, 1]


def test_request_classes_are_drawn_by_their_shares():
    """500 requests in classes of shares .8 and .2: the rarer class gets 100 on average
    (binomial sd 8.9); the seeded draw lands within 3.4 sd, and both classes appear
    in the log under their names, with their own priorities."""
    devs, net = three_speeds()
    world = small_world(devs, net, batch=1, times=(0.0,) * 500, source="src")
    load = replace(world.workload, classes=(RequestClass("bulk", 0.8, 1),
                                            RequestClass("urgent", 0.2, 0)))
    world = replace(world, workload=load)
    _, log = serve(single(world, "a"), world)
    counts = requests(log).resource.value_counts().to_dict()
    assert set(counts) == {"bulk", "urgent"} and sum(counts.values()) == 500
    assert 70 <= counts["urgent"] <= 130


# -- pipelined micro-batches -------------------------------------------------------------------

L, O, BW = 1e-3, 2e-4, 1e5  # each link: latency s, the network's per-message overhead s, B/s


ONE = (1, 1, 1, 1)  # one block per stage


@pytest.mark.parametrize("blocks, kernels, m", [
    (ONE[:2], (1e-3, 3e-3), 1), (ONE[:2], (1e-3, 3e-3), 3), (ONE[:2], (2e-3, 1e-3), 4),
    (ONE[:3], (1e-3, 3e-3, 2e-3), 4), (ONE, (1e-3, 2e-3, 2.5e-3, 1.5e-3), 5),
    ((2, 1), (1e-3, 3e-3), 3), ((1, 3), (2e-3, 1e-3), 4), ((2, 2, 1), (1e-3, 1e-3, 3e-3), 4),
])
def test_inference_pipeline_makespan_is_fill_plus_m_minus_1_bottlenecks(blocks, kernels, m):
    """p stages d0..d(p-1) (source d0), stage s of b_s blocks of t_s each, each hop and
    the way back on its own link: a tandem line of single servers (a stage serves a
    micro-batch in b_s t_s; a transfer's bandwidth phase) and delays (latency +
    overhead); the way back is a hop of its own (its own link when p > 2; the reverse
    direction of the one link when p = 2). With m equal micro-batches all ready at t=0
    and every server no slower than the spacing it is fed at, the last answer arrives
    at fill + (m - 1) x bottleneck, where fill is one micro-batch's whole path. Running
    micro-batches one after another fails it; so does a stage that lets a later
    micro-batch's first block cut in before an earlier one's last (several blocks)."""
    p, k = len(kernels), 2
    names = [f"d{i}" for i in range(p)]
    devs = {d: fixed(t) for d, t in zip(names, kernels)}
    hops = list(zip(names, names[1:])) + ([(names[-1], names[0])] if p > 2 else [])
    net = links(devs, [{"a": a, "b": b, "bandwidth": BW, "latency": L} for a, b in hops],
                overhead=O)
    world = small_world(devs, net, batch=m * k, depth=sum(blocks) - 1, width=8, source="d0")
    plan = pipeline(world, names, cuts=np.cumsum(blocks)[:-1].tolist(), microbatches=m)
    act, out = k * 8 * 4, k * 3 * 4  # bytes of one micro-batch's activation and logits
    stages = [b * t for b, t in zip(blocks, kernels)]
    servers = [*stages, *[act / BW] * (p - 1), out / BW]
    fill = sum(stages) + (p - 1) * (L + O + act / BW) + (L + O + out / BW)
    assert max(act, out) / BW <= min(stages)  # no two flows ever share a link
    _, log = serve(plan, world)
    (t0, t1), = requests(log)[["t_start", "t_end"]].values
    assert t1 - t0 == pytest.approx(fill + (m - 1) * max(servers), rel=1e-9)


# -- radio energy and batteries ----------------------------------------------------------------

def relay_line(**batteries):
    """a - r - b, r a device that relays: 1 W idle, radio 0.5 W sending, 0.25 W receiving."""
    devs = {d: device(battery=batteries.get(d)) for d in "arb"}
    net = links(devs, [{"a": "a", "b": "r", "bandwidth": 4e3, "latency": 0.25},
                       {"a": "r", "b": "b", "bandwidth": 1e3, "latency": 0.5}], overhead=0.125)
    return Simulator(devs, net)


def test_radio_energy_is_power_times_the_bandwidth_phase_on_each_radio():
    """2000 B from a to b through r: latency 0.25 + 0.5 s and overhead 0.125 s (radios
    idle), then 2000 B at the 1000 B/s bottleneck: 2 s on air, t_end = 2.875 s. a sends
    for 2 s (0.5 W), r sends and receives for 2 s (0.75 W), b receives for 2 s (0.25 W).
    b also runs a kernel (0.5 GFLOP at 1 GFLOP/s x 0.5: 1 s) at 2 W. Idle is 1 W x 2.875 s
    everywhere."""
    sim = relay_line()
    flow = sim.transfer("a", "b", 2000.0)

    def kernel():
        yield sim.compute("b", 5e8)

    sim.process(kernel())
    sim.run(until=flow)
    assert sim.now == 2.875 and flow.value.t_start == 0.875
    expected = {"a": (2.875, 0.0, 1.0), "r": (2.875, 0.0, 1.5), "b": (2.875, 2.0, 0.5)}
    for d, (idle, compute, radio) in expected.items():
        e = sim.energy(d)
        assert (e.idle, e.compute, e.radio) == pytest.approx((idle, compute, radio), rel=1e-12)
        assert e.total == pytest.approx(idle + compute + radio, rel=1e-12)
    assert sim.flows.radios.time("r") == pytest.approx((2.0, 2.0), rel=1e-12)


@pytest.mark.parametrize("who, watts_on_air", [("a", 0.5), ("r", 0.75), ("b", 0.25)])
def test_a_battery_drained_by_its_radio_empties_at_the_hand_computed_instant(who, watts_on_air):
    """2 J, 1 W idle: 0.875 s of latency and overhead at idle, then 1 W plus the radio's
    watts while 1e6 B crawl at 1000 B/s. Empty when 0.875 + (1 + w)(t - 0.875) = 2:
    t = 0.875 + 1.125 / (1 + w), long before the idle-only 2 s. The flow fails then."""
    sim = relay_line(**{who: 2.0})
    seen = []

    def send():
        try:
            yield sim.transfer("a", "b", 1e6)
        except DeviceGone as gone:
            seen.append((sim.now, gone.device))

    sim.process(send())
    sim.run()
    t = 0.875 + 1.125 / (1 + watts_on_air)
    assert seen == [(pytest.approx(t, rel=1e-9), who)]
    assert sim.gone[who][0] == pytest.approx(t, rel=1e-9)
    assert sim.energy(who).total == pytest.approx(2.0, rel=1e-9)
    assert sim.energy(who).radio == pytest.approx(watts_on_air * (t - 0.875), rel=1e-9)


def test_poisson_arrivals_come_at_the_given_rate():
    """2,000 requests at 50/s: the mean gap is 1/50 s (the sample mean's sd is 1/50/sqrt(2000),
    2.2 %: the seeded draw lands within 10 %), and the gaps spread like an exponential's
    (sd equal to the mean, within 10 %)."""
    devs, net = three_speeds()
    world = small_world(devs, net, batch=1, source="src")
    world = replace(world, workload=replace(world.workload, requests=2000,
                                            arrival=Arrival("poisson", rate=50.0)))
    _, log = serve(single(world, "a"), world)
    gaps = np.diff(np.concatenate([[0.0], np.sort(requests(log).t_start.to_numpy())]))
    assert abs(gaps.mean() - 1 / 50) < 0.1 / 50
    assert abs(gaps.std() - 1 / 50) < 0.1 / 50
