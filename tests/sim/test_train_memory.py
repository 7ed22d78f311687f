"""The memory a training plan is refused by before it runs is the memory its run holds:
`plan.train_memory.need` equals the simulated peak on every device, exactly, for every
protocol (so neither the rule nor the executors can drift without a failure)."""
from dataclasses import replace
from pathlib import Path

import pytest

from simdl import api
from simdl.errors import PlanError
from simdl.plan import train_memory
from simdl.plan import training as T
from simdl.scenario_jobs import is_jobs
from simdl.nn.models import mlp, tiny_transformer
from simdl.sim.engine import Simulator
from simdl.sim.training import PROTOCOLS, execute
from simdl.world import build, data_for
from simdl.yamlfile import read

from test_training_sync import PLANS, world

ROOT = Path(__file__).resolve().parents[2]
TRAINING = sorted(p for p in (ROOT / "scenarios").glob("*.yaml")
                  if not is_jobs(read(p)) and api.resolve(p).workload.kind == "training")


def peaks(plan, w):
    """The simulated peak of every device that trained (a federated client that was
    never sampled holds only its lasting memory: at most the rule, checked here)."""
    sim = Simulator(w.devices, w.network, timing_only=True)
    execute(plan, w, sim)
    log = sim.log.frame()
    trained = set(log[log.kind == "compute"].device)
    rule = train_memory.need(plan, w)
    for d, p in sim.memory_peak.items():
        assert p <= rule.get(d, 0.0), d
    return {d: p for d, p in sim.memory_peak.items() if p and d in trained}


def trained_need(plan, w):
    got = peaks(plan, w)
    return {d: v for d, v in train_memory.need(plan, w).items() if d in got}, got


MORE = {
    "ps-bsp-sharded-momentum": lambda w: T.parameter_server(w, ["phone", "laptop"]),
    "gossip-two": lambda w: T.gossip(w, workers=["phone", "pc"]),
    "local_sgd-all": lambda w: T.local_sgd(w, local_steps=1),
    "personalise": lambda w: T.personalise(w, freeze=1),
    "pipeline-1f1b": lambda w: T.pipeline_train(w, ["phone", "laptop", "pc"], microbatches=4,
                                                schedule="1f1b"),
    "pipeline-gpipe": lambda w: T.pipeline_train(w, ["pc", "phone"], microbatches=3),
    "ps-frozen-head": lambda w: T.parameter_server(w, ["pc"], freeze=1),
    "distill-to-itself": lambda w: T.distill(w, "pc", "student", "pc"),
}


def teaching_world():
    w = world(steps=2, momentum=0.9)
    return replace(w, models=dict(w.models) | {"student": mlp(16, 8, 1, 4, seed=3)})


@pytest.mark.parametrize("name", sorted(PLANS) + sorted(MORE))
def test_the_rule_equals_the_simulated_peak(name):
    w = teaching_world()
    plan = (PLANS | MORE)[name](w)
    rule, got = trained_need(plan, w)
    assert rule == got and got


@pytest.mark.parametrize("path", TRAINING, ids=[p.stem for p in TRAINING])
def test_every_shipped_training_strategy_peaks_where_the_rule_says(path):
    sc = api.resolve(path)
    w = build(sc)
    for i, entry in api.selected(sc, None):
        plan = api.train_plan(w, entry, i)
        rule, got = trained_need(plan, w)
        assert rule == got and got, entry.label or entry.name


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_the_rule_counts_sequence_labels(schedule):
    """A token model: each sample's labels are a sequence (N, T), so a batch moves and
    holds T labels per sample, as the rule says."""
    w = world(("phone", "pc"), steps=2)
    chain = tiny_transformer(vocab=8, d_model=16, n_heads=2, n_layers=1, seq_len=6)
    train, test = data_for(chain, 0)
    w = replace(w, models={"main": chain}, train_data=train, data=test)
    for plan in (T.allreduce(w), T.pipeline_train(w, ["phone", "pc"], microbatches=2,
                                                  schedule=schedule)):
        rule, got = trained_need(plan, w)
        assert rule == got and got


def test_every_protocol_is_covered():
    """A new protocol must appear in one of the plans above (by its sync kind)."""
    w = teaching_world()
    kinds = {f(w).sync.kind for f in (PLANS | MORE).values()}
    assert kinds >= set(PROTOCOLS)


def test_a_plan_that_can_never_fit_is_refused_with_the_numbers():
    w = world(("phone", "laptop", "pc"), steps=1)
    plan = T.allreduce(w)
    need = train_memory.need(plan, w)["phone"]
    small = dict(w.devices)
    small["phone"] = replace(small["phone"], memory=need - 1)
    tight = replace(w, devices=small)
    with pytest.raises(PlanError) as err:
        train_memory.check(plan, tight)
    assert str(err.value) == (f"devices.phone.memory: '{need / 2**20:.1f} MiB needed' is not "
                              f"valid; the plan must fit in {(need - 1) / 2**20:.1f} MiB")
    small["phone"] = replace(small["phone"], memory=need)
    train_memory.check(plan, replace(w, devices=small))  # exactly enough is enough


def test_the_rule_counts_checkpoints_where_the_run_holds_them():
    """Pipeline checkpoints: the checkpoint device holds the whole model's weights and
    optimizer state, each stage device a copy of its own stage's beside its running state."""
    w = teaching_world()
    plan = T.pipeline_train(w, ["phone", "laptop"], microbatches=2, checkpoint_every=1,
                            checkpoint_to="pc")
    bare = train_memory.need(T.pipeline_train(w, ["phone", "laptop"], microbatches=2), w)
    sim = Simulator(w.devices, w.network, timing_only=True)
    execute(plan, w, sim)
    rule = train_memory.need(plan, w)
    assert {d: sim.memory_peak[d] for d in rule} == rule
    assert rule["pc"] > 0 and all(rule[d] > bare[d] for d in ("phone", "laptop"))
