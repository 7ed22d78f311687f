"""Data-parallel training on the simulated pool: synchronous plans against single-device
training, bytes against hand-computed packet sizes, staleness bounds, federated averaging
against a hand computation, gossip's contraction, and timing-only/real and seed determinism.

The model everywhere is mlp(16, 32, 2, 4): fc1 (W 16x32, b 32), fc2 (W 32x32, b 32),
head (W 32x4, b 4) = 1732 float32 parameters, S = 6928 bytes; fc1 alone is 544 (2176 B).
"""
import copy
import math

import numpy as np
import pytest

from simdl.errors import PlanError
from simdl.hw.devices import make_device
from simdl.hw.topologies import wifi_star
from simdl.nn.data import gaussian_mixture
from simdl.nn.dense import SoftmaxCrossEntropy
from simdl.nn.models import mlp
from simdl.nn.optim import SGD
from simdl.plan import training as T
from simdl.plan.world import Training, World
from simdl.rng import stream
from simdl.sim.batches import owner_batches
from simdl.sim import collectives as C
from simdl.sim.engine import Simulator
from simdl.plan.training import shard_params
from simdl.sim.training import execute, train

SIZES = {"fc1.0.W": 512, "fc1.0.b": 32, "fc2.0.W": 1024, "fc2.0.b": 32, "head.0.W": 128,
         "head.0.b": 4}
S = 4 * sum(SIZES.values())  # 6928
TRAIN, TEST = gaussian_mixture(n=1200, dim=16, n_classes=4, seed=0).split(0.75)
TYPES = {"phone": "phone_flagship", "laptop": "laptop", "pc": "desktop_pc", "tablet": "tablet",
         "slow": "phone_lowend", "fast": "desktop_pc", "srv1": "laptop", "srv2": "laptop"}


def world(names=("phone", "laptop", "pc"), data_on=None, steps=5, batch=10, lr=0.1,
          shards="iid", eval_every=5, target=None, optimizer="sgd", momentum=0.0):
    devices = {d: make_device(TYPES[d]) for d in names}
    load = Training(steps, batch, optimizer, lr, momentum, tuple(data_on or names), shards,
                    eval_every, target)
    return World("t", 0, {"main": mlp(16, 32, 2, 4)}, devices, wifi_star(devices), load, TEST,
                 train_data=TRAIN)


def run(plan, w, timing_only=False):
    sim = Simulator(w.devices, w.network, timing_only=timing_only)
    return execute(plan, w, sim), sim


def rows(sim, kind, label=None):
    log = sim.log.frame()
    log = log[log.kind == kind]
    return log if label is None else log[log.label == label]


# -- synchronous plans are single-device training on the global batch ----------------------

SYNCHRONOUS = {
    "ring": lambda w: T.allreduce(w, algorithm="ring"),
    "tree": lambda w: T.allreduce(w, algorithm="tree"),
    "halving_doubling": lambda w: T.allreduce(w, algorithm="halving_doubling"),
    "ps-one-server": lambda w: T.parameter_server(w, ["pc"]),
    "ps-two-sharded": lambda w: T.parameter_server(w, ["phone", "laptop"]),
    "pipeline-gpipe": lambda w: T.pipeline_train(w, ["phone", "laptop", "pc"], microbatches=3),
    "pipeline-1f1b": lambda w: T.pipeline_train(w, ["pc", "phone"], microbatches=4,
                                                schedule="1f1b"),
}


@pytest.mark.parametrize("name", sorted(SYNCHRONOUS))
def test_synchronous_sgd_gives_the_single_device_weights(name):
    """10 samples over 3 workers (4, 3, 3): the sample-weighted sum of per-worker mean
    gradients is the global-batch mean gradient, so 5 SGD steps land on single-device
    training over the concatenated batches; a pipeline draws the same batch (on its first
    stage) and accumulates its micro-batches' gradients. allclose rtol 1e-5, atol 1e-6: the float32
    sums run in another order (per worker, then across), nothing else differs."""
    w = world()
    ref_job, _ = run(T.single_device(w), w)
    job, _ = run(SYNCHRONOUS[name](w), w)
    assert [x.samples for x in job.workers] == ([] if "pipeline" in name else [4, 3, 3])
    ref, got = ref_job.model().params(), job.model().params()
    for n in SIZES:
        assert not np.array_equal(got[n], w.chain.params()[n])  # it trained...
        np.testing.assert_allclose(got[n], ref[n], rtol=1e-5, atol=1e-6, err_msg=n)
    for x in job.workers[1:]:  # ...replicas agree with the evaluated model
        for n in SIZES:
            np.testing.assert_allclose(x.chain.params()[n], got[n], rtol=1e-6, atol=1e-7)
    a, b = ref_job.metrics.frame(), job.metrics.frame()
    np.testing.assert_allclose(b.loss, a.loss, rtol=1e-5)  # loss weighted by samples
    np.testing.assert_allclose(b.accuracy.dropna(), a.accuracy.dropna())


def test_the_world_model_is_never_trained_in_place():
    w = world()
    before = copy.deepcopy(w.chain.params())
    run(T.allreduce(w), w)
    for n, p in w.chain.params().items():
        np.testing.assert_array_equal(p, before[n])


def test_one_worker_trains_on_the_concatenation_of_the_owners_draws():
    """The batch rule: owners phone, laptop, pc draw 4, 3, 3 from their iid shares; one
    worker's first step sees exactly their concatenation (its loss says so)."""
    w = world()
    draws = owner_batches(w, ["phone", "laptop", "pc"])
    x, y = map(np.concatenate, zip(*(next(d) for d in draws)))
    assert len(x) == 10
    loss, _ = SoftmaxCrossEntropy().forward(w.chain.forward(x)[0], y)
    job, sim = run(T.single_device(w), w)
    assert job.metrics.rows[0]["loss"] == pytest.approx(loss, rel=1e-6)
    # The data of the other owners reaches the single device over the network, every step.
    assert len(rows(sim, "transfer", "data")) == 2 * 5


# -- traffic -------------------------------------------------------------------------------

@pytest.mark.parametrize("freeze", [0, 1])
def test_ring_allreduce_sends_2_n_minus_1_over_n_of_the_trained_bytes(freeze):
    """n = 3: each worker sends 2 * 2/3 * S per step; freeze=1 takes fc1 (2176 B) out of S.
    Frozen parameters never change and never receive a gradient."""
    w = world()
    job, sim = run(T.allreduce(w, freeze=freeze), w)
    trained = S - 2176 * freeze
    expect = 2 * 2 / 3 * trained
    df = job.metrics.frame()
    assert df.bytes_per_worker.tolist() == pytest.approx([expect] * 5)
    steps = rows(sim, "step")
    assert len(steps) == 3 * 5 and steps.nbytes.tolist() == pytest.approx([expect] * 15)
    assert set(steps.resource) == {"allreduce"}
    sent = rows(sim, "transfer")
    sent = sent[sent.label.str.startswith("gradients")].groupby("device").nbytes.sum()
    assert sent.to_dict() == pytest.approx(dict.fromkeys(["phone", "laptop", "pc"], 5 * expect))
    for x in job.workers:
        params, grads = x.chain.params(), x.chain.grads()
        for n in ("fc1.0.W", "fc1.0.b"):
            assert np.array_equal(params[n], w.chain.params()[n]) == bool(freeze)
            assert (np.count_nonzero(grads[n]) == 0) == bool(freeze)
    if freeze:  # no backward kernel runs through a frozen block
        compute = rows(sim, "compute")
        assert not compute.label.eq("bwd fc1").any() and compute.label.eq("bwd fc2").any()


def test_parameter_servers_own_balanced_shards_and_get_only_their_share():
    """Greedy largest first: fc2.W (4096 B) to server 0; fc1.W 2048, head.W 512, fc1.b 128,
    fc2.b 128, head.b 16 to server 1 (2832 B). Each worker pushes each server only its
    share, and pulls back the same bytes."""
    assert shard_params({n: 4 * s for n, s in SIZES.items()}, 2) == {
        "fc1.0.W": 1, "fc1.0.b": 1, "fc2.0.W": 0, "fc2.0.b": 1, "head.0.W": 1, "head.0.b": 1}
    w = world(("phone", "laptop", "srv1", "srv2"), data_on=("phone", "laptop"))
    job, sim = run(T.parameter_server(w, ["srv1", "srv2"]), w)
    for label, key in (("push", ["device", "resource"]), ("pull", ["resource", "device"])):
        moved = rows(sim, "transfer", label).groupby(key).nbytes.agg(["sum", "count"])
        for worker in ("phone", "laptop"):
            assert moved.loc[(worker, "srv1")].tolist() == [5 * 4096, 5]
            assert moved.loc[(worker, "srv2")].tolist() == [5 * 2832, 5]
    assert job.metrics.frame().bytes_per_worker.tolist() == [S] * 5


def _packet(kind, size, ratio=0.01):
    """Packet bytes by the gradcomp format: fp16 2/elem; int8 1/elem + 4 B scale + 1 B zero;
    top-k k = max(1, round(ratio*size)) float32 values + int32 indices; sign 1 bit/elem
    + 4 B scale."""
    k = max(1, math.floor(ratio * size + 0.5))
    return {"none": 4 * size, "fp16": 2 * size, "int8": size + 5, "topk": 8 * k,
            "sign": (size + 7) // 8 + 4}[kind]


@pytest.mark.parametrize("kind", ["none", "fp16", "int8", "topk", "sign"])
def test_compression_lowers_the_bytes_on_the_wire_by_the_packet_factor(kind):
    """n = 3 workers. fp16 and int8 packets are all-reduced (ring: 2(n-1)/n x P each);
    top-k and sign cannot be summed on the way, so they are all-gathered (ring: (n-1) x P).
    P: fp16 3464 B (2x less), int8 1762 B (3.9x), top-k 1% 19 entries = 152 B, sign 241 B
    (64+4, 4+4, 128+4, 4+4, 16+4, 1+4)."""
    w = world()
    job, _ = run(T.allreduce(w, compression=kind), w)
    p = sum(_packet(kind, s) for s in SIZES.values())
    expect = 2 * p * (2 / 3 if kind in ("none", "fp16", "int8") else 1)
    assert job.metrics.frame().bytes_per_worker.tolist() == pytest.approx([expect] * 5)
    assert {"fp16": 3464, "int8": 1762, "topk": 152, "sign": 241}.get(kind, S) == p


@pytest.mark.parametrize("kind", ["int8", "topk"])
def test_compressed_pushes_and_uploads_carry_packet_bytes(kind):
    w = world()
    p = sum(_packet(kind, s, 0.05) for s in SIZES.values())
    job, sim = run(T.parameter_server(w, ["pc"], compression=kind, ratio=0.05), w)
    assert rows(sim, "transfer", "push").nbytes.tolist() == [p] * 10  # pc pushes to itself
    job, sim = run(T.local_sgd(w, local_steps=1, compression=kind, ratio=0.05), w)
    assert rows(sim, "transfer", "delta").nbytes.tolist() == [p] * 10  # phone is the server


def test_topk_with_error_feedback_still_converges():
    """Top-k 1% (19 of 1732 values per step) with error feedback, 60 steps at lr 0.2: the
    loss falls from about 1.85 to below 0.3 (uncompressed reaches about 0.15)."""
    w = world(steps=60, batch=24, lr=0.2, eval_every=60)
    df = train(T.allreduce(w, compression="topk", ratio=0.01), w,
               Simulator(w.devices, w.network)).frame()
    assert df.loss.iloc[:3].mean() > 1.5
    assert df.loss.iloc[-5:].mean() < 0.3
    assert df.accuracy.iloc[-1] > 0.85


# -- asynchronous parameter servers --------------------------------------------------------

def _slow_and_fast(mode, k=2, steps=16):
    """A low-end phone and a desktop that also hosts the server: the desktop's pushes and
    pulls stay on the device, the phone's cross Wi-Fi."""
    w = world(("slow", "fast"), steps=steps, batch=32, eval_every=4)
    return run(T.parameter_server(w, ["fast"], mode=mode, staleness=k), w)


def test_asp_records_staleness_when_workers_differ_in_speed():
    job, sim = _slow_and_fast("asp")
    applies = rows(sim, "apply")
    assert len(applies) == 2 * 16
    stale = applies.label.str.split().str[1].astype(int)
    by_worker = stale.groupby(applies.resource).mean()
    assert by_worker["fast"] == 0 and by_worker["slow"] > 0
    assert job.metrics.extra["staleness_max"] > 2  # the desktop ran ahead unchecked
    assert job.metrics.frame().staleness.mean() > 0


@pytest.mark.parametrize("k", [0, 1, 2])
def test_ssp_never_lets_a_worker_run_more_than_its_bound_ahead(k):
    """Checked from the log: when a worker's step t begins computing, t minus the steps
    the slowest worker has finished is at most k. Staleness is then at most
    (n-1)(2k+2): another worker's applies between a worker's read (after its step t-1)
    and its step-t apply are of its steps t-1-k .. t+k."""
    job, sim = _slow_and_fast("ssp", k)
    steps, fwd = rows(sim, "step"), rows(sim, "compute", "fwd fc1")
    for _, first in fwd.iterrows():
        done = [((steps.device == d) & (steps.t_end <= first.t_start)).sum()
                for d in ("slow", "fast")]
        assert first.step - min(done) <= k
    assert job.metrics.extra["max_gap"] == k  # the bound binds
    assert job.metrics.extra["staleness_max"] <= (2 - 1) * (2 * k + 2)
    asp, _ = _slow_and_fast("asp")
    assert asp.metrics.extra["max_gap"] > 2


# -- local SGD / federated averaging ---------------------------------------------------------

def test_local_sgd_only_the_sampled_clients_work_and_send():
    w = world(("phone", "laptop", "pc", "tablet"), steps=3, batch=16)
    job, sim = run(T.local_sgd(w, local_steps=2, clients=2), w)
    rng = stream(0, "clients")
    names = ["phone", "laptop", "pc", "tablet"]
    uploads, steps = rows(sim, "transfer", "delta"), rows(sim, "step")
    compute = rows(sim, "compute")
    for r in range(3):
        picked = sorted(names[i] for i in rng.choice(4, size=2, replace=False))
        assert sorted(steps[steps.step == r].device) == picked
        assert sorted(uploads[uploads.step == r].device) == [d for d in picked if d != "phone"]
        worked = compute[(compute.step == r) & compute.label.str.startswith("fwd")]
        assert sorted(worked.device.unique()) == picked
        assert (worked.groupby("device").size() == 2 * 3).all()  # 2 local steps, 3 blocks
    assert len(job.metrics.rows) == 3


def test_local_sgd_round_is_the_sample_weighted_mean_of_the_clients_models():
    """Two clients (5 and 4 samples per step), one round of 2 local SGD steps each, by hand:
    new = x0 + (5 (x_phone - x0) + 4 (x_laptop - x0)) / 9."""
    w = world(("phone", "laptop"), steps=1, batch=9, lr=0.3)
    job, _ = run(T.local_sgd(w, local_steps=2), w)
    x0 = w.chain.params()
    deltas = []
    for draws in owner_batches(w, ["phone", "laptop"]):
        chain, sce, opt = copy.deepcopy(w.chain), SoftmaxCrossEntropy(), SGD(lr=0.3)
        for _ in range(2):
            x, y = next(draws)
            chain.zero_grad()
            z, caches = chain.forward(x, train=True)
            _, cache = sce.forward(z, y)
            chain.backward(sce.backward(cache), caches)
            opt.step(chain.params(), chain.grads())
        deltas.append({n: p - x0[n] for n, p in chain.params().items()})
    got = job.model().params()
    for n in SIZES:
        expect = x0[n] + (5 * deltas[0][n] + 4 * deltas[1][n]) / 9
        np.testing.assert_allclose(got[n], expect, rtol=1e-5, atol=1e-7, err_msg=n)


# -- gossip -----------------------------------------------------------------------------------

def test_gossip_converges_and_each_mixing_pulls_the_models_together():
    """Four workers with one or two classes each (by_class): a ring, each mixing itself
    and two neighbours at 1/3. That mixing matrix's eigenvalues are 1, 1/3, 1/3, -1/3, so
    every step it shrinks the spread around the mean model at least 3x."""
    w = world(("phone", "laptop", "pc", "tablet"), steps=20, batch=32, shards="by_class",
              eval_every=10)
    job, sim = run(T.gossip(w), w)
    df = job.metrics.frame()
    assert df.loss.iloc[-3:].mean() < 0.6 * df.loss.iloc[:3].mean()
    assert df.accuracy.iloc[-1] > 0.7
    before, after = (np.array(job.series[k]) for k in ("spread_before", "spread_after"))
    assert len(before) == len(after) == 20 and (before > 0).all()
    assert (after <= before / 3 * (1 + 1e-4)).all()
    gossip = rows(sim, "transfer", "gossip")
    assert len(gossip) == 4 * 2 * 20 and set(gossip.nbytes) == {S}  # two neighbours each


# -- time, memory, stopping, determinism --------------------------------------------------------

def test_step_time_splits_into_compute_comm_and_wait():
    """Synchronous all-reduce: every worker's step spans the whole step, so the means
    of compute + comm + wait add up to the step's duration."""
    w = world()
    df = train(T.allreduce(w), w, Simulator(w.devices, w.network)).frame()
    duration = np.diff(np.concatenate([[0.0], df.t]))
    np.testing.assert_allclose(df.compute_s + df.comm_s + df.wait_s, duration, rtol=1e-9)
    assert (df.compute_s > 0).all() and (df.comm_s > 0).all() and (df.wait_s >= 0).all()


def test_memory_holds_weights_gradients_the_batch_and_the_saved_activations():
    """One device, plain SGD (no state), its own data: peak = weights + gradients + the
    step's batch (12 x 16 float32 inputs + 12 int64 labels = 864 B) + every block's saved
    activations at batch 12 + the loss's saved probabilities (12 x 4 x 4 B = 192 B);
    the batch and all activations are given back."""
    w = world(("pc",), batch=12)
    job, sim = run(T.single_device(w), w)
    saved = sum(c.saved_bytes for c in w.chain.costs(12))
    assert sim.memory_peak["pc"] == 2 * S + 864 + saved + 192
    assert sim.memory_used["pc"] == 2 * S


def test_target_accuracy_stops_at_the_first_evaluation_that_reaches_it():
    w = world(steps=40, batch=24, lr=0.2, eval_every=2, target=0.6)
    calls = []
    df = train(T.allreduce(w), w, Simulator(w.devices, w.network), calls.append).frame()
    assert len(df) < 40 and len(calls) == len(df)
    assert df.accuracy.iloc[-1] >= 0.6 and (df.accuracy.iloc[:-1].dropna() < 0.6).all()


EVERY_PROTOCOL = {
    "allreduce": lambda w: T.allreduce(w),
    "ps-bsp": lambda w: T.parameter_server(w, ["pc"]),
    "ps-asp": lambda w: T.parameter_server(w, ["pc"], mode="asp"),
    "gossip": lambda w: T.gossip(w),
    "local_sgd": lambda w: T.local_sgd(w, local_steps=1),
    "pipeline": lambda w: T.pipeline_train(w, ["phone", "pc"], microbatches=2),
    "personalise": lambda w: T.personalise(w, freeze=1),
}


@pytest.mark.parametrize("name", sorted(EVERY_PROTOCOL))
def test_every_protocol_stops_at_a_reached_target(name):
    """A target of 0 is reached at the first evaluation (step 2 of 30, eval_every 3):
    every protocol ends there, not after its 30 steps (workers of an asynchronous one
    may close the step they were in); in timing-only mode there is no accuracy, so it
    runs all 30."""
    w = world(steps=30, eval_every=3, target=0.0)
    plan = EVERY_PROTOCOL[name](w)
    df = train(plan, w, Simulator(w.devices, w.network)).frame()
    assert df.accuracy.first_valid_index() == 2 and len(df) <= 4
    timing = train(plan, w, Simulator(w.devices, w.network, timing_only=True)).frame()
    assert len(timing) == 30


PLANS = {
    "single": lambda w: T.single_device(w),
    "allreduce-ring-topk": lambda w: T.allreduce(w, compression="topk", freeze=1),
    "allreduce-hierarchical": lambda w: T.allreduce(w, algorithm="hierarchical"),
    "ps-bsp-int8": lambda w: T.parameter_server(w, ["phone", "pc"], compression="int8"),
    "ps-asp": lambda w: T.parameter_server(w, ["pc"], mode="asp"),
    "ps-ssp-sign": lambda w: T.parameter_server(w, ["laptop"], mode="ssp", staleness=1,
                                                compression="sign"),
    "gossip-fp16": lambda w: T.gossip(w, compression="fp16"),
    "local_sgd": lambda w: T.local_sgd(w, local_steps=2, clients=2, compression="topk"),
}


@pytest.mark.parametrize("name", sorted(PLANS))
def test_timing_only_mode_gives_the_real_event_log(name):
    w = world(steps=4)
    _, real = run(PLANS[name](w), w)
    _, timing = run(PLANS[name](w), w, timing_only=True)
    assert real.log.rows == timing.log.rows and len(real.log.rows) > 0


@pytest.mark.parametrize("name", ["ps-asp", "gossip-fp16", "local_sgd"])
def test_same_seed_same_metrics_and_log(name):
    w = world(steps=4, eval_every=2)
    (a, sa), (b, sb) = run(PLANS[name](w), w), run(PLANS[name](w), w)
    assert a.metrics.frame().equals(b.metrics.frame()) and sa.log.rows == sb.log.rows
    assert a.metrics.frame().accuracy.notna().sum() == 2


def test_an_owner_too_small_for_its_share_of_the_batch_is_refused():
    w = world(batch=3000)
    with pytest.raises(PlanError, match="workload.batch"):
        run(T.allreduce(w), w)


# -- the all-reduce step is the collective it names, and tallies what it sent -------------

@pytest.mark.parametrize("algorithm", sorted(C.ALGORITHMS["all_reduce"]))
@pytest.mark.parametrize("n", [2, 3])
def test_each_step_runs_the_named_collective_and_counts_its_bytes(algorithm, n):
    """A step's gradient transfers are exactly those of the named all-reduce of the trained
    bytes run alone on the same pool (sender, receiver and size, in order); each worker's
    bytes_per_worker is what it sent in it; its compute_s is its own kernels' time."""
    names = ("phone", "laptop", "pc")[:n]
    w = world(names, steps=1)
    job, sim = run(T.allreduce(w, algorithm=algorithm), w)
    log = sim.log.frame()
    moved = log[(log.kind == "transfer") & log.label.str.startswith("gradients")]
    alone = Simulator(w.devices, w.network, timing_only=True)
    alone.process(_collective(alone, names, algorithm))
    alone.run()
    ref = alone.log.frame()
    ref = ref[ref.kind == "transfer"]
    key = ["device", "resource", "nbytes"]
    assert moved[key].values.tolist() == ref[key].values.tolist() and len(ref) > 0
    sent = ref.groupby("device").nbytes.sum().reindex(list(names), fill_value=0.0)
    assert job.metrics.rows[0]["bytes_per_worker"] == pytest.approx(sent.mean(), rel=1e-12)
    kernels = log[log.kind == "compute"].assign(s=lambda d: d.t_end - d.t_start)
    per_worker = kernels.groupby("device").s.sum().reindex(list(names))
    assert job.metrics.rows[0]["compute_s"] == pytest.approx(per_worker.mean(), rel=1e-12)


def _collective(sim, names, algorithm):
    yield C.all_reduce(sim, names, float(S), algorithm)


def test_a_worker_away_from_its_data_receives_it_every_step():
    """Workers laptop, pc and tablet train on the data of phone, laptop and pc (owner j
    to worker j): each receives its 4, 3 or 3 samples (16 floats and an int64 label each:
    72 B a sample) from another device every step. bytes_per_worker counts what a worker
    sent: the ring's 2 (n - 1)/n S, not the data it received."""
    w = world(("phone", "laptop", "pc", "tablet"), data_on=("phone", "laptop", "pc"))
    job, sim = run(T.allreduce(w, workers=["laptop", "pc", "tablet"]), w)
    data = rows(sim, "transfer", "data")
    assert data.groupby(["device", "resource"]).nbytes.agg(["first", "count"]).to_dict(
        "index") == {("phone", "laptop"): {"first": 4 * 72, "count": 5},
                     ("laptop", "pc"): {"first": 3 * 72, "count": 5},
                     ("pc", "tablet"): {"first": 3 * 72, "count": 5}}
    assert job.metrics.frame().bytes_per_worker.tolist() == pytest.approx([2 * 2 / 3 * S] * 5)


def test_every_row_of_a_training_run_carries_its_step():
    """Kernels, transfers and step rows are tagged with the step they belong to."""
    w = world(steps=3)
    for plan in (T.allreduce(w), T.parameter_server(w, ["pc"], mode="asp"), T.gossip(w),
                 T.pipeline_train(w, ["phone", "pc"], microbatches=2)):
        _, sim = run(plan, w)
        log = sim.log.frame()
        work = log[log.kind.isin(["compute", "transfer", "step"])]
        assert set(work.step) == {0, 1, 2}, plan.strategy
