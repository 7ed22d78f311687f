"""Executes a generation workload: each request prefills its prompt through the plan's
stages, then decodes one token per step with a KV cache, several sequences a step.

Continuous batching (Orca, Yu et al., OSDI 2022: scheduling per iteration): one decode
loop runs steps back to back; a sequence is admitted (its prefill starts) while fewer
than `max_batch` sequences are prefilling or decoding, joins the step after its
prefill ends and leaves when its last token is out, freeing its cache. A step crosses
the stages in order, activations handed over as real transfers (one token's hidden
state per sequence); the sampled tokens go back to the first stage and to the source.
Prefills are their own kernels, queued on the units beside the steps' kernels.

Memory (`plan_memory`): each stage's weights and every sequence's cache for the
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
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from simdl.errors import PlanError
from simdl.hw.devices import best_unit
from simdl.nn import kv
from simdl.nn.llm_shapes import TOKEN_BYTES
from simdl.plan.lm_model import StepCosts, is_shape_only
from simdl.plan.plan import Plan, check
from simdl.plan.world import Generation, World
from simdl.rng import stream
from simdl.sim.engine import Simulator
from simdl.sim.inference import _arrivals

OUT_OF_MEMORY = "out_of_memory"


@dataclass(frozen=True)
class StageMemory:
    """Where a stage's bytes live and how much of its weights is paged from storage."""

    device: str
    tier: str            # "ram" or "vram:<unit>"
    capacity: float      # bytes of that memory
    weights: float       # bytes of the stage's weights
    kv_peak: float       # bytes of `max_batch` sequences' caches at full length
    resident: float      # weights held in memory
    storage_bw: float | None

    @property
    def paged(self) -> float:
        return self.weights - self.resident

    @property
    def short(self) -> float:
        """Bytes missing to hold the KV cache beside the resident weights (0: it fits);
        the resident weights are what fits beside the cache unless nothing can be paged."""
        return max(0.0, self.kv_peak + self.resident - self.capacity)


def check_plan(plan: Plan, world: World) -> None:
    """A generation plan is one replica of one-device stages (single, pipeline); the
    rest as `plan.check`, memory aside (weights may be paged: `plan_memory`)."""
    if len(plan.replicas) != 1 or any(len(s.devices) != 1 or s.units
                                      for s in plan.replicas[0].stages):
        raise PlanError("strategy", plan.strategy, "a generation workload runs one replica of "
                        "one-device stages: single or pipeline")
    if is_shape_only(world.chain) and any(s.dtype != "fp32" or s.prune
                                          for s in plan.replicas[0].stages):
        raise PlanError("deploy", "dtype", "a full-size preset stores its weights as "
                        "`model.weights`; leave `deploy` out")
    roomy = {d: replace(spec, memory=float("inf")) for d, spec in world.devices.items()}
    check(plan, replace(world, devices=roomy))




def plan_memory(plan: Plan, world: World, costs: StepCosts) -> list[StageMemory]:
    """Per stage: its memory tier, weights, cache peak and what is paged."""
    load = world.workload
    assert isinstance(load, Generation)
    out = []
    for s in plan.replicas[0].stages:
        spec = world.devices[s.device]
        name = s.unit or best_unit(spec, s.dtype)
        unit = spec.units[name]
        tier, capacity = ("ram", spec.memory) if unit.memory is None else (f"vram:{name}",
                                                                          unit.memory)
        weights = world.chain.param_bytes(s.start, s.stop)
        kv_peak = (load.max_batch * (load.prompt + load.tokens)
                   * sum(costs.kv_per_token[s.start:s.stop]))
        # without a storage figure nothing can be paged: the weights must fit too
        resident = weights if not spec.storage_bw else min(weights, max(0.0, capacity - kv_peak))
        out.append(StageMemory(s.device, tier, capacity, weights, kv_peak, resident,
                               spec.storage_bw))
    return out


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
        0, chain.n_classes, size=(load.requests, load.prompt)))
    kv_stage = [sum(costs.kv_per_token[s.start:s.stop]) for s in stages]
    first_dev, last_dev = stages[0].device, stages[-1].device
    waiting: list[Seq] = []
    ready: list[Seq] = []
    state = {"busy": 0, "wake": sim.env.event(), "done": 0}
    finished = sim.env.event()

    def kv_add(i: int, nbytes: float, label: str, r: int = -1) -> None:
        d = stages[i].device
        if mem[i].tier == "ram":
            sim.allocate(d, nbytes, label, request=r)
        kv_now[d] += nbytes
        kv_peak[d] = max(kv_peak[d], kv_now[d])

    def blocks(i: int, flops: list[float], nbytes: list[float], fn: Any, x: Any,
               tag: str, r: int) -> Generator[Any, Any, Any]:
        s, order = stages[i], sim.ticket()
        extra = paged[i]
        for b in range(s.start, s.stop):
            x = yield sim.compute(s.device, flops[b], nbytes[b] + extra * chain_bytes[b],
                                  None if x is None else fn, (b, x), unit=s.unit,
                                  dtype=s.dtype, label=f"{chain.names[b]} {tag}",
                                  priority=order, request=r, keep=b < s.stop - 1)
        return x

    chain_bytes = [chain.param_bytes(b, b + 1) for b in range(len(chain))]

    def hand(a: str, b: str, nbytes: float, label: str, r: int = -1) -> Any:
        return sim.transfer(a, b, nbytes, label=label, request=r) if a != b else None

    def moves(pairs: list[tuple[str, str, float, str]], r: int = -1) -> Any:
        events = [e for e in (hand(a, b, n, lab, r) for a, b, n, lab in pairs) if e is not None]
        return sim.all_of(events) if events else None

    def prefill(q: Seq) -> Generator[Any, Any, None]:
        pre = costs.prefill(load.prompt)
        tag = f"prefill r{q.r}"
        x = None if prompts is None else prompts[q.r][None, :]
        go = moves([(plan.source, first_dev, load.prompt * TOKEN_BYTES, f"prompt r{q.r}")], q.r)
        if go is not None:
            yield go
        for i, s in enumerate(stages):
            if i:
                go = moves([(stages[i - 1].device, s.device, pre[s.start - 1].out_bytes,
                             f"act {tag}")], q.r)
                if go is not None:
                    yield go
            kv_add(i, load.prompt * kv_stage[i], f"kv r{q.r}", q.r)
            fn = lambda b, v, q=q: kv.prefill(chain, v, [q.state], start=b, stop=b + 1)
            x = yield from blocks(i, [c.fwd_flops for c in pre], [c.fwd_bytes for c in pre],
                                  fn, x, tag, q.r)
        go = moves([(last_dev, plan.source, TOKEN_BYTES, f"token r{q.r}")], q.r)
        if go is not None:
            yield go
        if x is not None:
            q.last = x[:, -1].argmax(-1)
            q.out.append(int(q.last[0]))
        q.emitted, q.first = 1, sim.now
        if q.emitted == load.tokens:
            end(q)
        else:
            ready.append(q)
            _poke()

    def _poke() -> None:
        if not state["wake"].triggered:
            state["wake"].succeed()

    def end(q: Seq) -> None:
        q.finish = sim.now
        for i, s in enumerate(stages):
            held = (load.prompt + q.emitted - 1) * kv_stage[i]
            if mem[i].tier == "ram":
                sim.free(s.device, held, f"kv r{q.r}", request=q.r)
            kv_now[s.device] -= held
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
            cached = sum(load.prompt + q.emitted - 1 for q in active)
            flops, nbytes, out = costs.decode(n, cached)
            tag = f"step {step}"
            x = None if sim.timing_only else np.concatenate([q.last for q in active])
            states = [q.state for q in active]
            for i, s in enumerate(stages):
                if i:
                    go = moves([(stages[i - 1].device, s.device, out[s.start - 1],
                                 f"act {tag}")])
                    if go is not None:
                        yield go
                kv_add(i, n * kv_stage[i], f"kv {tag}")
                fn = lambda b, v, states=states: kv.decode(chain, v, states, start=b, stop=b + 1)
                x = yield from blocks(i, flops, nbytes, fn, x, tag, -1)
            back = [(last_dev, plan.source, n * TOKEN_BYTES, f"tokens {tag}")]
            if first_dev != plan.source:
                back.append((last_dev, first_dev, n * TOKEN_BYTES, f"tokens {tag}"))
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
                if q.emitted == load.tokens:
                    end(q)
                else:
                    still.append(q)
            active = still

    sim.process(_arrivals(world, sim, request))
    sim.process(decoder())
    sim.run(until=finished)
    return result
