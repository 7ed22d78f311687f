"""Chain: any cut into ranges gives bitwise the whole-model numbers; costs and summary add up."""
from __future__ import annotations

import numpy as np
import pytest

from published_sizes import TINY

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
    **TINY,
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



@pytest.mark.parametrize("name", sorted(MODELS))
def test_without_the_input_gradient_every_parameter_gradient_is_the_same_bits(name, monkeypatch):
    """`need_dx=False` (the model's first block: nothing upstream) leaves every gradient
    bit for bit as the full backward does, returns None, and never runs the first
    layer's `backward` (where d(input) is formed) when that layer has work to skip (an
    Embedding has none: token ids have no gradient)."""
    from simdl.nn.core import Layer

    rng = stream(0, "test_chain")
    full, lean = small(name), small(name)
    x = sample(full, 3, rng)
    y, caches = full.forward(x, train=True)
    dy = rng.standard_normal(y.shape).astype(y.dtype)
    full.backward(dy, caches)
    _, caches = lean.forward(x, train=True)
    first = lean.blocks[0].layer
    first = first.layers[0] if hasattr(first, "layers") else first
    if type(first).backward_params is not Layer.backward_params:
        monkeypatch.setattr(first, "backward", lambda *a: pytest.fail("d(input) was formed"))
    assert lean.backward(dy, caches, need_dx=False) is None
    for k, g in full.grads().items():
        assert np.array_equal(g, lean.grads()[k]), k


@pytest.mark.parametrize("stride, padding, groups", [(1, 2, 1), (2, 1, 1), (1, 1, 4), (2, 1, 4)])
def test_a_convolution_without_its_input_gradient_runs_no_transposed_work(stride, padding,
                                                                          groups, monkeypatch):
    """Conv2d.backward_params: the same dW and db bits as backward, with neither the
    transposed correlation nor col2im (the two ways d(input) is formed) called."""
    from simdl.nn import conv

    rng = stream(1, "test_chain")
    layers = [conv.Conv2d(4, 8 if groups == 1 else 4, 3 if padding == 1 else 5, stream(2, "c"),
                          stride=stride, padding=padding, groups=groups) for _ in range(2)]
    x = rng.standard_normal((2, 4, 9, 9)).astype(np.float32)
    y, cache = layers[0].forward(x, train=True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    layers[0].backward(dy, cache)
    monkeypatch.setattr(conv, "correlate", lambda *a, **k: pytest.fail("correlate called"))
    monkeypatch.setattr(conv.Conv2d, "_col2im", lambda *a: pytest.fail("col2im called"))
    monkeypatch.setattr(conv.Conv2d, "_transposed_depthwise", lambda *a: pytest.fail("dx"))
    assert layers[1].backward_params(dy, cache) is None
    for k, g in layers[0].grads.items():
        assert np.array_equal(g, layers[1].grads[k]), k
