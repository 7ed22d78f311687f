"""Work takes effect when its simulated time is done: a kernel's numerics run at its end,
a kernel lost with its device changes nothing, and a collective cut short by a lost
device updates no worker."""
from dataclasses import replace

import numpy as np
import pytest

from simdl.errors import DeviceGone
from simdl.plan import training as T
from simdl.sim.allreduce import data_parallel
from simdl.sim.engine import Simulator
from simdl.sim.training import execute

from test_engine import device
from test_training_sync import world


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


def test_an_allreduce_cut_short_by_a_lost_device_updates_no_worker():
    """Three workers, ring all-reduce. The phone leaves halfway through step 1's gradient
    all-reduce: the run stops with DeviceGone and every replica holds exactly the
    weights after step 0 (a 1-step run's), not a sum of what had not all arrived."""
    w = world(steps=2)
    probe = Simulator(w.devices, w.network, timing_only=True)
    execute(T.allreduce(w), w, probe)
    log = probe.log.frame()
    grads = log[(log.kind == "transfer") & log.label.str.startswith("gradients step 1")]
    halfway = (grads.t_start.min() + grads.t_end.max()) / 2
    assert grads.t_end.min() < halfway < grads.t_end.max()  # some, not all, have arrived

    one = replace(w, workload=replace(w.workload, steps=1))
    reference = execute(T.allreduce(one), one, Simulator(one.devices, one.network))
    sim = Simulator(w.devices, w.network)
    job = data_parallel(T.allreduce(w), w, sim)
    sim.process(_leave(sim, "phone", halfway))
    with pytest.raises(DeviceGone):
        sim.run(until=job.finished)
    assert not job.finished.triggered
    for mine, ref in zip(job.workers, reference.workers):
        for n, p in ref.chain.params().items():
            np.testing.assert_array_equal(mine.chain.params()[n], p, err_msg=n)
