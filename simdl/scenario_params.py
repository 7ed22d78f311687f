"""A plug-in's parameters checked against its own signature, and pydantic's errors
as one line (field, value, allowed): the schema machinery under `simdl.scenario`.

Components chosen by name (topology, model, strategy) keep their parameters flat
beside the name; checking them against the chosen function's signature means a new
plug-in never needs a schema edit.
"""
from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError,
                      create_model)
from pydantic_core import PydanticCustomError

from simdl import units
from simdl.errors import QUOTE, ScenarioError, SimdlError, shorten
from simdl.hw import catalogue


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
        fields[p.name] = (_at_the_edge(hints.get(p.name, Any)), default)
    config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    return create_model(f"{fn.__name__}_params", __config__=config, **fields)


def _at_the_edge(hint: Any) -> Any:
    """`hint` as a file's values must meet it, where code calling the plug-in directly
    needs no check: a whole number strictly (`true` is not 1, as in the schema), and a
    quantity annotated with its kind of `units.SUFFIXES` (`Annotated[float | str,
    "bandwidth"]`) with its unit (a bare 100 is a slip, not 100 B/s)."""
    if getattr(hint, "__origin__", hint) is int:
        return Annotated[hint, Field(strict=True)]
    kind = next((m for m in getattr(hint, "__metadata__", ())
                 if isinstance(m, str) and m in units.SUFFIXES), None)
    if kind is None:
        return hint

    def check(value: Any) -> Any:
        if value is not None:
            try:
                catalogue.quantity(value, kind, kind, zero=kind == "time")
            except SimdlError as err:
                raise PydanticCustomError("quantity", "{allowed}", {"allowed": err.allowed}) from None
        return value
    return Annotated[hint, AfterValidator(check)]


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
    """pydantic's location as a field path; a user's long key is cut to a prefix."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in tags or str(part).startswith("function-"):
            continue  # a union tag, not a field
        else:
            part = shorten(str(part), 60)
            out += f".{part}" if out else part
    return out


def scenario_error(err: ValidationError, prefix: str = "", params_help: str = "") -> ScenarioError:
    """pydantic's first error as one line: field path, value, what is allowed."""
    first = err.errors(include_url=False)[0]
    loc, kind, ctx = tuple(first["loc"]), first["type"], first.get("ctx", {})
    if kind == "unknown_key":
        loc = loc + (ctx["key"],)
    tags = {"poisson", "closed", "trace", "inference", "training", "generation",
            "fixed-length", "drawn-length", "uniform", "lognormal"}
    where = ".".join(p for p in (prefix, _path(loc, tags)) if p)
    value = first.get("input")
    if kind == "unknown_key":  # ctx has the key as text: find the key itself (5, not '5')
        value = next(v for k, v in value.items() if str(k) == ctx["key"])
        allowed = f"unknown key; allowed keys: {ctx['allowed']}"
    elif kind == "extra_forbidden":
        allowed = f"unknown parameter; allowed: {params_help}"
    elif kind == "missing" or kind == "missing_argument":
        allowed = "this field is required"
    elif kind == "union_tag_invalid" and isinstance(value, Mapping):  # name the tag, not the block
        key = ctx["discriminator"].strip("'")
        where, value = f"{where}.{key}" if where else key, value.get(key, ctx["tag"])
        allowed = f"choose one of: {ctx['expected_tags']}"
    else:
        allowed = first["msg"][0].lower() + first["msg"][1:]
        for part in ctx.values():  # the user's text pydantic put in its message ('Input tag …')
            if isinstance(part, str) and len(part) > QUOTE:
                allowed = allowed.replace(part, shorten(part))
    return ScenarioError(where or "scenario", value, allowed)
