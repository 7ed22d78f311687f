"""Work takes effect when its simulated time is done: a kernel's numerics run at its end,
and a kernel lost with its device changes nothing. (A collective cut short by a lost
device: tests/sim/test_training_churn.py.)"""

import numpy as np
import pytest

from simdl.errors import DeviceGone
from simdl.sim.engine import Simulator

from test_engine import device


def test_a_kernels_numerics_run_at_its_end_not_its_start():
    """A 2 s kernel (2e9 FLOP at 1e9 x 0.5 ... x 2 = 1e9 FLOP/s) whose function records
    the clock: it runs at t = 2, and its caller resumes with its value then."""
    sim = Simulator({"a": device()})
    seen = []

    def proc():
        value = yield sim.compute("a", 1e9, fn=lambda: sim.now)
        seen.append((value, sim.now))

    sim.process(proc())
    sim.run()
    assert seen == [(2.0, 2.0)]


@pytest.mark.parametrize("queued", [False, True])
def test_a_kernel_lost_with_its_device_changes_nothing(queued):
    """The device leaves at 1 s, halfway through a 2 s kernel that would add 1 to an
    array (and, when queued, before a second kernel that waits behind it starts): the
    array is as it was."""
    sim = Simulator({"a": device()})
    model = np.zeros(3)

    def bump() -> None:
        model[:] += 1.0

    def proc():
        try:
            yield sim.compute("a", 1e9, fn=bump)
        except DeviceGone:
            pass

    sim.process(proc())
    if queued:
        sim.process(proc())
    sim.process(_leave(sim, "a", 1.0))
    sim.run()
    np.testing.assert_array_equal(model, np.zeros(3))
    assert (sim.log.frame().kind == "lost").sum() == (2 if queued else 1)


def _leave(sim, d, at):
    yield sim.env.timeout(at)
    sim.leave(d, "walked away")


