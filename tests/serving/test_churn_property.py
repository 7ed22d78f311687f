"""Random leave/join schedules over a small pool and a few plans: every request ends
once (completed or failed), `submitted = completed + failed`, the run terminates, every
completed answer is the model's own, and the same schedule gives the same log."""
from dataclasses import replace

import numpy as np
from hypothesis import given, settings, strategies as st

from simdl.plan.plan import Plan, check
from simdl.plan.world import Arrival
from simdl.report.tables import run_tables
from simdl.sim.engine import Simulator
from simdl.sim.inference import execute, inputs
from simdl.sim.serving import Policy
from simdl.sim.stages import prepare
from test_admission import AMPLE, replica, world

PLANS = {
    "pipeline": lambda: Plan("pipeline", (replica(("a", 0, 2), ("b", 2, 3)),), "hub"),
    "replicas": lambda: Plan("dp", (replica(("a", 0, 3)), replica(("b", 0, 3))), "hub",
                             dispatch="least_loaded"),
    "split": lambda: Plan("dp", (replica(("a", 0, 3)), replica(("c", 0, 3))), "hub",
                          dispatch="split"),
}
DEVICES = ("a", "b", "c", "hub")
changes = st.lists(st.tuples(st.sampled_from(DEVICES), st.floats(0.0, 6.0), st.booleans()),
                   max_size=6)


def simulate(plan_name, schedule, times, policy):
    w = world({d: AMPLE for d in DEVICES}, len(times), "hub")
    w = replace(w, workload=replace(w.workload, arrival=Arrival("trace", times=tuple(times))))
    plan = PLANS[plan_name]()
    check(plan, w)
    sim = Simulator(w.devices, w.network)

    def churn():
        now = 0.0
        for device, at, back in sorted(schedule, key=lambda c: c[1]):
            yield sim.env.timeout(at - now)
            now = at
            (sim.join if back else sim.leave)(device, "test")
    sim.process(churn())
    out = execute(plan, w, sim, prepare(plan, w), policy=policy)
    return w, sim, out


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(PLANS)), changes,
       st.lists(st.floats(0.0, 4.0), min_size=1, max_size=6).map(sorted),
       st.sampled_from([Policy(), Policy(retries=0), Policy(timeout=1.0, retries=1)]))
def test_every_request_ends_once_and_runs_repeat(plan_name, schedule, times, policy):
    w, sim, out = simulate(plan_name, schedule, times, policy)
    ev = sim.log.frame()
    ends = ev[ev.kind.isin(["request", "failed"])]
    assert sorted(ends.request) == list(range(len(times)))  # each once, none lost
    made = run_tables(ev, w.devices, {}, [], sim.now)
    s = made.summary.iloc[0]
    assert s.requests_completed + s.requests_failed == len(times)
    assert set(made.requests.cause[made.requests.status == "failed"]) <= {
        "device_left", "timeout", "no_plan", "source_left"}
    assert sorted(out.final) == sorted(ends[ends.kind == "request"].request)
    for r, y in out.final.items():  # lost work leaves no trace in an answer
        np.testing.assert_allclose(y, w.chain.forward(inputs(w, r))[0], rtol=1e-6)
    _, again, _ = simulate(plan_name, schedule, times, policy)
    assert again.log.frame().to_csv() == ev.to_csv()
