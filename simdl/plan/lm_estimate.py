"""How long a generation plan's prefill and decode steps take, by the simulator's own
rules and without simpy: what `sim.generation` charges, in closed form.

A decode step of `n` sequences holding `cached` tokens in all crosses the stages in
order: each stage's activations handed to every member of the next (flows that start
together and share the links max-min, solved exactly by `together`), its blocks'
kernels back to back (the roofline of `lm_model.StepCosts`, a weight byte not resident
charged mem_bw / storage_bw extra bytes, as `sim.generation` charges paging), and the
sampled tokens sent from the last stage to the source and the first stage at once. A
prefill sends the prompt to the first stage, crosses the stages the same way and sends
one token back. A tensor-parallel stage runs per block its members' kernels (the
slowest ends the op) and its collectives, those by the planner's collective model
(`plan.timeline.collective`: exact for a ring or star whose flows do not contend).

Where a stage's bytes live and what paging costs is `plan.lm_memory`'s rule, the
simulator's own. Knows plans, devices, routes and LM costs; not the clock.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from simdl.hw.devices import background_at, best_unit, roofline, unit_rates
from simdl.nn.llm_shapes import TOKEN_BYTES
from simdl.plan.costs import Costs
from simdl.plan.lm_memory import StageMemory, group_costs, stage_memory
from simdl.plan.lm_model import StepCosts, handover_bytes
from simdl.plan.plan import Plan, Stage
from simdl.plan.timeline import Lone, collective
from simdl.plan.world import Generation, World

#: A flow is done when less than this fraction of its bytes is left (`sim.flows.DONE_RTOL`).
DONE_RTOL = 1e-9


@dataclass(frozen=True)
class Lone1:
    """One request alone: its time to first token and its mean time per output token."""

    ttft: float
    tpot: float


class StepTimes:
    """Decode-step and prefill seconds of a world's generation plans (module doc); caches
    per-block kernel times so a planner can ask for many stages."""

    def __init__(self, world: World, costs: Costs | None = None):
        self.world = world
        self.lm = StepCosts(world.chain)
        self.net = costs or Costs(world)
        self.block_bytes = [world.chain.param_bytes(b, b + 1) for b in range(len(world.chain))]
        self._rates: dict[tuple[str, str, str], tuple[float, float, float, float]] = {}
        self._plain: dict[tuple, list[float]] = {}

    # -- kernels ---------------------------------------------------------------

    def kernel(self, device: str, unit: str | None, dtype: str, flops: float,
               nbytes: float) -> float:
        """One kernel's seconds on the unit the simulator picks (background load at t=0)."""
        key = (device, unit or "", dtype)
        found = self._rates.get(key)
        if found is None:
            spec = self.world.devices[device]
            found = (*unit_rates(spec, unit or best_unit(spec, dtype), dtype),
                     background_at(spec, 0.0))
            self._rates[key] = found
        rate, bandwidth, overhead, load = found
        return roofline(rate, bandwidth, overhead, load, flops, nbytes)

    def _blocks(self, s: Stage, flops: list[float], nbytes: list[float], extra: float,
                key: tuple) -> float:
        """A one-device stage's kernels in order, its paged share charged as extra bytes."""
        if extra:
            return sum(self.kernel(s.device, s.unit, s.dtype, flops[b],
                                   nbytes[b] + extra * self.block_bytes[b])
                       for b in range(s.start, s.stop))
        k = (s.device, s.unit, s.dtype, *key)
        times = self._plain.get(k)
        if times is None:
            times = [self.kernel(s.device, s.unit, s.dtype, f, b) for f, b in zip(flops, nbytes)]
            self._plain[k] = times
        return sum(times[s.start:s.stop])

    def _group(self, s: Stage, ops: list, extra: list[float]) -> float:
        """A group stage: per op the slowest member's kernel, or the collective's time."""
        t = 0.0
        for b in range(s.start, s.stop):
            for kind, what in ops[b]:
                if kind == "compute":
                    t += max(self.kernel(d, s.unit, s.dtype, c.fwd_flops,
                                         c.fwd_bytes + e * c.param_bytes)
                             for d, c, e in zip(s.devices, what, extra))
                else:
                    t += collective(Lone(), s.devices, kind.removeprefix("all_"), float(what),
                                    s.collective, self.net)
        return t

    def stage(self, s: Stage, memory: Sequence[StageMemory], kind: str, n: int,
              cached: int) -> float:
        """Seconds of stage `s`'s kernels for a decode step (`kind` "decode": `n` sequences,
        `cached` tokens) or a prefill ("prefill": a prompt of `n` tokens)."""
        extra = [m.paged_extra for m in memory]
        group = group_costs(self.world, s)
        if group is not None:
            ops = group.decode(n, cached) if kind == "decode" else group.prefill(n)
            return self._group(s, ops, extra)
        if kind == "decode":
            flops, nbytes, _ = self.lm.decode(n, cached)
        else:
            pre = self.lm.prefill(n)
            flops, nbytes = [c.fwd_flops for c in pre], [c.fwd_bytes for c in pre]
        return self._blocks(s, flops, nbytes, extra[0], (kind, n, cached))

    # -- hand-overs --------------------------------------------------------------

    def together(self, moves: Sequence[tuple[str, str, float]]) -> float:
        """Transfers (src, dst, bytes) started at once, as the flows run them: each after
        its route's latency and overhead, then sharing bandwidth max-min with those in
        their bandwidth phase; seconds until the last ends (0 when all stay on a device)."""
        flows = [(self.net.hop(a, b), float(n)) for a, b, n in moves if a != b]
        if not flows:
            return 0.0
        waiting = sorted(range(len(flows)), key=lambda j: (flows[j][0].delay, j))
        left: dict[int, float] = {}
        t = end = 0.0
        while waiting or left:
            arrival = flows[waiting[0]][0].delay if waiting else float("inf")
            if left:
                active = list(left)
                rates = self.net.rates([flows[j][0] for j in active])
                first = min(left[j] / r for j, r in zip(active, rates))
                if t + first <= arrival:  # a flow ends before the next one starts
                    for j, r in zip(active, rates):
                        left[j] -= r * first
                    t += first
                    for j in active:
                        if left[j] <= DONE_RTOL * flows[j][1]:
                            del left[j]
                    end = t
                    continue
                for j, r in zip(active, rates):
                    left[j] -= r * (arrival - t)
            t = arrival
            while waiting and flows[waiting[0]][0].delay == t:
                j = waiting.pop(0)
                if flows[j][1] > 0:
                    left[j] = flows[j][1]
                end = max(end, t)
        return end

    # -- a step, a prefill, a lone request ---------------------------------------------

    def memory(self, stages: Sequence[Stage]) -> list[list[StageMemory]]:
        """Per stage, its members' memory (`stage_memory`)."""
        return [stage_memory(self.world, s, self.lm, i) for i, s in enumerate(stages)]

    def step(self, stages: Sequence[Stage], source: str, n: int, cached: int,
             memory: list[list[StageMemory]] | None = None) -> float:
        """Seconds of one decode step of `n` sequences with `cached` tokens in all."""
        memory = memory or self.memory(stages)
        out = self.lm.decode(n, cached)[2]
        t = 0.0
        for i, s in enumerate(stages):
            if i:
                t += self.together([(stages[i - 1].device, d,
                                     handover_bytes(self.world.chain, out[s.start - 1]))
                                    for d in s.devices])
            t += self.stage(s, memory[i], "decode", n, cached)
        return t + self.back(stages[0].devices, stages[-1].device, source, n)

    def back(self, first: Sequence[str], last: str, source: str, n: int) -> float:
        """The `n` sampled tokens from the last stage to the source and the first stage."""
        return self.together([(last, source, n * TOKEN_BYTES)]
                             + [(last, d, n * TOKEN_BYTES) for d in first if d != source])

    def prefill(self, stages: Sequence[Stage], source: str, prompt: int,
                memory: list[list[StageMemory]] | None = None) -> float:
        """Seconds from a prompt's arrival to its first token at the source, alone."""
        memory = memory or self.memory(stages)
        pre = self.lm.prefill(prompt)
        t = self.together([(source, d, prompt * TOKEN_BYTES) for d in stages[0].devices])
        for i, s in enumerate(stages):
            if i:
                t += self.together([(stages[i - 1].device, d, handover_bytes(
                                     self.world.chain, pre[s.start - 1].out_bytes))
                                    for d in s.devices])
            t += self.stage(s, memory[i], "prefill", prompt, 0)
        return t + self.together([(stages[-1].device, source, TOKEN_BYTES)])

    def lone(self, plan: Plan, prompt: int, tokens: int) -> Lone1:
        """One request of `prompt` tokens and `tokens` output tokens alone on `plan`: its
        ttft, and its tpot (the mean of its steps at contexts prompt .. prompt+tokens-2;
        nan for one token), as `tokens.csv` reports them."""
        stages = plan.replicas[0].stages
        memory = self.memory(stages)
        steps = [self.step(stages, plan.source, 1, prompt + k, memory)
                 for k in range(tokens - 1)]
        return Lone1(self.prefill(stages, plan.source, prompt, memory),
                     sum(steps) / len(steps) if steps else float("nan"))

    def full_step(self, stages: Sequence[Stage], source: str) -> float:
        """The planner's objective: a step of `max_batch` sequences at full context (each
        holding prompt + tokens), inf when a stage's cache does not fit."""
        load = self.world.workload
        assert isinstance(load, Generation)
        memory = self.memory(stages)
        if any(m.short > 0 for ms in memory for m in ms):
            return float("inf")
        return self.step(stages, source, load.max_batch,
                         load.max_batch * (load.prompt + load.tokens), memory)
