"""One request alone on a plan: when each micro-batch crosses each hop and stage, in closed form.

A stage on one device is a first-come first-served server (the run gives a stage's
unit to one micro-batch's blocks at a time), or one such server per unit when several
units share the stage, each serving its rows of every micro-batch; the flows of one
hop share its bottleneck equally (max-min on one route is processor sharing, computed
exactly);
memory is allocated and freed where `sim.stages` does it. What this model leaves
out -- flows of different hops on one link or airtime, two stages on one unit,
collectives, micro-batches waiting for memory, a background load that changes --
is detected and named in `why`, and the timeline is then an approximation.
Knows costs and plans; knows nothing of arrivals (`plan.queueing`) or simpy.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from simdl.plan.costs import Costs, Hop, microbatch_sizes
from simdl.plan.plan import Plan, Replica, Stage, split_rows

#: A server: ("unit", device, unit) or ("link", resource).
Server = tuple[str, ...]


@dataclass
class Lone:
    """One request (or its share) alone on one replica.

    `busy`: seconds each server is occupied per request (its load); `nbytes`: bytes per
    network resource (twice for an airtime crossed twice); `energy`: joules above idle
    per device (kernels and radios); `held`: activation bytes at the request's peak per
    device; `exact`: the timeline is the simulator's, else `why` says what it leaves out.
    """

    latency: float = 0.0
    busy: dict[Server, float] = field(default_factory=lambda: defaultdict(float))
    nbytes: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    energy: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    held: dict[str, float] = field(default_factory=dict)
    spans: list[tuple[Server, float, float, object]] = field(default_factory=list)
    radio: dict[tuple[str, int], list[tuple[float, float]]] = field(
        default_factory=lambda: defaultdict(list))
    memory: list[tuple[float, str, float]] = field(default_factory=list)
    why: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return not self.why


def lone(plan: Plan, rep: Replica, batch: int, costs: Costs, tag: object = 0,
         into: Lone | None = None) -> Lone:
    """The timeline of one request's `batch` samples on `rep`, alone on the pool.

    `into` accumulates several replicas that serve one request together (split,
    ensembles); `tag` tells their flows and stages apart for the overlap check.
    """
    out = Lone() if into is None else into
    sizes = microbatch_sizes(batch, plan.microbatches)
    acts = [costs.acts(n, rep.model) for n in sizes]
    ready, where = [0.0] * len(sizes), plan.source
    held = [a[0] for a in acts]
    for j, h in enumerate(held):
        out.memory.append((0.0, where, h))
    for i, s in enumerate(rep.stages):
        away = [d for d in s.devices if d != where]
        if away:
            arrive = [0.0] * len(sizes)
            hops = [costs.hop(where, d) for d in away]
            if len(hops) > 1:
                out.why.append(f"hand-over to {'+'.join(s.devices)}: flows leave {where} together")
            for hop in hops:
                done = _flows(out, hop, ready, held, (tag, "hop", i, hop.dst), costs)
                arrive = [max(a, b) for a, b in zip(arrive, done)]
            for j, t in enumerate(arrive):
                out.memory.append((t, where, -held[j]))
                out.memory += [(t, d, held[j]) for d in s.devices]
            ready, where = arrive, s.device
        if len(s.devices) == 1:
            ready = _stage(out, s, rep, sizes, acts, ready, costs, (tag, "stage", i))
        else:
            ready = _group(out, s, rep, sizes, acts, ready, costs)
        held = [a[s.stop] for a in acts]
    if where != plan.source:
        done = _flows(out, costs.hop(where, plan.source), ready, held, (tag, "answer"), costs)
        for j, t in enumerate(done):
            out.memory += [(t, where, -held[j]), (t, plan.source, held[j]),
                           (t, plan.source, -held[j])]
        ready = done
    else:
        out.memory += [(t, where, -h) for t, h in zip(ready, held)]
    out.latency = max(out.latency, max(ready))
    return out


def finish(out: Lone, costs: Costs) -> Lone:
    """Close a request's timeline: radio energy, peak activations, the overlap check."""
    specs = costs.world.devices
    for (device, side), spans in out.radio.items():
        watts = specs[device].radio_tx_power if side == 0 else specs[device].radio_rx_power
        out.energy[device] += watts * _union(spans)
    level: dict[str, float] = defaultdict(float)
    for t, device, delta in sorted(out.memory, key=lambda e: e[0]):
        level[device] += delta
        out.held[device] = max(out.held.get(device, 0.0), level[device])
    shared = shared_server(out.spans)
    if shared:
        out.why.append(f"{shared} is shared by work that overlaps in time")
    for device in out.energy:
        if not isinstance(specs[device].background, (int, float)):
            out.why.append(f"{device}'s background load changes over time")
    return out


def _stage(out: Lone, s: Stage, rep: Replica, sizes: list[int], acts: list, ready: list[float],
           costs: Costs, group: object) -> list[float]:
    """Micro-batches through one device's blocks, first come first served on each unit;
    with a unit split, each unit serves its rows of every micro-batch in turn, and a
    micro-batch is done when its last part is (no time passes between the units)."""
    units = s.units or (costs.unit(s.device, s.unit, s.dtype),)
    shares = costs.shares(s, sizes[0], rep.model) if s.units else (1.0,)
    free, done = dict.fromkeys(units, 0.0), list(ready)
    for j in sorted(range(len(sizes)), key=lambda j: (ready[j], j)):
        parts = split_rows(sizes[j], shares) if s.units else (sizes[j],)
        for unit, rows in zip(units, parts):
            if rows:
                part = acts[j] if rows == sizes[j] else costs.acts(rows, rep.model)
                free[unit] = _run(out, s, rep, unit, rows, part, ready[j], free[unit], costs,
                                  group)
                done[j] = max(done[j], free[unit])
    return done


def _run(out: Lone, s: Stage, rep: Replica, unit: str, rows: int, acts, ready: float,
         free: float, costs: Costs, group: object) -> float:
    """One micro-batch's `rows` through the stage's blocks on `unit` once it is free; when
    they are done. `acts`: the bytes of those rows before and after each block."""
    server, watts = ("unit", s.device, unit), costs.power(s.device, unit)
    kernels = costs.kernels(s.device, rows, s.unit if not s.units else unit, s.dtype, s.prune,
                            s.sparsity, rep.model)
    t = start = max(ready, free)
    for b in range(s.start, s.stop):
        # a block's output is held from when its kernel is asked for, queued or not
        out.memory.append((ready if b == s.start else t, s.device, acts[b + 1]))
        t += kernels[b]
        out.memory.append((t, s.device, -acts[b]))
    out.busy[server] += t - start
    out.energy[s.device] += watts * (t - start)
    out.spans.append((server, start, t, group))
    return t


def _group(out: Lone, s: Stage, rep: Replica, sizes: list[int], acts: list, ready: list[float],
           costs: Costs) -> list[float]:
    """Micro-batches through a tensor-parallel group: per op the slowest member's kernel,
    then the stage's collectives (ring or star) at the members' shared max-min rates
    (an approximation)."""
    out.why.append(f"{'+'.join(s.devices)} is a tensor-parallel group (collectives estimated)")
    units = [costs.unit(d, s.unit) for d in s.devices]
    free, done = 0.0, list(ready)
    for j in sorted(range(len(sizes)), key=lambda j: (ready[j], j)):
        t = max(ready[j], free)
        for b, block in zip(range(s.start, s.stop), costs.group(s.devices, sizes[j], s.split,
                                                                   s.unit, rep.model)[s.start:s.stop]):
            asked = ready[j] if b == s.start else t
            out.memory += [(asked, d, acts[j][b + 1]) for d in s.devices]
            for kind, what in block.ops:
                if kind == "compute":
                    for d, u, k in zip(s.devices, units, what):
                        out.busy[("unit", d, u)] += k
                        out.energy[d] += costs.power(d, u) * k
                    t += max(what)
                else:
                    t += collective(out, s.devices, kind, float(what), s.collective, costs)
            out.memory += [(t, d, -acts[j][b]) for d in s.devices]
        out.memory += [(t, d, -acts[j][s.stop]) for d in s.devices[1:]]
        free = done[j] = t
    return done


def collective(out: Lone, members: tuple[str, ...], kind: str, nbytes: float, algorithm: str,
               costs: Costs) -> float:
    """A group's all-gather (`kind` "gather") or all-reduce ("reduce") of `nbytes`, run
    as `algorithm` ("ring" or "star", `Stage.collective`): its time, its load into `out`."""
    if algorithm == "star":
        return star(out, members, nbytes, kind == "gather", costs)
    return ring(out, members, nbytes, 1 if kind == "gather" else 2, costs)


def star(out: Lone, members: tuple[str, ...], nbytes: float, gather: bool,
         costs: Costs) -> float:
    """A star collective as `sim.collectives` schedules it: every member sends members[0]
    its part at once (all of S to all-reduce, S/n to all-gather); once all have arrived
    the root sends each the result (S, or the (n-1)/n S it lacks). Its time; its links'
    load and radios' energy added to `out`."""
    root, rest, n = members[0], members[1:], len(members)
    up, down = (nbytes / n, nbytes * (n - 1) / n) if gather else (nbytes, nbytes)
    return (_together(out, [costs.hop(d, root) for d in rest], up, costs)
            + _together(out, [costs.hop(root, d) for d in rest], down, costs))


def _together(out: Lone, hops: list[Hop], nbytes: float, costs: Costs) -> float:
    """Flows of `nbytes` that start together on `hops`, each at its max-min rate among
    them: when the last ends. A radio is on while any of its flows is in its bandwidth
    phase (the simulator's rule), so a root's concurrent flows are charged once."""
    rates = costs.rates(hops)
    capacity, specs = costs.world.network.capacity, costs.world.devices
    on: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
    end = 0.0
    for h, rate in zip(hops, rates):
        t1 = h.delay + (nbytes / rate if nbytes else 0.0)
        end = max(end, t1)
        for r, k in h.uses:
            out.busy[("link", r)] += nbytes * k / capacity[r]
            out.nbytes[r] += nbytes * k
        for side, devices in ((0, h.tx), (1, h.rx)):
            for d in devices:
                on[(d, side)].append((h.delay, t1))
    for (d, side), spans in on.items():
        watts = specs[d].radio_tx_power if side == 0 else specs[d].radio_rx_power
        out.energy[d] += watts * _union(spans)
    return end


def ring(out: Lone, members: tuple[str, ...], nbytes: float, passes: int, costs: Costs) -> float:
    """A ring all-gather (1 pass) or all-reduce (2) of `nbytes` among a group: its time
    (`ring_rounds`), and its links' load and radios' energy added to `out`."""
    n = len(members)
    hops = [costs.hop(a, b) for a, b in zip(members, members[1:] + members[:1])]
    chunk, rounds = nbytes / n, passes * (n - 1)
    rates = costs.rates(hops)
    capacity = costs.world.network.capacity
    for h, rate in zip(hops, rates):
        seconds = chunk / rate if chunk else 0.0
        for r, k in h.uses:
            out.busy[("link", r)] += rounds * chunk * k / capacity[r]
            out.nbytes[r] += rounds * chunk * k
        for d in h.tx:
            out.energy[d] += rounds * seconds * costs.world.devices[d].radio_tx_power
        for d in h.rx:
            out.energy[d] += rounds * seconds * costs.world.devices[d].radio_rx_power
    return ring_rounds(hops, rates, chunk, rounds)


def ring_rounds(hops: list[Hop], rates: list[float], chunk: float, rounds: int) -> float:
    """When a ring's last round ends: member i sends its round-k chunk (on hops[i] at
    rates[i]) once its round k - 1 send and its receive from member i - 1 are done, as
    the collectives' schedules order them (`sim.collectives`)."""
    done = [0.0] * len(hops)
    for _ in range(rounds):
        start = [max(done[i], done[i - 1]) for i in range(len(hops))]
        done = [s + h.delay + (chunk / r if chunk else 0.0)
                for s, h, r in zip(start, hops, rates)]
    return max(done)


def _flows(out: Lone, hop: Hop, release: list[float], nbytes: list[float], group: object,
           costs: Costs) -> list[float]:
    """The flows of one hop, released at `release`: latency and overhead, then an equal
    share of the route's rate among those in their bandwidth phase."""
    if not hop.uses:
        return list(release)
    starts = [r + hop.delay for r in release]
    done = processor_sharing(starts, [b / hop.rate for b in nbytes])
    capacity = costs.world.network.capacity
    for t0, t1, b in zip(starts, done, nbytes):
        if not b:
            continue
        for r, k in hop.uses:
            out.busy[("link", r)] += b * k / capacity[r]
            out.nbytes[r] += b * k
            out.spans.append((("link", r), t0, t1, group))
        for side, devices in ((0, hop.tx), (1, hop.rx)):
            for d in devices:
                out.radio[(d, side)].append((t0, t1))
    return done


def processor_sharing(starts: list[float], work: list[float]) -> list[float]:
    """Finish times of jobs that arrive at `starts` needing `work` seconds of one server
    alone, when those present share it equally (egalitarian processor sharing)."""
    order = sorted(range(len(starts)), key=lambda j: (starts[j], j))
    done = [0.0] * len(starts)
    left: dict[int, float] = {}
    t, k = 0.0, 0
    while k < len(order) or left:
        arrival = starts[order[k]] if k < len(order) else float("inf")
        if left:
            n = len(left)
            first = min(left.values())
            if t + first * n <= arrival:
                t += first * n
                for j in list(left):
                    left[j] -= first
                    if left[j] <= 1e-12 * work[j]:
                        done[j] = t
                        del left[j]
                continue
            for j in left:
                left[j] -= (arrival - t) / n
        t = arrival
        j = order[k]
        k += 1
        if work[j] > 0:
            left[j] = work[j]
        else:
            done[j] = t
    return done


def _union(spans: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one of the intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def shared_server(spans: list[tuple[Server, float, float, object]]) -> str:
    """The first server two groups use at overlapping times (touching is not overlap)."""
    by: dict[Server, list[tuple[float, float, object]]] = defaultdict(list)
    for server, a, b, group in spans:
        by[server].append((a, b, group))
    for server in sorted(by):
        end, owner = float("-inf"), None
        for a, b, group in sorted(by[server], key=lambda x: (x[0], x[1])):
            if a < end and group != owner:
                return "/".join(server[1:])
            if b > end:
                end, owner = b, group
    return ""
