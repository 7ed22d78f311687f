"""Result: one run's event log and every view of it, as notebooks get it and the CLI writes it.

Owns the run folder's contents and names. Builds its tables from the log plus
the few things a log cannot hold (specs, energy, link counters, duration),
passed in by the caller; knows nothing of how the run was executed.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from simdl import __version__
from simdl.report import plots, tables
from simdl.report.store import atomic_write, write_csv, write_json
from simdl.report.trace import chrome_trace

#: The files `Result.write` makes, in the order it makes them (tables first, figures last).
RUN_FILES = ("scenario.resolved.yaml", "summary.csv", "requests.csv", "devices.csv",
             "links.csv", "events.csv", "trace.json", "timeline.png", "utilisation.png")


@dataclass
class Result:
    """One run of one strategy on one scenario."""

    scenario: str
    strategy: str
    seed: int
    events: pd.DataFrame
    requests: pd.DataFrame
    devices: pd.DataFrame
    links: pd.DataFrame
    summary: pd.DataFrame
    resolved: dict
    extra: dict[str, pd.DataFrame] = field(default_factory=dict)
    outputs: dict[int, Any] = field(default_factory=dict)  # request -> model output (real mode)
    members: dict[int, dict[int, Any]] = field(default_factory=dict)  # ensembles: request -> replica -> output

    @classmethod
    def from_log(cls, *, scenario: str, strategy: str, seed: int, events: pd.DataFrame,
                 specs: Mapping[str, tables.DeviceLike], energy: Mapping[str, tables.EnergyLike],
                 link_stats: Sequence[Mapping[str, Any]], duration: float, resolved: dict,
                 **context: Any) -> Result:
        """Derive every table from `events`; `context` adds summary columns after the seed."""
        events = tables.clean(events)
        devices = tables.devices_table(events, specs, energy, duration)
        links = tables.links_table(link_stats, duration)
        summary = tables.summary(events, devices, links, duration, scenario=scenario,
                                 strategy=strategy, seed=seed, **context)
        return cls(scenario=scenario, strategy=strategy, seed=seed, events=events,
                   requests=tables.requests_table(events), devices=devices, links=links,
                   summary=summary, resolved=resolved)

    @property
    def title(self) -> str:
        return f"{self.scenario}: {self.strategy} (seed {self.seed})"

    def resolved_yaml(self) -> str:
        """The resolved scenario with the simdl version and the run's seed in front."""
        data: dict[str, Any] = {"simdl_version": __version__, "seed": self.seed}
        data.update((k, v) for k, v in self.resolved.items() if k not in data)
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)

    def write(self, directory: str | Path) -> Path:
        """Write the run folder (RUN_FILES plus `<name>.csv` per extra table), each file
        atomically; the same Result gives the same bytes. Returns `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / "scenario.resolved.yaml", self.resolved_yaml())
        write_csv(self.summary, directory / "summary.csv")
        write_csv(self.requests, directory / "requests.csv")
        write_csv(self.devices, directory / "devices.csv")
        write_csv(self.links, directory / "links.csv")
        write_csv(self.events, directory / "events.csv")
        for name, table in sorted(self.extra.items()):
            write_csv(table, directory / f"{name}.csv")
        write_json(chrome_trace(self.events, title=self.title), directory / "trace.json")
        plots.timeline(self.events, directory / "timeline.png", title=f"Timeline: {self.title}")
        plots.utilisation(self.devices, directory / "utilisation.png", title=self.title)
        if "training" in self.extra:
            plots.training({self.strategy: self.extra["training"]}, directory / "training.png",
                           title=self.title)
        return directory


def write_comparison(results: Sequence[Result], directory: str | Path) -> Path:
    """The top of a run folder: summary.csv (one row per strategy, in order),
    comparison.png and the resolved scenario they all ran."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / "scenario.resolved.yaml", results[0].resolved_yaml())
    table = tables.compare([r.summary for r in results])
    write_csv(table, directory / "summary.csv")
    plots.comparison(table, directory / "comparison.png", title=results[0].scenario)
    curves = {r.strategy: r.extra["training"] for r in results if "training" in r.extra}
    if curves:
        plots.training(curves, directory / "training.png", title=results[0].scenario)
    return directory
