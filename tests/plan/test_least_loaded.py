"""least_loaded (one rule for the run and the estimator's replay) keeps a heap of replicas' keys instead of looking at every replica per
request: it must pick exactly what the look at every replica picks."""
import random
import pytest

from simdl.plan.queueing import dispatcher


def brute_force(busy, shares):
    """The rule itself: fewest in flight relative to speed; ties to the faster, then first."""
    return min(range(len(busy)), key=lambda i: ((busy[i] + 1) / shares[i], -shares[i], i))


@pytest.mark.parametrize("seed", range(40))
def test_least_loaded_picks_what_a_look_at_every_replica_picks(seed):
    """Random shares (repeats included, so keys tie) and random request ends, 600 steps."""
    rng = random.Random(seed)
    n = rng.randint(1, 12)
    shares = [rng.choice([0.1, 0.25, 1 / 3, 0.5, rng.random() + 0.01]) for _ in range(n)]
    busy = [0] * n
    pick, moved = dispatcher("least_loaded", shares, busy)
    in_flight = []
    for _ in range(600):
        if in_flight and rng.random() < 0.45:
            i = in_flight.pop(rng.randrange(len(in_flight)))
            busy[i] -= 1
            moved(i)
        else:
            i = pick(busy)
            assert i == brute_force(busy, shares)
            busy[i] += 1
            moved(i)
            in_flight.append(i)
