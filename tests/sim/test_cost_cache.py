"""Costs worked out once and reused: a chain's per batch size, a stage's per micro-batch
size. Each cached value must equal the one computed afresh, and a changed chain (a
deployment) must get its own."""
import numpy as np
import pytest

from simdl.nn.chain import Chain
from simdl.nn.compress import deploy
from simdl.nn.models import lenet, mlp, mobilenet_small, resnet_small, tiny_transformer
from simdl.plan.plan import Plan, Replica, Stage
from simdl.plan.world import World
from simdl.plan.costs import microbatch_sizes
from simdl.sim.stages import prepare

SMALL = {
    "mlp": lambda: mlp(in_dim=8, hidden=16, depth=3, n_classes=3),
    "lenet": lambda: lenet(size=12),
    "resnet_small": lambda: resnet_small(width=4),
    "mobilenet_small": lambda: mobilenet_small(width=4),
    "tiny_transformer": lambda: tiny_transformer(vocab=16, d_model=16, n_heads=2, n_layers=2,
                                                 seq_len=6),
}


def fresh(chain: Chain, batch: int) -> list:
    """Each block's cost by walking the layers, as `Chain.costs` did before it cached."""
    shape, out = (batch, *chain.in_shape), []
    for b in chain.blocks:
        c = b.layer.cost(shape)
        out.append(c)
        shape = c.out_shape
    return out


@pytest.mark.parametrize("name", sorted(SMALL))
def test_cached_costs_equal_fresh_ones_for_every_batch_size(name):
    chain = SMALL[name]()
    for batch in (3, 1, 7, 3):  # 3 twice: the second is read from the cache
        assert list(chain.costs(batch)) == fresh(chain, batch)
    assert chain.costs(3) is chain.costs(3)  # kept, not recomputed


def test_a_deployed_chain_gets_its_own_costs_not_its_originals():
    """deploy() deep-copies the chain (cache included) and sets new blocks: the copy's
    costs are its compressed layers', not the fp32 ones cached on the original."""
    chain = SMALL["mlp"]()
    before = chain.costs(4)  # cached on the original before it is copied
    dep = deploy(chain, dtype="int8", prune=0.5, sparsity="2:4")
    assert list(dep.costs(4)) == fresh(dep, 4)
    assert [c.param_bytes for c in dep.costs(4)] != [c.param_bytes for c in before]
    assert [c.sparse_flops for c in dep.costs(4)] != [c.sparse_flops for c in before]
    assert chain.costs(4) is before and list(before) == fresh(chain, 4)  # original untouched


def test_setting_blocks_forgets_the_old_costs():
    chain = SMALL["mlp"]()
    chain.costs(2)
    chain.blocks = chain.blocks[:2]
    assert list(chain.costs(2)) == fresh(chain, 2) and len(chain.costs(2)) == 2


def test_a_slice_costs_its_own_blocks():
    chain = SMALL["resnet_small"]()
    part = chain[1:3]
    assert list(part.costs(5)) == fresh(chain, 5)[1:3]


@pytest.mark.parametrize("batch", range(1, 41))
@pytest.mark.parametrize("m", range(1, 13))
def test_microbatch_sizes_cut_as_numpy_array_split_cuts(batch, m):
    expected = [len(p) for p in np.array_split(np.arange(batch), min(m, batch))]
    assert list(microbatch_sizes(batch, m)) == expected


def test_a_stages_kernels_are_worked_out_once_per_size_and_equal_the_chains_costs():
    """One stage on a 2:4 pruned fp16 deployment of a unit that runs 2:4 at 2x: each
    block charges its FLOPs less half its sparse FLOPs, its forward bytes, and keeps the
    unit for the next block but the last."""
    from simdl.hw.devices import make_device
    chain = SMALL["mlp"]()
    devices = {"pc": make_device("desktop_pc")}
    world = World("w", 0, {"main": chain}, devices, None, None, None)
    stage = Stage(("pc",), 1, 4, unit="gpu", dtype="fp16", prune=0.5, sparsity="2:4")
    plan = Plan("t", (Replica((Stage(("pc",), 0, 1), stage)),), "pc")
    work = prepare(plan, world)[0].works[1]
    assert work.speedup == 2.0
    got = work.kernels(6)
    assert work.kernels(6) is got
    costs = work.chain.costs(6)
    assert got == tuple((b, work.chain.names[b], costs[b].fwd_flops - costs[b].sparse_flops / 2,
                         costs[b].fwd_bytes, costs[b].out_bytes, b < 3) for b in range(1, 4))
    assert all(costs[b].sparse_flops > 0 for b in range(1, 4))
