"""Named random streams derived from one scenario seed.

Each component asks for its own stream by name, so adding a component never
shifts another's numbers. Nothing in simdl uses numpy's global random state.
"""
from __future__ import annotations

import zlib

import numpy as np


def stream(seed: int, name: str) -> np.random.Generator:
    """An independent generator for component `name` under scenario `seed`."""
    key = zlib.crc32(name.encode("utf-8"))
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key,)))
