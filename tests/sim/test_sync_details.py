"""Gossip and federated averaging in detail: the consensus step, the ring, the mixing and
averaging kernels, the time and spread they report, the model evaluated after a worker
leaves, and how clients are sampled among those online. Each test pins a piece that an
operator-mutation sweep of sim/sync.py found no test could tell from a wrong version.

The model and pool are test_training_sync's (mlp(16, 32, 2, 4): 1,732 float32
parameters, S = 6,928 bytes)."""
from dataclasses import replace

import numpy as np
import pytest
from test_training_churn import _join_at, _leave_at, _run
from test_training_sync import S, SIZES, rows, world

from simdl.nn.chain import Block, Chain
from simdl.nn.compose import Sequential
from simdl.nn.layers import BatchNorm, Linear, ReLU
from simdl.plan import training as T
from simdl.rng import stream
from simdl.sim.engine import Simulator
from simdl.sim.sync import consensus, ring
from simdl.sim.training import execute

PARAMETERS = sum(SIZES.values())  # 1732
RING = ("phone", "laptop", "pc", "tablet")


def test_the_consensus_step_shrinks_with_the_share_topk_sends_and_is_one_otherwise():
    """CHOCO's step for top-k: min(1, 2 sqrt(ratio)); 1 for every other codec."""
    assert [consensus("topk", r) for r in (0.01, 0.04, 0.09, 0.25, 0.5)] == \
        [0.2, 0.4, 0.6, 1.0, 1.0]
    assert [consensus(kind, 0.01) for kind in ("none", "sign", "fp16", "int8")] == [1.0] * 4


def test_the_ring_links_each_worker_to_the_one_before_and_after():
    assert ring(1) == [[]]
    assert ring(2) == [[1], [0]]
    assert ring(4) == [[3, 1], [0, 2], [1, 3], [2, 0]]


def test_gossip_compresses_without_error_feedback():
    """The public copies carry what error feedback would: each worker's compressor has
    none, whatever the codec."""
    w = world(RING, steps=1)
    job, _ = _run(T.gossip(w, compression="topk", ratio=0.1), w, timing_only=True)
    assert [x.comp.kind for x in job.workers] == ["topk"] * 4
    assert not any(x.comp.error_feedback for x in job.workers)


def test_the_mixing_and_averaging_kernels_charge_their_arithmetic():
    """Gossip, two neighbours heard: 3 x 2 x 1732 FLOPs (difference, scale, add per
    neighbour and parameter) over (2 x 2 + 2) x S bytes. A federated round of 3 clients:
    the server's average, 2 x 3 x 1732 FLOPs over (3 + 2) x S bytes."""
    w = world(RING, steps=2)
    _, sim = _run(T.gossip(w), w, timing_only=True)
    mix = rows(sim, "compute", "mix")
    assert len(mix) == 4 * 2
    assert set(mix.flops) == {3.0 * 2 * PARAMETERS} and set(mix.nbytes) == {6.0 * S}
    w = world(steps=2)
    _, sim = _run(T.local_sgd(w, local_steps=1), w, timing_only=True)
    average = rows(sim, "compute", "average")
    assert list(average.device) == ["phone", "phone"]
    assert set(average.flops) == {2.0 * 3 * PARAMETERS} and set(average.nbytes) == {5.0 * S}


@pytest.mark.parametrize("protocol", ["gossip", "local_sgd"])
def test_a_steps_compute_time_is_its_kernels_including_the_mixing(protocol):
    """The metrics' compute_s of each step is the mean over the workers that reported of
    the seconds their kernels of that step ran (gossip's mix among them), as the log
    has them; comm_s and wait_s are never negative."""
    w = world(RING, steps=3)
    plan = T.gossip(w) if protocol == "gossip" else T.local_sgd(w, local_steps=2)
    job, sim = _run(plan, w, timing_only=True)
    kernels = rows(sim, "compute")
    kernels = kernels[kernels.label != "average"]  # the server's, not a client's step
    busy = (kernels.t_end - kernels.t_start).groupby([kernels.step, kernels.device]).sum()
    df = job.metrics.frame()
    assert list(df.step) == [0, 1, 2]
    for step, got in zip(df.step, df.compute_s):
        assert got == pytest.approx(busy[step].mean(), rel=1e-12)
    assert (df.comm_s > 0).all() and (df.wait_s >= 0).all()
    if protocol == "gossip":
        assert set(kernels.label[kernels.step == 0]) >= {"mix"}


def test_gossip_spread_is_the_rms_distance_of_the_workers_to_their_mean():
    """After the last step's mixing, spread_after (and the run's `disagreement`) is the
    root mean square over workers of each model's L2 distance to the mean model."""
    w = world(RING, steps=3, batch=32, shards="by_class")
    job, _ = _run(T.gossip(w), w)
    flat = np.stack([np.concatenate([x.params[n].ravel() for n in SIZES]) for x in job.workers])
    hand = np.sqrt(np.mean(np.sum((flat - flat.mean(axis=0)) ** 2, axis=1)))
    assert len(job.series["spread_after"]) == 3
    assert job.series["spread_after"][-1] == pytest.approx(hand, rel=1e-5)
    assert job.metrics.extra["disagreement"] == job.series["spread_after"][-1]
    assert job.series["spread_before"][-1] > job.series["spread_after"][-1]


def _bn_world(steps):
    """test_training_sync's world with a BatchNorm after the first Linear (buffers to
    average)."""
    rng = stream(0, "mlp")
    chain = Chain([Block("fc1", Sequential([Linear(16, 32, rng), BatchNorm(32), ReLU()])),
                   Block("head", Sequential([Linear(32, 4, rng)]))], (16,), np.float32, 4, "bn")
    return replace(world(RING, steps=steps), models={"main": chain})


def test_after_a_worker_leaves_gossip_evaluates_the_mean_of_those_present():
    """The pc leaves after step 1's mixing: the model evaluated is the plain mean of the
    phone's, the laptop's and the tablet's parameters, and of their BatchNorm statistics
    (each at weight 1/3); the spread is still reported every step, over the three."""
    w = _bn_world(steps=3)
    plan = T.gossip(w)
    _, probe = _run(plan, w, timing_only=True)
    mix = rows(probe, "compute", "mix")
    leave = float(mix[(mix.device == "pc") & (mix.step == 1)].t_end.iloc[0]) + 1e-9
    job, sim = _run(plan, w, leaves=[("pc", leave)])
    assert "pc" in sim.gone
    here = [x for x in job.workers if x.device != "pc"]
    model = job.model()
    for n, p in model.params().items():
        np.testing.assert_array_equal(p, np.mean([x.chain.params()[n] for x in here], axis=0))
    for n, b in model.buffers().items():
        expect = sum((1.0 / 3) * x.chain.buffers()[n] for x in here)
        np.testing.assert_array_equal(b, expect)
        assert not np.array_equal(b, here[0].chain.buffers()[n])
    assert len(job.series["spread_after"]) == 3



def test_a_gossip_worker_that_left_stays_out_when_its_device_returns():
    """The pc leaves after step 1's mixing and is back before step 3: gossip has no
    rejoining, so its neighbours neither wait for it nor send to it again, the three
    others report every later step, and the model evaluated is their mean alone."""
    w = world(RING, steps=5)
    plan = T.gossip(w)
    _, probe = _run(plan, w, timing_only=True)
    mix = rows(probe, "compute", "mix")
    leave = float(mix[(mix.device == "pc") & (mix.step == 1)].t_end.iloc[0]) + 1e-9
    back = float(mix[(mix.device == "phone") & (mix.step == 2)].t_end.iloc[0])
    sim = Simulator(w.devices, w.network)
    _leave_at(sim, "pc", leave)
    _join_at(sim, "pc", back)
    job = execute(plan, w, sim)
    assert "pc" not in sim.gone
    steps = rows(sim, "step")
    assert steps.groupby("step").size().to_dict() == {0: 4, 1: 4, 2: 3, 3: 3, 4: 3}
    gossip = rows(sim, "transfer", "gossip")
    assert not ((gossip.step >= 2) & ((gossip.device == "pc") | (gossip.resource == "pc"))).any()
    here = [x for x in job.workers if x.device != "pc"]
    for n, p in job.model().params().items():
        np.testing.assert_array_equal(p, np.mean([x.chain.params()[n] for x in here], axis=0))


def test_two_gossip_workers_one_leaves_the_other_is_the_model():
    w = world(("phone", "laptop"), steps=3)
    plan = T.gossip(w)
    _, probe = _run(plan, w, timing_only=True)
    mix = rows(probe, "compute", "mix")
    leave = float(mix[(mix.device == "laptop") & (mix.step == 0)].t_end.iloc[0]) + 1e-9
    job, _ = _run(plan, w, leaves=[("laptop", leave)])
    phone = job.workers[0]
    for n, p in job.model().params().items():
        np.testing.assert_array_equal(p, phone.chain.params()[n])


def test_gossip_comm_time_is_the_union_of_its_transfers_after_it_began_to_wait():
    """A gossip worker waits from the end of its local step (its optimizer kernel): its
    comm time is the union of its step's gossip transfers, sent or received, cut to
    after that instant; comm_s is the mean over the workers."""
    w = world(RING, steps=3)
    job, sim = _run(T.gossip(w), w, timing_only=True)
    log = sim.log.frame()
    opt = log[(log.kind == "compute") & log.label.str.startswith("opt")]
    gossip = rows(sim, "transfer", "gossip")
    for step, got in zip(job.metrics.frame().step, job.metrics.frame().comm_s):
        comm = []
        for d in RING:
            t = opt[(opt.device == d) & (opt.step == step)].t_end.max()
            mine = gossip[(gossip.step == step) & ((gossip.device == d) | (gossip.resource == d))
                          & (gossip.t_end > t)]
            spans = sorted((max(t, a), b) for a, b in zip(mine.t_start, mine.t_end))
            total, reach = 0.0, -np.inf
            for a, b in spans:
                if b > reach:
                    total, reach = total + b - max(a, reach), b
            comm.append(total)
        assert got == pytest.approx(np.mean(comm), rel=1e-12)
        assert got > 0


def _picks(n_clients, m, online_from):
    """Each round's sampled clients by hand, from the "clients" stream: m of all n while
    all are online, else m of those online (`online_from[r]`, when given for round r)."""
    rng, out = stream(0, "clients"), []
    for r in range(len(online_from)):
        here = online_from[r]
        if len(here) == n_clients:
            out.append(sorted(int(i) for i in rng.choice(n_clients, size=m, replace=False)))
        else:
            out.append(sorted(here[int(j)] for j in rng.choice(len(here), size=m,
                                                                   replace=False)))
    return out


def test_federated_rounds_sample_among_the_clients_online():
    """Four clients, two a round. The tablet leaves during round 0's average, after its
    change (if it was sampled) has arrived: round 0 samples 2 of all 4, rounds 1 and 2
    sample 2 of the 3 online (phone, laptop, pc), each by the "clients" stream."""
    w = world(RING, steps=3, batch=16)
    plan = T.local_sgd(w, local_steps=1, clients=2)
    _, probe = _run(plan, w, timing_only=True)
    average = rows(probe, "compute", "average").iloc[0]
    job, sim = _run(plan, w, leaves=[("tablet", (average.t_start + average.t_end) / 2)],
                    timing_only=True)
    steps = rows(sim, "step")
    got = [sorted(RING.index(d) for d in steps[steps.step == r].device) for r in range(3)]
    assert got == _picks(4, 2, [[0, 1, 2, 3], [0, 1, 2], [0, 1, 2]])
    assert "clients_dropped" not in job.metrics.extra  # none sampled left mid-round


def test_a_round_whose_every_sampled_client_leaves_is_lost():
    """One client a round of three. In the first round that samples a client other than
    the server (the phone), that client leaves during its local step: nobody reports, the
    round changes nothing and counts as lost (steps_lost 1, clients_dropped 1)."""
    w = world(steps=3)
    plan = T.local_sgd(w, local_steps=1, clients=1)
    names = ["phone", "laptop", "pc"]
    picks = _picks(3, 1, [[0, 1, 2]] * 3)
    r = next(k for k, (i,) in enumerate(picks) if i != 0)
    device = names[picks[r][0]]
    _, probe = _run(plan, w, timing_only=True)
    fwd = rows(probe, "compute", "fwd fc1")
    at = fwd[(fwd.device == device) & (fwd.step == r)].iloc[0]
    job, _ = _run(plan, w, leaves=[(device, (at.t_start + at.t_end) / 2)], timing_only=True)
    assert job.metrics.extra["steps_lost"] == 1
    assert job.metrics.extra["clients_dropped"] == 1
    assert r not in set(job.metrics.frame().step)
