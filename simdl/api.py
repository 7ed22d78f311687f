"""Load, run and compare scenarios from Python: what notebooks and the CLI call.

A run is a pure function of its resolved scenario and seed: it builds the
world, makes each strategy's plan, executes it on a fresh Simulator and turns
the event log into a Result. Nothing here reads the wall clock.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from annotated_types import Gt
from threadpoolctl import threadpool_limits

from simdl import __version__, planner
from simdl.errors import PlanError, ScenarioError
from simdl.plan import train_memory
from simdl.plan.estimate import capacity, transfer_time
from simdl.plan.plan import Plan, Stage, check
from simdl.plan.space import Space
from simdl.plan.strategies import STRATEGIES, PositiveInt
from simdl.plan.training import TRAIN_STRATEGIES, Compression, TrainPlan
from simdl.plan.lm_model import is_shape_only
from simdl.plan.world import Generation, World
from simdl.report.columns import by_key, total
from simdl.report.result import Result, write_run
from simdl.report.tables import compare as compare_summaries
from simdl.scenario import DeployEntry, Scenario, StrategyEntry, dump, load, parse, set_path
from simdl.scenario_params import call, choose
from simdl.report import generation as gen_metrics
from simdl.sim import generation, generation_plan
from simdl.sim.changes import start_changes
from simdl.sim.engine import Simulator, frozen
from simdl.sim.inference import Outputs, execute, fuse, inputs, labels
from simdl.sim.metrics import TrainingMetrics
from simdl.sim.serving import Policy
from simdl.sim.stages import prepare
from simdl.sim.training import train, undecided
from simdl.world import build

__all__ = ["Run", "load", "resolve", "override", "run", "compare", "plan", "train_plan",
           "selected"]


@dataclass
class Run:
    """Every strategy's Result for one scenario and seed, and their comparison.

    `skipped`: the value-dependent decisions (`sim.training.DECISIONS`) the scenario
    asks for that this run could not take because it ran timing-only."""

    scenario: Scenario
    results: list[Result]
    skipped: list[str] = field(default_factory=list)

    @property
    def comparison(self) -> pd.DataFrame:
        return compare_summaries([r.summary for r in self.results])

    def __getitem__(self, label: str) -> Result:
        for r in self.results:
            if r.strategy == label:
                return r
        raise KeyError(f"{label!r}; strategies: {', '.join(r.strategy for r in self.results)}")

    def write(self, directory: str | Path, *, overwrite: bool = False, numbered: bool = False,
              where: str = "directory", shown: str | None = None) -> Path:
        """The run folder: the comparison at the top, one folder per strategy, written
        whole or not at all (`report.result.write_run`): an existing run folder is
        replaced only with `overwrite`; `numbered`: as the next run id in `directory`.
        Returns the folder written."""
        return write_run(self.results, directory, overwrite=overwrite, numbered=numbered,
                         where=where, shown=shown)


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
    with threadpool_limits(limits=1, user_api="blas"), frozen() as keep:
        world = build(sc, timing_only=timing_only)
        skipped = undecided(world) if timing_only else []
        results = []
        for i, entry in selected(sc, strategy):
            keep()  # the world and the results so far outlive this strategy
            sim = Simulator(world.devices, world.network, timing_only=timing_only)
            start_changes(world, sim)  # the scenario's `changes:`, played on the clock
            if sc.workload.kind == "generation":
                p = plan(world, entry, i)
                if is_shape_only(world.chain):  # nothing to compute: its numbers only
                    sim = Simulator(world.devices, world.network, timing_only=True)
                    start_changes(world, sim)
                made = generation.execute(p, world, sim)
                results.append(strategy_result(sc, world, entry, p, sim, Outputs(),
                                               generated=made))
            elif sc.workload.kind == "training":
                tp = train_plan(world, entry, i)
                metrics = train(tp, world, sim, progress)
                if skipped:
                    metrics.extra["timing_only_skipped"] = " ".join(skipped)
                results.append(strategy_result(sc, world, entry, tp, sim, Outputs(), metrics))
            else:
                p = plan(world, entry, i)
                outputs = execute(p, world, sim, prepare(p, world), progress,
                                  Policy(world.workload.timeout, world.workload.retries))
                results.append(strategy_result(sc, world, entry, p, sim, outputs))
    return Run(sc, results, skipped)


def compare(scenario: Scenario | str | Path, **kwargs: Any) -> pd.DataFrame:
    """One row per strategy: throughput, latency percentiles, bytes, energy, memory."""
    return run(scenario, **kwargs).comparison


def resolve(scenario: Scenario | str | Path, seed: int | None = None) -> Scenario:
    """A validated Scenario, with `seed` put in when given."""
    sc = scenario if isinstance(scenario, Scenario) else load(scenario)
    return sc if seed is None else parse(dump(sc) | {"seed": seed})


def override(scenario: Scenario | str | Path, changes: Mapping[str, Any],
             base: Path | None = None) -> Scenario:
    """The scenario with each dotted field path set to its value, checked whole again.

    `workload.batch`, `devices.tv.memory`, `strategies.1.microbatches`: a list is entered
    by index or by its entry's `label` or `name`. A path must name a field the scenario
    has with its defaults filled in (a slip is refused, not added), or a parameter of a
    component picked by name (a model's `width`, checked against its signature when the
    world is built). `base`: the folder file paths in values are read from."""
    data = dump(resolve(scenario))
    for path, value in changes.items():
        set_path(data, path, value)
    return parse(data, base)


def label(entry: StrategyEntry) -> str:
    return entry.label or entry.name


def selected(sc: Scenario, strategy: str | None) -> list[tuple[int, StrategyEntry]]:
    """(index, entry) of the strategies to run, sweeps expanded; labels must be unique."""
    entries: list[tuple[int, StrategyEntry]] = []
    for i, entry in enumerate(sc.strategies):
        entries += [(i, e) for e in _swept(entry, i)]
    labels_seen: dict[str, tuple[int, StrategyEntry]] = {}
    for i, entry in entries:
        if label(entry) in labels_seen:
            raise ScenarioError(f"strategies[{i}].label", label(entry),
                                "labels must be unique (add `label:` to tell them apart)")
        labels_seen[label(entry)] = (i, entry)
    if strategy is None:
        return entries
    if strategy not in labels_seen:
        raise ScenarioError("--strategy", strategy, f"choose one of: {', '.join(labels_seen)}")
    return [labels_seen[strategy]]


def _swept(entry: StrategyEntry, i: int) -> list[StrategyEntry]:
    """One entry per value of the swept parameter, labelled `label[param=value]`."""
    if not entry.sweep:
        return [entry]
    if len(entry.sweep) != 1:
        raise ScenarioError(f"strategies[{i}].sweep", sorted(entry.sweep),
                            "sweep one parameter at a time")
    (param, values), = entry.sweep.items()
    base = entry.model_dump(exclude={"sweep", "label"})
    return [StrategyEntry.model_validate(base | {param: v, "label": f"{label(entry)}[{param}={v}]"})
            for v in values]


Weights = dict[Literal["throughput", "latency", "energy"], float]


def auto(world: World, objective: Literal["throughput", "latency", "energy"] | Weights = "throughput",
         devices: list[str] | None = None, microbatches: list[PositiveInt] | None = None,
         top: PositiveInt = 3, dtypes: list[Literal["fp32", "fp16", "int8"]] | None = None,
         units: bool = False) -> Plan:
    """`name: auto`: the planner's choice (`planner.choose`) for `objective` among
    `devices` (default: the pool), its `top` candidates re-scored by simulation; stages
    stored as one of `dtypes` (default fp32), on any unit or units sharing a stage when
    `units` (default: each device's fastest unit)."""
    space = Space(devices=tuple(devices) if devices else None,
                  microbatches=tuple(microbatches or (1,)), dtypes=tuple(dtypes or ("fp32",)),
                  units=units)
    return replace(planner.choose(world, objective, space, top=top).plan, strategy="auto")


def train_auto(world: World, devices: list[str] | None = None,
               syncs: list[str] | None = None, compressions: list[Compression] | None = None,
               top: PositiveInt = 3, target_loss: Annotated[float, Gt(0.0)] | None = None
               ) -> TrainPlan:
    """`name: auto` for training: the planner's choice (`planner.plan_training`, as `simdl
    plan` makes it): of the `top` ways of training the estimate ranks fastest per update,
    and the fastest lossless plan, the first to reach the held-out loss target (the
    lossless plan's best, or `target_loss`) in simulated time, real numerics."""
    _, choice = planner.plan_training(world, top, devices, syncs, compressions,
                                      target_loss=target_loss)
    return replace(choice.best.plan, strategy="auto")


def plan(world: World, entry: StrategyEntry, i: int) -> Plan:
    """The entry's strategy applied to the world, deployed as asked, checked before it runs."""
    where = f"strategies[{i}]"
    make = choose(STRATEGIES | {"auto": auto}, entry.name, f"{where}.name")
    for device in entry.deploy:
        if device not in world.devices:
            raise ScenarioError(f"{where}.deploy.{device}", device,
                                f"choose one of: {', '.join(world.devices)}")
    try:
        p = call(make, entry.params, where, world)
        p = deployed(p, entry.deploy)
        if isinstance(world.workload, Generation):
            generation_plan.check_plan(p, world)
        else:
            check(p, world)
    except PlanError as err:
        raise type(err)(f"{where}.{err.where}", err.value, err.allowed) from None
    return p


def train_plan(world: World, entry: StrategyEntry, i: int) -> TrainPlan:
    """The entry's training strategy applied to the world, its peak memory checked."""
    where = f"strategies[{i}]"
    make = choose(TRAIN_STRATEGIES | {"auto": train_auto}, entry.name, f"{where}.name")
    try:
        tp = call(make, entry.params, where, world)
        train_memory.check(tp, world)
        return tp
    except PlanError as err:
        raise type(err)(f"{where}.{err.where}", err.value, err.allowed) from None


def deployed(p: Plan, deploy: dict[str, DeployEntry]) -> Plan:
    """The plan with each stage stored as its leading device's deployment says."""
    if not deploy:
        return p

    def stored(s: Stage) -> Stage:
        e = deploy.get(s.device)
        return s if e is None else replace(s, dtype=e.dtype, prune=e.prune, sparsity=e.sparsity)

    replicas = tuple(replace(r, stages=tuple(stored(s) for s in r.stages)) for r in p.replicas)
    return replace(p, replicas=replicas)


def strategy_result(sc: Scenario, world: World, entry: StrategyEntry, p: Plan | TrainPlan,
                    sim: Simulator, outputs: Outputs, metrics: TrainingMetrics | None = None,
                    generated: generation.Generated | None = None) -> Result:
    """One strategy's Result from its run on `sim`: the tables of its log, and the
    summary's context (deployment, accuracy, training or generation figures). The
    finished run is `frozen` meanwhile: it all outlives the tables."""
    with frozen() as keep:
        keep()
        return _strategy_result(sc, world, entry, p, sim, outputs, metrics, generated)


def _strategy_result(sc: Scenario, world: World, entry: StrategyEntry, p: Plan | TrainPlan,
                     sim: Simulator, outputs: Outputs, metrics: TrainingMetrics | None,
                     generated: generation.Generated | None) -> Result:
    context: dict[str, Any] = {"plan": p.describe()}
    if generated is not None:
        context |= gen_metrics.context(world, generated)
    elif metrics is None:
        context |= deployment_cost(p, world, sim) | accuracy(p, world, outputs)
    else:
        context |= training_summary(metrics.frame(), world) | metrics.extra
    resolved = dump(sc) | {"simdl_version": __version__}
    link_stats = sim.flows.link_stats() if sim.flows is not None else []
    result = Result.from_log(
        scenario=sc.name, strategy=label(entry), seed=sc.seed, events=sim.log.frame(),
        specs=world.devices, energy={d: sim.energy(d) for d in world.devices},
        link_stats=link_stats, duration=sim.now, resolved=resolved, **context)
    result.outputs = outputs.final
    result.members = outputs.members
    if metrics is not None:
        result.extra["training"] = metrics.frame()
    if generated is not None:
        gen_metrics.finish(result, world, generated)
    return result


def training_summary(df: pd.DataFrame, world: World) -> dict[str, float | str]:
    """A training run's headline: how it ended, where, how fast, and what it cost per step.
    `outcome` is "completed" or "target reached at step k"; a diverged run's Job puts
    "diverged at step k" in `metrics.extra`, which `_result` lays over this."""
    if df.empty:
        return {}
    evaluated = df.dropna(subset=["accuracy"])
    target = world.workload.target_accuracy
    reached = evaluated[evaluated.accuracy >= target] if target is not None else evaluated.iloc[:0]
    return {
        "outcome": f"target reached at step {int(reached.step.iloc[0])}" if len(reached)
        else "completed",
        "steps": int(df.step.max()) + 1,
        "final_loss": float(df.loss.iloc[-1]),
        "final_accuracy": float(evaluated.accuracy.iloc[-1]) if len(evaluated) else float("nan"),
        "time_to_target_s": float(reached.t.iloc[0]) if len(reached) else float("nan"),
        "step_time_s": float(df.t.iloc[-1] / len(df)),
        "compute_s_per_step": float(df.compute_s.mean()),
        "comm_s_per_step": float(df.comm_s.mean()),
        "wait_s_per_step": float(df.wait_s.mean()),
        "bytes_per_worker_step": float(df.bytes_per_worker.mean()),
    }


#: What `simdl run` and `compare` print for each kind of workload.
HEADLINES = {
    "inference": ("strategy", "requests_completed", "requests_failed", "makespan_s",
                  "offered_rps", "throughput_rps", "goodput_rps", "capacity_rps", "latency_p50_ms", "latency_p95_ms",
                  "latency_p99_ms", "network_bytes", "energy_used_J", "energy_J",
                  "peak_memory_max_MiB", "mean_utilisation"),
    "generation": ("strategy", "outcome", "requests_completed", "requests_failed", "makespan_s",
                   "tokens_per_s", "ttft_p50_ms", "ttft_p95_ms", "tpot_p50_ms", "tpot_p95_ms",
                   "network_bytes_per_token", "energy_per_token_J", "weights_paged",
                   "kv_peak_MiB_max"),
    "training": ("strategy", "steps", "makespan_s", "final_loss", "final_accuracy",
                 "time_to_target_s", "step_time_s", "comm_s_per_step", "wait_s_per_step",
                 "bytes_per_worker_step", "energy_used_J", "energy_J", "peak_memory_max_MiB"),
}


def accuracy(p: Plan, world: World, outputs: Outputs) -> dict[str, float]:
    """Accuracy of the served answers; of each ensemble member; and, for compressed
    deployments, of the same requests under the fp32 model (the change is measured)."""
    if not outputs.final:
        return {}

    def acc(answers: dict[int, np.ndarray]) -> float:
        """The mean over requests (in request order) of each one's share of right answers;
        requests stacked a few thousand at a time, not one call each."""
        served = sorted(answers)
        shares = []
        for k in range(0, len(served), 4096):
            some = served[k:k + 4096]
            right = np.argmax(np.stack([answers[r] for r in some]), -1) == labels(world, some)
            shares.append(right.reshape(len(some), -1).mean(axis=1))
        return float(np.mean(np.concatenate(shares)))

    out = {"accuracy": acc(outputs.final)}
    for i, rep in enumerate(p.replicas):
        if p.dispatch == "all":
            who = f"{rep.model}@{rep.stages[0].device}"
            out[f"accuracy_{who}"] = acc({r: m[i] for r, m in outputs.members.items()})
    if any((s.dtype, s.prune) != ("fp32", 0.0) for r in p.replicas for s in r.stages):
        reference = {}
        for r in outputs.final:
            x = inputs(world, r)
            ys = [world.models[rep.model].forward(x)[0] for rep in p.replicas]
            reference[r] = fuse(p.fuse, ys) if p.dispatch == "all" else ys[0]
        out["accuracy_fp32"] = acc(reference)
        out["accuracy_change"] = out["accuracy"] - out["accuracy_fp32"]
    return out


def deployment_cost(p: Plan, world: World, sim: Simulator) -> dict[str, Any]:
    """Shipping the weights from the source to every other device, once, reported apart
    from serving: bytes, and the time if all devices load in parallel (each alone on its route);
    then the offered load beside the plan's capacity (`serving_load`)."""
    log = sim.log.frame()
    kind, request = log["kind"].to_numpy(dtype=object), log["request"].to_numpy()
    rows = np.flatnonzero((kind == "alloc") & (request < 0))  # held outside any request
    device, label = (log[c].to_numpy(dtype=object)[rows] for c in ("device", "label"))
    placed = [i for i, (d, what) in enumerate(zip(device.tolist(), label.tolist()))
              if d != p.source and what.startswith("weights")]
    devices, weights = by_key("sum", device[placed], log["nbytes"].to_numpy()[rows][placed])
    times = [transfer_time(world, p.source, d, b) for d, b in zip(devices, weights)]
    return ({"deploy_MB": total(weights) / 1e6, "deploy_s": max(times, default=0.0)}
            | serving_load(p, world))


def offered_rps(world: World) -> float | None:
    """Requests per second an open-loop arrival process offers: poisson's rate; for a
    trace, (n - 1) / (last - first) over the n arrivals used. None when closed-loop."""
    load = world.workload
    a = load.arrival
    if a.kind == "poisson":
        return float(a.rate)
    if a.kind == "trace":
        times = sorted(a.times[:load.requests])
        span = times[-1] - times[0] if times else 0.0
        return (len(times) - 1) / span if span > 0 else float("nan")
    return None


def serving_load(p: Plan, world: World) -> dict[str, Any]:
    """capacity_rps and capacity_bottleneck (the planner's estimate: 1 / the busiest unit's
    or link's seconds per request); an open-loop run adds offered_rps and
    offered_samples_per_s."""
    load = world.workload
    out: dict[str, Any] = {}
    rate = offered_rps(world)
    if rate is not None:
        out |= {"offered_rps": rate, "offered_samples_per_s": rate * load.batch}
    out["capacity_rps"], out["capacity_bottleneck"] = capacity(p, world)
    return out
