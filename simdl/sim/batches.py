"""Who draws which samples: the training set dealt to data owners, owners to workers.

Knows datasets, the batch size and the seed's named streams; knows nothing of devices'
speeds, transfers, replicas or the clock (`sim.job` charges and trains on them).

Batch rule: the training set is dealt to the data owners (`workload.data_on`, else
the plan's workers): owner j of m gets `shard(j, m)` (iid) or `by_class(j, m)`
(sorted by label, contiguous shares: each owner sees one or two classes). Per step,
owner j draws B // m samples (one more for the first B % m owners) from its share
with `stream(seed, f"batches/{owner}")`, epoch after epoch. Owner j is dealt to
worker j % n, which trains on its owners' draws concatenated in owner order (owners
on other devices send theirs as a "data" transfer). So a single worker over the
same owners trains on exactly the concatenation of what n workers draw each step.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from simdl.errors import PlanError
from simdl.nn.data import Dataset
from simdl.plan.training import owner_sizes
from simdl.plan.world import Training, World
from simdl.rng import stream

Batch = tuple[np.ndarray, np.ndarray]


def owner_shares(world: World, owners: Sequence[str]) -> list[Dataset]:
    """The part of the training set each owner holds, by the module's batch rule."""
    load, data = world.workload, world.train_data
    assert isinstance(load, Training) and data is not None
    m = len(owners)
    share = data.shard if load.shards == "iid" else data.by_class
    return [share(j, m) for j in range(m)]


def owner_batches(world: World, owners: Sequence[str]) -> list[Iterator[Batch]]:
    """Each owner's endless stream of per-step batches, by the module's batch rule."""
    sizes = owner_sizes(world.workload.batch, len(owners))
    shares = owner_shares(world, owners)
    for j, (o, d) in enumerate(zip(owners, shares)):
        if len(d) < sizes[j]:  # a short batch would break the costs the timeline charges
            raise PlanError("workload.batch", world.workload.batch, f"data owner {o} holds "
                            f"{len(d)} samples but draws {sizes[j]} per step; lower the batch")
    return [_draws(d, sizes[j], stream(world.seed, f"batches/{o}"))
            for j, (o, d) in enumerate(zip(owners, shares))]


def _draws(data: Dataset, size: int, rng: np.random.Generator) -> Iterator[Batch]:
    """Batches of exactly `size` from shuffled epochs (a ragged last batch is dropped);
    empty draws for an owner with no samples to give (batch < owners)."""
    if size == 0:
        while True:
            yield data.x[:0], data.y[:0]
    yield from data.forever(size, rng)
