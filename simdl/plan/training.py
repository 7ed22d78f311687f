"""Training plans: who computes, how gradients or models are synchronised, and how.

A TrainPlan is plain data like an inference Plan: workers, a Sync spec (the
collective or server protocol, compression), or pipeline stages with a
micro-batch schedule. Training strategies are functions (world, **params) ->
TrainPlan found by name in TRAIN_STRATEGIES.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
from annotated_types import Ge, Gt, Lt

from simdl import units
from simdl.errors import PlanError
from simdl.hw.topologies import MaybeTime
from simdl.nn.chain import Chain
from simdl.nn.optim import OPTIMIZERS, Optimizer
from simdl.plan.plan import Stage, input_bytes
from simdl.plan.strategies import _stages, distinct
from simdl.plan.world import Training, World

PositiveInt = Annotated[int, Gt(0)]
Fraction = Annotated[float, Gt(0.0), Lt(1.0)]
NonNegativeInt = Annotated[int, Ge(0)]
Compression = Literal["none", "fp16", "int8", "topk", "sign"]


@dataclass(frozen=True)
class Sync:
    """How workers agree on the model.

    allreduce: gradients summed by a collective (`algorithm`: ring, tree,
    halving_doubling, hierarchical) every step. ps: workers push gradients to
    `servers` (parameters sharded over them) and pull parameters, in `mode`
    bsp (all wait), asp (apply on arrival, staleness recorded) or ssp (no worker
    more than `staleness` steps ahead of the slowest; bsp drops from a step a worker
    whose push is `worker_timeout` seconds behind the step's first, None waits for
    every worker still present). gossip: after each step a
    worker averages its model with its two neighbours on a ring over the workers
    (CHOCO-gossip, compressed differences), with no global barrier.
    local_sgd: `local_steps` steps alone, then models averaged (federated
    averaging over `clients` sampled per round, 0 = all). Gradients (or model
    deltas) are sent compressed: fp16, int8, top-k (`ratio` kept) or sign, with
    error feedback for top-k and sign.
    """

    kind: str = "allreduce"
    algorithm: str = "ring"
    mode: str = "bsp"
    servers: tuple[str, ...] = ()
    staleness: int = 0
    local_steps: int = 1
    clients: int = 0
    compression: str = "none"
    ratio: float = 0.01
    worker_timeout: float | None = None


@dataclass(frozen=True)
class TrainPlan:
    """Workers and their sync; or, for pipeline training, `stages` fed `microbatches`
    per step in a `schedule` (gpipe or 1f1b). The first `freeze` blocks are not
    trained: no backward through them and nothing of theirs is synchronised."""

    strategy: str
    workers: tuple[str, ...]
    sync: Sync
    stages: tuple[Stage, ...] = ()
    microbatches: int = 1
    schedule: str = "gpipe"
    freeze: int = 0
    params: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        if self.stages:
            where = " | ".join(f"blocks {s.start}-{s.stop - 1} on {s.device}" for s in self.stages)
            return f"{self.strategy}: {where}, {self.microbatches} micro-batches, {self.schedule}"
        s = self.sync
        how = {"allreduce": f"{s.algorithm} all-reduce", "ps": f"parameter server {s.mode}"
               f" on {'+'.join(s.servers)}", "gossip": "gossip",
               "local_sgd": f"local SGD, {s.local_steps} local steps", "none": "one device"}
        sent = "model changes" if s.kind in ("gossip", "local_sgd") else "gradients"
        comp = "" if s.compression == "none" else f", {s.compression} {sent}"
        frozen = f", first {self.freeze} blocks frozen" if self.freeze else ""
        return f"{self.strategy}: {len(self.workers)} workers, {how.get(s.kind, s.kind)}{comp}{frozen}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _workers(world: World, workers: list[str] | None) -> tuple[str, ...]:
    load = world.workload
    assert isinstance(load, Training)
    chosen = tuple(workers) if workers else load.data_on  # world.build fills data_on
    for d in chosen:
        world.known("workers", d)
    distinct("workers", chosen, "the workers")
    return chosen


def single_device(world: World, device: str | None = None, freeze: NonNegativeInt = 0) -> TrainPlan:
    """Train on one device on the global batch: the reference every other plan matches."""
    device = device or _workers(world, None)[0]
    return TrainPlan("single_device", _workers(world, [device]), Sync("none"), freeze=freeze,
                     params={"device": device})


def allreduce(world: World, workers: list[str] | None = None,
              algorithm: Literal["ring", "tree", "halving_doubling", "hierarchical"] = "ring",
              compression: Compression = "none", ratio: Fraction = 0.01,
              freeze: NonNegativeInt = 0) -> TrainPlan:
    """Synchronous data parallel: each worker's gradient summed by an all-reduce every step."""
    w = _workers(world, workers)
    return TrainPlan("allreduce", w, Sync("allreduce", algorithm, compression=compression,
                                          ratio=ratio), freeze=freeze,
                     params={"workers": list(w), "algorithm": algorithm, "compression": compression})


def parameter_server(world: World, servers: list[str], workers: list[str] | None = None,
                     mode: Literal["bsp", "asp", "ssp"] = "bsp", staleness: NonNegativeInt = 2,
                     compression: Compression = "none", ratio: Fraction = 0.01,
                     freeze: NonNegativeInt = 0, worker_timeout: MaybeTime = None) -> TrainPlan:
    """Workers push gradients to the servers (parameters sharded over them) and pull
    the parameters back: synchronous, asynchronous or stale-synchronous. bsp drops
    from a step a worker whose push reaches a server `worker_timeout` after the
    step's first (None: it waits for every worker still present)."""
    if not servers:
        raise PlanError("servers", servers, "at least one device to hold the parameters")
    for d in servers:
        world.known("servers", d)
    distinct("servers", servers, "the servers (each holds a shard)")
    w = _workers(world, workers)
    timeout = None if worker_timeout is None else units.parse(worker_timeout, "time",
                                                              where="worker_timeout")
    if timeout is not None and not 0 < timeout < float("inf"):
        raise PlanError("worker_timeout", worker_timeout, "a time > 0, e.g. 500ms")
    if timeout is not None and mode != "bsp":
        raise PlanError("worker_timeout", worker_timeout, "only for mode bsp (asp and ssp "
                        "never wait for a worker)")
    sync = Sync("ps", mode=mode, servers=tuple(servers), staleness=staleness,
                compression=compression, ratio=ratio, worker_timeout=timeout)
    params = {"servers": list(servers), "mode": mode, "staleness": staleness}
    if timeout is not None:
        params["worker_timeout"] = timeout
    return TrainPlan("parameter_server", w, sync, freeze=freeze, params=params)


def gossip(world: World, workers: list[str] | None = None, compression: Compression = "none",
           ratio: Fraction = 0.01) -> TrainPlan:
    """Decentralised: after each local step a worker averages models with its neighbours."""
    w = _workers(world, workers)
    if len(w) < 2:
        raise PlanError("workers", list(w), "gossip needs at least two workers to average with")
    return TrainPlan("gossip", w, Sync("gossip", compression=compression, ratio=ratio),
                     params={"workers": list(w)})


def local_sgd(world: World, workers: list[str] | None = None, local_steps: PositiveInt = 4,
              clients: NonNegativeInt = 0, compression: Compression = "none",
              ratio: Fraction = 0.01, freeze: NonNegativeInt = 0) -> TrainPlan:
    """Local SGD / federated averaging: `local_steps` alone, then the sampled
    `clients` (0 = all) average their models through the first worker (the server)."""
    w = _workers(world, workers)
    if clients > len(w):
        raise PlanError("clients", clients, f"at most the {len(w)} workers (0 = all)")
    sync = Sync("local_sgd", local_steps=local_steps, clients=clients,
                compression=compression, ratio=ratio)
    return TrainPlan("local_sgd", w, sync, freeze=freeze,
                     params={"workers": list(w), "local_steps": local_steps, "clients": clients})


def pipeline_train(world: World, devices: list[str], cuts: list[int] | Literal["auto"] = "auto",
                   microbatches: PositiveInt = 4,
                   schedule: Literal["gpipe", "1f1b"] = "gpipe",
                   checkpoint_every: PositiveInt | None = None,
                   checkpoint_to: str | None = None) -> TrainPlan:
    """Pipeline-parallel training: the chain cut into stages, each step's batch cut
    into micro-batches scheduled GPipe-style (all forwards, then all backwards)
    or 1F1B (one forward, one backward in steady state). Every `checkpoint_every`
    steps each stage sends its weights and optimizer state to `checkpoint_to`; a
    stage's device lost is then survived (stages re-planned, `sim.recovery`)."""
    if len(devices) < 2:
        raise PlanError("devices", devices, "pipeline training needs at least two devices "
                        "(one device is single_device)")
    distinct("devices", devices, "a pipeline")
    stages = _stages(world, [[d] for d in devices], cuts, microbatches, "devices",
                     batch=world.workload.batch)
    params: dict[str, Any] = {"devices": list(devices), "cuts": [s.start for s in stages[1:]]}
    if (checkpoint_every is None) != (checkpoint_to is None):
        raise PlanError("checkpoint_to" if checkpoint_to is None else "checkpoint_every", None,
                        "checkpoint_every and checkpoint_to go together")
    if checkpoint_to is not None:
        world.known("checkpoint_to", checkpoint_to)
        params["checkpoint"] = {"every": checkpoint_every, "to": checkpoint_to}
    return TrainPlan("pipeline_train", tuple(devices), Sync("pipeline"), tuple(stages),
                     microbatches, schedule, params=params)


def pipeline_stages(world: World, devices: list[str], microbatches: int) -> tuple[Stage, ...]:
    """Stages over `devices` (one or more), cut where their forward times balance."""
    return tuple(_stages(world, [[d] for d in devices], "auto", microbatches, "devices",
                         batch=world.workload.batch))


def personalise(world: World, workers: list[str] | None = None,
                freeze: NonNegativeInt = 1) -> TrainPlan:
    """Each worker fine-tunes the blocks after the first `freeze` (the head) of the
    shared model on its own label-skewed data, which never leaves it; nothing syncs."""
    w = _workers(world, workers)
    if not freeze < len(world.chain):
        raise PlanError("freeze", freeze, f"fewer than the chain's {len(world.chain)} blocks")
    return TrainPlan("personalise", w, Sync("personalise"), freeze=freeze,
                     params={"workers": list(w), "freeze": freeze})


def distill(world: World, teacher_device: str, student: str, target: str,
            temperature: Annotated[float, Gt(0.0)] = 4.0,
            alpha: Annotated[float, Ge(0.0), Lt(1.0)] = 0.7) -> TrainPlan:
    """Knowledge distillation (Hinton et al. 2015): the main model, as teacher on
    `teacher_device`, trains the `student` model (one of the world's models) from
    its soft labels at `temperature`; the student ships to `target`."""
    world.known("teacher_device", teacher_device)
    world.known("target", target)
    if student not in world.models or student == "main":
        raise PlanError("student", student, "one of the scenario's `models` (not the teacher): "
                        + ", ".join(m for m in world.models if m != "main"))
    return TrainPlan("distill", (teacher_device,), Sync("distill"),
                     params={"student": student, "target": target, "temperature": temperature,
                             "alpha": alpha})


def optimizer(load: Training) -> Optimizer:
    """The workload's optimizer, fresh; an unknown name is a PlanError."""
    if load.optimizer not in OPTIMIZERS:
        raise PlanError("workload.optimizer", load.optimizer,
                        f"choose one of: {', '.join(sorted(OPTIMIZERS))}")
    kw = {"momentum": load.momentum} if load.optimizer == "sgd" else {}
    return OPTIMIZERS[load.optimizer](lr=load.lr, **kw)


# -- who holds what: data owners dealt to workers, parameters sharded over servers -----

def owner_sizes(batch: int, m: int) -> list[int]:
    """Samples each of m owners draws per step: B // m, one more for the first B % m."""
    return [batch // m + (j < batch % m) for j in range(m)]


def deal(owners: int, workers: int) -> list[list[int]]:
    """Each worker's data owners (indices, in owner order): owner j goes to worker j % n."""
    return [list(range(r, owners, workers)) for r in range(workers)]


def shard_params(sizes: dict[str, int], n_servers: int) -> dict[str, int]:
    """Each parameter to one server (its index): largest first, to the server holding the
    fewest bytes so far (ties: the earlier parameter, the earlier server)."""
    load, out = [0] * n_servers, {}
    for name in sorted(sizes, key=lambda n: -sizes[n]):  # stable: chain order among equals
        i = min(range(n_servers), key=lambda j: (load[j], j))
        out[name] = i
        load[i] += sizes[name]
    return {n: out[n] for n in sizes}


TrainStrategy = Callable[..., TrainPlan]

TRAIN_STRATEGIES: dict[str, TrainStrategy] = {
    "single_device": single_device,
    "allreduce": allreduce,
    "parameter_server": parameter_server,
    "gossip": gossip,
    "local_sgd": local_sgd,
    "fedavg": local_sgd,
    "pipeline_train": pipeline_train,
    "personalise": personalise,
    "distill": distill,
}


def batch_bytes(world: World, chain: Chain, n: int) -> float:
    """Bytes of n training samples of `chain`'s input as drawn: inputs and labels."""
    y = world.train_data.y
    per_label = y.itemsize * int(np.prod(y.shape[1:], dtype=np.int64))
    return float(input_bytes(chain, n) + n * per_label)
