"""Data owners dealt to workers: owner j to worker j % n, in owner order."""
from simdl.plan.training import deal


def test_owners_go_round_the_workers_in_order():
    assert deal(7, 3) == [[0, 3, 6], [1, 4], [2, 5]]
    assert deal(2, 4) == [[0], [1], [], []]


def test_deal_matches_its_definition_for_every_small_case():
    for owners in range(12):
        for workers in range(1, 9):
            assert deal(owners, workers) == [[j for j in range(owners) if j % workers == r]
                                             for r in range(workers)]
