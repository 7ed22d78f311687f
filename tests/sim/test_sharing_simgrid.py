"""simdl's `sharing: rtt` and network factors against SimGrid 3.32 itself, on random
topologies (bench/flows.py's links_case_of, bench/simgrid_case.py's "links" kind).
Skipped where Debian's python3-simgrid is not installed.

SimGrid's CM02 model with cross-traffic off and no TCP-gamma bound weighs each transfer's
share by 1 / its route's latency, as rtt does, and takes the bandwidth and latency factors
as simdl.hw.topologies.calibrated does; simdl gets them as the network's own numbers,
SimGrid as options. Latencies are not powers of two here, so the weights round: SimGrid
computes sum(1 / latency) incrementally (taking fixed flows' 1 / latency back off, with
maxmin/precision's snapping) and multiplies the rate by the bandwidth factor, simdl
recounts each round and scales the capacities, and simdl sums a route's scaled latencies
where SimGrid scales the sum. Over 12 seeds, each with factors (1, 1), (0.97, 13.01)
(SimGrid's LV08 values) and (0.5, 2), the largest end-time difference was 1.3e-15
relative (9 ulps): REL leaves a margin of 75. Shared plain max-min, the same cases differ
from SimGrid by 0.49 relative or more, so REL tells the two models apart by twelve orders
of magnitude.
"""
import numpy as np
import pytest
from test_flows_simgrid import bench

from simdl.hw.topologies import calibrated, links

REL = 1e-13
pytestmark = pytest.mark.skipif(bench.simgrid_version() is None,
                                reason=f"{bench.SIMGRID_PYTHON} cannot import simgrid")


def random_topology(seed: int, devices: int = 12, switches: int = 4, per_station: int = 5):
    """A random tree over devices and switches plus a few extra links, latencies 0.1-5 ms,
    bandwidths 1-50 MB/s, a third of the links on one of two shared media; each device
    sends per_station transfers of 1 kB - 2 MB to other devices, one after the other."""
    rng = np.random.default_rng(seed)
    names = [f"d{i}" for i in range(devices)] + [f"s{i}" for i in range(switches)]
    order = rng.permutation(len(names)).tolist()
    edges = [(names[order[i]], names[order[int(rng.integers(0, i))]])
             for i in range(1, len(names))]
    while len(edges) < len(names) + 3:
        a, b = rng.choice(len(names), 2, replace=False).tolist()
        if (names[a], names[b]) not in edges and (names[b], names[a]) not in edges:
            edges.append((names[a], names[b]))
    spec = [{"a": a, "b": b, "bandwidth": float(rng.uniform(1e6, 50e6)),
             "latency": float(rng.uniform(1e-4, 5e-3)),
             "medium": [None, None, "m0", "m1"][int(rng.integers(0, 4))]} for a, b in edges]
    net = links({n: None for n in names[:devices]}, spec,
                media={"m0": float(rng.uniform(5e6, 20e6)), "m1": float(rng.uniform(5e6, 20e6))},
                overhead=0.0)
    dsts = (np.arange(devices)[:, None]
            + rng.integers(1, devices, (devices, per_station))) % devices
    sizes = rng.integers(1_000, 2_000_000, (devices, per_station))
    transfers = [list(zip(dsts[i].tolist(), sizes[i].tolist())) for i in range(devices)]
    return net, transfers


@pytest.mark.parametrize("seed, bandwidth_factor, latency_factor",
                         [(0, 1.0, 1.0), (1, 1.0, 1.0), (2, 0.97, 13.01), (3, 0.5, 2.0)])
def test_every_transfer_ends_when_simgrid_says(seed, bandwidth_factor, latency_factor):
    net, transfers = random_topology(seed)
    case = bench.links_case_of(net, transfers, bandwidth_factor, latency_factor)
    theirs = bench.run_simgrid(case)["ends"]
    ours = bench.run_simdl(calibrated(net, "rtt", bandwidth_factor, latency_factor), case)["ends"]
    _, rel, _ = bench.end_gap(ours, theirs)
    assert rel <= REL
    plain = bench.run_simdl(calibrated(net, "maxmin", bandwidth_factor, latency_factor), case)
    assert bench.end_gap(plain["ends"], theirs)[1] > 1e-3
