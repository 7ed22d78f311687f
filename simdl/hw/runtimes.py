"""Runtime profiles: how much of a unit's peak one software runtime reaches, and its cost
per kernel. The same phone CPU runs the same model 2-3x faster under one runtime than
another, so a unit's `efficiency` and `overhead` are kept per runtime too.

Profiles live in `runtimes.yaml` beside the catalogue, written by `simdl calibrate`
(fitted to published measurements, `simdl.calibrate`), never by hand. A device picks
one with `runtime:` in its scenario entry: each of its units with a profile for that
runtime takes the profile's efficiency and overhead, and sees its memory bandwidth
divided by the profile's traffic; a unit without one keeps the catalogue's. A
profile is the device type's own when it has measured rows, else the one pooled over
every device whose unit is of the same kind (cpu, gpu, npu) under that runtime.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib import resources
from typing import Any

import yaml

from simdl import units as units_of
from simdl.errors import ScenarioError

FILE = "runtimes.yaml"


@functools.lru_cache(maxsize=1)
def profiles() -> dict[str, Any]:
    """The shipped profiles: {"devices": {type: {unit: {runtime: fields}}},
    "kinds": {kind: {runtime: fields}}} (empty sections when nothing was fitted)."""
    text = resources.files("simdl.hw").joinpath(FILE).read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    return {"devices": data.get("devices") or {}, "kinds": data.get("kinds") or {}}


def known(table: Mapping[str, Any] | None = None) -> list[str]:
    """Every runtime some profile names, sorted."""
    table = table or profiles()
    names = {r for units in table["devices"].values() for rs in units.values() for r in rs}
    return sorted(names | {r for rs in table["kinds"].values() for r in rs})


def profile(device_type: str, unit: str, kind: str, runtime: str,
            table: Mapping[str, Any] | None = None) -> Mapping[str, Any] | None:
    """The fields `unit` (of `kind`) of `device_type` takes under `runtime`: the type's own
    profile, else its kind's pooled one, else None."""
    table = table or profiles()
    own = table["devices"].get(device_type, {}).get(unit, {}).get(runtime)
    return own if own is not None else table["kinds"].get(kind, {}).get(runtime)


def lay(raw: Mapping[str, Any], device_type: str, runtime: str, where: str = "devices",
        table: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A catalogue entry (`raw`, as `catalogue.read` has it) with each unit that has a
    profile for `runtime` at that profile's efficiency and overhead; a runtime none of
    its units has a profile for is an error that lists the ones it has."""
    units = {}
    for name, unit in raw["units"].items():
        found = profile(device_type, name, unit.get("kind", name), runtime, table)
        if found is None:
            units[name] = unit
            continue
        # the runtime moves `traffic` bytes per byte counted: the unit sees its memory
        # that much faster (or slower)
        seen = units_of.parse(unit.get("mem_bw", raw["mem_bw"]), "bandwidth")
        units[name] = {**unit, "efficiency": float(found["efficiency"]),
                       "overhead": f"{float(found['overhead_s'])!r}s",
                       "mem_bw": f"{seen / float(found.get('traffic', 1.0))!r}B/s"}
    if units == raw["units"]:
        choices = [r for r in known(table) if any(
            profile(device_type, n, u.get("kind", n), r, table) for n, u in raw["units"].items())]
        raise ScenarioError(f"{where}.runtime", runtime,
                            f"a runtime profiled for {device_type}: {', '.join(choices)}"
                            if choices else f"none is profiled for {device_type} "
                            "(simdl calibrate fits profiles from simdl/hw/measured.csv)")
    return {**raw, "units": units}
