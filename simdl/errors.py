"""The one family of errors a user can fix.

Every message is one line: where (a field path), the value, what is allowed.
The CLI prints it and exits 2; anything that is not a SimdlError is a bug.
"""
from __future__ import annotations

from collections.abc import Iterator

#: Characters of a value an error line quotes; past them, "…". Room for a list
#: nested to the scenario loader's depth bound ([[…[1]…]], 127 characters) to show
#: whole; a huge value (a 1 MiB string, an alias bomb's expansion) is cut to a
#: prefix, built piece by piece, so quoting it costs no more than a short one.
QUOTE = 128
#: Characters of the `where` (a field path: it can hold a user's key) and of
#: `allowed` (it can list a user's names) kept on the line.
WHERE, ALLOWED = 160, 400


def shorten(text: str, limit: int = QUOTE) -> str:
    """`text` whole, or its first `limit` characters and "…"."""
    return text if len(text) <= limit else text[:limit] + "…"


def one_line(text: str) -> str:
    """`text` with line breaks and other control characters escaped (as repr does),
    so a user's key or name cannot split the one-line message."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def quote(value: object, limit: int = QUOTE) -> str:
    """repr(value) on one line, or its first `limit` characters and "…". Time and
    memory are bounded by `limit`, not by the value's size or depth."""
    out: list[str] = []
    size = 0
    for piece in _pieces(value, set(), limit):
        piece = one_line(piece)
        out.append(piece)
        size += len(piece)
        if size > limit:
            return "".join(out)[:limit] + "…"
    return "".join(out)


_BRACKETS = {list: "[]", tuple: "()", dict: "{}"}


def _pieces(value: object, open_ids: set[int], limit: int) -> Iterator[str]:
    """repr(value) in pieces, lazily: the caller stops once it has enough, and each
    piece is at most about `limit` long (every container opens with one character,
    so the generators nest at most `limit` deep before the caller stops)."""
    kind = type(value)
    if kind in _BRACKETS:
        left, right = _BRACKETS[kind]
        if id(value) in open_ids:  # a container inside itself, as repr shows it
            yield f"{left}...{right}"
            return
        open_ids.add(id(value))
        yield left
        if kind is dict:
            for i, (k, v) in enumerate(value.items()):  # type: ignore[attr-defined]
                if i:
                    yield ", "
                yield from _pieces(k, open_ids, limit)
                yield ": "
                yield from _pieces(v, open_ids, limit)
        else:
            for i, item in enumerate(value):  # type: ignore[attr-defined]
                if i:
                    yield ", "
                yield from _pieces(item, open_ids, limit)
            if kind is tuple and len(value) == 1:  # type: ignore[arg-type]
                yield ","
        yield right
        open_ids.discard(id(value))
    elif isinstance(value, (str, bytes)):
        yield _text(value, limit)
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * limit:
        yield f"<a {value.bit_length()}-bit integer>"  # its digits would be long (or refused)
    else:
        try:
            yield repr(value)
        except Exception:  # a broken __repr__ must not hide the user's error
            yield f"<{kind.__name__}>"


def _text(value: str | bytes, limit: int) -> str:
    """repr of a string, or of its first `limit` characters with the quote repr
    would choose for the whole (and no closing quote: the text goes on)."""
    if len(value) <= limit:
        return repr(value)
    prefix = "b" if isinstance(value, bytes) else ""
    single, double = (b"'", b'"') if isinstance(value, bytes) else ("'", '"')
    mark = '"' if single in value and double not in value else "'"  # type: ignore[operator]
    head = repr(value[:limit])
    inner = head[len(prefix) + 1:-1]
    if head[len(prefix)] == '"' and mark == "'":  # the head has ', the whole also has "
        inner = inner.replace("'", "\\'")
    return prefix + mark + inner


class SimdlError(Exception):
    """A problem the user can fix. str() is one line: where, what, what is allowed."""

    def __init__(self, where: str, value: object, allowed: str):
        super().__init__(where, value, allowed)  # args rebuild the error (simpy, pickle)
        self.where, self.value, self.allowed = where, value, allowed

    def __str__(self) -> str:
        return (f"{_where(self.where)}: {quote(self.value)} is not valid; "
                f"{_line(self.allowed, ALLOWED)}")


def _line(text: object, limit: int = QUOTE) -> str:
    """`text` on one line, cut to its first `limit` characters and "…"."""
    text = str(text)
    return shorten(one_line(text[:limit + 1]), limit)


def _where(where: object) -> str:
    """The field path on one line; a long one keeps its start and its end (the field)."""
    text = str(where)
    head, tail = one_line(text[:WHERE]), one_line(text[-WHERE // 2:])
    if len(text) <= WHERE and len(head) <= WHERE:
        return head
    return head[:WHERE // 2] + "…" + tail[-(WHERE // 2):]


class UnitError(SimdlError):
    """A quantity string that does not parse ("300Mbs", "fast")."""


class ScenarioError(SimdlError):
    """A scenario that does not validate."""


class PlanError(SimdlError):
    """A plan that cannot run: a cut out of range, no route, too little memory."""


class CapacityError(SimdlError):
    """A device asked to hold more memory than it has."""

    def __init__(self, device: str, need: float, free: float, capacity: float, label: str = ""):
        super().__init__(f"devices.{device}.memory", need, f"at most {free} bytes are free")
        self.args = (device, need, free, capacity, label)
        self.device, self.need, self.free, self.capacity, self.label = self.args

    def __str__(self) -> str:
        what = f" for {_line(self.label)}" if self.label else ""
        return (f"{_where(self.where)}: needs {self.need / 2**20:.2f} MiB{what} but only "
                f"{self.free / 2**20:.2f} MiB of {self.capacity / 2**20:.2f} MiB is free")


class DeviceGone(SimdlError):
    """Work sent to a device that has left the pool (battery empty, failed, departed)."""

    def __init__(self, device: str, at: float, why: str):
        super().__init__(f"devices.{device}", at, why)
        self.args = (device, at, why)
        self.device, self.at, self.why = device, at, why

    def __str__(self) -> str:
        return (f"{_where(self.where)}: left the pool at t={self.at:.6g} s "
                f"({_line(self.why, ALLOWED)})")
