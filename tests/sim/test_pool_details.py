"""The pool's changes in detail: what a leave does to a unit's busy time, queue and hold,
how many leaves were counted, and the speed changes refused. Each test pins a piece that
an operator-mutation sweep of sim/pool.py found no test could tell from a wrong version.
A device here runs 1 GFLOP in 2 s (test_engine's `device`)."""
import pytest
from test_engine import device
from test_join import at

from simdl.errors import DeviceGone, PlanError
from simdl.sim.engine import Simulator


def _lose(sim, *args, **kwargs):
    """A kernel whose loss is expected."""
    try:
        yield sim.compute(*args, **kwargs)
    except DeviceGone:
        pass


def test_a_leave_counts_the_lost_kernels_run_as_busy_and_fails_the_queue_in_its_order():
    """Idle until 0.2 s, then a 2 s kernel runs; three wait behind it (priorities 3, 1,
    then 1 again). The leave at 0.5 s counts 0.3 s of busy time (and its energy) and logs
    the running kernel lost, then the queue in the order it would have run: 1, 1, 3."""
    sim = Simulator({"a": device()})

    def later():
        yield sim.env.timeout(0.2)
        first = sim.process(_lose(sim, "a", 1e9, label="running"))
        for label, priority in (("p3", 3), ("p1", 1), ("p1 again", 1)):
            sim.process(_lose(sim, "a", 1e9, label=label, priority=priority))
        yield first

    sim.process(later())
    at(sim, 0.5, sim.leave, "a", "gone")
    sim.run()
    assert sim.busy_time("a", "cpu") == pytest.approx(0.3, rel=1e-12)
    assert sim.energy("a").compute == pytest.approx(0.3 * 2.0, rel=1e-12)
    lost = sim.log.frame()[lambda r: r.kind == "lost"]
    assert list(lost.label) == ["running", "p1", "p1 again", "p3"]


def test_a_unit_held_for_a_stage_when_its_device_left_is_free_after_the_join():
    """A kernel that keeps its unit for its stage's next one (`keep`) is lost with the
    device; after the join, a kernel of another priority starts at once (1 -> 3 s)."""
    sim = Simulator({"a": device()})
    done = []
    sim.process(_lose(sim, "a", 1e9, priority=5, keep=True))
    at(sim, 0.5, sim.leave, "a", "gone")
    at(sim, 0.8, sim.join, "a", "back")

    def after():
        yield sim.env.timeout(1.0)
        yield sim.compute("a", 1e9, priority=7)
        done.append(sim.now)

    sim.process(after())
    sim.run()
    assert done == [3.0]


def test_leaves_counts_every_departure():
    sim = Simulator({"a": device(), "b": device()})
    sim.leave("a", "x")
    sim.leave("a", "again")  # already gone: no new departure
    sim.join("a", "back")
    sim.leave("a", "x")
    sim.leave("b", "x")
    assert sim.leaves == 3


def test_a_speed_change_names_an_unknown_device_and_refuses_a_factor_of_zero():
    sim = Simulator({"a": device()})
    with pytest.raises(PlanError, match="device: 'nope'"):
        sim.set_speed("nope", None, 2.0)
    with pytest.raises(PlanError, match="speed: 0 is not valid; a factor on a unit's rate must be > 0"):
        sim.set_speed("a", None, 0)
