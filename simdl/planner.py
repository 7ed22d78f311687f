"""The planner at the edge: the search's best candidates re-scored by simulation, and
the estimator checked against the simulator.

`plan.search` ranks plans by the analytic estimate (it may not run simpy); this
module runs the top few on the simulator, exactly as `api.run` runs a strategy,
and returns the simulated winner. Knows plans, the simulator and the tables.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from simdl.plan.estimate import Estimate, estimate
from simdl.plan.plan import Plan, check
from simdl.plan.search import Objective, Search, search, weights_of
from simdl.plan.space import Limits, Space
from simdl.plan.world import Arrival, Inference, World
from simdl.report import tables
from simdl.sim.engine import Simulator
from simdl.sim.inference import execute
from simdl.sim.stages import prepare


@dataclass(frozen=True)
class Measured:
    """What the simulator reports for a plan: the summary's figures and, per device and
    link, the tables' (same units as `Estimate`: seconds, bytes, joules)."""

    plan: Plan
    throughput: float
    p50: float
    p95: float
    p99: float
    makespan: float
    energy: dict[str, float]
    peak_memory: dict[str, float]
    link_bytes: dict[str, float]
    latencies: np.ndarray


def simulate(plan: Plan, world: World, *, timing_only: bool = True) -> Measured:
    """Run `plan` on the world's workload, as `api.run` runs a strategy (timing only by
    default: the same timeline without the numerics)."""
    check(plan, world)
    with threadpool_limits(limits=1, user_api="blas"):
        sim = Simulator(world.devices, world.network, timing_only=timing_only)
        execute(plan, world, sim, prepare(plan, world))
    events = tables.clean(sim.log.frame())
    energy = {d: sim.energy(d) for d in world.devices}
    devices = tables.devices_table(events, world.devices, energy, sim.now)
    stats = sim.flows.link_stats() if sim.flows is not None else []
    links = tables.links_table(stats, sim.now)
    row = tables.summary(events, devices, links, sim.now).iloc[0]
    done = tables.requests_table(events)
    return Measured(
        plan=plan, throughput=float(row.throughput_rps), p50=float(row.latency_p50_ms) / 1e3,
        p95=float(row.latency_p95_ms) / 1e3, p99=float(row.latency_p99_ms) / 1e3,
        makespan=float(row.makespan_s),
        energy=dict(zip(devices.device, devices.energy_J.astype(float))),
        peak_memory=dict(zip(devices.device, devices.peak_memory_bytes.astype(float))),
        link_bytes={r: float(b) for r, b in zip(links.resource, links.bytes) if b},
        latencies=done.loc[done.status == "done", "latency"].to_numpy(dtype=float))


@dataclass(frozen=True)
class Choice:
    """The simulated winner among the search's best few: its plan, what the simulator
    measured for each of them (`measured[i]` for `search.ranked[i]`), and the search."""

    plan: Plan
    measured: tuple[Measured, ...]
    found: Search


def choose(world: World, objective: Objective = "throughput", space: Space | None = None,
           limits: Limits | None = None, *, top: int = 3, **options: Any) -> Choice:
    """Search, then simulate the `top` candidates and return the best as simulated: by
    throughput under a saturating closed loop (`saturated`) for "throughput", else on the
    world's own workload (p50 latency; joules per request above idle). With weights, the
    estimate's ranking stands and only the winner is simulated."""
    found = search(world, objective, space, limits, **options)
    weights = weights_of(objective)
    name = next(iter(weights)) if len(weights) == 1 else None
    candidates = [s.plan for s in found.ranked[:top if name else 1]]
    runs = tuple(simulate(p, saturated(world) if name == "throughput" else world)
                 for p in candidates)
    if name is None:
        return Choice(candidates[0], runs, found)
    value = {"throughput": lambda m: -m.throughput, "latency": lambda m: m.p50,
             "energy": lambda m: dynamic_energy(m, world)}[name]
    best = min(range(len(runs)), key=lambda i: (value(runs[i]), i))
    return Choice(candidates[best], runs, found)


def dynamic_energy(m: Measured, world: World) -> float:
    """Joules per request above idle, as measured: the pool's energy less its idle draw
    over the run, over the requests served."""
    idle = sum(spec.idle_power for spec in world.devices.values()) * m.makespan
    return (sum(m.energy.values()) - idle) / max(len(m.latencies), 1)


def saturated(world: World, concurrency: int | None = None) -> World:
    """The world with its requests sent by a closed loop that keeps the plan busy (a run
    that measures what a plan sustains): `concurrency` clients, by default 4 per device."""
    load = world.workload
    assert isinstance(load, Inference)
    clients = concurrency or 4 * len(world.devices)
    return replace(world, workload=replace(load, arrival=Arrival("closed", concurrency=clients)))


def errors(plans: Sequence[Plan], world: World) -> pd.DataFrame:
    """The estimator against the simulator on each plan: one row per plan with both
    figures and the relative error of throughput, p50 latency, makespan, energy and peak
    memory, and whether the estimate claimed to be exact (what `simdl plan --check`
    prints)."""
    rows = []
    for p in plans:
        e, m = estimate(p, world), simulate(p, world)
        row = {"plan": p.describe(), "exact": e.exact, "method": e.method}
        for name, est, sim in (("throughput_rps", e.throughput, m.throughput),
                               ("p50_s", e.p50, m.p50), ("makespan_s", e.makespan, m.makespan),
                               ("energy_J", sum(e.energy.values()), sum(m.energy.values())),
                               ("peak_memory_B", max(e.peak_memory.values()),
                                max(m.peak_memory.values()))):
            row[f"{name}_est"], row[f"{name}_sim"] = est, sim
            row[f"{name}_err"] = (est - sim) / sim if sim else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


__all__ = [
    "Choice",
    "Estimate",
    "Measured",
    "choose",
    "dynamic_energy",
    "errors",
    "saturated",
    "simulate",
]
