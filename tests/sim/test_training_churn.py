"""Training when workers leave: each strategy's own way of going on, checked against
times read off an undisturbed run (or a collective timed alone) and weights computed by
hand from the survivors' gradients. The model and pool are test_training_sync's
(mlp(16, 32, 2, 4); phone, laptop, pc on a Wi-Fi star; 10 samples dealt 4, 3, 3)."""
from dataclasses import replace

import numpy as np
import pytest
from test_training_sync import SIZES, rows, world

from simdl.errors import PlanError
from simdl.plan import training as T
from simdl.sim import collectives as C
from simdl.sim.churn import lost_work
from simdl.sim.engine import Simulator
from simdl.sim.training import execute


def _leave_at(sim, device, at):
    def go():
        yield sim.env.timeout(at)
        sim.leave(device, "battery empty")
    sim.process(go())


def _run(plan, w, leaves=(), timing_only=False):
    sim = Simulator(w.devices, w.network, timing_only=timing_only)
    for device, at in leaves:
        _leave_at(sim, device, at)
    return execute(plan, w, sim), sim


def _kernel(log, device, label, step):
    k = log[(log.kind == "compute") & (log.device == device) & (log.label == label)
             & (log.step == step)]
    assert len(k) == 1
    return k.iloc[0]


def _weights_after_step0(w):
    one = replace(w, workload=replace(w.workload, steps=1))
    job, _ = _run(T.allreduce(one), one)
    return {n: p.copy() for n, p in job.workers[0].params.items()}


def test_a_ring_of_three_loses_a_worker_mid_step_and_finishes_the_step_among_two():
    """The pc leaves halfway through its last backward kernel of step 1. The phone's and
    the laptop's local steps end when they did undisturbed; a ring all-reduce over the two
    (timed alone: T2) starts at the later end, then each runs its optimizer kernel (timed
    in the undisturbed run): step 1 closes at max(end) + T2 + max(update). Their weights
    are equal, and are the step-0 weights less lr times the two gradients weighted by
    4/7 and 3/7 of the samples that count (not 4/10, 3/10: the pc's share is gone)."""
    w = world(steps=2)
    _, probe = _run(T.allreduce(w), w, timing_only=True)
    log = probe.log.frame()
    bwd = _kernel(log, "pc", "bwd fc1", 1)
    job, sim = _run(T.allreduce(w), w, leaves=[("pc", (bwd.t_start + bwd.t_end) / 2)])
    ends = [_kernel(log, d, "bwd fc1", 1).t_end for d in ("phone", "laptop")]
    alone = Simulator(w.devices, w.network, timing_only=True)
    C.all_reduce(alone, ["phone", "laptop"], float(4 * sum(SIZES.values())), "ring")
    alone.run()
    updates = [_kernel(log, d, "optimizer", 1) for d in ("phone", "laptop")]
    expected = max(ends) + alone.now + max(u.t_end - u.t_start for u in updates)
    df = job.metrics.frame()
    assert list(df.step) == [0, 1]
    assert df.t.iloc[1] == pytest.approx(expected, rel=1e-12)
    assert len(rows(sim, "step")[lambda r: r.step == 1]) == 2
    assert job.metrics.extra["worker_steps_dropped"] == 1
    phone, laptop, pc = job.workers
    w0 = _weights_after_step0(w)
    for n in SIZES:
        np.testing.assert_array_equal(phone.params[n], laptop.params[n])
        hand = w0[n] - 0.1 * (phone.grads[n] * (4 / 7) + laptop.grads[n] * (3 / 7))
        np.testing.assert_allclose(phone.params[n], hand, rtol=1e-5, atol=1e-7, err_msg=n)
        assert not np.array_equal(pc.params[n], phone.params[n])
    lost = lost_work(sim)
    assert lost["departures"] == 1 and lost["lost_flops"] == bwd.flops
    assert lost["lost_s"] == pytest.approx(bwd.t_end - bwd.t_start - (bwd.t_end - bwd.t_start) / 2)


@pytest.mark.parametrize("algorithm", ["ring", "tree", "halving_doubling"])
def test_an_allreduce_cut_short_re_forms_over_the_workers_left(algorithm):
    """The pc leaves halfway through step 1's gradient all-reduce: the collective runs
    again over phone and laptop, every step is recorded, and their weights agree."""
    w = world(steps=3)
    _, probe = _run(T.allreduce(w, algorithm=algorithm), w, timing_only=True)
    grads = rows(probe, "transfer")[lambda r: r.label.str.startswith("gradients step 1")]
    halfway = (grads.t_start.min() + grads.t_end.max()) / 2
    job, sim = _run(T.allreduce(w, algorithm=algorithm), w, leaves=[("pc", halfway)])
    assert list(job.metrics.frame().step) == [0, 1, 2]
    phone, laptop, _ = job.workers
    for n in SIZES:
        np.testing.assert_array_equal(phone.params[n], laptop.params[n])
    assert (rows(sim, "lost").label.str.startswith("gradients step 1")).any()


def test_every_worker_gone_ends_the_run_with_its_outcome():
    """Both leave during step 0: it is lost, and step 1 finds nobody."""
    w = world(names=("phone", "laptop"), steps=4)
    job, _ = _run(T.allreduce(w), w, leaves=[("phone", 1e-4), ("laptop", 1e-4)])
    assert job.metrics.extra["outcome"] == "no workers left at step 1"
    assert job.metrics.extra["steps_lost"] == 1
    assert job.metrics.frame().empty


# -- parameter servers ------------------------------------------------------------------

def _straggling(steps=1, timeout=None, mode="bsp"):
    """A low-end phone and a flagship push to a desktop server."""
    w = world(("slow", "phone", "pc"), data_on=("slow", "phone"), steps=steps, batch=32)
    plan = T.parameter_server(w, ["pc"], workers=["slow", "phone"], mode=mode,
                              worker_timeout=timeout)
    return w, plan


def test_bsp_drops_a_worker_past_the_timeout_at_the_computed_time():
    """Undisturbed, the first push reaches the server at a, the second at b > a. With
    worker_timeout (b - a) / 2 the server's optimizer kernel starts at a + timeout,
    applies the first pusher's gradient alone (its own mean, not 16/32 of it), and step
    0 closes when that worker's pull ends, sooner than undisturbed."""
    w, plan = _straggling()
    waited, probe = _run(plan, w, timing_only=True)
    push = rows(probe, "transfer", "push").set_index("device").t_end.sort_values()
    (first, a), (_, b) = push.items()
    assert a < b
    timeout = (b - a) / 2
    w, plan = _straggling(timeout=timeout)
    job, sim = _run(plan, w)
    log = sim.log.frame()
    opt = _kernel(log, "pc", "optimizer shard 0", 0)
    assert opt.t_start == pytest.approx(a + timeout, rel=1e-12)
    pull = rows(sim, "transfer", "pull")
    assert list(pull.resource) == [first]  # the run ends with step 0: no one else pulled
    df = job.metrics.frame()
    assert df.t.iloc[0] == pytest.approx(pull.t_end.iloc[0], rel=1e-12)
    assert df.t.iloc[0] < waited.metrics.frame().t.iloc[0]
    assert list(rows(sim, "step").device) == [first]
    assert job.metrics.extra["worker_steps_dropped"] == 1
    on_time = next(x for x in job.workers if x.device == first)
    server = job.model().params()
    for n in SIZES:
        hand = w.chain.params()[n] - 0.1 * on_time.grads[n]
        np.testing.assert_allclose(server[n], hand, rtol=1e-5, atol=1e-7, err_msg=n)


def test_bsp_without_a_timeout_stops_waiting_for_a_worker_that_left():
    w, plan = _straggling(steps=4)
    _, probe = _run(plan, w, timing_only=True)
    fwd = _kernel(probe.log.frame(), "slow", "fwd fc1", 1)
    job, sim = _run(plan, w, leaves=[("slow", fwd.t_end)])
    df = job.metrics.frame()
    assert list(df.step) == [0, 1, 2, 3]
    assert (rows(sim, "step").groupby("step").size().to_dict()) == {0: 2, 1: 1, 2: 1, 3: 1}


@pytest.mark.parametrize("mode", ["asp", "ssp"])
def test_asynchronous_servers_carry_on_without_a_worker_that_left(mode):
    """The low-end phone leaves in its step 1: the flagship runs all its steps, and under
    ssp the departed worker's count no longer holds it back (without the drop, a bound
    of 0 would stop it at step 2 for ever)."""
    w = world(("slow", "phone", "pc"), data_on=("slow", "phone"), steps=6, batch=32)
    plan = T.parameter_server(w, ["pc"], workers=["slow", "phone"], mode=mode, staleness=0)
    _, probe = _run(plan, w, timing_only=True)
    fwd = _kernel(probe.log.frame(), "slow", "fwd fc1", 1)
    job, sim = _run(plan, w, leaves=[("slow", fwd.t_end)])
    steps = rows(sim, "step")
    assert sorted(steps[steps.device == "phone"].step) == list(range(6))
    assert sorted(steps[steps.device == "slow"].step) == [0]
    assert list(job.metrics.frame().step) == list(range(6))


def test_worker_timeout_is_for_bsp_and_positive():
    w = world()
    with pytest.raises(PlanError, match="worker_timeout"):
        T.parameter_server(w, ["pc"], mode="asp", worker_timeout="1s")
    with pytest.raises(PlanError, match="worker_timeout"):
        T.parameter_server(w, ["pc"], worker_timeout=0.0)
    assert T.parameter_server(w, ["pc"], worker_timeout="250ms").sync.worker_timeout == 0.25


# -- federated rounds and gossip -----------------------------------------------------------

def test_a_federated_round_averages_the_clients_that_reported():
    """The laptop leaves during round 1's local steps: round 1's model is round 0's (G)
    plus the phone's and the pc's changes weighted 4/7 and 3/7 of their samples (not
    4/10, 3/10, nor with the laptop's half-done change); round 2 samples only the
    clients present."""
    w = world(steps=3)
    plan = T.local_sgd(w, local_steps=2)
    _, probe = _run(plan, w, timing_only=True)
    log = probe.log.frame()
    fwd = log[(log.kind == "compute") & (log.device == "laptop") & (log.label == "fwd fc1")
              & (log.step == 1)].iloc[0]
    two = replace(w, workload=replace(w.workload, steps=2))
    job, sim = _run(T.local_sgd(two, local_steps=2), two, leaves=[("laptop", fwd.t_end)])
    one = replace(w, workload=replace(w.workload, steps=1))
    g = _run(T.local_sgd(one, local_steps=2), one)[0].model().params()
    phone, _, pc = job.workers
    got = job.model().params()
    for n in SIZES:
        hand = g[n] + (4 / 7) * (phone.params[n] - g[n]) + (3 / 7) * (pc.params[n] - g[n])
        np.testing.assert_allclose(got[n], hand, rtol=1e-5, atol=1e-7, err_msg=n)
    assert job.metrics.extra["clients_dropped"] == 1
    job, sim = _run(plan, w, leaves=[("laptop", fwd.t_end)])
    assert rows(sim, "step").groupby("step").size().to_dict() == {0: 3, 1: 2, 2: 2}
    models = rows(sim, "transfer", "model")
    assert set(models[models.step == 2].resource) == {"pc"}  # the phone (server) holds it


def test_gossip_goes_on_over_the_ring_that_remains():
    w = world(names=("phone", "laptop", "pc", "tablet"), steps=4)
    plan = T.gossip(w)
    _, probe = _run(plan, w, timing_only=True)
    mix = probe.log.frame()[lambda r: (r.label == "mix") & (r.device == "pc") & (r.step == 1)]
    job, sim = _run(plan, w, leaves=[("pc", float(mix.t_start.iloc[0]))])
    assert list(job.metrics.frame().step) == [0, 1, 2, 3]
    steps = rows(sim, "step")
    assert sorted(steps[steps.device == "pc"].step) == [0]
    gossip = rows(sim, "transfer", "gossip")
    assert not ((gossip.step >= 2) & ((gossip.device == "pc") | (gossip.resource == "pc"))).any()


# -- returns ------------------------------------------------------------------------------

def _join_at(sim, device, at):
    def go():
        yield sim.env.timeout(at)
        sim.join(device, "present")
    sim.process(go())


def _away_in_step_1(plan, w, timing_only=False):
    """`plan` run with the pc leaving halfway through its step-1 backward kernel and back
    when the phone's step-2 forward ends (times read off an undisturbed run): (job, sim)."""
    _, probe = _run(plan, w, timing_only=True)
    log = probe.log.frame()
    bwd = _kernel(log, "pc", "bwd fc1", 1)
    back = float(_kernel(log, "phone", "fwd fc1", 2).t_end)
    sim = Simulator(w.devices, w.network, timing_only=timing_only)
    _leave_at(sim, "pc", (bwd.t_start + bwd.t_end) / 2)
    _join_at(sim, "pc", back)
    return execute(plan, w, sim), sim


def test_a_returning_worker_fetches_the_weights_then_takes_part_again():
    """The pc leaves in step 1 and is back during step 2. At the start of step 3 the
    phone (the first member) sends it the weights (the model's bytes, timed alone: Tf);
    every worker's step 3 starts when that transfer ends; from then on the three
    replicas hold the same weights, bit for bit, and all three report steps 3 and 4."""
    w = world(steps=5)
    job, sim = _away_in_step_1(T.allreduce(w), w)
    fetch = rows(sim, "transfer", "rejoin weights")
    assert list(zip(fetch.device, fetch.resource, fetch.nbytes, fetch.step)) == [
        ("phone", "pc", w.chain.param_bytes(), 3)]
    alone = Simulator(w.devices, w.network, timing_only=True)
    alone.transfer("phone", "pc", w.chain.param_bytes())
    alone.run()
    start = fetch.t_end.iloc[0]
    assert start - fetch.t_start.iloc[0] == pytest.approx(alone.now, rel=1e-12)
    now = sim.log.frame()
    for d in ("phone", "laptop", "pc"):
        assert _kernel(now, d, "fwd fc1", 3).t_start == start
    assert rows(sim, "step").groupby("step").size().to_dict() == {0: 3, 1: 2, 2: 2, 3: 3, 4: 3}
    phone, laptop, pc = job.workers
    for n in SIZES:
        np.testing.assert_array_equal(pc.params[n], phone.params[n])
        np.testing.assert_array_equal(laptop.params[n], phone.params[n])
    assert job.metrics.extra["rejoins"] == 1


# -- pipeline training: checkpoints, re-planning, restore --------------------------------

def _pipeline(steps=4, every=2, momentum=0.0):
    w = world(("phone", "laptop", "pc", "tablet"), data_on=("pc",), steps=steps,
              momentum=momentum)
    return w, T.pipeline_train(w, ["phone", "laptop", "tablet"], microbatches=2,
                               checkpoint_every=every, checkpoint_to="pc")


def _blocks(stages):
    return {(st.device, b) for st in stages for b in range(st.start, st.stop)}


def test_a_lost_stage_is_re_planned_and_its_blocks_restored_from_the_checkpoint():
    """The laptop (the middle stage) leaves in step 3; the checkpoint after step 1 is the
    last. The new pipeline runs over the phone and the tablet; each block a device of it
    did not hold is sent to it (weights; SGD without momentum keeps no state), and the
    steps since the checkpoint are redone: rows 0, 1, 2, then 2 and 3 again."""
    w, plan = _pipeline()
    _, probe = _run(plan, w, timing_only=True)
    k = _kernel(probe.log.frame(), "laptop", "fwd fc2 mb0", 3)
    job, sim = _run(plan, w, leaves=[("laptop", (k.t_start + k.t_end) / 2)])
    assert list(job.metrics.frame().step) == [0, 1, 2, 2, 3]
    extra = job.metrics.extra
    assert extra["steps_lost"] == 2 and extra["replans"] == 1 and extra["checkpoints"] == 1
    new = job.plan.stages
    assert [st.device for st in new] == ["phone", "tablet"]
    lacked = _blocks(new) - _blocks(plan.stages)
    moved = rows(sim, "transfer", "restore")
    assert moved.nbytes.sum() == sum(w.chain.param_bytes(b, b + 1) for _, b in lacked)
    assert set(moved.resource) == {d for d, _ in lacked}
    data = rows(sim, "transfer", "data")  # each step starts by bringing the batch
    redo = data[data.t_start >= moved.t_end.max()].iloc[0]
    assert redo.step == 2 and redo.t_start == moved.t_end.max()
    ckpt = rows(sim, "transfer", "checkpoint")
    assert list(ckpt.step) == [1, 1, 1]  # none after the last step
    for n, p in job.model().params().items():
        assert np.isfinite(p).all() and not np.array_equal(p, w.chain.params()[n])


def test_without_a_checkpoint_a_lost_stage_ends_the_run_with_its_results():
    w = world(("phone", "laptop", "pc"), data_on=("pc",), steps=4)
    plan = T.pipeline_train(w, ["phone", "laptop"], microbatches=2)
    _, probe = _run(plan, w, timing_only=True)
    k = _kernel(probe.log.frame(), "laptop", "fwd head mb0", 2)
    job, _ = _run(plan, w, leaves=[("laptop", k.t_end)])
    assert list(job.metrics.frame().step) == [0, 1]
    assert job.metrics.extra["outcome"].startswith("stopped at t=")


def test_checkpoint_keys_go_together():
    w = world()
    with pytest.raises(PlanError, match="checkpoint"):
        T.pipeline_train(w, ["phone", "laptop"], checkpoint_every=2)
    with pytest.raises(PlanError, match="checkpoint_to"):
        T.pipeline_train(w, ["phone", "laptop"], checkpoint_every=2, checkpoint_to="fridge")


@pytest.mark.parametrize("mode", ["bsp", "asp"])
def test_a_push_cut_short_is_never_applied(mode):
    """The low-end phone leaves halfway through its step-0 push: the server applies
    only the flagship's gradient (bsp: the flagship's own mean, alone in the sum; asp:
    one apply, the flagship's), and the cut push is a `lost` row."""
    w, plan = _straggling(mode=mode)
    _, probe = _run(plan, w, timing_only=True)
    push = rows(probe, "transfer", "push").set_index("device")
    cut = (push.t_start["slow"] + push.t_end["slow"]) / 2
    assert cut > push.t_start["slow"] and cut < push.t_end["slow"]
    job, sim = _run(plan, w, leaves=[("slow", cut)])
    lost = rows(sim, "lost")
    assert list(zip(lost.device, lost.label, lost.step)) == [("slow", "push", 0)]
    if mode == "asp":
        assert list(rows(sim, "apply").resource) == ["phone"]
    fast = job.workers[1]
    server = job.model().params()
    for n in SIZES:
        hand = w.chain.params()[n] - 0.1 * fast.grads[n] * (1.0 if mode == "bsp" else 0.5)
        np.testing.assert_allclose(server[n], hand, rtol=1e-5, atol=1e-7, err_msg=n)
