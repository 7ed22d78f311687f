"""Load, run and compare scenarios from Python: what notebooks and the CLI call.

A run is a pure function of its resolved scenario and seed: it builds the
world, makes each strategy's plan, executes it on a fresh Simulator and turns
the event log into a Result. Nothing here reads the wall clock.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from simdl import __version__
from simdl.errors import PlanError, ScenarioError
from simdl.plan.plan import Plan, check
from simdl.plan.strategies import STRATEGIES
from simdl.plan.world import World
from simdl.report.result import Result, write_comparison
from simdl.report.tables import compare as compare_summaries
from simdl.scenario import Scenario, StrategyEntry, call, choose, dump, load, parse
from simdl.sim.engine import Simulator
from simdl.sim.inference import execute, labels
from simdl.world import build

__all__ = ["Run", "load", "run", "compare", "plan"]


@dataclass
class Run:
    """Every strategy's Result for one scenario and seed, and their comparison."""

    scenario: Scenario
    results: list[Result]

    @property
    def comparison(self) -> pd.DataFrame:
        return compare_summaries([r.summary for r in self.results])

    def __getitem__(self, label: str) -> Result:
        for r in self.results:
            if r.strategy == label:
                return r
        raise KeyError(f"{label!r}; strategies: {', '.join(r.strategy for r in self.results)}")

    def write(self, directory: str | Path) -> Path:
        """The run folder: the comparison at the top, one folder per strategy."""
        directory = Path(directory)
        for r in self.results:
            r.write(directory / r.strategy)
        write_comparison(self.results, directory)
        return directory


def run(scenario: Scenario | str | Path, strategy: str | None = None, *,
        timing_only: bool = False, seed: int | None = None,
        progress: Callable[[int], None] | None = None) -> Run:
    """Run the scenario's strategies (or only `strategy`, by label) and collect results.

    Args:
        scenario: a Scenario, or the path of a scenario YAML file.
        seed: overrides the scenario's seed.
        progress: called with the number of requests just finished, for progress bars.
    """
    sc = resolve(scenario, seed)
    # One BLAS thread: float sums in one order on any machine (bit-for-bit runs), and
    # sweeps parallelise over processes instead.
    with threadpool_limits(limits=1, user_api="blas"):
        world = build(sc)
        results = []
        for i, entry in selected(sc, strategy):
            p = plan(world, entry, i)
            sim = Simulator(world.devices, world.network, timing_only=timing_only)
            outputs = execute(p, world, sim, progress)
            results.append(_result(sc, world, entry, p, sim, outputs))
    return Run(sc, results)


def compare(scenario: Scenario | str | Path, **kwargs: Any) -> pd.DataFrame:
    """One row per strategy: throughput, latency percentiles, bytes, energy, memory."""
    return run(scenario, **kwargs).comparison


def resolve(scenario: Scenario | str | Path, seed: int | None = None) -> Scenario:
    """A validated Scenario, with `seed` put in when given."""
    sc = scenario if isinstance(scenario, Scenario) else load(scenario)
    return sc if seed is None else parse(dump(sc) | {"seed": seed})


def label(entry: StrategyEntry) -> str:
    return entry.label or entry.name


def selected(sc: Scenario, strategy: str | None) -> list[tuple[int, StrategyEntry]]:
    """(index, entry) of the strategies to run; labels must be unique."""
    labels_seen: dict[str, int] = {}
    for i, entry in enumerate(sc.strategies):
        if label(entry) in labels_seen:
            raise ScenarioError(f"strategies[{i}].label", label(entry),
                                "labels must be unique (add `label:` to tell them apart)")
        labels_seen[label(entry)] = i
    if strategy is None:
        return list(enumerate(sc.strategies))
    if strategy not in labels_seen:
        raise ScenarioError("--strategy", strategy, f"choose one of: {', '.join(labels_seen)}")
    return [(labels_seen[strategy], sc.strategies[labels_seen[strategy]])]


def plan(world: World, entry: StrategyEntry, i: int) -> Plan:
    """The entry's strategy applied to the world, checked before anything runs."""
    where = f"strategies[{i}]"
    make = choose(STRATEGIES, entry.name, f"{where}.name")
    try:
        p = call(make, entry.params, where, world)
        check(p, world)
    except PlanError as err:
        raise type(err)(f"{where}.{err.where}", err.value, err.allowed) from None
    return p


def _result(sc: Scenario, world: World, entry: StrategyEntry, p: Plan, sim: Simulator,
            outputs: dict[int, np.ndarray]) -> Result:
    context: dict[str, Any] = {"plan": p.describe()}
    if outputs:
        hits = [np.mean(np.argmax(y, axis=-1) == labels(world, r)) for r, y in outputs.items()]
        context["accuracy"] = float(np.mean(hits))
    resolved = dump(sc) | {"simdl_version": __version__}
    link_stats = sim.flows.link_stats() if sim.flows is not None else []
    result = Result.from_log(
        scenario=sc.name, strategy=label(entry), seed=sc.seed, events=sim.log.frame(),
        specs=world.devices, energy={d: sim.energy(d) for d in world.devices},
        link_stats=link_stats, duration=sim.now, resolved=resolved, **context)
    result.outputs = outputs
    return result

