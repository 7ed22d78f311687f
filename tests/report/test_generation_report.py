"""What a generation run writes beside tokens.csv: each link's bytes per token and each
device tier's memory over time, from the run's own log and trace."""
import pytest
from test_generation import LLM, scenario

from simdl import api
from simdl.budget import DATA_SAMPLES, data_samples


def test_links_carry_bytes_per_token_and_memory_is_the_trace():
    sc = scenario(LLM, [{"name": "pipeline", "devices": ["laptop", "phone"], "cuts": [9]}],
                  requests=2, prompt=8, tokens=4)
    result = api.run(sc, timing_only=True).results[0]
    tokens = int(result.summary.tokens_generated.iloc[0])
    assert tokens == 2 * 4
    links = result.links
    assert (links.bytes > 0).any()
    assert links.bytes_per_token.tolist() == (links.bytes / tokens).tolist()
    memory = result.extra["memory"]
    assert list(memory.columns) == ["t", "device", "tier", "weights_bytes", "kv_bytes"]
    assert memory.t.is_monotonic_increasing
    peak = memory.groupby("device").kv_bytes.max()
    for device, mib in peak.items():
        assert result.summary[f"kv_peak_MiB_{device}"].iloc[0] == pytest.approx(mib / 2**20)
    last = memory.groupby("device").kv_bytes.last()
    assert (last == 0).all() and (peak > 0).all()   # every cache freed at the end
    assert (memory.weights_bytes > 0).all()


@pytest.mark.parametrize("shape, itemsize, expect", [
    ((3, 32, 32), 4, DATA_SAMPLES),         # every shipped scenario: unchanged
    ((3, 224, 224), 4, 110),                # 64 MiB of 602,112-byte samples, a multiple of 5
    ((3, 2048, 2048), 4, 100),              # never fewer than DATA_MIN
])
def test_the_world_draws_at_most_64_mib_of_samples(shape, itemsize, expect):
    assert data_samples(shape, itemsize) == expect
