"""simdl: simulate deep learning across a pool of everyday devices."""
from __future__ import annotations

__version__ = "0.1.0"
