"""Training under churn in detail: what a departure's lost work costs in joules and bytes,
and what a returning worker fetches when the optimizer has state. Each test pins a
piece that an operator-mutation sweep of sim/churn.py found no test could tell from a
wrong version. The model and pool are test_training_sync's."""
from test_training_churn import _away_in_step_1, _kernel, _run
from test_training_sync import S, rows, world

from simdl.plan import training as T
from simdl.sim.churn import lost_work


def test_lost_work_charges_the_units_power_and_the_cut_transfers_bytes():
    """The pc leaves halfway through its step-1 backward kernel: the lost joules are the
    lost seconds at that unit's active power. It leaves instead halfway through step 1's
    ring all-reduce: the lost bytes are those of every transfer to or from it in flight
    then (as the undisturbed run has them), and no kernel is lost."""
    w = world(steps=2)
    _, probe = _run(T.allreduce(w), w, timing_only=True)
    log = probe.log.frame()
    bwd = _kernel(log, "pc", "bwd fc1", 1)
    _, sim = _run(T.allreduce(w), w, leaves=[("pc", (bwd.t_start + bwd.t_end) / 2)],
                  timing_only=True)
    lost = lost_work(sim)
    power = w.devices["pc"].units[bwd.resource].active_power
    assert lost["lost_s"] > 0 and lost["lost_J"] == lost["lost_s"] * power

    grads = rows(probe, "transfer")[lambda r: r.label.str.startswith("gradients step 1")]
    halfway = (grads.t_start.min() + grads.t_end.max()) / 2
    cut = grads[(grads.t_start <= halfway) & (grads.t_end > halfway)
                & ((grads.device == "pc") | (grads.resource == "pc"))]
    _, sim = _run(T.allreduce(w), w, leaves=[("pc", halfway)], timing_only=True)
    lost = lost_work(sim)
    assert len(cut) > 0 and lost["lost_bytes"] == cut.nbytes.sum()
    assert (lost["lost_flops"], lost["lost_s"], lost["lost_J"]) == (0.0, 0.0, 0.0)


def test_a_returning_allreduce_worker_fetches_the_weights_and_the_optimizers_state():
    """Momentum SGD keeps one slot per parameter: the pc, back after a leave, fetches the
    model's bytes and as many again of momentum (S each)."""
    w = world(steps=5, momentum=0.9)
    job, sim = _away_in_step_1(T.allreduce(w), w, timing_only=True)
    fetch = rows(sim, "transfer", "rejoin weights")
    assert w.chain.param_bytes() == S
    assert list(zip(fetch.resource, fetch.nbytes)) == [("pc", 2 * S)]
    assert job.metrics.extra["rejoins"] == 1
