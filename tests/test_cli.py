"""The command line: bad input gets one clear line and exit code 2; good input runs."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from simdl.cli import main
from simdl.yamlfile import MAX_NESTING

ROOT = Path(__file__).resolve().parents[1]
BAD = sorted((ROOT / "tests" / "bad_scenarios").glob("*.yaml"))


def expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} needs an '# expect: REGEX' header"
    return first[len("# expect: "):]


def assert_one_clear_line(argv: list[str], expect: str, capsys) -> None:
    """`simdl *argv` exits 2 with one stderr line matching `expect`, no traceback, no output."""
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    message = lines[0].removeprefix("simdl: error: ")
    assert re.search(expect, message), message
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_a_bad_scenario_gets_one_clear_line_and_exit_code_2(path, capsys):
    assert_one_clear_line(["validate", str(path)], expected(path), capsys)


def nested(levels: int, inside: str = "1") -> str:
    """`inside` wrapped in `levels` flow lists: [[[1]]]."""
    return "[" * levels + inside + "]" * levels


TOO_DEEP = (rf"nesting depth: {MAX_NESTING + 1} is not valid; "
            rf"lists and mappings may nest at most {MAX_NESTING} levels deep$")


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_5000_level_file_is_one_line_not_a_recursion_error(command, tmp_path, capsys):
    path = tmp_path / "deep.yaml"
    path.write_text(f"name: deep\nmodel: {nested(5000)}\n")
    out = ["--out", str(tmp_path / "run")] if command == "run" else []
    assert_one_clear_line([command, str(path), *out], rf"^deep\.yaml:2 {TOO_DEEP}", capsys)


def test_nesting_is_allowed_up_to_exactly_the_limit(tmp_path, capsys):
    """The top mapping is the first level: MAX_NESTING - 1 lists in it load (and then fail
    the schema on the unknown key), one more is refused while reading."""
    at, over = tmp_path / "at.yaml", tmp_path / "over.yaml"
    at.write_text(f"a: {nested(MAX_NESTING - 1)}\n")
    over.write_text(f"a: {nested(MAX_NESTING)}\n")
    assert_one_clear_line(["validate", str(at)], r"^a: \[+1\]+ is not valid; unknown key", capsys)
    assert_one_clear_line(["validate", str(over)], rf"^over\.yaml:1 {TOO_DEEP}", capsys)


def test_aliases_count_towards_the_nesting_limit(tmp_path, capsys):
    """Each anchor holds the previous one 25 lists down: 27, 52, then 77 levels on
    line 4. Unchecked, 200 of them made a value 5000 deep, whose repr in the error
    message overflowed the stack."""
    items = [f"  - &a0 {nested(25)}"]
    items += [f"  - &a{i} {nested(25, f'*a{i - 1}')}" for i in range(1, 200)]
    path = tmp_path / "aliases.yaml"
    path.write_text("a:\n" + "\n".join(items) + "\n")
    assert_one_clear_line(["validate", str(path)], rf"^aliases\.yaml:4 nesting depth: 77 is not "
                          rf"valid; lists and mappings may nest at most {MAX_NESTING}", capsys)


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path, capsys):
    """A cyclic value passed the schema (as a model's extra parameter) and then crashed
    `run --seed`, which re-validates the scenario as plain data."""
    text = (ROOT / "scenarios" / "quickstart.yaml").read_text()
    path = tmp_path / "cycle.yaml"
    path.write_text(text.replace("width: 16}", "width: 16, extra: &loop [1, *loop]}"))
    assert path.read_text() != text
    assert_one_clear_line(["run", str(path), "--seed", "1", "--out", str(tmp_path / "run")],
                          r"^cycle\.yaml:\d+: '\*loop' is not valid; an alias may not refer "
                          r"to a list or mapping it is inside$", capsys)


def test_the_installed_command_exits_2_without_a_traceback():
    proc = subprocess.run([sys.executable, "-m", "simdl.cli", "run", str(BAD[0])],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("simdl: error: ")


def test_a_missing_file_is_a_clear_error(capsys):
    assert main(["validate", "no/such/scenario.yaml"]) == 2
    assert "no/such/scenario.yaml" in capsys.readouterr().err


def test_devices_lists_the_catalogue(capsys):
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    for kind in ("phone_flagship", "smartwatch", "edge_server", "cloud_gpu"):
        assert kind in out


def test_run_writes_the_run_folder_and_prints_the_comparison(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(ROOT / "scenarios" / "quickstart.yaml"), "--out", str(out),
                 "--timing-only"]) == 0
    printed = capsys.readouterr().out
    assert "phone-only" in printed and "tv-only" in printed and str(out) in printed
    for name in ("summary.csv", "comparison.png", "scenario.resolved.yaml"):
        assert (out / name).is_file(), name
    for name in ("summary.csv", "requests.csv", "devices.csv", "links.csv", "events.csv",
                 "trace.json", "timeline.png", "utilisation.png"):
        assert (out / "phone-only" / name).is_file(), name
