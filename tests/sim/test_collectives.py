"""Collectives against closed forms (Thakur et al. 2005; Patarasuk & Yuan 2009) and hand
computations, on tiny pools. alpha is the route latency, o the per-message overhead."""
import math

import pytest

from simdl.errors import DeviceGone, PlanError
from simdl.hw.devices import DeviceSpec, UnitSpec
from simdl.hw.topologies import links, wifi_star
from simdl.sim import collectives as C
from simdl.sim.engine import Simulator

B, ALPHA, O, S = 1e6, 1e-3, 1e-4, 1.2e6  # bytes/s, s, s, bytes


def device(wifi=1e7):
    unit = UnitSpec(kind="cpu", peak={"fp32": 1e9}, efficiency=0.5, overhead=0.0,
                    active_power=2.0)
    return DeviceSpec(type="test", label="test device", units={"cpu": unit}, memory=1e9,
                      mem_bw=1e9, idle_power=1.0, radio_tx_power=0.5, radio_rx_power=0.25,
                      battery=None, background=0.0, interfaces={"wifi": wifi})


def pool(names):
    return {d: device() for d in names}


def names(n):
    return [f"d{i}" for i in range(n)]


def ring_sim(n, bandwidth=B, latency=ALPHA, overhead=O):
    """d0 - d1 - ... - d(n-1) - d0: one full-duplex link per neighbour pair."""
    devs = pool(names(n))
    pairs = {tuple(sorted((f"d{i}", f"d{(i + 1) % n}"))) for i in range(n)}
    return Simulator(devs, links(devs, [{"a": a, "b": b, "bandwidth": bandwidth,
                                         "latency": latency} for a, b in sorted(pairs)],
                                 overhead=overhead))


def mesh_sim(n, bandwidth=B, latency=ALPHA, overhead=O):
    """A dedicated full-duplex link between every pair."""
    devs = pool(names(n))
    ns = names(n)
    return Simulator(devs, links(devs, [{"a": a, "b": b, "bandwidth": bandwidth,
                                         "latency": latency}
                                        for i, a in enumerate(ns) for b in ns[i + 1:]],
                                 overhead=overhead))


def two_switches(members_a, members_b, fast=1e8, slow=1e7, latency=1e-4, slow_latency=1e-3,
                 overhead=O):
    """members_a on switch sA, members_b on sB, the switches joined by a slow link."""
    devs = pool(list(members_a) + list(members_b))
    ls = [{"a": d, "b": sw, "bandwidth": fast, "latency": latency}
          for sw, group in (("sA", members_a), ("sB", members_b)) for d in group]
    ls.append({"a": "sA", "b": "sB", "bandwidth": slow, "latency": slow_latency})
    return Simulator(devs, links(devs, ls, overhead=overhead))


def finish(sim, proc):
    """Run to the end; the instant the collective completed (stale wake-ups may run later)."""
    at = []
    proc.callbacks.append(lambda _: at.append(sim.now))
    sim.run()
    assert proc.ok
    return at[0]


def transfers(sim):
    log = sim.log.frame()
    return log[log.kind == "transfer"]


def sent(sim):
    """Bytes each device sent, summed over the log's transfer rows."""
    return transfers(sim).groupby("device").nbytes.sum().to_dict()


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_ring_all_reduce_sends_2_n_minus_1_over_n_S_per_member_in_2_n_minus_1_steps(n):
    """On a ring of dedicated links every step is one chunk of S/n on every link at once:
    T = 2(n-1)(alpha + o + S/(n B)), each member sends 2(n-1)/n S."""
    sim = ring_sim(n)
    t = finish(sim, C.all_reduce(sim, names(n), S, label="grads", request=4, step=9))
    assert t == pytest.approx(2 * (n - 1) * (ALPHA + O + S / (n * B)), rel=1e-12)
    rows = transfers(sim)
    assert len(rows) == 2 * (n - 1) * n
    assert set(rows.request) == {4} and set(rows.step) == {9}
    assert "grads ring rs step 1" in set(rows.label) and f"grads ring ag step {n - 1}" in set(
        rows.label)
    assert sent(sim) == {d: pytest.approx(2 * (n - 1) / n * S, rel=1e-12) for d in names(n)}


@pytest.mark.parametrize("collective", ["all_gather", "reduce_scatter"])
@pytest.mark.parametrize("n", [2, 3, 5])
def test_ring_all_gather_and_reduce_scatter_take_n_minus_1_steps_of_S_over_n(collective, n):
    """T = (n-1)(alpha + o + S/(n B)); each member sends (n-1)/n S."""
    sim = ring_sim(n)
    t = finish(sim, C.COLLECTIVES[collective](sim, names(n), S))
    assert t == pytest.approx((n - 1) * (ALPHA + O + S / (n * B)), rel=1e-12)
    assert sent(sim) == {d: pytest.approx((n - 1) / n * S, rel=1e-12) for d in names(n)}


@pytest.mark.parametrize("n", [4, 8])
def test_halving_doubling_on_a_full_mesh_matches_rabenseifners_closed_form(n):
    """Halving S/2, S/4, ..., S/n then doubling back: T = 2 log2(n)(alpha + o) +
    2(n-1)/n S/B, each member sends 2(n-1)/n S."""
    sim = mesh_sim(n)
    t = finish(sim, C.all_reduce(sim, names(n), S, "halving_doubling"))
    assert t == pytest.approx(2 * math.log2(n) * (ALPHA + O) + 2 * (n - 1) / n * S / B,
                              rel=1e-12)
    assert sent(sim) == {d: pytest.approx(2 * (n - 1) / n * S, rel=1e-12) for d in names(n)}


def test_halving_doubling_folds_the_two_extra_members_of_six():
    """n = 6 -> p = 4, r = 2: d0 and d2 send S to d1 and d3, which join d4 and d5 in the
    4-member algorithm (2 x 3/4 S each) and send S back at the end. T = 2(alpha + o + S/B)
    + 4(alpha + o) + 1.5 S/B."""
    sim = mesh_sim(6)
    t = finish(sim, C.all_reduce(sim, names(6), S, "halving_doubling"))
    assert t == pytest.approx(6 * (ALPHA + O) + 3.5 * S / B, rel=1e-12)
    assert sent(sim) == pytest.approx({"d0": S, "d1": 2.5 * S, "d2": S, "d3": 2.5 * S,
                                       "d4": 1.5 * S, "d5": 1.5 * S}, rel=1e-12)


@pytest.mark.parametrize("n, rounds", [(8, 3), (5, 3), (2, 1)])
def test_binomial_broadcast_takes_ceil_log2_n_rounds_on_a_full_mesh(n, rounds):
    """The root sends to 4, 2, 1 in turn; each member forwards as soon as it has S:
    ceil(log2 n)(alpha + o + S/B). Every member but the root receives S once."""
    sim = mesh_sim(n)
    t = finish(sim, C.broadcast(sim, "d0", names(n), S))
    assert t == pytest.approx(rounds * (ALPHA + O + S / B), rel=1e-12)
    received = transfers(sim).groupby("resource").nbytes.sum().to_dict()
    assert received == {d: S for d in names(n)[1:]}


def test_binomial_broadcast_from_another_root_uses_ranks_relative_to_it():
    """Root d2 of 4: d2 -> d0 (relative rank 2) first, then d2 -> d3 and d0 -> d1."""
    sim = mesh_sim(4)
    finish(sim, C.broadcast(sim, "d2", names(4), S))
    rows = transfers(sim)
    assert list(zip(rows.device, rows.resource)) == [("d2", "d0"), ("d2", "d3"), ("d0", "d1")]


def test_tree_all_reduce_is_a_binomial_reduce_then_a_binomial_broadcast():
    """n = 8 on a full mesh: 3 rounds up, 3 down, each all of S: 6(alpha + o + S/B)."""
    sim = mesh_sim(8)
    t = finish(sim, C.all_reduce(sim, names(8), S, "tree"))
    assert t == pytest.approx(6 * (ALPHA + O + S / B), rel=1e-12)


def test_flat_gather_sends_each_share_to_the_root_at_once():
    """4 members, dedicated links: 3 flows of S/4 in parallel, alpha + o + S/(4B)."""
    sim = mesh_sim(4)
    t = finish(sim, C.gather(sim, "d0", names(4), S))
    assert t == pytest.approx(ALPHA + O + S / (4 * B), rel=1e-12)
    assert sent(sim) == {d: S / 4 for d in ("d1", "d2", "d3")}


GROUP_A, GROUP_B = ["a0", "a1", "a2"], ["b0", "b1", "b2"]


def test_groups_by_hop_groups_devices_behind_the_same_switch():
    sim = two_switches(GROUP_A, GROUP_B)
    assert C.groups_by_hop(sim.network, GROUP_A + GROUP_B) == [GROUP_A, GROUP_B]
    mesh = mesh_sim(3)  # devices with several links are groups of their own
    assert C.groups_by_hop(mesh.network, names(3)) == [["d0"], ["d1"], ["d2"]]


def test_hierarchical_all_reduce_crosses_the_slow_link_only_with_the_leaders_and_wins():
    """Fast 100 MB/s device links (0.1 ms), a 10 MB/s switch link (1 ms), S = 6 MB.
    Hierarchical: a1 and a2 send S to a0 at once, sharing sA>a0: 2a + o + 2S/B_fast; the
    leaders' 2-member ring, 2 steps of S/2 over the slow link: 2(2a + a_s + o + S/(2B_s));
    a0 sends S to a2, then a1: 2(2a + o + S/B_fast). Only a0 <-> b0 cross: S each way.
    A flat ring over all six: every step has one chunk of S/6 on each slow direction and a
    member's steps follow its predecessor's, so 10(2a + a_s + o + S/(6 B_s))."""
    fast, slow, a, a_s, s = 1e8, 1e7, 1e-4, 1e-3, 6e6
    everyone = GROUP_A + GROUP_B
    sim = two_switches(GROUP_A, GROUP_B, fast, slow, a, a_s)
    t_hier = finish(sim, C.all_reduce(sim, everyone, s, "hierarchical", label="g"))
    assert t_hier == pytest.approx((2 * a + O + 2 * s / fast)
                                   + 2 * (2 * a + a_s + O + s / (2 * slow))
                                   + 2 * (2 * a + O + s / fast), rel=1e-12)
    rows = transfers(sim)
    crossing = rows[rows.device.str[0] != rows.resource.str[0]]
    assert list(zip(crossing.device, crossing.resource)) == [("a0", "b0"), ("b0", "a0")] * 2
    assert set(crossing.label) == {"g leaders ring rs step 1", "g leaders ring ag step 1"}
    assert crossing.nbytes.sum() == 2 * s
    over = {r["resource"]: r["bytes"] for r in sim.flows.link_stats()}
    assert (over["sA>sB"], over["sB>sA"]) == (s, s)

    flat = two_switches(GROUP_A, GROUP_B, fast, slow, a, a_s)
    t_ring = finish(flat, C.all_reduce(flat, everyone, s, "ring"))
    assert t_ring == pytest.approx(10 * (2 * a + a_s + O + s / (6 * slow)), rel=1e-12)
    over = {r["resource"]: r["bytes"] for r in flat.flows.link_stats()}
    assert over["sA>sB"] == pytest.approx(10 * s / 6, rel=1e-12)
    assert t_hier < t_ring


def test_hierarchical_takes_explicit_groups_and_other_inner_and_outer_algorithms():
    """Groups {d0, d1}, {d2, d3} on a full mesh; flat inside, halving-doubling outside:
    alpha + o + S/B up, 2(alpha + o) + S/B between the two leaders, alpha + o + S/B down."""
    sim = mesh_sim(4)
    proc = C.all_reduce(sim, names(4), S, "hierarchical", groups=[["d0", "d1"], ["d2", "d3"]],
                        inner="flat", outer="halving_doubling")
    assert finish(sim, proc) == pytest.approx(4 * (ALPHA + O) + 3 * S / B, rel=1e-12)


@pytest.mark.parametrize("n", [2, 3])
def test_a_ring_on_one_wifi_ap_shares_its_airtime(n):
    """Each of the n concurrent flows crosses the airtime A twice, so each gets A/(2n) and
    a chunk of S/n takes 2S/A: T = 2(n-1)(2 lambda + o + 2S/A). The same ring through a
    wired switch (dedicated links of A each way): 2(n-1)(2 lambda + o + S/(n A))."""
    air, lam = 1e7, 1e-3
    devs = pool(names(n))
    sim = Simulator(devs, wifi_star(devs, airtime=air, latency=lam, overhead=O))
    t_wifi = finish(sim, C.all_reduce(sim, names(n), S))
    assert t_wifi == pytest.approx(2 * (n - 1) * (2 * lam + O + 2 * S / air), rel=1e-12)
    wired = Simulator(devs, links(devs, [{"a": d, "b": "sw", "bandwidth": air, "latency": lam}
                                         for d in names(n)], overhead=O))
    t_wired = finish(wired, C.all_reduce(wired, names(n), S))
    assert t_wired == pytest.approx(2 * (n - 1) * (2 * lam + O + S / (n * air)), rel=1e-12)
    assert t_wifi > t_wired


def _popcounts(n):
    return sum(bin(v).count("1") for v in range(n))


#: Total bytes each algorithm moves, by hand: every all-reduce here moves 2(n-1) S in all
#: (halving-doubling's fold 2rS + 2(p-1)S; hierarchical 2(n-g)S inside + 2(g-1)S among
#: leaders); a binomial gather moves member v's S/n over popcount(v) hops.
TOTAL = {
    ("all_reduce", "ring"): lambda n: 2 * (n - 1) * S,
    ("all_reduce", "tree"): lambda n: 2 * (n - 1) * S,
    ("all_reduce", "halving_doubling"): lambda n: 2 * (n - 1) * S,
    ("all_reduce", "hierarchical"): lambda n: 2 * (n - 1) * S,
    ("all_reduce", "star"): lambda n: 2 * (n - 1) * S,
    ("all_gather", "ring"): lambda n: (n - 1) * S,
    ("all_gather", "star"): lambda n: (n - 1) * S,  # (n-1) parts of S/n up, (n-1)/n S down
    ("reduce_scatter", "ring"): lambda n: (n - 1) * S,
    ("broadcast", "flat"): lambda n: (n - 1) * S,
    ("broadcast", "tree"): lambda n: (n - 1) * S,
    ("reduce", "flat"): lambda n: (n - 1) * S,
    ("reduce", "tree"): lambda n: (n - 1) * S,
    ("gather", "flat"): lambda n: (n - 1) / n * S,
    ("gather", "tree"): lambda n: _popcounts(n) / n * S,
}
ROOTED = {"broadcast", "reduce", "gather"}
ENTRIES = sorted((c, a) for c, algs in C.ALGORITHMS.items() for a in algs)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("collective, algorithm", ENTRIES)
def test_every_algorithm_completes_and_moves_its_bytes(collective, algorithm, n):
    """Members alternate between two switches (so hierarchical has two groups); n = 1
    completes at once with no transfer. Every row carries the label and the ids."""
    ns = names(n)
    sim = two_switches(ns[0::2], ns[1::2])
    head = (ns[-1],) if collective in ROOTED else ()
    proc = C.COLLECTIVES[collective](sim, *head, ns, S, algorithm, label="x", request=1, step=2)
    t = finish(sim, proc)
    rows = transfers(sim)
    assert rows.nbytes.sum() == pytest.approx(TOTAL[collective, algorithm](n), rel=1e-12)
    if n == 1:
        assert t == 0.0 and rows.empty
    else:
        assert t > 0 and set(rows.request) == {1} and set(rows.step) == {2}
        assert rows.label.str.startswith("x ").all()


def test_the_same_collective_twice_gives_the_same_log():
    logs = []
    for _ in range(2):
        sim = two_switches(["d0", "d2", "d4"], ["d1", "d3"])
        finish(sim, C.all_reduce(sim, names(5), S, "hierarchical"))
        logs.append(sim.log.rows)
    assert logs[0] == logs[1]


def test_a_member_leaving_fails_the_collective_once_with_device_gone():
    """d1 leaves during the first step of a 3-ring: its two flows are lost, the caller
    hears DeviceGone at once, d2 -> d0 still arrives, and no later step starts."""
    sim = ring_sim(3)
    seen = []

    def caller():
        try:
            yield C.all_reduce(sim, names(3), S, label="g")
        except DeviceGone as gone:
            seen.append((sim.now, gone.device))

    def unplug():
        yield sim.env.timeout(0.1)
        sim.leave("d1", "unplugged")

    sim.process(caller())
    sim.process(unplug())
    sim.run()
    assert seen == [(0.1, "d1")]
    log = sim.log.frame()
    assert (log.kind == "lost").sum() == 2
    rows = transfers(sim)
    assert list(zip(rows.device, rows.resource, rows.t_start)) == [("d2", "d0", 0.0)]


def test_bad_calls_name_the_field_the_value_and_the_choices():
    sim = mesh_sim(3)
    with pytest.raises(PlanError, match=r"^all_reduce\.algorithm: 'rign' is not valid; "
                       r"choose one of: halving_doubling, hierarchical, ring, star, tree$"):
        C.all_reduce(sim, names(3), S, "rign")
    with pytest.raises(PlanError, match=r"^broadcast\.root: 'd9'"):
        C.broadcast(sim, "d9", names(3), S)
    with pytest.raises(PlanError, match=r"^all_gather\.devices: .*distinct"):
        C.all_gather(sim, ["d0", "d0"], S)
    with pytest.raises(PlanError, match=r"^groups: .*each in exactly one group"):
        C.all_reduce(sim, names(3), S, "hierarchical", groups=[["d0"], ["d1"]])
    with pytest.raises(PlanError, match=r"^all_reduce\.devices: 'zz' is not valid; not a node"):
        C.all_reduce(sim, ["d0", "zz"], S)
