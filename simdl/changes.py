"""The scenario's `changes:` section: how the pool changes during a run, checked.

Two stops, as for the rest of a scenario. `normalise` runs as the file is read: shapes,
times and values are checked, and CSV profiles and trace files are read (relative to the
scenario's folder), so the plain data it returns -- what a resolved scenario holds -- is
whole without them. `build` runs with the pool and its network: it checks every name and
makes the World's Changes (`simdl.plan.world`), which `simdl.sim.changes` plays.
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from simdl import units
from simdl.errors import PlanError, ScenarioError
from simdl.hw.devices import DeviceSpec
from simdl.hw.network import Network
from simdl.plan.world import Change, Profile

#: What a profile may say of each quantity: (lowest, highest, lowest allowed, highest
#: allowed, the rule in words). Presence is 0 or 1 (`_value`).
LIMITS: dict[str, tuple[float, float, bool, bool, str]] = {
    "presence": (0.0, 1.0, True, True, "1 (here) or 0 (gone)"),
    "speed": (0.0, math.inf, False, False, "a factor on the unit's rate, > 0"),
    "bandwidth": (0.0, math.inf, True, False, "a factor on the link's bandwidth, >= 0"),
    "loss": (0.0, 1.0, True, False, "a share of packets lost, in [0, 1)"),
}
#: The keys an entry may have, by the key that names what it changes.
KEYS = {
    "device": ("device", "presence", "speed", "unit", "availability", "period"),
    "link": ("link", "bandwidth", "loss", "period"),
    "devices": ("devices", "trace"),
}


def normalise(entries: Any, base: Path | None = None) -> list[dict[str, Any]]:
    """The `changes:` list checked, with CSV files and traces read (relative to `base`,
    the scenario's folder; None: the working folder): plain data, idempotent."""
    if not isinstance(entries, list):
        raise ScenarioError("changes", entries, "a list of changes")
    return [_entry(raw, f"changes[{i}]", base or Path()) for i, raw in enumerate(entries)]


def read(entries: Any, info: Any) -> list[dict[str, Any]]:
    """`normalise` as the scenario schema's validator: `info.context["base"]` is the
    scenario's folder when it was read from a file."""
    return normalise(entries, (info.context or {}).get("base"))


def _entry(raw: Any, where: str, base: Path) -> dict[str, Any]:
    names = [k for k in KEYS if isinstance(raw, Mapping) and k in raw]
    if len(names) != 1:
        raise ScenarioError(where, raw, "a mapping with one of device, link or devices")
    name = names[0]
    for key in raw:
        if key not in KEYS[name]:
            raise ScenarioError(f"{where}.{key}", raw[key],
                                f"unknown key; allowed keys: {', '.join(KEYS[name])}")
    out: dict[str, Any] = {name: raw[name]}
    if name == "devices":
        devices = raw["devices"]
        if not (isinstance(devices, list) and devices and all(isinstance(d, str) for d in devices)):
            raise ScenarioError(f"{where}.devices", devices, "a list of device names")
        out["trace"] = _trace(raw.get("trace"), len(devices), f"{where}.trace", base)
        return out
    if not isinstance(raw[name], str):
        raise ScenarioError(f"{where}.{name}", raw[name], f"a {name} name")
    profiles = [k for k in KEYS[name][1:] if k in LIMITS and k in raw]
    if "availability" in raw:
        if "presence" in raw:
            raise ScenarioError(f"{where}.availability", raw["availability"],
                                "one of presence or availability per device")
        out["availability"] = _availability(raw["availability"], f"{where}.availability")
    elif not profiles:
        wanted = [k for k in KEYS[name] if k in LIMITS or k == "availability"]
        raise ScenarioError(where, dict(raw), f"say what changes: one of {', '.join(wanted)}")
    if "unit" in raw:
        if "speed" not in raw or not isinstance(raw["unit"], str):
            raise ScenarioError(f"{where}.unit", raw["unit"], "a unit name, beside a speed profile")
        out["unit"] = raw["unit"]
    period = raw.get("period")
    for key in profiles:
        out[key] = _profile(raw[key], key, f"{where}.{key}", base)
    if period is not None:
        if not profiles:
            raise ScenarioError(f"{where}.period", period, "a period repeats a profile; give one")
        out["period"] = _period(period, [out[k] for k in profiles], f"{where}.period")
    return out


def _profile(raw: Any, quantity: str, where: str, base: Path) -> list[list[float]]:
    """(time, value) pairs, inline or from {csv: file}: times >= 0 and increasing."""
    if isinstance(raw, Mapping):
        if list(raw) != ["csv"]:
            raise ScenarioError(where, dict(raw), "(time, value) pairs, or {csv: file}")
        raw = _read_csv(raw["csv"], f"{where}.csv", base)
    if not isinstance(raw, list) or not raw:
        raise ScenarioError(where, raw, "a list of (time s, value) pairs, or {csv: file}")
    points: list[list[float]] = []
    for i, pair in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ScenarioError(at, pair, "a (time s, value) pair")
        t = units.parse(pair[0], "time", where=f"{at}[0]")
        if not 0 <= t < math.inf or (points and t <= points[-1][0]):
            raise ScenarioError(f"{at}[0]", pair[0], "a time >= 0 s, later than the one before")
        points.append([t, _value(pair[1], quantity, f"{at}[1]")])
    return points


def _value(raw: Any, quantity: str, where: str) -> float:
    low, high, with_low, with_high, rule = LIMITS[quantity]
    ok = isinstance(raw, (int, float)) and not isinstance(raw, bool)
    if ok:
        v = float(raw)
        ok = ((low <= v if with_low else low < v) and (v <= high if with_high else v < high)
              and (quantity != "presence" or v in (0.0, 1.0)))
    if not ok:
        raise ScenarioError(where, raw, f"{quantity}: {rule}")
    return float(raw)


def _period(raw: Any, profiles: Sequence[list[list[float]]], where: str) -> float:
    last = max(p[-1][0] for p in profiles)
    period = units.parse(raw, "time", where=where)
    if not last < period < math.inf:
        raise ScenarioError(where, raw, f"a time longer than the profile's last ({last:g} s)")
    return period


def _availability(raw: Any, where: str) -> dict[str, float]:
    if not isinstance(raw, Mapping) or sorted(raw) != ["down", "up"]:
        raise ScenarioError(where, raw, "{up: mean s present, down: mean s gone}")
    out = {}
    for key in ("up", "down"):
        t = units.parse(raw[key], "time", where=f"{where}.{key}")
        if not 0 < t < math.inf:
            raise ScenarioError(f"{where}.{key}", raw[key], "a mean time > 0 s")
        out[key] = t
    return out


def _read_csv(name: Any, where: str, base: Path) -> list[list[float]]:
    """A profile's CSV: a (time s, value) pair per line; a first line that is not two
    numbers is a header."""
    rows = _rows(name, where, base)
    pairs = []
    for n, row in enumerate(rows, 1):
        try:
            t, v = (float(x) for x in row)
        except ValueError:
            if n == 1 and len(row) == 2:
                continue  # the header
            raise ScenarioError(f"{where} {name}:{n}", ",".join(row),
                                "two numbers per line: time (s), value") from None
        pairs.append([t, v])
    return pairs


def _rows(name: Any, where: str, base: Path) -> list[list[str]]:
    if not isinstance(name, str):
        raise ScenarioError(where, name, "a CSV file's path, relative to the scenario")
    try:
        with open(base / name, newline="") as f:
            return [row for row in csv.reader(f) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ScenarioError(where, name, f"a readable CSV file ({type(err).__name__})") from None


# -- FedScale-style client behaviour traces --------------------------------------------


def _trace(raw: Any, count: int, where: str, base: Path) -> list[dict[str, Any]]:
    """One presence profile per listed device from a client behaviour trace: the i-th
    device takes the i-th client of the file. Already read (a list of {presence, period},
    as a resolved scenario holds it), it is checked again."""
    if isinstance(raw, str):
        clients = _clients(raw, where, base)
        if len(clients) < count:
            raise ScenarioError(where, raw, f"a trace with a client per device: it has "
                                f"{len(clients)}, the entry lists {count} devices")
        raw = [_presence(c, span, where) for c, span in list(clients.items())[:count]]
    if not isinstance(raw, list) or len(raw) != count:
        raise ScenarioError(where, raw, "a trace file (.json or .csv)")
    out = []
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(item, Mapping) or set(item) - {"presence", "period"} or "presence" not in item:
            raise ScenarioError(at, item, "{presence: profile, period: s}")
        profile = _profile(item["presence"], "presence", f"{at}.presence", base)
        period = item.get("period")
        out.append({"presence": profile} if period is None else
                   {"presence": profile, "period": _period(period, [profile], f"{at}.period")})
    return out


def _clients(name: str, where: str, base: Path) -> dict[str, dict[str, Any]]:
    """Client id -> {active, inactive, finish_time}, in the file's order.

    The shape is FedScale's client availability trace (`client_behave_trace`, documented
    in FedScale's "Device Trace File Formats", github.com/SymbioticLab/FedScale, and read
    by its ClientSim.is_active): per client, `active[i]` and `inactive[i]` begin and end
    its i-th span online (s), and the whole repeats every `finish_time` s. FedScale ships
    it as a Python pickle, which simdl does not load (unpickling runs code): convert it
    to JSON (the same mapping), or to CSV with a line per span: client,active,inactive,
    finish_time (a header line first).
    """
    if name.endswith(".json"):
        try:
            data = json.loads((base / name).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise ScenarioError(where, name, f"a readable JSON file ({type(err).__name__})") from None
        if not isinstance(data, Mapping) or not data:
            raise ScenarioError(where, name, "a mapping of client id -> {active, inactive, "
                                "finish_time}")
        return {str(k): v for k, v in data.items()}
    if not name.endswith(".csv"):
        raise ScenarioError(where, name, "a trace file ending .json or .csv")
    clients: dict[str, dict[str, Any]] = {}
    header = ["client", "active", "inactive", "finish_time"]
    for n, row in enumerate(_rows(name, where, base), 1):
        if n == 1:
            if [c.strip() for c in row] != header:
                raise ScenarioError(f"{where} {name}:1", ",".join(row),
                                    f"the header {','.join(header)}")
            continue
        try:
            client, (on, off, finish) = row[0], (float(x) for x in row[1:])
        except ValueError:
            raise ScenarioError(f"{where} {name}:{n}", ",".join(row),
                                "client,active,inactive,finish_time: an id, then three "
                                "times (s)") from None
        c = clients.setdefault(client, {"active": [], "inactive": [], "finish_time": finish})
        if c["finish_time"] != finish:
            raise ScenarioError(f"{where} {name}:{n}", ",".join(row),
                                f"one finish_time per client ({client}: {c['finish_time']:g})")
        c["active"].append(on)
        c["inactive"].append(off)
    return clients


def _presence(client: str, spans: Any, where: str) -> dict[str, Any]:
    """A client's spans online as a presence profile repeating every finish_time: gone at
    0 unless a span begins there; a span is cut at finish_time."""
    at = f"{where} client {client}"
    try:
        on, off = [float(t) for t in spans["active"]], [float(t) for t in spans["inactive"]]
        finish = float(spans["finish_time"])
    except (KeyError, TypeError, ValueError):
        raise ScenarioError(at, spans, "{active: [s], inactive: [s], finish_time: s}") from None
    if len(on) != len(off) or not on or not 0 < finish < math.inf:
        raise ScenarioError(at, spans, "as many active as inactive times (at least one), "
                            "and a finish_time > 0 s")
    points: list[list[float]] = [] if on[0] == 0 else [[0.0, 0.0]]
    for start, end in zip(on, off):
        if not (points[-1][0] if points else -1) <= start < end or start >= finish:
            raise ScenarioError(at, [start, end], f"spans that begin once the one before "
                                f"ends and end after they begin, within finish_time {finish:g}")
        if points and points[-1] == [start, 0.0]:  # one span ends as the next begins
            points.pop()
        else:
            points.append([start, 1.0])
        if end < finish:
            points.append([end, 0.0])
    return {"presence": points, "period": finish}


# -- the World's Changes ---------------------------------------------------------------


def build(entries: Sequence[Mapping[str, Any]], devices: Mapping[str, DeviceSpec],
          network: Network) -> tuple[Change, ...]:
    """Normalised entries as World Changes, every name checked against the pool; a
    device's presence comes from one source at most."""
    changes: list[Change] = []
    present: dict[str, str] = {}  # device -> the entry that drives its presence

    def device(name: str, where: str) -> str:
        if name not in devices:
            raise ScenarioError(where, name, f"choose one of: {', '.join(devices)}")
        return name

    def presence(name: str, where: str, change: Change) -> None:
        if name in present:
            raise ScenarioError(where, name, f"one presence source per device ({present[name]} "
                                "drives it already)")
        present[name] = where
        changes.append(change)

    for i, e in enumerate(entries):
        where = f"changes[{i}]"
        period = e.get("period")
        if "devices" in e:
            for j, (name, t) in enumerate(zip(e["devices"], e["trace"])):
                at = f"{where}.devices[{j}]"
                presence(device(name, at), at, Change("presence", name, _made(t["presence"],
                                                                            t.get("period"))))
        elif "device" in e:
            name = device(e["device"], f"{where}.device")
            if "presence" in e:
                presence(name, f"{where}.device", Change("presence", name,
                                                         _made(e["presence"], period)))
            if "availability" in e:
                a = e["availability"]
                presence(name, f"{where}.device", Change("availability", name, up=a["up"],
                                                         down=a["down"]))
            if "speed" in e:
                unit = e.get("unit")
                if unit is not None and unit not in devices[name].units:
                    raise ScenarioError(f"{where}.unit", unit,
                                        f"choose one of: {', '.join(devices[name].units)}")
                changes.append(Change("speed", name, _made(e["speed"], period), unit))
        else:
            try:
                network.resources(e["link"])
            except PlanError as err:
                raise ScenarioError(f"{where}.link", e["link"], err.allowed) from None
            for kind in ("bandwidth", "loss"):
                if kind in e:
                    changes.append(Change(kind, e["link"], _made(e[kind], period)))
    return tuple(changes)


def _made(points: list[list[float]], period: float | None) -> Profile:
    return Profile(tuple((float(t), float(v)) for t, v in points), period)
