"""Cost before work: every quantity a scenario asks for is bounded before anything is allocated.

`check` bounds what the scenario's numbers alone give (devices after `count`,
requests, steps, batches, pretraining steps, every model's parameter count and
input size, from the zoo's size functions: nothing is built). `estimate` sizes the
run once the (bounded) models exist: events, the real-mode arrays, the pretraining
work; `fit` refuses a run whose arrays cannot fit in this machine's memory.
Called by `simdl.world.build` before it allocates and by `simdl validate`.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from simdl.errors import ScenarioError
from simdl.nn.chain import Chain
from simdl.nn.models import SIZES, Size
from simdl.scenario import ModelEntry, Scenario
from simdl.scenario_params import call, choose

#: Devices in the pool after `count` expansion (the topologies build routes per pair).
MAX_DEVICES = 256
#: Inference requests per strategy.
MAX_REQUESTS = 100_000
#: Training steps (rounds) per strategy.
MAX_STEPS = 100_000
#: Samples in one request's or one training step's batch.
MAX_BATCH = 4096
#: Trainable scalars of all the scenario's models together (4 bytes each, twice: grads).
MAX_PARAMS = 100_000_000
#: Scalars in one input sample (3x224x224 = 150,528, as the published models take, fits).
MAX_INPUT = 262_144
#: Pretraining steps of one model.
MAX_PRETRAIN_STEPS = 10_000
#: Pretraining work of all models together, in FLOP (forward and backward).
MAX_PRETRAIN_FLOP = 1e13
#: Event-log rows of the whole run (every strategy), as estimated below.
MAX_EVENTS = 20_000_000
#: Bytes one event-log row is taken to hold (the log, then its DataFrame).
EVENT_BYTES = 200
#: Labelled samples the world draws (`simdl.world.data_for`): requests draw their inputs
#: from the held-out fifth (512), pretraining and training learn from the rest. Large
#: samples are drawn fewer (`data_samples`), never more than DATA_BYTES of them.
DATA_SAMPLES = 2560
DATA_BYTES = 64 * 2**20
DATA_MIN = 100
#: Batch size of pretraining (`simdl.nn.fit.fit`'s default).
PRETRAIN_BATCH = 32
FLOAT = 4  # bytes of a float32 scalar
GIB = 2**30


class BudgetError(ScenarioError):
    """A quantity over its bound; the value prints as it is (a count, a size)."""

    def __str__(self) -> str:
        return f"{self.where}: {self.value} is not valid; {self.allowed}"


def machine_memory() -> int:
    """Bytes of physical memory on this machine: the one place it is read (tests patch it)."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _bound(where: str, value: float, name: str, what: str) -> None:
    """Refuse `value` over the bound called `name` (read now, so a test may patch it)."""
    bound = globals()[name]
    if value > bound:
        raise BudgetError(where, f"{value:,.0f}" if value >= 1e4 else value,
                          f"at most {bound:,.0f} {what} (simdl.budget.{name}, "
                          "see README 'Bounds')")


def model_entries(scenario: Scenario) -> list[tuple[str, ModelEntry]]:
    """(field path, entry) of the main model and every named model."""
    return [("model", scenario.model)] + [(f"models.{n}", e) for n, e in scenario.models.items()]


def sizes(scenario: Scenario) -> dict[str, Size]:
    """Field path -> the model's size from its arguments (checked against the builder's
    signature), nothing built."""
    out = {}
    for where, entry in model_entries(scenario):
        size = choose(SIZES, entry.name, f"{where}.name")
        out[where] = call(size, {"seed": scenario.seed} | entry.params, where)
    return out


def device_count(scenario: Scenario) -> int:
    """Devices in the pool once every `count` is expanded."""
    return sum(entry.count for entry in scenario.devices)


def runs(scenario: Scenario) -> int:
    """Strategy runs, each swept value counted once."""
    return sum(max((len(v) for v in e.sweep.values()), default=1) for e in scenario.strategies)


def check(scenario: Scenario) -> dict[str, Size]:
    """Bound every quantity the scenario's numbers give, before anything is allocated."""
    _bound("devices", device_count(scenario), "MAX_DEVICES", "devices (after count expansion)")
    load = scenario.workload
    if load.kind == "inference":
        _bound("workload.requests", load.requests, "MAX_REQUESTS", "requests")
    else:
        _bound("workload.steps", load.steps, "MAX_STEPS", "steps")
    _bound("workload.batch", load.batch, "MAX_BATCH", "samples per batch")
    for where, entry in model_entries(scenario):
        _bound(f"{where}.pretrain", entry.pretrain, "MAX_PRETRAIN_STEPS", "pretraining steps")
    found = sizes(scenario)
    for where, size in found.items():
        _bound(f"{where} input", _elements(size.in_shape), "MAX_INPUT", "scalars per sample")
    _bound("model parameters", sum(s.params for s in found.values()), "MAX_PARAMS",
           "parameters in all models together")
    return found


def data_samples(in_shape: tuple[int, ...], itemsize: int) -> int:
    """How many samples the world draws for inputs of `in_shape`: DATA_SAMPLES, or as
    many as DATA_BYTES hold (at least DATA_MIN), a multiple of 5 (a fifth is held out)."""
    fit = DATA_BYTES // max(_elements(in_shape) * itemsize, 1)
    return min(DATA_SAMPLES, max(DATA_MIN, fit // 5 * 5))


def _elements(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


@dataclass(frozen=True)
class Estimate:
    """A run's size before it runs. Bytes are this process's arrays; `kernel_bytes` only
    exist in real mode (the kernels' values), the rest in both modes."""

    devices: int
    runs: int
    events: int
    params: int
    model_bytes: int      # every model's weights and gradients
    data_bytes: int       # the world's labelled samples
    log_bytes: int        # the event log
    kernel_bytes: int     # real mode only: worker copies, activations, kept answers
    pretrain_flop: float

    @property
    def timing_bytes(self) -> int:
        return self.model_bytes + self.data_bytes + self.log_bytes

    @property
    def real_bytes(self) -> int:
        return self.timing_bytes + self.kernel_bytes

    def describe(self) -> str:
        return (f"estimate: {self.runs} strategy runs, ~{self.events:,} events, real-mode "
                f"memory ~{_gib(self.real_bytes)} (timing-only ~{_gib(self.timing_bytes)}), "
                f"pretraining {self.pretrain_flop / 1e9:,.1f} GFLOP")


def _gib(n: float) -> str:
    """Bytes as people read them: bytes below a MiB, MiB below a GiB, else GiB."""
    if n < 2**20:
        return f"{n:,.0f} bytes"
    return f"{n / 2**20:.1f} MiB" if n < GIB else f"{n / GIB:,.1f} GiB"


def estimate(scenario: Scenario, models: Mapping[str, Chain]) -> Estimate:
    """The run's size from the scenario and its built models (`main` first), as README
    'Bounds' gives it: no kernel runs, only shapes are walked."""
    load, main = scenario.workload, models["main"]
    n_devices, n_runs = device_count(scenario), runs(scenario)
    params = sum(m.n_params() for m in models.values())
    model_bytes = 2 * FLOAT * params + sum(m.param_bytes() - FLOAT * m.n_params()
                                           for m in models.values())
    samples = data_samples(main.in_shape, main.in_dtype.itemsize)
    data_bytes = samples * _elements(main.in_shape) * main.in_dtype.itemsize
    costs = main.costs(load.batch)
    if load.kind == "inference":
        events = n_runs * load.requests * (len(main) + 4)
        answers = n_runs * load.requests * costs[-1].out_bytes
        kernel = answers + n_devices * sum(c.out_bytes for c in costs)
    else:
        events = n_runs * load.steps * n_devices * (2 * len(main) + 4)
        states = {"sgd": 1 if load.momentum else 0, "adam": 2}[load.optimizer]
        copies = n_devices * FLOAT * main.n_params() * (2 + states)
        kernel = copies + n_devices * sum(c.saved_bytes + c.out_bytes for c in costs)
    pretrain = 0.0
    names = ["main", *scenario.models]
    for name, (_, entry) in zip(names, model_entries(scenario)):
        if entry.pretrain:
            step = sum(c.fwd_flops + c.bwd_flops for c in models[name].costs(PRETRAIN_BATCH))
            pretrain += entry.pretrain * step
    return Estimate(n_devices, n_runs, events, params, model_bytes, data_bytes,
                    events * EVENT_BYTES, kernel, pretrain)


def bound(est: Estimate) -> None:
    """Bound what only the built models tell: events and pretraining work."""
    _bound("events (estimated)", est.events, "MAX_EVENTS", "event-log rows per run")
    _bound("pretraining work (FLOP)", est.pretrain_flop, "MAX_PRETRAIN_FLOP",
           "FLOP of pretraining in all models together")


def fit(est: Estimate, timing_only: bool = False) -> None:
    """Refuse a run whose arrays cannot fit in this machine's memory, with the figure;
    suggest --timing-only when the timing-only run would fit."""
    have = machine_memory()
    need = est.timing_bytes if timing_only else est.real_bytes
    if need <= have:
        return
    mode = "timing-only" if timing_only else "real-mode"
    hint = (f"; --timing-only needs ~{_gib(est.timing_bytes)} and fits"
            if not timing_only and est.timing_bytes <= have else "; make the scenario smaller")
    raise BudgetError("memory", f"~{_gib(need)} of {mode} arrays",
                      f"this machine has {_gib(have)}{hint}")
