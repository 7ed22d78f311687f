"""The zoo: seeded init, backward equal to central differences, output shapes, the CLI."""
from __future__ import annotations

import numpy as np
import pytest

from published_sizes import TINY

from simdl.errors import SimdlError
from simdl.nn.chain import Chain
from simdl.nn.layers import SoftmaxCrossEntropy
from simdl.nn.models import MODELS, build, main
from simdl.rng import stream

# Small instances for the gradient check (float64, so a handful of forwards each).
SMALL = {
    "mlp": dict(in_dim=5, hidden=6, depth=2, n_classes=3),
    "lenet": dict(in_ch=1, size=12, n_classes=3),
    "resnet_small": dict(in_ch=2, size=8, width=4, n_classes=3),
    "mobilenet_small": dict(in_ch=2, size=8, width=2, n_classes=3),
    "tiny_transformer": dict(vocab=7, d_model=8, n_heads=2, n_layers=2, seq_len=4),
    **TINY,
}
# Central differences in float64 with h=1e-6 are accurate to ~1e-10 on these O(1)
# losses; ReLU/ReLU6/max-pool kinks are the only thing that could break this
# (a pre-activation within h of a kink) and have probability ~1e-6 per unit.
H, RTOL, ATOL = 1e-6, 1e-5, 1e-8


def small(name: str, seed: int = 0) -> Chain:
    return build(name, **SMALL.get(name, {}), seed=seed)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_same_seed_same_weights_other_seed_other_weights(name):
    a, b, c = small(name), small(name), small(name, seed=1)
    assert list(a.params()) == list(b.params()) == list(c.params())
    assert all(np.array_equal(p, b.params()[k]) for k, p in a.params().items())
    assert all(p.dtype == np.float32 for p in a.params().values())
    differ = [k for k, p in a.params().items() if not np.array_equal(p, c.params()[k])]
    assert differ  # weights differ; zero biases and unit BatchNorm scales may not
    assert len(a) >= 3 and a.name == name


@pytest.mark.parametrize("name", sorted(MODELS))
def test_backward_matches_central_differences_of_the_loss(name):
    """Train mode throughout (BatchNorm on batch statistics); a random subset of parameter
    entries (two per array, at most 60) and of input entries (12, float inputs only)."""
    rng = stream(0, "test_models.fd")
    chain = small(name).astype(np.float64)
    shape = (2, *chain.in_shape)
    if np.issubdtype(chain.in_dtype, np.integer):
        x = rng.integers(0, chain.n_classes, shape)
    else:
        x = rng.standard_normal(shape)
    y_shape = chain.cost(2).out_shape
    labels = rng.integers(0, y_shape[-1], y_shape[:-1])
    sce = SoftmaxCrossEntropy()

    def loss(inp: np.ndarray) -> float:
        return float(sce.forward(chain.forward(inp, train=True)[0], labels)[0])

    chain.zero_grad()
    logits, caches = chain.forward(x, train=True)
    assert logits.dtype == np.float64
    _, lcache = sce.forward(logits, labels)
    dx = chain.backward(sce.backward(lcache), caches)
    grads = {k: g.copy() for k, g in chain.grads().items()}

    checks = [(k, int(i)) for k, p in chain.params().items()
              for i in rng.choice(p.size, size=min(2, p.size), replace=False)]
    checks = [checks[i] for i in sorted(rng.choice(len(checks), min(60, len(checks)), replace=False))]
    params = chain.params()
    for k, i in checks:
        p = params[k].reshape(-1)
        old = p[i]
        p[i] = old + H
        up = loss(x)
        p[i] = old - H
        down = loss(x)
        p[i] = old
        fd = (up - down) / (2 * H)
        an = grads[k].reshape(-1)[i]
        assert abs(fd - an) <= ATOL + RTOL * abs(fd), (k, i, fd, an)

    if dx is None:
        assert np.issubdtype(chain.in_dtype, np.integer)
        return
    for i in rng.choice(x.size, size=min(12, x.size), replace=False):
        e = np.zeros(x.size)
        e[i] = H
        fd = (loss(x + e.reshape(x.shape)) - loss(x - e.reshape(x.shape))) / (2 * H)
        assert abs(fd - dx.reshape(-1)[i]) <= ATOL + RTOL * abs(fd), (i, fd, dx.reshape(-1)[i])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_logits_have_one_score_per_class(name):
    chain = small(name)
    out = chain.cost(5).out_shape
    assert out[0] == 5 and out[-1] == chain.n_classes


def test_transformer_is_causal():
    """Changing the last token changes no logit at an earlier position."""
    chain = small("tiny_transformer")
    x = stream(0, "causal").integers(0, 7, (2, 4))
    x2 = x.copy()
    x2[:, -1] = (x2[:, -1] + 1) % 7
    y, y2 = chain.forward(x)[0], chain.forward(x2)[0]
    assert np.array_equal(y[:, :-1], y2[:, :-1]) and not np.array_equal(y[:, -1], y2[:, -1])


def test_resnet_stride_two_blocks_have_a_projection_shortcut():
    chain = small("resnet_small")
    shapes = [c.out_shape for c in chain.costs(1)]
    assert shapes[:5] == [(1, 4, 8, 8), (1, 4, 8, 8), (1, 8, 4, 4), (1, 8, 4, 4), (1, 16, 2, 2)]
    assert any("shortcut" in k for k in chain["res2"].layer.params)
    assert not any("shortcut" in k for k in chain["res1"].layer.params)


def test_lenet_has_the_classic_parameter_count():
    """LeNet-5 on 28x28: 156 + 2416 + 48120 + 10164 + 850 = 61706 parameters."""
    assert build("lenet").n_params() == 61706


def test_bad_sizes_and_names_are_refused_with_the_field():
    with pytest.raises(SimdlError, match="model.name"):
        build("vgg")
    with pytest.raises(SimdlError, match="lenet.size"):
        build("lenet", size=10)
    with pytest.raises(SimdlError, match="n_heads"):
        build("tiny_transformer", d_model=10, n_heads=4)


def test_cli_prints_a_title_and_one_row_per_block(capsys):
    assert main(["mlp", "--batch", "8"]) == 0
    out = capsys.readouterr().out.splitlines()
    chain = build("mlp")
    assert out[0].startswith(f"mlp: {chain.n_params():,} parameters") and "batch 8" in out[0]
    assert [r.split()[0] for r in out[3:-2]] == chain.names
    assert main(["nope"]) == 2
    assert "choose one of" in capsys.readouterr().err
