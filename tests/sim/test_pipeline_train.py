"""Pipeline-parallel training: GPipe and 1F1B against the single-device reference,
the closed-form bubble, the activation memory each schedule holds, and determinism."""
import copy
from dataclasses import replace

import numpy as np
import pytest

from simdl.errors import PlanError
from simdl.hw.devices import DeviceSpec, UnitSpec, make_device
from simdl.hw.topologies import links
from simdl.nn.data import gaussian_mixture
from simdl.nn.dense import SoftmaxCrossEntropy
from simdl.nn.models import mlp
from simdl.nn.optim import SGD
from simdl.plan.plan import Stage
from simdl.plan.schedules import SCHEDULES, gpipe, one_f_one_b
from simdl.plan.training import Sync, TrainPlan
from simdl.plan.world import Training, World
from simdl.sim.batches import owner_batches
from simdl.sim.engine import Simulator
from simdl.sim.pipeline_train import pipeline
from simdl.sim.training import execute

NAMES = ("a", "b", "c", "d")
KERNEL = 1e-3  # s: the overhead-only device's time for any kernel


def kernel_device():
    """Every kernel takes exactly KERNEL s: peak and memory bandwidth so high that the
    roofline term (< 1e-15 s for these tiny kernels) vanishes next to the overhead."""
    unit = UnitSpec(kind="cpu", peak={"fp32": 1e30}, efficiency=1.0, overhead=KERNEL,
                    active_power=1.0)
    return DeviceSpec(type="test", label="overhead-only", units={"cpu": unit}, memory=2**30,
                      mem_bw=1e30, idle_power=0.0, radio_tx_power=0.0, radio_rx_power=0.0,
                      battery=None, background=0.0, interfaces={"ethernet": 1e30})


def star(devices, bandwidth="1e15", latency=0.0):
    """Every device on one switch: no latency, no per-message overhead; a transfer of n
    bytes takes n / bandwidth (a few hundred bytes at 1e15 B/s: ~1e-13 s)."""
    return links(devices, [{"a": d, "b": "sw", "bandwidth": bandwidth, "latency": latency}
                           for d in devices], overhead=0.0)


def world(devices, steps=3, batch=16, depth=3, hidden=8, optimizer="sgd", momentum=0.9,
          eval_every=2):
    data = gaussian_mixture(n=200, dim=hidden, n_classes=4, seed=1)
    train, test = data.split(0.8)
    load = Training(steps=steps, batch=batch, optimizer=optimizer, lr=0.1, momentum=momentum,
                    data_on=("a",), eval_every=eval_every)
    chain = mlp(in_dim=hidden, hidden=hidden, depth=depth, n_classes=4, seed=2)
    return World("t", 7, {"main": chain}, devices, star(devices), load, test, train_data=train)


def plan(cuts, schedule, microbatches, devices=NAMES):
    bounds = [0, *cuts, 4]
    stages = tuple(Stage((d,), lo, hi) for d, lo, hi in zip(devices, bounds, bounds[1:]))
    return TrainPlan("pipeline_train", tuple(devices[:len(stages)]), Sync("pipeline"), stages,
                     microbatches, schedule)


def laptops(n=4):
    return {d: make_device("laptop") for d in NAMES[:n]}


def reference(w, steps):
    """Single-device training on the same global batches: the data owner a's draws."""
    chain, ce = copy.deepcopy(w.chain), SoftmaxCrossEntropy()
    opt = SGD(lr=w.workload.lr, momentum=w.workload.momentum)
    (draws,) = owner_batches(w, ["a"])
    losses = []
    for _ in range(steps):
        x, y = next(draws)
        chain.zero_grad()
        z, caches = chain.forward(x, train=True)
        loss, cache = ce.forward(z, y)
        chain.backward(ce.backward(cache), caches)
        opt.step(chain.params(), chain.grads())
        losses.append(loss)
    return chain, losses


def replace_steps(w, steps):
    return replace(w, workload=replace(w.workload, steps=steps))


def run(w, p, timing_only=False):
    sim = Simulator(w.devices, w.network, timing_only=timing_only)
    chain = copy.deepcopy(w.chain)
    job = pipeline(p, w, sim, chain=chain)
    sim.run(until=job.finished)
    return sim, job.metrics, chain


def test_schedules_list_every_forward_and_backward_once_forward_first():
    """Each stage runs F j before B j, each once; 1F1B stage s warms up with p - s - 1
    forwards: p=4, m=6, stage 1 -> F0 F1 | F2 B0 F3 B1 F4 B2 F5 B3 | B4 B5."""
    assert one_f_one_b(1, 4, 6) == [("F", 0), ("F", 1), ("F", 2), ("B", 0), ("F", 3), ("B", 1),
                                    ("F", 4), ("B", 2), ("F", 5), ("B", 3), ("B", 4), ("B", 5)]
    assert gpipe(0, 3, 3) == [("F", 0), ("F", 1), ("F", 2), ("B", 2), ("B", 1), ("B", 0)]
    for name in sorted(SCHEDULES):
        for p, m in ((1, 1), (3, 2), (4, 8)):
            for s in range(p):
                ops = SCHEDULES[name](s, p, m)
                every = [("F", j) for j in range(m)] + [("B", j) for j in range(m)]
                assert sorted(ops) == sorted(every)
                assert all(ops.index(("F", j)) < ops.index(("B", j)) for j in range(m))


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("cuts,m", [([1, 2, 3], 4), ([2], 3), ([1, 3], 5)],
                         ids=["4stages-m4", "2stages-m3", "3stages-m5-ragged"])
def test_gradients_and_weights_match_single_device_training(schedule, cuts, m):
    """Same global batches, SGD with momentum 0.9: after 1 step the accumulated gradient
    is the full-batch gradient, after 3 steps the weights agree. rtol 1e-5, atol 1e-6 in
    float32: micro-batch partial sums add in another order (16 samples in 5 micro-batches
    of 4, 3, 3, 3, 3 exercise the unequal shares)."""
    w = world(laptops())
    ref, _ = reference(w, 1)
    _, metrics, chain = run(replace_steps(w, 1), plan(cuts, schedule, m))
    for name, g in ref.grads().items():
        np.testing.assert_allclose(chain.grads()[name], g, rtol=1e-5, atol=1e-6, err_msg=name)
    ref, losses = reference(w, 3)
    _, metrics, chain = run(w, plan(cuts, schedule, m))
    for name, v in ref.params().items():
        np.testing.assert_allclose(chain.params()[name], v, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(metrics.frame().loss, losses, rtol=1e-5)


def test_world_chain_is_never_changed():
    w = world(laptops())
    before = {k: v.copy() for k, v in w.chain.params().items()}
    execute(plan([1, 2, 3], "1f1b", 4), w, Simulator(w.devices, w.network))
    for k, v in w.chain.params().items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("p,m", [(4, 8), (4, 4), (2, 6), (4, 2)])
def test_equal_stages_idle_for_the_closed_form_bubble(schedule, p, m):
    """p equal stages of k = 4 / p blocks (every kernel KERNEL s, so F = B = k kernels;
    transfers ~1e-13 s): the pipeline phase lasts (m + p - 1)(F + B) of which each stage
    computes m(F + B), so its idle fraction is (p - 1) / (m + p - 1), for GPipe and for
    1F1B (the same flush bubble). The step adds one optimizer kernel per stage, all but
    stage 0's hidden in the bubble: step = (m + p - 1)(F + B) + 1 kernels, wait_s =
    (p - 1)(F + B) kernels. rel 1e-6 covers the transfers' ~1e-13 s."""
    devices = {d: kernel_device() for d in NAMES[:p]}
    w = world(devices, steps=2)
    cuts, k = ([1, 2, 3], 1) if p == 4 else ([2], 2)
    fb = 2 * k * KERNEL
    sim, metrics, _ = run(w, plan(cuts, schedule, m), timing_only=True)
    log = sim.log.frame()
    step0 = log[(log.step == 0)]
    first = step0[step0.kind == "compute"].t_start.min()
    flush = step0[(step0.device == "a") & step0.label.str.startswith("bwd")].t_end.max()
    span = flush - first
    assert span == pytest.approx((m + p - 1) * fb, rel=1e-6)
    for d in NAMES[:p]:
        mine = step0[(step0.kind == "compute") & (step0.device == d)
                     & ~step0.label.str.startswith("optimizer")]
        idle = 1 - (mine.t_end - mine.t_start).sum() / span
        assert idle == pytest.approx((p - 1) / (m + p - 1), rel=1e-6)
    df = metrics.frame()
    step = (m + p - 1) * fb + KERNEL
    assert np.diff([0.0, *df.t]) == pytest.approx([step, step], rel=1e-6)
    assert df.compute_s.tolist() == pytest.approx([m * fb + KERNEL] * 2, rel=1e-6)
    assert df.wait_s.tolist() == pytest.approx([(p - 1) * fb] * 2, rel=1e-6)
    assert (df.comm_s < 1e-9).all()


@pytest.mark.parametrize("m", [6, 8])
def test_1f1b_holds_p_microbatches_of_activations_on_stage_0_gpipe_holds_m(m):
    """4 stages of one block each. Stage 0 (fc1: Linear 8->8 + ReLU) keeps its input and
    pre-activation per micro-batch: 2 x 4 samples x 8 x 4 B = 256 B. Its static memory is
    weights 288 B, gradients 288 B, momentum 288 B, plus the step's batch of 32 samples
    (32 x 8 x 4 B inputs + 32 x 8 B labels = 1280 B). Peak = static + k x 256 B with k = m
    for GPipe and k = p = 4 for 1F1B."""
    p, batch = 4, 4 * m
    w = world(laptops(), steps=2, batch=batch)
    per_mb = w.chain.costs(4)[0].saved_bytes
    assert per_mb == 2 * 4 * 8 * 4
    static = 3 * w.chain.param_bytes(0, 1) + batch * 8 * 4 + batch * 8
    peaks = {}
    for schedule in ("gpipe", "1f1b"):
        sim, _, _ = run(w, plan([1, 2, 3], schedule, m), timing_only=True)
        peaks[schedule] = sim.memory_peak["a"]
        assert sim.memory_used["a"] == static - batch * 40  # the batch freed, the rest held
    assert peaks == {"gpipe": static + m * per_mb, "1f1b": static + p * per_mb}
    assert peaks["1f1b"] < peaks["gpipe"]


def test_1f1b_holds_p_minus_s_microbatches_on_stage_s():
    """Stage s (one block each) holds at most p - s micro-batches under 1F1B; all 6 under
    GPipe. Peak minus static memory over the per-micro-batch saved bytes gives the count."""
    m = 6
    w = world(laptops(), batch=4 * m, steps=1)
    costs = w.chain.costs(4)
    loss = SoftmaxCrossEntropy().cost(costs[-1].out_shape).saved_bytes
    for schedule, expect in (("gpipe", [6, 6, 6, 6]), ("1f1b", [4, 3, 2, 1])):
        sim, _, _ = run(w, plan([1, 2, 3], schedule, m), timing_only=True)
        held = []
        for s, d in enumerate(NAMES):
            static = 3 * w.chain.param_bytes(s, s + 1)
            static += (4 * m * 8 * 4 + 4 * m * 8) if s == 0 else (4 * m * 8 if s == 3 else 0)
            saved = costs[s].saved_bytes + (loss if s == 3 else 0)
            held.append((sim.memory_peak[d] - static) / saved)
        assert held == expect, schedule


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_timing_only_gives_the_real_timeline_and_runs_are_deterministic(schedule):
    """Same plan on a home Wi-Fi-like star (20 MB/s, 2 ms): the event logs of timing-only
    and real mode are equal row for row; two real runs give identical metrics."""
    devices = laptops(3)
    w = world(devices, steps=4)
    w = World(w.name, w.seed, w.models, devices, star(devices, "20MB/s", "2ms"), w.workload,
              w.data, train_data=w.train_data)
    p = plan([1, 3], schedule, 4, devices=NAMES[:3])
    real, m1, _ = run(w, p)
    timing, mt, _ = run(w, p, timing_only=True)
    assert real.log.rows == timing.log.rows
    _, m2, _ = run(w, p)
    assert m1.frame().equals(m2.frame())
    df, dt = m1.frame(), mt.frame()
    assert df.t.tolist() == dt.t.tolist() and dt.loss.isna().all()
    assert (df.comm_s > 0).all() and (df.bytes_per_worker > 0).all()
    np.testing.assert_allclose(df.compute_s + df.comm_s + df.wait_s, np.diff([0.0, *df.t]))
    # eval every 2 steps: steps 1 and 3
    assert df.accuracy.notna().tolist() == [False, True, False, True]
    steps = real.log.frame().query("kind == 'step'")
    assert len(steps) == 3 * 4 and set(steps.resource) == {"pipeline"}


def test_training_learns():
    """40 steps of SGD on the 4-class mixture (chance 0.25): the loss falls and held-out
    accuracy passes 0.8 (0.875 measured)."""
    w = world(laptops(2), steps=40, eval_every=20, batch=32)
    _, metrics, _ = run(w, plan([2], "1f1b", 4, devices=NAMES[:2]))
    df = metrics.frame()
    assert df.loss.iloc[-1] < df.loss.iloc[0]
    assert df.accuracy.iloc[-1] > 0.8


def test_bad_plans_are_refused():
    w = world(laptops())
    with pytest.raises(PlanError, match="schedule"):
        run(w, plan([1, 2, 3], "interleaved", 2))
    with pytest.raises(PlanError, match="microbatches"):
        run(w, plan([1, 2, 3], "gpipe", 17))
    with pytest.raises(PlanError, match="last stage must end"):
        run(w, TrainPlan("pipeline_train", ("a",), Sync("pipeline"), (Stage(("a",), 0, 2),), 2))
