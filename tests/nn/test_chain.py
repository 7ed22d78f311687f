"""Chain: any cut into ranges gives bitwise the whole-model numbers; costs and summary add up."""
from __future__ import annotations

import numpy as np
import pytest

from simdl.errors import SimdlError
from simdl.nn.chain import Block, Chain, human
from simdl.nn.models import MODELS, build
from simdl.rng import stream

# Small instances keep the suite fast; a model without an entry runs at its defaults.
SMALL = {
    "mlp": dict(in_dim=6, hidden=8, depth=3, n_classes=3),
    "lenet": dict(in_ch=2, size=12, n_classes=3),
    "resnet_small": dict(in_ch=2, size=8, width=4, n_classes=3),
    "mobilenet_small": dict(in_ch=2, size=8, width=4, n_classes=3),
    "tiny_transformer": dict(vocab=7, d_model=8, n_heads=2, n_layers=2, seq_len=5),
}


def small(name: str, seed: int = 0) -> Chain:
    return build(name, **SMALL.get(name, {}), seed=seed)


def sample(chain: Chain, batch: int, rng: np.random.Generator) -> np.ndarray:
    """A random input batch; token models draw ids below n_classes (their vocabulary)."""
    shape = (batch, *chain.in_shape)
    if np.issubdtype(chain.in_dtype, np.integer):
        return rng.integers(0, chain.n_classes, shape).astype(chain.in_dtype)
    return rng.standard_normal(shape).astype(chain.in_dtype)


def run_in_ranges(chain: Chain, x: np.ndarray, dy: np.ndarray, cuts: list[int]):
    """Forward range by range, then backward range by range in reverse, as a pipeline would."""
    bounds = [0, *cuts, len(chain)]
    ranges = list(zip(bounds[:-1], bounds[1:]))
    caches = []
    for a, b in ranges:
        x, c = chain.forward(x, train=True, start=a, stop=b)
        caches.append(c)
    y, g = x, dy
    for (a, b), c in zip(reversed(ranges), reversed(caches)):
        g = chain.backward(g, c, start=a, stop=b)
    return y, g


def same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_cut_gives_bitwise_the_whole_model_forward_and_backward(name):
    """Train mode (BatchNorm uses batch stats and updates running stats): outputs, d(input),
    every parameter gradient and every buffer equal the whole-model run exactly, for each
    single cut point and for all blocks one at a time. Each run uses a fresh, identical model."""
    rng = stream(0, "test_chain")
    ref = small(name)
    x = sample(ref, 3, rng)
    y_ref, caches = ref.forward(x, train=True)
    dy = rng.standard_normal(y_ref.shape).astype(np.float32)
    dx_ref = ref.backward(dy, caches)
    n = len(ref)
    assert n >= 3
    for cuts in [[k] for k in range(1, n)] + [list(range(1, n))]:
        m = small(name)
        y, dx = run_in_ranges(m, x, dy, cuts)
        assert np.array_equal(y, y_ref), cuts
        assert same(dx, dx_ref), cuts
        for k, g in ref.grads().items():
            assert np.array_equal(m.grads()[k], g), (cuts, k)
        for k, b in ref.buffers().items():
            assert np.array_equal(m.buffers()[k], b), (cuts, k)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_eval_mode_block_by_block_equals_whole(name):
    chain = small(name)
    x = sample(chain, 2, stream(1, "test_chain"))
    y, _ = chain.forward(x)
    h = x
    for i in range(len(chain)):
        h, _ = chain.forward(h, start=i, stop=i + 1)
    assert np.array_equal(h, y)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_cost_out_shapes_equal_the_real_forward_shapes(name):
    chain = small(name)
    h = sample(chain, 3, stream(2, "test_chain"))
    for i, c in enumerate(chain.costs(3)):
        h, _ = chain.forward(h, start=i, stop=i + 1)
        assert tuple(c.out_shape) == h.shape, chain.names[i]
    assert chain.cost(3).out_shape == h.shape


@pytest.mark.parametrize("name", sorted(MODELS))
def test_summary_has_one_row_per_block_and_totals_equal_the_sums(name):
    chain = small(name)
    df = chain.summary_frame(batch=4)
    assert list(df["block"]) == chain.names
    whole = chain.cost(4)
    assert df["fwd_flops"].sum() == whole.fwd_flops > 0
    assert df["bwd_flops"].sum() == whole.bwd_flops > 0
    assert df["saved_bytes"].sum() == whole.saved_bytes
    assert df["param_bytes"].sum() == whole.param_bytes == chain.param_bytes()
    assert df["params"].sum() == chain.n_params() == sum(p.size for p in chain.params().values())
    lines = chain.summary(batch=4).splitlines()
    assert lines[0].startswith(f"{name}: {chain.n_params():,} parameters")
    rows = lines[3:-2]  # title, header, rule | rows | rule, total
    assert [r.split()[0] for r in rows] == chain.names
    total = lines[-1].split()
    assert total[0] == "total"
    assert total[1:4] == [human(df["params"].sum()), human(whole.fwd_flops), human(whole.bwd_flops)]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_range_costs_add_up_to_the_whole(name):
    chain = small(name)
    for k in range(len(chain) + 1):
        a, b = chain.cost(2, 0, k), chain.cost(2, k)
        assert a.fwd_flops + b.fwd_flops == chain.cost(2).fwd_flops
        assert chain.param_bytes(0, k) + chain.param_bytes(k) == chain.param_bytes()


def test_params_are_the_layers_own_arrays_under_block_names():
    chain = small("mlp")
    params = chain.params()
    assert list(params) == [f"{b.name}.{k}" for b in chain for k in b.layer.params]
    for key, p in params.items():
        block, local = key.split(".", 1)
        assert p is chain[block].layer.params[local]
        assert chain.grads()[key].shape == p.shape
    chain.grads()["fc1.0.W"] += 1.0
    chain.zero_grad()
    assert all(not g.any() for g in chain.grads().values())


def test_slicing_gives_a_sub_chain_that_computes_the_same_range():
    chain = small("mobilenet_small")
    x = sample(chain, 2, stream(3, "test_chain"))
    h, _ = chain.forward(x, start=0, stop=2)
    sub = chain[2:5]
    assert sub.names == chain.names[2:5] and sub.in_shape == h.shape[1:]
    assert np.array_equal(sub.forward(h)[0], chain.forward(h, start=2, stop=5)[0])
    assert chain[-1] is chain.blocks[-1] and chain["head"] is chain.blocks[-1]
    assert chain[len(chain) - 2:].n_classes == chain.n_classes


def test_astype_float64_casts_shared_arrays_once():
    chain = small("resnet_small").astype(np.float64)
    assert all(p.dtype == np.float64 for p in chain.params().values())
    for b in chain:
        for k, p in b.layer.params.items():
            assert p is chain.params()[f"{b.name}.{k}"]
    y, _ = chain.forward(sample(chain, 2, stream(4, "test_chain")).astype(np.float64))
    assert y.dtype == np.float64


def test_bad_ranges_names_and_caches_are_refused():
    chain = small("mlp")
    with pytest.raises(SimdlError, match="chain.range"):
        chain.forward(np.zeros((1, 6), np.float32), start=2, stop=1)
    with pytest.raises(SimdlError, match="chain.backward.caches"):
        chain.backward(np.zeros((1, 3), np.float32), [], start=0, stop=2)
    with pytest.raises(SimdlError, match="chain.block"):
        chain["nope"]
    with pytest.raises(SimdlError, match=r"blocks\[1\].name"):
        Chain([chain.blocks[0], Block(chain.blocks[0].name, chain.blocks[1].layer)], (6,))
