"""Requests under churn, computed by hand: a device leaves mid-request and the request
finishes elsewhere; no retries left; a timeout retry; fates and wasted work in the tables.

The tiny world of tests/sim/test_admission.py: mlp(8 -> 16 -> 16 -> 4), two samples per
request; every kernel takes K = 0.25 s (overhead only, 1 W), links carry 256 B/s with no
latency: the 64 B input takes 0.25 s, the 32 B answer 0.125 s. FLOPs per block (two
samples): fc1 544, fc2 1056, head 256.
"""
from dataclasses import replace

import numpy as np

from simdl.plan.plan import Plan, check
from simdl.plan.world import Arrival
from simdl.report.tables import run_tables
from simdl.sim.engine import Simulator
from simdl.sim.inference import execute, inputs
from simdl.sim.serving import Policy
from simdl.sim.stages import prepare
from test_admission import AMPLE, K, device, replica, world

FC1, FC2, HEAD = 544.0, 1056.0, 256.0


def two_replicas(w):
    """Replica 0 on a, replica 1 on b, round robin: request 0 goes to a first."""
    return Plan("data_parallel", (replica(("a", 0, 3)), replica(("b", 0, 3))), "hub",
                dispatch="round_robin")


def go(plan, w, policy=Policy(), at=None, who="a"):
    check(plan, w)
    sim = Simulator(w.devices, w.network)
    if at is not None:
        def leave():
            yield sim.env.timeout(at)
            sim.leave(who, "test")
        sim.process(leave())
    out = execute(plan, w, sim, prepare(plan, w), policy=policy)
    made = run_tables(sim.log.frame(), w.devices, {}, [], sim.now)
    return sim, out, made


def rows(sim, kind):
    ev = sim.log.frame()
    return [tuple(r) for r in ev[ev.kind == kind].itertuples(index=False)]


def test_a_request_whose_device_leaves_finishes_on_the_other_replica():
    """r0: input hub->a [0, 0.25], fc1 on a from 0.25; a leaves at 0.375 (fc1 lost after
    0.125 s). Retry at 0.375 on b: input [0.375, 0.625], fc1, fc2, head [0.625, 1.375],
    answer [1.375, 1.5]."""
    w = world({"hub": AMPLE, "a": AMPLE, "b": AMPLE}, 1, "hub")
    sim, out, made = go(two_replicas(w), w, at=0.375)
    assert rows(sim, "retry") == [(0.0, 0.375, "retry", "hub", "", "device_left", 0.0, 0.0, 0, -1)]
    assert rows(sim, "request") == [(0.0, 1.5, "request", "hub", "", "b", 0.0, 0.0, 0, -1)]
    assert [r[:3] + r[5:6] for r in rows(sim, "compute")] == [
        (0.625, 0.875, "compute", "fc1 r0.0/1"), (0.875, 1.125, "compute", "fc2 r0.0/1"),
        (1.125, 1.375, "compute", "head r0.0/1")]
    req = made.requests.iloc[0]
    assert (req.status, req.cause, req.attempts, req.finish) == ("completed", "", 2, 1.5)
    s = made.summary.iloc[0]
    assert (s.requests_completed, s.requests_failed, s.retries) == (1, 0, 1)
    assert (s.lost_flops, s.lost_s, s.lost_J) == (FC1, 0.125, 0.125)
    assert (s.redone_flops, s.redone_s) == (0.0, 0.0)
    # the answer is the model's own on request 0's input: nothing of the lost work leaked
    np.testing.assert_array_equal(out.final[0], w.chain.forward(inputs(w, 0))[0])
    f = made.faults.iloc[0]
    assert (f.device, f.left_at, f.recovery_s) == ("a", 0.375, 1.5 - 0.375)
    assert made.devices.set_index("device").availability.to_dict() == {
        "hub": 1.0, "a": 0.375 / 1.5, "b": 1.0}


def test_a_request_with_no_retries_left_fails_with_its_cause():
    w = world({"hub": AMPLE, "a": AMPLE, "b": AMPLE}, 1, "hub")
    sim, out, made = go(two_replicas(w), w, Policy(retries=0), at=0.375)
    assert rows(sim, "failed") == [(0.0, 0.375, "failed", "hub", "", "device_left", 0.0, 0.0, 0, -1)]
    req = made.requests.iloc[0]
    assert (req.status, req.cause, req.attempts) == ("failed", "device_left", 1)
    s = made.summary.iloc[0]
    assert (s.requests_completed, s.requests_failed, s.failed_device_left, s.retries) == (0, 1, 1, 0)
    assert out.final == {}


def slow(w, name, overhead):
    return replace(w, devices={**w.devices, name: replace(w.devices[name], units={
        "cpu": replace(w.devices[name].units["cpu"], overhead=overhead)})})


def test_a_timeout_retries_and_the_late_answer_is_discarded():
    """a takes 1 s a kernel. r0 on a: input [0, 0.25], fc1 [0.25, 1.25], fc2 from 1.25;
    the 1.5 s timeout fires at 1.5: the retry goes to b: input [1.5, 1.75], blocks
    [1.75, 2.5], answer [2.5, 2.625]. a's attempt goes on: fc2 [1.25, 2.25], head
    [2.25, 3.25], its answer [3.25, 3.375]: a `late` row. r1 arrives at 3.0 and goes to
    a (round robin): input [3.0, 3.25], fc1 [3.25, 4.25], fc2 from 4.25; timeout at
    4.5, retry on b: input [4.5, 4.75], blocks [4.75, 5.5], answer [5.5, 5.625], the
    run's end (a's head of r1 never finishes). Redone: r0's three kernels on a and r1's
    fc1 and fc2 there, 5 s at 1 W."""
    w = slow(world({"hub": AMPLE, "a": AMPLE, "b": AMPLE}, 2, "hub"), "a", 1.0)
    w = replace(w, workload=replace(w.workload, arrival=Arrival("trace", times=(0.0, 3.0))))
    sim, out, made = go(two_replicas(w), w, Policy(timeout=1.5))
    assert rows(sim, "retry") == [(0.0, 1.5, "retry", "hub", "", "timeout", 0.0, 0.0, 0, -1),
                                  (3.0, 4.5, "retry", "hub", "", "timeout", 0.0, 0.0, 1, -1)]
    assert rows(sim, "request") == [(0.0, 2.625, "request", "hub", "", "b", 0.0, 0.0, 0, -1),
                                    (3.0, 5.625, "request", "hub", "", "b", 0.0, 0.0, 1, -1)]
    assert rows(sim, "late") == [(0.0, 3.375, "late", "hub", "", "", 0.0, 0.0, 0, -1)]
    s = made.summary.iloc[0]
    assert (s.requests_completed, s.retries, s.makespan_s) == (2, 2, 5.625)
    assert (s.goodput_rps, s.throughput_rps) == (2 / 5.625, 3 / 5.625)
    assert (s.redone_flops, s.redone_s, s.redone_J) == (2 * FC1 + 2 * FC2 + HEAD, 5.0, 5.0)
    np.testing.assert_array_equal(out.final[0], w.chain.forward(inputs(w, 0))[0])


def test_a_timeout_with_no_retries_left_fails_as_timeout():
    """The same attempt on b would take 1.125 s: a 1 s timeout fails it too."""
    w = slow(world({"hub": AMPLE, "a": AMPLE, "b": AMPLE}, 1, "hub"), "a", 1.0)
    sim, _, made = go(two_replicas(w), w, Policy(timeout=1.0, retries=0))
    assert rows(sim, "failed") == [(0.0, 1.0, "failed", "hub", "", "timeout", 0.0, 0.0, 0, -1)]
    assert made.summary.iloc[0].failed_timeout == 1


def test_the_source_leaving_fails_what_it_asked():
    w = world({"hub": AMPLE, "a": AMPLE, "b": AMPLE}, 1, "hub")
    sim, _, made = go(two_replicas(w), w, at=0.125, who="hub")
    assert made.requests.cause.tolist() == ["source_left"]
