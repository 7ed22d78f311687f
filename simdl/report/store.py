"""The run folder on disk: atomic writes, fixed-format CSV and JSON, run ids.

Owns how bytes reach a file (temporary sibling, fsync, os.replace) so a reader
never sees half a file, and formats so the same result gives the same bytes.
Knows nothing of what the tables mean.
"""
from __future__ import annotations

import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from simdl.errors import ScenarioError

#: Fixed float format for CSV: enough digits for the results, the same bytes every run.
FLOAT_FORMAT = "%.9g"
#: The mode of every written file (mkstemp makes 0600 files).
FILE_MODE = 0o644
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def atomic_write(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write `data` to `path` so that `path` is either the old file or the whole new one.

    The bytes go to a temporary file in the same folder (same file system, so the
    rename is atomic), are flushed and fsynced, then renamed over `path`. On any
    error the temporary file is removed and the old `path`, if any, is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _sync_folder(path.parent)
    return path


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable where the platform allows opening a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_csv(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write `df` without its index, floats as %.9g, "\\n" line ends: byte-stable."""
    text = df.to_csv(index=False, float_format=FLOAT_FORMAT, lineterminator="\n")
    return atomic_write(path, text)


def write_json(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write `obj` as compact JSON with sorted keys and a final newline.

    NaN and infinity are refused (they are not JSON; viewers reject them).
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return atomic_write(path, text + "\n")


def write_png(figure: Figure, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Render `figure` with Agg (no pyplot, no global backend) and write it atomically."""
    FigureCanvasAgg(figure)  # attaches itself as figure.canvas
    buffer = io.BytesIO()
    # No "Software" text chunk: the bytes then depend on the picture only.
    figure.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return atomic_write(path, buffer.getvalue())


def new_run_id(root: str | os.PathLike[str], scenario: str = "", strategy: str = "") -> str:
    """Claim the next free numbered folder under root/scenario and return its name.

    Names are `<strategy>-0001`, `<strategy>-0002`, ... (plain `0001`, ... without a
    strategy, e.g. for a run of all strategies; without a scenario the folder is
    root itself). The folder is created here (mkdir fails if it exists), so two
    runs started together never get the same id. No wall-clock time goes into it.
    """
    if scenario:
        _check_name("scenario.name", scenario)
    if strategy:
        _check_name("strategies[].name", strategy)
    folder = Path(root) / scenario
    folder.mkdir(parents=True, exist_ok=True)
    prefix = f"{strategy}-" if strategy else ""
    pattern = re.compile(rf"{re.escape(prefix)}(\d{{4,}})")
    taken = [int(m.group(1)) for p in folder.iterdir() if (m := pattern.fullmatch(p.name))]
    n = max(taken, default=0) + 1
    while True:
        run_id = f"{prefix}{n:04d}"
        try:
            (folder / run_id).mkdir()
        except FileExistsError:
            n += 1
            continue
        return run_id


def _check_name(where: str, name: str) -> None:
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise ScenarioError(where, name, "use letters, digits, '-', '_' or '.' (it names a folder)")
