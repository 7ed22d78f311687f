"""Scenario files: YAML in, a validated Scenario out, every error one clear line.

pydantic lives here, at the edge, and nowhere below. Components chosen by name
(topology, model, strategy) keep their parameters flat beside the name; those
parameters are checked against the chosen function's own signature
(`simdl.scenario_params`), so a new plug-in never needs a schema edit.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Discriminator, Field,
                      NonNegativeFloat, PositiveFloat, Tag, ValidationError, ValidationInfo,
                      field_validator, model_validator)
from pydantic_core import PydanticCustomError

from simdl import changes as pool_changes
from simdl.errors import ScenarioError
from simdl.report.store import NAME, NAME_RULE
from simdl.scenario_params import scenario_error
from simdl.yamlfile import read

#: Whole numbers are strict: YAML's `true` is not taken for 1, nor 2.5 for 2.
Count = Annotated[int, Field(strict=True, gt=0)]
Natural = Annotated[int, Field(strict=True, ge=0)]
def _folder_name(name: str) -> str:
    """A name that is also the folder of its results (results/<name>/): store.NAME only."""
    if not NAME.fullmatch(name):
        raise PydanticCustomError("folder_name", NAME_RULE)
    return name


FolderName = Annotated[str, AfterValidator(_folder_name)]
#: A positive, finite number; `true` is not taken for 1.
Factor = Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)]
#: A learning rate above this is a slip (1e6 for 1e-6), not a setting to explore.
LR_MAX = 10.0


class Strict(BaseModel):
    """Frozen, and an unknown key is an error that lists the keys allowed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for key in data:
                if key not in cls.model_fields:
                    raise PydanticCustomError(
                        "unknown_key", "unknown key {key}; allowed keys: {allowed}",
                        {"key": str(key), "allowed": ", ".join(cls.model_fields)})
        return data


class Named(BaseModel):
    """A component picked by `name` (or `kind`) with its parameters flat beside it."""

    model_config = ConfigDict(extra="allow", frozen=True)

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DeviceEntry(Named):
    """A catalogue `type`, a `name` (or `count` alike ones), the software `runtime` its
    units run under (`hw.runtimes`; none: the catalogue's figures), any field overridden."""

    type: str
    name: str | None = None
    count: Count = 1
    runtime: str | None = None


class NetworkEntry(Named):
    """A topology `kind` with its parameters, how flows share a bottleneck (`sharing`:
    max-min, or by 1 / route latency as TCP and SimGrid), and factors on every link's
    bandwidth and latency (`hw.topologies.calibrated`)."""

    kind: str
    sharing: Literal["maxmin", "rtt"] = "maxmin"
    bandwidth_factor: Factor = 1.0
    latency_factor: Factor = 1.0


class ModelEntry(Named):
    """A zoo model by `name` with its sizes; `pretrain` steps of training on the
    scenario's synthetic data before it is deployed (so accuracy means something)."""

    name: str
    pretrain: Natural = 0


class DeployEntry(Strict):
    """How a device stores and runs its weights: as `dtype`, with a `prune` fraction
    removed in a `sparsity` pattern: unstructured (each tensor's smallest |w|) or '2:4'
    (2 of every 4 along the input, what sparse tensor cores speed up; prune is then
    0.5, filled in when left out)."""

    dtype: Literal["fp32", "fp16", "int8"] = "fp32"
    sparsity: Literal["unstructured", "2:4"] = "unstructured"
    prune: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0

    @model_validator(mode="before")
    @classmethod
    def _half_for_2_4(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("sparsity") == "2:4" and "prune" not in data:
            return {**data, "prune": 0.5}
        return data

    @field_validator("sparsity", mode="before")
    @classmethod
    def _pattern_is_text(cls, value: Any) -> Any:
        if not isinstance(value, str):  # a bare 2:4 is YAML 1.1's base-60 integer 124
            raise PydanticCustomError("pattern", "write 'unstructured' or '2:4' (quoted: YAML "
                                      "reads a bare 2:4 as the number 124)")
        return value

    @field_validator("prune")
    @classmethod
    def _half_is_2_4(cls, value: float, info: ValidationInfo) -> float:
        if info.data.get("sparsity") == "2:4" and value != 0.5:
            raise PydanticCustomError("prune_2_4", "2:4 keeps 2 of every 4 weights, so prune "
                                      "is 0.5 (or left out)")
        return value


#: A label as a file may give it (store.NAME), or as a sweep makes it, `label[param=value]`
#: from any label or strategy name and any value: store.folder_name makes either safe.
_SWEPT = re.compile(rf"{NAME.pattern}|.*\[.*=.*\]", re.DOTALL)


class StrategyEntry(Named):
    """A strategy by `name` with its parameters; `deploy` compresses weights per device;
    `sweep` runs it once per value of one parameter (e.g. every offload cut)."""

    name: str
    label: str | None = None
    deploy: dict[str, DeployEntry] = {}
    sweep: dict[str, list[Any]] = {}

    @field_validator("label")
    @classmethod
    def _label_names_a_folder(cls, label: str | None) -> str | None:
        """A label names the strategy's folder, so a file's label follows store.NAME
        (a clear refusal up front); a sweep's `…[param=value]` passes as it is."""
        if label is not None and not _SWEPT.fullmatch(label):
            raise PydanticCustomError("folder_name", NAME_RULE)
        return label


class RequestClass(Strict):
    name: str
    share: Annotated[float, Field(gt=0.0, le=1.0)]  # the fraction of requests in this class
    priority: Annotated[int, Field(strict=True)] = 0


class Constraints(Strict):
    input_stays_on: str | None = None  # the raw input may not leave this device


class Poisson(Strict):
    kind: Literal["poisson"]
    rate: PositiveFloat  # requests per second


class Closed(Strict):
    kind: Literal["closed"]
    concurrency: Count  # requests in flight; a new one starts when one ends


class Trace(Strict):
    kind: Literal["trace"]
    times: list[NonNegativeFloat]  # arrival instants in seconds


Arrival = Annotated[Poisson | Closed | Trace, Field(discriminator="kind")]


class Inference(Strict):
    kind: Literal["inference"]
    requests: Count = 100
    arrival: Arrival = Closed(kind="closed", concurrency=1)
    batch: Count = 1
    source: str  # the device that owns the input data and gets the answers
    classes: list[RequestClass] = []
    timeout: Annotated[float, Field(gt=0.0)] | None = None  # s an attempt may take
    retries: Natural = 2  # attempts after the first, on a timeout or a lost device

    @field_validator("classes")
    @classmethod
    def _classes_split_the_requests(cls, classes: list[RequestClass]) -> list[RequestClass]:
        """Shares are fractions of the requests, so they add up to 1; a class is
        referred to by its name, so names are unique."""
        seen: set[str] = set()
        for i, c in enumerate(classes):
            if c.name in seen:
                raise ScenarioError(f"workload.classes[{i}].name", c.name,
                                    "class names must be unique")
            seen.add(c.name)
        total = sum(c.share for c in classes)
        if classes and abs(total - 1.0) > 1e-9:
            raise ScenarioError("workload.classes.share", round(total, 12),
                                "the shares are fractions of the requests and must sum to 1")
        return classes


class TrainingEntry(Strict):
    """A training job: `steps` steps on a global `batch`, data dealt to `data_on`."""

    kind: Literal["training"]
    steps: Count = 50
    batch: Count = 32
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: Annotated[float, Field(gt=0.0, le=LR_MAX)] = 0.05
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    data_on: list[str] = []  # devices that own the training data (default: every device)
    shards: Literal["iid", "by_class"] = "iid"
    eval_every: Count = 10
    target_accuracy: Annotated[float, Field(gt=0.0, le=1.0)] | None = None

    @field_validator("data_on")
    @classmethod
    def _owners_once(cls, devices: list[str]) -> list[str]:
        """An owner listed twice would be dealt its data twice."""
        twice = next((d for i, d in enumerate(devices) if d in devices[:i]), None)
        if twice is not None:
            raise PydanticCustomError("unique", "each device at most once; {d} is listed twice",
                                      {"d": repr(twice)})
        return devices


class Uniform(Strict):
    """A whole number drawn uniformly from `low` to `high`, both included."""

    dist: Literal["uniform"]
    low: Count
    high: Count

    @field_validator("high")
    @classmethod
    def _not_below_low(cls, high: int, info: ValidationInfo) -> int:
        low = info.data.get("low")
        if low is not None and high < low:
            raise PydanticCustomError("range", "at least low ({low})", {"low": low})
        return high


class LogNormal(Strict):
    """exp(N(ln `median`, `sigma`)) rounded to a whole number, kept within 1 to `max`:
    the long tail of real prompt and answer lengths, bounded."""

    dist: Literal["lognormal"]
    median: PositiveFloat
    sigma: NonNegativeFloat
    max: Count

    @field_validator("max")
    @classmethod
    def _not_below_median(cls, top: int, info: ValidationInfo) -> int:
        median = info.data.get("median")
        if median is not None and top < median:
            raise PydanticCustomError("range", "at least median ({median})", {"median": median})
        return top


def _length_kind(value: Any) -> str:
    """A mapping (or, when a scenario is written back, a parsed distribution) is a
    distribution, its `dist` picks which; anything else a fixed count."""
    return "drawn-length" if isinstance(value, (Mapping, BaseModel)) else "fixed-length"


#: Tokens per request: a whole number, or a distribution each request draws from.
Length = Annotated[
    Annotated[Count, Tag("fixed-length")]
    | Annotated[Annotated[Uniform | LogNormal, Field(discriminator="dist")], Tag("drawn-length")],
    Discriminator(_length_kind)]


class Generation(Strict):
    """Language-model requests: a `prompt` of tokens each, then `tokens` output tokens
    decoded one per step with a KV cache; up to `max_batch` sequences share each decode
    step (continuous batching; `simdl.sim.generation`). Either count may be a
    distribution, drawn once per request (`simdl.world`)."""

    kind: Literal["generation"]
    requests: Count = 10
    arrival: Arrival = Closed(kind="closed", concurrency=1)
    source: str  # the device that sends the prompts and gets the tokens
    prompt: Length = 16  # prompt tokens per request
    tokens: Length = 16  # output tokens per request (the first comes from the prefill)
    max_batch: Count = 1  # sequences decoded together per step


class PoolScenario(Strict):
    """What every scenario file starts with: its name, seed and description, and the
    pool (devices and network) its work runs on; a one-job `Scenario` and a several-jobs
    `scenario_jobs.JobsScenario` go on from here."""

    name: FolderName
    seed: Natural = 0
    description: str = ""
    devices: list[DeviceEntry] = Field(min_length=1)
    network: NetworkEntry


class Scenario(PoolScenario):
    model: ModelEntry
    models: dict[str, ModelEntry] = {}  # extra named models, e.g. ensemble members
    workload: Annotated[Inference | TrainingEntry | Generation, Field(discriminator="kind")]
    constraints: Constraints = Constraints()
    strategies: list[StrategyEntry] = Field(min_length=1)
    changes: Annotated[list[Any], AfterValidator(pool_changes.read)] | None = None  # simdl.changes

    @field_validator("strategies", mode="before")
    @classmethod
    def _bare_names(cls, entries: Any) -> Any:
        """A strategy with no parameters may be written by name alone (`[auto]`)."""
        if isinstance(entries, list):
            return [{"name": e} if isinstance(e, str) else e for e in entries]
        return entries

    @model_validator(mode="before")
    @classmethod
    def _finite(cls, data: Any) -> Any:
        """No infinity or NaN anywhere, typed field or plug-in parameter: every number
        in a scenario is a size, a rate or a count, and none of those is infinite."""
        where, value = _non_finite(data, "")
        if where is not None:
            raise ScenarioError(where, value, "a finite number")
        return data


def _non_finite(data: Any, where: str) -> tuple[str | None, Any]:
    """The path and value of the first infinite or NaN float in plain data, if any."""
    if isinstance(data, float) and not math.isfinite(data):
        return where or "scenario", data
    items: Any = ()
    if isinstance(data, Mapping):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in data.items())
    elif isinstance(data, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(data))
    for at, v in items:
        found = _non_finite(v, at)
        if found[0] is not None:
            return found
    return None, None


def load(path: str | Path) -> Scenario:
    """Read and validate a scenario file: safe YAML only, its size, nesting, aliases
    and expanded size bounded (`simdl.yamlfile`), so any file gets a clear answer in
    bounded time and memory."""
    path = Path(path)
    data = read(path)
    if not isinstance(data, Mapping):
        raise ScenarioError(path.name, data, "a mapping with name, devices, network, model, "
                            "workload and strategies")
    return parse(data, path.parent)


def parse(data: Mapping[str, Any], base: Path | None = None) -> Scenario:
    """Plain data as a Scenario (files relative to `base`); the first problem: a ScenarioError."""
    try:
        return Scenario.model_validate(data, context={"base": base})
    except ValidationError as err:
        raise scenario_error(err) from None


def dump(scenario: Scenario) -> dict[str, Any]:
    """The scenario as plain data, every default filled in, ready for YAML."""
    return scenario.model_dump(mode="json", exclude_none=True)


#: Keys of a component picked by name: beside them, a parameter may be set that the file left out.
PICKED = {"name", "kind", "type"}


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set the dotted `path` (`api.override`'s) in a dumped scenario, in place."""
    keys = path.split(".")
    node: Any = data
    for depth, key in enumerate(keys):
        at, last = ".".join(keys[:depth + 1]), depth == len(keys) - 1
        if isinstance(node, list):
            names = [str(e.get("label") or e.get("name")) if isinstance(e, dict) else ""
                     for e in node]
            if not (key.isdigit() and int(key) < len(node)) and names.count(key) != 1:
                raise ScenarioError(at, key, f"an index below {len(node)} or one of: "
                                    f"{', '.join(names)}")
            key = int(key) if key.isdigit() and int(key) < len(node) else names.index(key)
        elif not isinstance(node, dict) or key not in node and not (last and PICKED & node.keys()):
            raise ScenarioError(at, key, f"one of: {', '.join(map(str, node))}"
                                if isinstance(node, dict) else "a path into mappings and lists")
        if last:
            node[key] = value
        node = node[key]
