"""simdl's flows against SimGrid 3.32 itself, on random Wi-Fi pools (bench/flows.py's case
machinery, small). Skipped where Debian's python3-simgrid is not installed.

Hops take 2**-10 s and transfers no overhead: SimGrid weighs each flow's share by its
route latency, and with a power-of-two latency those weights are exact, so what is left
between the two is float summation order, a few units in the last place (0-6 over 20
seeds). Any change of the sharing model moves end times by far more than 16 ulps.
"""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from simdl.hw.topologies import wifi_star

BENCH = Path(__file__).resolve().parents[2] / "bench"
ULPS = 16


def load_bench():
    sys.path.insert(0, str(BENCH))           # flows.py imports kernels.py beside it
    try:
        spec = importlib.util.spec_from_file_location("bench_flows", BENCH / "flows.py")
        module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # for @dataclass
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


bench = load_bench()
pytestmark = pytest.mark.skipif(bench.simgrid_version() is None,
                                reason=f"{bench.SIMGRID_PYTHON} cannot import simgrid")


def random_pool(seed: int, stations: int = 30, per_station: int = 6):
    """Station goodputs of 1-60 MB/s, so some stations bind below their airtime share
    and others do not; each station sends per_station transfers of 1 kB - 2 MB in turn."""
    rng = np.random.default_rng(seed)
    rates = rng.uniform(1e6, 60e6, stations)
    net = wifi_star({f"d{i}": bench.Station({"wifi": float(r)}) for i, r in enumerate(rates)},
                    latency=2.0 ** -10, overhead=0.0)
    dsts = (np.arange(stations)[:, None]
            + rng.integers(1, stations, (stations, per_station))) % stations
    sizes = rng.integers(1_000, 2_000_000, (stations, per_station))
    return net, bench.case_of(net, [list(zip(dsts[i].tolist(), sizes[i].tolist()))
                                    for i in range(stations)])


@pytest.mark.parametrize("seed", range(4))
def test_every_transfer_ends_when_simgrid_says(seed):
    net, case = random_pool(seed)
    ours = bench.run_simdl(net, case)["ends"]
    theirs = bench.run_simgrid(case)["ends"]
    assert [len(e) for e in ours] == [len(e) for e in theirs] == [6] * 30
    _, _, ulps = bench.end_gap(ours, theirs)
    assert ulps <= ULPS
