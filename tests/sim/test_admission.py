"""Memory as admission: a micro-batch starts only when its peak bytes fit on every device of
its path, waits in line until they do, and only a plan that can never fit is refused.

Every case runs the same tiny model, mlp(8 -> 16 -> 16 -> 4), two samples per request:
  input 2x8x4 = 64 B; outputs fc1 128 B, fc2 128 B, head 32 B.
  A block holds its input and output together: fc1 64+128 = 192, fc2 128+128 = 256,
  head 128+32 = 160 B. The source holds the input, later the answer: max(64, 32) = 64 B.
  Weights (W and b, fp32): fc1 (8x16+16)x4 = 576, fc2 (16x16+16)x4 = 1088,
  head (16x4+4)x4 = 272; all three 1936 B.
Every kernel takes exactly K = 0.25 s (overhead only); every link carries 256 B/s, with no
latency, so 64 B take 0.25 s, 128 B 0.5 s and 32 B 0.125 s: all times are exact in binary.
"""
from dataclasses import replace

import pytest

from simdl.errors import CapacityError, PlanError
from simdl.hw.devices import DeviceSpec, UnitSpec
from simdl.hw.topologies import links
from simdl.nn.data import gaussian_mixture
from simdl.nn.models import mlp
from simdl.plan.plan import Plan, Replica, Stage, check
from simdl.plan.world import Arrival, Inference, World
from simdl.report.tables import devices_table, requests_table
from simdl.sim.engine import Simulator
from simdl.sim.inference import execute
from simdl.sim.serving import Policy
from simdl.sim.stages import prepare

K = 0.25        # s per kernel
WEIGHTS = 1936  # B, the whole model
FC1, FC2, HEAD = 576, 1088, 272  # B of weights per block
AMPLE = 2**20


def device(memory):
    unit = UnitSpec(kind="cpu", peak={"fp32": 1e30}, efficiency=1.0, overhead=K, active_power=1.0)
    return DeviceSpec(type="test", label="overhead-only", units={"cpu": unit}, memory=memory,
                      mem_bw=1e30, idle_power=0.0, radio_tx_power=0.0, radio_rx_power=0.0,
                      battery=None, background=0.0, interfaces={"ethernet": 1e30})


def world(memory, requests, source):
    """Devices with the given memory (bytes), on one switch; `requests` arrive at t=0."""
    devices = {d: device(m) for d, m in memory.items()}
    network = links(devices, [{"a": d, "b": "sw", "bandwidth": "256B/s"} for d in devices],
                    overhead=0.0)
    load = Inference(requests=requests, arrival=Arrival("trace", times=(0.0,) * requests),
                     batch=2, source=source)
    return World("t", 0, {"main": mlp(in_dim=8, hidden=16, depth=2, n_classes=4)}, devices,
                 network, load, gaussian_mixture(n=16, dim=8, n_classes=4, seed=1))


def replica(*stages):
    """Stages as (devices, start, stop)."""
    return Replica(tuple(Stage(tuple(d.split("+")), lo, hi) for d, lo, hi in stages))


def run(plan, w, before=None, policy=Policy()):
    """Check, then execute in real mode under `policy`; `before(sim)` may start processes
    first."""
    check(plan, w)
    sim = Simulator(w.devices, w.network)
    if before is not None:
        before(sim)
    execute(plan, w, sim, prepare(plan, w), policy=policy)
    return sim


def memwaits(sim):
    events = sim.log.frame()
    return [tuple(r) for r in events[events.kind == "memwait"].itertuples(index=False)]


# -- waiting for memory ------------------------------------------------------------------

def test_requests_beyond_what_fits_wait_in_order_until_one_leaves():
    """The device fits its weights and exactly k = 2 micro-batches (2 x 256 B). Four
    requests arrive at once: r0 and r1 are admitted, and the one unit runs each
    invocation's three blocks to its end: r0 [0, 3K], r1 [3K, 6K]. r0 ends at 3K = 0.75 s
    and gives its 256 B back: r2 is admitted then and runs [6K, 9K]. r1 ends at 6K = 1.5 s:
    r3 is admitted and runs [9K, 12K]. The peak is r0 in fc2 (256 B) beside r1, whose fc1
    waits for the unit with its input and output placed (192 B): within the 2 x 256 B."""
    capacity = WEIGHTS + 2 * 256
    sim = run(Plan("single", (replica(("dev", 0, 3)),), "dev"),
              world({"dev": capacity}, 4, "dev"))
    reqs = requests_table(sim.log.frame())
    assert reqs.status.tolist() == ["completed"] * 4
    assert reqs.memory_wait.tolist() == [0.0, 0.0, 3 * K, 6 * K]
    assert reqs.latency.tolist() == [3 * K, 6 * K, 9 * K, 12 * K]
    assert memwaits(sim) == [(0.0, 3 * K, "memwait", "dev", "memory", "r2.0", 0.0, 256.0, 2, -1),
                             (0.0, 6 * K, "memwait", "dev", "memory", "r3.0", 0.0, 256.0, 3, -1)]
    assert sim.memory_peak["dev"] == WEIGHTS + 256 + 192
    peaks = devices_table(sim.log.frame(), sim.devices, {}, sim.now).peak_memory_bytes
    assert peaks.tolist() == [WEIGHTS + 256 + 192]
    assert sim.memory_used["dev"] == WEIGHTS  # every activation given back


def test_a_device_share_is_given_back_as_soon_as_the_micro_batch_leaves_it():
    """hub > a (fc1, fc2) > b (head); a fits one micro-batch (256 B), b two. r1 waits for a
    only until r0 has handed fc2's output to b: 0.25 s input, 2K on a, 0.5 s hand-over, so
    1.25 s, not until r0's answer is home (1.625 s)."""
    w = world({"hub": AMPLE, "a": FC1 + FC2 + 256, "b": HEAD + 2 * 160}, 2, "hub")
    sim = run(Plan("pipeline", (replica(("a", 0, 2), ("b", 2, 3)),), "hub"), w)
    assert memwaits(sim) == [(0.0, 1.25, "memwait", "a", "memory", "r1.0", 0.0, 256.0, 1, -1)]
    assert requests_table(sim.log.frame()).memory_wait.tolist() == [0.0, 1.25]
    assert sim.memory_peak["a"] == FC1 + FC2 + 256


def test_replicas_crossing_two_devices_in_opposite_orders_do_not_deadlock():
    """Replica 0 runs fc1, fc2 on a then head on b; replica 1 the other way round. Each
    device holds the whole model and room for one micro-batch (256 B). Holding and waiting,
    r0 would sit on a waiting for b while r1 sits on b waiting for a, for ever. Reserving
    its whole path at once, r0 goes and r1 waits (for b, the first device it cannot have):
    r0's input 0.25 s, fc1 and fc2 on a 0.5 s, hand-over 0.5 s, head on b 0.25 s, answer
    0.125 s: r1 starts at 1.625 s and, the mirror image, ends 1.625 s later."""
    capacity = WEIGHTS + 256
    w = world({"hub": AMPLE, "a": capacity, "b": capacity}, 2, "hub")
    plan = Plan("hybrid", (replica(("a", 0, 2), ("b", 2, 3)), replica(("b", 0, 2), ("a", 2, 3))),
                "hub", dispatch="round_robin")
    sim = run(plan, w)
    reqs = requests_table(sim.log.frame())
    assert reqs.status.tolist() == ["completed", "completed"]
    assert reqs.path.tolist() == ["a>b", "b>a"]
    assert reqs.latency.tolist() == [1.625, 3.25]
    assert memwaits(sim) == [(0.0, 1.625, "memwait", "b", "memory", "r1.0", 0.0, 256.0, 1, -1)]
    assert (sim.memory_peak["a"], sim.memory_peak["b"]) == (capacity, capacity)


# -- a device that leaves ------------------------------------------------------------------

def leave_at(t, device):
    def start(sim):
        def process():
            yield sim.env.timeout(t)
            sim.leave(device, "failed")
        sim.process(process())
    return start


def test_a_departed_device_holds_nobody_back():
    """hub > a > b; b fits one micro-batch (160 B) and r1 waits for it. b leaves at 0.375 s
    while r0 computes on a: r1 goes at once (not when r0 fails reaching b at 0.75 s), and,
    with no retries, both fail when they reach b."""
    w = world({"hub": AMPLE, "a": AMPLE, "b": HEAD + 160}, 2, "hub")
    sim = run(Plan("pipeline", (replica(("a", 0, 2), ("b", 2, 3)),), "hub"), w,
              before=leave_at(0.375, "b"), policy=Policy(retries=0))
    assert memwaits(sim) == [(0.0, 0.375, "memwait", "b", "memory", "r1.0", 0.0, 160.0, 1, -1)]
    reqs = requests_table(sim.log.frame())
    assert reqs.status.tolist() == ["failed", "failed"]
    assert reqs.cause.tolist() == ["device_left", "device_left"]


def test_work_that_fails_gives_back_all_it_held():
    """hub > a > b; a fits one micro-batch and r1 waits for it. b leaves at 0.375 s; r0
    fails at 0.75 s reaching b, holding fc2's output on a: that and its shares are given
    back then, so r1 goes at 0.75 s (and, with no retries, fails in turn). a ends holding
    its weights."""
    w = world({"hub": AMPLE, "a": FC1 + FC2 + 256, "b": AMPLE}, 2, "hub")
    sim = run(Plan("pipeline", (replica(("a", 0, 2), ("b", 2, 3)),), "hub"), w,
              before=leave_at(0.375, "b"), policy=Policy(retries=0))
    assert memwaits(sim) == [(0.0, 0.75, "memwait", "a", "memory", "r1.0", 0.0, 256.0, 1, -1)]
    reqs = requests_table(sim.log.frame())
    assert reqs.status.tolist() == ["failed", "failed"]
    assert reqs.cause.tolist() == ["device_left", "device_left"]
    assert (sim.memory_used["a"], sim.memory_used["hub"]) == (FC1 + FC2, 0.0)


# -- refused before the run -----------------------------------------------------------------

def test_a_plan_whose_one_micro_batch_cannot_fit_is_refused_with_the_numbers():
    plan = Plan("single", (replica(("dev", 0, 3)),), "dev")
    check(plan, world({"dev": WEIGHTS + 256}, 1, "dev"))  # exactly enough
    with pytest.raises(PlanError) as err:
        check(plan, world({"dev": WEIGHTS + 255}, 1, "dev"))
    assert str(err.value) == ("devices.dev.memory: '2192 B needed' is not valid; its weights "
                              "(1936 B) and one micro-batch of replicas[0] (256 B) must fit in "
                              "its 2191 B")


def test_the_source_must_hold_the_input_and_the_answer():
    plan = Plan("single", (replica(("dev", 0, 3)),), "hub")
    check(plan, world({"hub": 64, "dev": AMPLE}, 1, "hub"))
    with pytest.raises(PlanError, match=r"^devices\.hub\.memory: '64 B needed' is not valid; its "
                       r"weights \(0 B\) and one micro-batch of replicas\[0\] \(64 B\) must fit "
                       r"in its 63 B$"):
        check(plan, world({"hub": 63, "dev": AMPLE}, 1, "hub"))


def test_replicas_sharing_a_device_need_their_weights_and_one_micro_batch_not_one_each():
    """Two replicas on one device hold two copies of the weights, but one micro-batch at a
    time is enough to make progress: 2 x 1936 + 256 = 4128 B."""
    plan = Plan("data_parallel", (replica(("dev", 0, 3)), replica(("dev", 0, 3))), "dev",
                dispatch="round_robin")
    sim = run(plan, world({"dev": 2 * WEIGHTS + 256}, 2, "dev"))
    assert requests_table(sim.log.frame()).memory_wait.tolist() == [0.0, 3 * K]
    with pytest.raises(PlanError, match=r"'4128 B needed'.* in its 4127 B$"):
        check(plan, world({"dev": 2 * WEIGHTS + 255}, 2, "dev"))


def test_a_split_batch_counts_each_replica_its_own_share():
    """Batch 2 split 1:1: each replica gets one sample, so fc2 holds 64 + 64 = 128 B."""
    plan = Plan("data_parallel", (Replica(replica(("a", 0, 3)).stages, share=0.5),
                                  Replica(replica(("b", 0, 3)).stages, share=0.5)),
                "hub", dispatch="split")
    check(plan, world({"hub": AMPLE, "a": WEIGHTS + 128, "b": WEIGHTS + 128}, 1, "hub"))
    with pytest.raises(PlanError, match=r"^devices\.a\.memory: '2064 B needed'"):
        check(plan, world({"hub": AMPLE, "a": WEIGHTS + 127, "b": AMPLE}, 1, "hub"))


def test_a_tensor_parallel_group_holds_what_the_check_counts():
    """a+b split fc1 and fc2; each member holds a block's input and output (fc2: 256 B) and
    its shards of the weights, as placed by the run. The run peaks at exactly what the check
    lets through: one byte less is refused."""
    plan = Plan("hybrid", (replica(("a+b", 0, 2), ("c", 2, 3)),), "hub")
    sim = run(plan, world({"hub": AMPLE, "a": AMPLE, "b": AMPLE, "c": AMPLE}, 1, "hub"))
    events = sim.log.frame()
    allocs = events[(events.kind == "alloc") & (events.request == 0)]
    peaks = allocs.groupby("device").nbytes.cumsum().groupby(allocs.device).max().to_dict()
    assert peaks == {"hub": 64, "a": 256, "b": 256, "c": 160}
    shards = {d: sim.memory_used[d] for d in "ab"}  # what is left: the weights
    check(plan, world({"hub": 64, "a": shards["a"] + 256, "b": shards["b"] + 256,
                       "c": HEAD + 160}, 1, "hub"))
    with pytest.raises(PlanError, match=r"^devices\.b\.memory"):
        check(plan, world({"hub": 64, "a": shards["a"] + 256, "b": shards["b"] + 255,
                           "c": HEAD + 160}, 1, "hub"))


# -- the engine on its own -------------------------------------------------------------------

def test_a_reservation_that_could_never_fit_is_an_error_not_a_wait():
    """900 B of weights on 1000: 100 B is all a reservation can ever have, even though
    another reservation holds 50 of them now."""
    sim = Simulator({"dev": device(1000)})
    sim.allocate("dev", 900, "weights")
    sim.reserve({"dev": 50}, "r0")
    assert sim.reserve({"dev": 100}, "r1").wait is not None  # fits later
    with pytest.raises(CapacityError) as err:
        sim.reserve({"dev": 101}, "r2")
    assert (err.value.device, err.value.need, err.value.free, err.value.label) == (
        "dev", 101, 100, "r2")


def test_plain_allocations_cannot_take_what_is_promised():
    sim = Simulator({"dev": device(1000)})
    res = sim.reserve({"dev": 600}, "r0")
    assert res.wait is None
    sim.allocate("dev", 400, "weights")
    with pytest.raises(CapacityError):
        sim.allocate("dev", 1, "more")
    sim.allocate("dev", 600, "act", under=res)
    with pytest.raises(RuntimeError, match=r"overruns the reservation 'r0' \(0 of 600 B left\)"):
        sim.allocate("dev", 1, "act", under=res)
    sim.release(res)  # frees the 600 B it still held
    assert sim.memory_used["dev"] == 400 and sim.memory_peak["dev"] == 1000


def test_a_long_line_of_waiters_is_served_in_order_none_lost():
    """Six requests at once where two fit: each holds the unit for 3K, so r_k (k >= 2) is
    admitted when r_(k-2) ends, at (k - 1) x 3K, and ends at (k + 1) x 3K. Several wait at
    every release, so none may be skipped in the line while the others are looked at."""
    capacity = WEIGHTS + 2 * 256
    sim = run(Plan("single", (replica(("dev", 0, 3)),), "dev"),
              world({"dev": capacity}, 6, "dev"))
    reqs = requests_table(sim.log.frame())
    assert reqs.status.tolist() == ["completed"] * 6
    assert reqs.memory_wait.tolist() == pytest.approx([0, 0, 3 * K, 6 * K, 9 * K, 12 * K])
    assert reqs.latency.tolist() == pytest.approx([3 * K * (k + 1) for k in range(6)])


def test_work_that_arrives_when_memory_is_free_again_starts_at_once():
    """Three requests at t = 0 (two fit, r2 waits until r0 ends at 3K) and a fourth at
    10K, when everything has been given back: it waits for nothing."""
    capacity = WEIGHTS + 2 * 256
    w = world({"dev": capacity}, 4, "dev")
    w = replace(w, workload=replace(w.workload, arrival=Arrival("trace",
                                                                times=(0.0, 0.0, 0.0, 10 * K))))
    sim = run(Plan("single", (replica(("dev", 0, 3)),), "dev"), w)
    reqs = requests_table(sim.log.frame())
    assert reqs.memory_wait.tolist() == pytest.approx([0, 0, 3 * K, 0])
    assert reqs.latency.tolist() == pytest.approx([3 * K, 6 * K, 9 * K, 3 * K])
