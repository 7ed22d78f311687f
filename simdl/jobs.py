"""Several jobs on one pool: every job started on one Simulator, run until all have
finished, each job's rows told apart (`sim.shared.JobSim`), and each job run alone on
the same pool for comparison: the slowdown each suffers from sharing.

Inference, training and generation jobs share a pool.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from threadpoolctl import threadpool_limits

from simdl import __version__, api
from simdl.errors import DeviceGone, SimdlError
from simdl.report import plots
from simdl.report.result import MARKER, Result, strategy_folders
from simdl.report.store import atomic_write, write_csv, write_staged
from simdl.report.tables import devices_table
from simdl.scenario import dump
from simdl.scenario_jobs import JobsScenario, job_field
from simdl.plan.lm_model import is_shape_only
from simdl.sim import generation, inference, training
from simdl.sim.changes import start_changes
from simdl.sim.engine import Simulator
from simdl.sim.job import Job
from simdl.sim.serving import Policy
from simdl.sim.shared import JobSim
from simdl.sim.stages import prepare
from simdl.world import build

#: Per workload kind: (headline column, True when larger is better), as jobs.csv reports them.
FIGURES = {
    "inference": (("throughput_rps", True), ("latency_p50_ms", False),
                  ("latency_p95_ms", False)),
    "training": (("step_time_s", False), ("final_loss", False)),
    "generation": (("tokens_per_s", True), ("ttft_p50_ms", False), ("tpot_p50_ms", False)),
}
#: Files at the top of a jobs run folder, beside one folder per job.
TOP_FILES = ("scenario.resolved.yaml", "jobs.csv", "devices.csv", "utilisation.png")


@dataclass
class JobsRun:
    """Each job's Result in the shared run and alone, the pool's devices table in the
    shared run, and the jobs table (`jobs.csv`)."""

    scenario: JobsScenario
    shared: list[Result]
    alone: list[Result]
    devices: pd.DataFrame
    table: pd.DataFrame

    def __getitem__(self, job: str) -> Result:
        names = [j.name for j in self.scenario.jobs]
        if job not in names:
            raise KeyError(f"{job!r}; jobs: {', '.join(names)}")
        return self.shared[names.index(job)]

    def write(self, directory: str | Path, *, overwrite: bool = False, numbered: bool = False,
              where: str = "directory", shown: str | None = None) -> Path:
        """The run folder: jobs.csv, the pool's devices.csv and the resolved scenario at
        the top, one folder per job (its rows in the shared run), written whole or not
        at all. Returns the folder written."""
        names = [j.name for j in self.scenario.jobs]
        folders = strategy_folders([(f"jobs[{i}].name", n) for i, n in enumerate(names)])

        def fill(top: Path) -> None:
            for r, name in zip(self.shared, folders):
                r.write_files(top / name)
            resolved = {"simdl_version": __version__} | dump(self.scenario)  # type: ignore[arg-type]
            atomic_write(top / "scenario.resolved.yaml",
                         yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
            write_csv(self.table, top / "jobs.csv")
            write_csv(self.devices, top / "devices.csv")
            plots.utilisation(self.devices, top / "utilisation.png", title=self.scenario.name)

        return write_staged(directory, fill, where=where, overwrite=overwrite,
                            numbered=numbered, marker=MARKER, shown=shown)


def run(scenario: JobsScenario, *, timing_only: bool = False) -> JobsRun:
    """Every job on one Simulator until all have finished, and each alone on the pool."""
    singles = [scenario.alone(i) for i in range(len(scenario.jobs))]
    alone = []
    for i, s in enumerate(singles):
        with _named(i):
            alone.append(api.run(s, timing_only=timing_only).results[0])
    shared, devices = _shared(scenario, singles, timing_only)
    return JobsRun(scenario, shared, alone, devices, jobs_table(scenario, shared, alone))


def _shared(scenario: JobsScenario, singles: list[Any], timing_only: bool
            ) -> tuple[list[Result], pd.DataFrame]:
    """The jobs together: one Simulator, each job's world built on the same devices and
    network, each job's processes started on its own view (`JobSim`), one run."""
    with threadpool_limits(limits=1, user_api="blas"):
        worlds = [build(s, timing_only=timing_only) for s in singles]
        pool = worlds[0]
        sim = Simulator(pool.devices, pool.network, timing_only=timing_only)
        start_changes(pool, sim)
        started = []
        for i, (s, world) in enumerate(zip(singles, worlds)):
            world = replace(world, devices=pool.devices, network=pool.network)
            view = JobSim(sim, scenario.jobs[i].priority)
            entry = s.strategies[0]
            with _named(i):
                if s.workload.kind == "training":
                    tp = api.train_plan(world, entry, 0)
                    job = training.start(tp, world, view)  # type: ignore[arg-type]
                    if timing_only and training.undecided(world):  # as `api.run` says it
                        job.metrics.extra["timing_only_skipped"] = " ".join(
                            training.undecided(world))
                    started.append((s, world, entry, tp, view, job.finished, job))
                elif s.workload.kind == "generation":
                    p = api.plan(world, entry, 0)
                    if is_shape_only(world.chain):  # its numbers only, as `api.run` runs it
                        view.__dict__["timing_only"] = True
                    done, made = generation.start(p, world, view)  # type: ignore[arg-type]
                    started.append((s, world, entry, p, view, done, made))
                else:
                    p = api.plan(world, entry, 0)
                    done, out = inference.start(
                        p, world, view, prepare(p, world), None,  # type: ignore[arg-type]
                        Policy(world.workload.timeout, world.workload.retries))
                    started.append((s, world, entry, p, view, done, out))
        try:
            sim.run(until=sim.all_of([e for *_, e, _ in started]))
        except DeviceGone as gone:  # a training job could not go on: every job ends here
            for *_, end, job in started:
                if isinstance(job, Job) and not end.triggered:
                    training.stopped(job, gone)
        results = []
        for s, world, entry, p, view, _, made in started:
            if isinstance(made, generation.Generated):
                results.append(api.strategy_result(s, world, entry, p, view,
                                                   inference.Outputs(), generated=made))
            elif isinstance(made, Job):
                results.append(api.strategy_result(s, world, entry, p, view,
                                                   inference.Outputs(), made.metrics))
            else:
                results.append(api.strategy_result(s, world, entry, p, view, made))
        devices = devices_table(sim.log.frame(), pool.devices,
                                {d: sim.energy(d) for d in pool.devices}, sim.now)
    return results, devices


def jobs_table(scenario: JobsScenario, shared: list[Result], alone: list[Result]
               ) -> pd.DataFrame:
    """One row per job and headline figure: shared, alone, and the slowdown (shared /
    alone for a time or a loss; alone / shared for a throughput): 1 is unharmed."""
    rows = []
    for job, together, by_itself in zip(scenario.jobs, shared, alone):
        for figure, larger_better in FIGURES[job.workload.kind]:
            a = float(by_itself.summary[figure].iloc[0])
            b = float(together.summary[figure].iloc[0])
            slowdown = _ratio(a, b) if larger_better else _ratio(b, a)
            rows.append({"job": job.name, "priority": job.priority, "kind": job.workload.kind,
                         "figure": figure, "shared": b, "alone": a, "slowdown": slowdown})
    return pd.DataFrame(rows)


def _ratio(num: float, den: float) -> float:
    return num / den if den != 0 and math.isfinite(den) else math.nan


@contextmanager
def _named(i: int) -> Iterator[None]:
    """Errors about the job's one-job scenario named as the job's fields."""
    try:
        yield
    except SimdlError as err:
        if type(err).__init__ is not SimdlError.__init__:  # not a (where, value, allowed) error
            raise
        raise type(err)(job_field(str(err.where), i), err.value, err.allowed) from None
