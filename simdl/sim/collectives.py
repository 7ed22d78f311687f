"""Collectives (all-reduce, all-gather, reduce-scatter, broadcast, reduce, gather) as
point-to-point transfers on the simulated network, so shared links and airtime contend.

Timing and bytes only: the caller does the sums and concatenations on its arrays. Each
algorithm is a plain function that writes its rounds of sends into a Schedule (one dict
entry in ALGORITHMS); one generator runs any schedule. Knows nothing of layers or plans.

Cost formulas use the alpha-beta model of Thakur, Rabenseifner & Gropp, "Optimization of
Collective Communication Operations in MPICH", IJHPCA 19(1), 2005: a message of m bytes
costs alpha + m / B, here alpha = route latency + the network's per-message overhead. The
reduction arithmetic (their gamma term) takes no simulated time here.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import simpy

from simdl.errors import PlanError
from simdl.hw.network import Network

if TYPE_CHECKING:
    from simdl.sim.engine import Simulator


class Send(NamedTuple):
    """One transfer of a schedule; it starts once the transfers `deps` (indices) arrived."""

    src: str
    dst: str
    nbytes: float
    label: str
    deps: tuple[int, ...]


class Schedule:
    """The sends of a collective in program order, each with what it waits for.

    A member works in rounds: its sends of one round go out together, once its sends of
    its previous round have arrived and everything it received since (or in that round)
    has arrived. So a step ends per member when it has both sent and received (as
    MPI_Sendrecv), with no barrier across members. Receives are never serialised: a
    message flows as soon as its sender is ready, and the network shares the links.
    """

    def __init__(self, label: str = "", network: Network | None = None):
        self.label, self.network = label, network
        self.sends: list[Send] = []
        self._after: dict[str, list[int]] = {}  # member -> what its next send waits for

    def sub(self, tag: str) -> Schedule:
        """The same schedule, its labels prefixed by `tag` (for a phase or a group)."""
        view = copy.copy(self)
        view.label = _join(self.label, tag)
        return view

    def round(self, what: str, pairs: Iterable[tuple[str, str, float]]) -> None:
        """Add one round of (src, dst, nbytes) sends, labelled `label what`."""
        label, first = _join(self.label, what), len(self.sends)
        for src, dst, nbytes in pairs:
            self.sends.append(Send(src, dst, float(nbytes), label,
                                   tuple(self._after.get(src, ()))))
        touched: dict[str, list[int]] = {}
        sent: dict[str, None] = {}
        for j in range(first, len(self.sends)):
            src, dst = self.sends[j].src, self.sends[j].dst
            touched.setdefault(src, []).append(j)
            touched.setdefault(dst, []).append(j)
            sent[src] = None
        for member, js in touched.items():
            # A sender's earlier rounds are behind this one's sends; a pure receiver
            # keeps waiting for what it had, plus what came now.
            self._after[member] = js if member in sent else self._after.get(member, []) + js


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


# -- ring (Patarasuk & Yuan 2009; Thakur et al. 2005) ----------------------------------------

def ring_reduce_scatter(s: Schedule, devices: Sequence[str], nbytes: float) -> None:
    """n - 1 steps; in each, every member sends one chunk of S/n to the next member.
    T = (n-1)(alpha + S/(n B)); each member sends (n-1)/n S."""
    n = len(devices)
    for k in range(1, n):
        s.round(f"ring rs step {k}", ((devices[i], devices[(i + 1) % n], nbytes / n)
                                      for i in range(n)))


def ring_all_gather(s: Schedule, devices: Sequence[str], nbytes: float) -> None:
    """`nbytes` is the gathered size S, each member holding S/n. n - 1 steps of S/n to
    the next member: T = (n-1)(alpha + S/(n B)); each member sends (n-1)/n S."""
    n = len(devices)
    for k in range(1, n):
        s.round(f"ring ag step {k}", ((devices[i], devices[(i + 1) % n], nbytes / n)
                                      for i in range(n)))


def ring_all_reduce(s: Schedule, devices: Sequence[str], nbytes: float) -> None:
    """Ring reduce-scatter then ring all-gather: 2(n-1) steps of S/n, each member sends
    2(n-1)/n S, the bandwidth lower bound (Patarasuk & Yuan, "Bandwidth optimal
    all-reduce algorithms for clusters of workstations", JPDC 69(2), 2009). On a ring of
    dedicated links T = 2(n-1)(alpha + S/(n B))."""
    ring_reduce_scatter(s, devices, nbytes)
    ring_all_gather(s, devices, nbytes)


# -- binomial trees (MPICH's bcast / reduce / gather); devices[0] is the root -----------------

def tree_broadcast(s: Schedule, devices: Sequence[str], nbytes: float) -> None:
    """Binomial tree: in round r every member that has the data sends it to one more.
    ceil(log2 n) rounds, T = ceil(log2 n)(alpha + S/B) without contention."""
    n = len(devices)
    mask = 1 << ((n - 1).bit_length() - 1) if n > 1 else 0  # the largest power of two < n
    k = 1
    while mask:
        s.round(f"tree bcast round {k}", ((devices[v], devices[v + mask], nbytes)
                                          for v in range(0, n, 2 * mask) if v + mask < n))
        mask, k = mask >> 1, k + 1


def tree_reduce(s: Schedule, devices: Sequence[str], nbytes: float) -> None:
    """Binomial tree towards the root, each member sending S once its subtree's sums have
    arrived: at most ceil(log2 n) rounds, T <= ceil(log2 n)(alpha + S/B)."""
    _binomial_up(s, devices, lambda _v, _mask: nbytes, "tree reduce")


def tree_gather(s: Schedule, devices: Sequence[str], nbytes: float) -> None:
    """Binomial gather of S (S/n per member): a member forwards its whole subtree's part,
    T <= ceil(log2 n) alpha + (n-1)/n S/B without contention."""
    n = len(devices)
    _binomial_up(s, devices, lambda v, mask: min(mask, n - v) * nbytes / n, "tree gather")


def _binomial_up(s: Schedule, devices: Sequence[str], size: Callable[[int, int], float],
                 what: str) -> None:
    n, mask, k = len(devices), 1, 1
    while mask < n:
        s.round(f"{what} round {k}", ((devices[v], devices[v - mask], size(v, mask))
                                      for v in range(mask, n, 2 * mask)))
        mask, k = mask << 1, k + 1


def tree_all_reduce(s: Schedule, devices: Sequence[str], nbytes: float) -> None:
    """Binomial reduce to devices[0], then binomial broadcast: every message is all of S.
    T = 2 log2(n)(alpha + S/B) for n a power of two without contention."""
    tree_reduce(s, devices, nbytes)
    tree_broadcast(s, devices, nbytes)


# -- flat: the root talks to every member in one round ---------------------------------------

def flat_broadcast(s: Schedule, devices: Sequence[str], nbytes: float) -> None:
    """The root sends S to every member at once; its own link is shared by n - 1 flows."""
    s.round("flat bcast", ((devices[0], d, nbytes) for d in devices[1:]))


def flat_reduce(s: Schedule, devices: Sequence[str], nbytes: float) -> None:
    """Every member sends S to the root at once."""
    s.round("flat reduce", ((d, devices[0], nbytes) for d in devices[1:]))


def flat_gather(s: Schedule, devices: Sequence[str], nbytes: float) -> None:
    """Every member sends its S/n to the root at once: (n-1)/n S into the root."""
    s.round("flat gather", ((d, devices[0], nbytes / len(devices)) for d in devices[1:]))


# -- star: every member talks to the root only (distributed-llama, github.com/b4rtaz) ---------

def star_all_reduce(s: Schedule, devices: Sequence[str], nbytes: float) -> None:
    """Each member sends S to the root, which sums and sends S back: two syncs per member
    (distributed-llama's root is also a worker). Each member sends S and receives S, the
    root (n-1) S each way. On dedicated links T = 2(alpha + S/B)."""
    flat_reduce(s.sub("star"), devices, nbytes)
    flat_broadcast(s.sub("star"), devices, nbytes)


def star_all_gather(s: Schedule, devices: Sequence[str], nbytes: float) -> None:
    """Each member sends its S/n to the root, which sends back the (n-1)/n S it lacks."""
    flat_gather(s.sub("star"), devices, nbytes)
    back = nbytes * (len(devices) - 1) / len(devices)
    s.round("star back", ((devices[0], d, back) for d in devices[1:]))


# -- recursive halving and doubling (Rabenseifner; Thakur et al. 2005) ------------------------

def halving_doubling_all_reduce(s: Schedule, devices: Sequence[str], nbytes: float) -> None:
    """Reduce-scatter by recursive halving (partners 1, 2, 4, ... apart; S/2, S/4, ...,
    S/p), then all-gather by recursive doubling (the same in reverse), as MPICH does.
    For p = n a power of two: T = 2 log2(p) alpha + 2(p-1)/p S/B; each sends 2(p-1)/p S.

    Otherwise p = 2^floor(log2 n), r = n - p: first the even members among the first 2r
    send all of S to the next member and sit out; at the end those partners send the
    result (S) back. That adds 2(alpha + S/B) to T: the r folded members send S, their
    partners 2(p-1)/p S + S, the others 2(p-1)/p S.
    """
    n = len(devices)
    p = 1 << (n.bit_length() - 1)
    r = n - p
    if r:
        s.round("hd fold", ((devices[2 * i], devices[2 * i + 1], nbytes) for i in range(r)))
    active = [devices[2 * i + 1] for i in range(r)] + list(devices[2 * r:])
    mask, size, k = 1, nbytes / 2, 1
    while mask < p:
        s.round(f"hd rs step {k}", ((active[a], active[a ^ mask], size) for a in range(p)))
        mask, size, k = mask << 1, size / 2, k + 1
    mask, size, k = p >> 1, nbytes / p, 1
    while mask:
        s.round(f"hd ag step {k}", ((active[a], active[a ^ mask], size) for a in range(p)))
        mask, size, k = mask >> 1, size * 2, k + 1
    if r:
        s.round("hd unfold", ((devices[2 * i + 1], devices[2 * i], nbytes) for i in range(r)))


# -- hierarchical: inside groups, then among their leaders ------------------------------------

def groups_by_hop(network: Network, devices: Sequence[str]) -> list[list[str]]:
    """Devices grouped by their first hop: a device whose only neighbour is an access point
    or switch joins that node's group; any other device is a group of its own. Groups and
    members keep the order of `devices`."""
    graph = network.graph
    groups: dict[str, list[str]] = {}
    for d in devices:
        if d not in graph:
            raise PlanError("collective.devices", d,
                            f"not a node of this network; devices: {', '.join(network.devices)}")
        hops = list(graph.adj[d])
        key = hops[0] if len(hops) == 1 and graph.nodes[hops[0]]["kind"] != "device" else d
        groups.setdefault(key, []).append(d)
    return list(groups.values())


def hierarchical_all_reduce(s: Schedule, devices: Sequence[str], nbytes: float,
                            groups: Sequence[Sequence[str]] | None = None,
                            inner: str = "tree", outer: str = "ring") -> None:
    """Reduce inside each group to its first member (the leader), all-reduce among the
    leaders, broadcast inside each group. `groups` defaults to groups_by_hop; `inner`
    names a reduce and broadcast algorithm, `outer` an all-reduce one. Only the leaders'
    all-reduce leaves a group: with g groups and a ring, 2(g-1)/g S per leader. Groups
    run side by side: T = max T_reduce(group) + T_outer(leaders) + max T_bcast(group)
    when the groups are alike."""
    if groups is None:
        if s.network is None:
            raise PlanError("groups", None, "give the groups, or run on a network")
        groups = groups_by_hop(s.network, devices)
    groups = [list(g) for g in groups]
    flat = [d for g in groups for d in g]
    if sorted(flat) != sorted(devices) or any(not g for g in groups):
        raise PlanError("groups", groups,
                        "must split the collective's devices: each in exactly one group")
    up, down = _algorithm("reduce", inner), _algorithm("broadcast", inner)
    if outer == "hierarchical":
        raise PlanError("outer", outer, "the leaders need a flat all-reduce algorithm")
    among = _algorithm("all_reduce", outer)
    for k, group in enumerate(groups):
        up(s.sub(f"group {k}"), group, nbytes)
    among(s.sub("leaders"), [g[0] for g in groups], nbytes)
    for k, group in enumerate(groups):
        down(s.sub(f"group {k}"), group, nbytes)


Algorithm = Callable[..., None]  # (schedule, devices, nbytes, **params); rooted: devices[0]

ALGORITHMS: dict[str, dict[str, Algorithm]] = {
    "all_reduce": {"ring": ring_all_reduce, "tree": tree_all_reduce,
                   "halving_doubling": halving_doubling_all_reduce,
                   "hierarchical": hierarchical_all_reduce, "star": star_all_reduce},
    "all_gather": {"ring": ring_all_gather, "star": star_all_gather},
    "reduce_scatter": {"ring": ring_reduce_scatter},
    "broadcast": {"flat": flat_broadcast, "tree": tree_broadcast},
    "reduce": {"flat": flat_reduce, "tree": tree_reduce},
    "gather": {"flat": flat_gather, "tree": tree_gather},
}


def _algorithm(collective: str, name: str) -> Algorithm:
    try:
        return ALGORITHMS[collective][name]
    except KeyError:
        raise PlanError(f"{collective}.algorithm", name,
                        f"choose one of: {', '.join(sorted(ALGORITHMS[collective]))}") from None


# -- running a schedule ------------------------------------------------------------------------

def _launch(sim: Simulator, collective: str, algorithm: str, devices: Sequence[str],
            root: str | None, nbytes: float, label: str, request: int, step: int,
            params: dict[str, Any]) -> simpy.Process:
    build = _algorithm(collective, algorithm)
    members = list(devices)
    if not members or len(set(members)) != len(members):
        raise PlanError(f"{collective}.devices", members, "one or more distinct devices")
    if not 0 <= nbytes < math.inf:
        raise PlanError(f"{collective}.nbytes", nbytes, "a finite size >= 0 bytes")
    if root is not None:
        if root not in members:
            raise PlanError(f"{collective}.root", root, "must be one of the devices")
        at = members.index(root)
        members = members[at:] + members[:at]  # ranks relative to the root, as MPICH's
    s = Schedule(label, sim.network)
    if len(members) > 1:
        if sim.network is None:
            raise PlanError("network", None, "a collective needs a network; give the pool one")
        for d in members:
            if d not in sim.network.graph:
                raise PlanError(f"{collective}.devices", d, "not a node of this network; "
                                f"devices: {', '.join(sim.network.devices)}")
        build(s, members, nbytes, **params)
        for send in s.sends:  # a missing route fails here, not in the middle of a run
            sim.network.route(send.src, send.dst)
    return sim.process(_run(sim, s.sends, request, step))


def _run(sim: Simulator, sends: Sequence[Send], request: int,
         step: int) -> Generator[simpy.Event, Any, None]:
    """Start each send once the sends it waits for have arrived; done when all have.
    The first transfer that fails (a device left) fails the collective; no more start."""
    if not sends:
        return
    waiting = [len(t.deps) for t in sends]
    dependants: list[list[int]] = [[] for _ in sends]
    for j, t in enumerate(sends):
        for d in t.deps:
            dependants[d].append(j)
    done = sim.env.event()
    left = len(sends)

    def start(j: int) -> None:
        t = sends[j]
        event = sim.transfer(t.src, t.dst, t.nbytes, label=t.label, request=request, step=step)
        event.callbacks.append(lambda ev: arrived(j, ev))

    def arrived(j: int, event: simpy.Event) -> None:
        nonlocal left
        if not event.ok:
            event.defused = True  # reported once, through `done`
            if not done.triggered:
                done.fail(event.value)
            return
        if done.triggered:
            return
        left -= 1
        if left == 0:
            done.succeed()
        for k in dependants[j]:
            waiting[k] -= 1
            if waiting[k] == 0:
                start(k)

    for j, w in enumerate(waiting):
        if w == 0:
            start(j)
    yield done


# -- the collectives -----------------------------------------------------------------------------

def all_reduce(sim: Simulator, devices: Sequence[str], nbytes: float, algorithm: str = "ring",
               *, label: str = "", request: int = -1, step: int = -1,
               **params: Any) -> simpy.Process:
    """Every member ends with the sum of all members' S = `nbytes` vectors. `params` go
    to the algorithm (hierarchical: groups, inner, outer)."""
    return _launch(sim, "all_reduce", algorithm, devices, None, nbytes, label, request, step,
                   params)


def all_gather(sim: Simulator, devices: Sequence[str], nbytes_total: float,
               algorithm: str = "ring", *, label: str = "", request: int = -1, step: int = -1,
               **params: Any) -> simpy.Process:
    """Every member ends with all S = `nbytes_total` bytes; each starts with S/n."""
    return _launch(sim, "all_gather", algorithm, devices, None, nbytes_total, label, request,
                   step, params)


def reduce_scatter(sim: Simulator, devices: Sequence[str], nbytes: float,
                   algorithm: str = "ring", *, label: str = "", request: int = -1,
                   step: int = -1, **params: Any) -> simpy.Process:
    """Each member holds S = `nbytes`; it ends with its 1/n of the sum (S/n bytes)."""
    return _launch(sim, "reduce_scatter", algorithm, devices, None, nbytes, label, request,
                   step, params)


def broadcast(sim: Simulator, root: str, devices: Sequence[str], nbytes: float,
              algorithm: str = "tree", *, label: str = "", request: int = -1, step: int = -1,
              **params: Any) -> simpy.Process:
    """Every member ends with the root's S = `nbytes` bytes."""
    return _launch(sim, "broadcast", algorithm, devices, root, nbytes, label, request, step,
                   params)


def reduce(sim: Simulator, root: str, devices: Sequence[str], nbytes: float,
           algorithm: str = "tree", *, label: str = "", request: int = -1, step: int = -1,
           **params: Any) -> simpy.Process:
    """The root ends with the sum of all members' S = `nbytes` vectors."""
    return _launch(sim, "reduce", algorithm, devices, root, nbytes, label, request, step, params)


def gather(sim: Simulator, root: str, devices: Sequence[str], nbytes_total: float,
           algorithm: str = "flat", *, label: str = "", request: int = -1, step: int = -1,
           **params: Any) -> simpy.Process:
    """The root ends with all S = `nbytes_total` bytes; each member starts with S/n."""
    return _launch(sim, "gather", algorithm, devices, root, nbytes_total, label, request, step,
                   params)


COLLECTIVES: dict[str, Callable[..., simpy.Process]] = {
    "all_reduce": all_reduce, "all_gather": all_gather, "reduce_scatter": reduce_scatter,
    "broadcast": broadcast, "reduce": reduce, "gather": gather,
}
