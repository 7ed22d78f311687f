"""What the CLI's user sees, for bench/report.py: the wall time of a whole `simdl run`
process, and the run's and the write's time inside a second, wrapped one.

`cli_child` runs in that second process (`report.py --cli-child ARGS`): it wraps
`api.run`/`jobs.run` and the runs' `write` from outside and calls `simdl.cli.main`,
so simdl itself carries no timing code.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any


def cli_child(argv: list[str]) -> dict[str, float]:
    """`simdl run ARGV...` in this process, its run and its write each timed (the
    functions the CLI calls, wrapped from outside); the CLI's own output is dropped."""
    import contextlib
    import io

    from simdl import api, cli, jobs

    seconds: dict[str, float] = defaultdict(float)
    inside: set[str] = set()  # jobs.run calls api.run: count the outer call only

    def timed(owner: Any, name: str, key: str) -> None:
        inner = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if key in inside:
                return inner(*args, **kwargs)
            inside.add(key)
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                seconds[key] += time.perf_counter() - t
                inside.discard(key)

        setattr(owner, name, wrapper)

    timed(api, "run", "run_s")
    timed(api.Run, "write", "write_s")
    if hasattr(jobs, "run"):
        timed(jobs, "run", "run_s")
        timed(jobs.JobsRun, "write", "write_s")
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["run", *argv])
    if code != 0:
        raise SystemExit(f"simdl run exited {code}")
    return dict(seconds)


def cli(scenario: Path, timing_only: bool, tree: Path | None, script: Path
        ) -> dict[str, float] | str:
    """The wall time of `simdl run SCENARIO` (the tree's, or `tree`'s on PYTHONPATH), a
    process of its own; then the run and write times inside a second, wrapped one
    (`script --cli-child`). Its error's last line if it failed."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    cwd = tree or script.resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        argv = [str(scenario), "--out", str(Path(tmp) / "out")]
        if timing_only:
            argv.append("--timing-only")
        t = time.perf_counter()
        plain = subprocess.run([str(Path(sys.executable).parent / "simdl"), "run", *argv],
                               env=env, cwd=cwd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t
        if plain.returncode != 0:
            return (plain.stderr.strip().splitlines() or ["no output"])[-1]
        argv[2] = str(Path(tmp) / "out2")
        wrapped = subprocess.run([sys.executable, str(script), "--cli-child", *argv], env=env,
                                 cwd=cwd, capture_output=True, text=True, check=False)
    if wrapped.returncode != 0:
        return (wrapped.stderr.strip().splitlines() or ["no output"])[-1]
    return {"cli_wall_s": wall} | json.loads(wrapped.stdout.strip().splitlines()[-1])
