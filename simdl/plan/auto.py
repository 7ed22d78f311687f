"""What `auto` means in a strategy's parameters: the planner's own programs and
estimator, run on the devices the user chose.

`cuts: auto` cuts the chain over the stages in the order given by the exact ordered
program (`plan.partition.ordered`) for the planner's throughput objective: the
fewest seconds per request on the busiest unit or link, links and memory included.
`cut: auto` (offload) takes the cut whose request, alone, the estimator's timeline
finishes first.
"""
from __future__ import annotations

from simdl.errors import PlanError
from simdl.plan.costs import Costs
from simdl.plan.partition import ordered
from simdl.plan.plan import Plan
from simdl.plan.space import HOW, Menu, Space
from simdl.plan.timeline import finish, lone
from simdl.plan.world import World


def auto_cuts(world: World, groups: list[tuple[str, ...]], microbatches: int,
              costs: Costs | None = None) -> list[int]:
    """The first block of every stage after the first, for stages on `groups` in order
    (each a device or a tensor-parallel group): the planner's best for throughput.
    PlanError when no cuts fit the devices' memory."""
    pool = tuple(dict.fromkeys(d for g in groups for d in g))
    menu = Menu(costs or Costs(world), Space(devices=pool, group=max(map(len, groups))),
                microbatches)
    index = {o.devices: g for g, o in enumerate(menu.options)
             if o.unit is None and not o.units and o.dtype == "fp32"}
    order = [index[g] for g in groups]
    objective = "throughput"
    best = ordered([menu.matrix(g, objective) for g in order],
                   [menu.link(a, b, objective) for a, b in zip(order, order[1:])],
                   menu.link(None, order[0], objective), menu.link(order[-1], None, objective),
                   menu.nbytes(objective), HOW[objective])
    if not best.stages:
        raise PlanError("cuts", "auto", "cuts for which every stage fits its devices' memory; "
                        "none exists over these devices in this order: add or change devices, "
                        "or give cuts")
    return [start for _, start, _ in best.stages[1:]]


def alone(plan: Plan, costs: Costs) -> float:
    """Seconds one request takes on the first replica with the pool to itself."""
    batch = costs.world.workload.batch
    return finish(lone(plan, plan.replicas[0], batch, costs), costs).latency
