"""What a strategy plans for: the model, the pool, the network and the workload.

Plain frozen data built once from a validated scenario (by `simdl.world.build`);
strategies, the estimator and the executors read it and never change it.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from simdl.errors import PlanError
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
class RequestClass:
    """A priority class: `share` of the requests, served before classes with a
    higher `priority` number wherever they queue for a compute unit."""

    name: str
    share: float
    priority: int


@dataclass(frozen=True)
class Inference:
    """A stream of `requests` inference requests of `batch` samples each, whose input
    lives on (and whose answers go back to) the device `source`. An attempt taking
    longer than `timeout` s (None: no limit), or stopped by a device leaving, is
    retried at most `retries` times (`sim.serving.Policy`)."""

    requests: int
    arrival: Arrival
    batch: int
    source: str
    classes: tuple[RequestClass, ...] = ()
    timeout: float | None = None
    retries: int = 2


@dataclass(frozen=True)
class Generation(Inference):
    """Language-model requests (`sim.generation`): request r has a prompt of
    `prompt_lengths[r]` tokens, prefilled at once, then `token_counts[r]` output tokens
    (the prefill gives the first), one per decode step; up to `max_batch` sequences share
    a step. An Inference of one sample per request to the planner's arrival rules and
    strategies (`batch` 1)."""

    prompt_lengths: tuple[int, ...] = ()
    token_counts: tuple[int, ...] = ()
    max_batch: int = 1

    @functools.cached_property
    def prompt(self) -> int:
        """The longest prompt: what a plan's memory must hold."""
        return max(self.prompt_lengths, default=0)

    @functools.cached_property
    def tokens(self) -> int:
        """The most output tokens of any request: what a plan's memory must hold."""
        return max(self.token_counts, default=0)


@dataclass(frozen=True)
class Training:
    """A training job: `steps` optimizer steps (rounds, for local SGD) on a global
    batch of `batch` samples, shared over the workers that own the data.

    `shards` says how the training set is dealt to the data owners: `iid` (even
    random shards) or `by_class` (each owner gets a skewed mix of classes, for
    federated and personalisation studies). Held-out loss and accuracy are
    measured every `eval_every` steps; the job may stop at `target_accuracy`.
    """

    steps: int
    batch: int
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    data_on: tuple[str, ...] = ()
    shards: str = "iid"
    eval_every: int = 10
    target_accuracy: float | None = None


@dataclass(frozen=True)
class Profile:
    """A value over time: each (time s, value) holds from its time until the next; before
    the first, the quantity's usual value. With `period` (> every time) the points repeat
    every `period` seconds, forever."""

    points: tuple[tuple[float, float], ...]
    period: float | None = None


@dataclass(frozen=True)
class Change:
    """One source of change in the pool during a run. `kind` is what changes: presence
    (1 here, 0 gone), speed (a factor on `unit`'s rate, None: every unit), bandwidth (a
    factor) or loss (a share of packets) of the link `target`, following `profile`; or
    availability: `target` up and down for exponential times of mean `up` and `down` s,
    drawn from the stream "availability/<target>"."""

    kind: str
    target: str
    profile: Profile | None = None
    unit: str | None = None
    up: float = 0.0
    down: float = 0.0


@dataclass(frozen=True)
class World:
    """`models` holds "main" (the scenario's model) and any named extra models
    (ensemble members), trained if the scenario asks; `data` are labelled samples
    none of them trained on, from which requests draw their inputs."""

    name: str
    seed: int
    models: Mapping[str, Chain]
    devices: Mapping[str, DeviceSpec]
    network: Network
    workload: Inference | Training  # a Generation is an Inference
    data: Dataset
    input_stays_on: str | None = None  # the raw input may not leave this device
    train_data: Dataset | None = None  # what a training workload learns from
    changes: tuple[Change, ...] = ()  # how the pool changes during a run (`sim.changes`)

    @property
    def chain(self) -> Chain:
        return self.models["main"]

    def known(self, field: str, device: str) -> str:
        """`device` if the pool has it; else a PlanError naming `field` and the choices."""
        if device not in self.devices:
            raise PlanError(field, device, f"choose one of: {', '.join(self.devices)}")
        return device
