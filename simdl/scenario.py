"""Scenario files: YAML in, a validated Scenario out, every error one clear line.

pydantic lives here, at the edge, and nowhere below. Components chosen by name
(topology, model, strategy) keep their parameters flat beside the name; those
parameters are checked against the chosen function's own signature, so a new
plug-in never needs a schema edit.
"""
from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt,
                      PositiveFloat, PositiveInt, ValidationError, ValidationInfo, create_model,
                      field_validator, model_validator)
from pydantic_core import PydanticCustomError

from simdl.errors import ScenarioError


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
    """A catalogue `type`, a `name` (or `count` alike ones), any field overridden."""

    type: str
    name: str | None = None
    count: PositiveInt = 1


class NetworkEntry(Named):
    kind: str


class ModelEntry(Named):
    """A zoo model by `name` with its sizes; `pretrain` steps of training on the
    scenario's synthetic data before it is deployed (so accuracy means something)."""

    name: str
    pretrain: NonNegativeInt = 0


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


class StrategyEntry(Named):
    """A strategy by `name` with its parameters; `deploy` compresses weights per device;
    `sweep` runs it once per value of one parameter (e.g. every offload cut)."""

    name: str
    label: str | None = None
    deploy: dict[str, DeployEntry] = {}
    sweep: dict[str, list[Any]] = {}


class RequestClass(Strict):
    name: str
    share: PositiveFloat
    priority: int = 0


class Constraints(Strict):
    input_stays_on: str | None = None  # the raw input may not leave this device


class Poisson(Strict):
    kind: Literal["poisson"]
    rate: PositiveFloat  # requests per second


class Closed(Strict):
    kind: Literal["closed"]
    concurrency: PositiveInt  # requests in flight; a new one starts when one ends


class Trace(Strict):
    kind: Literal["trace"]
    times: list[NonNegativeFloat]  # arrival instants in seconds


Arrival = Annotated[Poisson | Closed | Trace, Field(discriminator="kind")]


class Inference(Strict):
    kind: Literal["inference"]
    requests: PositiveInt = 100
    arrival: Arrival = Closed(kind="closed", concurrency=1)
    batch: PositiveInt = 1
    source: str  # the device that owns the input data and gets the answers
    classes: list[RequestClass] = []


class TrainingEntry(Strict):
    """A training job: `steps` steps on a global `batch`, data dealt to `data_on`."""

    kind: Literal["training"]
    steps: PositiveInt = 50
    batch: PositiveInt = 32
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: PositiveFloat = 0.05
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    data_on: list[str] = []  # devices that own the training data (default: every device)
    shards: Literal["iid", "by_class"] = "iid"
    eval_every: PositiveInt = 10
    target_accuracy: Annotated[float, Field(gt=0.0, le=1.0)] | None = None


class Scenario(Strict):
    name: str
    seed: int = 0
    description: str = ""
    devices: list[DeviceEntry] = Field(min_length=1)
    network: NetworkEntry
    model: ModelEntry
    models: dict[str, ModelEntry] = {}  # extra named models, e.g. ensemble members
    workload: Annotated[Inference | TrainingEntry, Field(discriminator="kind")]
    constraints: Constraints = Constraints()
    strategies: list[StrategyEntry] = Field(min_length=1)


#: Lists and mappings a scenario file may nest inside each other. Real scenarios
#: need fewer than ten; PyYAML composes recursively (three Python frames a level),
#: so a bound far below the recursion limit keeps a hostile file to one clear line.
MAX_NESTING = 64


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses nesting deeper than MAX_NESTING, aliases included,
    before the recursive composer (or anything after it) runs out of stack."""

    def __init__(self, text: str, name: str):
        super().__init__(text)
        self.file = name
        self.depth = 0                         # collections open around the next node
        self.height: dict[int, int] = {}       # id(collection node) -> levels in it, once closed

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)   # None: the composer reports it undefined
            if isinstance(target, yaml.CollectionNode):
                if id(target) not in self.height:
                    raise ScenarioError(self._where(event), f"*{event.anchor}",
                                        "an alias may not refer to a list or mapping it is inside")
                self._check(self.depth + self.height[id(target)], event)
            return super().compose_node(parent, index)
        if not isinstance(event, yaml.CollectionStartEvent):
            return super().compose_node(parent, index)
        self._check(self.depth + 1, event)
        self.depth += 1
        node = super().compose_node(parent, index)
        self.depth -= 1
        children = node.value
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        self.height[id(node)] = 1 + max((self.height.get(id(c), 0) for c in children), default=0)
        return node

    def _where(self, event: yaml.Event) -> str:
        return f"{self.file}:{event.start_mark.line + 1}"

    def _check(self, levels: int, event: yaml.Event) -> None:
        if levels > MAX_NESTING:
            raise ScenarioError(f"{self._where(event)} nesting depth", levels,
                                f"lists and mappings may nest at most {MAX_NESTING} levels deep")


def load(path: str | Path) -> Scenario:
    """Read and validate a scenario file (safe YAML only, nesting bounded)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ScenarioError(str(path), str(path), f"a readable scenario file ({err.strerror})") from None
    loader = _BoundedLoader(text, path.name)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path.name}:{mark.line + 1}" if mark else path.name
        raise ScenarioError(where, getattr(err, "problem", str(err)), "well-formed YAML") from None
    finally:
        loader.dispose()
    if not isinstance(data, Mapping):
        raise ScenarioError(path.name, data, "a mapping with name, devices, network, model, "
                            "workload and strategies")
    return parse(data)


def parse(data: Mapping[str, Any]) -> Scenario:
    """Validate plain data as a Scenario; the first problem becomes a ScenarioError."""
    try:
        return Scenario.model_validate(data)
    except ValidationError as err:
        raise scenario_error(err) from None


def dump(scenario: Scenario) -> dict[str, Any]:
    """The scenario as plain data, every default filled in, ready for YAML."""
    return scenario.model_dump(mode="json", exclude_none=True)


def call(fn: Callable[..., Any], params: Mapping[str, Any], where: str, *args: Any) -> Any:
    """`fn(*args, **params)` with `params` checked against `fn`'s signature.

    Only the user's keyword parameters are validated; the positional `args`
    (the world, the pool) are simdl's own and pass as they are.
    """
    try:
        checked = _signature_model(fn, len(args)).model_validate(dict(params))
    except ValidationError as err:
        raise scenario_error(err, where, signature_help(fn, len(args))) from None
    return fn(*args, **{k: getattr(checked, k) for k in params})


@functools.cache
def _signature_model(fn: Callable[..., Any], skip: int) -> type[BaseModel]:
    hints = typing.get_type_hints(fn, include_extras=True)
    fields: dict[str, Any] = {}
    for p in list(inspect.signature(fn).parameters.values())[skip:]:
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[p.name] = (hints.get(p.name, Any), default)
    config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    return create_model(f"{fn.__name__}_params", __config__=config, **fields)


def choose(registry: Mapping[str, Callable[..., Any]], name: str, where: str) -> Callable[..., Any]:
    """The registry entry `name`, or an error listing the choices."""
    try:
        return registry[name]
    except KeyError:
        raise ScenarioError(where, name, f"choose one of: {', '.join(sorted(registry))}") from None


def signature_help(fn: Callable[..., Any], skip: int = 0) -> str:
    """The parameters a plug-in takes (after `skip` positional ones), for messages."""
    return ", ".join(list(inspect.signature(fn).parameters)[skip:])


def _path(loc: tuple[Any, ...], tags: set[str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in tags or part.startswith("function-"):
            continue  # a union tag, not a field
        else:
            out += f".{part}" if out else str(part)
    return out


def scenario_error(err: ValidationError, prefix: str = "", params_help: str = "") -> ScenarioError:
    """pydantic's first error as one line: field path, value, what is allowed."""
    first = err.errors(include_url=False)[0]
    loc, kind, ctx = tuple(first["loc"]), first["type"], first.get("ctx", {})
    if kind == "unknown_key":
        loc = loc + (ctx["key"],)
    tags = {"poisson", "closed", "trace", "inference", "training"}
    where = ".".join(p for p in (prefix, _path(loc, tags)) if p)
    value = first.get("input")
    if kind == "unknown_key":
        value = value[ctx["key"]]
        allowed = f"unknown key; allowed keys: {ctx['allowed']}"
    elif kind == "extra_forbidden":
        allowed = f"unknown parameter; allowed: {params_help}"
    elif kind == "missing" or kind == "missing_argument":
        allowed = "this field is required"
    else:
        allowed = first["msg"][0].lower() + first["msg"][1:]
    return ScenarioError(where or "scenario", value, allowed)
