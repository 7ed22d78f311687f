"""Collective schedules send by send, worked out by hand: who sends what to whom in which
labelled round, where the pool is not a power of two. Each test pins a piece that an
operator-mutation sweep of sim/collectives.py found no test could tell from a wrong
version (the closed-form times of tests/sim/test_collectives.py are the same for a
mirrored or relabelled schedule)."""
from test_collectives import names, pool

from simdl.hw.topologies import links
from simdl.sim import collectives as C


def sends(algorithm, devices, nbytes=8.0):
    s = C.Schedule("x")
    algorithm(s, devices, nbytes)
    return [(q.label, q.src, q.dst, q.nbytes) for q in s.sends]


def test_a_binomial_broadcast_over_six_starts_with_the_largest_power_of_two_below():
    """Round 1: d0 -> d4 (4, the largest power of two below 6); round 2: d0 -> d2 (d4 + 2
    is past the end); round 3: every holder to its neighbour. Over four: d0 -> d2, then
    each holder to its neighbour."""
    r = "x tree bcast round "
    assert sends(C.tree_broadcast, names(6)) == [
        (r + "1", "d0", "d4", 8.0), (r + "2", "d0", "d2", 8.0),
        (r + "3", "d0", "d1", 8.0), (r + "3", "d2", "d3", 8.0), (r + "3", "d4", "d5", 8.0)]
    assert sends(C.tree_broadcast, names(4)) == [  # a power of two: 2 rounds, none empty
        (r + "1", "d0", "d2", 8.0), (r + "2", "d0", "d1", 8.0), (r + "2", "d2", "d3", 8.0)]


def test_a_binomial_reduce_over_five_folds_pairs_then_pairs_of_pairs():
    r = "x tree reduce round "
    assert sends(C.tree_reduce, names(5)) == [
        (r + "1", "d1", "d0", 8.0), (r + "1", "d3", "d2", 8.0),
        (r + "2", "d2", "d0", 8.0), (r + "3", "d4", "d0", 8.0)]


#: Halving-doubling among d1, d3, d4, d5: partners one apart (mask 1), two apart (mask 2).
PARTNERS = {1: [("d1", "d3"), ("d3", "d1"), ("d4", "d5"), ("d5", "d4")],
            2: [("d1", "d4"), ("d3", "d5"), ("d4", "d1"), ("d5", "d3")]}


def _round(label, mask, size):
    return [(label, a, b, size) for a, b in PARTNERS[mask]]


def test_halving_doubling_over_six_folds_the_first_two_pairs_into_a_power_of_two():
    """n = 6, p = 4, r = 2: d0 and d2 hand all of S to d1 and d3 and sit out; d1, d3, d4,
    d5 halve (S/2 to the partner one apart, then S/4 two apart) and double back; then d1
    and d3 send the result to d0 and d2."""
    assert sends(C.halving_doubling_all_reduce, names(6)) == (
        [("x hd fold", "d0", "d1", 8.0), ("x hd fold", "d2", "d3", 8.0)]
        + _round("x hd rs step 1", 1, 4.0) + _round("x hd rs step 2", 2, 2.0)
        + _round("x hd ag step 1", 2, 2.0) + _round("x hd ag step 2", 1, 4.0)
        + [("x hd unfold", "d1", "d0", 8.0), ("x hd unfold", "d3", "d2", 8.0)])


def test_devices_on_a_line_are_groups_of_their_own():
    """a - b - c, devices only: no access point or switch to share, so no device joins
    another's group (a and c have one neighbour, but it is a device)."""
    devs = pool(["a", "b", "c"])
    net = links(devs, [{"a": "a", "b": "b", "bandwidth": 1e6}, {"a": "b", "b": "c",
                                                                 "bandwidth": 1e6}])
    assert C.groups_by_hop(net, ["a", "b", "c"]) == [["a"], ["b"], ["c"]]
