"""Simulated transfers against hand-computed timelines (SimGrid's flow model)."""
import math

import pytest
import simpy

from simdl.errors import DeviceGone
from simdl.hw.network import LinkSpec, Network
from simdl.sim import flows as flows_module
from simdl.sim.flows import Flows


def one_link(bandwidth=10e6, latency=0.0, overhead=0.0):
    """Devices x and y on one link."""
    net = Network({"x": "device", "y": "device"}, [LinkSpec("x", "y", bandwidth, latency)],
                  overhead=overhead)
    return Flows(simpy.Environment(), net)


def run(flows, requests):
    """Issue (t, src, dst, nbytes) requests; return each one's Flow record, in order."""
    env, out = flows.env, {}

    def one(i, t, src, dst, nbytes):
        yield env.timeout(t)
        out[i] = yield flows.transfer(src, dst, nbytes, label=f"m{i}")

    for i, request in enumerate(requests):
        env.process(one(i, *request))
    env.run()
    return [out[i] for i in range(len(requests))]


def test_one_flow_takes_latency_plus_overhead_plus_size_over_bandwidth():
    """5 ms + 1 ms + 25 MB / 10 MB/s = 2.506 s."""
    (flow,) = run(one_link(10e6, latency=0.005, overhead=0.001), [(0, "x", "y", 25e6)])
    assert flow.t_start == 0.005 + 0.001
    assert flow.t_end == 0.005 + 0.001 + 25e6 / 10e6
    assert (flow.src, flow.dst, flow.nbytes, flow.label) == ("x", "y", 25e6, "m0")


def test_equal_flows_share_a_link_then_the_survivor_speeds_up():
    """10 MB/s, no latency: 10 MB and 20 MB start together at 5 MB/s each; the first ends
    at 2 s, the second has 10 MB left at 10 MB/s: done at 3 s. One recompute per instant."""
    flows = one_link(10e6)
    a, b = run(flows, [(0, "x", "y", 10e6), (0, "x", "y", 20e6)])
    assert (a.t_end, b.t_end) == (2.0, 3.0)
    assert flows.recomputes == 2


def test_n_equal_flows_each_get_one_nth():
    """Four 10 MB flows on 10 MB/s: 2.5 MB/s each, all done at 4 s."""
    ends = [f.t_end for f in run(one_link(10e6), [(0, "x", "y", 10e6)] * 4)]
    assert ends == [4.0] * 4


def test_a_flow_started_later_joins_and_rates_change_at_that_instant():
    """10 MB/s, 0.5 s latency. A (30 MB) starts at 0.5 s alone; B (10 MB) is requested at
    1 s and starts at 1.5 s, when A has 20 MB left. 5 MB/s each: B ends at 3.5 s, A has
    10 MB left and ends alone at 4.5 s."""
    a, b = run(one_link(10e6, latency=0.5), [(0, "x", "y", 30e6), (1.0, "x", "y", 10e6)])
    assert (b.t_request, b.t_start, b.t_end) == (1.0, 1.5, 3.5)
    assert a.t_end == 4.5


def test_a_stale_wake_up_is_ignored():
    """A (30 MB) alone would end at 3 s; B (20 MB) joins at 1 s when A has 20 MB left, so
    both end at 5 s. The wake-up for 3 s fires and does nothing: rates are computed only
    at 0 s and 1 s (at 5 s nothing is left to share)."""
    flows = one_link(10e6)
    a, b = run(flows, [(0, "x", "y", 30e6), (1.0, "x", "y", 20e6)])
    assert (a.t_end, b.t_end) == (5.0, 5.0)
    assert flows.recomputes == 2


def chain():
    """A-B-C-D with AB 10, BC 4, CD 20 MB/s and no latency."""
    nodes = dict.fromkeys("ABCD", "device")
    return Flows(simpy.Environment(), Network(nodes, [
        LinkSpec("A", "B", 10e6, 0.0), LinkSpec("B", "C", 4e6, 0.0),
        LinkSpec("C", "D", 20e6, 0.0)]))


def test_max_min_over_three_bottlenecks_gives_hand_computed_finish_times():
    """Rates 2, 2, 8, 18 MB/s (f1 A->D, f2 B->C, f3 A->B, f4 C->D; see test_maxmin).
    f2 (2 MB) and f3 (8 MB) end at 1 s. f1 then has 2 MB left and BC to itself (4 MB/s):
    ends at 1.5 s; f4 gets 16 MB/s, has 18 - 8 = 10 MB left at 1.5 s, then 20 MB/s: 2 s."""
    f1, f2, f3, f4 = run(chain(), [(0, "A", "D", 4e6), (0, "B", "C", 2e6), (0, "A", "B", 8e6),
                                   (0, "C", "D", 36e6)])
    assert (f1.t_end, f2.t_end, f3.t_end, f4.t_end) == (1.5, 1.0, 1.0, 2.0)


def access_point(airtime=30e6):
    """Stations p and q on an AP whose airtime is 30 MB/s; a server wired to the AP."""
    nodes = {"p": "device", "q": "device", "srv": "device", "ap": "ap"}
    return Flows(simpy.Environment(), Network(nodes, [
        LinkSpec("p", "ap", 100e6, 0.0, "wifi", "air"),
        LinkSpec("q", "ap", 100e6, 0.0, "wifi", "air"),
        LinkSpec("srv", "ap", 100e6, 0.0)], media={"air": airtime}))


def test_an_upload_and_a_download_share_the_access_point_airtime():
    """Upload p->srv and download srv->q, 15 MB each, cross the 30 MB/s air once: 15 MB/s
    each, both done at 1 s although every link is 100 MB/s."""
    up, down = run(access_point(), [(0, "p", "srv", 15e6), (0, "srv", "q", 15e6)])
    assert (up.t_end, down.t_end) == (1.0, 1.0)


def test_a_station_to_station_flow_counts_twice_on_the_airtime():
    """p->q (10 MB, air twice) and q->srv (20 MB, once): 3 crossings of 30 MB/s, 10 MB/s
    each. p->q ends at 1 s; q->srv has 10 MB left, alone at 30 MB/s: ends at 1 + 1/3 s.
    The air carried 2 x 10 + 20 = 40 MB and was busy 4/3 s."""
    flows = access_point()
    p2p, up = run(flows, [(0, "p", "q", 10e6), (0, "q", "srv", 20e6)])
    assert p2p.t_end == 1.0
    assert up.t_end == pytest.approx(1 + 1 / 3, rel=1e-12)
    air = {row["resource"]: row for row in flows.link_stats()}["air"]
    assert air["bytes"] == 40e6
    assert air["busy_time"] == pytest.approx(4 / 3, rel=1e-12)


def test_byte_and_busy_time_counters_per_link_and_device():
    """x->y 10 MB at t=0 (ends 1 s); y->x 5 MB at t=2 (ends 2.5 s); run ends at 2.5 s."""
    flows = one_link(10e6)
    run(flows, [(0, "x", "y", 10e6), (2.0, "y", "x", 5e6)])
    links = {row["resource"]: (row["bytes"], row["busy_time"]) for row in flows.link_stats()}
    assert links == {"x>y": (10e6, 1.0), "y>x": (5e6, 0.5)}
    assert flows.radios.time("x") == (1.0, 0.5) and flows.radios.time("y") == (0.5, 1.0)


def test_radio_time_counts_the_current_partial_interval_and_state_flips_are_reported():
    """Same schedule as above, seen at t = 2.2 s: x sent for 1 s and receives since 2 s."""
    flows = one_link(10e6)
    seen = []
    flows.on_change = lambda d: seen.append((flows.env.now, d, flows.radios.state(d)))

    def later():
        yield flows.env.timeout(2.0)
        yield flows.transfer("y", "x", 5e6)

    flows.transfer("x", "y", 10e6)
    flows.env.process(later())
    flows.env.run(until=2.2)
    assert flows.radios.time("x") == (1.0, pytest.approx(0.2, rel=1e-12))
    assert flows.radios.time("y", now=2.2) == (pytest.approx(0.2, rel=1e-12), 1.0)
    assert flows.radios.state("x") == (False, True)
    assert seen[:4] == [(0, "x", (True, False)), (0, "y", (False, True)),
                        (1.0, "x", (False, False)), (1.0, "y", (False, False))]


def test_a_relaying_device_sends_and_receives():
    """A->C over the chain: B relays, so its radio both sends and receives for 1 s."""
    flows = chain()
    run(flows, [(0, "A", "C", 4e6)])
    assert flows.radios.time("B") == (1.0, 1.0)


def test_a_local_transfer_is_free_and_an_empty_one_costs_latency_only():
    flows = one_link(10e6, latency=0.01, overhead=0.002)
    records = []
    flows.on_record = records.append
    local = flows.transfer("x", "x", 1e9)
    assert local.triggered and local.value.t_end == 0
    (empty,) = run(flows, [(0, "x", "y", 0)])
    assert empty.t_end == 0.01 + 0.002
    assert [r.dst for r in records] == ["x", "y"]


def test_aborting_a_device_fails_its_flows_and_frees_the_link():
    """Two 20 MB flows x->y share 10 MB/s; y leaves at 1 s with 5 MB of each delivered.
    x->z (10 MB on its own 10 MB/s link) is unaffected and ends at 1 s."""
    nodes = {"x": "device", "y": "device", "z": "device"}
    flows = Flows(simpy.Environment(), Network(nodes, [LinkSpec("x", "y", 10e6, 0.0),
                                                       LinkSpec("x", "z", 10e6, 0.0)]))
    env, caught = flows.env, []

    def sender(dst, nbytes):
        try:
            yield flows.transfer("x", dst, nbytes)
        except DeviceGone as gone:
            caught.append((env.now, gone.device))

    for dst, nbytes in [("y", 20e6), ("y", 20e6), ("z", 10e6)]:
        env.process(sender(dst, nbytes))
    env.run(until=1.0)
    lost = flows.abort("y", DeviceGone("y", 1.0, "battery empty"))
    env.run()
    assert caught == [(1.0, "y"), (1.0, "y")]
    assert [f.nbytes for f in lost] == [5e6, 5e6]
    links = {row["resource"]: row for row in flows.link_stats()}
    assert (links["x>y"]["bytes"], links["x>y"]["busy_time"]) == (10e6, 1.0)
    assert links["x>z"]["busy_time"] == 1.0 and flows.active == 0


@pytest.mark.parametrize("few", [0, flows_module.FEW])
def test_flows_that_end_at_one_instant_end_in_the_order_they_were_asked_for(few, monkeypatch):
    """With numpy (few = 0) and in plain Python alike: x->y (1 MB) and u->v (3 MB) on links of their own at 1 MB/s start at 0 s; a second
    x->y of 2 MB starts when the first ends, in the slot the first freed (lower than
    u->v's). u->v and it both end at 3 s: u->v, asked for first, ends first."""
    monkeypatch.setattr(flows_module, "FEW", few)
    nodes = {n: "device" for n in "xyuv"}
    net = Network(nodes, [LinkSpec("x", "y", 1e6, 0.0), LinkSpec("u", "v", 1e6, 0.0)])
    env = simpy.Environment()
    flows = Flows(env, net)
    ended = []

    def send(src, dst, nbytes):
        flow = yield flows.transfer(src, dst, nbytes)
        ended.append((flow.src, flow.nbytes, flow.t_end))

    def twice():
        yield from send("x", "y", 1e6)
        yield from send("x", "y", 2e6)

    env.process(twice())
    env.process(send("u", "v", 3e6))
    env.run()
    assert ended == [("x", 1e6, 1.0), ("u", 3e6, 3.0), ("x", 2e6, 3.0)]


@pytest.mark.parametrize("few", [0, flows_module.FEW])
def test_a_flow_whose_rest_is_under_a_clock_tick_ends_instead_of_waking_forever(few, monkeypatch):
    """With numpy (few = 0) and in plain Python alike: Late in a run (t = 1e9 s, where a clock tick is 1.2e-7 s) 100 B at 100 MB/s takes
    1e-6 s: the wake-up lands on a tick, leaving a few bytes whose time is under one
    tick. The flow ends there (within a tick of 1e-6 s) rather than wake up at the same
    instant again and again."""
    monkeypatch.setattr(flows_module, "FEW", few)
    net = Network({"x": "device", "y": "device"}, [LinkSpec("x", "y", 1e8, 0.0)])
    env = simpy.Environment(initial_time=1e9)
    flows = Flows(env, net)
    flow = flows.transfer("x", "y", 100.0)
    for _ in range(1000):   # a bounded run: each step is one event
        if flow.processed or env.peek() == float("inf"):
            break
        env.step()
    assert flow.processed
    assert abs(flow.value.t_end - (1e9 + 1e-6)) <= math.ulp(1e9)


@pytest.mark.parametrize("few", [0, flows_module.FEW])
def test_a_flow_left_a_rounding_remainder_at_its_wake_up_ends_there(few, monkeypatch):
    """With numpy (few = 0) and in plain Python alike: six flows of up to 813 GB share a
    100 GB/s link, starting at five instants in the first second. Charging rate x elapsed
    leaves the last of them, at the wake-up meant for its end, a float remainder above what
    one clock tick moves but far under DONE_RTOL of its size: it ends there. So there is
    one recompute per instant a flow starts or ends (none after the last end), 10 for the
    11 instants; taking the remainder for unfinished work would wake once more."""
    monkeypatch.setattr(flows_module, "FEW", few)
    requests = [(0.0, 813321438036.0687), (0.16022955651881965, 76090270692.00137),
                (0.860161037286291, 421264573635.5329), (0.6858614854745947, 363.2248208138731),
                (0.0, 583.3486242819658), (9.41002271395834e-07, 240183035249.80304)]
    flows = one_link(1e11)
    out = run(flows, [(t, "x", "y", nbytes) for t, nbytes in requests])
    instants = {f.t_start for f in out} | {f.t_end for f in out}
    assert len(instants) == 11
    assert flows.recomputes == len(instants) - 1
