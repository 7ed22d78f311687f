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
from simdl.hw.devices import sparse_speedup
from simdl.nn import shard as tp
from simdl.nn.chain import Chain
from simdl.nn.compress import deploy
from simdl.plan.plan import (Plan, Replica, Stage, footprint, input_bytes, shard_stage,
                             shard_weights)
from simdl.plan.world import World
from simdl.sim import collectives
from simdl.sim.engine import Simulator
from simdl.sim.memory import Reservation


@dataclass
class StageWork:
    """A stage with what it runs: the deployed chain, and shard programs for a group."""

    stage: Stage
    chain: Chain
    programs: list[tp.Program] | None  # one per block of the stage, for a group


def prepare(plan: Plan, world: World) -> list[ReplicaRunner]:
    """Deploy each stage's weights and shard the tensor-parallel ones (function plane)."""
    deployed: dict[tuple[str, str, float, str], Chain] = {}
    runners = []
    for rep in plan.replicas:
        works = []
        for s in rep.stages:
            key = (rep.model, s.dtype, s.prune, s.sparsity)
            if key not in deployed:
                base = world.models[rep.model]
                deployed[key] = base if (s.dtype, s.prune) == ("fp32", 0.0) else deploy(
                    base, dtype=s.dtype, prune=s.prune, sparsity=s.sparsity)
            chain = deployed[key]
            programs = shard_stage(chain, s) if len(s.devices) > 1 else None
            works.append(StageWork(s, chain, programs))
        runners.append(ReplicaRunner(rep, works, plan.source, plan.microbatches))
    return runners


class ReplicaRunner:
    """Runs micro-batches of one replica's stages on the simulator.

    A micro-batch is admitted before it starts: it reserves, all at once, the peak
    bytes it will hold on each device of its path (`footprint`), and gives a device's
    share back as soon as it has left that device for good. A micro-batch that runs
    never waits for memory, so replicas crossing the same devices in any order cannot
    deadlock; one that does not fit yet waits in line (`Simulator.reserve`).
    """

    def __init__(self, replica: Replica, works: list[StageWork], source: str, microbatches: int):
        self.replica, self.works, self.source = replica, works, source
        self.microbatches = microbatches
        self.path = replica.path
        self._footprints: dict[int, dict[str, int]] = {}  # micro-batch size -> bytes per device
        # needed[i]: the devices a micro-batch still visits from stage i on (and the source,
        # where its answer ends); membership only.
        self._needed = [{source}.union(*(w.stage.devices for w in works[i:]))
                        for i in range(len(works) + 1)]

    def place_weights(self, sim: Simulator) -> None:
        """Hold every stage's deployed weights on its devices, once, before any request."""
        for w in self.works:
            s, names = w.stage, w.chain.names
            label = f"weights {names[s.start]}..{names[s.stop - 1]}"
            if w.programs is None:
                sim.allocate(s.device, w.chain.param_bytes(s.start, s.stop), label)
                continue
            for m, (device, held) in enumerate(zip(s.devices, shard_weights(w.programs,
                                                                            len(s.devices)))):
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
        """One micro-batch: admitted, through the stages, its answer home; every byte it
        holds comes out of its reservation, given back device by device as it moves on."""
        tag, chain0 = f"r{r}.{j}", self.works[0].chain
        if size not in self._footprints:
            self._footprints[size] = footprint(self.replica, self.source, chain0, size)
        res = sim.reserve(self._footprints[size], tag, request=r)
        if res.wait is not None:  # no event at all when it fits at once
            yield res.wait
        where, held, kind = self.source, input_bytes(chain0, size), "input"
        try:
            sim.allocate(where, held, f"{kind} {tag}", request=r, under=res)
            for i, w in enumerate(self.works):
                members = w.stage.devices
                away = [m for m in members if m != where]
                if away:  # hand the activation to the stage (to every member of a group)
                    yield sim.env.all_of([sim.transfer(where, m, held, label=f"{kind} {tag}",
                                                       request=r) for m in away])
                    sim.free(where, held, f"{kind} {tag}", request=r, under=res)
                    for m in members:
                        sim.allocate(m, held, f"act {tag}", request=r, under=res)
                    self._leave(sim, res, [where], i)
                    where = w.stage.device
                kind = "act"
                order = sim.ticket(priority)  # the stage runs this invocation to its end
                if w.programs is None:
                    x, held = yield from self._blocks(sim, w, x, size, held, r, tag, order, res)
                else:
                    x, held = yield from self._sharded(sim, w, x, size, held, r, tag, order,
                                                       res)
                    for m in members[1:]:
                        sim.free(m, held, f"act {tag}", request=r, under=res)
                    self._leave(sim, res, members[1:], i + 1)
            if where != self.source:
                yield sim.transfer(where, self.source, held, label=f"out {tag}", request=r)
                sim.free(where, held, f"out {tag}", request=r, under=res)
                sim.allocate(self.source, held, f"out {tag}", request=r, under=res)
            sim.free(self.source, held, f"out {tag}", request=r, under=res)
        except DeviceGone as gone:
            sim.release(res)  # what it still held, wherever it was
            return gone
        sim.release(res)  # the source's share and the last stage's
        return x

    def _leave(self, sim: Simulator, res: Reservation, devices: list[str], i: int) -> None:
        """Give back the shares of `devices` that the micro-batch, now holding nothing
        there, will not visit again from stage `i` on."""
        done = [d for d in devices if d in res.shares and d not in self._needed[i]]
        if done:
            sim.release(res, done)

    def _blocks(self, sim: Simulator, w: StageWork, x: Any, size: int, held: float, r: int,
                tag: str, order: int,
                res: Reservation) -> Generator[Any, Any, tuple[Any, float]]:
        """The stage's blocks as kernels on its one device, one after another with the
        unit kept between them (`order` is this invocation's ticket)."""
        s, chain = w.stage, w.chain
        costs = chain.costs(size)
        # A unit's sparse mode speeds up only the products with weights pruned in its pattern.
        speedup = sparse_speedup(sim.devices[s.device], s.unit, s.dtype,
                                 s.sparsity if s.prune else None)
        for b in range(s.start, s.stop):
            c = costs[b]
            flops = c.fwd_flops - c.sparse_flops * (1 - 1 / speedup)
            sim.allocate(s.device, c.out_bytes, f"act {tag}", request=r, under=res)
            x = yield sim.compute(s.device, flops, c.fwd_bytes, _block, (chain, x, b),
                                  unit=s.unit, dtype=s.dtype, label=f"{chain.names[b]} {tag}",
                                  priority=order, request=r, keep=b < s.stop - 1)
            sim.free(s.device, held, f"act {tag}", request=r, under=res)
            held = c.out_bytes
        return x, held

    def _sharded(self, sim: Simulator, w: StageWork, x: Any, size: int, held: float, r: int,
                 tag: str, order: int,
                 res: Reservation) -> Generator[Any, Any, tuple[Any, float]]:
        """The stage's blocks as shard programs over its group, collectives in between.
        Every member holds each block's input and output, as a single device would."""
        s, members, costs = w.stage, w.stage.devices, w.chain.costs(size)
        in_shape = (size, *w.chain.in_shape) if s.start == 0 else costs[s.start - 1].out_shape
        xs: list[Any] = [x] * len(members)
        for b, program in zip(range(s.start, s.stop), w.programs):
            name = w.chain.names[b]
            for m in members:
                sim.allocate(m, costs[b].out_bytes, f"act {tag}", request=r, under=res)
            stacks: list[list[Any]] = [[] for _ in members]  # residual stashes, per member
            for op, cost in zip(program.ops, program.costs(in_shape)):
                if isinstance(op, tp.Compute):
                    events = [sim.compute(m, c.fwd_flops, c.fwd_bytes, _layer, (shard, v),
                                          unit=s.unit, dtype=s.dtype, priority=order,
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
            for m in members:
                sim.free(m, held, f"act {tag}", request=r, under=res)
            held, in_shape = costs[b].out_bytes, costs[b].out_shape
        return xs[0], held


def _block(chain: Chain, x: np.ndarray, b: int) -> np.ndarray:
    return chain.forward(x, start=b, stop=b + 1)[0]


def _layer(layer: Any, x: np.ndarray) -> np.ndarray:
    return layer.forward(x)[0]
