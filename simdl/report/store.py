"""The run folder on disk: atomic writes, fixed-format CSV (its text from
`report.csvtext`) and JSON, run ids.

Owns how bytes reach a file (temporary sibling, fsync, os.replace) so a reader
never sees half a file, how a folder reaches its place (built in a hidden
`.<name>.incomplete-<pid>-…` sibling, renamed in whole) so a reader never sees
half a run, which names may become folders, and formats so the same result
gives the same bytes. Knows nothing of what the tables mean.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import string
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from simdl.errors import ScenarioError, SimdlError
from simdl.report.csvtext import csv_lines

#: The mode of every written file (mkstemp makes 0600 files).
FILE_MODE = 0o644
#: The mode of every run folder (mkdtemp makes 0700 folders).
FOLDER_MODE = 0o755
#: A scenario name or strategy label as a file gives it: it names a folder as it is.
NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
NAME_RULE = ("use 1 to 64 ASCII letters, digits, '_', '.' or '-', not starting with '.' "
             "(it names a folder)")
#: Longest folder name simdl makes from a label (file systems allow 255 bytes; the
#: hidden `.<name>.incomplete-<pid>-…` sibling needs room too).
MAX_FOLDER = 200
#: Characters a label keeps in its folder name; every other one is written %XX.
_SAFE = frozenset(string.ascii_letters + string.digits + "_.-[]=")
#: Encoding of a lone surrogate (a name read from bytes that are not UTF-8): kept, not lost.
_RAW = "surrogatepass"
#: What a killed writer leaves: `.<name>.incomplete-<pid>-<random>` (a folder or a file).
_LEFTOVER = re.compile(r"\..+\.incomplete-(\d+)-.*", re.DOTALL)


def atomic_write(path: str | os.PathLike[str], data: str | bytes | Iterable[str]) -> Path:
    """Write `data` to `path` so that `path` is either the old file or the whole new one.

    The bytes go to a temporary file in the same folder (same file system, so the
    rename is atomic), are flushed and fsynced, then renamed over `path`. On any
    error the temporary file is removed and the old `path`, if any, is untouched.
    `data` may come as pieces of text (`joined`), written one after the other.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pieces = ([data.encode("utf-8")] if isinstance(data, str)
              else [bytes(data)] if isinstance(data, (bytes, bytearray, memoryview))
              else (piece.encode("utf-8") for piece in data))
    remove_leftovers(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_incomplete(path.name), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for piece in pieces:
                f.write(piece)
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
    lines = csv_lines(df)
    return atomic_write(path, lines if isinstance(lines, str)
                        else joined("", lines, "\n", sep="\n"))


def joined(head: str, items: list[str], tail: str, sep: str = ",",
           per_piece: int = 8192) -> Iterator[str]:
    """head + sep.join(items) + tail, in pieces of `per_piece` items: a long text is
    written without ever being held whole."""
    yield head
    for i in range(0, len(items), per_piece):
        yield (sep if i else "") + sep.join(items[i:i + per_piece])
    yield tail


def write_json(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write `obj` as compact JSON with sorted keys and a final newline.

    NaN and infinity are refused (they are not JSON; viewers reject them).
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return atomic_write(path, text + "\n")


def new_run_id(root: str | os.PathLike[str], scenario: str = "", strategy: str = "",
               contents: str | os.PathLike[str] | None = None) -> str:
    """Claim the next free numbered folder under root/scenario and return its name.

    Names are `<strategy>-0001`, `<strategy>-0002`, ... (plain `0001`, ... without a
    strategy, e.g. for a run of all strategies; without a scenario the folder is
    root itself). The folder is created here (mkdir fails if it exists), so two
    runs started together never get the same id. With `contents` (a finished
    folder beside it) the id is claimed only then and `contents` renamed into it,
    so a run killed before it finished takes no number. No wall-clock time goes in.
    """
    if scenario:
        check_name("scenario.name", scenario)
    if strategy:
        check_name("strategies[].name", strategy)
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
        if contents is not None:
            os.rename(contents, folder / run_id)  # onto our own empty folder
        return run_id


def check_name(where: str, name: str) -> None:
    """Refuse a name that is not one plain folder name (NAME)."""
    if not NAME.fullmatch(name):
        raise ScenarioError(where, name, NAME_RULE)


def folder_name(label: str) -> str:
    """`label` as one folder name, for any text (a sweep's `label[param=value]` too).

    Letters, digits and `_ . - [ ] =` stay; every other character, and a leading
    '.', becomes its UTF-8 bytes as %XX. Decoding the %XX gives the label back, so
    two labels never share a folder, and no label makes a path ('/', '..').
    """
    out = "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode("utf-8", _RAW))
                  for c in label)
    return "%2E" + out[1:] if out.startswith(".") else out


def check_folder(target: str | os.PathLike[str], where: str, *, overwrite: bool = False,
                 numbered: bool = False, marker: str = "", shown: str | None = None) -> Path:
    """Refuse, before anything runs, a folder a whole run could not be written to.

    `target` must be a folder or not exist, under a place simdl can write. If it
    holds files it is refused, unless `overwrite` and it holds `marker` (it is a
    run folder, which is replaced whole; never some other folder). `numbered`:
    `target` holds numbered runs, so files in it are expected. Returns it absolute.
    """
    path = Path(os.path.abspath(target))
    shown = str(target) if shown is None else shown
    if not path.name or len(os.fsencode(path.name)) > MAX_FOLDER:
        raise SimdlError(where, shown, f"a folder name of 1 to {MAX_FOLDER} bytes")
    if os.path.lexists(path) and not path.is_dir():
        raise SimdlError(where, shown, "a folder to write the run in; this is a file")
    if numbered:
        _check_place(path, where, shown, create=True)
        return path
    cwd = Path.cwd()
    if path == cwd or path in cwd.parents:
        raise SimdlError(where, shown, "a folder outside the current one (it would be renamed "
                         "away from under it)")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise SimdlError(where, shown, "a new or empty folder; add --overwrite to replace "
                             "this run folder whole")
        if not marker or not (path / marker).is_file():
            raise SimdlError(where, shown, f"--overwrite replaces only a run folder (one "
                             f"holding {marker}); this folder holds other files")
    _check_place(path.parent, where, shown, create=True)
    return path


def check_file(target: str | os.PathLike[str], where: str) -> Path:
    """Refuse, before anything runs, a file name that could not be written: a folder,
    or a file in a folder that does not exist or is not writable."""
    path = Path(os.path.abspath(target))
    if path.is_dir():
        raise SimdlError(where, str(target), "a file to write; this is a folder")
    _check_place(path.parent, where, str(target), create=False)
    return path


def _check_place(folder: Path, where: str, shown: str, create: bool) -> None:
    """`folder` must be a writable folder or, if `create`, be makeable under one."""
    place = folder
    while create and not os.path.lexists(place) and place != place.parent:
        place = place.parent
    if not place.exists():
        raise SimdlError(where, shown,
                         f"a path in an existing folder ({str(place)!r} does not exist)")
    if not place.is_dir():
        raise SimdlError(where, shown, f"a path under a folder ({str(place)!r} is a file)")
    if not os.access(place, os.W_OK | os.X_OK):
        raise SimdlError(where, shown, f"a place simdl may write ({str(place)!r} is not writable)")


def write_staged(target: str | os.PathLike[str], fill: Callable[[Path], object], *,
                 where: str = "directory", overwrite: bool = False, numbered: bool = False,
                 marker: str = "", shown: str | None = None) -> Path:
    """Make a folder whole or not at all: `fill` writes into a hidden sibling
    `.<name>.incomplete-<pid>-…`, which is then renamed to `target` (replacing it
    whole if `overwrite`), or with `numbered` to the next run id in `target`.

    A failure or interrupt removes the sibling; a killed process leaves it, hidden
    and named incomplete, and the next write there removes it. Checked as
    `check_folder`; an OS error on the way is one line (a SimdlError). Returns the
    folder written.
    """
    path = check_folder(target, where, overwrite=overwrite, numbered=numbered, marker=marker,
                        shown=shown)
    shown = str(target) if shown is None else shown
    parent = path if numbered else path.parent
    tmp: Path | None = None
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(parent)
        stem = "run" if numbered else path.name
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=_incomplete(stem)))
        os.chmod(tmp, FOLDER_MODE)
        fill(tmp)
        if numbered:
            written = Path(target) / new_run_id(path, contents=tmp)
        else:
            _put_in_place(tmp, path, overwrite)
            written = Path(target)
    except BaseException as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise SimdlError(where, shown,
                             f"a folder simdl can write ({err.strerror or err})") from None
        raise
    _sync_folder(parent)
    return written


def _put_in_place(tmp: Path, target: Path, overwrite: bool) -> None:
    """Rename `tmp` to `target`; with `overwrite`, an old `target` is first moved into a
    hidden incomplete folder (so a crash between the renames leaves only leftovers)."""
    if overwrite and os.path.lexists(target):
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=_incomplete(target.name)))
        os.rename(target, old / target.name)
        try:
            os.rename(tmp, target)
        except BaseException:
            os.rename(old / target.name, target)  # the old run stays, as it was
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, target)  # onto nothing or an empty folder; a full one fails


def _incomplete(name: str) -> str:
    """The name prefix of what this process is still writing for `name`."""
    return f".{name}.incomplete-{os.getpid()}-"


def remove_leftovers(folder: Path) -> None:
    """Remove what killed writers left in `folder` (names as `_incomplete` makes them,
    of a process that no longer runs). Best effort: what cannot go stays, hidden."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        m = _LEFTOVER.fullmatch(entry.name)
        if m is None or _running(int(m.group(1))):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            pass


def _running(pid: int) -> bool:
    """Whether process `pid` may still be writing (when unsure: yes)."""
    if pid == os.getpid() or os.name == "nt":  # Windows' os.kill(pid, 0) would end it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process
    return True
