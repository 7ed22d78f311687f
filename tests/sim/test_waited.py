"""`stages.waited`: work run inside the caller's process on the timeline of a process of
its own waited for with an all_of (a request's one replica, a replica's one micro-batch).

Brute force: random programs of processes that sleep, start others, wait at shared
gates and call each other, traced step by step; the trace with `waited` must be the
one a real process and all_of give, and the trivial version (no events at all) must
differ on some of them. Then whole runs, with a device leaving mid-run."""
import random
from typing import Any

import pytest
import simpy

from simdl import api
from simdl.scenario import parse
from simdl.sim import inference, stages
from simdl.sim.kernel import AllOf


def as_process(env: Any, steps: Any) -> Any:
    """What `waited` stands for: `steps` as a process of its own, waited for by an all_of."""
    return (yield AllOf(env, [env.process(steps)]))[0]


def inline(env: Any, steps: Any) -> Any:
    """The trivial version: `steps` run inside the caller, with no event for the process."""
    return (yield from steps)


def program(rng: random.Random, depth: int) -> list[tuple]:
    acts: list[tuple] = []
    for _ in range(rng.randint(1, 5)):
        kind = rng.choice(["sleep", "sleep", "gate", "open", "call", "call", "spawn"])
        if kind in ("call", "spawn") and depth < 2:
            acts.append((kind, program(rng, depth + 1)))
        elif kind == "sleep":
            acts.append((kind, rng.choice([0, 0, 1])))
        elif kind in ("gate", "open"):
            acts.append((kind, rng.randrange(2)))
    return acts


def trace(programs: list[list[tuple]], call: Any) -> list[tuple]:
    """(time, who, step) at every step of every process, in the order they ran."""
    env = simpy.Environment()
    gates = [env.event() for _ in range(2)]
    seen: list[tuple] = []

    def run(acts: list[tuple], who: str) -> Any:
        for i, (kind, arg) in enumerate(acts):
            seen.append((env.now, who, i))
            if kind == "sleep":
                yield env.timeout(arg)
            elif kind == "gate":
                yield gates[arg]
            elif kind == "open" and not gates[arg].triggered:
                gates[arg].succeed()
            elif kind == "call":
                got = yield from call(env, run(arg, f"{who}.{i}"))
                seen.append((env.now, who, i, got))
            elif kind == "spawn":
                env.process(run(arg, f"{who}+{i}"))
        return who

    for k, acts in enumerate(programs):
        env.process(run(acts, str(k)))
    env.run()
    return seen


def test_the_trace_is_the_one_a_process_and_its_all_of_give():
    differs = 0
    for seed in range(400):
        rng = random.Random(seed)
        programs = [program(rng, 0) for _ in range(rng.randint(2, 4))]
        reference = trace(programs, as_process)
        assert trace(programs, stages.waited) == reference, seed
        differs += trace(programs, inline) != reference
    assert differs > 40  # the programs do tell the trivial version apart


def scenario(strategy: dict[str, Any], concurrency: int, leaves: bool) -> Any:
    return parse({
        "name": "t", "seed": 0,
        "devices": [{"name": "phone", "type": "phone_flagship", "count": 2},
                    {"name": "tablet", "type": "tablet"}],
        "network": {"kind": "home"}, "model": {"name": "mlp"},
        "workload": {"kind": "inference", "requests": 40, "batch": 4, "source": "tablet",
                     "arrival": {"kind": "closed", "concurrency": concurrency}},
        "changes": [{"device": "phone1", "presence": [[0, 1], [0.02, 0], [0.05, 1]]}]
        if leaves else [],
        "strategies": [strategy]})


STRATEGIES = [
    {"name": "single", "device": "phone1"},
    {"name": "pipeline", "devices": ["phone0", "phone1"], "cuts": [1], "microbatches": 1},
    {"name": "data_parallel", "devices": ["phone0", "phone1", "tablet"],
     "dispatch": "round_robin"},
]


def log(sc: Any, timing_only: bool = True) -> list[tuple]:
    run = api.run(sc, timing_only=timing_only)
    (result,) = run.results
    return list(result.events.itertuples(index=False))


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s["name"])
@pytest.mark.parametrize("leaves", [False, True], ids=["stays", "leaves"])
def test_runs_log_what_processes_and_all_ofs_give(monkeypatch, strategy, leaves):
    sc = scenario(strategy, 3, leaves)
    got = log(sc)
    if leaves:
        assert any(row.kind == "retry" for row in got)  # work was lost with the device
    monkeypatch.setattr(stages, "waited", as_process)
    monkeypatch.setattr(inference, "waited", as_process)
    assert got == log(sc)
