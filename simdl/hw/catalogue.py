"""The device catalogue file and device overrides -> checked SI fields.

Owns the format of `simdl/hw/catalogue.yaml` (field names, unit strings, sources) and
the checks that name a bad field by its dotted path. Hands plain dicts of SI numbers to
`devices.py`, which owns the device model. Knows nothing of layers, plans or the network.
"""
from __future__ import annotations

import copy
import functools
import math
from collections.abc import Mapping
from importlib import resources
from typing import Any

import yaml

from simdl import units
from simdl.errors import ScenarioError, UnitError

DTYPES = ("fp32", "fp16", "int8")
KINDS = ("cpu", "gpu", "npu")
INTERFACES = ("bluetooth", "cellular", "ethernet", "p2p", "wifi")
SOURCE_KINDS = ("spec-peak", "measured", "estimate", "override")
#: Pruning patterns a unit may accelerate (the same as simdl.nn.compress.PATTERNS).
PATTERNS = ("unstructured", "2:4")

UNIT_FIELDS = ("kind", "peak", "efficiency", "overhead", "active_power", "mem_bw", "memory",
               "sparsity")
UNIT_REQUIRED = ("peak", "efficiency", "overhead", "active_power")
DEVICE_FIELDS = ("label", "units", "memory", "mem_bw", "storage_bw", "idle_power",
                 "radio_tx_power", "radio_rx_power", "battery", "background", "interfaces",
                 "sources")
#: Sources follow the figures: an override writes its own source entry.
OVERRIDABLE = tuple(f for f in DEVICE_FIELDS if f != "sources")

_FILE_KEYS = ("format", "notes", "shared", "devices")
_EXAMPLE = {"size": "4GiB", "bandwidth": "300Mbps", "time": "50us", "compute": "26TOPS",
            "power": "2W", "energy": "15Wh"}

Raw = dict[str, Any]


@functools.lru_cache(maxsize=1)
def read() -> dict[str, Raw]:
    """The raw `devices:` mapping of the shipped catalogue (cached; never mutate it)."""
    text = resources.files("simdl.hw").joinpath("catalogue.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    where = "catalogue"
    _mapping(data, where, "a mapping with a 'devices:' section")
    _known(data, _FILE_KEYS, where, "the catalogue file")
    _mapping(data.get("devices"), f"{where}.devices", "a mapping of device types")
    return data["devices"]


def merge(raw: Raw, overrides: Mapping[str, Any], where: str) -> Raw:
    """A copy of `raw` with `overrides` applied; each overridden figure gets its own source.

    `overrides` may be nested ({"units": {"npu": {"peak": {"int8": "26TOPS"}}}}) or use
    dotted keys ({"units.npu.peak.int8": "26TOPS"}), or both. A null removes a unit, a
    dtype or an interface, makes `battery` mains, and makes a unit's `memory` the device's.
    """
    merged = copy.deepcopy(raw)
    sources = merged.setdefault("sources", {})
    leaves = _flatten(overrides, (), where)
    _check_new_units(raw, leaves, where)
    for path, value in leaves:
        dotted = ".".join(path)
        if path[0] not in OVERRIDABLE:
            raise ScenarioError(f"{where}.{dotted}", value,
                                f"no such field; a device has: {', '.join(sorted(OVERRIDABLE))}")
        node = merged
        for depth, key in enumerate(path[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                inner = ".".join(path[:depth + 1])
                raise ScenarioError(f"{where}.{dotted}", value,
                                    f"{inner} is a single value, it has no fields")
            node = child
        node[path[-1]] = value
        for key in [k for k in sources if k == dotted or k.startswith(dotted + ".")]:
            del sources[key]
        sources[dotted] = f"override; set at {where}.{dotted}; scenario"
    return merged


def parse_device(raw: Any, where: str) -> dict[str, Any]:
    """Check one device's raw fields and convert them to SI: keyword arguments of DeviceSpec."""
    _mapping(raw, where, "a mapping of device fields")
    _known(raw, DEVICE_FIELDS, where, "a device")
    if "battery" not in raw:
        raise ScenarioError(f"{where}.battery", None,
                            "required: an energy such as '15Wh', or null for mains power")
    return {
        "label": _text(raw.get("label"), f"{where}.label"),
        "units": _units(raw.get("units"), f"{where}.units"),
        "memory": quantity(raw.get("memory"), "size", f"{where}.memory"),
        "mem_bw": quantity(raw.get("mem_bw"), "bandwidth", f"{where}.mem_bw"),
        "storage_bw": _storage_bw(raw.get("storage_bw"), f"{where}.storage_bw"),
        "idle_power": quantity(raw.get("idle_power"), "power", f"{where}.idle_power", zero=True),
        "radio_tx_power": quantity(raw.get("radio_tx_power"), "power",
                                    f"{where}.radio_tx_power", zero=True),
        "radio_rx_power": quantity(raw.get("radio_rx_power"), "power",
                                    f"{where}.radio_rx_power", zero=True),
        "battery": (None if raw["battery"] is None
                    else quantity(raw["battery"], "energy", f"{where}.battery")),
        "background": _background(raw.get("background", 0.0), f"{where}.background"),
        "interfaces": _interfaces(raw.get("interfaces", {}), f"{where}.interfaces"),
        "sources": _sources(raw.get("sources", {}), f"{where}.sources"),
    }


def _storage_bw(value: Any, where: str) -> float:
    """Every device says how fast it reads weights from storage: nothing has a sensible default."""
    if value is None:
        raise ScenarioError(where, value, "required: the storage's sequential read bandwidth, "
                            "e.g. '2GB/s' (phone flash), '3.5GB/s' (NVMe), '45MB/s' (SD card)")
    return quantity(value, "bandwidth", where)


def _flatten(tree: Any, prefix: tuple[str, ...], where: str) -> list[tuple[tuple[str, ...], Any]]:
    if not isinstance(tree, Mapping):
        raise ScenarioError(where, tree, "write overrides as a mapping of field: value")
    leaves = []
    for key, value in tree.items():
        if not isinstance(key, str) or not all(key.split(".")):
            raise ScenarioError(f"{where}.{'.'.join(prefix)}".rstrip("."), key,
                                "override keys are field names, dotted for nesting")
        path = prefix + tuple(key.split("."))
        if isinstance(value, Mapping) and value:
            leaves += _flatten(value, path, where)
        else:
            leaves.append((path, value))
    return leaves


def _check_new_units(raw: Raw, leaves: list[tuple[tuple[str, ...], Any]], where: str) -> None:
    """A unit the device lacks must come whole: a typo ("nup") should not half-build one."""
    have = raw.get("units") or {}
    given: dict[str, dict[str, Any]] = {}
    for path, value in leaves:
        if path[0] == "units" and len(path) > 2 and path[1] not in have:
            given.setdefault(path[1], {})[path[2]] = value
    for name, fields in given.items():
        missing = [f for f in UNIT_REQUIRED if f not in fields]
        if name not in KINDS and "kind" not in fields:
            missing.insert(0, "kind")
        if missing:
            raise ScenarioError(
                f"{where}.units.{name}", fields,
                f"no unit {name!r} here (it has {', '.join(have)}); a new unit needs "
                f"{', '.join(missing)} as well")


def _mapping(value: Any, where: str, what: str) -> None:
    if not isinstance(value, Mapping):
        raise ScenarioError(where, value, f"write {what}")


def _known(raw: Mapping[str, Any], allowed: tuple[str, ...], where: str, what: str) -> None:
    for key in raw:
        if key not in allowed:
            raise ScenarioError(f"{where}.{key}", raw[key],
                                f"no such field; {what} has: {', '.join(sorted(allowed))}")


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ScenarioError(where, value, "write a short human name, e.g. 'Flagship phone'")
    return value


def quantity(value: Any, kind: str, where: str, zero: bool = False) -> float:
    """A unit string, finite and positive (or >= 0 when `zero`). Only 0 may go without
    its unit: a bare 100 means 100 B/s, 100 B or 100 s, too easily not what was meant."""
    bound = "zero or more" if zero else "more than zero"
    if value is None:
        raise ScenarioError(where, value, f"required: a {kind} such as '{_EXAMPLE[kind]}'")
    try:
        x = units.parse(value, kind, where)
    except UnitError as err:
        raise ScenarioError(err.where, err.value, err.allowed) from None
    if x != 0 and _bare(value):
        raise ScenarioError(where, value, f"write the unit: a {kind} such as '{_EXAMPLE[kind]}' "
                            "(only 0 may go without one)")
    if not math.isfinite(x) or x < 0 or (x == 0 and not zero):
        raise ScenarioError(where, value, f"must be a {kind} of {bound}, e.g. '{_EXAMPLE[kind]}'")
    return x


def _bare(value: Any) -> bool:
    """A number, or a string that is only a number: a quantity without its unit."""
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _number(value: Any, where: str, allowed: str) -> float:
    """A plain number, a numeric string or a percentage ('25%')."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            pass
    raise ScenarioError(where, value, allowed)


def _fraction(value: Any, where: str, *, low_open: bool, high_open: bool) -> float:
    allowed = (f"a fraction in {'(' if low_open else '['}0, 1{')' if high_open else ']'}, "
               "e.g. 0.25 or '25%'")
    x = _number(value, where, allowed)
    if not (0 < x if low_open else 0 <= x) or not (x < 1 if high_open else x <= 1):
        raise ScenarioError(where, value, allowed)
    return x


def _units(raw: Any, where: str) -> dict[str, dict[str, Any]]:
    _mapping(raw, where, "a mapping of compute units, e.g. {cpu: {...}}")
    out = {}
    for name, unit in raw.items():
        if unit is None:
            continue  # removed by an override
        if not isinstance(name, str) or not name.isidentifier():
            raise ScenarioError(f"{where}.{name}", unit, "unit names are identifiers, e.g. 'npu'")
        out[name] = _unit(unit, name, f"{where}.{name}")
    if not out:
        raise ScenarioError(where, raw, "a device needs at least one compute unit")
    return out


def _unit(raw: Any, name: str, where: str) -> dict[str, Any]:
    _mapping(raw, where, "a mapping of unit fields")
    _known(raw, UNIT_FIELDS, where, "a unit")
    kind = raw.get("kind", name if name in KINDS else None)
    if kind not in KINDS:
        raise ScenarioError(f"{where}.kind", kind, f"choose one of: {', '.join(KINDS)}")
    peak_raw = raw.get("peak")
    _mapping(peak_raw, f"{where}.peak", "a mapping of dtype: peak, e.g. {int8: 26TOPS}")
    peak = _named_quantities(peak_raw, f"{where}.peak", DTYPES, "compute", "dtype")
    if not peak:
        raise ScenarioError(f"{where}.peak", peak_raw, "a unit needs a peak for at least one dtype")
    mem_bw, memory, sparsity = raw.get("mem_bw"), raw.get("memory"), raw.get("sparsity")
    own_memory = None if memory is None else quantity(memory, "size", f"{where}.memory")
    if own_memory is not None and mem_bw is None:
        raise ScenarioError(f"{where}.mem_bw", mem_bw,
                            "required with the unit's own memory: that memory's bandwidth, "
                            "e.g. '256GB/s' (else the unit would read its VRAM at the "
                            "device's RAM bandwidth)")
    return {
        "kind": kind,
        "peak": peak,
        "efficiency": _fraction(raw.get("efficiency"), f"{where}.efficiency",
                                low_open=True, high_open=False),
        "overhead": quantity(raw.get("overhead"), "time", f"{where}.overhead", zero=True),
        "active_power": quantity(raw.get("active_power"), "power", f"{where}.active_power",
                                  zero=True),
        "mem_bw": None if mem_bw is None else quantity(mem_bw, "bandwidth", f"{where}.mem_bw"),
        "memory": own_memory,
        "sparsity": {} if sparsity is None else _sparsity(sparsity, f"{where}.sparsity", peak),
    }


def _sparsity(raw: Any, where: str, peak: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """pattern -> dtype -> how many times faster the unit multiplies weights pruned so.

    A vendor's sparse figure holds for one pattern and for the dtypes of one engine
    (Ampere: 2:4 on the tensor cores' fp16 and int8, not on the CUDA cores' fp32), so
    both are named; a pattern or dtype not declared gets no speed-up. Factors are >= 1:
    a unit never runs its sparse mode when that would be slower. A null removes one.
    """
    _mapping(raw, where, "a mapping of pattern: {dtype: speed-up}, e.g. {'2:4': {fp16: 2}}")
    out = {}
    for pattern, factors in raw.items():
        at = f"{where}.{pattern}"
        if pattern not in PATTERNS:
            raise ScenarioError(at, factors, f"no such pattern; choose one of: {', '.join(PATTERNS)}"
                                " (quote '2:4': bare, YAML reads it as the number 124)")
        if factors is None:
            continue
        _mapping(factors, at, "a mapping of dtype: speed-up, e.g. {fp16: 2}")
        row = {}
        for dtype, value in factors.items():
            if dtype not in peak:
                raise ScenarioError(f"{at}.{dtype}", value,
                                    f"a speed-up for a dtype the unit runs: {', '.join(peak)}")
            if value is None:
                continue
            allowed = "a speed-up factor of 1 or more, e.g. 2 (twice as fast)"
            x = _number(value, f"{at}.{dtype}", allowed)
            if not (math.isfinite(x) and x >= 1):
                raise ScenarioError(f"{at}.{dtype}", value, allowed)
            row[dtype] = x
        if row:
            out[pattern] = row
    return out


def _background(raw: Any, where: str) -> float | tuple[tuple[float, float], ...]:
    """A fixed load, or [[t0, load0], [t1, load1], ...] with t0 = 0 and times increasing."""
    if not isinstance(raw, (list, tuple)):
        return _fraction(raw, where, low_open=False, high_open=True)
    schedule = []
    for i, step in enumerate(raw):
        if not isinstance(step, (list, tuple)) or len(step) != 2:
            raise ScenarioError(f"{where}[{i}]", step, "write [time, load], e.g. ['10min', 0.5]")
        t = quantity(step[0], "time", f"{where}[{i}][0]", zero=True)
        if (i == 0 and t != 0) or (i > 0 and t <= schedule[-1][0]):
            raise ScenarioError(f"{where}[{i}][0]", step[0],
                                "the first step starts at 0 and times increase")
        schedule.append((t, _fraction(step[1], f"{where}[{i}][1]", low_open=False, high_open=True)))
    if not schedule:
        raise ScenarioError(where, raw, "write a load, or at least one [time, load] step")
    return tuple(schedule)


def _interfaces(raw: Any, where: str) -> dict[str, float]:
    _mapping(raw, where, f"a mapping of interface: goodput, interfaces from {', '.join(INTERFACES)}")
    return _named_quantities(raw, where, INTERFACES, "bandwidth", "interface")


def _named_quantities(raw: Raw, where: str, names: tuple[str, ...], kind: str,
                      what: str) -> dict[str, float]:
    """name -> SI value for a mapping whose keys must be among `names` (null = absent)."""
    out = {}
    for name, value in raw.items():
        if name not in names:
            raise ScenarioError(f"{where}.{name}", value,
                                f"no such {what}; choose one of: {', '.join(names)}")
        if value is not None:
            out[name] = quantity(value, kind, f"{where}.{name}")
    return out


def _sources(raw: Any, where: str) -> dict[str, str]:
    _mapping(raw, where, "a mapping of field path: 'kind; source; retrieved'")
    out = {}
    for key, text in raw.items():
        parts = [p.strip() for p in text.split(";")] if isinstance(text, str) else []
        if len(parts) < 3 or parts[0] not in SOURCE_KINDS or not all(parts):
            raise ScenarioError(f"{where}.{key}", text,
                                f"write 'kind; source; retrieved' with kind one of "
                                f"{', '.join(SOURCE_KINDS)}")
        out[str(key)] = text
    return out
