"""Bounded parsing (issue 13): any file, however hostile, is refused with one short line
and exit code 2, in bounded time and memory: alias bombs, huge files, endless devices,
directories, bytes that are not UTF-8, and values far too long to quote."""
import os
import re
import resource
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from simdl import api
from simdl.cli import main
from simdl.errors import (ALLOWED, QUOTE, WHERE, CapacityError, DeviceGone, ScenarioError,
                          SimdlError, quote)
from simdl.scenario_params import scenario_error
from simdl.yamlfile import MAX_ALIASES, MAX_BYTES, MAX_INT_TEXT, MAX_NODES, MAX_TEXT

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = (ROOT / "scenarios" / "quickstart.yaml").read_text()
#: No line the suite provokes needs more; the reviewer's lines ran to gigabytes.
SHORT = 400  # the longest listing, model.name's choices, with a 128-character quote: 350


def one_line(argv: list[str], capsys) -> str:
    """`simdl *argv` exits 2 with one short stderr line and no traceback; the message."""
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[:1000]
    assert "Traceback" not in err and out == ""
    assert len(lines[0]) < SHORT, lines[0][:1000]
    return lines[0].removeprefix("simdl: error: ")


def argv(command: str, path: Path | str, tmp_path: Path) -> list[str]:
    out = ["--out", str(tmp_path / "run")] if command == "run" else []
    return [command, str(path), *out]


def bomb(levels: int, fold: int = 9) -> str:
    """Billion laughs: each anchor a list of `fold` aliases of the one before, so the last
    expands to fold**levels leaves from a file of a few hundred bytes."""
    lines = ["name:", "  - &a0 [" + ", ".join(["lol"] * fold) + "]"]
    lines += [f"  - &a{i} [" + ", ".join([f"*a{i - 1}"] * fold) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"  # `name` is text: the error quoted the list, expanded


def child(args: list[str]) -> subprocess.CompletedProcess:
    """`simdl *args` in a process that may use 1 GiB of address space and 60 s of CPU
    (about 30 times what it needs): a loader that expands or reads without bound
    dies there, failing the test, instead of taking the machine's memory."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))
        resource.setrlimit(resource.RLIMIT_CPU, (60, 60))
    return subprocess.run([sys.executable, "-m", "simdl.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, preexec_fn=limit, timeout=300)  # a hang guard only


def assert_child_line(proc: subprocess.CompletedProcess, expect: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines[0]) < SHORT and re.search(expect, lines[0]), lines[0][:1000]


EXPANDED = (rf"expanded size: \d+ is not valid; with aliases expanded, a scenario may hold "
            rf"at most {MAX_NODES:,} values \(scalars, lists and mappings\)")


# --- aliases -------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["validate", "run"])
def test_the_reviewers_alias_bomb_is_one_line_in_bounded_memory(command, tmp_path):
    """9 levels of 9-fold lists: 387 million leaves. It took 6-7 GB and minutes."""
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb(9))
    assert_child_line(child(argv(command, path, tmp_path)), rf"bomb\.yaml:\d+ {EXPANDED}")


def test_an_alias_bomb_is_refused_while_composing_having_built_almost_nothing(tmp_path):
    """By construction: the loader refuses as soon as the count passes MAX_NODES, having
    composed only the file's own few nodes (an alias adds its target's size, not a copy);
    so allocation peaks far below what the expansion (531,441 leaves) would take."""
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb(6))
    tracemalloc.start()
    try:
        with pytest.raises(ScenarioError) as err:
            api.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert re.fullmatch(rf"bomb\.yaml:\d+ {EXPANDED}", str(err.value)), str(err.value)
    assert peak < 3 * MAX_BYTES, peak  # the read buffer (MAX_BYTES + 1) is most of it


def test_expanded_size_is_allowed_up_to_exactly_the_bound(tmp_path, capsys):
    """`b: [*x]` counts x's whole list again: 1 (top) + 2 keys + 2 lists + the k items
    twice. At the bound the file loads (and fails the schema), one value more is refused."""
    k = (MAX_NODES - 6) // 2
    assert 6 + 2 * k == MAX_NODES
    items = ", ".join(["1"] * k)
    at, over = tmp_path / "at.yaml", tmp_path / "over.yaml"
    at.write_text(f"a: &x [{items}]\nb: [*x]\n")
    over.write_text(f"a: &x [{items}]\nb: [*x, 1]\n")
    assert one_line(["validate", str(at)], capsys).startswith("a: [1, 1, 1")
    assert re.fullmatch(rf"over\.yaml:2 expanded size: {MAX_NODES + 1} is not valid; .*",
                        one_line(["validate", str(over)], capsys))


def test_a_merge_key_bomb_is_refused(tmp_path, capsys):
    """`<<: [*b, *b, …]` copies the merged pairs at construction: 9-fold per level."""
    text = "b0: &b0 {x: 1, y: 2}\n" + "".join(
        f"b{i}: &b{i} {{<<: [{', '.join([f'*b{i - 1}'] * 9)}]}}\n" for i in range(1, 11))
    path = tmp_path / "merge.yaml"
    path.write_text(text)
    assert re.fullmatch(rf"merge\.yaml:\d+ {EXPANDED}", one_line(["validate", str(path)], capsys))


def test_at_most_max_aliases_aliases(tmp_path, capsys):
    at, over = tmp_path / "at.yaml", tmp_path / "over.yaml"
    at.write_text("a: &x 1\nb: [" + ", ".join(["*x"] * MAX_ALIASES) + "]\n")
    over.write_text("a: &x 1\nb: [" + ", ".join(["*x"] * (MAX_ALIASES + 1)) + "]\n")
    assert one_line(["validate", str(at)], capsys).startswith("a: 1 is not valid; unknown key")
    assert one_line(["validate", str(over)], capsys) == (
        f"over.yaml:2 aliases: {MAX_ALIASES + 1} is not valid; a scenario may use at most "
        f"{MAX_ALIASES} aliases (*name)")


def test_aliases_of_a_long_text_count_its_characters_again(tmp_path, capsys):
    """Two aliases of a 0.6 MB string: a 0.6 MB file that expands to 1.8 MB of text."""
    n = 600_000
    path = tmp_path / "text.yaml"
    path.write_text(f"a: &x {'y' * n}\nb: [*x, *x]\n")
    message = one_line(["validate", str(path)], capsys)
    assert re.fullmatch(rf"text\.yaml:2 expanded text: {2 * n + 2} is not valid; with aliases "
                        rf"expanded, a scenario may hold at most {MAX_TEXT:,} characters of text",
                        message), message


def test_arbitrary_tags_stay_refused(tmp_path, capsys):
    path = tmp_path / "tag.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo owned']\n")
    assert re.fullmatch(r"tag\.yaml:1: .could not determine a constructor for the tag "
                        r"'tag:yaml\.org,2002:python/object/apply:os\.system'. is not valid; "
                        r"well-formed YAML", one_line(["validate", str(path)], capsys))


# --- the file itself -----------------------------------------------------------------------

@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_50_mb_file_is_refused_after_reading_one_mib(command, tmp_path, capsys):
    path = tmp_path / "big.yaml"
    with path.open("w") as f:
        f.write("name: big\n#" + "x" * (50 * 2**20) + "\n")
    tracemalloc.start()
    try:
        message = one_line(argv(command, path, tmp_path), capsys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert message == (f"{path} size: {path.stat().st_size} is not valid; a scenario file may "
                       f"hold at most {MAX_BYTES} bytes (1 MiB)")
    assert peak < 3 * MAX_BYTES, peak  # it read 1 MiB + 1 byte, not 50 MB


def test_the_size_bound_is_exact(tmp_path, capsys):
    body = "name: x\n"
    at, over = tmp_path / "at.yaml", tmp_path / "over.yaml"
    at.write_text(body + "#" * (MAX_BYTES - len(body) - 1) + "\n")
    over.write_text(body + "#" * (MAX_BYTES - len(body)) + "\n")
    assert at.stat().st_size == MAX_BYTES
    assert "required" in one_line(["validate", str(at)], capsys)  # read, then the schema
    assert one_line(["validate", str(over)], capsys).startswith(f"{over} size: {MAX_BYTES + 1} ")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
@pytest.mark.parametrize("command", ["validate", "run"])
def test_dev_zero_is_refused_without_reading_it(command, tmp_path):
    """It read 7.4 GB before failing."""
    assert_child_line(child(argv(command, "/dev/zero", tmp_path)),
                      r"^simdl: error: /dev/zero: '/dev/zero' is not valid; a scenario file, "
                      r"a regular file \(this is a character device\)$")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
def test_a_named_pipe_is_refused_without_waiting_for_a_writer(tmp_path):
    """open() of a pipe with no writer waits forever; it is opened non-blocking instead."""
    os.mkfifo(tmp_path / "pipe")
    assert_child_line(child(["validate", str(tmp_path / "pipe")]),
                      r"pipe: '.*pipe' is not valid; a scenario file, a regular file "
                      r"\(this is a pipe\)$")


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_directory_is_refused(command, tmp_path, capsys):
    assert one_line(argv(command, tmp_path, tmp_path), capsys) == (
        f"{tmp_path}: '{tmp_path}' is not valid; a scenario file, a regular file "
        f"(this is a directory)")


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_file_that_is_not_utf8_names_its_line_and_bytes(command, tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: x\ndescription: caf\xe9\n".encode("latin-1"))
    assert one_line(argv(command, path, tmp_path), capsys) == (
        r"latin1.yaml:2: b'\xe9' is not valid; UTF-8 text (save the file as UTF-8)")


def test_a_control_character_is_one_line_not_the_readers_two(tmp_path, capsys):
    path = tmp_path / "nul.yaml"
    path.write_text("name: x\ndescription: a\x00b\n")
    assert one_line(["validate", str(path)], capsys) == (
        r"nul.yaml:2: '\x00' is not valid; printable text (YAML allows no control characters "
        r"but tab and line breaks)")


def test_a_long_integer_is_refused_before_converting_it(tmp_path, capsys):
    """Python refuses to convert past 4300 digits (a traceback), and base-60 `1:1:1…`
    takes quadratic time."""
    for digits in ("1" * 5000, "1" + ":1" * 50_000):
        path = tmp_path / "int.yaml"
        path.write_text(f"seed: {digits}\n")
        assert re.fullmatch(rf"int\.yaml:1: '1[:1]{{{QUOTE - 2}}}… is not valid; an integer of "
                            rf"at most {MAX_INT_TEXT} characters",
                            one_line(["validate", str(path)], capsys))
    path.write_text(f"seed: {'1' * MAX_INT_TEXT}\n")
    assert "an integer of" not in one_line(["validate", str(path)], capsys)


@pytest.mark.parametrize("text", [bomb(6), "x" * (2 * MAX_BYTES), "a: \xff"],
                         ids=["bomb", "big", "bytes"])
def test_the_library_raises_scenario_error(text, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ScenarioError):
        api.load(path)
    with pytest.raises(ScenarioError):
        api.load(tmp_path)


# --- quoting -------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_long_bad_value_is_quoted_as_a_prefix(command, tmp_path, capsys):
    path = tmp_path / "long.yaml"
    path.write_text(QUICKSTART.replace("name: mobilenet_small", f"name: m{'z' * 100_000}"))
    assert one_line(argv(command, path, tmp_path), capsys) == (
        f"model.name: 'm{'z' * (QUOTE - 2)}… is not valid; choose one of: "
        + one_line_choices(capsys, tmp_path))


def one_line_choices(capsys, tmp_path: Path) -> str:
    """The model choices, as the same error with a short bad name lists them."""
    path = tmp_path / "short.yaml"
    path.write_text(QUICKSTART.replace("name: mobilenet_small", "name: nope"))
    return one_line(["validate", str(path)], capsys).split("choose one of: ", 1)[1]


def test_a_bad_kind_is_quoted_once_as_a_prefix(tmp_path, capsys):
    """pydantic's message quoted the whole bad tag, beside the whole block it is in."""
    path = tmp_path / "tag.yaml"
    path.write_text(QUICKSTART.replace("kind: inference", f"kind: {'k' * 100_000}"))
    assert one_line(["validate", str(path)], capsys) == (
        f"workload.kind: '{'k' * (QUOTE - 1)}… is not valid; choose one of: 'inference', "
        f"'training', 'generation'")


def test_pydantic_messages_quote_a_prefix_of_the_value():
    """A value a validator copies into pydantic's message is cut like the value itself."""
    class Pool(BaseModel):
        devices: list[str]

        @field_validator("devices")
        @classmethod
        def _once(cls, devices: list[str]) -> list[str]:
            raise PydanticCustomError("unique", "{d} is listed twice", {"d": repr(devices[0])})

    name = "d" * 100_000
    with pytest.raises(ValidationError) as err:
        Pool(devices=[name, name])
    assert str(scenario_error(err.value)) == (
        f"devices: ['{'d' * (QUOTE - 2)}… is not valid; '{'d' * (QUOTE - 1)}… is listed twice")


def test_a_long_unknown_key_is_cut_in_the_field_path(tmp_path, capsys):
    path = tmp_path / "key.yaml"
    path.write_text(f"? {'k' * 100_000}\n: 1\n")
    assert one_line(["validate", str(path)], capsys).startswith(f"{'k' * 60}…: 1 is not valid;")


def test_a_key_that_is_not_text_is_named_not_a_traceback(tmp_path, capsys):
    path = tmp_path / "key.yaml"
    path.write_text("5: x\n")
    assert one_line(["validate", str(path)], capsys).startswith("5: 'x' is not valid; unknown key")


@pytest.mark.parametrize("value", [
    None, 3, -2.5, True, "it's", 'say "hi"', "both ' and \"", b"\xff'", (1,), (), [], {},
    {"a": [1, (2, 3)], 4: {"b": None}}, "line\nbreak", "\u2028", [1] * 40])
def test_a_short_value_is_quoted_as_repr(value):
    assert quote(value) == repr(value)


@pytest.mark.parametrize("value", [
    "x" * 10**6, "'" * 10**6, "'" * 300 + '"', "a" * 200 + "'", b"\x00" * 10**6,
    list(range(10**5)), {i: str(i) for i in range(10**4)}, "\n" * 1000])
def test_a_long_value_is_quoted_as_a_prefix_of_its_repr(value):
    assert quote(value) == repr(value)[:QUOTE] + "…"


def test_quoting_costs_no_more_than_the_prefix():
    """A value nested 5000 deep (repr: RecursionError), one that holds itself (repr: [...]),
    one with 10**18 elements through sharing, and a 10**5-digit integer (repr: ValueError)."""
    deep: list = [1]
    for _ in range(5000):
        deep = [deep]
    assert quote(deep) == "[" * QUOTE + "…"
    cycle: list = [1]
    cycle.append(cycle)
    assert quote(cycle) == repr(cycle) == "[1, [...]]"
    shared: list = [0] * 1000
    for _ in range(5):
        shared = [shared] * 1000
    assert quote(shared).endswith("…") and len(quote(shared)) == QUOTE + 1
    assert quote(10**100_000) == "<a 332193-bit integer>"


def test_every_error_is_one_short_line():
    long = "n\n" * 10**5
    messages = [str(SimdlError(f"devices.{long}.memory", long, f"choose one of: {long}")),
                str(CapacityError(long, 1.0, 2.0, 3.0, long)),
                str(DeviceGone(long, 1.0, long))]
    for message in messages:
        assert "\n" not in message and len(message) < WHERE + QUOTE + ALLOWED + 40, message
    assert messages[0].startswith("devices.n\\nn\\n") and "n\\n.memory: 'n\\nn" in messages[0]
