"""Quantities as people write them ("300Mbps", "5ms", "4GiB") -> SI numbers.

Inside simdl everything is SI: seconds, bytes, bytes/s, FLOP/s, watts, joules.
A string that does not parse raises UnitError quoting it and listing the forms
accepted for that kind of quantity. Plain numbers are taken as already SI.
"""
from __future__ import annotations

import re

from simdl.errors import UnitError

_SI = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_BINARY = {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40}


def _prefixed(units: dict[str, float], prefixes: dict[str, float]) -> dict[str, float]:
    return {p + u: pf * f for u, f in units.items() for p, pf in prefixes.items()}


#: kind -> {suffix: factor to SI}. Bits are "b", bytes "B" (1 B = 8 b).
SUFFIXES: dict[str, dict[str, float]] = {
    "size": _prefixed({"B": 1.0}, _SI | _BINARY) | _prefixed({"bit": 1 / 8}, _SI),
    "bandwidth": _prefixed({"bps": 1 / 8, "b/s": 1 / 8, "Bps": 1.0, "B/s": 1.0}, _SI | _BINARY),
    "time": {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9, "min": 60.0, "h": 3600.0},
    "compute": _prefixed({"FLOPS": 1.0, "FLOP/s": 1.0, "OPS": 1.0, "OP/s": 1.0}, _SI),
    "power": {"W": 1.0, "mW": 1e-3, "kW": 1e3},
    "energy": {"J": 1.0, "kJ": 1e3, "Wh": 3600.0, "mWh": 3.6, "kWh": 3.6e6},
}
_EXAMPLE = {"size": "4GiB", "bandwidth": "300Mbps", "time": "5ms", "compute": "26TOPS",
            "power": "5W", "energy": "15Wh"}
_NUMBER = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([^\s\d].*?)?\s*$")


def parse(value: str | float | int, kind: str, where: str | None = None) -> float:
    """`value` as an SI float for `kind` (one of SUFFIXES). Numbers pass through."""
    if kind not in SUFFIXES:
        raise ValueError(f"unknown quantity kind {kind!r}; one of {sorted(SUFFIXES)}")
    if isinstance(value, bool):
        raise UnitError(where or kind, value, _allowed(kind))
    if isinstance(value, (int, float)):
        return float(value)
    m = _NUMBER.match(str(value))
    if m is None:
        raise UnitError(where or kind, value, _allowed(kind))
    number, suffix = float(m.group(1)), m.group(2) or ""
    if suffix == "":
        return number
    factor = SUFFIXES[kind].get(suffix)
    if factor is None:
        raise UnitError(where or kind, value, _allowed(kind))
    return number * factor


def _allowed(kind: str) -> str:
    shown = sorted(SUFFIXES[kind], key=lambda s: (SUFFIXES[kind][s], s))
    return (f"write a {kind} as a number and one of {', '.join(shown)} "
            f"(for example '{_EXAMPLE[kind]}')")


def size(value: str | float) -> float:
    """Bytes: '4GiB', '512MB', '100kB'."""
    return parse(value, "size")


def bandwidth(value: str | float) -> float:
    """Bytes per second: '300Mbps' (bits), '1.5GB/s' (bytes)."""
    return parse(value, "bandwidth")


def duration(value: str | float) -> float:
    """Seconds: '5ms', '2us', '1.5s'."""
    return parse(value, "time")


def compute(value: str | float) -> float:
    """Operations per second: '2TFLOPS', '26TOPS'."""
    return parse(value, "compute")


def power(value: str | float) -> float:
    """Watts: '5W', '300mW'."""
    return parse(value, "power")


def energy(value: str | float) -> float:
    """Joules: '15Wh', '54kJ'."""
    return parse(value, "energy")


def human(value: float, kind: str) -> str:
    """A short human string for an SI value, for reports ('37.5 MB/s', '5 ms')."""
    base = {"size": "B", "bandwidth": "B/s", "compute": "FLOP/s", "power": "W", "energy": "J"}
    if kind == "time":
        for unit, f in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
            if abs(value) >= f or unit == "us":
                return f"{value / f:.3g} {unit}"
    for p in ("P", "T", "G", "M", "k", ""):
        if abs(value) >= _SI[p] or p == "":
            return f"{value / _SI[p]:.3g} {p}{base[kind]}"
    raise ValueError(kind)
