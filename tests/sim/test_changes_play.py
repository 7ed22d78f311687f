"""Sources of change played on the engine: at their times, deterministic, never keeping a run alive."""
from types import SimpleNamespace

import numpy as np
import pytest
from test_engine import device

from simdl.errors import DeviceGone
from simdl.hw.topologies import links
from simdl.plan.world import Change, Profile
from simdl.rng import stream
from simdl.sim import flows as flows_module
from simdl.sim.changes import start_changes
from simdl.sim.engine import Simulator

#: The flow engine's paths: numpy for any number of flows (0), plain Python for a few.
PATHS = [0, flows_module.FEW]


def played(sim, *changes, seed=0):
    start_changes(SimpleNamespace(changes=changes, seed=seed), sim)


def rows(sim, *kinds):
    log = sim.log.frame()
    log = log[log.kind.isin(kinds)]
    return list(zip(log.kind, log.t_start, log.label))


def busy_until(sim, t):
    """Work (not a daemon) that keeps the run going until t."""
    sim.env.timeout(t)


def test_a_periodic_presence_profile_leaves_and_joins_until_the_work_ends():
    """Gone 2-3 s of every 5: leaves at 2 and 7, joins at 3 and 8; the run ends with
    its work at 11, though the profile goes on for ever."""
    sim = Simulator({"a": device()})
    played(sim, Change("presence", "a", Profile(((0.0, 1.0), (2.0, 0.0), (3.0, 1.0)), 5.0)))
    busy_until(sim, 11.0)
    sim.run()
    assert sim.now == 11.0
    assert rows(sim, "leave", "join") == [("leave", 2.0, "absent"), ("join", 3.0, "present"),
                                          ("leave", 7.0, "absent"), ("join", 8.0, "present")]


def test_changes_alone_do_not_keep_a_run_alive():
    sim = Simulator({"a": device()})
    played(sim, Change("presence", "a", Profile(((1.0, 0.0), (2.0, 1.0)), 4.0)),
           Change("availability", "a", up=1.0, down=1.0))
    sim.run()
    assert sim.now == 0.0 and len(sim.log) == 0


def test_random_availability_draws_its_own_stream_and_is_the_same_every_time():
    """Up and down times are exponential draws, in turn, from "availability/<device>"."""
    rng = stream(7, "availability/a")
    t, expected = 0.0, []
    for _ in range(3):
        t += rng.exponential(30.0)
        expected.append(("leave", t, "absent"))
        t += rng.exponential(10.0)
        expected.append(("join", t, "present"))
    logs = []
    for _ in range(2):
        sim = Simulator({"a": device(), "b": device()})
        played(sim, Change("availability", "a", up=30.0, down=10.0),
               Change("availability", "b", up=5.0, down=5.0), seed=7)
        busy_until(sim, t + 1e-9)
        sim.run()
        logs.append(sim.log.rows)
        a = [(k, s, why) for k, s, why, d in zip(*(sim.log.frame()[c] for c in
             ("kind", "t_start", "label", "device"))) if d == "a"]
        assert a == expected
    assert logs[0] == logs[1]
    other = Simulator({"a": device()})
    played(other, Change("availability", "a", up=30.0, down=10.0), seed=8)
    busy_until(other, t)
    other.run()
    assert rows(other, "leave")[0][1] != expected[0][1]


def test_someone_waiting_for_a_device_keeps_the_run_going_until_it_joins():
    """A kernel is lost at 1 s; its process waits for the device to come back (3 s),
    then redoes it: 3 -> 5 s. Nothing but the profile is scheduled while it waits."""
    sim = Simulator({"a": device()})
    played(sim, Change("presence", "a", Profile(((1.0, 0.0), (3.0, 1.0)), 10.0)))
    done = []

    def work():
        try:
            yield sim.compute("a", 1e9)
        except DeviceGone:
            yield sim.arrival("a")
            yield sim.compute("a", 1e9)
        done.append(sim.now)

    sim.process(work())
    sim.run()
    assert done == [5.0] and sim.now == 5.0


def test_a_wait_for_a_device_that_never_returns_ends_the_run():
    sim = Simulator({"a": device()})
    played(sim, Change("presence", "a", Profile(((1.0, 0.0),))))
    waiting = []

    def work():
        try:
            yield sim.compute("a", 1e9)
        except DeviceGone:
            waiting.append(sim.now)
            yield sim.arrival("a")

    sim.process(work())
    sim.run()
    assert waiting == [1.0] and not sim.arrival("a").triggered
    assert sim.now == 2.0  # the lost kernel's end, still in simpy's queue, is the last event


@pytest.mark.parametrize("few", PATHS)
def test_a_transfer_stalled_on_a_dropped_link_waits_for_the_link_to_return(few, monkeypatch):
    """10 MB at 1 MB/s; the link is down from 5 s to 8 s: it ends at 13 s."""
    monkeypatch.setattr(flows_module, "FEW", few)
    devices = {"a": device(), "b": device()}
    net = links(devices, links=[{"a": "a", "b": "b", "bandwidth": 1e6}], overhead=0.0)
    sim = Simulator(devices, net)
    played(sim, Change("bandwidth", "a-b", Profile(((5.0, 0.0), (8.0, 1.0)), 20.0)))
    flow = sim.transfer("a", "b", 1e7)
    sim.run()
    assert flow.value.t_end == 13.0 and sim.now == 13.0
    assert rows(sim, "link") == [("link", 5.0, "bandwidth x0"), ("link", 8.0, "bandwidth x1")]


@pytest.mark.parametrize("few", PATHS)
def test_a_link_down_past_the_transfers_first_end_still_revives_the_run(few, monkeypatch):
    """The same, down from 5 s to 12 s: the wake-up for the end at 10 s goes stale, and
    from then on only the link's return is scheduled, a daemon that keeps the run going
    because the flow is stalled. It ends at 17 s."""
    monkeypatch.setattr(flows_module, "FEW", few)
    devices = {"a": device(), "b": device()}
    net = links(devices, links=[{"a": "a", "b": "b", "bandwidth": 1e6}], overhead=0.0)
    sim = Simulator(devices, net)
    played(sim, Change("bandwidth", "a-b", Profile(((5.0, 0.0), (12.0, 1.0)))))
    flow = sim.transfer("a", "b", 1e7)
    sim.run()
    assert flow.value.t_end == 17.0 and sim.now == 17.0


@pytest.mark.parametrize("few", PATHS)
def test_a_link_change_after_the_last_transfer_does_not_extend_the_run(few, monkeypatch):
    """10 MB at 1 MB/s ends at 10 s; the link's bandwidth doubles at 20 s, a change that
    could revive a stalled flow, but none is stalled: the run ends at 10 s."""
    monkeypatch.setattr(flows_module, "FEW", few)
    devices = {"a": device(), "b": device()}
    net = links(devices, links=[{"a": "a", "b": "b", "bandwidth": 1e6}], overhead=0.0)
    sim = Simulator(devices, net)
    played(sim, Change("bandwidth", "a-b", Profile(((20.0, 2.0),))))
    flow = sim.transfer("a", "b", 1e7)
    sim.run()
    assert flow.value.t_end == 10.0 and sim.now == 10.0


def test_a_speed_profile_and_a_loss_profile_take_effect_at_their_times():
    """A 4 s kernel at half speed from 1 s ends at 7 s; a 10 MB transfer at 1 MB/s with
    loss 0.5 from 2 s: 2 MB, then 8 MB at 0.5 MB/s, ends at 18 s."""
    devices = {"a": device(), "b": device()}
    net = links(devices, links=[{"a": "a", "b": "b", "bandwidth": 1e6}], overhead=0.0)
    sim = Simulator(devices, net)
    played(sim, Change("speed", "a", Profile(((0.0, 1.0), (1.0, 0.5))), unit="cpu"),
           Change("loss", "a-b", Profile(((2.0, 0.5),))))
    kernel, flow = sim.compute("a", 2e9), sim.transfer("a", "b", 1e7)
    sim.run()
    assert kernel.ok and flow.value.t_end == 18.0
    assert sim.log.frame().query("kind == 'compute'").t_end.tolist() == [7.0]
    assert rows(sim, "speed", "link") == [("speed", 1.0, "x0.5"), ("link", 2.0, "loss 0.5")]


def test_steps_that_do_not_change_the_value_are_not_played():
    """A profile that starts at the usual value and a period whose values are all one
    value add no rows and no events."""
    sim = Simulator({"a": device()})
    played(sim, Change("presence", "a", Profile(((0.0, 1.0), (1.0, 1.0)), 2.0)),
           Change("speed", "a", Profile(((0.0, 0.5),), 1.0)))
    busy_until(sim, 10.0)
    sim.run()
    assert rows(sim, "leave", "join", "speed") == [("speed", 0.0, "x0.5")]
    assert sim.now == 10.0 and not sim.env._queue


def test_exponential_draws_are_those_of_numpy():
    """The stream is numpy's Generator.exponential with the mean as scale (a check that
    the brute force above is not circular)."""
    rng = stream(1, "availability/x")
    assert np.isclose(np.mean([rng.exponential(3.0) for _ in range(20000)]), 3.0, rtol=0.03)


def test_a_run_until_an_event_stops_there_and_one_that_never_comes_is_an_error():
    """Endless sources with `run(until=event)`: it stops when the event happens; if
    nothing but the sources is left before it does, simpy's RuntimeError, not a hang."""
    import pytest

    sim = Simulator({"a": device()})
    played(sim, Change("availability", "a", up=1.0, down=1.0))
    done = sim.compute("a", 5e8)  # 1 s, unless a leaves first
    done.defused = True
    sim.run(until=sim.env.timeout(3.0))
    assert sim.now == 3.0
    never = sim.env.event()
    with pytest.raises(RuntimeError, match="until"):
        sim.run(until=never)
