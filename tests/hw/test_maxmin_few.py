"""The plain-Python max-min solver gives numpy's rates bit for bit (sim/flows.py uses
either, by how many flows a change touches, and the run's times must not depend on it)."""
import numpy as np

from simdl.hw.maxmin import max_min_few, max_min_hops


def _hops(routes, n_res):
    """The (L, F) hop matrix of max_min_hops, padded with n_res after each route's end."""
    hops = np.full((max(len(r) for r in routes), len(routes)), n_res, dtype=np.intp)
    for f, route in enumerate(routes):
        hops[:len(route), f] = route
    return hops


def _random_case(rng, max_res, max_flows):
    n_res = int(rng.integers(1, max_res + 1))
    # Integer capacities make exact ties common; uniform ones make float sums inexact.
    if rng.random() < 0.5:
        capacity = rng.integers(1, 6, n_res).astype(float) * 10
    else:
        capacity = rng.uniform(1.0, 100.0, n_res)
    routes = [tuple(int(r) for r in rng.integers(0, n_res, int(rng.integers(1, 6))))
              for _ in range(int(rng.integers(1, max_flows + 1)))]
    return routes, capacity


def test_the_python_solver_equals_numpy_bit_for_bit_on_random_cases():
    """600 seeded cases, resources repeated within a route (a medium crossed twice), up to
    40 flows over 12 resources: several rounds with many bottlenecks each, and float
    sums whose order matters. Equality is exact (==), never approximate."""
    rng = np.random.default_rng(14)
    rounds = 0
    for i in range(600):
        routes, capacity = _random_case(rng, 4 if i < 300 else 12, 8 if i < 300 else 40)
        fast = max_min_hops(_hops(routes, len(capacity)), capacity)
        few = max_min_few(routes, capacity)
        assert few == fast.tolist(), (routes, capacity.tolist())
        rounds += len(set(few)) > 2
    assert rounds > 100  # the cases do exercise many distinct bottleneck levels


def test_a_flow_crossing_nothing_is_unlimited_and_others_are_unaffected():
    """Flow 1 crosses nothing (inf); flow 0 crosses r0 twice (cap 6 -> 3), flow 2 r1 (5)."""
    assert max_min_few([(0, 0), (), (1,)], [6.0, 5.0]) == [3.0, float("inf"), 5.0]


def test_three_bottleneck_levels_by_hand():
    """The chain A-B-C-D of test_maxmin: BC (4) is shared by f1 and f2 -> 2 each; AB has
    8 left for f3, CD 18 for f4. Resources 0 = AB, 1 = BC, 2 = CD."""
    assert max_min_few([(0, 1, 2), (1,), (0,), (2,)], [10.0, 4.0, 20.0]) == [2.0, 2.0, 8.0, 18.0]
