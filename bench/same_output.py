"""Shows that a speed change altered no result: the shipped scenarios' files, byte for byte.

Run:  .venv/bin/python bench/same_output.py --save before.json     (on the old tree)
      .venv/bin/python bench/same_output.py --compare before.json  (on the new tree)
or    .venv/bin/python bench/same_output.py --base REV   (builds REV in a git worktree,
      runs both trees here, compares; exit 1 on any difference)

Every file a run writes (tables, plots, traces, the summary) is hashed, named by its path
inside the scenario's folder. `--only NAME` limits it to some scenarios.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def manifest(scenarios: list[Path], out: Path) -> dict[str, str]:
    """Run each scenario into `out` with the current tree; sha256 of every file written."""
    from simdl import api  # the tree this interpreter imports

    hashes: dict[str, str] = {}
    for path in scenarios:
        folder = out / path.stem
        if "\njobs:" in path.read_text():  # several jobs: a tree from before them skips it
            try:
                from simdl import jobs
                from simdl.scenario_jobs import load_any
            except ImportError:
                print(f"  {path.stem}: skipped (this tree has no jobs)", file=sys.stderr)
                continue
            jobs.run(load_any(path)).write(folder)
        else:
            api.run(path).write(folder)
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                hashes[f"{path.stem}/{f.relative_to(folder)}"] = hashlib.sha256(
                    f.read_bytes()).hexdigest()
        print(f"  {path.stem}: done", file=sys.stderr, flush=True)
    return hashes


def differences(old: dict[str, str], new: dict[str, str]) -> list[str]:
    return [f"{k}: {'missing' if k not in new else 'new' if k not in old else 'differs'}"
            for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--save", type=Path, help="write this tree's manifest here")
    ap.add_argument("--compare", type=Path, help="compare this tree against a saved manifest")
    ap.add_argument("--base", help="a git revision to compare this tree against")
    ap.add_argument("--only", nargs="*", help="scenario names (default: all shipped)")
    args = ap.parse_args()
    scenarios = sorted((ROOT / "scenarios").glob("*.yaml"))
    if args.only:
        scenarios = [s for s in scenarios if s.stem in args.only]
    if args.base:
        with tempfile.TemporaryDirectory() as tmp:
            tree, saved = Path(tmp) / "base", Path(tmp) / "base.json"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree),
                            args.base], check=True, capture_output=True)
            try:
                subprocess.run([sys.executable, str(Path(__file__).resolve()), "--save",
                                str(saved), *(["--only", *args.only] if args.only else [])],
                               check=True, cwd=tree, env={"PYTHONPATH": str(tree)})
            finally:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                str(tree)], check=True)
            args.compare = saved
            return _compare(scenarios, saved)
    if args.compare:
        return _compare(scenarios, args.compare)
    with tempfile.TemporaryDirectory() as tmp:
        hashes = manifest(scenarios, Path(tmp))
    (args.save or Path("/dev/stdout")).write_text(json.dumps(hashes, indent=1) + "\n")
    return 0


def _compare(scenarios: list[Path], saved: Path) -> int:
    old = json.loads(saved.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        new = manifest(scenarios, Path(tmp))
    old = {k: v for k, v in old.items() if k.split("/")[0] in {s.stem for s in scenarios}}
    added = {k.split("/")[0] for k in new} - {k.split("/")[0] for k in old}
    for name in sorted(added):  # a scenario the old tree could not run: nothing to compare
        print(f"  {name}: new scenario, not compared")
    new = {k: v for k, v in new.items() if k.split("/")[0] not in added}
    diff = differences(old, new)
    print(f"{len(new)} files from {len(scenarios)} scenarios: "
          f"{'identical' if not diff else f'{len(diff)} differ'}")
    for line in diff:
        print("  " + line)
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
