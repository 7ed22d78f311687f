"""Grouped-query attention against torch's, where torch is installed (a test reference
only: simdl never imports it)."""
from __future__ import annotations

import numpy as np
import pytest

from simdl.nn.layers import astype
from simdl.nn.llm import GQAttention

torch = pytest.importorskip("torch")


def torch_reference(att: GQAttention, x: np.ndarray) -> np.ndarray:
    """The Hugging Face Llama attention written in torch (rotate_half, repeat_kv, causal sdpa)."""
    p = {k: torch.tensor(v, dtype=torch.float64) for k, v in att.params.items()}
    xt = torch.tensor(x, dtype=torch.float64)
    n, t, _ = x.shape

    def heads(name: str, count: int) -> torch.Tensor:
        y = xt @ p["W" + name] + (p["b" + name] if "b" + name in p else 0)
        return y.view(n, t, count, att.dh).transpose(1, 2)

    q, k, v = heads("q", att.h), heads("k", att.kv), heads("v", att.kv)
    inv = 1.0 / att.theta ** (torch.arange(0, att.dh, 2, dtype=torch.float64) / att.dh)
    ang = torch.outer(torch.arange(t, dtype=torch.float64), inv)
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()

    def rot(z: torch.Tensor) -> torch.Tensor:
        half = torch.cat([-z[..., att.dh // 2:], z[..., :att.dh // 2]], -1)
        return z * cos + half * sin

    g = att.h // att.kv
    k, v = rot(k).repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    ctx = torch.nn.functional.scaled_dot_product_attention(rot(q), k, v, is_causal=True)
    return (ctx.transpose(1, 2).reshape(n, t, -1) @ p["Wo"]).numpy()


@pytest.mark.parametrize("h, kv, bias", [(4, 2, False), (4, 4, False), (6, 1, True)])
def test_grouped_query_attention_equals_torch(h, kv, bias):
    rng = np.random.default_rng(2)
    att = astype(GQAttention(12, h, kv, 4, rng, theta=500.0, bias=bias), np.float64)
    for b in ("bq", "bk", "bv"):
        if b in att.params:
            att.params[b] += rng.standard_normal(att.params[b].shape)
    x = rng.standard_normal((2, 7, 12))
    np.testing.assert_allclose(att.forward(x)[0], torch_reference(att, x), rtol=1e-12, atol=1e-12)
