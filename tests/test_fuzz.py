"""Any file, any flag: the shipped scenarios mutated at random (types, units, sizes, nesting,
names, aliases, encodings) always get an answer: exit 0, or exit 2 with one line and no
traceback; and nothing is written outside the run folder.

The default profile is small and runs `validate` (which never runs the model, so it is
fast and bounded); `SIMDL_FUZZ=long` runs many more examples and also `run --timing-only`.
No wall-clock assertion: hypothesis' deadline is off; the bounds are simdl's own.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simdl import budget, cli

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))
LONG = os.environ.get("SIMDL_FUZZ") == "long"
#: Allocation a command may make, at most (tracemalloc sees numpy's arrays too): the
#: weights and gradients the budget allows (float32), plus 256 MiB for everything else.
MEMORY = 2 * 4 * budget.MAX_PARAMS + 256 * 2**20

NASTY = st.sampled_from([
    None, True, False, 0, -1, 1, 2**63, -(2**63), 1e308, float("inf"), float("-inf"),
    float("nan"), 1e-320, "", " ", "0", "-5ms", "100", "1e99GB/s", "5 parsecs", "NaN", ".inf",
    "../../../escaped", "/etc/passwd", "a" * 300, "名前", "x\x00y", "\u202e", [], {}, [[]],
    {"a": {"b": {"c": {}}}}, list(range(50)), "2:4", "auto",
])


def leaves(data: Any, path: tuple = ()) -> list[tuple]:
    """Every path into `data` (dict keys and list indices), the root's children first."""
    out = []
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(
        data, list) else ()
    for key, value in items:
        out.append((*path, key))
        out += leaves(value, (*path, key))
    return out


def put(data: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(data, dict):
        return {k: (put(v, rest, value) if k == head else v) for k, v in data.items()}
    return [put(v, rest, value) if i == head else v for i, v in enumerate(data)]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A shipped scenario with one to three mutations, as the bytes of a file."""
    path = draw(st.sampled_from(SCENARIOS))
    data = yaml.safe_load(path.read_text())
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(leaves(data)))
        how = draw(st.sampled_from(["value", "scale", "drop", "key"]))
        if how == "value":
            data = put(data, where, draw(NASTY))
        elif how == "scale":
            data = put(data, where, draw(st.sampled_from([10**6, 10**9, 10**12, 1e30, -10])))
        elif how == "drop" and len(where) > 0:
            parent = where[:-1]
            node = data
            for k in parent:
                node = node[k]
            if isinstance(node, dict):
                data = put(data, parent, {k: v for k, v in node.items() if k != where[-1]})
        elif how == "key":
            data = put(data, where[:-1] + ("unknown_key",), draw(NASTY)) if isinstance(
                data, dict) and len(where) == 1 else data
    text = yaml.safe_dump(data, allow_unicode=True)
    form = draw(st.sampled_from(["plain", "deep", "aliases", "latin-1", "cut", "tabs"]))
    if form == "deep":
        text += "\nextra: " + "[" * 3000 + "]" * 3000 + "\n"
    elif form == "aliases":
        lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
        lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
        text = "\n".join(lines) + "\n" + text
    elif form == "latin-1":
        return ("# caf\xe9\n" + text).encode("latin-1", errors="replace")
    elif form == "cut":
        text = text[:draw(st.integers(0, max(len(text) - 1, 0)))]
    elif form == "tabs":
        text = text.replace("  ", "\t", 1)
    return text.encode("utf-8")


def answer(argv: list[str], cwd: Path) -> tuple[int, str]:
    """Run the CLI in-process from `cwd`; (exit code, what it wrote to stderr)."""
    err, here = io.StringIO(), Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(argv)
    finally:
        os.chdir(here)
    return code, err.getvalue()


def files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@settings(max_examples=400 if LONG else 25, deadline=None, derandomize=not LONG, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated())
def test_any_file_gets_an_answer_in_one_line_and_writes_nothing_outside(content):
    with tempfile.TemporaryDirectory() as tmp:
        sandbox = Path(tmp) / "a" / "b" / "sandbox"
        sandbox.mkdir(parents=True)
        scenario = sandbox / "scenario.yaml"
        scenario.write_bytes(content)
        before = files(Path(tmp))
        commands = [["validate", str(scenario)]]
        if LONG:
            commands.append(["run", str(scenario), "--timing-only", "--results",
                             str(sandbox / "results")])
        for argv in commands:
            tracemalloc.start()
            try:
                code, err = answer(argv, sandbox)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert code in (0, 2), (argv, err)
            if code == 2:
                assert err.count("\n") == 1 and err.startswith("simdl: error: "), err
                assert "Traceback" not in err and len(err) < 2000, err
            assert peak < MEMORY, (argv, peak)
        made = files(Path(tmp)) - before
        results = sandbox / "results"
        outside = [p for p in made if p != results and results not in p.parents]
        assert not outside, outside
