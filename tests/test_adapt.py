"""Personalisation and distillation, end to end on their shipped scenarios."""
from pathlib import Path

import pytest

from simdl import api

ROOT = Path(__file__).resolve().parents[1]


def test_personalised_heads_beat_the_shared_model_on_each_devices_own_classes():
    run = api.run(ROOT / "scenarios" / "train_personalise.yaml", "head")
    row = run["head"].summary.iloc[0]
    devices = ["phone", "tablet", "watch", "laptop"]
    gains = [row[f"accuracy_personal@{d}"] - row[f"accuracy_shared@{d}"] for d in devices]
    assert sum(gains) / len(gains) > 0.05, gains
    e = run["head"].events
    assert e[e.kind == "transfer"].empty  # local data never leaves its device


def test_distillation_ships_only_the_student_and_times_it_on_the_target():
    run = api.run(ROOT / "scenarios" / "train_distill.yaml", "t4")
    row = run["t4"].summary.iloc[0]
    e = run["t4"].events
    shipped = e[e.kind == "transfer"]
    assert shipped.label.tolist() == ["student weights"]
    assert shipped.nbytes.sum() == pytest.approx(row["student_MB"] * 1e6)
    assert row["student_MB"] < row["teacher_MB"] / 10
    assert row["student_latency_ms"] > 0
    assert row["student_accuracy"] > 0.5 and row["teacher_accuracy"] > 0.5
