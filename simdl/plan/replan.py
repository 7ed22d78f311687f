"""Re-planning when the pool changes: the new plan and the weights that must move.

Given the plan that runs now and the world as it is after a change (a device gone or
added, a link slower), `replan` searches the new world, keeps the current plan when
it still runs and the new one is not better by `min_gain`, and lists the weights each
device of the new plan lacks: from the nearest device that holds them now (the same
blocks at the same precision, or the whole block for a shard of it), else from the
source, which keeps the model. Knows plans, the search and routes; not the clock
(the churn code calls it during a run).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace

from simdl.errors import PlanError
from simdl.hw.network import Network
from simdl.plan.costs import Costs
from simdl.plan.estimate import estimate, transfer_time
from simdl.plan.plan import Plan, Stage, check, shard_stage, shard_weights
from simdl.plan.search import Objective, Search, breaks, score, search, weights_of
from simdl.plan.space import Limits, Space
from simdl.plan.world import World

#: One piece of weights a device holds: (model, block, dtype, prune, sparsity, part)
#: with part (members, index) for a tensor-parallel shard, () for the whole block.
Piece = tuple


@dataclass(frozen=True)
class Move:
    """Weights of `block` (as `piece` describes them) sent from `src` to `dst`."""

    src: str
    dst: str
    block: int
    nbytes: float


@dataclass(frozen=True)
class Replan:
    """The plan to run now, the moves that realise it (`nbytes` in all, `seconds` if every
    pair of devices sends at once, each pair's flow alone on its route), whether the
    current plan was `kept`, and the search behind it."""

    plan: Plan
    moves: tuple[Move, ...]
    nbytes: float
    seconds: float
    kept: bool
    found: Search


def replan(current: Plan, world: World, objective: Objective = "throughput",
           space: Space | None = None, limits: Limits | None = None, *, min_gain: float = 0.0,
           exact_up_to: int = 8) -> Replan:
    """The plan for the changed `world`, and what must move to switch to it.

    The current plan is kept while every device it uses is still in the pool, it still
    fits, and the new best does not beat its score by more than `min_gain` (a fraction).
    """
    if not min_gain >= 0:
        raise PlanError("min_gain", min_gain, "a fraction >= 0")
    space, limits = space or Space(), limits or Limits()
    space = replace(space, devices=tuple(d for d in space.devices or world.devices
                                         if d in world.devices))
    costs = Costs(world)
    found = search(world, objective, space, limits, exact_up_to=exact_up_to, costs=costs)
    best = found.best
    if _runs(current, world):
        now = estimate(current, world, costs)
        if breaks(now, limits) is None:
            mine, theirs = score([now, best.estimate], weights_of(objective))
            if theirs >= mine * (1 - min_gain):
                return Replan(current, (), 0.0, 0.0, True, found)
    moves = weights_to_move(current, best.plan, world)
    pairs: dict[tuple[str, str], float] = defaultdict(float)
    for m in moves:
        pairs[(m.src, m.dst)] += m.nbytes
    seconds = max((transfer_time(world, a, b, nb) for (a, b), nb in pairs.items()), default=0.0)
    return Replan(best.plan, tuple(moves), sum(m.nbytes for m in moves), seconds, False, found)


def without(world: World, gone: Iterable[str]) -> World:
    """The world after devices left: the pool without them and the network without
    their links (no route may relay through a device that is gone)."""
    gone = set(gone)
    for d in sorted(gone):
        world.known("gone", d)
    net = world.network
    kinds = {n: k for n, k in net.graph.nodes(data="kind") if n not in gone}
    media = {r: c for r, c in net.capacity.items() if ">" not in r}
    kept = [link for link in net.links if link.a not in gone and link.b not in gone]
    return replace(world, devices={d: s for d, s in world.devices.items() if d not in gone},
                   network=Network(kinds, kept, media, net.overhead, net.sharing))


def slower(world: World, a: str, b: str, factor: float) -> World:
    """The world with the link between `a` and `b` (both directions) `factor` times slower."""
    if not factor >= 1:
        raise PlanError("factor", factor, "a slowdown >= 1")
    net, found = world.network, False
    links = []
    for link in net.links:
        if {link.a, link.b} == {a, b}:
            found = True
            link = replace(link, bandwidth=link.bandwidth / factor, bandwidth_back=None
                           if link.bandwidth_back is None else link.bandwidth_back / factor)
        links.append(link)
    if not found:
        raise PlanError("link", f"{a}-{b}", "a link of the network (nodes it joins directly)")
    kinds = dict(net.graph.nodes(data="kind"))
    media = {r: c for r, c in net.capacity.items() if ">" not in r}
    return replace(world, network=Network(kinds, links, media, net.overhead, net.sharing))


def weights_to_move(current: Plan, new: Plan, world: World) -> list[Move]:
    """What each device of `new` must receive: the pieces it holds there and not under
    `current`, each from the closest current holder still in the pool, else the source."""
    had = _pieces(current, world)
    need = _pieces(new, world)
    moves = []
    for dst in sorted(need):
        for piece, nbytes in sorted(need[dst].items(), key=lambda kv: repr(kv[0])):
            if piece in had.get(dst, {}) or _whole(piece) in had.get(dst, {}):
                continue
            holders = [d for d, held in had.items() if d != dst and d in world.devices
                       and (piece in held or _whole(piece) in held)]
            src = min(holders, key=lambda d: (transfer_time(world, d, dst, nbytes), d),
                      default=new.source)
            if src != dst:
                moves.append(Move(src, dst, piece[1], float(nbytes)))
    return moves


def _pieces(plan: Plan, world: World) -> dict[str, dict[Piece, float]]:
    """Device -> the weight pieces it holds under `plan`, with their bytes."""
    out: dict[str, dict[Piece, float]] = defaultdict(dict)
    costs = Costs(world)
    for rep in plan.replicas:
        if rep.model not in world.models:
            continue
        for s in rep.stages:
            if len(s.devices) == 1:
                per = costs.weights(s.dtype, s.prune, s.sparsity, rep.model)
                for b in range(s.start, s.stop):
                    out[s.device][(rep.model, b, s.dtype, s.prune, s.sparsity, ())] = float(per[b])
                continue
            chain = world.models[rep.model]
            for b in range(s.start, s.stop):
                held = shard_weights(shard_stage(chain, Stage(s.devices, b, b + 1, split=s.split)),
                                     len(s.devices))
                for i, (d, nbytes) in enumerate(zip(s.devices, held)):
                    out[d][(rep.model, b, s.dtype, s.prune, s.sparsity,
                            (s.devices, s.split, i))] = float(nbytes)
    return out


def _whole(piece: Piece) -> Piece:
    return (*piece[:5], ())


def _runs(plan: Plan, world: World) -> bool:
    """Whether `plan` can still run in `world`: its devices are there, routes and memory hold."""
    if any(d not in world.devices for d in plan.devices) or plan.source not in world.devices:
        return False
    try:
        check(plan, world)
    except PlanError:
        return False
    return True
