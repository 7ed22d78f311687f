"""How one micro-batch crosses one replica's stages: kernels, hand-overs, collectives.

A stage on one device runs its blocks as kernels there (on several of its units
at once, each on its rows of the micro-batch, when the stage names `units`); a
stage on a tensor-parallel group runs each block's shard program, with
all-gathers and all-reduces as real transfers. Weights are deployed (fp16, int8, pruned) before
the run, so memory, kernel rates and numerics all follow the deployment.
"""
from __future__ import annotations

import heapq
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import simpy
from simpy.events import NORMAL, URGENT, Initialize

from simdl.errors import DeviceGone
from simdl.hw.devices import sparse_speedup
from simdl.nn import shard as tp
from simdl.nn.chain import Chain
from simdl.plan.costs import Costs, microbatch_sizes
from simdl.plan.plan import (
    Plan,
    Replica,
    Stage,
    charged_flops,
    deployed_chain,
    footprint,
    input_bytes,
    replica_batches,
    shard_stage,
    shard_weights,
    split_rows,
)
from simdl.plan.world import World
from simdl.sim import collectives
from simdl.sim.engine import Simulator
from simdl.sim.memory import Reservation


@dataclass
class StageWork:
    """A stage with what it runs: the deployed chain, and shard programs for a group.

    `kernels(size)` is what its blocks charge for a micro-batch of `size` samples,
    worked out once per size: every micro-batch of that size charges the same. A unit
    split has a `lane` per unit (the stage on that unit alone) and its `shares`.
    """

    stage: Stage
    chain: Chain
    programs: list[tp.Program] | None  # one per block of the stage, for a group
    speedup: float = 1.0  # the unit's sparse speedup for the stage's pruned weights
    lanes: tuple[StageWork, ...] = ()
    shares: tuple[float, ...] = ()
    _kernels: dict[int, tuple] = field(default_factory=dict, repr=False)

    def kernels(self, size: int) -> tuple:
        """One device: per block (index, name, FLOPs, bytes, output bytes, keep the unit
        for the next block). A group: per block (index, name, output bytes, the shard
        program's (op, cost) pairs)."""
        if size not in self._kernels:
            self._kernels[size] = self._work_out(size)
        return self._kernels[size]

    def _work_out(self, size: int) -> tuple:
        s, chain = self.stage, self.chain
        costs, names = chain.costs(size), chain.names
        if self.programs is None:
            return tuple((b, names[b], charged_flops(c, self.speedup),
                          c.fwd_bytes, c.out_bytes, b < s.stop - 1)
                         for b, c in ((b, costs[b]) for b in range(s.start, s.stop)))
        in_shape = (size, *chain.in_shape) if s.start == 0 else costs[s.start - 1].out_shape
        out = []
        for b, program in zip(range(s.start, s.stop), self.programs):
            out.append((b, names[b], costs[b].out_bytes,
                        tuple(zip(program.ops, program.costs(in_shape)))))
            in_shape = costs[b].out_shape
        return tuple(out)


def prepare(plan: Plan, world: World) -> list[ReplicaRunner]:
    """Deploy each stage's weights and shard the tensor-parallel ones (function plane)."""
    deployed: dict[tuple[str, str, float, str], Chain] = {}
    runners = []
    for r, rep in enumerate(plan.replicas):
        works = []
        for s in rep.stages:
            key = (rep.model, s.dtype, s.prune, s.sparsity)
            if key not in deployed:
                deployed[key] = deployed_chain(world.models[rep.model], *key[1:])
            chain = deployed[key]
            programs = shard_stage(chain, s) if len(s.devices) > 1 else None
            work = _work(world, s, chain, programs)
            batch = replica_batches(plan, world.workload.batch)[r] if s.units else 0
            if batch:  # a unit split: shares by speed at the replica's largest micro-batch
                shares = Costs(world, deployed).shares(
                    s, microbatch_sizes(batch, plan.microbatches)[0], rep.model)
                lanes = tuple(_work(world, replace(s, unit=u, units=(), unit_shares=()), chain,
                                    None) for u in s.units)
                work = replace(work, lanes=lanes, shares=shares)
            works.append(work)
        runners.append(ReplicaRunner(rep, works, plan.source, plan.microbatches))
    return runners


def _work(world: World, s: Stage, chain: Chain, programs: list[tp.Program] | None) -> StageWork:
    speedup = sparse_speedup(world.devices[s.device], s.unit, s.dtype,
                             s.sparsity if s.prune else None)
    return StageWork(s, chain, programs, speedup)


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
        # micro-batch size -> (bytes it reserves per device, bytes of its input)
        self._sized: dict[int, tuple[dict[str, int], int]] = {}
        # needed[i]: the devices a micro-batch still visits from stage i on (and the source,
        # where its answer ends); membership only.
        self._needed = [{source}.union(*(w.stage.devices for w in works[i:]))
                        for i in range(len(works) + 1)]

    def place_weights(self, sim: Simulator) -> list[list[tuple[str, float, str]]]:
        """Hold every stage's deployed weights on its devices; per stage, what it placed
        as (device, bytes, label)."""
        placed = []
        for w in self.works:
            s, names = w.stage, w.chain.names
            label = f"weights {names[s.start]}..{names[s.stop - 1]}"
            if w.programs is None:
                held = [(s.device, w.chain.param_bytes(s.start, s.stop), label)]
            else:
                held = [(device, nbytes, f"{label} shard {m}") for m, (device, nbytes) in
                        enumerate(zip(s.devices, shard_weights(w.programs, len(s.devices))))]
            for device, nbytes, what in held:
                sim.allocate(device, nbytes, what)
            placed.append(held)
        return placed

    def run(self, sim: Simulator, r: int, x: np.ndarray | None, batch: int,
            priority: int, attempt: int = 0) -> Generator[Any, Any, Any]:
        """A request's batch (or its share) through the stages; value: the output, or
        the DeviceGone that stopped it. A retry's labels end `/attempt` (`r3.0/1`)."""
        sizes = microbatch_sizes(batch, self.microbatches)
        if len(sizes) == 1:
            tag = f"r{r}.0/{attempt}" if attempt else f"r{r}.0"
            values = [(yield from waited(sim.env, self._microbatch(sim, r, tag, x, sizes[0],
                                                                   priority)))]
        else:
            parts = [x] * len(sizes) if x is None else np.split(x, np.cumsum(sizes)[:-1])
            procs = [sim.process(self._microbatch(sim, r, f"r{r}.{j}/{attempt}" if attempt
                                                  else f"r{r}.{j}", p, n, priority))
                     for j, (p, n) in enumerate(zip(parts, sizes))]
            values = yield sim.all_of(procs)
        gone = first_gone(values)
        if gone is not None:
            return gone
        return values[0] if x is None or len(values) == 1 else np.concatenate(values)

    def _microbatch(self, sim: Simulator, r: int, tag: str, x: Any, size: int,
                    priority: int) -> Generator[Any, Any, Any]:
        """One micro-batch (labelled `tag`): admitted, through the stages, its answer home;
        every byte it holds comes out of its reservation, given back device by device as
        it moves on."""
        sized = self._sized.get(size)
        if sized is None:
            chain0 = self.works[0].chain
            sized = self._sized[size] = (footprint(self.replica, self.source, chain0, size),
                                         input_bytes(chain0, size))
        shares, held = sized
        res = sim.reserve(shares, tag, request=r)
        if res.wait is not None:  # no event at all when it fits at once
            yield res.wait
        where, kind = self.source, "input"
        try:
            sim.allocate(where, held, f"{kind} {tag}", request=r, under=res)
            for i, w in enumerate(self.works):
                members = w.stage.devices
                away = [m for m in members if m != where]
                if away:  # hand the activation to the stage (to every member of a group)
                    yield sim.all_of([sim.transfer(where, m, held, label=f"{kind} {tag}",
                                                   request=r) for m in away])
                    sim.free(where, held, f"{kind} {tag}", request=r, under=res)
                    for m in members:
                        sim.allocate(m, held, f"act {tag}", request=r, under=res)
                    self._leave(sim, res, [where], i)
                    where = w.stage.device
                kind = "act"
                order = sim.ticket(priority)  # the stage runs this invocation to its end
                if w.lanes:
                    x, held = yield from self._split(sim, w, x, size, held, r, tag, order, res)
                elif w.programs is None:
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
        s, blocks, act = w.stage, w.chain.blocks, f"act {tag}"
        device, unit, dtype = s.device, s.unit, s.dtype
        allocate, compute, free = sim.allocate, sim.compute, sim.free  # looked up once
        for b, name, flops, nbytes, out_bytes, keep in w.kernels(size):
            allocate(device, out_bytes, act, request=r, under=res)
            x = yield compute(device, flops, nbytes, _layer, (blocks[b].layer, x), unit=unit,
                              dtype=dtype, label=f"{name} {tag}", priority=order, request=r,
                              keep=keep)
            free(device, held, act, request=r, under=res)
            held = out_bytes
        return x, held

    def _split(self, sim: Simulator, w: StageWork, x: Any, size: int, held: float, r: int,
               tag: str, order: int,
               res: Reservation) -> Generator[Any, Any, tuple[Any, float]]:
        """The stage's blocks on each of its units at once, each on its rows of the
        micro-batch (its share, `split_rows`), queued on its own unit; the rows back in
        order. Each part holds its rows' activations, so the parts add up to the whole."""
        parts = [(lane, n) for lane, n in zip(w.lanes, split_rows(size, w.shares)) if n]
        if x is None:
            xs: list[Any] = [None] * len(parts)
        else:
            xs = np.split(x, np.cumsum([n for _, n in parts])[:-1])
        procs = [sim.process(self._part(sim, lane, xp, n, self._in_bytes(w, n), r, tag, order,
                                        res)) for (lane, n), xp in zip(parts, xs)]
        values = yield sim.all_of(procs)
        gone = first_gone(values)
        if gone is not None:
            raise gone
        held = sum(h for _, h in values)
        if x is None:
            return None, held
        return np.concatenate([v for v, _ in values]), held

    def _part(self, sim: Simulator, lane: StageWork, x: Any, rows: int, held: float, r: int,
              tag: str, order: int, res: Reservation) -> Generator[Any, Any, Any]:
        """One unit's rows through the stage; value: (output, its bytes), or the
        DeviceGone that stopped it (returned, so that every part is waited for)."""
        try:
            return (yield from self._blocks(sim, lane, x, rows, held, r, tag, order, res))
        except DeviceGone as gone:
            return gone

    @staticmethod
    def _in_bytes(w: StageWork, rows: int) -> int:
        """Bytes of `rows` samples' input to the stage (the raw input before block 0)."""
        s = w.stage
        return (input_bytes(w.chain, rows) if s.start == 0
                else w.chain.costs(rows)[s.start - 1].out_bytes)

    def _sharded(self, sim: Simulator, w: StageWork, x: Any, size: int, held: float, r: int,
                 tag: str, order: int,
                 res: Reservation) -> Generator[Any, Any, tuple[Any, float]]:
        """The stage's blocks as shard programs over its group, collectives in between.
        Every member holds each block's input and output, as a single device would."""
        s, members, act = w.stage, w.stage.devices, f"act {tag}"
        xs: list[Any] = [x] * len(members)
        for _, name, out_bytes, ops in w.kernels(size):
            for m in members:
                sim.allocate(m, out_bytes, act, request=r, under=res)
            stacks: list[list[Any]] = [[] for _ in members]  # residual stashes, per member
            for op, cost in ops:
                if isinstance(op, tp.Compute):
                    events = [sim.compute(m, c.fwd_flops, c.fwd_bytes, _layer, (shard, v),
                                          unit=s.unit, dtype=s.dtype, priority=order,
                                          label=f"{name} {op.name} {tag}", request=r)
                              for m, shard, v, c in zip(members, op.shards, xs, cost)]
                    xs = yield sim.all_of(events)
                elif isinstance(op, (tp.Gather, tp.Reduce)):
                    move = collectives.all_gather if isinstance(op, tp.Gather) else collectives.all_reduce
                    yield move(sim, members, cost.nbytes, s.collective, label=f"{name} {tag}",
                               request=r)
                    if not sim.timing_only:
                        xs = [tp.combine(op, xs)] * len(members)
                elif not sim.timing_only:  # Save / Swap / AddSaved: local, no simulated time
                    tp.apply(op, xs, stacks)  # in place
            for m in members:
                sim.free(m, held, act, request=r, under=res)
            held = out_bytes
        return xs[0], held


def waited(env: simpy.Environment, steps: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
    """`steps` run inside the caller's process, on the timeline of `yield
    sim.all_of([sim.process(steps)])`, without the Process and the AllOf: an event
    stands where each of theirs would be (its start, urgent; its end; the all_of's),
    so that work at the same instant runs in the same order -- unless it would
    be the very next event anyway (`_next`), when the work it would resume runs now."""
    if not _next(env, URGENT):
        yield _Hop(env, URGENT)
    value = yield from steps
    for _ in range(2):
        if not _next(env, NORMAL):
            yield _Hop(env, NORMAL)
    return value


def _next(env: simpy.Environment, priority: int) -> bool:
    """Whether an event scheduled now at `priority` would be the next one processed,
    right after the running process yields it: nothing else is due before it at this
    instant (simpy's queue is ordered by time, priority, then the order of scheduling),
    and the event being processed now resumes nothing else after this process (it is
    one of ours or a process start, whose one callback is this process's). A running
    process's `_target` is the event that resumed it: simpy sets it when it yields."""
    queue = env._queue
    return (isinstance(env.active_process._target, _EXCLUSIVE)  # type: ignore[union-attr]
            and not (queue and queue[0][0] == env._now and queue[0][1] <= priority))


class _Hop(simpy.Event):
    """An event that happens now, after what is due before it at `priority` (scheduled
    as `env.schedule` would, without its call)."""

    def __init__(self, env: simpy.Environment, priority: int):
        self.env, self.callbacks, self._ok, self._value = env, [], True, None
        heapq.heappush(env._queue, (env._now, priority, next(env._eid), self))


#: Events whose only callback resumes the process that waits on them.
_EXCLUSIVE = (_Hop, Initialize)


def first_gone(values: list[Any]) -> DeviceGone | None:
    """The first of `values` that is a DeviceGone (work that stopped), if any."""
    for v in values:
        if isinstance(v, DeviceGone):
            return v
    return None


def _layer(layer: Any, x: np.ndarray) -> np.ndarray:
    """A block's layer (or a shard's) on `x`, as `Chain.forward` runs it (not training)."""
    return layer.forward(x, False)[0]
