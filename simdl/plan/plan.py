"""A plan: what runs where, as plain data the simulator executes and an estimator scores.

A plan names devices, block ranges and deployments only; it holds no arrays and
no simpy objects, so a planner can build, compare and store thousands of them.
Every strategy, from a single device to a replicated pipeline of tensor-parallel
groups or an ensemble, is one shape: replicas of stages.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from simdl.errors import PlanError
from simdl.nn import shard as tp
from simdl.nn.chain import Chain
from simdl.nn.compress import deploy
from simdl.nn.formats import WIDTH, stored_bytes
from simdl.nn.core import Cost, nbytes
from simdl.plan.world import World

#: How a tensor-parallel group all-reduces and all-gathers (`sim.collectives` algorithms).
COLLECTIVES = ("ring", "star")
#: How a request finds replicas: one replica, one chosen per request, its batch split
#: over all of them, or all of them with their outputs fused (an ensemble).
DISPATCH = ("one", "round_robin", "least_loaded", "weighted", "split", "all")
FUSE = ("mean", "vote", "confidence")
DTYPES = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Stage:
    """Blocks [start, stop) on one device, or split over a tensor-parallel group.

    The first device leads: activations enter and leave the stage there. The
    stage's weights are deployed as `dtype` with a `prune` fraction removed in the
    `sparsity` pattern ("unstructured", or "2:4" with prune 0.5); a group splits its
    layers as `split` says (see `simdl.nn.shard`).

    A one-device stage runs on `unit` (default: the fastest for `dtype`), or on several
    of the device's `units` at once: each micro-batch's samples are split among them in
    `unit_shares` (default: in proportion to each unit's speed on the stage's blocks,
    `split_shares`, so they finish together; rows by `split_rows`), each unit runs the
    blocks on its rows, and the rows are put back in order. µLayer (Kim et al., EuroSys
    2019) and CoDL (Jia et al., MobiSys 2022) co-execute a model on a phone's CPU and GPU
    by splitting each layer's channels; splitting samples instead gives every row exactly
    the single-unit output and needs no uneven sharding of the weights. The units share
    the device's memory: the weights are held once (one `dtype` for all), the
    activations are the micro-batch's (its parts add up to it), and no network time
    passes between them.
    """

    devices: tuple[str, ...]
    start: int
    stop: int
    unit: str | None = None
    dtype: str = "fp32"
    prune: float = 0.0
    sparsity: str = "unstructured"
    split: str = "auto"  # how a group splits layers: auto (Megatron), column or row
    collective: str = "ring"  # a group's all-reduce and all-gather: ring, or star (via devices[0])
    units: tuple[str, ...] = ()  # several units of the one device sharing each micro-batch
    unit_shares: tuple[float, ...] = ()  # their shares of its samples (default: by speed)

    @property
    def device(self) -> str:
        return self.devices[0]


@dataclass(frozen=True)
class Replica:
    """One copy of a model (`model` names one of the world's models): stages in chain
    order, and its `share` of requests or of each batch."""

    stages: tuple[Stage, ...]
    model: str = "main"
    share: float = 1.0

    @property
    def path(self) -> str:
        return ">".join("+".join(s.devices) for s in self.stages)


@dataclass(frozen=True)
class Plan:
    """Replicas of stages, how requests reach them, and how their batches stream.

    Each request's batch (or its share, with `split`) is cut into `microbatches`
    that stream through a replica's stages; answers go back to `source`.
    """

    strategy: str
    replicas: tuple[Replica, ...]
    source: str
    microbatches: int = 1
    dispatch: str = "one"
    fuse: str = "mean"
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        """The devices a request visits, e.g. 'phone>tv' or 'pc | laptop'."""
        return " | ".join(r.path for r in self.replicas)

    @property
    def devices(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.replicas:
            for s in r.stages:
                seen.update(dict.fromkeys(s.devices))
        return list(seen)

    def describe(self) -> str:
        def stage(s: Stage) -> str:
            where = "+".join(s.devices)
            dep = "" if (s.dtype, s.prune) == ("fp32", 0.0) else f" [{s.dtype}" + (
                f", {s.prune:.0%} pruned]" if s.prune else "]")
            if s.units:
                shares = (" " + "/".join(f"{v:.2f}" for v in s.unit_shares)
                          if s.unit_shares else "")
                where += f" ({'+'.join(s.units)}{shares})"
            if len(s.devices) > 1 and s.collective != "ring":
                where += f" ({s.collective} via {s.device})"
            return f"blocks {s.start}-{s.stop - 1} on {where}{dep}"

        reps = [" | ".join(stage(s) for s in r.stages) for r in self.replicas]
        if len(reps) > 1:
            reps = [f"({r})" for r in reps]
        mb = f", {self.microbatches} micro-batches" if self.microbatches > 1 else ""
        how = "" if self.dispatch == "one" else f", {self.dispatch}"
        return f"{self.strategy}: {' + '.join(reps)}{how}{mb}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def single_path(strategy: str, world: World, stages: list[Stage], microbatches: int = 1,
                **params: Any) -> Plan:
    """A plan with one replica of the main model (what most strategies make)."""
    return Plan(strategy, (Replica(tuple(stages)),), world.workload.source, microbatches,
                params=params)


def check(plan: Plan, world: World) -> None:
    """Refuse a plan that cannot run: bad ranges, unknown devices or models, no route,
    a raw input that must not leave its device, or a device too small for one micro-batch.

    Memory counts what the run will hold: each device's weights (every replica's, at
    their deployed width) plus the largest `footprint` of a single micro-batch there.
    More in flight is not refused: they wait for memory (`Simulator.reserve`).
    """
    if plan.dispatch not in DISPATCH:
        raise PlanError("dispatch", plan.dispatch, f"choose one of: {', '.join(DISPATCH)}")
    if plan.fuse not in FUSE:
        raise PlanError("fuse", plan.fuse, f"choose one of: {', '.join(FUSE)}")
    if not plan.replicas:
        raise PlanError("replicas", [], "a plan needs at least one replica")
    weights: dict[str, float] = {}
    for r, rep in enumerate(plan.replicas):
        _check_replica(world, plan, rep, f"replicas[{r}]", weights)
    worst = {d: (0, "") for d in weights}  # device -> (one micro-batch's bytes, whose)
    for r, (rep, n) in enumerate(zip(plan.replicas, replica_batches(plan, world.workload.batch))):
        if n == 0:
            continue
        size = -(-n // min(plan.microbatches, n))  # the largest micro-batch it is given
        for d, held in footprint(rep, plan.source, world.models[rep.model], size).items():
            if held > worst.get(d, (0, ""))[0]:
                worst[d] = (held, f"replicas[{r}]")
    for d, (held, whose) in worst.items():
        need, capacity = weights.get(d, 0.0) + held, world.devices[d].memory
        if need > capacity:
            what = f"its weights ({weights.get(d, 0.0):.0f} B)" + (
                f" and one micro-batch of {whose} ({held} B)" if whose else "")
            raise PlanError(f"devices.{d}.memory", f"{need:.0f} B needed",
                            f"{what} must fit in its {capacity:.0f} B")


def _check_replica(world: World, plan: Plan, rep: Replica, where: str,
                   weights: dict[str, float]) -> None:
    """Check one replica and add the weights it places to `weights` (device -> bytes)."""
    if rep.model not in world.models:
        raise PlanError(f"{where}.model", rep.model, f"choose one of: {', '.join(world.models)}")
    chain = world.models[rep.model]
    n, at = len(chain), 0
    for i, s in enumerate(rep.stages):
        for d in s.devices:
            world.known(f"{where}.stages[{i}].devices", d)
        if s.start != at or not s.start < s.stop <= n:
            raise PlanError(f"{where}.stages[{i}].blocks", (s.start, s.stop),
                            f"stages must cover blocks 0..{n - 1} in order, each at least one block")
        if s.dtype not in DTYPES:
            raise PlanError(f"{where}.stages[{i}].dtype", s.dtype, f"choose one of: {', '.join(DTYPES)}")
        if s.collective not in COLLECTIVES:
            raise PlanError(f"{where}.stages[{i}].collective", s.collective,
                            f"choose one of: {', '.join(COLLECTIVES)}")
        if not 0.0 <= s.prune < 1.0:
            raise PlanError(f"{where}.stages[{i}].prune", s.prune, "a fraction in [0, 1)")
        if s.units or s.unit_shares:
            _check_units(world, s, f"{where}.stages[{i}]")
        at = s.stop
    if at != n:
        raise PlanError(f"{where}.stages", at, f"the last stage must end at block {n}")
    stay = world.input_stays_on
    if stay is not None and plan.source == stay and rep.stages[0].devices != (stay,):
        raise PlanError("input_stays_on", stay, f"the raw input may not leave {stay}: the first "
                        f"stage must run on {stay} alone, not on {'+'.join(rep.stages[0].devices)}")
    hops = [plan.source] + [d for s in rep.stages for d in s.devices] + [plan.source]
    for a, b in zip(hops, hops[1:]):
        if a != b:
            world.network.route(a, b)
    for i, s in enumerate(rep.stages):
        if len(s.devices) == 1:
            held = [chain.param_bytes(s.start, s.stop)
                    * stored_fraction(s.dtype, s.prune, s.sparsity)]
        elif (s.dtype, s.prune) != ("fp32", 0.0):
            raise PlanError(f"{where}.stages[{i}].dtype", s.dtype, "a tensor-parallel group "
                            "runs fp32 weights (compressed shards are not supported yet)")
        else:  # each member holds its own shards, exactly as the run places them
            held = shard_weights(shard_stage(chain, s), len(s.devices))
        for d, b in zip(s.devices, held):
            weights[d] = weights.get(d, 0.0) + b


def _check_units(world: World, s: Stage, where: str) -> None:
    """Refuse a unit split that cannot run: not one device, a unit it lacks or that cannot
    run the stage's dtype, a unit twice, or shares that are not fractions adding up to 1."""
    spec = world.devices[s.device]
    if len(s.devices) != 1 or s.unit is not None:
        raise PlanError(f"{where}.units", list(s.units), "units split the stage of one device "
                        "(not a tensor-parallel group), given instead of `unit`")
    if len(s.units) < 2:
        raise PlanError(f"{where}.units", list(s.units), "two or more units of "
                        f"{s.device} (one unit: give `unit`)")
    for u in s.units:
        if u not in spec.units:
            raise PlanError(f"{where}.units", u, f"units of {s.device}: {', '.join(spec.units)}")
        if s.dtype not in spec.units[u].peak:
            runs = [n for n, us in spec.units.items() if s.dtype in us.peak]
            raise PlanError(f"{where}.units", u, f"units of {s.device} that run {s.dtype}: "
                            f"{', '.join(runs)}")
    for k, u in enumerate(s.units):
        if u in s.units[:k]:
            raise PlanError(f"{where}.units", u, "each unit at most once; it is listed twice")
    shares = s.unit_shares
    if shares and (len(shares) != len(s.units) or any(not 0 < v < 1 for v in shares)
                   or abs(sum(shares) - 1.0) > 1e-9):
        raise PlanError(f"{where}.unit_shares", list(shares), f"one fraction in (0, 1) per "
                        f"unit ({len(s.units)}), adding up to 1")


def split_shares(seconds: list[float]) -> tuple[float, ...]:
    """Each unit's share of a stage's samples in proportion to its speed, 1 / `seconds`
    (its kernels' seconds on the stage's blocks), so that the units finish together."""
    speed = [1.0 / t for t in seconds]
    total = sum(speed)
    return tuple(v / total for v in speed)


def split_rows(total: int, shares: tuple[float, ...]) -> tuple[int, ...]:
    """`total` whole items in `shares` by largest remainders (ties to the earlier), so that
    the parts add up to `total`: a micro-batch's rows per unit, a batch per replica."""
    exact = [total * v for v in shares]
    sizes = [int(e) for e in exact]
    order = sorted(range(len(exact)), key=lambda i: (sizes[i] - exact[i], i))
    for i in order[:total - sum(sizes)]:
        sizes[i] += 1
    return tuple(sizes)


def footprint(rep: Replica, source: str, chain: Chain, size: int) -> dict[str, int]:
    """Peak bytes one micro-batch of `size` samples holds on each device of its path.

    The run (`simdl.sim.stages`) allocates exactly these: on the source its input,
    later its answer; on each device of a stage a block's input and output together.
    It holds them on one device (or group) at a time, handing over before it moves
    on, so a device it visits twice needs the larger visit, not the sum. Admission
    reserves these bytes before the micro-batch starts.
    """
    acts = [input_bytes(chain, size)] + [c.out_bytes for c in chain.costs(size)]
    need = {source: max(acts[0], acts[-1])}  # acts[b]: block b's input; acts[-1]: the answer
    for s in rep.stages:
        live = max(acts[b] + acts[b + 1] for b in range(s.start, s.stop))
        for d in s.devices:
            need[d] = max(need.get(d, 0), live)
    return need


def replica_batches(plan: Plan, batch: int) -> list[int]:
    """Samples of one request's `batch` each replica can be given: all of them, or with
    `split` its `share`, by largest remainders so that the parts add up to the batch."""
    if plan.dispatch != "split":
        return [batch] * len(plan.replicas)
    return list(split_rows(batch, tuple(r.share for r in plan.replicas)))


def shard_stage(chain: Chain, s: Stage) -> list[tp.Program]:
    """A tensor-parallel stage's blocks, each as a shard program over its devices."""
    return [tp.shard(chain[b].layer, len(s.devices), s.split, chain.names[b])
            for b in range(s.start, s.stop)]


def deployed_chain(base: Chain, dtype: str, prune: float, sparsity: str) -> Chain:
    """The chain a stage stored as (`dtype`, `prune`, `sparsity`) runs: the model itself
    when nothing changes, else `deploy`'s copy."""
    if (dtype, prune) == ("fp32", 0.0):
        return base
    return deploy(base, dtype=dtype, prune=prune, sparsity=sparsity)


def charged_flops(cost: Cost, speedup: float) -> float:
    """A block's forward FLOPs as a unit charges them: a sparse mode speeds up only the
    products with weights pruned in its pattern (`speedup`: `hw.devices.sparse_speedup`)."""
    return cost.fwd_flops - cost.sparse_flops * (1 - 1 / speedup)


def shard_weights(programs: list[tp.Program], members: int) -> list[int]:
    """Bytes of weights each member of a group holds: its shard of every kernel."""
    return [sum(op.shards[m].param_bytes() for p in programs for op in p.ops
                if isinstance(op, tp.Compute)) for m in range(members)]


def stored_fraction(dtype: str, prune: float, sparsity: str = "unstructured") -> float:
    """About what share of its fp32 bytes a deployed weight keeps, per weight of a large
    matrix by `simdl.nn.compress.stored_bytes` (the rule the deployed layers store by):
    the narrower width, and the pruning format's index overhead."""
    return stored_bytes(dtype, sparsity, 1.0, 1.0 - prune) / WIDTH["fp32"]


def input_bytes(chain: Any, batch: int) -> int:
    """Bytes of one batch of raw input as it lives on the source device."""
    return nbytes((batch, *chain.in_shape), chain.in_dtype.itemsize)
