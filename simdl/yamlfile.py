"""Reading a YAML file a user gave, in bounded time and memory.

The bytes are read with a cap; the text must be UTF-8; PyYAML's safe loader composes
it while counting nesting, aliases and the size the document would have with every
alias expanded, so a hostile file (an alias bomb, /dev/zero, a 50 MB file, 5,000
nested lists) is one clear ScenarioError. Knows YAML and files, nothing of scenarios.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from simdl.errors import ScenarioError

#: Lists and mappings a scenario file may nest inside each other. Real scenarios
#: need fewer than ten; PyYAML composes recursively (three Python frames a level),
#: so a bound far below the recursion limit keeps a hostile file to one clear line.
MAX_NESTING = 64
#: Bytes a scenario file may hold. Real ones are a few kB; pure-Python PyYAML reads
#: 1 MiB in about half a second. At most one byte more is read, so an endless or
#: huge file costs no more than this.
MAX_BYTES = 2**20
#: Values (scalars, lists, mappings) a scenario may hold with every alias expanded:
#: everything after the loader (pydantic, repr, the resolved copy written with a
#: run) walks the expanded tree. Real scenarios hold under 200; 10,000 leaves room
#: for a trace of arrival times and composes in about a third of a second.
MAX_NODES = 10_000
#: Characters of scalar text with every alias expanded: as much as a file may hold
#: (a scalar's text is never longer than its source), so only aliases reach it.
MAX_TEXT = MAX_BYTES
#: Alias uses (*name). Sharing a device or strategy block takes a handful.
MAX_ALIASES = 100
#: Characters of an integer: Python refuses to convert past 4300 digits, and a
#: YAML 1.1 base-60 integer (1:2:3…) costs quadratic time in its length.
MAX_INT_TEXT = 100


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses, while composing and before anything walks the
    result, nesting deeper than MAX_NESTING (aliases included), more than
    MAX_ALIASES aliases, and a document that would expand past MAX_NODES values
    or MAX_TEXT characters. Expanded sizes are counted, never built: each closed
    collection remembers its expanded size, and an alias adds its target's."""

    def __init__(self, text: str, name: str):
        super().__init__(text)
        self.file = name
        self.depth = 0                         # collections open around the next node
        self.height: dict[int, int] = {}       # id(collection node) -> levels in it, once closed
        self.size: dict[int, tuple[int, int]] = {}  # id(collection node) -> (values, text), expanded
        self.values = 0                        # values so far, aliases expanded
        self.text = 0                          # scalar characters so far, aliases expanded
        self.aliases = 0                       # alias uses so far

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise ScenarioError(f"{self._where(event)} aliases", self.aliases,
                                    f"a scenario may use at most {MAX_ALIASES} aliases (*name)")
            target = self.anchors.get(event.anchor)   # None: the composer reports it undefined
            if isinstance(target, yaml.CollectionNode):
                if id(target) not in self.height:
                    raise ScenarioError(self._where(event), f"*{event.anchor}",
                                        "an alias may not refer to a list or mapping it is inside")
                self._check(self.depth + self.height[id(target)], event)
                self._grow(*self.size[id(target)], event)
            elif isinstance(target, yaml.ScalarNode):
                self._grow(1, len(target.value), event)
            return super().compose_node(parent, index)
        if not isinstance(event, yaml.CollectionStartEvent):
            if isinstance(event, yaml.ScalarEvent):
                self._grow(1, len(event.value), event)
            return super().compose_node(parent, index)
        self._check(self.depth + 1, event)
        self._grow(1, 0, event)
        values, text = self.values - 1, self.text
        self.depth += 1
        node = super().compose_node(parent, index)
        self.depth -= 1
        self.size[id(node)] = (self.values - values, self.text - text)
        children = node.value
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        self.height[id(node)] = 1 + max((self.height.get(id(c), 0) for c in children), default=0)
        return node

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        """An integer, refused past MAX_INT_TEXT characters before converting it."""
        if len(node.value) > MAX_INT_TEXT:
            raise ScenarioError(f"{self.file}:{node.start_mark.line + 1}", node.value,
                                f"an integer of at most {MAX_INT_TEXT} characters")
        return super().construct_yaml_int(node)

    def _where(self, event: yaml.Event) -> str:
        return f"{self.file}:{event.start_mark.line + 1}"

    def _check(self, levels: int, event: yaml.Event) -> None:
        if levels > MAX_NESTING:
            raise ScenarioError(f"{self._where(event)} nesting depth", levels,
                                f"lists and mappings may nest at most {MAX_NESTING} levels deep")

    def _grow(self, values: int, text: int, event: yaml.Event) -> None:
        """Count `values` more values and `text` more characters; refuse past the bounds."""
        self.values += values
        self.text += text
        if self.values > MAX_NODES:
            raise ScenarioError(f"{self._where(event)} expanded size", self.values,
                                f"with aliases expanded, a scenario may hold at most "
                                f"{MAX_NODES:,} values (scalars, lists and mappings)")
        if self.text > MAX_TEXT:
            raise ScenarioError(f"{self._where(event)} expanded text", self.text,
                                f"with aliases expanded, a scenario may hold at most "
                                f"{MAX_TEXT:,} characters of text")


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a pipe"), (stat.S_ISSOCK, "a socket"))


def _read(path: Path) -> str:
    """The file's text. Refused: what cannot be opened, what is not a regular file
    (a directory, /dev/zero, a pipe: opened without blocking and never read), more
    than MAX_BYTES (at most one byte more is read), text that is not UTF-8."""
    where = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a pipe's open() would wait
    except OSError as err:
        raise ScenarioError(where, where, f"a readable scenario file ({err.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a file")
            raise ScenarioError(where, where, f"a scenario file, a regular file (this is {kind})")
        with open(fd, "rb", closefd=False) as file:
            data = file.read(MAX_BYTES + 1)
    except OSError as err:
        raise ScenarioError(where, where, f"a readable scenario file ({err.strerror})") from None
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        size = info.st_size if info.st_size > MAX_BYTES else f"over {MAX_BYTES} bytes"
        raise ScenarioError(f"{where} size", size,
                            f"a scenario file may hold at most {MAX_BYTES} bytes (1 MiB)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ScenarioError(f"{path.name}:{line}", data[err.start:err.end],
                            "UTF-8 text (save the file as UTF-8)") from None


def read(path: str | Path) -> Any:
    """The data of a YAML file a user gave: safe tags only; its size, nesting, aliases
    and expanded size bounded, so any file is refused in bounded time and memory."""
    path = Path(path)
    text = _read(path)
    loader = None
    try:
        loader = _BoundedLoader(text, path.name)  # checks every character first
        data = loader.get_single_data()
    except yaml.reader.ReaderError as err:  # a character YAML does not allow (NUL, ESC, …)
        line = text.count("\n", 0, max(err.position, 0)) + 1
        character = chr(err.character) if isinstance(err.character, int) else err.character
        raise ScenarioError(f"{path.name}:{line}", character, "printable text (YAML allows "
                            "no control characters but tab and line breaks)") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path.name}:{mark.line + 1}" if mark else path.name
        problem = getattr(err, "problem", None) or (str(err).splitlines() or [""])[0]
        raise ScenarioError(where, problem, "well-formed YAML") from None
    finally:
        if loader is not None:
            loader.dispose()
    return data
