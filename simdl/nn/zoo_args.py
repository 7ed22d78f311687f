"""What the published-shape zoo modules share about their arguments: the checks on a
size argument, and `Size`, what a size function answers before anything is built.

(`nn.models` keeps its own `Size` and `_positive` for the small models; the two `Size`
classes have the same fields, which is all `simdl.budget` reads.)
"""
from __future__ import annotations

from typing import NamedTuple

from simdl.errors import SimdlError


class Size(NamedTuple):
    """A zoo model's trainable scalars and one sample's input shape, known before it is built."""

    params: int
    in_shape: tuple[int, ...]


def positive_int(model: str, field: str, value: object) -> None:
    """Refuse a size that is not a whole number >= 1, naming model.field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) \
            or value < 1:
        raise SimdlError(f"model.{model}.{field}", value, "must be a positive integer")


def positive_float(model: str, field: str, value: object) -> None:
    """Refuse a multiplier that is not a finite number > 0, naming model.field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e6:
        raise SimdlError(f"model.{model}.{field}", value, "must be a number above 0")


def check(model: str, **sizes: object) -> None:
    """Check each size: a name ending in `_mult` is a multiplier, any other a count."""
    for field, value in sizes.items():
        (positive_float if field.endswith("_mult") else positive_int)(model, field, value)
