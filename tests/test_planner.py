"""The planner at the edge: the search's best few re-scored by simulation, and the
estimator's error table."""
from dataclasses import replace

import pytest

from test_search import weak_over_slow_link

from simdl.plan.search import search
from simdl.plan.space import Space
from simdl.plan.world import Arrival
from simdl.planner import choose, errors, saturated, simulate


def test_choose_returns_the_simulated_best_of_the_top_candidates():
    world = weak_over_slow_link()
    chosen = choose(world, "throughput", Space(microbatches=(1, 2)), top=4)
    ranked = [s.plan for s in chosen.found.ranked[:4]]
    assert len(chosen.measured) == len(ranked)
    best = max(range(len(ranked)), key=lambda i: (chosen.measured[i].throughput, -i))
    assert chosen.plan == ranked[best]
    assert all(m.plan == p for m, p in zip(chosen.measured, ranked))


def test_latency_is_measured_on_the_worlds_own_workload():
    world = weak_over_slow_link()
    chosen = choose(world, "latency", top=2)
    assert chosen.measured[0].p50 == pytest.approx(simulate(chosen.found.ranked[0].plan, world).p50)


def test_a_saturated_world_keeps_every_device_busy_with_a_closed_loop():
    world = weak_over_slow_link()
    busy = saturated(world, 5)
    assert busy.workload.arrival == Arrival("closed", concurrency=5)
    assert busy.workload.requests == world.workload.requests


def test_the_error_table_is_zero_where_the_estimate_says_exact():
    world = weak_over_slow_link()
    plans = [s.plan for s in search(world, "latency").ranked[:3]]
    table = errors(plans, world)
    assert list(table.plan) == [p.describe() for p in plans]
    exact = table[table.exact]
    assert len(exact) and (exact.throughput_rps_err.abs() < 1e-9).all()
    assert (exact.p50_s_err.abs() < 1e-9).all()


def test_a_queueing_world_reports_its_error_and_says_so():
    world = weak_over_slow_link()
    world = replace(world, workload=replace(world.workload, arrival=Arrival("poisson", rate=400.0)))
    table = errors([search(world, "throughput").best.plan], world)
    assert not table.exact.iloc[0] and table.method.iloc[0].startswith("queueing")
