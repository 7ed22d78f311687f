"""`sharing: rtt` (weighted max-min, sim/sharing.py) and the bandwidth and latency factors
(hw.topologies.calibrated): hand-computed cases, the two solvers against each other and
against textbook water filling, and the flows engine under rtt."""
import math

import numpy as np
import pytest
import simpy

from simdl.errors import ScenarioError
from simdl.hw.maxmin import max_min_few, max_min_hops
from simdl.hw.topologies import TOPOLOGIES, calibrated, links
from simdl.scenario import parse
from simdl.sim import flows as flows_module
from simdl.sim.flows import Flows
from simdl.sim.sharing import weighted_few, weighted_hops
from simdl.world import build

NODES = {"a": None, "b": None, "c": None}


def _hops(routes, n_res):
    hops = np.full((max(len(r) for r in routes), len(routes)), n_res, dtype=np.intp)
    for f, route in enumerate(routes):
        hops[:len(route), f] = route
    return hops


def _both(routes, capacity, penalty):
    """Both solvers' rates, checked equal bit for bit."""
    fast = weighted_hops(_hops(routes, len(capacity)), np.array(capacity, dtype=float),
                         np.array(penalty, dtype=float)).tolist()
    few = weighted_few(routes, capacity, penalty)
    assert few == fast
    return few


def test_round_trips_of_1ms_and_3ms_get_three_quarters_and_one_quarter():
    """One link of 4: usage 1/1ms + 1/3ms, level 4 / (4000/3) = 3 ms, so 3 and 1."""
    assert _both([(0,), (0,)], [4.0], [1e-3, 3e-3]) == [3.0, 1.0]
    assert max_min_few([(0,), (0,)], [4.0]) == [2.0, 2.0]          # plain: halves


def test_three_flows_on_two_links_by_weighted_progressive_filling():
    """X = 0 and Y = 1, 12 each. f0 crosses X and Y (penalty 1), f1 X (1), f2 Y (1/2, so
    twice f0's weight). Levels: X 12 / (1 + 1) = 6, Y 12 / (1 + 2) = 4: Y fills first,
    f0 = 4 / 1 = 4 and f2 = 4 / (1/2) = 8; X has 12 - 4 = 8 left for f1 alone: 8.
    Plain max-min gives 6 each (Y: 12 / 2, then X: 12 - 6)."""
    routes = [(0, 1), (0,), (1,)]
    assert _both(routes, [12.0, 12.0], [1.0, 1.0, 0.5]) == [4.0, 8.0, 8.0]
    assert max_min_few(routes, [12.0, 12.0]) == [6.0, 6.0, 6.0]


def _random_case(rng, max_res, max_flows):
    n_res = int(rng.integers(1, max_res + 1))
    if rng.random() < 0.5:   # exact ties between resources are common
        capacity = (rng.integers(1, 6, n_res) * 10).astype(float).tolist()
    else:
        capacity = rng.uniform(1.0, 100.0, n_res).tolist()
    n = int(rng.integers(1, max_flows + 1))
    routes = [tuple(int(r) for r in rng.integers(0, n_res, int(rng.integers(1, 6))))
              for _ in range(n)]
    if rng.random() < 0.5:   # a few route latencies, as a real pool has: ties of weight
        penalty = rng.choice([1e-3, 2e-3, 3e-3, 2.1e-3, 5e-4], n).tolist()
    else:
        penalty = rng.uniform(1e-4, 3e-2, n).tolist()
    return routes, capacity, penalty


def test_the_python_solver_equals_numpy_bit_for_bit_under_rtt():
    """600 seeded cases, resources repeated within a route, up to 40 flows over 12
    resources, penalties that are not powers of two: == on every rate."""
    rng = np.random.default_rng(18)
    levels = 0
    for i in range(600):
        routes, capacity, penalty = _random_case(rng, 4 if i < 300 else 12,
                                                 8 if i < 300 else 40)
        levels += len(set(_both(routes, capacity, penalty))) > 2
    assert levels > 100


def test_with_every_penalty_1_the_weighted_solvers_are_the_plain_ones_bit_for_bit():
    """So a penalty of 1 for every flow is plain max-min, to the bit."""
    rng = np.random.default_rng(5)
    for i in range(400):
        routes, capacity, _ = _random_case(rng, 4 if i < 200 else 12, 8 if i < 200 else 40)
        ones = [1.0] * len(routes)
        assert weighted_few(routes, capacity, ones) == max_min_few(routes, capacity)
        hops, cap = _hops(routes, len(capacity)), np.array(capacity)
        assert (weighted_hops(hops, cap, np.array(ones)).tolist()
                == max_min_hops(hops, cap).tolist())


def reference_weighted(routes, capacity, penalty):
    """Water filling the textbook way: raise every unfrozen flow's rate by step / penalty
    until some resource is full, freeze the flows crossing it, repeat."""
    rate = [0.0] * len(routes)
    left = list(capacity)
    frozen = set()
    while len(frozen) < len(routes):
        usage = [0.0] * len(capacity)
        for f, route in enumerate(routes):
            if f not in frozen:
                for r in route:
                    usage[r] += 1.0 / penalty[f]
        step, full = min((left[r] / u, r) for r, u in enumerate(usage) if u > 0)
        for f in range(len(routes)):
            if f not in frozen:
                rate[f] += step / penalty[f]
        for r, u in enumerate(usage):
            left[r] -= step * u
        frozen |= {f for f, route in enumerate(routes) if f not in frozen and full in route}
    return rate


def test_the_solver_equals_textbook_weighted_water_filling():
    """Rates to 1e-9 (the reference adds its steps up; the solver fixes each level once),
    and no resource over its capacity."""
    rng = np.random.default_rng(33)
    for i in range(300):
        routes, capacity, penalty = _random_case(rng, 4 if i < 200 else 12,
                                                 8 if i < 200 else 30)
        rates = _both(routes, capacity, penalty)
        assert rates == pytest.approx(reference_weighted(routes, capacity, penalty), rel=1e-9)
        load = [0.0] * len(capacity)
        for f, route in enumerate(routes):
            for r in route:
                load[r] += rates[f]
        assert all(load[r] <= capacity[r] * (1 + 1e-12) for r in range(len(capacity)))


def _pair(**params):
    """a and b send to c over their own links (1 ms and 3 ms) through one medium of 4 MB/s;
    no per-message overhead."""
    spec = [{"a": "a", "b": "c", "bandwidth": 100e6, "latency": 1e-3, "medium": "air"},
            {"a": "b", "b": "c", "bandwidth": 100e6, "latency": 3e-3, "medium": "air"}]
    return calibrated(links(NODES, spec, media={"air": 4e6}, overhead=0.0), **params)


def _ends(network, sends, few=None, monkeypatch=None):
    """End time of each (src, dst, bytes, start) transfer."""
    if few is not None:
        monkeypatch.setattr(flows_module, "FEW", few)
    env = simpy.Environment()
    flows = Flows(env, network)
    ends = [None] * len(sends)

    def send(i, src, dst, nbytes, start):
        yield env.timeout(start)
        flow = yield flows.transfer(src, dst, nbytes)
        ends[i] = flow.t_end

    for i, item in enumerate(sends):
        env.process(send(i, *item))
    env.run()
    return ends


def test_rtt_flows_of_1ms_and_3ms_share_a_medium_3_to_1_and_end_when_computed():
    """b asks at 0 (bandwidth from 3 ms), a at 2 ms (from 3 ms too), 3 MB each. rtt: a at
    3 MB/s ends at 0.003 + 1 = 1.003 s; b, at 1 MB/s, has 2 MB left, alone at 4 MB/s:
    1.003 + 0.5 = 1.503 s. Max-min: both at 2 MB/s, both end at 0.003 + 1.5 = 1.503 s."""
    sends = [("a", "c", 3e6, 0.002), ("b", "c", 3e6, 0.0)]
    assert _ends(_pair(sharing="rtt"), sends) == [1.003, 1.503]
    assert _ends(_pair(), sends) == [1.503, 1.503]


def test_the_defaults_leave_the_network_as_built_and_rtt_leaves_it_alone():
    """The defaults return the network itself (so plain runs are untouched); rtt returns
    a copy, so the network it was made from still shares max-min."""
    net = links(NODES, [{"a": "a", "b": "c", "bandwidth": 1e6, "latency": 1e-3}])
    assert calibrated(net) is net
    rtt = calibrated(net, "rtt")
    assert rtt.sharing == "rtt" and rtt.capacity == net.capacity and rtt.links == net.links
    assert net.sharing == "maxmin"


def test_factors_scale_every_bandwidth_and_latency_but_not_the_overhead():
    """bandwidth_factor 0.5 and latency_factor 2: a alone sends 1 MB over the 4 MB/s medium
    at 2 MB/s after 2 ms, plus the 100 us overhead, unscaled."""
    spec = [{"a": "a", "b": "c", "bandwidth": 100e6, "bandwidth_back": 50e6,
             "latency": 1e-3, "medium": "air"}]
    net = calibrated(links(NODES, spec, media={"air": 4e6}, overhead=1e-4),
                     bandwidth_factor=0.5, latency_factor=2.0)
    assert net.capacity == {"a>c": 50e6, "c>a": 25e6, "air": 2e6}
    assert net.route("a", "c").latency == 2e-3 and net.overhead == 1e-4
    assert _ends(net, [("a", "c", 1e6, 0.0)]) == [2e-3 + 1e-4 + 0.5]


def test_rtt_numpy_and_python_paths_give_the_same_end_times(monkeypatch):
    """A random chain-and-star pool, 60 transfers at random times: every recompute by
    numpy (FEW = 0) or every one by plain Python (FEW huge), the same end times to the bit."""
    rng = np.random.default_rng(9)
    nodes = {f"d{i}": None for i in range(8)}
    spec = [{"a": f"d{i}", "b": f"d{i + 1}", "bandwidth": float(rng.uniform(1e6, 9e6)),
             "latency": float(rng.uniform(1e-4, 5e-3)), "medium": None if i % 3 else "m"}
            for i in range(7)]
    net = calibrated(links(nodes, spec, overhead=0.0), sharing="rtt")
    sends = [(f"d{s}", f"d{(s + 1 + int(rng.integers(0, 7))) % 8}",
              float(rng.integers(1_000, 2_000_000)), float(rng.uniform(0, 2)))
             for s in rng.integers(0, 8, 60).tolist()]
    numpy_ends = _ends(net, sends, few=0, monkeypatch=monkeypatch)
    python_ends = _ends(net, sends, few=10**9, monkeypatch=monkeypatch)
    assert numpy_ends == python_ends
    assert numpy_ends != _ends(calibrated(links(nodes, spec, overhead=0.0)), sends)


SCENARIO = {"name": "x", "devices": [{"name": "phone", "type": "phone_flagship"}],
            "model": {"name": "mlp"},
            "workload": {"kind": "inference", "requests": 1, "source": "phone"},
            "strategies": [{"name": "single", "device": "phone"}]}


@pytest.mark.parametrize("params, field, allowed", [
    ({"sharing": "fair"}, "network.sharing", "'maxmin' or 'rtt'"),
    ({"bandwidth_factor": 0}, "network.bandwidth_factor", "greater than 0"),
    ({"latency_factor": -1.5}, "network.latency_factor", "greater than 0"),
    ({"latency_factor": math.inf}, "network.latency_factor", "a finite number"),
    ({"bandwidth_factor": "fast"}, "network.bandwidth_factor", "a valid number"),
    ({"bandwidth_factor": True}, "network.bandwidth_factor", "a valid number"),
    ({"sharing": "rtt", "ethernet_latency": 0}, "network.sharing",
     "rtt when every link has a latency > 0 (link ap-router has 0 s)"),
])
def test_bad_sharing_or_factors_name_the_field_the_value_and_what_is_allowed(
        params, field, allowed):
    with pytest.raises(ScenarioError) as err:
        build(parse(SCENARIO | {"network": {"kind": "home"} | params}), timing_only=True)
    assert err.value.where == field and allowed in str(err.value)


def test_a_factor_given_as_true_from_code_is_refused():
    net = links(NODES, [{"a": "a", "b": "c", "bandwidth": 1e6, "latency": 1e-3}])
    with pytest.raises(ScenarioError, match="network.latency_factor"):
        calibrated(net, latency_factor=True)


@pytest.mark.parametrize("kind", sorted(TOPOLOGIES))
def test_every_topology_takes_the_sharing_keys(kind):
    params = {"links": [{"a": "phone", "b": "s", "bandwidth": "1Gbps", "latency": "1ms"}]
              } if kind == "links" else {}
    sc = parse(SCENARIO | {"network": {"kind": kind, "sharing": "rtt", "bandwidth_factor": 0.5}
                           | params})
    assert build(sc, timing_only=True).network.sharing == "rtt"
