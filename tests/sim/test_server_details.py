"""Parameter servers in detail: the staleness bound after a worker leaves, the order a
synchronous server sums its pushes in, what a returning worker fetches, and whose
BatchNorm statistics the evaluated model carries. Each test pins a piece that an
operator-mutation sweep of sim/servers.py found no test could tell from a wrong version.
The model and pool are test_training_sync's."""
from dataclasses import replace

import numpy as np
from test_sync_details import _bn_world
from test_training_churn import _away_in_step_1, _run
from test_training_sync import TYPES, rows, world

from simdl.hw.devices import make_device
from simdl.hw.topologies import wifi_star
from simdl.plan import training as T


def test_ssp_holds_its_bound_over_the_workers_still_present_after_one_leaves():
    """Bound 1; a low-end phone, a flagship and a desktop (which hosts the server). The
    flagship leaves during its step 3: from then on, when a worker's step t begins
    computing, t minus the steps the slowest worker still present has finished is at
    most 1, as before the leave over all three."""
    names = ("slow", "phone", "fast")
    w = world(names, steps=12, batch=30)
    plan = T.parameter_server(w, ["fast"], mode="ssp", staleness=1)
    _, probe = _run(plan, w, timing_only=True)
    fwd = rows(probe, "compute", "fwd fc1")
    at = fwd[(fwd.device == "phone") & (fwd.step == 3)].iloc[0]
    leave = (at.t_start + at.t_end) / 2
    job, sim = _run(plan, w, leaves=[("phone", leave)], timing_only=True)
    steps, fwd = rows(sim, "step"), rows(sim, "compute", "fwd fc1")
    checked = 0
    for _, first in fwd.iterrows():
        present = names if first.t_start < leave else ("slow", "fast")
        done = [((steps.device == d) & (steps.t_end <= first.t_start)).sum() for d in present]
        assert first.step - min(done) <= 1, (first.device, first.step)
        checked += first.t_start > leave
    assert checked > 10  # the survivors ran well past the leave
    assert sorted(set(steps[steps.device == "phone"].step)) == [0, 1, 2]


def _pushes_arrive(w):
    job, sim = _run(T.parameter_server(w, ["pc"]), w)
    push = rows(sim, "transfer", "push")
    order = [list(push[push.step == s].sort_values("t_end").device) for s in range(w.workload.steps)]
    return job, order


def test_a_synchronous_server_sums_the_pushes_in_worker_order_whatever_their_arrival():
    """The phone and the laptop swap hardware, so their pushes reach the server in
    another order; each still computes on its own data, and the server adds the pushes
    in worker order: the same weights, bit for bit."""
    w = world(steps=3)
    job, order = _pushes_arrive(w)
    swapped = {"phone": make_device(TYPES["laptop"]), "laptop": make_device(TYPES["phone"]),
               "pc": w.devices["pc"]}
    other = replace(w, devices=swapped, network=wifi_star(swapped))
    job2, order2 = _pushes_arrive(other)
    assert order != order2
    for n, p in job.model().params().items():
        np.testing.assert_array_equal(p, job2.model().params()[n], err_msg=n)


def test_a_worker_returning_to_a_synchronous_server_fetches_the_weights_only():
    """Momentum SGD: the servers hold the optimizer state, so the pc, back after a leave,
    fetches the model's bytes and nothing of the optimizer's."""
    w = world(steps=5, momentum=0.9)
    job, sim = _away_in_step_1(T.parameter_server(w, ["laptop"]), w, timing_only=True)
    fetch = rows(sim, "transfer", "rejoin weights")
    assert list(zip(fetch.resource, fetch.nbytes)) == [("pc", w.chain.param_bytes())]
    assert job.metrics.extra["rejoins"] == 1


def test_the_parameter_servers_model_carries_the_first_workers_batchnorm_statistics():
    w = _bn_world(steps=2)
    job, _ = _run(T.parameter_server(w, ["pc"]), w)
    got = job.model().buffers()
    first, second = (x.chain.buffers() for x in job.workers[:2])
    for n, b in got.items():
        np.testing.assert_array_equal(b, first[n])
        assert not np.array_equal(b, second[n])
