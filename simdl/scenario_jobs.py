"""Scenario files with several jobs on one pool: `jobs:` in place of model, workload
and strategies, each job with its own model, workload, strategy and priority.

Each job is also a plain one-strategy Scenario (`JobsScenario.alone`), built on the
shared devices, network, changes, constraints and seed: how it runs alone, and how
its world is built for the shared run.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from simdl.errors import ScenarioError
from simdl.scenario import (Constraints, FolderName, Generation, Inference, ModelEntry,
                            Natural, PoolScenario, Scenario, StrategyEntry, Strict,
                            TrainingEntry, dump, load, parse)
from simdl.scenario_params import scenario_error
from simdl.yamlfile import read

#: Keys of a one-job scenario that a `jobs:` scenario gives per job instead.
PER_JOB = ("model", "models", "workload", "strategies")


class JobEntry(Strict):
    """One job: its name (its results folder), model (and extra `models`), workload,
    one strategy, and its priority on every unit (0 is served first)."""

    name: FolderName
    model: ModelEntry
    models: dict[str, ModelEntry] = {}
    workload: Annotated[Inference | TrainingEntry | Generation, Field(discriminator="kind")]
    strategy: StrategyEntry
    priority: Natural = 0

    @field_validator("strategy", mode="before")
    @classmethod
    def _bare_name(cls, entry: Any) -> Any:
        return {"name": entry} if isinstance(entry, str) else entry


class JobsScenario(PoolScenario):
    constraints: Constraints = Constraints()
    changes: list[Any] | None = None  # checked by Scenario, per job (`alone`)
    jobs: list[JobEntry] = Field(min_length=1)

    _base: Path | None = PrivateAttr(default=None)  # where the file's paths are read from

    @model_validator(mode="before")
    @classmethod
    def _not_both(cls, data: Any) -> Any:
        """A job gives its own model, workload and strategy: the top level may not."""
        if isinstance(data, Mapping):
            for key in PER_JOB:
                if key in data:
                    raise ScenarioError(key, data[key], "leave it out: with `jobs`, each job "
                                        "gives its own model, models, workload and strategy")
        return data

    @field_validator("jobs")
    @classmethod
    def _names_once(cls, jobs: list[JobEntry]) -> list[JobEntry]:
        names = [j.name.casefold() for j in jobs]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ScenarioError(f"jobs[{i}].name", jobs[i].name,
                                    "job names must be unique (in any letter case)")
        return jobs

    def alone(self, i: int) -> Scenario:
        """Job i as a scenario of its own on the same pool (its strategy's label: the
        job's name); errors in it name `jobs[i]`."""
        job = self.jobs[i]
        if job.strategy.sweep:
            raise ScenarioError(f"jobs[{i}].strategy.sweep", job.strategy.sweep,
                                "none: a job runs one strategy")
        data = dump(self)  # type: ignore[arg-type]
        del data["jobs"]
        data |= {"model": dump(job.model), "models": {k: dump(m) for k, m in job.models.items()},
                 "workload": dump(job.workload),
                 "strategies": [dump(job.strategy) | {"label": job.name}]}
        try:
            return parse(data, self._base)
        except ScenarioError as err:
            raise ScenarioError(job_field(err.where, i), err.value, err.allowed) from None


def job_field(where: str, i: int) -> str:
    """A field path of job i's one-job scenario (`JobsScenario.alone`) as the jobs
    scenario names it: `strategies[0].x` is `jobs[i].strategy.x`, `workload.x` is
    `jobs[i].workload.x`; a shared field (devices, network, ...) keeps its path."""
    where = where.replace("strategies[0]", "strategy", 1)
    head = where.split(".")[0].split("[")[0]
    return f"jobs[{i}].{where}" if head in {*PER_JOB, "strategy"} else where


def is_jobs(data: Any) -> bool:
    return isinstance(data, Mapping) and "jobs" in data


def parse_jobs(data: Mapping[str, Any], base: Path | None = None) -> JobsScenario:
    """Plain data as a JobsScenario (files relative to `base`); every job checked as a
    scenario of its own."""
    try:
        sc = JobsScenario.model_validate(data)
    except ValidationError as err:
        raise scenario_error(err) from None
    sc._base = base
    for i in range(len(sc.jobs)):
        sc.alone(i)
    return sc


def load_any(path: str | Path, seed: int | None = None) -> Scenario | JobsScenario:
    """A scenario file, one job or several (`jobs:`), with `seed` put in when given."""
    path = Path(path)
    data = read(path)
    if not is_jobs(data):  # the one-job scenario, as `api.resolve` reads it
        sc = load(path)
        return sc if seed is None else parse(dump(sc) | {"seed": seed})
    return parse_jobs(dict(data) | ({} if seed is None else {"seed": seed}), path.parent)
