"""A recompute that re-solves only the flows a start or end can affect (`Flows._group`)
gives the timeline of re-solving every active flow, bit for bit."""
from dataclasses import dataclass

import numpy as np
import pytest
import simpy

from simdl.errors import DeviceGone
from simdl.hw import maxmin
from simdl.hw.network import LinkSpec, Network
from simdl.hw.topologies import home
from simdl.sim import flows as flows_module
from simdl.sim.flows import Flows


@dataclass(frozen=True)
class Station:
    interfaces: dict


def _pool(rng):
    """12 devices: half wired to the router (links of their own), half on the AP's shared
    airtime, with uneven link rates so flows bottleneck at different places."""
    devices = {}
    for i in range(12):
        rate = float(rng.integers(2, 12)) * 1e6
        devices[f"d{i}"] = Station({"ethernet": rate} if i % 2 else {"wifi": rate})
    return home(devices, airtime="60Mbps")


def _timeline(seed, few, calls):
    """Random transfers (some starting at the same instant) on one pool; d3 leaves at
    0.9 s. Returns every record, the link counters and each device's radio time."""
    rng = np.random.default_rng(seed)
    net = _pool(rng)
    env = simpy.Environment()
    flows = Flows(env, net)
    names = list(net.devices)
    plan = [(float(rng.integers(0, 40)) * 0.05, names[a], names[(a + 1 + b) % len(names)],
             float(rng.uniform(0.1e6, 3e6)))
            for a, b in zip(rng.integers(0, 12, 60), rng.integers(0, 11, 60))]
    out = []

    def one(t, src, dst, nbytes):
        yield env.timeout(t)
        try:
            f = yield flows.transfer(src, dst, nbytes)
            out.append((f.src, f.dst, f.nbytes, f.t_request, f.t_start, f.t_end))
        except DeviceGone:
            out.append((src, dst, nbytes, t, "lost", env.now))

    def leave():
        yield env.timeout(0.9)
        flows.abort("d3", DeviceGone("d3", 0.9, "left"))

    for item in plan:
        env.process(one(*item))
    env.process(leave())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(flows_module, "FEW", few)
        for name in ("max_min_hops", "max_min_few"):
            solver = getattr(maxmin, name)
            mp.setattr(flows_module, name,
                       lambda *a, _s=solver, _n=name: calls.append(_n) or _s(*a))
        env.run()
    radio = [flows.radios.time(d) for d in names]
    return sorted(out, key=str), flows.link_stats(), radio, flows.recomputes


@pytest.mark.parametrize("seed", range(6))
def test_grouped_recomputes_give_the_global_timeline_bit_for_bit(seed):
    """FEW = 0 re-solves every active flow at every change, with numpy (what the engine
    did before groups), and charges time, finds ends and the next wake-up with numpy;
    the default does all of it in Python for a few flows and with numpy for more;
    FEW = 10**9 always does it in Python, however many. All three give the same
    records, counters and radio times (==)."""
    every, default, groups = [], [], []
    reference = _timeline(seed, 0, every)
    assert set(every) == {"max_min_hops"}
    assert _timeline(seed, flows_module.FEW, default) == reference
    assert _timeline(seed, 10**9, groups) == reference
    assert set(groups) == {"max_min_few"}
    assert {"max_min_hops", "max_min_few"} <= set(default)   # both paths ran


def test_a_flow_on_separate_links_is_not_re_solved():
    """a->c and b->d through one switch share no link: b's start re-solves b alone and a
    keeps its rate (10 MB at 10 MB/s from 0 s; 2.5 MB at 5 MB/s from 0.5 s)."""
    nodes = {"a": "device", "b": "device", "c": "device", "d": "device", "s": "switch"}
    net = Network(nodes, [LinkSpec("a", "s", 10e6, 0.0), LinkSpec("b", "s", 5e6, 0.0),
                          LinkSpec("c", "s", 20e6, 0.0), LinkSpec("d", "s", 20e6, 0.0)])
    env = simpy.Environment()
    flows = Flows(env, net)
    solved = []
    real = flows._group

    def spy():
        group = real()
        solved.append(group)
        return group

    flows._group = spy
    ends = {}

    def one(t, src, dst, nbytes):
        yield env.timeout(t)
        ends[src] = (yield flows.transfer(src, dst, nbytes)).t_end

    env.process(one(0.0, "a", "c", 10e6))
    env.process(one(0.5, "b", "d", 2.5e6))
    env.run()
    assert ends == {"a": 1.0, "b": 1.0}
    assert solved == [[0], [1], []]   # a starts; b starts; both end, nothing left to solve
