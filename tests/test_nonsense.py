"""Nonsense is refused, with the reason (issue 13): each case is a shipped scenario with
one field changed, which `simdl run` refuses in one line naming the field, exit 2, before
anything runs (no run folder). And a training run whose loss blows up ends there, as a
recorded outcome."""
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_cli import assert_one_clear_line

from simdl import api
from simdl.cli import main
from simdl.plan import training as T
from simdl.plan.strategies import ensemble
from simdl.sim.engine import Simulator
from simdl.sim.training import execute

ROOT = Path(__file__).resolve().parents[1]


def variant(tmp_path: Path, scenario: str, old: str, new: str) -> Path:
    """scenarios/<scenario>.yaml with its one `old` replaced by `new`, in tmp_path."""
    text = (ROOT / "scenarios" / f"{scenario}.yaml").read_text()
    assert text.count(old) == 1, f"{old!r} is not once in {scenario}.yaml"
    path = tmp_path / f"{scenario}.yaml"
    path.write_text(text.replace(old, new))
    return path


def refused(path: Path, expect: str, capsys, *flags: str) -> None:
    """`simdl run` refuses `path` in one line matching `expect`, before running anything."""
    out = path.parent / "run"
    assert_one_clear_line(["run", str(path), "--timing-only", "--out", str(out), *flags],
                          expect, capsys)
    assert not out.exists()


# Each: id -> (scenario, old, new, the line expected). The old code ran every one of them.
CASES = {
    # a quantity without its unit: a network parameter was read as 100 B/s, a device's
    # memory as 4 bytes
    "airtime_without_unit": (
        "train_compression", "airtime: 20Mbps", "airtime: 100",
        r"^network\.airtime: 100(\.0)? is not valid; write the unit: a bandwidth such as "),
    "device_memory_without_unit": (
        "quickstart", "{name: tv, type: smart_tv}", "{name: tv, type: smart_tv, memory: 4}",
        r"^devices\[2\]\.memory: 4 is not valid; write the unit: a size such as '4GiB'"),
    # an infinite or NaN number anywhere, typed field or plug-in parameter
    "infinite_rate": (
        "priorities", "rate: 250", "rate: .inf",
        r"^workload\.arrival\.rate: inf is not valid; a finite number$"),
    "nan_strategy_parameter": (
        "ensemble", "fuse: vote}", "fuse: vote, ratio: .nan}",
        r"^strategies\[2\]\.ratio: nan is not valid; a finite number$"),
    # request classes: shares summing to 0.7, a name used twice
    "shares_not_summing_to_1": (
        "priorities", "share: 0.8", "share: 0.5",
        r"^workload\.classes\.share: 0\.7 is not valid; the shares .* must sum to 1$"),
    "class_name_twice": (
        "priorities", "name: background", "name: interactive",
        r"^workload\.classes\[1\]\.name: 'interactive' is not valid; class names must be"),
    # the same device twice where each place holds a different part of the work
    "pipeline_device_twice": (
        "hybrid", "devices: [phone, pc]", "devices: [phone, phone]",
        r"^strategies\[0\]\.devices: 'phone' is not valid; each device at most once in a pip"),
    "data_parallel_device_twice": (
        "priorities", "least-loaded, devices: [phone, tablet, phone2]",
        "least-loaded, devices: [phone, tablet, tablet]",
        r"^strategies\[0\]\.devices: 'tablet' is not valid; each .* in a data-parallel group"),
    "tensor_parallel_device_twice": (
        "tensor_parallel", "wired, devices: [laptop, pc]", "wired, devices: [pc, pc]",
        r"^strategies\[1\]\.devices: 'pc' is not valid; each .* in a tensor-parallel group"),
    "hybrid_device_twice_in_a_replica": (
        "hybrid", "pair, pipelines: [[[phone], [laptop, pc]]]",
        "pair, pipelines: [[[pc], [laptop, pc]]]",
        r"^strategies\[1\]\.pipelines\[0\]: 'pc' is not valid; each .* in a replica's st"),
    "ensemble_same_model_twice_on_a_device": (
        "ensemble", "mean, devices: [phone, tablet, watch], models: [main, b, c]",
        "mean, devices: [phone, phone, watch], models: [b, b, c]",
        r"^strategies\[1\]\.devices: 'b@phone' is not valid; each .* for the same model"),
    "parameter_server_twice": (
        "train_ring_vs_ps", "servers: [phone0], mode: bsp", "servers: [phone0, phone0], mode: bsp",
        r"^strategies\[3\]\.servers: 'phone0' is not valid; each device at most once in the s"),
    "worker_twice": (
        "train_gossip", "label: ring-allreduce, algorithm: ring",
        "label: ring-allreduce, workers: [tablet, tablet]",
        r"^strategies\[0\]\.workers: 'tablet' is not valid; each device at most once in the w"),
    "data_owner_twice": (
        "train_ring_vs_ps", "data_on: [phone0, phone1, phone2, phone3]",
        "data_on: [phone0, phone1, phone1]",
        r"^workload\.data_on: \[.*\] is not valid; each device .*; 'phone1' is listed twice$"),
    # a learning rate that is infinite or absurd
    "lr_infinite": (
        "train_fedavg", "lr: 0.1", "lr: .inf",
        r"^workload\.lr: inf is not valid; a finite number$"),
    "lr_absurd": (
        "train_fedavg", "lr: 0.1", "lr: 1e6",
        r"^workload\.lr: '1e6' is not valid; input should be less than or equal to 10"),
    # more clients per round than workers; gossip alone; a pipeline of one
    "more_clients_than_workers": (
        "train_fedavg", "clients: 3", "clients: 100",
        r"^strategies\[1\]\.clients: 100 is not valid; at most the 5 workers"),
    "gossip_with_one_worker": (
        "train_gossip", "{name: gossip, label: gossip}",
        "{name: gossip, label: gossip, workers: [tablet]}",
        r"^strategies\[1\]\.workers: \['tablet'\] is not valid; gossip needs at least two"),
    "pipeline_training_on_one_device": (
        "train_pipeline", "gpipe, devices: [pc, tablet, phone]", "gpipe, devices: [pc]",
        r"^strategies\[1\]\.devices: \['pc'\] is not valid; pipeline training needs at le"),
    # a boolean (or a fraction) where a whole number goes was taken as 1 (or cut to 2)
    "requests_true": (
        "quickstart", "requests: 40", "requests: true",
        r"^workload\.requests: True is not valid; input should be a valid integer$"),
    "plugin_parameter_true": (
        "quickstart", "microbatches: 4", "microbatches: true",
        r"^strategies\[2\]\.microbatches: True is not valid; input should be a valid integer$"),
    "steps_fraction": (
        "train_fedavg", "steps: 15", "steps: 2.5",
        r"^workload\.steps: 2\.5 is not valid; input should be a valid integer$"),
    "seed_negative": (
        "quickstart", "seed: 0", "seed: -1",
        r"^seed: -1 is not valid; input should be greater than or equal to 0$"),
}


@pytest.mark.parametrize("case", CASES)
def test_nonsense_is_refused_in_one_line_before_anything_runs(case, tmp_path, capsys):
    scenario, old, new, expect = CASES[case]
    refused(variant(tmp_path, scenario, old, new), expect, capsys)


def test_a_negative_seed_flag_is_refused_like_the_field(tmp_path, capsys):
    path = tmp_path / "quickstart.yaml"
    path.write_text((ROOT / "scenarios" / "quickstart.yaml").read_text())
    refused(path, r"^seed: -1 is not valid; input should be greater than or equal to 0$",
            capsys, "--seed", "-1")


def test_zero_needs_no_unit_and_units_are_still_read(tmp_path, capsys):
    """Only a bare non-zero quantity is a slip: `0` is zero in every unit."""
    path = variant(tmp_path, "train_compression", "airtime: 20Mbps",
                   "airtime: 20Mbps, latency: 0, overhead: 0")
    assert main(["validate", str(path)]) == 0


def test_one_device_may_run_two_different_models_of_an_ensemble():
    sc = api.resolve(ROOT / "scenarios" / "ensemble.yaml")
    p = ensemble(api.build(sc), ["phone", "phone", "watch"], ["main", "b", "c"])
    assert [(r.model, r.stages[0].device) for r in p.replicas] == [
        ("main", "phone"), ("b", "phone"), ("c", "watch")]


def test_hybrid_replicas_may_share_a_device():
    """The shipped two-replicas layout puts pc in both replicas: still valid."""
    assert main(["validate", str(ROOT / "scenarios" / "hybrid.yaml")]) == 0


# -- a training run that diverges ends there, as a recorded outcome ---------------------

def diverging_world(lr: float):
    """train_ring_vs_ps's world with the learning rate set past what the schema allows."""
    world = api.build(api.resolve(ROOT / "scenarios" / "train_ring_vs_ps.yaml"))
    return replace(world, workload=replace(world.workload, lr=lr, target_accuracy=None))


def test_a_nan_loss_stops_the_job_and_records_the_step():
    world = diverging_world(1e6)
    sim = Simulator(world.devices, world.network)
    job = execute(T.allreduce(world), world, sim)
    losses = job.metrics.frame().loss.tolist()
    k = next(i for i, x in enumerate(losses) if not math.isfinite(x))
    assert k > 0 and all(np.isfinite(losses[:k]))
    assert job.metrics.extra["outcome"] == f"diverged at step {k}"
    assert len(losses) == k + 1 < world.workload.steps         # no step after it ran
    log = sim.log.frame()
    assert log[log.kind == "step"].step.max() == k


def test_timing_only_has_no_loss_so_it_never_diverges():
    world = diverging_world(1e6)
    job = execute(T.allreduce(world), world, Simulator(world.devices, world.network,
                                                       timing_only=True))
    assert "outcome" not in job.metrics.extra
    assert len(job.metrics.frame()) == world.workload.steps


def test_the_outcome_is_a_summary_column_and_a_note(tmp_path, capsys):
    """lr 10 (the most the schema takes) with momentum 0.9 diverges here: the summary
    says at which step, `run` prints a note; the run that converges says so too."""
    path = variant(tmp_path, "train_ring_vs_ps", "lr: 0.1", "lr: 10\n  momentum: 0.9")
    run = api.run(api.resolve(path), "ring")
    outcome = run["ring"].summary.outcome.iloc[0]
    k = int(outcome.removeprefix("diverged at step "))
    assert len(run["ring"].extra["training"]) == k + 1
    assert main(["run", str(path), "--strategy", "ring", "--out", str(tmp_path / "run")]) == 0
    assert f"note: ring diverged at step {k} (loss nan)" in capsys.readouterr().out
    fine = api.run(api.resolve(ROOT / "scenarios" / "train_ring_vs_ps.yaml"), "ring")
    assert fine["ring"].summary.outcome.iloc[0].startswith("target reached at step ")
