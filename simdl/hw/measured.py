"""Published *measured* single-device latencies (`simdl/hw/measured.csv`), checked.

The numbers a calibration fits the catalogue's efficiencies to: each row is one latency a
source reports for one model on one unit of one device (or of the same silicon in another
product), with the runtime that produced it, because the software moves a latency as much as
the chip does. A row is refused with the line and the field named, so a bad row never reaches
a fit silently.
"""
from __future__ import annotations

import datetime
import io
import math
import re
from importlib import resources
from pathlib import Path

import pandas as pd

from simdl.errors import SimdlError
from simdl.hw import catalogue

COLUMNS = ("device", "silicon", "match", "unit", "threads", "precision", "batch", "runtime",
           "model", "input", "latency_ms", "statistic", "source", "retrieved", "notes")
MATCHES = ("same_device", "same_silicon")
#: How the source summarised its runs; "unstated" when it does not say.
STATISTICS = ("min", "avg", "median", "p90", "unstated")
#: The models a calibration fits to; other models may sit in the file, clearly named.
CALIBRATION_MODELS = ("mobilenet_v2", "mobilenet_v3_small", "resnet18", "resnet50",
                      "efficientnet_b0", "deit_tiny", "mobilebert")
_NAME = re.compile(r"[a-z0-9][a-z0-9_.]*")
_INPUT = re.compile(r"\d+x\d+|seq\d+")
#: Fields one measurement is known by: two rows alike in all of them are one row twice.
_KEY = ("device", "silicon", "unit", "threads", "precision", "batch", "runtime", "model",
        "input", "statistic", "source")


def load(path: str | Path | None = None) -> pd.DataFrame:
    """The checked table (the shipped file unless `path`): one row per measurement, with
    `threads` nullable (GPU/NPU rows and sources that do not say), `batch` int and
    `latency_ms` float."""
    if path is None:
        text = resources.files("simdl.hw").joinpath("measured.csv").read_text(encoding="utf-8")
        name = "measured.csv"
    else:
        text, name = Path(path).read_text(encoding="utf-8"), Path(path).name
    return parse(text, name)


def parse(text: str, name: str = "measured.csv") -> pd.DataFrame:
    """Checks `text` (csv after leading '#' comment lines) row by row; see `load`."""
    lines = text.splitlines(keepends=True)
    skipped = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    frame = pd.read_csv(io.StringIO("".join(lines[skipped:])), dtype=str,
                        keep_default_na=False)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise SimdlError(name, missing,
                         f"missing columns; a measured table has: {', '.join(COLUMNS)}")
    devices = catalogue.read()
    rows = [_row(dict(zip(frame.columns, values)), f"{name} line {skipped + 2 + i}", devices)
            for i, values in enumerate(frame.itertuples(index=False, name=None))]
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    table["threads"] = table["threads"].astype("Int64")
    table["batch"] = table["batch"].astype(int)
    table["latency_ms"] = table["latency_ms"].astype(float)
    repeated = table.duplicated(subset=list(_KEY), keep="first")
    if repeated.any():
        first = int(repeated.to_numpy().argmax())
        raise SimdlError(f"{name} line {skipped + 2 + first}", table.loc[first, "model"],
                         "the same measurement twice (same device, unit, threads, precision, "
                         "batch, runtime, model, input, statistic and source)")
    return table


def _row(raw: dict[str, str], where: str, devices: dict) -> dict[str, object]:
    """One row's fields, checked and typed; the error names the line and the field."""
    row = {c: raw[c].strip() for c in COLUMNS}
    device, unit = row["device"], row["unit"]
    if device and device not in devices:
        raise SimdlError(f"{where}.device", device,
                         f"a catalogue device type or empty: {', '.join(sorted(devices))}")
    if device and row["match"] not in MATCHES:
        raise SimdlError(f"{where}.match", row["match"], f"one of {', '.join(MATCHES)}")
    if not device and row["match"]:
        raise SimdlError(f"{where}.match", row["match"], "empty when device is empty")
    units = sorted(devices[device]["units"]) if device else catalogue.KINDS
    if unit not in units:
        raise SimdlError(f"{where}.unit", unit,
                         f"a unit of {device}: {', '.join(units)}" if device
                         else f"one of {', '.join(units)}")
    if row["precision"] not in catalogue.DTYPES:
        raise SimdlError(f"{where}.precision", row["precision"],
                         f"one of {', '.join(catalogue.DTYPES)}")
    if row["statistic"] not in STATISTICS:
        raise SimdlError(f"{where}.statistic", row["statistic"], f"one of {', '.join(STATISTICS)}")
    for field in ("silicon", "runtime", "source"):
        if not row[field]:
            raise SimdlError(f"{where}.{field}", row[field], "required: not empty")
    if not _NAME.fullmatch(row["model"]):
        raise SimdlError(f"{where}.model", row["model"],
                         "a lower-case model name such as mobilenet_v2")
    if not _INPUT.fullmatch(row["input"]):
        raise SimdlError(f"{where}.input", row["input"],
                         "an image size such as 224x224 or a sequence length such as seq128")
    row["threads"] = _count(row["threads"], f"{where}.threads", empty=True)
    row["batch"] = _count(row["batch"], f"{where}.batch", empty=False)
    row["latency_ms"] = _latency(row["latency_ms"], f"{where}.latency_ms")
    _date(row["retrieved"], f"{where}.retrieved")
    return row


def _count(text: str, where: str, empty: bool) -> int | None:
    if empty and not text:
        return None
    if not re.fullmatch(r"[1-9][0-9]*", text):
        raise SimdlError(where, text, "a whole number >= 1" + (" or empty" if empty else ""))
    return int(text)


def _latency(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise SimdlError(where, text, "a finite number of milliseconds > 0")
    return value


def _date(text: str, where: str) -> None:
    try:
        valid = (re.fullmatch(r"\d{4}-\d{2}-\d{2}", text) is not None
                 and datetime.date.fromisoformat(text) is not None)
    except ValueError:
        valid = False
    if not valid:
        raise SimdlError(where, text, "the date the source was read, YYYY-MM-DD")
