"""README.md documents every scenario key, every command-line flag and exactly the files
a run writes; each list is read from the code, so a new key, flag or file needs its line."""
import argparse
import re
import typing
from pathlib import Path

import pydantic
import pytest

from simdl.api import run
from simdl.cli import _parser
from simdl.report.result import RUN_FILES
from simdl.scenario import Scenario, parse

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    """The README text under `title` (any heading level) up to the next heading."""
    start = re.search(rf"^#+ {re.escape(title)}\n", README, re.M)
    assert start, f"README.md has no section {title!r}"
    rest = README[start.end():]
    end = re.search(r"^#+ ", rest, re.M)
    return rest[:end.start()] if end else rest


def schema_fields(model: type = Scenario) -> set[str]:
    """Every field name of the scenario schema, nested models and unions walked."""
    seen: dict[type, None] = {}

    def walk(t: typing.Any) -> None:
        if isinstance(t, type) and issubclass(t, pydantic.BaseModel):
            if t not in seen:
                seen[t] = None
                for f in t.model_fields.values():
                    walk(f.annotation)
            return
        for arg in typing.get_args(t):
            walk(arg)

    walk(model)
    return {name for m in seen for name in m.model_fields}


def cli_flags() -> set[str]:
    """Every --flag of every command of `simdl` (help aside)."""
    flags: set[str] = set()

    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            flags.update(o for o in action.option_strings if o.startswith("--") and o != "--help")
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)

    walk(_parser())
    return flags


def test_the_walks_see_what_the_issue_named():
    assert {"eval_every", "target_accuracy", "optimizer", "momentum", "concurrency",
            "input_stays_on", "sparsity"} <= schema_fields()
    assert {"--results", "--out", "--timing-only", "--seed", "--csv"} <= cli_flags()


@pytest.mark.parametrize("name", sorted(schema_fields()))
def test_every_scenario_key_is_documented(name):
    assert f"`{name}`" in section("Scenario keys"), name


@pytest.mark.parametrize("flag", sorted(cli_flags()))
def test_every_cli_flag_is_documented(flag):
    assert re.search(rf"`{re.escape(flag)}[ `]", section("Command-line flags")), flag


def listed_files() -> tuple[set[str], set[str], dict[str, set[str]]]:
    """(run-folder files, strategy-folder files, {workload kind: the names only it writes})
    from the README."""
    block = section("Files a run writes").split("```")[1]
    top, per, only = set(), set(), {"training": set(), "generation": set()}
    for line in block.strip("\n").splitlines()[1:]:
        indent = len(line) - len(line.lstrip())
        name = line.strip().split("  ")[0]
        if name.endswith("/"):
            continue
        (top if indent == 2 else per).add(name)
        for kind, names in only.items():
            if line.rstrip().endswith(f"{kind} only"):
                names.add(name)
    return top, per, only


def files_of(folder: Path) -> tuple[set[str], set[str]]:
    top = {p.name for p in folder.iterdir() if p.is_file()}
    (strategy,) = [p for p in folder.iterdir() if p.is_dir()]
    return top, {p.name for p in strategy.iterdir()}


def tiny(workload: dict, strategy: dict) -> dict:
    return {"name": "tiny", "devices": [{"name": "phone", "type": "phone_flagship"}],
            "network": {"kind": "home"},
            "model": {"name": "mlp", "in_dim": 4, "hidden": 8, "depth": 1, "n_classes": 2},
            "workload": workload, "strategies": [strategy]}


def test_the_listed_files_are_exactly_what_a_run_writes(tmp_path):
    top, per, only = listed_files()
    special = only["training"] | only["generation"]
    assert per - special == set(RUN_FILES)
    inference = tiny({"kind": "inference", "requests": 2, "source": "phone"},
                     {"name": "single", "device": "phone"})
    written = files_of(run(parse(inference), timing_only=True).write(tmp_path / "i"))
    assert written == (top - special, per - special)
    learning = tiny({"kind": "training", "steps": 2, "batch": 4},
                    {"name": "single_device", "device": "phone"})
    written = files_of(run(parse(learning), timing_only=True).write(tmp_path / "t"))
    assert written == (top - only["generation"], per - only["generation"])
    talking = tiny({"kind": "generation", "requests": 1, "source": "phone", "prompt": 2,
                    "tokens": 2}, {"name": "single", "device": "phone"})
    talking["model"] = {"name": "decoder_lm"}
    written = files_of(run(parse(talking), timing_only=True).write(tmp_path / "g"))
    assert written == (top - only["training"], per - only["training"])
