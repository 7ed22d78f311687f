"""The star pattern (distributed-llama: every member sends its part to the root, which
sends the result back) against its closed form on dedicated links."""
import pytest

from simdl.sim import collectives as C
from test_collectives import ALPHA, B, O, S, finish, mesh_sim, names, sent, transfers


def received(sim):
    return transfers(sim).groupby("resource").nbytes.sum().to_dict()


@pytest.mark.parametrize("n", [2, 3, 5])
def test_star_all_reduce_is_one_sync_up_and_one_down_per_member(n):
    """Each member sends S to the root and gets S back, each flow alone on its link:
    T = 2(alpha + o + S/B); the root sends and receives (n-1) S."""
    sim = mesh_sim(n)
    t = finish(sim, C.all_reduce(sim, names(n), S, "star", label="x"))
    assert t == pytest.approx(2 * (ALPHA + O + S / B), rel=1e-12)
    rows = transfers(sim)
    assert len(rows) == 2 * (n - 1)
    assert set(rows.label) == {"x star flat reduce", "x star flat bcast"}
    workers = names(n)[1:]
    assert sent(sim) == {"d0": (n - 1) * S, **dict.fromkeys(workers, S)}
    assert received(sim) == {"d0": (n - 1) * S, **dict.fromkeys(workers, S)}


def test_the_root_is_the_first_device_and_sends_back_once_every_part_arrived():
    """Root d2 (listed first): every part goes to d2, and no send back starts before all arrived."""
    sim = mesh_sim(3)
    finish(sim, C.all_reduce(sim, ["d2", "d0", "d1"], S, "star"))
    rows = transfers(sim)
    up, down = rows[rows.label.str.endswith("reduce")], rows[rows.label.str.endswith("bcast")]
    assert set(up.resource) == {"d2"} and set(down.device) == {"d2"}
    assert down.t_start.min() >= up.t_end.max()


@pytest.mark.parametrize("n", [2, 4])
def test_star_all_gather_sends_parts_up_and_the_rest_down(n):
    """S/n up, (n-1)/n S down: T = 2(alpha + o) + S/B on dedicated links."""
    sim = mesh_sim(n)
    t = finish(sim, C.all_gather(sim, names(n), S, "star"))
    assert t == pytest.approx(2 * (ALPHA + O) + S / B, rel=1e-12)
    workers = names(n)[1:]
    assert sent(sim) == pytest.approx({"d0": (n - 1) ** 2 / n * S,
                                       **dict.fromkeys(workers, S / n)}, rel=1e-12)
    assert received(sim) == pytest.approx({"d0": (n - 1) / n * S,
                                           **dict.fromkeys(workers, (n - 1) / n * S)}, rel=1e-12)
