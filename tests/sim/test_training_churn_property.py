"""Training under random fault schedules, every strategy: the run ends, the surviving
replicas of a synchronous strategy hold the same weights bit for bit, and the same
schedule gives the same log and metrics byte for byte."""
import functools

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_training_sync import world

from simdl.plan import training as T
from simdl.sim.engine import Simulator
from simdl.sim.training import execute

NAMES = ("phone", "laptop", "pc", "tablet")
PLANS = {
    "ring": lambda w: T.allreduce(w, algorithm="ring"),
    "tree": lambda w: T.allreduce(w, algorithm="tree"),
    "bsp": lambda w: T.parameter_server(w, ["pc"], workers=["phone", "laptop", "tablet"]),
    "bsp-timeout": lambda w: T.parameter_server(w, ["pc"], workers=["phone", "laptop", "tablet"],
                                                worker_timeout="1ms"),
    "asp": lambda w: T.parameter_server(w, ["pc"], workers=["phone", "laptop", "tablet"],
                                        mode="asp"),
    "ssp": lambda w: T.parameter_server(w, ["pc"], workers=["phone", "laptop", "tablet"],
                                        mode="ssp", staleness=1),
    "gossip": lambda w: T.gossip(w),
    "fedavg": lambda w: T.local_sgd(w, local_steps=2),
    "fedavg-sampled": lambda w: T.local_sgd(w, local_steps=2, clients=2),
    "personalise": lambda w: T.personalise(w),
    "pipeline": lambda w: T.pipeline_train(w, ["phone", "laptop"], microbatches=2),
    "pipeline-checkpoint": lambda w: T.pipeline_train(w, ["phone", "laptop", "tablet"],
                                                      microbatches=2, checkpoint_every=1,
                                                      checkpoint_to="pc"),
}
#: Where the data is, when not on every device (so a stage's loss is survivable).
DATA_ON = {"pipeline-checkpoint": ("pc",)}
#: Strategies whose replicas take the same update every step.
SYNCHRONOUS = {"ring", "tree", "bsp", "bsp-timeout"}


@functools.cache
def _makespan(name: str) -> float:
    w = world(NAMES, data_on=DATA_ON.get(name), steps=4)
    sim = Simulator(w.devices, w.network, timing_only=True)
    execute(PLANS[name](w), w, sim)
    return sim.now


def _run(name, schedule):
    w = world(NAMES, data_on=DATA_ON.get(name), steps=4)
    sim = Simulator(w.devices, w.network)
    horizon = _makespan(name)

    def play(device, leave, back):
        yield sim.env.timeout(leave * horizon)
        sim.leave(device, "battery empty")
        if back is not None:
            yield sim.env.timeout(back * horizon)
            sim.join(device, "present")

    for device, leave, back in schedule:
        sim.process(play(device, leave, back))
    return execute(PLANS[name](w), w, sim), sim


FAULTS = st.lists(st.tuples(st.sampled_from(NAMES), st.floats(0.0, 1.2),
                            st.one_of(st.none(), st.floats(0.01, 0.5))),
                  max_size=3, unique_by=lambda f: f[0])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(PLANS)), schedule=FAULTS)
def test_every_run_ends_replicas_agree_and_reruns_match(name, schedule):
    job, sim = _run(name, schedule)
    assert job.finished.triggered or job.metrics.extra["outcome"].startswith("stopped")
    if name in SYNCHRONOUS and not job.metrics.frame().empty:
        last = job.metrics.frame().step.max()
        steps = sim.log.frame()
        here = set(steps[(steps.kind == "step") & (steps.step == last)].device)
        live = [w for w in job.workers if w.device in here]
        for other in live[1:]:
            for n, p in live[0].params.items():
                np.testing.assert_array_equal(other.params[n], p, err_msg=n)
    again, sim2 = _run(name, schedule)
    pd.testing.assert_frame_equal(sim.log.frame(), sim2.log.frame())
    pd.testing.assert_frame_equal(job.metrics.frame(), again.metrics.frame())
    assert job.metrics.extra == again.metrics.extra
