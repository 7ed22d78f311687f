"""A device that leaves and joins again: hand-computed timelines of `join` and `arrival`."""
import pytest
from test_engine import device

from simdl.errors import DeviceGone, PlanError
from simdl.sim.engine import Simulator


def at(sim, t, fn, *args):
    """Call fn(*args) at simulated time t."""
    def proc():
        yield sim.env.timeout(t - sim.now)
        fn(*args)
    sim.process(proc())


def test_a_device_leaves_and_joins_and_work_submitted_after_the_join_runs():
    """A 2 s kernel at t=0 is lost at t=1 (leave); after the join at t=3 a 2 s kernel
    submitted at t=4 runs 4 -> 6 on the (free) unit."""
    sim = Simulator({"a": device()})  # 1 GFLOP at 0.5 GFLOP/s: 2 s
    seen = []

    def first():
        try:
            yield sim.compute("a", 1e9, label="k0")
        except DeviceGone as gone:
            seen.append(("lost", sim.now, gone.why))

    def second():
        yield sim.env.timeout(4.0)
        yield sim.compute("a", 1e9, label="k1")
        seen.append(("done", sim.now))

    sim.process(first())
    sim.process(second())
    at(sim, 1.0, sim.leave, "a", "walked away")
    at(sim, 3.0, sim.join, "a", "back")
    sim.run()
    assert seen == [("lost", 1.0, "walked away"), ("done", 6.0)]
    assert not sim.gone
    log = sim.log.frame()
    rows = log[log.kind.isin(["leave", "join", "compute", "lost"])]
    assert list(zip(rows.kind, rows.t_start, rows.t_end, rows.label)) == [
        ("leave", 1.0, 1.0, "walked away"), ("lost", 0.0, 1.0, "k0"),
        ("join", 3.0, 3.0, "back"), ("compute", 4.0, 6.0, "k1")]


def test_work_sent_while_it_is_away_fails_and_work_sent_after_the_join_runs():
    sim = Simulator({"a": device()})
    sim.leave("a", "unplugged")
    ev = sim.compute("a", 1.0)
    ev.defused = True
    assert isinstance(ev.value, DeviceGone)
    sim.join("a", "plugged in")
    ok = sim.compute("a", 5e8)
    sim.run()
    assert ok.ok and sim.now == 1.0


def test_memory_is_empty_after_the_join_and_the_loss_is_one_alloc_row():
    sim = Simulator({"a": device(memory=1000.0)})
    sim.allocate("a", 600.0, "weights")
    sim.leave("a", "gone")
    assert sim.memory_used["a"] == 600.0  # nothing changes while it is away
    sim.join("a", "back")
    assert sim.memory_used["a"] == 0.0 and sim.memory_peak["a"] == 600.0
    sim.allocate("a", 1000.0, "weights again")  # the whole memory is free again
    allocs = sim.log.frame().query("kind == 'alloc'")
    assert list(zip(allocs.label, allocs.nbytes)) == [
        ("weights", 600.0), ("lost at leave", -600.0), ("weights again", 1000.0)]


def test_reserved_bytes_are_given_back_by_their_owner_not_by_the_join():
    """A reservation drew 300 B; its owner releases it after the leave; the join then
    gives back only the 200 B held outside it: the device is empty, never negative."""
    sim = Simulator({"a": device(memory=1000.0)})
    sim.allocate("a", 200.0, "weights")
    res = sim.reserve({"a": 500.0}, "r0")
    sim.allocate("a", 300.0, "act", under=res)
    sim.leave("a", "gone")
    sim.release(res)
    sim.join("a", "back")
    assert sim.memory_used["a"] == 0.0
    sim.reserve({"a": 1000.0}, "r1")  # nothing is promised any more either


def test_departure_fires_again_on_the_second_leave_and_arrival_on_each_join():
    sim = Simulator({"a": device()})
    first, arrival = sim.departure("a"), sim.arrival("a")
    at(sim, 1.0, sim.leave, "a", "one")
    at(sim, 2.0, sim.join, "a", "back once")
    at(sim, 5.0, sim.leave, "a", "two")
    heard = []

    def watch():
        why = yield sim.departure("a")
        heard.append(("left", sim.now, why))
        why = yield sim.arrival("a")
        heard.append(("joined", sim.now, why))
        why = yield sim.departure("a")  # re-armed by the join
        heard.append(("left", sim.now, why))
        assert not sim.arrival("a").triggered  # armed for a join that never comes

    sim.process(watch())
    sim.run()
    assert heard == [("left", 1.0, "one"), ("joined", 2.0, "back once"), ("left", 5.0, "two")]
    assert first.value == "one" and arrival.value == "back once"
    assert sim.departure("a") is not first and sim.departure("a").value == "two"
    assert sim.gone == {"a": (5.0, "two")}


def test_join_of_a_present_device_does_nothing_and_an_unknown_one_is_an_error():
    sim = Simulator({"a": device()})
    sim.join("a", "never left")
    assert len(sim.log) == 0 and not sim.arrival("a").triggered
    with pytest.raises(PlanError, match="choose one of: a"):
        sim.join("b", "stranger")


def test_time_away_costs_no_idle_energy():
    """1 W idle; away from 2 s to 5 s; at 10 s it has idled 7 s: 7 J."""
    sim = Simulator({"a": device(idle=1.0)})
    at(sim, 2.0, sim.leave, "a", "out")
    at(sim, 5.0, sim.join, "a", "in")
    at(sim, 10.0, lambda: None)
    sim.run()
    assert sim.now == 10.0 and sim.energy("a").idle == 7.0


def test_a_battery_is_watched_again_after_the_join():
    """10 J battery at 1 W idle and 2 W more while a kernel runs. Away 1 -> 4 s (no
    drain). After the join a 10 s kernel starts at 4 s: at t it has used
    1 + (t - 4) x 3 J, empty when that reaches 10: t = 7 s. A long kernel on b keeps
    the pool busy throughout, so only the join can restart a's checks."""
    sim = Simulator({"a": device(battery=10.0, idle=1.0, active=2.0), "b": device()})
    busy = sim.compute("b", 1e10)
    at(sim, 1.0, sim.leave, "a", "out")
    at(sim, 4.0, sim.join, "a", "in")

    def work():
        yield sim.env.timeout(4.0)
        try:
            yield sim.compute("a", 5e9)
        except DeviceGone:
            pass

    sim.process(work())
    sim.run()
    assert busy.ok and sim.now == 20.0
    assert sim.gone["a"] == (pytest.approx(7.0, rel=1e-9), "battery empty")
