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
from simdl.errors import ScenarioError
from simdl.report import plots, tables, timeline_plot
from simdl.report.store import (
    MAX_FOLDER,
    atomic_write,
    folder_name,
    write_csv,
    write_staged,
)
from simdl.report.trace import write_trace

#: The files `Result.write` makes, in the order it makes them (tables first, figures last).
RUN_FILES = ("scenario.resolved.yaml", "summary.csv", "requests.csv", "devices.csv",
             "links.csv", "events.csv", "trace.json", "timeline.png", "utilisation.png")
#: The files at the top of a run folder, beside one folder per strategy.
TOP_FILES = ("scenario.resolved.yaml", "summary.csv", "comparison.png", "training.png")
#: The file every run folder (and strategy folder) holds: only such a folder is overwritten.
MARKER = "scenario.resolved.yaml"


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
        made = tables.run_tables(events, specs, energy, link_stats, duration,
                                 scenario=scenario, strategy=strategy, seed=seed, **context)
        # faults.csv only when a device left: one row per leave (`faults.faults_table`)
        extra = {"faults": made.faults} if len(made.faults) else {}
        return cls(scenario=scenario, strategy=strategy, seed=seed, events=made.events,
                   requests=made.requests, devices=made.devices, links=made.links,
                   summary=made.summary, resolved=resolved, extra=extra)

    @property
    def title(self) -> str:
        return f"{self.scenario}: {self.strategy} (seed {self.seed})"

    def resolved_yaml(self) -> str:
        """The resolved scenario with the simdl version and the run's seed in front."""
        data: dict[str, Any] = {"simdl_version": __version__, "seed": self.seed}
        data.update((k, v) for k, v in self.resolved.items() if k not in data)
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)

    def write(self, directory: str | Path, *, overwrite: bool = False) -> Path:
        """Write the run folder (RUN_FILES plus `<name>.csv` per extra table), whole or
        not at all (`store.write_staged`); the same Result gives the same bytes.
        Returns `directory`."""
        return write_staged(directory, self.write_files, overwrite=overwrite, marker=MARKER)

    def write_files(self, directory: str | Path) -> Path:
        """Write the files into `directory` as it is, each atomically: a piece of a
        folder that is itself being written whole."""
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
        write_trace(self.events, directory / "trace.json", title=self.title)
        timeline_plot.timeline(self.events, directory / "timeline.png",
                               title=f"Timeline: {self.title}")
        plots.utilisation(self.devices, directory / "utilisation.png", title=self.title)
        if "memory" in self.extra:
            plots.memory(self.extra["memory"], directory / "memory.png", title=self.title)
        if "training" in self.extra:
            plots.training({self.strategy: self.extra["training"]}, directory / "training.png",
                           title=self.title, faults={self.strategy: fault_events(self.events)})
        return directory


def write_run(results: Sequence[Result], directory: str | Path, *, overwrite: bool = False,
              numbered: bool = False, where: str = "directory", shown: str | None = None) -> Path:
    """A whole run folder: the comparison at the top, one folder per strategy (named
    by `strategy_folders`), written whole or not at all (`store.write_staged`;
    `numbered`: as the next run id in `directory`). Returns the folder written."""
    folders = strategy_folders([("strategy", r.strategy) for r in results])

    def fill(top: Path) -> None:
        for r, name in zip(results, folders):
            r.write_files(top / name)
        write_comparison(results, top)

    return write_staged(directory, fill, where=where, overwrite=overwrite, numbered=numbered,
                        marker=MARKER, shown=shown)


def strategy_folders(labelled: Sequence[tuple[str, str]]) -> list[str]:
    """The folder of each (where, label), by `store.folder_name`; refuses a label whose
    folder would be empty, too long, or, even in letter case only (one name on macOS
    and Windows), the same as another's or as a file at the top of the run folder."""
    top = {name.casefold() for name in TOP_FILES}
    seen: dict[str, str] = {}
    folders = []
    for where, label in labelled:
        name = folder_name(label)
        if not name or len(name) > MAX_FOLDER:
            raise ScenarioError(where, label, f"a label whose folder name (other characters than "
                                f"letters, digits and _.-[]= written %XX) is 1 to {MAX_FOLDER} "
                                "characters")
        if name.casefold() in top:
            raise ScenarioError(where, label, f"a name other than the run folder's own files "
                                f"({', '.join(TOP_FILES)}), in any letter case")
        if name.casefold() in seen:
            raise ScenarioError(where, label, f"a label whose folder differs from "
                                f"{seen[name.casefold()]!r} in more than letter case")
        seen[name.casefold()] = name
        folders.append(name)
    return folders


def write_comparison(results: Sequence[Result], directory: str | Path) -> Path:
    """The top of a run folder: summary.csv (one row per strategy, in order),
    comparison.png and the resolved scenario they all ran, written into `directory`
    as it is (`write_run` writes a whole run folder)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / "scenario.resolved.yaml", results[0].resolved_yaml())
    table = tables.compare([r.summary for r in results])
    write_csv(table, directory / "summary.csv")
    plots.comparison(table, directory / "comparison.png", title=results[0].scenario)
    trained = [r for r in results if "training" in r.extra]
    if trained:
        plots.training({r.strategy: r.extra["training"] for r in trained},
                       directory / "training.png", title=results[0].scenario,
                       faults={r.strategy: fault_events(r.events) for r in trained})
    return directory


def fault_events(events: pd.DataFrame) -> pd.DataFrame:
    """The log's departures and returns, which the training figure marks."""
    return events[events["kind"].isin(["leave", "join"])]
