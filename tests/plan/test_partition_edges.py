"""The cutting programs at their edges: a stage per block, a cap on the stages, and ties
broken the same way every time (the first candidate), so the same inputs give the same
plan. Each test pins a piece that an operator-mutation sweep of plan/partition.py
found no test could tell from a wrong version."""
import itertools

import numpy as np
from test_search import brute_pipeline

from simdl.plan.partition import INF, Link, ordered, stage_matrix, subsets

FREE = Link(0.0, 0.0)


def test_as_many_stages_as_blocks_gives_each_stage_one_block_and_more_is_impossible():
    stages = [stage_matrix(np.array([1.0, 2.0, 4.0]))] * 3
    nbytes = np.zeros(4)
    p = ordered(stages, [FREE, FREE], FREE, FREE, nbytes, "sum")
    assert (p.cost, p.stages) == (7.0, ((0, 0, 1), (1, 1, 2), (2, 2, 3)))
    assert ordered(stages + stages[:1], [FREE] * 3, FREE, FREE, nbytes, "sum").cost == INF


def test_a_cap_on_the_stages_leaves_out_every_longer_pipeline():
    """Three devices, five blocks: with at most s stages, exactly the sets of at most s
    devices have a pipeline, each the brute-force best over that set's orders."""
    rng = np.random.default_rng(5)
    n, k = 5, 3
    stages = [stage_matrix(rng.integers(1, 20, n).astype(float)) for _ in range(k)]
    links = [[Link(float(rng.integers(0, 9)), 1.0) for _ in range(k)] for _ in range(k)]
    ends = [Link(float(rng.integers(0, 9)), 1.0) for _ in range(k)]
    nbytes = rng.integers(0, 5, n + 1).astype(float)
    for cap in (1, 2):
        found = subsets(stages, links, ends, ends, nbytes, "max", [1, 2, 4], max_stages=cap)
        assert sorted(found) == [m for m in range(1, 8) if bin(m).count("1") <= cap]
        for mask, p in found.items():
            members = [g for g in range(k) if mask >> g & 1]
            assert p.cost == min(brute_pipeline(stages, links, ends, ends, nbytes, "max", o)
                                 for o in itertools.permutations(members))


def test_equal_candidates_resolve_to_the_first():
    """Two candidates for one device (say two dtypes) that cost the same, and a second
    device that may not start: alone and in front of the second device, the device's
    first candidate is chosen."""
    blocks = stage_matrix(np.array([3.0, 3.0]))
    stages = [blocks, blocks.copy(), blocks.copy()]
    links = [[FREE] * 3 for _ in range(3)]
    found = subsets(stages, links, [FREE] * 3, [FREE] * 3, np.zeros(3), "max", [1, 1, 2],
                    starts=[True, True, False])
    assert found[1].stages == ((0, 0, 2),)
    assert found[3].stages == ((0, 0, 1), (2, 1, 2))
