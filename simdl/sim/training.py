"""Every training protocol, registered in one place, and the one way to run a plan.

A protocol is a function (plan, world, sim, progress) -> Job that builds the run's
Job on the training substrate (`sim.job`) and starts its processes; `execute` runs
the clock until the job is finished. Adding a protocol is one function and one line.
"""
from __future__ import annotations

from collections.abc import Callable

from simdl.errors import DeviceGone, PlanError
from simdl.plan.training import TrainPlan
from simdl.plan.world import World
from simdl.sim.adapt import distill, personalise
from simdl.sim.churn import lost_work
from simdl.sim.allreduce import data_parallel
from simdl.sim.engine import Simulator
from simdl.sim.job import Job
from simdl.sim.metrics import TrainingMetrics
from simdl.sim.pipeline_train import pipeline
from simdl.sim.servers import parameter_server
from simdl.sim.sync import gossip, local_sgd

Protocol = Callable[[TrainPlan, World, Simulator, Callable[[int], None] | None], Job]

#: Sync kind (`TrainPlan.sync.kind`) -> the protocol that runs it.
PROTOCOLS: dict[str, Protocol] = {
    "none": data_parallel,
    "allreduce": data_parallel,
    "ps": parameter_server,
    "gossip": gossip,
    "local_sgd": local_sgd,
    "pipeline": pipeline,
    "personalise": personalise,
    "distill": distill,
}

#: Decisions a training run takes from values, which timing-only mode cannot take
#: (it has no values): each is reported by name when it applies and is skipped.
DECISIONS = {
    "target_accuracy": "stop at the first evaluation that reaches workload.target_accuracy",
}


def undecided(world: World) -> list[str]:
    """The value-dependent decisions this workload asks for (timing-only cannot take them)."""
    load = world.workload
    return ["target_accuracy"] if getattr(load, "target_accuracy", None) is not None else []


def execute(plan: TrainPlan, world: World, sim: Simulator,
            progress: Callable[[int], None] | None = None) -> Job:
    """Run the plan's training to its last step (or its target accuracy); the Job holds
    the workers' replicas, the evaluated model (`job.model()`) and the metrics."""
    job = start(plan, world, sim, progress)
    try:
        sim.run(until=job.finished)
    except DeviceGone as gone:  # a loss the protocol cannot work around: the run ends here
        stopped(job, gone)
    lost = lost_work(sim)
    if lost["departures"]:  # only runs in which a device left report what it cost
        job.metrics.extra.update(lost)
    return job


def start(plan: TrainPlan, world: World, sim: Simulator,
          progress: Callable[[int], None] | None = None) -> Job:
    """Start the plan's training on `sim`'s clock; `job.finished` is its end."""
    if plan.sync.kind not in PROTOCOLS:
        raise PlanError("sync.kind", plan.sync.kind,
                        f"choose one of: {', '.join(sorted(PROTOCOLS))}")
    return PROTOCOLS[plan.sync.kind](plan, world, sim, progress)


def stopped(job: Job, gone: DeviceGone) -> None:
    """The job's outcome when a device left in a way its protocol cannot work around."""
    job.metrics.extra["outcome"] = (f"stopped at t={gone.at:.6g} s: {gone.device} left "
                                    f"({gone.why})")


def train(plan: TrainPlan, world: World, sim: Simulator,
          progress: Callable[[int], None] | None = None) -> TrainingMetrics:
    """Train under `plan` on the simulated pool; one metrics row per step (round)."""
    return execute(plan, world, sim, progress).metrics
