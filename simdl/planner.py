"""The planner at the edge: the search's best candidates re-scored by simulation, the
estimator checked against the simulator, and what `simdl plan` shows (the best plans
beside the baselines, as a table, a Pareto front and a scenario to run).

`plan.search` ranks plans by the analytic estimate (it may not run simpy); this
module runs the top few on the simulator, exactly as `api.run` runs a strategy,
and returns the simulated winner. A training pool's few are trained with their
real numerics to a held-out loss (`train_rescore`), since the estimate cannot see
convergence. Knows plans, the simulator and the tables.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from simdl.errors import PlanError
from simdl.plan.baselines import baselines
from simdl.plan.estimate import Estimate, estimate
from simdl.plan.lm_split import best_cuts, best_paths, path_plan
from simdl.plan.plan import Plan, check
from simdl.plan.search import Objective, Search, score, search, weights_of
from simdl.plan.space import Limits, Space
from simdl.plan.strategies import entry as written_entry
from simdl.plan.train_search import TO_TARGET, TrainSpace
from simdl.plan.world import Arrival, Generation, Inference, World
from simdl.report import tables
from simdl.report.columns import Columns
from simdl.scenario import Scenario, dump
from simdl.sim import generation
from simdl.sim.changes import start_changes
from simdl.sim.engine import Simulator
from simdl.sim.inference import execute
from simdl.sim.stages import prepare
from simdl.train_rescore import TrainChoice, rank_key, train_choice, why


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
    events = Columns(sim.log.frame())  # coded once for the four tables
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
        latencies=done.loc[done.status == "completed", "latency"].to_numpy(dtype=float))


@dataclass(frozen=True)
class Choice:
    """The simulated winner among the search's best few: its plan, what the simulator
    measured for each of them (`measured[i]` for `search.ranked[i]`), and the search
    (none for a generation pool: `generation_choice`)."""

    plan: Plan
    measured: tuple[Measured, ...]
    found: Search | None


def choose(world: World, objective: Objective = "throughput", space: Space | None = None,
           limits: Limits | None = None, *, top: int = 3, **options: Any) -> Choice:
    """Search, then simulate the `top` candidates and return the best as simulated: by
    throughput under a saturating closed loop (`saturated`) for "throughput", else on the
    world's own workload (p50 latency; joules per request above idle). With weights, the
    estimate's ranking stands and only the winner is simulated. A generation pool's
    choice is `generation_choice`'s."""
    if isinstance(world.workload, Generation):
        return Choice(generation_choice(world, objective, space), (), None)
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


def generation_choice(world: World, objective: Objective = "throughput",
                      space: Space | None = None) -> Plan:
    """A generation pool's plan, the one that serves the most tokens per second of the
    scenario's own workload on the simulator, among candidates from the exact search
    over the decode-step estimate (`plan.lm_split.best_paths`): the fastest path on
    each number of devices of `space.devices` with one decode group and, when it has
    several stages, the same devices cut for the least busy busiest stage with as many
    groups as stages (at most `max_batch`). The step alone
    leaves out the prefills, which queue on the first stage's units, and the groups,
    which fill a pipeline: the simulator counts both. Ties go to fewer devices, then to
    one group. Only the devices narrow it: the weights stay as the model stores them."""
    space = space or Space()
    if objective != "throughput":
        raise PlanError("objective", objective, "throughput: a generation pool's auto "
                        "serves the most tokens per second")
    for name, value, plain in (("microbatches", list(space.microbatches), [1]),
                               ("dtypes", list(space.dtypes), ["fp32"]),
                               ("units", space.units, False)):
        if value != plain:
            raise PlanError(name, value, f"{plain} (the default): a generation pool's auto "
                            "chooses devices, cuts and decode groups")
    load = world.workload
    assert isinstance(load, Generation)
    candidates = []
    for used, path in best_paths(world, list(space.devices or world.devices)).items():
        candidates.append((path_plan(world, path), used, 1))
        if used > 1 and load.max_batch > 1:
            order = [(d,) for d in path[0]]
            even = (path[0], best_cuts(world, order, balanced=True), path[2])
            groups = min(used, load.max_batch)
            candidates.append((path_plan(world, even, groups), used, groups))
    return min(candidates, key=lambda c: (-generated_rate(c[0], world), *c[1:]))[0]


def generated_rate(plan: Plan, world: World) -> float:
    """Tokens per second `plan` serves of the world's generation workload, simulated
    timing-only (0 when its caches do not fit)."""
    sim = Simulator(world.devices, world.network, timing_only=True)
    start_changes(world, sim)
    made = generation.execute(plan, world, sim)
    done = [q for q in made.seqs.values() if not np.isnan(q.finish)]
    return sum(q.emitted for q in done) / sim.now if done and sim.now > 0 else 0.0


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


@dataclass
class Planned:
    """What `simdl plan` shows for an inference pool: one row per plan (the search's
    `top` candidates, labelled plan-1.., then every baseline), the plans by label, the
    planner's `winner` (simulated best of the candidates), the search itself, and notes
    on baselines that a subset of their own devices beats, or that do not fit."""

    table: pd.DataFrame
    plans: dict[str, Plan]
    winner: str
    choice: Choice
    notes: list[str]


def pareto_points(planned: Planned) -> pd.DataFrame:
    """Every plan the search kept (on the front or not) and the baselines that fit, as
    `report.pareto.plot_pareto` draws them: the named ones labelled."""
    found = planned.choice.found
    front = {id(s) for s in found.pareto}
    names = {p.describe(): k for k, p in planned.plans.items()}
    rows = [{"label": names.get(s.plan.describe(), ""), "front": id(s) in front,
             "capacity_rps": s.estimate.capacity, "latency_p50_ms": s.estimate.p50 * 1e3,
             "energy_per_request_mJ": s.estimate.per_request_J * 1e3} for s in found.ranked]
    base = planned.table[~planned.table.label.str.startswith("plan-")].dropna(
        subset=["capacity_rps"])
    rows += [{"label": r.label, "front": False, "capacity_rps": r.capacity_rps,
              "latency_p50_ms": r.latency_p50_ms, "energy_per_request_mJ": r.energy_per_request_mJ}
             for r in base.itertuples()]
    return pd.DataFrame(rows)


def plan_pool(world: World, objective: Any = "throughput", top: int = 3,
              space: Space | None = None) -> Planned:
    """The planner's best `top` plans in `space` (default: fp32 on each device's fastest
    unit) for `objective` beside the baselines, by estimate (and, for the candidates, by
    simulation as `planner.choose` measured them)."""
    weights = weights_of(objective)
    choice = choose(world, objective, space, top=top)
    candidates = [(f"plan-{k + 1}", s.plan) for k, s in enumerate(choice.found.ranked[:top])]
    rows, found = [], {}
    for k, (name, p) in enumerate(candidates):
        m = choice.measured[k] if k < len(choice.measured) else None
        rows.append(_row(name, p, estimate(p, world), m))
        found[name] = p
    for name, p in baselines(world).items():
        try:
            check(p, world)
        except PlanError as err:
            rows.append(_row(name, p, None, None) | {"why": f"does not fit: {err}"})
            continue
        rows.append(_row(name, p, estimate(p, world), None))
        found[name] = p
    winner = next(name for name, p in candidates if p == choice.plan)
    scored = [r for r in rows if r["estimate"] is not None]
    for r, v in zip(scored, score([r["estimate"] for r in scored], weights)):
        r["score"] = v
    best = next(r["score"] for r in scored if r["label"] == winner)
    for r in rows:
        r["chosen"] = "*" if r["label"] == winner else ""
        r["vs_winner"] = r["score"] / best if "score" in r else float("nan")
    table = pd.DataFrame(rows).drop(columns=["estimate", "score"], errors="ignore")
    return Planned(table, found, winner, choice, _subset_notes(rows, objective))


def _row(name: str, p: Plan, e: Estimate | None, m: Measured | None) -> dict[str, Any]:
    nan = float("nan")
    return {
        "label": name, "plan": p.describe(), "devices": len(p.devices),
        "capacity_rps": e.capacity if e else nan,
        "sim_throughput_rps": m.throughput if m else nan,
        "latency_p50_ms": e.p50 * 1e3 if e else nan,
        "energy_per_request_mJ": e.per_request_J * 1e3 if e else nan,
        "peak_memory_max_MiB": max(e.peak_memory.values()) / 2**20 if e else nan,
        "why": f"bottleneck {e.bottleneck}" if e else "",
        "estimate": e, "plan_devices": p.devices}


def _subset_notes(rows: list[dict[str, Any]], objective: Any) -> list[str]:
    """A note for each baseline that does not fit, and for each that a plan on a strict
    subset of its devices beats by the objective: adding devices made it worse."""
    notes = []
    for r in rows:
        if r["estimate"] is None:
            notes.append(f"{r['label']} {r['why']}")
            continue
        if r["devices"] < 2 or r["label"].startswith("plan-"):
            continue
        mine = set(r["plan_devices"])
        fewer = [o for o in rows if "score" in o and set(o["plan_devices"]) < mine]
        if not fewer:
            continue
        better = min(fewer, key=lambda o: o["score"])
        if better["score"] < r["score"]:
            notes.append(f"{r['label']} uses {r['devices']} devices; {better['label']} on "
                         f"{len(better['plan_devices'])} of them ({', '.join(better['plan_devices'])}) "
                         f"does better by {objective} ({r['score'] / better['score']:.3g}x)")
    return notes


def plan_training(world: World, top: int = 3, devices: list[str] | None = None,
                  syncs: list[str] | None = None, compressions: list[str] | None = None, *,
                  target_loss: float | None = None,
                  progress: Callable[[str], None] | None = None
                  ) -> tuple[pd.DataFrame, TrainChoice]:
    """The training planner (`train_rescore.train_choice`) over every sync and compression
    (`TO_TARGET`, narrowed by `devices`, `syncs`, `compressions`): the estimate's `top`
    fastest ways of training and the reference simulated to a held-out loss. One row per
    plan simulated, winner first: its estimated and simulated step, when it reached the
    target, its last loss, bytes a worker sends per step, and why it ranks there."""
    space = train_space(devices, syncs, compressions, TO_TARGET, top=top,
                        target_loss=target_loss)
    choice = train_choice(world, space, progress=progress)
    won = rank_key(choice.trials[0], space.margin)
    rows = []
    for k, t in enumerate(choice.trials):
        e, key = t.estimate, rank_key(t, space.margin)
        rows.append({
            "label": f"plan-{k + 1}", "chosen": "*" if k == 0 else "", "plan": t.plan.describe(),
            "sync": t.plan.sync.kind, "compression": t.plan.sync.compression,
            "est_step_s": e.step, "sim_step_s": t.step, "time_to_target_s": t.time_to_target,
            "steps_run": t.steps, "final_loss": t.final_loss, "bytes_per_step": e.nbytes,
            "vs_winner": key[1] / won[1] if key[0] == won[0] == 0 else float("nan"),
            "why": why(t, choice, space.margin)})
    return pd.DataFrame(rows), choice


def planned_scenario(sc: Scenario, planned: Planned) -> dict[str, Any]:
    """The scenario as plain data with `strategies` replaced by the planned plans (the
    winner first, labelled `auto-best`), each an explicit entry `simdl run` accepts."""
    order = [planned.winner] + [k for k in planned.plans if k != planned.winner]
    entries = [written_entry(planned.plans[k]) | {"label": "auto-best" if k == planned.winner else k}
               for k in order]
    return dump(sc) | {"strategies": entries}


def train_space(devices: list[str] | None, syncs: list[str] | None,
                compressions: list[str] | None, base: TrainSpace | None = None,
                **fields: Any) -> TrainSpace:
    """`base` (default: the search's lossless space) narrowed to `devices` (default: the
    pool), `syncs` and `compressions` (default: the base's), with any other `fields`."""
    base = base or TrainSpace()
    return replace(base, devices=tuple(devices) if devices else None,
                   syncs=tuple(syncs or base.syncs),
                   compressions=tuple(compressions or base.compressions), **fields)


__all__ = [
    "Choice",
    "Estimate",
    "Measured",
    "Planned",
    "choose",
    "dynamic_energy",
    "generation_choice",
    "errors",
    "pareto_points",
    "plan_pool",
    "plan_training",
    "planned_scenario",
    "saturated",
    "simulate",
    "train_space",
]
