"""A validated Scenario -> the runtime World (chain, pool, network, workload, data).

The last stop of pydantic objects: below this, everything is plain frozen data.
Every name the scenario uses is checked here, with its field path.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from simdl.errors import ScenarioError
from simdl.hw.devices import DeviceSpec, make_device
from simdl.hw.network import TOPOLOGIES
from simdl.nn.chain import Chain
from simdl.nn.data import SHAPES, Dataset, gaussian_mixture, shapes, tokens
from simdl.nn.models import MODELS
from simdl.plan import world as w
from simdl.scenario import Scenario, call, choose

#: Requests draw their inputs from this many labelled samples.
DATA_SAMPLES = 512


def build(scenario: Scenario) -> w.World:
    """Everything a run needs, built deterministically from the scenario and its seed."""
    devices = pool(scenario)
    topology = choose(TOPOLOGIES, scenario.network.kind, "network.kind")
    network = call(topology, scenario.network.params, "network", devices)
    model = choose(MODELS, scenario.model.name, "model.name")
    params = {"seed": scenario.seed} | scenario.model.params
    chain: Chain = call(model, params, "model")
    load = scenario.workload
    if load.source not in devices:
        raise ScenarioError("workload.source", load.source, f"choose one of: {', '.join(devices)}")
    a = load.arrival
    if a.kind == "trace" and len(a.times) < load.requests:
        raise ScenarioError("workload.arrival.times", len(a.times),
                            f"give at least `requests` ({load.requests}) arrival times")
    arrival = w.Arrival(a.kind, rate=getattr(a, "rate", 0.0),
                        concurrency=getattr(a, "concurrency", 0),
                        times=tuple(getattr(a, "times", ())))
    workload = w.Inference(load.requests, arrival, load.batch, load.source)
    return w.World(scenario.name, scenario.seed, chain, devices, network, workload,
                   data_for(chain, scenario.seed))


def pool(scenario: Scenario) -> dict[str, DeviceSpec]:
    """Device name -> spec; `count: n` entries become name0..name{n-1}."""
    devices: dict[str, DeviceSpec] = {}
    for i, entry in enumerate(scenario.devices):
        base = entry.name or entry.type
        names = [base] if entry.count == 1 else [f"{base}{k}" for k in range(entry.count)]
        spec = make_device(entry.type, entry.params, where=f"devices[{i}]")
        for name in names:
            if name in devices:
                raise ScenarioError(f"devices[{i}].name", name, "device names must be unique")
            devices[name] = spec
    return devices


def data_for(chain: Chain, seed: int) -> Dataset:
    """Labelled samples shaped for the chain's input: tokens, vectors or images."""
    shape, classes = chain.in_shape, chain.n_classes or 2
    kw: dict[str, Any] = {"n": DATA_SAMPLES, "seed": seed}
    if np.issubdtype(chain.in_dtype, np.integer):
        return tokens(seq_len=shape[0], vocab=classes, **kw)
    if len(shape) == 1:
        return gaussian_mixture(dim=shape[0], n_classes=classes, **kw)
    # Inference needs inputs, not every class: the drawn shapes are fewer than 10.
    return shapes(size=shape[-1], channels=shape[0], n_classes=min(classes, len(SHAPES)), **kw)
