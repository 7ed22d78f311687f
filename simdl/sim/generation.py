"""Executes a generation workload: each request prefills its prompt through the plan's
stages, then decodes one token per step with a KV cache, several sequences a step.

Continuous batching (Orca, Yu et al., OSDI 2022: scheduling per iteration): a decode
loop runs steps back to back; a sequence is admitted (its prefill starts) while fewer
than `max_batch` sequences are prefilling or decoding, joins the step after its
prefill ends and leaves when its last token is out, freeing its cache. A step crosses
the stages in order, activations handed over as real transfers (one token's hidden
state per sequence, `model.wire` bytes a value); the sampled tokens go back to the
first stage and to the source. The plan's `microbatches` K gives K decode loops
(groups), each with its own sequences, so while one group's step is on stage 1 the
next can be on stage 0 (a pipeline kept full, as GPipe's micro-batches); a sequence
joins the group with the fewest (the lowest index of those).
Prefills are their own kernels, queued on the units beside the steps' kernels.
A stage on a tensor-parallel group runs each block as its members' kernels and the
group's all-reduces and all-gathers (`plan.lm_group`), activations handed to every member.

Memory (`plan.lm_memory`): each stage's (member's) weights and every sequence's cache for the
stage's blocks (grown per token, freed when it ends) live in the memory of the unit
it runs on (a discrete GPU's VRAM) or the device's RAM. The cache must fit
(`max_batch` sequences at full length), else the run is an out-of-memory outcome and
every request fails `out_of_memory`; the weights that do not fit beside it are paged
from storage, every pass (an mmap'd model larger than memory), charged in each block's
kernel as extra bytes: paged bytes x mem_bw / storage_bw (the bandwidth the unit
sees), so the roofline's memory term is (bytes / mem_bw) + (paged bytes / storage_bw).
In real mode the numerics run (`nn.kv` on each stage's blocks, greedy next token), an
activation handed between stages rounded through `model.wire` (`plan.lm_model.to_wire`).
`Generated.memory_trace` records each device's weights and cache bytes over time.
"""
from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from simdl.errors import PlanError
from simdl.nn import kv
from simdl.nn import shard as tp
from simdl.nn.llm_shapes import TOKEN_BYTES
from simdl.plan.lm_group import combine, member_steps
from simdl.plan.lm_memory import StageMemory, group_costs, plan_memory
from simdl.plan.lm_model import (
    StepCosts,
    handover_bytes,
    is_shape_only,
    to_wire,
    wire_of,
)
from simdl.plan.plan import Plan
from simdl.plan.world import Generation, World
from simdl.rng import stream
from simdl.sim import collectives
from simdl.sim.engine import Simulator
from simdl.sim.generation_plan import Ledger, MemoryRow
from simdl.sim.inference import arrivals

OUT_OF_MEMORY = "out_of_memory"


@dataclass
class Seq:
    """One request's sequence: its progress, times and (real mode) caches and tokens."""

    r: int
    arrival: float
    emitted: int = 0
    first: float = float("nan")
    finish: float = float("nan")
    state: kv.Sequence = field(default_factory=kv.Sequence)
    last: Any = None          # real mode: its latest token (1,)
    out: list[int] = field(default_factory=list)
    done: Any = None          # the event its request waits for
    group: int = -1           # the decode group it joined
    parts: dict[int, kv.Sequence] = field(default_factory=dict)  # a group member's caches


@dataclass
class DecodeGroup:
    """One decode loop's sequences: those joined since its last step (`ready`), how many
    it holds in all, and the event that wakes it when one joins."""

    wake: Any
    ready: list[Seq] = field(default_factory=list)
    size: int = 0


@dataclass
class Generated:
    """What the run produced: per request its sequence (times, tokens in real mode),
    per stage its memory, each device's cache peak and memory over time
    (`generation_plan.Ledger.trace`: time, device, tier, weights, KV bytes), the outcome."""

    seqs: dict[int, Seq]
    memory: list[StageMemory]
    kv_peak: dict[str, float]
    outcome: str = "completed"
    memory_trace: list[MemoryRow] = field(default_factory=list)


def execute(plan: Plan, world: World, sim: Simulator) -> Generated:
    """Run every request of the generation workload under `plan`; see the module doc."""
    finished, result = start(plan, world, sim)
    sim.run(until=finished)
    return result


def start(plan: Plan, world: World, sim: Simulator) -> tuple[simpy.Event, Generated]:
    """Start the workload's requests and decode loops on `sim`'s clock: the event of its
    last request's end, and the Generated it fills in as they run."""
    load = world.workload
    assert isinstance(load, Generation)
    chain, costs = world.chain, StepCosts(world.chain)
    if not sim.timing_only and is_shape_only(chain):
        raise PlanError("model", chain.shape.name, "a full-size preset has no arrays: run "
                        "it timing-only (--timing-only)")
    stages = plan.replicas[0].stages
    mem = plan_memory(plan, world, costs)
    seqs: dict[int, Seq] = {}
    ledger = Ledger(sim, mem)
    short = next((m for m in mem if m.short > 0), None)
    result = Generated(seqs, mem, ledger.peak, memory_trace=ledger.trace)
    if short is not None:
        result.outcome = (f"{OUT_OF_MEMORY}: {short.device} short {short.short:.0f} B "
                          f"({short.tier})")
    paged = [m.paged_extra for m in mem]  # per weight byte of the stage: extra bytes
    if short is None:
        ledger.place()
    prompts = (None if sim.timing_only else stream(world.seed, "prompts").integers(
        0, chain.n_classes, size=(load.requests, load.prompt)))  # each row cut to its prompt
    prompt_of, tokens_of = load.prompt_lengths, load.token_counts
    share = [[j for j, m in enumerate(mem) if m.stage == i] for i in range(len(stages))]
    groups = [group_costs(world, s) for s in stages]
    wire = wire_of(chain)
    last_dev = stages[-1].device
    waiting: list[Seq] = []
    lanes = [DecodeGroup(sim.env.event()) for _ in range(plan.microbatches)]
    state = {"busy": 0, "done": 0}
    finished = sim.env.event()
    programs: dict[int, Any] = {}   # block -> its `member_steps` (real mode, groups)

    names = chain.names  # block names, read for every kernel's label

    def kv_add(i: int, tokens: int, label: str, r: int = -1) -> None:
        for j in share[i]:
            ledger.hold(j, tokens * mem[j].kv_token, label, r)

    def blocks(i: int, flops: list[float], nbytes: list[float], fn: Any, x: Any,
               tag: str, r: int) -> Generator[Any, Any, Any]:
        s, order = stages[i], sim.ticket()
        extra = paged[share[i][0]]
        for b in range(s.start, s.stop):
            x = yield sim.compute(s.device, flops[b], nbytes[b] + extra * chain_bytes[b],
                                  None if x is None else fn, (b, x), unit=s.unit,
                                  dtype=s.dtype, label=f"{names[b]} {tag}",
                                  priority=order, request=r, keep=b < s.stop - 1)
        return x

    def group_blocks(i: int, ops: list[list[Any]], x: Any, tag: str, r: int,
                     batch: list[Seq], last_only: bool) -> Generator[Any, Any, Any]:
        """A group stage: per block its ops (`plan.lm_group`), each member's kernels
        charged its own costs, the all-reduces and all-gathers as real transfers. In
        real mode each member computes its own shard (its caches in `Seq.parts`), and
        a collective's result is taken when its transfers end."""
        s, order = stages[i], sim.ticket()
        k, extra = len(s.devices), [paged[j] for j in share[i]]
        for b in range(s.start, s.stop):
            label = f"{names[b]} {tag}"
            if x is not None:
                x = x[:, None] if x.ndim == 1 else x   # a decode step's tokens
                x = x[:, -1:] if last_only and b == len(chain) - 1 else x
                if b not in programs:
                    programs[b] = member_steps(chain.blocks[b].layer, k)
                steps, tail = programs[b]
                xs, stacks = [x] * k, [[] for _ in range(k)]
            for n, (kind, what) in enumerate(ops[b]):
                if x is not None:
                    for op in steps[n].free:
                        tp.apply(op, xs, stacks)
                if kind != "compute":
                    yield getattr(collectives, kind)(sim, s.devices, what, s.collective,
                                                     label=label, request=r)
                    if x is not None:
                        xs = [combine(steps[n].op, xs, lambda v: to_wire(v, wire))] * k
                    continue
                events = [sim.compute(d, c.fwd_flops, c.fwd_bytes + e * c.param_bytes,
                                      None if x is None else member,
                                      () if x is None else (steps[n].op.shards[m], xs[m], m,
                                                            b, batch),
                                      unit=s.unit, dtype=s.dtype, label=label,
                                      priority=order, request=r)
                          for m, (d, c, e) in enumerate(zip(s.devices, what, extra))]
                yield sim.all_of(events)
                if x is not None:
                    xs = [e.value for e in events]
            if x is not None:
                for op in tail:
                    tp.apply(op, xs, stacks)
                x = xs[0]
        return x

    def member(layer: Any, x: Any, m: int, b: int, batch: list[Seq]) -> Any:
        """Member m's shard of block b on x, with its own caches of the batch."""
        return kv.run_layer(layer, x, [q.parts.setdefault(m, kv.Sequence()) for q in batch], b)

    def stage(i: int, one: tuple[list[float], list[float]], ops: Any, fn: Any, x: Any,
              tag: str, r: int, batch: list[Seq], last_only: bool) -> Generator[Any, Any, Any]:
        if groups[i] is None:
            return (yield from blocks(i, *one, fn, x, tag, r))
        return (yield from group_blocks(i, ops(groups[i]), x, tag, r, batch, last_only))

    chain_bytes = [chain.param_bytes(b, b + 1) for b in range(len(chain))]

    def hand(a: str, b: str, nbytes: float, label: str, r: int = -1) -> Any:
        return sim.transfer(a, b, nbytes, label=label, request=r) if a != b else None

    def moves(pairs: list[tuple[str, str, float, str]], r: int = -1) -> Any:
        events = [e for e in (hand(a, b, n, lab, r) for a, b, n, lab in pairs) if e is not None]
        return sim.all_of(events) if events else None

    def handover(i: int, out_bytes: int, label: str, r: int = -1) -> Any:
        """Stage i-1's activations (`out_bytes` in fp32) to each device of stage i, in
        the wire dtype."""
        nbytes = handover_bytes(chain, out_bytes)
        return moves([(stages[i - 1].device, d, nbytes, label) for d in stages[i].devices], r)

    def prefill(q: Seq) -> Generator[Any, Any, None]:
        length = prompt_of[q.r]
        pre = costs.prefill(length)
        tag = f"prefill r{q.r}"
        x = None if prompts is None else prompts[q.r][None, :length]
        go = moves([(plan.source, d, length * TOKEN_BYTES, f"prompt r{q.r}")
                    for d in stages[0].devices], q.r)
        if go is not None:
            yield go
        for i, s in enumerate(stages):
            if i:
                go = handover(i, pre[s.start - 1].out_bytes, f"act {tag}", q.r)
                if go is not None:
                    yield go
                x = None if x is None else to_wire(x, wire)
            kv_add(i, length, f"kv r{q.r}", q.r)
            fn = lambda b, v, q=q: kv.prefill(chain, v, [q.state], start=b, stop=b + 1)
            x = yield from stage(i, ([c.fwd_flops for c in pre], [c.fwd_bytes for c in pre]),
                                 lambda gc: gc.prefill(length), fn, x, tag, q.r, [q], True)
        go = moves([(last_dev, plan.source, TOKEN_BYTES, f"token r{q.r}")], q.r)
        if go is not None:
            yield go
        if x is not None:
            q.last = x[:, -1].argmax(-1)
            q.out.append(int(q.last[0]))
        q.emitted, q.first = 1, sim.now
        if q.emitted == tokens_of[q.r]:
            end(q)
        else:
            join(q)

    def join(q: Seq) -> None:
        """q to the decode group holding the fewest sequences (the first of those)."""
        q.group = min(range(len(lanes)), key=lambda g: lanes[g].size)
        lane = lanes[q.group]
        lane.size += 1
        lane.ready.append(q)
        if not lane.wake.triggered:
            lane.wake.succeed()

    def end(q: Seq) -> None:
        q.finish = sim.now
        if q.group >= 0:
            lanes[q.group].size -= 1
        for j, m in enumerate(mem):
            ledger.release(j, (prompt_of[q.r] + q.emitted - 1) * m.kv_token, f"kv r{q.r}", q.r)
        sim.log.add(q.arrival, sim.now, "request", plan.source, "", plan.path, request=q.r)
        q.done.succeed()
        state["busy"] -= 1
        admit()
        close()

    def close() -> None:
        state["done"] += 1
        if state["done"] == load.requests:
            finished.succeed()

    def admit() -> None:
        while waiting and state["busy"] < load.max_batch:
            state["busy"] += 1
            sim.process(prefill(waiting.pop(0)))

    def request(r: int) -> Generator[Any, Any, None]:
        q = seqs[r] = Seq(r, sim.now)
        if short is not None:
            sim.log.add(sim.now, sim.now, "failed", plan.source, "", OUT_OF_MEMORY, request=r)
            close()
            return
        q.done = sim.env.event()
        waiting.append(q)
        admit()
        yield q.done

    def decoder(g: int) -> Generator[Any, Any, None]:
        """Decode group g's loop: a step of all its sequences, back to back."""
        active: list[Seq] = []
        lane = lanes[g]
        step = 0
        while True:
            active += lane.ready
            lane.ready.clear()
            if not active:
                if finished.triggered:
                    return
                lane.wake = sim.env.event()
                yield sim.env.any_of([lane.wake, finished])
                continue
            n = len(active)
            cached = sum(prompt_of[q.r] + q.emitted - 1 for q in active)
            flops, nbytes, out = costs.decode(n, cached)
            tag = f"step {step}" if len(lanes) == 1 else f"step {g}.{step}"
            x = None if sim.timing_only else np.concatenate([q.last for q in active])
            states = [q.state for q in active]
            for i, s in enumerate(stages):
                if i:
                    go = handover(i, out[s.start - 1], f"act {tag}")
                    if go is not None:
                        yield go
                    x = None if x is None else to_wire(x, wire)
                kv_add(i, n, f"kv {tag}")
                fn = lambda b, v, states=states: kv.decode(chain, v, states, start=b, stop=b + 1)
                x = yield from stage(i, (flops, nbytes), lambda gc: gc.decode(n, cached), fn, x,
                                     tag, -1, active, False)
            back = [(last_dev, plan.source, n * TOKEN_BYTES, f"tokens {tag}")]
            back += [(last_dev, d, n * TOKEN_BYTES, f"tokens {tag}")
                     for d in stages[0].devices if d != plan.source]
            go = moves(back)
            if go is not None:
                yield go
            step += 1
            still = []
            for k, q in enumerate(active):
                if x is not None:
                    q.last = x[k:k + 1, -1].argmax(-1)
                    q.out.append(int(q.last[0]))
                q.emitted += 1
                if q.emitted == tokens_of[q.r]:
                    end(q)
                else:
                    still.append(q)
            active = still

    sim.process(arrivals(world, sim, request))
    for g in range(len(lanes)):
        sim.process(decoder(g))
    return finished, result
