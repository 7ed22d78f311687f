"""The numpy max-min solver against hand-computed rates and a plain-Python reference."""
import numpy as np
import pytest

from simdl.hw.maxmin import max_min_fill, max_min_rates


def reference_rates(routes, capacity):
    """Water filling, the textbook way: raise every unfrozen flow's rate by the same step
    until some resource is full, freeze the flows crossing it, repeat. Slow and plain."""
    rate = {f: 0.0 for f in routes}
    left = dict(capacity)
    frozen = {}
    while len(frozen) < len(routes):
        crossings = {r: 0 for r in capacity}
        for f, route in routes.items():
            if f not in frozen:
                for r in route:
                    crossings[r] += 1
        step, full = min((left[r] / n, r) for r, n in crossings.items() if n > 0)
        for f in routes:
            if f not in frozen:
                rate[f] += step
        for r, n in crossings.items():
            left[r] -= step * n
        for f, route in routes.items():
            if f not in frozen and full in route:
                frozen[f] = None
    return rate


def test_four_flows_over_three_links_get_their_bottleneck_shares():
    """Chain A-B-C-D, capacities AB 10, BC 4, CD 20. f1 A->D crosses all three, f2 B->C,
    f3 A->B, f4 C->D. BC is tightest (4 / 2 = 2): f1 = f2 = 2. Then AB has 10 - 2 = 8 left
    for f3, CD 20 - 2 = 18 for f4."""
    routes = {"f1": ["A>B", "B>C", "C>D"], "f2": ["B>C"], "f3": ["A>B"], "f4": ["C>D"]}
    capacity = {"A>B": 10.0, "B>C": 4.0, "C>D": 20.0}
    expected = {"f1": 2.0, "f2": 2.0, "f3": 8.0, "f4": 18.0}
    assert max_min_rates(routes, capacity) == expected
    assert reference_rates(routes, capacity) == expected


def test_a_station_to_station_flow_counts_twice_on_the_airtime():
    """Airtime 30: phone->tv crosses it up and down (2 crossings) and an upload once:
    3 crossings share 30, so 10 each."""
    routes = {"p2p": ["p>ap", "air", "ap>tv", "air"], "up": ["q>ap", "air", "ap>srv"]}
    capacity = {"p>ap": 100.0, "q>ap": 100.0, "ap>tv": 100.0, "ap>srv": 100.0, "air": 30.0}
    assert max_min_rates(routes, capacity) == {"p2p": 10.0, "up": 10.0}


def test_an_upload_and_a_download_share_the_airtime_equally():
    """Airtime 30, links 100: one crossing each, so 15 each."""
    routes = {"up": ["p>ap", "air", "ap>srv"], "down": ["srv>ap", "ap>q", "air"]}
    capacity = {"p>ap": 100.0, "ap>srv": 100.0, "srv>ap": 100.0, "ap>q": 100.0, "air": 30.0}
    assert max_min_rates(routes, capacity) == {"up": 15.0, "down": 15.0}


def test_csr_entries_and_a_flow_without_resources():
    """Flow 0 crosses r0 twice (cap 6 -> 3); flow 1 crosses r1 (cap 5); flow 2 nothing.
    Entries may come in any order."""
    rates = max_min_fill(np.array([0, 1, 0]), np.array([0, 1, 0]), np.array([6.0, 5.0]), 3)
    assert rates.tolist() == [3.0, 5.0, np.inf]


def _random_case(rng, max_res=8, max_flows=12):
    n_res = int(rng.integers(1, max_res + 1))
    # Integer capacities make exact ties between resources common.
    if rng.random() < 0.5:
        caps = rng.integers(1, 6, n_res).astype(float) * 10
    else:
        caps = rng.uniform(1.0, 100.0, n_res)
    capacity = {f"r{i}": float(c) for i, c in enumerate(caps)}
    routes = {}
    for f in range(int(rng.integers(1, max_flows + 1))):
        hops = rng.integers(0, n_res, int(rng.integers(1, 5)))   # repeats allowed
        routes[f"f{f}"] = [f"r{i}" for i in hops]
    return routes, capacity


def test_the_fast_solver_equals_the_reference_on_random_cases():
    """300 seeded cases of 1-8 resources and 1-12 flows of 1-4 hops (resources repeated),
    then 60 of up to 30 resources and 60 flows, where many bottlenecks fill per round."""
    rng = np.random.default_rng(20240601)
    for i in range(360):
        routes, capacity = _random_case(rng) if i < 300 else _random_case(rng, 30, 60)
        fast = max_min_rates(routes, capacity)
        slow = reference_rates(routes, capacity)
        assert fast == pytest.approx(slow, rel=1e-9), (routes, capacity)
        load = {r: 0.0 for r in capacity}
        for f, route in routes.items():
            for r in route:
                load[r] += fast[f]
        assert all(load[r] <= capacity[r] * (1 + 1e-9) for r in capacity)


def test_every_flow_is_bottlenecked_on_a_full_resource_where_it_is_among_the_fastest():
    """The max-min condition itself, on 100 random cases."""
    rng = np.random.default_rng(7)
    for _ in range(100):
        routes, capacity = _random_case(rng)
        rates = max_min_rates(routes, capacity)
        load = {r: 0.0 for r in capacity}
        for f, route in routes.items():
            for r in route:
                load[r] += rates[f]
        for f, route in routes.items():
            assert any(load[r] >= capacity[r] * (1 - 1e-9)
                       and all(rates[g] <= rates[f] * (1 + 1e-9)
                               for g, other in routes.items() if r in other)
                       for r in route)
