"""`simdl sweep`: one scenario run over a grid or a sample of its fields, its strategies
and seeds, resumable, on any executor (`simdl.cluster`).

A point is a resolved scenario (every default filled in, its seed set) and whether it
runs timing-only; its name is a hash of that, as canonical JSON, so the same point has
the same folder in every run of every sweep. A point's folder is written whole
(`store.write_staged`) with its marker, `done.json`, written last, so a rerun skips a
point exactly when its marker is there. The table is rebuilt from the folders in the
points' name order, never appended to: nothing depends on which worker ran a point or
when it finished. Each seed comes from the base seed and the point's values.
"""
from __future__ import annotations

import builtins
import hashlib
import io
import itertools
import json
import math
import tempfile
import traceback
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from simdl import __version__, api
from simdl.errors import ScenarioError, SimdlError
from simdl.rng import stream
from simdl.report.store import atomic_write, write_csv, write_json, write_staged
from simdl.scenario import Count, Natural, Scenario, Strict, dump, parse
from simdl.scenario_params import scenario_error
from simdl.yamlfile import read

#: Written last in a point's folder: the point is done (or failed) exactly when it is there.
MARKER = "done.json"
#: The sweep's own file in its folder: what marks a folder a sweep may resume in.
SPEC = "sweep.json"
TABLE, PARQUET = "sweep.csv", "sweep.parquet"
#: The table's first columns after the swept fields; each strategy's summary follows.
KEYS = ["seed", "point", "strategy", "status", "error"]


class Range(Strict):
    """Numbers from `low` to `high`: uniform, or uniform in log when `log`; whole
    numbers (both ends included) when `int`."""

    low: float
    high: float
    log: bool = False
    int: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.high > self.low:
            raise PydanticCustomError("range", "high ({high}) must be above low ({low})",
                                      {"high": self.high, "low": self.low})
        if self.log and not self.low > 0:
            raise PydanticCustomError("range", "low must be above 0 when log is true")
        if self.int and not (self.low.is_integer() and self.high.is_integer()):
            raise PydanticCustomError("range", "low and high must be whole numbers when "
                                      "int is true")
        return self

    def at(self, u: float) -> builtins.int | float:
        """The value at quantile `u` in [0, 1)."""
        top = self.high + 1 if self.int else self.high
        x = (math.exp(math.log(self.low) + u * (math.log(top) - math.log(self.low))) if self.log
             else self.low + u * (top - self.low))
        return min(math.floor(x), builtins.int(self.high)) if self.int else x


class Sample(Strict):
    """`n` points drawn from `fields`: independently (`random`) or as a Latin hypercube
    (`lhs`: each field's range cut in `n` equal strata, each stratum drawn once)."""

    kind: Literal["random", "lhs"]
    n: Count
    seed: Natural = 0
    fields: dict[str, Range | list[Any]] = Field(min_length=1)


class Spec(Strict):
    """A sweep file."""

    scenario: str
    grid: dict[str, list[Any]] = {}
    sample: Sample | None = None
    strategies: list[str] | None = None
    seeds: Count | list[Natural] | None = None


@dataclass(frozen=True)
class Point:
    """One run of the sweep: its swept values, its seed and its resolved scenario."""

    params: dict[str, Any]
    seed: int
    scenario: dict[str, Any]
    timing_only: bool
    name: str = field(init=False)

    def __post_init__(self) -> None:
        identity = {"scenario": self.scenario, "timing_only": self.timing_only}
        object.__setattr__(self, "name", hashlib.sha256(canonical(identity).encode())
                           .hexdigest()[:16])


def canonical(data: Any) -> str:
    """Plain data as one text: keys sorted, no spaces, ASCII, no NaN."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)


def read_spec(path: str | Path) -> Spec:
    data = read(path)
    if not isinstance(data, Mapping):
        raise ScenarioError(Path(path).name, data, "a mapping with scenario and grid or sample")
    try:
        return Spec.model_validate(data)
    except ValidationError as err:
        raise scenario_error(err) from None


def sampled(sample: Sample) -> list[dict[str, Any]]:
    """The sample's `n` rows of values, drawn from its seed's own stream, field by field
    in the order written."""
    rng = stream(sample.seed, "sweep/sample")
    columns = {}
    for path, where in sample.fields.items():
        if sample.kind == "lhs":
            u = (rng.permutation(sample.n) + rng.random(sample.n)) / sample.n
        else:
            u = rng.random(sample.n)
        columns[path] = [where.at(float(q)) if isinstance(where, Range)
                         else where[math.floor(float(q) * len(where))] for q in u]
    return [{p: column[i] for p, column in columns.items()} for i in range(sample.n)]


def combinations(spec: Spec) -> list[dict[str, Any]]:
    """The grid's every combination (the first field slowest), each with every sample row."""
    overlap = set(spec.grid) & set(spec.sample.fields if spec.sample else {})
    if overlap:
        raise ScenarioError("sample.fields", sorted(overlap)[0], "a field not also in grid")
    grid = [dict(zip(spec.grid, values)) for values in itertools.product(*spec.grid.values())]
    rows = sampled(spec.sample) if spec.sample else [{}]
    return [g | r for g in grid for r in rows]


def derived_seed(base: int, params: Mapping[str, Any], k: int) -> int:
    """Seed `k` of the point with these values: from the base seed and the values only."""
    key = int.from_bytes(hashlib.sha256(canonical(params).encode()).digest()[:8], "big")
    return int(np.random.SeedSequence(base, spawn_key=(key, k)).generate_state(1)[0])


def points(path: str | Path, timing_only: bool = False) -> list[Point]:
    """Every point of the sweep file, each checked as a whole scenario before anything
    runs; an error names the point and the field."""
    path = Path(path)
    spec = read_spec(path)
    where = path.parent / spec.scenario
    try:
        base = api.resolve(where)
    except ScenarioError as err:
        raise ScenarioError(f"scenario ({spec.scenario}) {err.where}", err.value,
                            err.allowed) from None
    labels = [api.label(e) for e in base.strategies]
    for i, wanted in enumerate(spec.strategies or []):
        if wanted not in labels:
            raise ScenarioError(f"strategies[{i}]", wanted, f"choose one of: {', '.join(labels)}")
    out = []
    for i, params in enumerate(combinations(spec)):
        seeds = (spec.seeds if isinstance(spec.seeds, list) else [base.seed] if spec.seeds is None
                 else [derived_seed(base.seed, params, k) for k in range(spec.seeds)])
        for seed in seeds:
            try:
                sc = kept(api.override(base, params | {"seed": seed}, where.parent),
                          spec.strategies)
            except ScenarioError as err:
                shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
                raise ScenarioError(f"point {i} ({shown}) {err.where}", err.value,
                                    err.allowed) from None
            out.append(Point(params, seed, dump(sc), timing_only))
    if out:
        check_components(parse(out[0].scenario))
    return out


def kept(sc: Scenario, labels: list[str] | None) -> Scenario:
    """The scenario with only the strategies labelled `labels` (all when None)."""
    if labels is None:
        return sc
    data = dump(sc)
    data["strategies"] = [e for e, entry in zip(data["strategies"], sc.strategies)
                          if api.label(entry) in labels]
    return parse(data)


def check_components(sc: Scenario) -> None:
    """Build the world of one point and plan its strategies (but `auto`, which would
    search): a component's parameter named wrong is caught before anything runs."""
    world = api.build(sc, timing_only=True, pretrain=False)
    make = api.train_plan if sc.workload.kind == "training" else api.plan
    for i, entry in api.selected(sc, None):
        if entry.name != "auto":
            make(world, entry, i)


def run_point(scenario: dict[str, Any], timing_only: bool, files: bool
              ) -> tuple[dict[str, bytes], str]:
    """Run one point (on any worker): its files (the summary; the whole run folder under
    `run/` with `files`) and "" , or no files and the error's text."""
    try:
        result = api.run(parse(scenario), timing_only=timing_only)
        with tempfile.TemporaryDirectory() as tmp:
            write_csv(result.comparison, Path(tmp) / "summary.csv")
            if files:
                result.write(Path(tmp) / "run")
            return {p.relative_to(tmp).as_posix(): p.read_bytes()
                    for p in sorted(Path(tmp).rglob("*")) if p.is_file()}, ""
    except SimdlError as err:
        return {}, f"{type(err).__name__}: {err}"
    except Exception as err:  # a bug: the point fails, the sweep goes on, the trace is kept
        trace = "".join(traceback.format_exception(err))
        return {"traceback.txt": trace.encode()}, f"{type(err).__name__}: {err}"


def store(out: Path, point: Point, made: dict[str, bytes], error: str) -> None:
    """The point's folder, whole: its files, its resolved scenario, then its marker."""
    marker = {"point": point.name, "params": point.params, "seed": point.seed,
              "timing_only": point.timing_only, "status": "failed" if error else "done",
              "error": error, "simdl_version": __version__}

    def fill(folder: Path) -> None:
        for name, data in made.items():
            atomic_write(folder / name, data)
        atomic_write(folder / "scenario.resolved.yaml",
                     yaml.safe_dump(point.scenario, sort_keys=False))
        write_json(marker, folder / MARKER)

    write_staged(out / "points" / point.name, fill, where="--out")


def done(out: Path, point: Point) -> bool:
    return (out / "points" / point.name / MARKER).is_file()


def table(out: Path, pts: Iterable[Point]) -> pd.DataFrame:
    """The sweep table from the points' folders (points not done left out): a row per
    point and strategy, or one row for a failed point, sorted by point then strategy."""
    pts = sorted(pts, key=lambda p: p.name)
    fields = list(dict.fromkeys(f for p in pts for f in p.params))
    rows: list[dict[str, Any]] = []
    summary: list[str] = []
    for p in pts:
        folder = out / "points" / p.name
        if not done(out, p):
            continue
        marker = json.loads((folder / MARKER).read_text())
        head = {f: _cell(p.params.get(f)) for f in fields} | {"seed": p.seed, "point": p.name}
        if marker["status"] == "failed":
            rows.append(head | {"strategy": "", "status": "failed", "error": marker["error"]})
            continue
        frame = pd.read_csv(folder / "summary.csv", dtype={"strategy": str})
        summary += [c for c in frame.columns if c not in summary and c not in
                    ("scenario", "seed", "strategy")]
        rows += [head | r | {"seed": p.seed, "status": "done", "error": ""}
                 for r in frame.drop(columns=["scenario", "seed"], errors="ignore")
                 .to_dict("records")]
    frame = pd.DataFrame.from_records(rows, columns=[*fields, *KEYS, *summary])
    return frame.sort_values(["point", "strategy"], kind="stable").reset_index(drop=True)


def _cell(value: Any) -> Any:
    """A swept value as one table cell: a list or mapping as its canonical JSON."""
    return canonical(value) if isinstance(value, (list, dict)) else value


def write_table(out: Path, frame: pd.DataFrame) -> list[Path]:
    """`sweep.csv`, and `sweep.parquet` when pyarrow is installed, each written whole."""
    written = [write_csv(frame, out / TABLE)]
    try:
        import pyarrow  # noqa: F401  (optional: Parquet only when it is there)
    except ImportError:
        return written
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return written + [atomic_write(out / PARQUET, buffer.getvalue())]


def claim(out: Path, pts: list[Point]) -> None:
    """Make `out` this sweep's folder: a new or empty folder, or a sweep's (to resume)."""
    if out.exists() and not out.is_dir():
        raise SimdlError("--out", str(out), "a folder for the sweep; this is a file")
    if out.is_dir() and any(out.iterdir()) and not (out / SPEC).is_file():
        raise SimdlError("--out", str(out), f"a new or empty folder, or a sweep's folder "
                         f"(holding {SPEC}) to resume")
    try:
        write_json({"points": [p.name for p in pts], "simdl_version": __version__}, out / SPEC)
    except OSError as err:
        raise SimdlError("--out", str(out), f"a folder simdl can write ({err.strerror})") from None


@dataclass
class Outcome:
    """What a sweep did: points in all, run now, found done, failed (ever), not finished
    (a lost worker), and the table."""

    points: int
    ran: int
    skipped: int
    failed: int
    unfinished: list[str]
    table: pd.DataFrame
    files: list[Path]


def execute(pts: list[Point], out: str | Path, executor: Executor, *, files: bool = False,
            progress: Callable[[int], None] = lambda n: None) -> Outcome:
    """Run the points not done on `executor` (in the order given), each folder stored as
    its point finishes; then the table, rebuilt from every point's folder (on an
    interrupt too). A point's own error is recorded as its failure; a worker lost is
    not: that point stays to do, on the next run."""
    out = Path(out)
    claim(out, pts)
    todo = [p for p in pts if not done(out, p)]
    progress(len(pts) - len(todo))
    unfinished: list[str] = []
    futures = {executor.submit(run_point, p.scenario, p.timing_only, files): p for p in todo}
    try:
        for future in as_completed(futures):
            p = futures[future]
            try:
                made, error = future.result()
            except Exception as err:  # the worker, not the point: to do again next time
                unfinished.append(f"{p.name}: {type(err).__name__}: {err}")
                continue
            store(out, p, made, error)
            progress(1)
    finally:
        for future in futures:
            future.cancel()
        frame = table(out, pts)
        written = write_table(out, frame)
    failed = int(frame.drop_duplicates("point").status.eq("failed").sum())
    return Outcome(len(pts), len(todo) - len(unfinished), len(pts) - len(todo), failed,
                   unfinished, frame, written)


def sweep(path: str | Path, out: str | Path, *, workers: int | None = None,
          cluster: str | None = None, timing_only: bool = False,
          files: bool = False) -> pd.DataFrame:
    """From a notebook: run (or resume) the sweep file into `out` and return its table.
    `workers` local processes (default one per core), or `cluster` as `simdl.cluster`
    takes it. Points a lost worker left undone are an error (the table has the rest;
    the same call resumes): a table silently short of points would mislead."""
    from simdl.cluster import executor

    pts = points(path, timing_only)
    with executor(cluster, workers) as pool:
        outcome = execute(pts, out, pool, files=files)
    if outcome.unfinished:
        raise SimdlError("sweep", str(path), f"every point run; {len(outcome.unfinished)} "
                         f"did not finish, a worker was lost (first: "
                         f"{outcome.unfinished[0]}); call again to resume")
    return outcome.table
