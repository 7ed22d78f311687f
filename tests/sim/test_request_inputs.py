"""A request's samples and the accuracy over requests, computed without a call per
request, must equal the per-request rule: samples r*batch .. r*batch + batch - 1,
wrapping around the data; accuracy the mean over requests of each one's hit rate."""
from types import SimpleNamespace

import numpy as np
import pytest

from simdl.api import accuracy
from simdl.sim.inference import Outputs, inputs, labels


class Data:
    def __init__(self, n: int, tokens: bool):
        rng = np.random.default_rng(n)
        self.x = rng.standard_normal((n, 3)).astype(np.float32)
        self.y = rng.integers(0, 5, size=(n, 4) if tokens else n)

    def __len__(self) -> int:
        return len(self.x)


def world(n: int, batch: int, tokens: bool = False) -> SimpleNamespace:
    return SimpleNamespace(workload=SimpleNamespace(batch=batch), data=Data(n, tokens))


@pytest.mark.parametrize("n, batch", [(7, 3), (8, 4), (5, 5), (64, 9), (3, 1)])
def test_each_request_draws_the_next_batch_wrapping_around(n, batch):
    w = world(n, batch)
    for r in range(3 * n):
        idx = (r * batch + np.arange(batch)) % n
        x = inputs(w, r)
        assert np.array_equal(x, w.data.x[idx]) and x.flags.owndata  # its own copy
        assert np.array_equal(labels(w, r), w.data.y[idx])
    some = [0, 2, n, 3 * n - 1]
    assert np.array_equal(labels(w, some), np.stack([labels(w, r) for r in some]))


@pytest.mark.parametrize("tokens", [False, True])
def test_accuracy_is_the_mean_of_each_requests_hit_rate_in_request_order(tokens):
    """Random answers for 5,000 of 9,000 requests (more than one stack of 4,096)."""
    rng = np.random.default_rng(1)
    w = world(301, 7, tokens)
    served = rng.choice(9000, size=5000, replace=False)
    shape = (7, 4, 5) if tokens else (7, 5)
    final = {int(r): rng.standard_normal(shape) for r in served}
    per_request = [np.mean(np.argmax(final[r], -1) == labels(w, r)) for r in sorted(final)]
    plan = SimpleNamespace(dispatch="one", replicas=[SimpleNamespace(stages=[
        SimpleNamespace(dtype="fp32", prune=0.0)])])
    assert accuracy(plan, w, Outputs(final=final))["accuracy"] == float(np.mean(per_request))
