"""A validated Scenario -> the runtime World (models, pool, network, workload, data).

The last stop of pydantic objects: below this, everything is plain frozen data.
Every name the scenario uses is checked here, with its field path.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from simdl import budget, changes
from simdl.errors import ScenarioError
from simdl.hw.devices import DeviceSpec, make_device
from simdl.hw.network import Network
from simdl.hw.topologies import TOPOLOGIES, calibrated
from simdl.nn.chain import Chain
from simdl.nn.data import SHAPES, Dataset, gaussian_mixture, shapes, tokens
from simdl.nn.fit import fit
from simdl.nn import llm_shapes
from simdl.nn.models import MODELS
from simdl.plan import world as w
from simdl.plan.lm_model import ShapeModel, check_wire
from simdl.rng import stream
from simdl.scenario import Inference, Length, ModelEntry, Scenario, Uniform
from simdl.scenario_params import call, choose


def build(scenario: Scenario, *, timing_only: bool = False, pretrain: bool = True) -> w.World:
    """Everything a run needs, built deterministically from the scenario and its seed.

    Every quantity is bounded (`simdl.budget.check`) before anything is allocated, and
    the run's arrays (real-mode ones unless `timing_only`) must fit in this machine's
    memory before the data is drawn; `pretrain=False` skips pretraining (`validate`).
    """
    if scenario.workload.kind == "generation":
        return _generation(scenario, timing_only)
    budget.check(scenario)
    devices = pool(scenario)
    network = _network(scenario, devices)
    moves = changes.build(scenario.changes or [], devices, network)
    main = model(scenario.model, "model", scenario.seed)
    models = {"main": main}
    for name, entry in scenario.models.items():
        models[name] = model(entry, f"models.{name}", scenario.seed)
        if models[name].in_shape != main.in_shape:
            raise ScenarioError(f"models.{name}", entry.name, f"a model with the main model's "
                                f"input shape {main.in_shape}")
    size = budget.estimate(scenario, models)
    budget.bound(size)
    budget.fit(size, timing_only)
    train, test = data_for(main, scenario.seed)
    for name, entry in [("main", scenario.model), *scenario.models.items()]:
        if entry.pretrain and pretrain:
            fit(models[name], train, steps=entry.pretrain, seed=scenario.seed)
    load = scenario.workload
    named = [("constraints.input_stays_on", scenario.constraints.input_stays_on)]
    named += ([("workload.source", load.source)] if load.kind == "inference" else
              [(f"workload.data_on[{i}]", d) for i, d in enumerate(load.data_on)])
    for where, device in named:
        if device is not None and device not in devices:
            raise ScenarioError(where, device, f"choose one of: {', '.join(devices)}")
    if load.kind == "training":
        job = w.Training(load.steps, load.batch, load.optimizer, load.lr, load.momentum,
                         tuple(load.data_on) or tuple(devices), load.shards, load.eval_every,
                         load.target_accuracy)
        return w.World(scenario.name, scenario.seed, models, devices, network, job, test,
                       scenario.constraints.input_stays_on, train, moves)
    arrival = _arrival(load)
    classes = tuple(w.RequestClass(c.name, c.share, c.priority) for c in load.classes)
    workload = w.Inference(load.requests, arrival, load.batch, load.source, classes,
                           load.timeout, load.retries)
    return w.World(scenario.name, scenario.seed, models, devices, network, workload, test,
                   scenario.constraints.input_stays_on, train, moves)


def _generation(scenario: Scenario, timing_only: bool) -> w.World:
    """The world of a generation workload: a real decoder chain or a full-size preset
    (`model: {name: llm, preset, weights}`, shapes only, timing-only), and its requests.
    Bounded here (`simdl.budget.check` sizes inference and training workloads only):
    devices, requests, and the real model's parameters."""
    load = scenario.workload
    _bounded("devices", budget.device_count(scenario), budget.MAX_DEVICES)
    _bounded("workload.requests", load.requests, budget.MAX_REQUESTS)
    _bounded("workload.max_batch", load.max_batch, budget.MAX_BATCH)
    for name in ("prompt", "tokens"):  # each token is a row of the prompts or an event
        _bounded(f"workload.{name} x requests", most(getattr(load, name)) * load.requests,
                 budget.MAX_EVENTS)
    if scenario.models:
        raise ScenarioError("models", sorted(scenario.models), "a generation workload runs "
                            "one model (`model`); leave `models` out")
    entry = scenario.model
    if entry.name == "llm":
        main: Any = call(shape_model, entry.params, "model")
    elif entry.name == "decoder_lm":
        if entry.pretrain:
            raise ScenarioError("model.pretrain", entry.pretrain, "0: a generation workload "
                                "does not pretrain (its tokens carry no labels)")
        wire = check_wire(str(entry.params.get("wire", "fp32")))
        entry = ModelEntry(**{k: v for k, v in entry.model_dump().items() if k != "wire"})
        budget.check(scenario.model_copy(update={"workload": _as_inference(load),
                                                 "model": entry}))
        main = model(entry, "model", scenario.seed)
        main.wire = wire  # what `plan.lm_model.wire_of` reads
    else:
        raise ScenarioError("model.name", entry.name, "a generation workload runs a decoder: "
                            "decoder_lm (real, reduced) or llm (a full-size preset, timing-only)")
    devices = pool(scenario)
    network = _network(scenario, devices)
    moves = changes.build(scenario.changes or [], devices, network)
    if load.source not in devices:
        raise ScenarioError("workload.source", load.source, f"choose one of: {', '.join(devices)}")
    arrival = _arrival(load)
    workload = w.Generation(load.requests, arrival, 1, load.source,
                            prompt_lengths=lengths(load.prompt, load.requests, scenario.seed,
                                                   "prompt"),
                            token_counts=lengths(load.tokens, load.requests, scenario.seed,
                                                 "tokens"),
                            max_batch=load.max_batch)
    empty = Dataset(np.zeros((0, 1), np.int64), np.zeros(0, np.int64), 1, "none")
    return w.World(scenario.name, scenario.seed, {"main": main}, devices, network, workload,
                   empty, scenario.constraints.input_stays_on, None, moves)


def most(length: Length) -> int:
    """The largest count `length` can give: what memory and the bounds must allow for."""
    if isinstance(length, int):
        return length
    return length.high if isinstance(length, Uniform) else length.max


def lengths(length: Length, requests: int, seed: int, name: str) -> tuple[int, ...]:
    """Each request's count: `length` itself, or drawn once per request from the
    seed's stream `name` (uniform: integers, both ends included; lognormal: rounded,
    kept within 1 and its `max`)."""
    if isinstance(length, int):
        return (length,) * requests
    rng = stream(seed, name)
    if isinstance(length, Uniform):
        drawn = rng.integers(length.low, length.high, size=requests, endpoint=True)
    else:
        with np.errstate(over="ignore"):  # a huge draw is kept at `max`
            drawn = rng.lognormal(np.log(length.median), length.sigma, size=requests)
        drawn = np.clip(np.rint(drawn), 1, length.max)
    return tuple(int(v) for v in drawn)


def shape_model(preset: str, weights: str = "fp32", wire: str = "fp32") -> ShapeModel:
    """`model: {name: llm, preset, weights, wire}`: a published shape
    (`nn.llm_shapes.PRESETS`) with its weights stored as `weights` (fp32, fp16, int8,
    bf16, q8_0, q4_0, q4_k), its activations sent between devices as `wire`."""
    return ShapeModel(llm_shapes.preset(preset), weights, wire=wire)


def _as_inference(load: Any) -> Any:
    """The generation workload as the inference workload `budget.check` bounds."""
    return Inference(kind="inference", requests=load.requests, source=load.source)


def _bounded(where: str, value: int, bound: int) -> None:
    if value > bound:
        raise budget.BudgetError(where, value, f"at most {bound:,} (simdl.budget, see README "
                                 "'Bounds')")


def model(entry: ModelEntry, where: str, seed: int) -> Chain:
    """A zoo model from its entry; the scenario's seed unless the entry sets one."""
    make = choose(MODELS, entry.name, f"{where}.name")
    return call(make, {"seed": seed} | entry.params, where)


def pool(scenario: Scenario) -> dict[str, DeviceSpec]:
    """Device name -> spec; `count: n` entries become name0..name{n-1}."""
    devices: dict[str, DeviceSpec] = {}
    for i, entry in enumerate(scenario.devices):
        base = entry.name or entry.type
        names = [base] if entry.count == 1 else [f"{base}{k}" for k in range(entry.count)]
        spec = make_device(entry.type, entry.params, where=f"devices[{i}]",
                           runtime=entry.runtime)
        for name in names:
            if name in devices:
                raise ScenarioError(f"devices[{i}].name", name, "device names must be unique")
            devices[name] = spec
    return devices


def _network(scenario: Scenario, devices: dict[str, DeviceSpec]) -> Network:
    """The scenario's topology built on `devices`, then its sharing model and factors."""
    entry = scenario.network
    topology = choose(TOPOLOGIES, entry.kind, "network.kind")
    return calibrated(call(topology, entry.params, "network", devices), entry.sharing,
                      entry.bandwidth_factor, entry.latency_factor)


def data_for(chain: Chain, seed: int) -> tuple[Dataset, Dataset]:
    """(training, held-out) labelled samples shaped for the chain's input: tokens,
    vectors or images from one distribution; requests draw from the held-out part."""
    return _drawn(chain.in_shape, chain.in_dtype, chain.n_classes or 2, seed)


@lru_cache(maxsize=1)
def _drawn(shape: tuple[int, ...], dtype: np.dtype, classes: int,
           seed: int) -> tuple[Dataset, Dataset]:
    """The last draw is kept: its arrays are read-only, and running the same scenario
    again in one process (another strategy, a notebook's next cell) skips drawing and
    rendering thousands of samples (0.15 s for 32x32 images). One draw at most is kept
    (up to `budget.data_samples`' 64 MiB)."""
    kw: dict[str, Any] = {"n": budget.data_samples(shape, dtype.itemsize), "seed": seed}
    if np.issubdtype(dtype, np.integer):
        data = tokens(seq_len=shape[0], vocab=classes, **kw)
    elif len(shape) == 1:
        data = gaussian_mixture(dim=shape[0], n_classes=classes, **kw)
    else:
        # The drawn shapes are fewer than 10: labels use the first len(SHAPES) classes.
        data = shapes(size=shape[-1], channels=shape[0], n_classes=min(classes, len(SHAPES)), **kw)
    return data.split(0.8)


def _arrival(load: Any) -> w.Arrival:
    """A request stream's arrival process, as the run takes it (a trace needs a time for
    every request)."""
    a = load.arrival
    if a.kind == "trace" and len(a.times) < load.requests:
        raise ScenarioError("workload.arrival.times", len(a.times),
                            f"give at least `requests` ({load.requests}) arrival times")
    return w.Arrival(a.kind, rate=getattr(a, "rate", 0.0),
                     concurrency=getattr(a, "concurrency", 0),
                     times=tuple(getattr(a, "times", ())))
