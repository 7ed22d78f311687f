"""How one micro-batch crosses one replica's stages: kernels, hand-overs, collectives.

A stage on one device runs its blocks as kernels there; a stage on a
tensor-parallel group runs each block's shard program, with all-gathers and
all-reduces as real transfers. Weights are deployed (fp16, int8, pruned) before
the run, so memory, kernel rates and numerics all follow the deployment.
"""
from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from simdl.errors import DeviceGone
from simdl.nn import shard as tp
from simdl.nn.chain import Chain
from simdl.nn.compress import deploy
from simdl.plan.plan import Plan, Replica, Stage, input_bytes
from simdl.plan.world import World
from simdl.sim import collectives
from simdl.sim.engine import Simulator


@dataclass
class StageWork:
    """A stage with what it runs: the deployed chain, and shard programs for a group."""

    stage: Stage
    chain: Chain
    programs: list[tp.Program] | None  # one per block of the stage, for a group
    density: list[float] | None        # fraction of weights kept per block (pruned)


def prepare(plan: Plan, world: World) -> list[ReplicaRunner]:
    """Deploy each stage's weights and shard the tensor-parallel ones (function plane)."""
    deployed: dict[tuple[str, str, float], Chain] = {}
    runners = []
    for rep in plan.replicas:
        works = []
        for s in rep.stages:
            key = (rep.model, s.dtype, s.prune)
            if key not in deployed:
                base = world.models[rep.model]
                deployed[key] = base if key[1:] == ("fp32", 0.0) else deploy(
                    base, dtype=s.dtype, prune=s.prune)
            chain = deployed[key]
            programs = ([tp.shard(chain[b].layer, len(s.devices), s.split, chain.names[b])
                         for b in range(s.start, s.stop)]
                        if len(s.devices) > 1 else None)
            density = chain.density if s.prune > 0 else None  # only pruning thins the kernels
            works.append(StageWork(s, chain, programs, density))
        runners.append(ReplicaRunner(rep, works, plan.source, plan.microbatches))
    return runners


class ReplicaRunner:
    """Runs micro-batches of one replica's stages on the simulator."""

    def __init__(self, replica: Replica, works: list[StageWork], source: str, microbatches: int):
        self.replica, self.works, self.source = replica, works, source
        self.microbatches = microbatches
        self.path = replica.path
        self._costs: dict[int, list[Any]] = {}

    def place_weights(self, sim: Simulator) -> None:
        """Hold every stage's deployed weights on its devices, once, before any request."""
        for w in self.works:
            s, names = w.stage, w.chain.names
            label = f"weights {names[s.start]}..{names[s.stop - 1]}"
            if w.programs is None:
                sim.allocate(s.device, w.chain.param_bytes(s.start, s.stop), label)
                continue
            for m, device in enumerate(s.devices):
                held = sum(_shard_bytes(op, m) for p in w.programs for op in p.ops)
                sim.allocate(device, held, f"{label} shard {m}")

    def run(self, sim: Simulator, r: int, x: np.ndarray | None, batch: int,
            priority: int) -> Generator[Any, Any, Any]:
        """A request's batch (or its share) through the stages; value: the output, or
        the DeviceGone that stopped it."""
        sizes = [len(p) for p in np.array_split(np.arange(batch), min(self.microbatches, batch))]
        parts = np.split(x, np.cumsum(sizes)[:-1]) if x is not None else [None] * len(sizes)
        procs = [sim.process(self._microbatch(sim, r, j, p, n, priority))
                 for j, (p, n) in enumerate(zip(parts, sizes))]
        results = yield sim.env.all_of(procs)
        values = [results[p] for p in procs]
        gone = next((v for v in values if isinstance(v, DeviceGone)), None)
        if gone is not None:
            return gone
        return None if x is None else np.concatenate(values)

    def _microbatch(self, sim: Simulator, r: int, j: int, x: Any, size: int,
                    priority: int) -> Generator[Any, Any, Any]:
        tag, chain0 = f"r{r}.{j}", self.works[0].chain
        where, held, kind = self.source, input_bytes(chain0, size), "input"
        try:
            sim.allocate(where, held, f"{kind} {tag}", request=r)
            for w in self.works:
                members = w.stage.devices
                away = [m for m in members if m != where]
                if away:  # hand the activation to the stage (to every member of a group)
                    yield sim.env.all_of([sim.transfer(where, m, held, label=f"{kind} {tag}",
                                                       request=r) for m in away])
                    sim.free(where, held, f"{kind} {tag}", request=r)
                    for m in members:
                        sim.allocate(m, held, f"act {tag}", request=r)
                    where = w.stage.device
                kind = "act"
                if w.programs is None:
                    x, held = yield from self._blocks(sim, w, x, size, held, r, tag, priority)
                else:
                    x, held = yield from self._sharded(sim, w, x, size, held, r, tag, priority)
                    for m in members[1:]:
                        sim.free(m, held, f"act {tag}", request=r)
            if where != self.source:
                yield sim.transfer(where, self.source, held, label=f"out {tag}", request=r)
                sim.free(where, held, f"out {tag}", request=r)
                sim.allocate(self.source, held, f"out {tag}", request=r)
            sim.free(self.source, held, f"out {tag}", request=r)
            return x
        except DeviceGone as gone:
            return gone

    def _blocks(self, sim: Simulator, w: StageWork, x: Any, size: int, held: float, r: int,
                tag: str, priority: int) -> Generator[Any, Any, tuple[Any, float]]:
        """The stage's blocks as kernels on its one device."""
        s, chain = w.stage, w.chain
        costs = chain.costs(size)
        sparse = sim.devices[s.device].sparse and w.density is not None
        for b in range(s.start, s.stop):
            c = costs[b]
            flops = c.fwd_flops * (w.density[b] if sparse else 1.0)
            sim.allocate(s.device, c.out_bytes, f"act {tag}", request=r)
            x = yield sim.compute(s.device, flops, c.fwd_bytes, _block, (chain, x, b),
                                  unit=s.unit, dtype=s.dtype, label=f"{chain.names[b]} {tag}",
                                  priority=priority, request=r)
            sim.free(s.device, held, f"act {tag}", request=r)
            held = c.out_bytes
        return x, held

    def _sharded(self, sim: Simulator, w: StageWork, x: Any, size: int, held: float, r: int,
                 tag: str, priority: int) -> Generator[Any, Any, tuple[Any, float]]:
        """The stage's blocks as shard programs over its group, collectives in between."""
        s, members = w.stage, w.stage.devices
        in_shape = (size, *w.chain.in_shape) if s.start == 0 else w.chain.costs(size)[s.start - 1].out_shape
        xs: list[Any] = [x] * len(members)
        for b, program in zip(range(s.start, s.stop), w.programs):
            name = w.chain.names[b]
            stacks: list[list[Any]] = [[] for _ in members]  # residual stashes, per member
            for op, cost in zip(program.ops, program.costs(in_shape)):
                if isinstance(op, tp.Compute):
                    events = [sim.compute(m, c.fwd_flops, c.fwd_bytes, _layer, (shard, v),
                                          unit=s.unit, dtype=s.dtype, priority=priority,
                                          label=f"{name} {op.name} {tag}", request=r)
                              for m, shard, v, c in zip(members, op.shards, xs, cost)]
                    done = yield sim.env.all_of(events)
                    xs = [done[e] for e in events]
                elif isinstance(op, (tp.Gather, tp.Reduce)):
                    move = collectives.all_gather if isinstance(op, tp.Gather) else collectives.all_reduce
                    yield move(sim, members, cost.nbytes, label=f"{name} {tag}", request=r)
                    if not sim.timing_only:
                        xs = [tp.combine(op, xs)] * len(members)
                elif not sim.timing_only:  # Save / Swap / AddSaved: local, no simulated time
                    tp.apply(op, xs, stacks)  # in place
            in_shape = w.chain.costs(size)[b].out_shape
        out_bytes = w.chain.costs(size)[s.stop - 1].out_bytes
        for m in members:
            sim.allocate(m, out_bytes, f"act {tag}", request=r)
            sim.free(m, held, f"act {tag}", request=r)
        return xs[0], out_bytes


def _block(chain: Chain, x: np.ndarray, b: int) -> np.ndarray:
    return chain.forward(x, start=b, stop=b + 1)[0]


def _layer(layer: Any, x: np.ndarray) -> np.ndarray:
    return layer.forward(x)[0]


def _shard_bytes(op: Any, member: int) -> int:
    return op.shards[member].param_bytes() if isinstance(op, tp.Compute) else 0
