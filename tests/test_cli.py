"""The command line: bad input gets one clear line and exit code 2; good input runs."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from simdl.cli import main

ROOT = Path(__file__).resolve().parents[1]
BAD = sorted((ROOT / "tests" / "bad_scenarios").glob("*.yaml"))


def expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} needs an '# expect: REGEX' header"
    return first[len("# expect: "):]


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_a_bad_scenario_gets_one_clear_line_and_exit_code_2(path, capsys):
    assert main(["validate", str(path)]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    message = lines[0].removeprefix("simdl: error: ")
    assert re.search(expected(path), message), message
    assert "Traceback" not in err and out == ""


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
