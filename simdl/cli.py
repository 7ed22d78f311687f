"""The `simdl` command: run, compare, validate scenarios and list the device catalogue.

A problem the user can fix prints one line and exits 2, with no traceback;
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from simdl import __version__, api, budget
from simdl.errors import SimdlError
from simdl.report.result import MARKER, strategy_folders
from simdl.report.store import check_file, check_folder, write_csv
from simdl.report.tables import format_table
from simdl.scenario import Scenario, StrategyEntry
from simdl.sim.training import DECISIONS


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.command(args)
    except SimdlError as err:
        print(f"simdl: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("simdl: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    scenario, chosen = _chosen(args)
    target, options = _destination(args, scenario.name)
    check_folder(target, marker=MARKER, **options)  # before the run, not after it
    result = _execute(args, scenario, chosen)
    out = result.write(target, **options)
    _print_comparison(result)
    print(f"\nresults: {out}")
    return 0


def _destination(args: argparse.Namespace, name: str) -> tuple[Path, dict[str, Any]]:
    """Where `run` writes: `--out` itself (replaced whole with `--overwrite`), or the
    next numbered folder in `--results`/<scenario name>; and how to name it in errors."""
    if args.out:
        return Path(args.out), {"where": "--out", "overwrite": args.overwrite}
    return Path(args.results) / name, {"where": "--results", "shown": args.results,
                                       "numbered": True}


def _compare(args: argparse.Namespace) -> int:
    scenario, chosen = _chosen(args)
    if args.csv:
        check_file(args.csv, "--csv")  # before the run, not after it
    result = _execute(args, scenario, chosen)
    _print_comparison(result)
    if args.csv:
        try:
            write_csv(result.comparison, Path(args.csv))
        except OSError as err:
            raise SimdlError("--csv", args.csv,
                             f"a file simdl can write ({err.strerror or err})") from None
    return 0


def _print_comparison(result: api.Run) -> None:
    load = result.scenario.workload
    amount = f"{load.requests} requests" if load.kind == "inference" else f"{load.steps} steps"
    print(f"{result.scenario.name} (seed {result.scenario.seed}), {amount} per strategy\n")
    columns = [c for c in api.HEADLINES[result.scenario.workload.kind] if c in result.comparison]
    print(format_table(result.comparison, columns))
    for r in result.results:
        outcome = str(r.summary["outcome"].iloc[0]) if "outcome" in r.summary else ""
        if outcome.startswith("diverged"):
            loss = r.extra["training"].loss.iloc[-1]
            print(f"\nnote: {r.strategy} {outcome} (loss {loss}): it ran no further steps")
    for decision in result.skipped:
        print(f"\nnote: --timing-only has no values, so it could not {DECISIONS[decision]}: "
              "it ran every step (a real run may end sooner)")


def _chosen(args: argparse.Namespace) -> tuple[Scenario, list[tuple[int, StrategyEntry]]]:
    """The checked scenario and the strategies to run, each with a folder name that
    is safe and its own (refused here, before anything runs, if not)."""
    scenario = api.resolve(args.scenario, args.seed)
    chosen = api.selected(scenario, getattr(args, "strategy", None))
    strategy_folders([(f"strategies[{i}].label", api.label(e)) for i, e in chosen])
    return scenario, chosen


def _execute(args: argparse.Namespace, scenario: Scenario,
             chosen: list[tuple[int, StrategyEntry]]) -> api.Run:
    load = scenario.workload
    total = (load.requests if load.kind == "inference" else load.steps) * len(chosen)
    unit = "req" if load.kind == "inference" else "step"
    with tqdm(total=total, unit=unit, delay=0.5, leave=False, file=sys.stderr,
              desc=scenario.name, disable=None) as bar:
        return api.run(scenario, getattr(args, "strategy", None),
                       timing_only=args.timing_only, progress=bar.update)


def _validate(args: argparse.Namespace) -> int:
    """Check the scenario, its bounds and its plans; print the run's estimated size.
    Nothing runs: the models are built (their size bounded first), never trained."""
    scenario = api.resolve(args.scenario)
    world = api.build(scenario, timing_only=True, pretrain=False)  # bounds checked first
    size = budget.estimate(scenario, world.models)
    make = api.train_plan if scenario.workload.kind == "training" else api.plan
    plans = [make(world, entry, i) for i, entry in api.selected(scenario, None)]
    load = scenario.workload
    amount = f"{load.requests} requests" if load.kind == "inference" else f"{load.steps} steps"
    print(f"{args.scenario}: valid. {len(world.devices)} devices, model "
          f"{world.chain.name} ({world.chain.n_params():,} parameters, {len(world.chain)} blocks), "
          f"{amount}")
    for p in plans:
        print(f"  {p.describe()}")
    print(f"  {size.describe()}")
    try:
        budget.fit(size)
    except budget.BudgetError as err:
        print(f"  note: `simdl run` would refuse it: {err}")
    return 0


def _devices(args: argparse.Namespace) -> int:
    from simdl.hw.devices import catalogue_frame
    print(catalogue_frame().to_string(index=False))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simdl", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"simdl {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def scenario_command(name: str, fn, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("scenario", metavar="SCENARIO", help="a scenario YAML file")
        p.set_defaults(command=fn)
        return p

    run = scenario_command("run", _run, "run a scenario's strategies and write the results")
    run.add_argument("--out", metavar="DIR", help="write the run's files in DIR itself "
                     "(a new or empty folder; see --overwrite)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace an existing run folder at --out whole")
    run.add_argument("--results", metavar="DIR", default="results",
                     help="root of run folders when --out is not given (default: results)")
    run.add_argument("--strategy", metavar="NAME", help="run only this strategy (by label)")
    compare = scenario_command("compare", _compare, "one row per strategy: throughput, "
                               "latency, bytes, energy, memory, utilisation")
    compare.add_argument("--csv", metavar="FILE", help="also write the table as CSV")
    for p in (run, compare):
        p.add_argument("--timing-only", action="store_true",
                       help="skip the numpy kernels: the same timeline, except that "
                       "decisions taken from values (a training run's stop at "
                       "target_accuracy) are not taken, and the run says so")
        p.add_argument("--seed", type=int, help="override the scenario's seed")
    scenario_command("validate", _validate, "check a scenario and its plans without running")
    devices = sub.add_parser("devices", help="the device catalogue as a table")
    devices.set_defaults(command=_devices)
    return parser


if __name__ == "__main__":
    sys.exit(main())
