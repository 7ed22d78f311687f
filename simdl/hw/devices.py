"""Devices of the pool: their specs, the roofline kernel-time model and the power model.

Owns DeviceSpec/UnitSpec, the catalogue of device types (data in catalogue.yaml, read
by catalogue.py) and per-device overrides. Knows nothing of layers, the network graph
or the clock: the engine asks "how long, how many watts" and keeps time itself.
"""
from __future__ import annotations

import bisect
import functools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from simdl.errors import PlanError, ScenarioError
from simdl.hw import catalogue, runtimes
from simdl.hw.catalogue import DTYPES, INTERFACES, KINDS, PATTERNS

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DTYPES", "INTERFACES", "KINDS", "PATTERNS", "DEVICE_TYPES", "FrozenMap", "UnitSpec",
           "DeviceSpec", "background_at", "kernel_time", "best_unit", "sparse_speedup",
           "device_power", "load_catalogue", "make_device", "catalogue_frame"]

K = TypeVar("K")
V = TypeVar("V")


class FrozenMap(Mapping[K, V]):
    """A read-only, hashable mapping, so a frozen spec is frozen all the way down.

    Compares equal to a dict with the same items; pickles (sweeps ship specs to workers).
    """

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[K, V] | Iterable[tuple[K, V]] = ()):
        self._items = dict(items)

    def __getitem__(self, key: K) -> V:
        return self._items[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __repr__(self) -> str:
        return repr(self._items)

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenMap, (self._items,))


@dataclass(frozen=True)
class UnitSpec:
    """One compute unit. Rates are dense peaks; `efficiency` says how much real kernels get;
    `sparsity` says which pruning patterns it multiplies faster, per dtype (see sparse_speedup)."""

    kind: str                      # "cpu" | "gpu" | "npu"
    peak: Mapping[str, float]      # dtype -> peak op/s; a missing dtype is unsupported
    efficiency: float              # fraction of peak reached by real DL kernels, in (0, 1]
    overhead: float                # s of launch/dispatch per kernel
    active_power: float            # W above the device's idle while this unit runs a kernel
    mem_bw: float | None = None    # B/s this unit sees if not the device's (a host CPU beside VRAM)
    memory: float | None = None    # bytes of the unit's own memory for ML (a discrete GPU's VRAM);
                                   # None: it works in the device's `memory`
    # pattern ("2:4") -> dtype -> speed-up of weight products pruned in it; absent = none
    sparsity: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "peak", FrozenMap(self.peak))
        object.__setattr__(self, "sparsity", FrozenMap(
            (pattern, FrozenMap(factors)) for pattern, factors in self.sparsity.items()))


@dataclass(frozen=True)
class DeviceSpec:
    """A static description of one device type, SI units throughout."""

    type: str                      # catalogue key, e.g. "phone_flagship"
    label: str                     # human name
    units: Mapping[str, UnitSpec]  # by unit name ("cpu", "gpu", "npu")
    memory: float                  # bytes of RAM for ML (not all of it; older GPU entries: VRAM)
    mem_bw: float                  # B/s, bandwidth of that memory
    idle_power: float              # W, whole device awake and idle
    radio_tx_power: float          # W above idle while sending
    radio_rx_power: float          # W above idle while receiving
    battery: float | None          # J; None for mains
    background: float | tuple[tuple[float, float], ...]  # load, or ((0, l0), (t1, l1), ...)
    interfaces: Mapping[str, float]  # interface -> goodput B/s; absent = none
    # B/s sequential read from the device's storage (weights paged in when they do not fit);
    # every catalogue device has one, None only on specs built by hand
    storage_bw: float | None = None
    sources: Mapping[str, str] = field(default_factory=dict)  # field path -> "kind; source; retrieved"

    def __post_init__(self) -> None:
        for name in ("units", "interfaces", "sources"):
            object.__setattr__(self, name, FrozenMap(getattr(self, name)))
        if not isinstance(self.background, (int, float)):
            steps = tuple((float(t), float(load)) for t, load in self.background)
            object.__setattr__(self, "background", steps)


def background_at(spec: DeviceSpec, t: float) -> float:
    """The fraction of compute other apps take at time t (the step in force at t)."""
    if isinstance(spec.background, (int, float)):
        return float(spec.background)
    starts = [t0 for t0, _ in spec.background]
    return spec.background[max(bisect.bisect_right(starts, t) - 1, 0)][1]


def kernel_time(spec: DeviceSpec, unit: str, flops: float, nbytes: float,
                dtype: str = "fp32", t: float = 0.0) -> float:
    """Seconds for one kernel started at t: a roofline plus launch overhead, slowed by load.

    (max(flops / (peak[dtype] x efficiency), nbytes / mem_bw) + overhead) / (1 - background).
    The load is the one in force when the kernel starts; a later change does not touch it.
    """
    rate, bandwidth, overhead = unit_rates(spec, unit, dtype)
    return roofline(rate, bandwidth, overhead, background_at(spec, t), flops, nbytes)


def unit_rates(spec: DeviceSpec, unit: str, dtype: str = "fp32") -> tuple[float, float, float]:
    """The roofline's constants for `unit` and `dtype`: (ops/s reached, bytes/s, overhead s).

    The simulator looks these up once per unit and dtype and calls `roofline` per kernel.
    """
    u = _unit(spec, unit)
    rate = _peak(spec, unit, u, dtype) * u.efficiency
    return rate, spec.mem_bw if u.mem_bw is None else u.mem_bw, u.overhead


def roofline(rate: float, bandwidth: float, overhead: float, load: float,
             flops: float, nbytes: float) -> float:
    """The one kernel-time formula: compute- or memory-bound, plus overhead, over the free share."""
    return (max(flops / rate, nbytes / bandwidth) + overhead) / (1.0 - load)


def best_unit(spec: DeviceSpec, dtype: str = "fp32") -> str:
    """The unit with the highest effective rate (peak x efficiency) for dtype; ties by name."""
    rates = sorted((-u.peak[dtype] * u.efficiency, name)
                   for name, u in spec.units.items() if dtype in u.peak)
    if not rates:
        has = "; ".join(f"{n}: {', '.join(u.peak)}" for n, u in spec.units.items())
        raise PlanError(f"devices.{spec.type}.units", dtype, f"no unit runs it ({has})")
    return rates[0][1]


def sparse_speedup(spec: DeviceSpec, unit: str | None, dtype: str, pattern: str | None) -> float:
    """How many times faster `unit` multiplies `dtype` weights pruned in `pattern` (None:
    not pruned): the unit's declared factor, else 1 -- a unit without a sparse mode for
    that pattern and dtype multiplies the zeros like any weight. `unit` None is the one
    the simulator runs the kernel on: best_unit for the dtype.
    """
    if pattern is None:
        return 1.0
    u = _unit(spec, unit or best_unit(spec, dtype))
    return u.sparsity.get(pattern, {}).get(dtype, 1.0)


def device_power(spec: DeviceSpec, busy_units: Iterable[str], tx: bool, rx: bool) -> float:
    """Watts drawn now: idle, plus each busy unit once, plus the radio if sending/receiving."""
    watts = spec.idle_power
    for name in sorted(set(busy_units)):
        watts += _unit(spec, name).active_power
    if tx:
        watts += spec.radio_tx_power
    if rx:
        watts += spec.radio_rx_power
    return watts


def load_catalogue() -> dict[str, DeviceSpec]:
    """Every catalogue device by type (parsed once; the specs are shared and immutable)."""
    return dict(_catalogue())


def make_device(type: str, overrides: Mapping[str, Any] | None = None,
                where: str = "devices", runtime: str | None = None) -> DeviceSpec:
    """A catalogue device with fields overridden, e.g. {"units.npu.peak.int8": "26TOPS"},
    its units first at `runtime`'s profiled efficiency and overhead (`hw.runtimes`).

    Overrides nest or use dotted paths, take unit strings ("4GiB", "2W", "50us"), and a
    null removes a unit, dtype or interface (or makes battery mains). Errors name
    `where` + the field path, the value and what is allowed.
    """
    raw = catalogue.read()
    if type not in raw:
        raise ScenarioError(f"{where}.type", type,
                            f"choose one of: {', '.join(sorted(raw))}")
    if not overrides and runtime is None:
        return _catalogue()[type]
    base = raw[type] if runtime is None else runtimes.lay(raw[type], type, runtime, where)
    merged = catalogue.merge(base, overrides or {}, where)
    return _build(type, catalogue.parse_device(merged, where))


def catalogue_frame() -> pd.DataFrame:
    """One row per device type (sorted, `type` a column) with key figures, for `simdl devices`.

    Rates are the peaks of the unit best_unit picks for that dtype (NaN if none runs it);
    `vram_GiB` is the units' own memory (NaN when every unit works in the device's RAM).
    """
    import pandas as pd  # only this table needs pandas; keep the engine's import light

    rows = []
    for type, spec in _catalogue().items():
        row: dict[str, Any] = {"type": type, "label": spec.label}
        for dtype, scale, name in (("fp32", 1e12, "fp32_TFLOPS"), ("int8", 1e12, "int8_TOPS")):
            unit = _best_or_none(spec, dtype)
            row[f"{dtype}_unit"] = unit or ""
            row[name] = spec.units[unit].peak[dtype] / scale if unit else float("nan")
        row["memory_GiB"] = spec.memory / 2**30
        row["mem_bw_GBps"] = spec.mem_bw / 1e9
        own = [u.memory for u in spec.units.values() if u.memory is not None]
        row["vram_GiB"] = sum(own) / 2**30 if own else float("nan")
        row["storage_GBps"] = (spec.storage_bw / 1e9 if spec.storage_bw is not None
                               else float("nan"))
        row["idle_W"] = spec.idle_power
        row["busy_W"] = device_power(spec, spec.units, True, True)
        row["battery_Wh"] = spec.battery / 3600 if spec.battery is not None else float("nan")
        row["interfaces"] = ", ".join(f"{k} {v * 8 / 1e6:g} Mbps"
                                      for k, v in sorted(spec.interfaces.items()))
        rows.append(row)
    return pd.DataFrame(rows)


def __getattr__(name: str) -> Any:
    # DEVICE_TYPES reads the data file, so it is computed on first use, not at import.
    if name == "DEVICE_TYPES":
        return tuple(sorted(catalogue.read()))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.lru_cache(maxsize=1)
def _catalogue() -> dict[str, DeviceSpec]:
    return {type: _build(type, catalogue.parse_device(raw, f"catalogue.{type}"))
            for type, raw in sorted(catalogue.read().items())}


def _build(type: str, fields: dict[str, Any]) -> DeviceSpec:
    units = {name: UnitSpec(**unit) for name, unit in fields.pop("units").items()}
    return DeviceSpec(type=type, units=units, **fields)


def _unit(spec: DeviceSpec, unit: str) -> UnitSpec:
    try:
        return spec.units[unit]
    except KeyError:
        raise PlanError(f"devices.{spec.type}.units", unit,
                        f"choose one of: {', '.join(spec.units)}") from None


def _peak(spec: DeviceSpec, name: str, unit: UnitSpec, dtype: str) -> float:
    try:
        return unit.peak[dtype]
    except KeyError:
        raise PlanError(f"devices.{spec.type}.units.{name}.peak", dtype,
                        f"this unit runs {', '.join(unit.peak)}") from None


def _best_or_none(spec: DeviceSpec, dtype: str) -> str | None:
    return best_unit(spec, dtype) if any(dtype in u.peak for u in spec.units.values()) else None
