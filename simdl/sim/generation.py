"""Executes a generation workload: each request prefills its prompt through the plan's
stages, then decodes one token per step with a KV cache, several sequences a step.

Continuous batching (Orca, Yu et al., OSDI 2022: scheduling per iteration): one decode
loop runs steps back to back; a sequence is admitted (its prefill starts) while fewer
than `max_batch` sequences are prefilling or decoding, joins the step after its
prefill ends and leaves when its last token is out, freeing its cache. A step crosses
the stages in order, activations handed over as real transfers (one token's hidden
state per sequence); the sampled tokens go back to the first stage and to the source.
Prefills are their own kernels, queued on the units beside the steps' kernels.
A stage on a tensor-parallel group runs each block as its members' kernels and the
group's all-reduces and all-gathers (`plan.lm_group`), activations handed to every member.

Memory (`generation_plan.plan_memory`): each stage's (member's) weights and every sequence's cache for the
stage's blocks (grown per token, freed when it ends) live in the memory of the unit
it runs on (a discrete GPU's VRAM) or the device's RAM. The cache must fit
(`max_batch` sequences at full length), else the run is an out-of-memory outcome and
every request fails `out_of_memory`; the weights that do not fit beside it are paged
from storage, every pass (an mmap'd model larger than memory), charged in each block's
kernel as extra bytes: storage bytes x mem_bw / storage_bw, so the roofline's memory
term is (bytes / mem_bw) + (paged bytes / storage_bw).
In real mode the numerics run (`nn.kv` on each stage's blocks, greedy next token).
"""
from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simdl.errors import PlanError
from simdl.nn import kv
from simdl.nn.llm_shapes import TOKEN_BYTES
from simdl.plan.lm_model import StepCosts, is_shape_only
from simdl.plan.plan import Plan
from simdl.plan.world import Generation, World
from simdl.rng import stream
from simdl.sim import collectives
from simdl.sim.engine import Simulator
from simdl.sim.generation_plan import StageMemory, group_costs, plan_memory
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


@dataclass
class Generated:
    """What the run produced: per request its sequence (times, tokens in real mode),
    per stage its memory, and the outcome."""

    seqs: dict[int, Seq]
    memory: list[StageMemory]
    kv_peak: dict[str, float]
    outcome: str = "completed"


def execute(plan: Plan, world: World, sim: Simulator) -> Generated:
    """Run every request of the generation workload under `plan`; see the module doc."""
    load = world.workload
    assert isinstance(load, Generation)
    chain, costs = world.chain, StepCosts(world.chain)
    if not sim.timing_only and is_shape_only(chain):
        raise PlanError("model", chain.shape.name, "a full-size preset has no arrays: run "
                        "it timing-only (--timing-only)")
    stages = plan.replicas[0].stages
    mem = plan_memory(plan, world, costs)
    seqs: dict[int, Seq] = {}
    kv_now = {m.device: 0.0 for m in mem}
    kv_peak = dict(kv_now)
    short = next((m for m in mem if m.short > 0), None)
    result = Generated(seqs, mem, kv_peak)
    if short is not None:
        result.outcome = (f"{OUT_OF_MEMORY}: {short.device} short {short.short:.0f} B "
                          f"({short.tier})")
    paged = [m.paged / m.weights * world.devices[m.device].mem_bw / m.storage_bw
             if m.paged else 0.0 for m in mem]  # per weight byte of the stage: extra bytes
    for m in mem:
        if m.tier == "ram" and short is None:
            sim.allocate(m.device, m.resident, f"weights {m.device}")
    prompts = (None if sim.timing_only else stream(world.seed, "prompts").integers(
        0, chain.n_classes, size=(load.requests, load.prompt)))  # each row cut to its prompt
    prompt_of, tokens_of = load.prompt_lengths, load.token_counts
    share = [[j for j, m in enumerate(mem) if m.stage == i] for i in range(len(stages))]
    groups = [group_costs(world, s) for s in stages]
    last_dev = stages[-1].device
    waiting: list[Seq] = []
    ready: list[Seq] = []
    state = {"busy": 0, "wake": sim.env.event(), "done": 0}
    finished = sim.env.event()

    def kv_add(i: int, tokens: int, label: str, r: int = -1) -> None:
        for j in share[i]:
            m = mem[j]
            nbytes = tokens * m.kv_token
            if m.tier == "ram":
                sim.allocate(m.device, nbytes, label, request=r)
            kv_now[m.device] += nbytes
            kv_peak[m.device] = max(kv_peak[m.device], kv_now[m.device])

    def blocks(i: int, flops: list[float], nbytes: list[float], fn: Any, x: Any,
               tag: str, r: int) -> Generator[Any, Any, Any]:
        s, order = stages[i], sim.ticket()
        extra = paged[share[i][0]]
        for b in range(s.start, s.stop):
            x = yield sim.compute(s.device, flops[b], nbytes[b] + extra * chain_bytes[b],
                                  None if x is None else fn, (b, x), unit=s.unit,
                                  dtype=s.dtype, label=f"{chain.names[b]} {tag}",
                                  priority=order, request=r, keep=b < s.stop - 1)
        return x

    def group_blocks(i: int, ops: list[list[Any]], fn: Any, x: Any, tag: str,
                     r: int) -> Generator[Any, Any, Any]:
        """A group stage: per block its ops (`plan.lm_group`), each member's kernels
        charged its own costs, the all-reduces and all-gathers as real transfers. The
        numerics (real mode) run the whole block once, on member 0: the group's result."""
        s, order = stages[i], sim.ticket()
        extra = [paged[j] for j in share[i]]
        for b in range(s.start, s.stop):
            first = True
            for kind, what in ops[b]:
                label = f"{chain.names[b]} {tag}"
                if kind != "compute":
                    yield getattr(collectives, kind)(sim, s.devices, what, s.collective,
                                                     label=label, request=r)
                    continue
                events = [sim.compute(d, c.fwd_flops, c.fwd_bytes + e * c.param_bytes,
                                      fn if first and m == 0 and x is not None else None,
                                      (b, x), unit=s.unit, dtype=s.dtype, label=label,
                                      priority=order, request=r)
                          for m, (d, c, e) in enumerate(zip(s.devices, what, extra))]
                yield sim.all_of(events)
                if first and x is not None:
                    x = events[0].value
                first = False
        return x

    def stage(i: int, one: tuple[list[float], list[float]], ops: Any, fn: Any, x: Any,
              tag: str, r: int) -> Generator[Any, Any, Any]:
        if groups[i] is None:
            return (yield from blocks(i, *one, fn, x, tag, r))
        return (yield from group_blocks(i, ops(groups[i]), fn, x, tag, r))

    chain_bytes = [chain.param_bytes(b, b + 1) for b in range(len(chain))]

    def hand(a: str, b: str, nbytes: float, label: str, r: int = -1) -> Any:
        return sim.transfer(a, b, nbytes, label=label, request=r) if a != b else None

    def moves(pairs: list[tuple[str, str, float, str]], r: int = -1) -> Any:
        events = [e for e in (hand(a, b, n, lab, r) for a, b, n, lab in pairs) if e is not None]
        return sim.all_of(events) if events else None

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
                go = moves([(stages[i - 1].device, d, pre[s.start - 1].out_bytes,
                             f"act {tag}") for d in s.devices], q.r)
                if go is not None:
                    yield go
            kv_add(i, length, f"kv r{q.r}", q.r)
            fn = lambda b, v, q=q: kv.prefill(chain, v, [q.state], start=b, stop=b + 1)
            x = yield from stage(i, ([c.fwd_flops for c in pre], [c.fwd_bytes for c in pre]),
                                 lambda g: g.prefill(length), fn, x, tag, q.r)
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
            ready.append(q)
            _poke()

    def _poke() -> None:
        if not state["wake"].triggered:
            state["wake"].succeed()

    def end(q: Seq) -> None:
        q.finish = sim.now
        for m in mem:
            held = (prompt_of[q.r] + q.emitted - 1) * m.kv_token
            if m.tier == "ram":
                sim.free(m.device, held, f"kv r{q.r}", request=q.r)
            kv_now[m.device] -= held
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

    def decoder() -> Generator[Any, Any, None]:
        active: list[Seq] = []
        step = 0
        while True:
            active += ready
            ready.clear()
            if not active:
                if finished.triggered:
                    return
                state["wake"] = sim.env.event()
                yield sim.env.any_of([state["wake"], finished])
                continue
            n = len(active)
            cached = sum(prompt_of[q.r] + q.emitted - 1 for q in active)
            flops, nbytes, out = costs.decode(n, cached)
            tag = f"step {step}"
            x = None if sim.timing_only else np.concatenate([q.last for q in active])
            states = [q.state for q in active]
            for i, s in enumerate(stages):
                if i:
                    go = moves([(stages[i - 1].device, d, out[s.start - 1], f"act {tag}")
                                for d in s.devices])
                    if go is not None:
                        yield go
                kv_add(i, n, f"kv {tag}")
                fn = lambda b, v, states=states: kv.decode(chain, v, states, start=b, stop=b + 1)
                x = yield from stage(i, (flops, nbytes), lambda g: g.decode(n, cached), fn, x,
                                     tag, -1)
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
    sim.process(decoder())
    sim.run(until=finished)
    return result
