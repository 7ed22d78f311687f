"""The `simdl` command: run, compare, validate, plan and sweep scenarios, calibrate,
list the devices.

A problem the user can fix prints one line and exits 2, with no traceback;
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from simdl import __version__, api, budget, jobs, planner
from simdl.errors import SimdlError
from simdl.plan.plan import DTYPES
from simdl.plan.space import OBJECTIVES, Space
from simdl.report.result import MARKER, strategy_folders
from simdl.report.store import atomic_write, check_file, check_folder, write_csv
from simdl.report.tables import format_table
from simdl.scenario import Scenario, StrategyEntry
from simdl.scenario_jobs import JobsScenario, load_any
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
    several = load_any(args.scenario, args.seed)
    if isinstance(several, JobsScenario):
        return _run_jobs(args, several)
    scenario, chosen = _chosen(args)
    target, options = _destination(args, scenario.name)
    check_folder(target, marker=MARKER, **options)  # before the run, not after it
    result = _execute(args, scenario, chosen)
    out = result.write(target, **options)
    _print_comparison(result)
    print(f"\nresults: {out}")
    return 0


def _run_jobs(args: argparse.Namespace, scenario: JobsScenario) -> int:
    """`run` of a scenario with `jobs:`: every job together, and each alone."""
    if args.strategy is not None:
        raise SimdlError("--strategy", args.strategy, "no --strategy with `jobs:` (each job "
                         "has one strategy; every job runs)")
    target, options = _destination(args, scenario.name)
    check_folder(target, marker=MARKER, **options)
    result = jobs.run(scenario, timing_only=args.timing_only)
    out = result.write(target, **options)
    print(f"{scenario.name} (seed {scenario.seed}), {len(scenario.jobs)} jobs on one pool\n")
    print(format_table(result.table, list(result.table.columns)))
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
    amount = f"{load.steps} steps" if load.kind == "training" else f"{load.requests} requests"
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
    scenario = _one_job(args.scenario, args.seed)
    chosen = api.selected(scenario, getattr(args, "strategy", None))
    strategy_folders([(f"strategies[{i}].label", api.label(e)) for i, e in chosen])
    return scenario, chosen


def _one_job(path: str, seed: int | None = None) -> Scenario:
    """The scenario file, which must hold one job (`simdl run` alone takes `jobs:`)."""
    scenario = load_any(path, seed)
    if isinstance(scenario, JobsScenario):
        raise SimdlError("jobs", [j.name for j in scenario.jobs], "a one-job scenario here: "
                         "`simdl run` runs a scenario with `jobs:`")
    return scenario


def _execute(args: argparse.Namespace, scenario: Scenario,
             chosen: list[tuple[int, StrategyEntry]]) -> api.Run:
    load = scenario.workload
    total = (load.steps if load.kind == "training" else load.requests) * len(chosen)
    unit = "step" if load.kind == "training" else "req"
    with tqdm(total=total, unit=unit, delay=0.5, leave=False, file=sys.stderr,
              desc=scenario.name, disable=None) as bar:
        return api.run(scenario, getattr(args, "strategy", None),
                       timing_only=args.timing_only, progress=bar.update)


def _validate(args: argparse.Namespace) -> int:
    """Check the scenario, its bounds and its plans; print the run's estimated size.
    Nothing runs: the models are built (their size bounded first), never trained."""
    scenario = _one_job(args.scenario)
    world = api.build(scenario, timing_only=True, pretrain=False)  # bounds checked first
    load = scenario.workload
    # a generation run is bounded as its world is built (a preset allocates nothing)
    size = None if load.kind == "generation" else budget.estimate(scenario, world.models)
    make = api.train_plan if scenario.workload.kind == "training" else api.plan
    plans = [make(world, entry, i) for i, entry in api.selected(scenario, None)]
    amount = f"{load.steps} steps" if load.kind == "training" else f"{load.requests} requests"
    print(f"{args.scenario}: valid. {len(world.devices)} devices, model "
          f"{world.chain.name} ({world.chain.n_params():,} parameters, {len(world.chain)} blocks), "
          f"{amount}")
    for p in plans:
        print(f"  {p.describe()}")
    if size is None:
        return 0
    print(f"  {size.describe()}")
    try:
        budget.fit(size)
    except budget.BudgetError as err:
        print(f"  note: `simdl run` would refuse it: {err}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    """Search the pool, print the best plans beside the baselines, and write them."""
    scenario = _one_job(args.scenario)
    for flag, path in (("--out", args.out), ("--plot", args.plot)):
        if path:
            check_file(path, flag)  # before the search, not after it
    if args.top < 1:
        raise SimdlError("--top", args.top, "a whole number >= 1")
    world = api.build(scenario, timing_only=True,
                      pretrain=scenario.workload.kind == "training")
    if scenario.workload.kind == "training":
        return _plan_training(args, world)
    space = Space(dtypes=tuple(args.dtypes), units=args.units)
    planned = planner.plan_pool(world, args.objective, args.top, space)
    found = planned.choice.found
    print(f"{scenario.name}: {found.method} search by {args.objective}, {found.examined} plans "
          f"estimated; the top {args.top} simulated, the baselines estimated\n")
    print(format_table(planned.table, PLAN_COLUMNS))
    print(f"\nchosen: {planned.winner}, {planned.plans[planned.winner].describe()}")
    for note in planned.notes:
        print(f"note: {note}")
    front = [s.plan.describe() for s in found.pareto]
    print(f"\nPareto front over (capacity, p50 latency, energy per request): {len(front)} plans")
    for line in front:
        print(f"  {line}")
    if args.check:
        plans = list(planned.plans.values())
        table = planner.errors(plans, world)
        table.insert(0, "label", list(planned.plans))
        print("\nestimator against simulator (relative error, on the scenario's own workload)")
        print(format_table(table, CHECK_COLUMNS))
    if args.plot:
        from simdl.report.pareto import plot_pareto
        print(f"\nplot: {plot_pareto(planner.pareto_points(planned), args.plot)}")
    if args.out:
        text = yaml.safe_dump(planner.planned_scenario(scenario, planned), sort_keys=False)
        print(f"scenario: {atomic_write(args.out, text)} (run it with `simdl run`)")
    return 0


#: What `simdl plan` prints per plan, and with `--check` per plan and figure.
PLAN_COLUMNS = ("chosen", "label", "plan", "capacity_rps", "sim_throughput_rps", "latency_p50_ms",
                "energy_per_request_mJ", "peak_memory_max_MiB", "vs_winner", "why")
CHECK_COLUMNS = ("label", "exact", "throughput_rps_err", "p50_s_err", "makespan_s_err",
                 "energy_J_err", "peak_memory_B_err")


def _plan_training(args: argparse.Namespace, world: Any) -> int:
    """A training pool: the training search's best plans (sync, compression)."""
    for flag in ("out", "plot", "check"):
        if getattr(args, flag):
            raise SimdlError(f"--{flag}", getattr(args, flag),
                             "inference scenarios only (a training scenario can list "
                             "`{name: auto}` instead)")
    if args.objective != "throughput":
        raise SimdlError("--objective", args.objective,
                         "throughput for a training scenario (the time to reach a held-out loss)")
    table, choice = planner.plan_training(
        world, args.top, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"{world.chain.name} training: {choice.examined} plans estimated, {choice.refused} "
          f"refused for memory; {len(choice.trials)} trained on the simulator to held-out "
          f"loss {choice.target:.4g}, first to reach it first\n")
    print(format_table(table, list(table.columns)))
    print(f"\nchosen: {choice.best.plan.describe()} ({table.why.iloc[0]})")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    """Run (or resume) a sweep; exit 1 when a point failed or did not finish."""
    from simdl import sweep
    from simdl.cluster import executor

    points = sweep.points(args.sweep, args.timing_only)  # every point checked first
    out = Path(args.out or Path("results") / "sweeps" / Path(args.sweep).stem)
    with executor(args.cluster, args.workers) as pool, \
            tqdm(total=len(points), unit="point", leave=False, file=sys.stderr,
                 desc=Path(args.sweep).stem, disable=True if args.quiet else None) as bar:
        outcome = sweep.execute(points, out, pool, files=args.files == "all",
                                progress=bar.update)
    print(f"{args.sweep}: {outcome.points} points; {outcome.ran} ran now, {outcome.skipped} "
          f"were done; {outcome.failed} failed")
    for line in outcome.unfinished:
        print(f"not finished (a worker was lost): {line}", file=sys.stderr)
    if outcome.unfinished:
        print("run the same command again to resume", file=sys.stderr)
    print(f"table: {', '.join(map(str, outcome.files))}")
    return 1 if outcome.failed or outcome.unfinished else 0


def _calibrate(args: argparse.Namespace) -> int:
    from simdl import calibrate
    table, _ = calibrate.run(args.data, args.out, overwrite=args.overwrite)
    per = (table.assign(before=table.error_before.abs(), heldout=table.error_heldout.abs())
           .groupby(["device", "unit", "runtime"], sort=True)
           .agg(rows=("model", "size"), before=("before", "median"),
                heldout=("heldout", "median")).reset_index())
    print(format_table(per))
    head = calibrate.summary(table)
    print(f"\n{head['rows']} rows on {head['devices']} devices; median |error|: catalogue "
          f"{head['median_error_before']:.1%}, fitted and held out "
          f"{head['median_error_heldout']:.1%}\nresults: {args.out}")
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
    plan = scenario_command("plan", _plan, "search the pool for the best plans, beside the "
                            "baselines a user would try")
    plan.add_argument("--objective", default="throughput", choices=OBJECTIVES,
                      help="what the plans are ranked by (default throughput)")
    plan.add_argument("--top", type=int, default=3, metavar="N",
                      help="simulate and list the N best plans (default 3)")
    plan.add_argument("--out", metavar="FILE", help="write the scenario with these plans as "
                      "its strategies (YAML for `simdl run`)")
    plan.add_argument("--check", action="store_true",
                      help="also print the estimator's error against the simulator per plan")
    plan.add_argument("--plot", metavar="FILE", help="draw the Pareto front as a PNG")
    plan.add_argument("--dtypes", nargs="+", default=["fp32"], choices=DTYPES, metavar="DTYPE",
                      help=f"precisions a device may run ({', '.join(DTYPES)}; default fp32)")
    plan.add_argument("--units", action="store_true",
                      help="also try every unit of a device, and its units sharing a stage")
    sweep = sub.add_parser("sweep", help="run a scenario over a grid or sample of its fields, "
                           "strategies and seeds; resumable", description="run a scenario over "
                           "a grid or sample of its fields, strategies and seeds; resumable")
    sweep.add_argument("sweep", metavar="SWEEP", help="a sweep YAML file")
    sweep.add_argument("--out", metavar="DIR", help="the sweep's folder (default "
                       "results/sweeps/<SWEEP file name>); a rerun resumes in it")
    sweep.add_argument("--workers", type=int, metavar="N",
                       help="local worker processes (default: one per core)")
    sweep.add_argument("--cluster", metavar="ADDRESS", help="run on a Dask cluster: a "
                       "scheduler address, or local:N for a LocalCluster of N workers")
    sweep.add_argument("--timing-only", action="store_true", help="skip the numpy kernels")
    sweep.add_argument("--files", choices=("summary", "all"), default="summary",
                       help="what each point keeps: its summary (default) or all run files")
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    sweep.set_defaults(command=_sweep)
    calib = sub.add_parser("calibrate", help="fit runtime profiles to measured latencies and "
                           "report simdl's error, held out", description="fit runtime profiles "
                           "to measured latencies and report simdl's error, held out")
    calib.add_argument("--data", metavar="FILE", help="measured latencies (default: the "
                       "shipped simdl/hw/measured.csv)")
    calib.add_argument("--out", metavar="DIR", default="results/calibration",
                       help="the folder to write (default results/calibration)")
    calib.add_argument("--overwrite", action="store_true",
                       help="replace an earlier calibration folder at --out whole")
    calib.set_defaults(command=_calibrate)
    devices = sub.add_parser("devices", help="the device catalogue as a table")
    devices.set_defaults(command=_devices)
    return parser


if __name__ == "__main__":
    sys.exit(main())
