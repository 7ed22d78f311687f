"""What a strategy plans for: the model, the pool, the network and the workload.

Plain frozen data built once from a validated scenario (by `simdl.world.build`);
strategies, the estimator and the executors read it and never change it.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from simdl.hw.devices import DeviceSpec
from simdl.hw.network import Network
from simdl.nn.chain import Chain
from simdl.nn.data import Dataset


@dataclass(frozen=True)
class Arrival:
    """When requests arrive: `poisson` at `rate`/s, `closed` with `concurrency` in
    flight, or at the given `times`."""

    kind: str
    rate: float = 0.0
    concurrency: int = 0
    times: tuple[float, ...] = ()


@dataclass(frozen=True)
class Inference:
    """A stream of `requests` inference requests of `batch` samples each, whose input
    lives on (and whose answers go back to) the device `source`."""

    requests: int
    arrival: Arrival
    batch: int
    source: str


@dataclass(frozen=True)
class World:
    name: str
    seed: int
    chain: Chain
    devices: Mapping[str, DeviceSpec]
    network: Network
    workload: Inference
    data: Dataset  # labelled samples the requests draw their inputs from
