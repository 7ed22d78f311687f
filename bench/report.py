"""Report benchmark: what writing a run's files costs beside running it.

Run:  .venv/bin/python bench/report.py [--only NAME ...] [--base REV]
(figures go in bench/README.md). For each shipped scenario, a 128-worker ring
all-reduce training run (real and timing-only) and a timing-only run of many small
requests, each in a fresh process: the wall time of `api.run` and of `Run.write`
into a temporary folder, write / (run + write), the write stage split by file,
peak memory (max RSS) after the run and after the write, and, under tracemalloc,
the bytes a finished run keeps per event of its log. `--base REV` also measures
the tree at git revision REV (exported with `git archive`, the checkout untouched),
alternating scenario by scenario with this tree so load hits both alike, and
prints new / old ratios. The tables part of `api.run` (event log -> DataFrame ->
result tables) is timed apart per compute event, against a bare simpy timeout.

What the CLI's user sees: the wall time of the whole `.venv/bin/simdl run SCENARIO
--out DIR` process (start to exit, imports included), and, in a second such process
under `--cli-child` (which times `api.run`/`jobs.run` and the run's `write` inside
one `simdl.cli.main` call, simdl untouched), the write's share of that wall time.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from report_cli import cli, cli_child

ROOT = Path(__file__).resolve().parent.parent
#: Synthetic runs, built from dicts (simdl.scenario.parse), beside the shipped scenarios.
RING_WORKERS, RING_STEPS = 128, 10
SMALL_REQUESTS = 3000


def ring(workers: int = RING_WORKERS, steps: int = RING_STEPS) -> dict[str, Any]:
    """Ring all-reduce over `workers` desktop PCs on one Wi-Fi access point (the
    shape of scenarios/train_ring_vs_ps.yaml; a PC holds the MLP and a batch share)."""
    return {"name": f"ring{workers}", "seed": 0,
            "devices": [{"name": "pc", "type": "desktop_pc", "count": workers}],
            "network": {"kind": "wifi_star"},
            "model": {"name": "mlp", "in_dim": 32, "hidden": 128, "depth": 2, "n_classes": 4},
            "workload": {"kind": "training", "steps": steps, "batch": 256, "lr": 0.1,
                         "eval_every": 5},
            "strategies": [{"name": "allreduce", "label": "ring", "algorithm": "ring"}]}


def many_small(requests: int = SMALL_REQUESTS) -> dict[str, Any]:
    """A 16-block MLP serving `requests` one-sample requests one after another."""
    return {"name": "many_small", "seed": 0,
            "devices": [{"name": "phone", "type": "phone_flagship"}],
            "network": {"kind": "wifi_star"},
            "model": {"name": "mlp", "in_dim": 16, "hidden": 16, "depth": 16, "n_classes": 4},
            "workload": {"kind": "inference", "requests": requests, "batch": 1,
                         "arrival": {"kind": "closed", "concurrency": 1}, "source": "phone"},
            "strategies": [{"name": "single", "device": "phone"}]}


#: name -> (scenario: a shipped file's stem or a dict, timing-only)
SYNTHETIC: dict[str, tuple[Callable[[], dict[str, Any]], bool]] = {
    f"ring{RING_WORKERS}": (ring, False),
    f"ring{RING_WORKERS}-timing": (ring, True),
    "many_small-timing": (many_small, True),
}


def cases() -> list[str]:
    return sorted(p.stem for p in (ROOT / "scenarios").glob("*.yaml")) + list(SYNTHETIC)


# -- one case, in a child process ----------------------------------------------

def _scenario(name: str) -> tuple[Any, bool]:
    from simdl.scenario import parse
    from simdl.scenario_jobs import load_any

    if name in SYNTHETIC:
        make, timing_only = SYNTHETIC[name]
        return parse(make()), timing_only
    return load_any(ROOT / "scenarios" / f"{name}.yaml"), False


class _Runner:
    """`api.run`, or `jobs.run` for a scenario with `jobs:`; a run's results (a jobs
    run's: each job's in the shared run)."""

    def __init__(self, sc: Any) -> None:
        from simdl import api, jobs
        from simdl.scenario_jobs import JobsScenario

        self.run = jobs.run if isinstance(sc, JobsScenario) else api.run

    @staticmethod
    def results(run: Any) -> list[Any]:
        return run.shared if hasattr(run, "shared") else run.results


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class _Split:
    """Wall time of the write stage by file: wraps the writers the report module calls
    (this tree's or an older one's), naming each call by the file it writes."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, owner: Any, name: str, kind: Callable[[tuple, dict], str]) -> None:
        if not hasattr(owner, name):
            return
        inner = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[kind(args, kwargs)] += time.perf_counter() - t

        setattr(owner, name, timed)

    def install(self) -> None:
        from simdl.report import plots, result
        try:
            from simdl.report import timeline_plot
        except ImportError:  # an older tree: the timeline was in plots
            timeline_plot = plots

        def file_of(args: tuple, kwargs: dict) -> str:
            path = kwargs.get("path", args[1] if len(args) > 1 else args[0])
            name = Path(path).name
            return name if name in ("events.csv", "trace.json") or name.endswith(".png") \
                else "other tables (.csv, .yaml)"

        for writer in ("write_csv", "atomic_write", "write_trace", "write_json"):
            self.wrap(result, writer, file_of)
        self.wrap(result, "chrome_trace", lambda args, kwargs: "trace.json")  # an older tree
        self.wrap(timeline_plot, "timeline", file_of)
        for figure in ("utilisation", "comparison", "training", "memory"):
            self.wrap(plots, figure, file_of)


def scenario_file(name: str, into: Path) -> Path:
    """The scenario as a file the CLI reads: a shipped one's own, a synthetic one's
    dict written as JSON (which YAML reads)."""
    if name not in SYNTHETIC:
        return ROOT / "scenarios" / f"{name}.yaml"
    path = into / f"{name}.yaml"
    path.write_text(json.dumps(SYNTHETIC[name][0]()))
    return path


def child(name: str) -> dict[str, Any]:
    """Run one case: times, memory and the write split, as one JSON-able dict."""
    sc, timing_only = _scenario(name)
    runner = _Runner(sc)
    gc.collect()
    t = time.perf_counter()
    run = runner.run(sc, timing_only=timing_only)
    run_s = time.perf_counter() - t
    rss_run = _max_rss_mib()
    results = runner.results(run)
    events = sum(len(r.events) for r in results)
    compute = sum(int((r.events["kind"] == "compute").sum()) for r in results)
    split = _Split()
    split.install()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        run.write(Path(tmp) / "out")
        write_s = time.perf_counter() - t
    rss_write = _max_rss_mib()
    out: dict[str, Any] = {
        "name": name, "run_s": run_s, "write_s": write_s, "events": events,
        "compute_events": compute, "strategies": len(results),
        "split": dict(split.seconds), "rss_run_MiB": rss_run, "rss_write_MiB": rss_write,
    }
    if name.startswith("many_small"):
        out |= _tables_part(run, sc)
    del run, results
    out |= _traced(runner, sc, timing_only, events)
    return out


def _traced(runner: _Runner, sc: Any, timing_only: bool, events: int) -> dict[str, float]:
    """tracemalloc around a second run: bytes a finished Run keeps per event of its log
    (its tables, the log as a DataFrame first), and the peaks of the run and the write."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    run = runner.run(sc, timing_only=timing_only)
    gc.collect()
    kept, run_peak = tracemalloc.get_traced_memory()
    frame = sum(_frame_bytes(r.events) for r in runner.results(run))
    tracemalloc.reset_peak()
    with tempfile.TemporaryDirectory() as tmp:
        run.write(Path(tmp) / "out")
    write_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"kept_B_per_event": (kept - before) / max(events, 1),
            "frame_B_per_event": float(frame) / max(events, 1),
            "traced_run_peak_MiB": (run_peak - before) / 2**20,
            "traced_write_peak_MiB": (write_peak - before) / 2**20}


def _frame_bytes(frame: Any) -> int:
    """Bytes a DataFrame holds, each text object counted once however many rows share it
    (pandas' deep memory_usage counts it per row)."""
    import numpy as np
    import pandas as pd

    total, seen = 0, set()
    for c in frame.columns:
        column = frame[c]
        if isinstance(column.dtype, pd.CategoricalDtype):
            total += column.cat.codes.to_numpy().nbytes
            values = column.cat.categories.to_numpy(dtype=object)
        elif isinstance(column.dtype, np.dtype) and column.dtype != object:
            total += column.to_numpy().nbytes
            continue
        else:
            values = column.to_numpy(dtype=object)
            total += 8 * len(values)
        for v in values.tolist():
            if id(v) not in seen:
                seen.add(id(v))
                total += sys.getsizeof(v)
    return total


def _tables_part(run: Any, sc: Any) -> dict[str, float]:
    """The tables part of api.run on this run's own log, per compute event: the rows
    as the engine appended them -> DataFrame -> Result tables (best of 5), beside a
    bare simpy timeout (best of 5)."""
    import simpy

    from simdl.report.result import Result
    from simdl.sim.recorder import EventLog
    from simdl.world import build

    result = run.results[0]
    rows = list(result.events.itertuples(index=False, name=None))
    compute = int((result.events["kind"] == "compute").sum())
    world = build(sc, timing_only=True)
    duration = float(result.events["t_end"].max())

    def tables() -> None:
        log = EventLog()
        log.rows.extend(rows)
        Result.from_log(scenario=sc.name, strategy="s", seed=0, events=log.frame(),
                        specs=world.devices, energy={}, link_stats=[], duration=duration,
                        resolved={})

    def bare() -> None:
        env = simpy.Environment()

        def loop():
            for _ in range(compute):
                yield env.timeout(1e-3)

        env.process(loop())
        env.run()

    best = {}
    for fn in (tables, bare):
        times = []
        for _ in range(5):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        best[fn.__name__] = min(times)
    per = 1e6 / compute
    return {"tables_us_per_compute": best["tables"] * per,
            "bare_timeout_us": best["bare"] * per}


# -- the parent: children in turn, then the tables ------------------------------

def measure(name: str, tree: Path | None) -> dict[str, Any] | str:
    """One case in a fresh process of this tree (or `tree`); its error's last line if
    it failed."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", name],
                          env=env, cwd=tree or ROOT, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or ["no output"])[-1]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    with tempfile.TemporaryDirectory() as tmp:
        seen = cli(scenario_file(name, Path(tmp)), name in SYNTHETIC and SYNTHETIC[name][1],
                   tree, Path(__file__).resolve())
    if isinstance(seen, str):
        return seen
    return out | {"cli": seen}


def export(rev: str, into: Path) -> Path:
    """The tree at `rev` as plain files (git archive: the checkout is not touched)."""
    archive = into / "base.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev], check=True,
                       stdout=f)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "base", filter="data")
    return into / "base"


def machine() -> str:
    import matplotlib
    import numpy
    import pandas
    import simpy

    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"numpy {numpy.__version__}, pandas {pandas.__version__}, "
            f"matplotlib {matplotlib.__version__}, simpy {simpy.__version__}; "
            f"load average {os.getloadavg()[0]:.1f}")


def show(new: dict[str, Any], old: dict[str, Any] | None) -> list[str]:
    share = new["write_s"] / (new["run_s"] + new["write_s"])
    line = (f"{new['name']:24s} {new['events']:>8,d} {new['run_s']:7.2f} {new['write_s']:7.2f} "
            f"{share:6.0%} {new['rss_run_MiB']:7.0f} {new['rss_write_MiB']:7.0f} "
            f"{new['kept_B_per_event']:6.0f} {new['frame_B_per_event']:6.0f}")
    if old is not None:
        old_share = old["write_s"] / (old["run_s"] + old["write_s"])
        line += (f" | write {new['write_s'] / old['write_s']:5.2f}x (was {old['write_s']:6.2f} s, "
                 f"{old_share:4.0%}), peak {old['rss_run_MiB']:.0f} -> {old['rss_write_MiB']:.0f}"
                 f" MiB, kept {old['kept_B_per_event']:.0f} B/event")
    lines = [line]
    c = new["cli"]
    seen = (f"    CLI: simdl run {c['cli_wall_s']:.2f} s wall; inside it api.run {c['run_s']:.2f} s, "
            f"write {c['write_s']:.2f} s: write/(run+write) "
            f"{c['write_s'] / (c['run_s'] + c['write_s']):.0%}, write/wall "
            f"{c['write_s'] / c['cli_wall_s']:.0%}")
    if old is not None:
        o = old["cli"]
        seen += (f" | before {o['cli_wall_s']:.2f} s wall, write {o['write_s']:.2f} s "
                 f"({o['write_s'] / (o['run_s'] + o['write_s']):.0%}, "
                 f"{o['write_s'] / o['cli_wall_s']:.0%} of wall); wall "
                 f"{c['cli_wall_s'] / o['cli_wall_s']:.2f}x")
    lines.append(seen)
    total = new["write_s"] or 1.0
    parts = sorted(new["split"].items(), key=lambda kv: -kv[1])
    rest = new["write_s"] - sum(new["split"].values())
    was = old["split"] if old is not None else {}
    lines.append("    " + ", ".join(f"{k} {v:.2f} s ({v / total:.0%}"
                                    + (f"; was {was[k]:.2f} s, {v / was[k]:.2f}x)" if was.get(k)
                                       else ")") for k, v in parts)
                 + f", folder and the rest {rest:.2f} s")
    if "tables_us_per_compute" in new:
        run_us = new["run_s"] / new["compute_events"] * 1e6
        lines.append(f"    api.run {run_us:.1f} us per compute event "
                     f"({run_us / new['bare_timeout_us']:.1f}x a bare simpy timeout of "
                     f"{new['bare_timeout_us']:.2f} us); of it the tables part "
                     f"{new['tables_us_per_compute']:.2f} us "
                     f"({new['tables_us_per_compute'] / new['bare_timeout_us']:.1f}x)")
        if old is not None and "tables_us_per_compute" in old:
            lines[-1] += f"; before: tables {old['tables_us_per_compute']:.2f} us"
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help=f"cases (default all): {', '.join(cases())}")
    ap.add_argument("--base", help="also measure this git revision, interleaved")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--cli-child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cli_child:
        print(json.dumps(cli_child(args.cli_child)))
        return 0
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    names = [n for n in cases() if not args.only or n in args.only]
    print(f"Machine: {machine()}")
    print("columns: case, events, run s, write s, write/(run+write), max RSS MiB after run, "
          "after write, bytes a finished run keeps per event (tracemalloc), of them its "
          "events DataFrame")
    with tempfile.TemporaryDirectory() as tmp:
        base = export(args.base, Path(tmp)) if args.base else None
        for name in names:
            old = measure(name, base) if base is not None else None
            new = measure(name, None)
            if isinstance(new, str) or isinstance(old, str):
                print(f"{name:24s} failed: {new if isinstance(new, str) else old}", flush=True)
                continue
            print("\n".join(show(new, old)), flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
