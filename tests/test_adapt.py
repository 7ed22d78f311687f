"""Personalisation and distillation, end to end on their shipped scenarios."""
from pathlib import Path

import numpy as np
import pytest
from test_training_sync import world

from simdl import api
from simdl.nn.fit import evaluate
from simdl.plan import training as T
from simdl.sim.batches import owner_shares
from simdl.sim.engine import Simulator
from simdl.sim.training import execute
from simdl.world import build

ROOT = Path(__file__).resolve().parents[1]


def test_personalised_heads_beat_the_shared_model_on_each_devices_own_classes():
    run = api.run(ROOT / "scenarios" / "train_personalise.yaml", "head")
    row = run["head"].summary.iloc[0]
    devices = ["phone", "tablet", "watch", "laptop"]
    gains = [row[f"accuracy_personal@{d}"] - row[f"accuracy_shared@{d}"] for d in devices]
    assert sum(gains) / len(gains) > 0.05, gains
    e = run["head"].events
    assert e[e.kind == "transfer"].empty  # local data never leaves its device


@pytest.fixture(scope="module")
def distilled():
    """train_distill.yaml's t4 strategy, run once for the tests below: (scenario, run)."""
    sc = api.resolve(ROOT / "scenarios" / "train_distill.yaml")
    return sc, api.run(sc, "t4")


def test_distillation_ships_only_the_student_and_times_it_on_the_target(distilled):
    _, run = distilled
    row = run["t4"].summary.iloc[0]
    e = run["t4"].events
    shipped = e[e.kind == "transfer"]
    assert shipped.label.tolist() == ["student weights"]
    assert shipped.nbytes.sum() == pytest.approx(row["student_MB"] * 1e6)
    assert row["student_MB"] < row["teacher_MB"] / 10
    assert row["student_latency_ms"] > 0
    assert row["student_accuracy"] > 0.5 and row["teacher_accuracy"] > 0.5


def test_distillation_reports_what_it_shipped_and_the_targets_own_time(distilled):
    """shipped_MB and student_MB are the student's weights (the one transfer), teacher_MB
    the teacher's; student_latency_ms is the student's inference kernels on the target,
    back to back, from the first's start to the last's end."""
    sc, run = distilled
    row = run["t4"].summary.iloc[0]
    e = run["t4"].events
    transfer = e[e.kind == "transfer"]
    shipped = float(transfer.nbytes.sum())
    assert row["shipped_MB"] == row["student_MB"] == shipped / 1e6
    teacher = build(sc, timing_only=True, pretrain=False).chain  # its size, not its values
    assert row["teacher_MB"] == teacher.param_bytes() / 1e6
    kernels = e[(e.kind == "compute") & e.label.str.startswith("student ")]
    assert len(kernels) > 0 and set(kernels.device) == set(transfer.resource)  # the target
    span = kernels.t_end.max() - kernels.t_start.min()
    assert row["student_latency_ms"] == pytest.approx(span * 1e3, rel=1e-12)


def test_personalisation_reports_the_mean_loss_of_the_workers_own_copies():
    """The held-out loss of a personalisation run is the mean over workers of each
    copy's loss on the test samples of the classes its own data holds."""
    w = world(("phone", "laptop", "pc"), steps=2, shards="by_class", eval_every=2)
    job = execute(T.personalise(w, freeze=1), w, Simulator(w.devices, w.network))
    shares = owner_shares(w, job.owners)
    losses = []
    for x in job.workers:
        classes = np.unique(np.concatenate([shares[j].y for j in x.owners]))
        losses.append(evaluate(x.chain, w.data.restricted(classes))[0])
    assert job.metrics.frame().eval_loss.iloc[-1] == float(np.mean(losses))
