"""What a weight format costs a language model in accuracy: a byte-level text as a
next-token dataset, and per format the next-token agreement with fp32 and the perplexity.

Knows chains, datasets and `nn.compress`; knows nothing of devices or time.
"""
from __future__ import annotations

import math

import numpy as np

from simdl.errors import SimdlError
from simdl.nn.compress import accuracy_change, quantize
from simdl.nn.chain import Chain
from simdl.nn.data import Dataset
from simdl.nn.formats import BITS_PER_WEIGHT

__all__ = ["byte_windows", "format_accuracy"]


def byte_windows(text: str, seq_len: int, stride: int | None = None) -> Dataset:
    """UTF-8 bytes of `text` (tokens 0-255) as windows of seq_len inputs and the seq_len
    bytes that follow each (labels), every `stride` bytes (default seq_len)."""
    data = np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int64)
    stride = stride or seq_len
    starts = np.arange(0, len(data) - seq_len, stride)
    if len(starts) == 0:
        raise SimdlError("byte_windows.text", len(data), f"need more than seq_len={seq_len} bytes")
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
    win = data[idx]
    return Dataset(np.ascontiguousarray(win[:, :-1]), np.ascontiguousarray(win[:, 1:]), 256,
                   "bytes")


def format_accuracy(chain: Chain, data: Dataset, formats: tuple[str, ...]) -> list[dict]:
    """Per weight format: the chain's weights stored so (`nn.compress.quantize`), its bits
    per weight, the share of positions whose predicted next token is fp32's (agreement),
    the mean |logit - fp32 logit| and the perplexity exp(mean cross-entropy) of both."""
    rows = []
    for fmt in formats:
        r = accuracy_change(chain, quantize(chain, fmt), data)
        rows.append({"format": fmt, "bits_per_weight": BITS_PER_WEIGHT[fmt],
                     "agreement": r["agreement"],
                     "mean_abs_logit_diff": r["mean_abs_logit_diff"],
                     "perplexity": math.exp(r["deployed_loss"]),
                     "fp32_perplexity": math.exp(r["reference_loss"])})
    return rows
