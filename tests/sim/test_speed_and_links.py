"""A unit that slows down and a link that fades mid-run, against hand-computed end times."""
import pytest
from test_engine import device
from test_join import at

from simdl.errors import PlanError
from simdl.hw.topologies import links
from simdl.sim.engine import Simulator


def ends(sim, work):
    """Start each (name, make_event) at t=0; return name -> the time its event succeeded."""
    done = {}

    def proc(name, make):
        yield make()
        done[name] = sim.now

    for name, make in work:
        sim.process(proc(name, make))
    sim.run()
    return done


def test_a_running_kernel_finishes_its_remainder_at_the_new_rate():
    """A 4 s kernel (2 GFLOP at 0.5 GFLOP/s) from 0; at 1 s the unit runs at half speed:
    3 s of work left take 6 s, so it ends at 7 s; the next, queued, 2 s kernel takes 4 s."""
    sim = Simulator({"a": device()})
    at(sim, 1.0, sim.set_speed, "a", "cpu", 0.5)
    done = ends(sim, [("k0", lambda: sim.compute("a", 2e9)), ("k1", lambda: sim.compute("a", 1e9))])
    assert done == {"k0": 7.0, "k1": 11.0}
    log = sim.log.frame()
    assert log[log.kind == "compute"][["t_start", "t_end"]].values.tolist() == [[0, 7], [7, 11]]
    assert sim.busy_time("a", "cpu") == 11.0


def test_a_speed_up_and_back_moves_the_end_twice():
    """4 s kernel; at 1 s twice as fast (3 s of work: 1.5 s, end 2.5), at 2 s back to
    normal (0.5 s at x2 left = 1 s of work): it ends at 3 s."""
    sim = Simulator({"a": device(units=("cpu", "gpu"))})
    at(sim, 1.0, sim.set_speed, "a", None, 2.0)
    at(sim, 2.0, sim.set_speed, "a", None, 1.0)
    done = ends(sim, [("k", lambda: sim.compute("a", 2e9, unit="gpu"))])
    assert done == {"k": 3.0}
    speeds = sim.log.frame().query("kind == 'speed'")
    assert list(zip(speeds.t_start, speeds.resource, speeds.label)) == [
        (1.0, "cpu", "x2"), (1.0, "gpu", "x2"), (2.0, "cpu", "x1"), (2.0, "gpu", "x1")]


def test_speed_only_touches_the_unit_named():
    sim = Simulator({"a": device(units=("cpu", "gpu"))})
    sim.set_speed("a", "gpu", 0.25)
    done = ends(sim, [("cpu", lambda: sim.compute("a", 1e9, unit="cpu")),
                      ("gpu", lambda: sim.compute("a", 1e9, unit="gpu"))])
    assert done == {"cpu": 2.0, "gpu": 8.0}


def test_bad_speed_calls_name_what_is_allowed():
    sim = Simulator({"a": device()})
    with pytest.raises(PlanError, match="choose one of: cpu"):
        sim.set_speed("a", "npu", 0.5)
    with pytest.raises(PlanError, match="choose one of: a"):
        sim.set_speed("b", None, 0.5)
    with pytest.raises(PlanError, match="> 0"):
        sim.set_speed("a", None, 0.0)


def chain_of_three():
    """a -(1 MB/s)- b -(0.2 MB/s)- c, no latency or overhead."""
    devices = {d: device() for d in "abc"}
    net = links(devices, links=[{"a": "a", "b": "b", "bandwidth": 1e6},
                                {"a": "b", "b": "c", "bandwidth": 2e5}], overhead=0.0)
    return Simulator(devices, net)


def test_a_transfer_alone_on_a_link_that_halves_halfway_finishes_at_the_computed_time():
    """10 MB at 1 MB/s; at 5 s (5 MB sent) the link halves: 5 MB at 0.5 MB/s, end 15 s."""
    sim = chain_of_three()
    at(sim, 5.0, sim.set_link, "a-b", 0.5)
    done = ends(sim, [("f", lambda: sim.transfer("a", "b", 1e7))])
    assert done == {"f": 15.0}
    row = sim.log.frame().query("kind == 'link'")
    assert list(zip(row.t_start, row.resource, row.label)) == [(5.0, "a-b", "bandwidth x0.5")]


def test_two_flows_sharing_a_fading_link_get_the_max_min_answer():
    """f1 a->b (10 MB) and f2 a->c (2 MB, also across b>c at 0.2 MB/s). Max-min: f2 0.2,
    f1 the 0.8 left of a>b. At 5 s (f1 6 MB left, f2 1 MB) a>b halves to 0.5: f2 keeps
    0.2, f1 gets 0.3; f2 ends at 10 s, f1 (4.5 MB left) then alone at 0.5: 19 s."""
    sim = chain_of_three()
    at(sim, 5.0, sim.set_link, "a>b", 0.5)
    done = ends(sim, [("f1", lambda: sim.transfer("a", "b", 1e7)),
                      ("f2", lambda: sim.transfer("a", "c", 2e6))])
    assert done == {"f1": 19.0, "f2": 10.0}


def test_loss_takes_its_share_of_the_bandwidth_and_both_combine():
    """Loss 0.5 halves a 1 MB/s link, then bandwidth x0.5 on top: 0.25 MB/s. 10 MB:
    2 MB by 2 s, 2 MB more by 6 s (0.5 MB/s), 6 MB at 0.25 MB/s: 30 s."""
    sim = chain_of_three()
    at(sim, 2.0, sim.set_link, "a-b", None, 0.5)
    at(sim, 6.0, sim.set_link, "a-b", 0.5)
    done = ends(sim, [("f", lambda: sim.transfer("a", "b", 1e7))])
    assert done == {"f": 30.0}


def test_a_link_that_drops_stalls_its_flow_until_it_is_back():
    """10 MB at 1 MB/s; down from 5 s to 8 s: the last 5 MB go from 8 s, end 13 s."""
    sim = chain_of_three()
    at(sim, 5.0, sim.set_link, "b-a", 0.0)
    at(sim, 8.0, sim.set_link, "b-a", 1.0)
    done = ends(sim, [("f", lambda: sim.transfer("a", "b", 1e7))])
    assert done == {"f": 13.0} and sim.now == 13.0  # no wake-up at infinity


def test_a_change_to_another_link_leaves_a_flow_alone():
    sim = chain_of_three()
    at(sim, 5.0, sim.set_link, "b>c", 0.5)
    done = ends(sim, [("f", lambda: sim.transfer("a", "b", 1e7))])
    assert done == {"f": 10.0}


def test_an_unknown_link_or_a_bad_value_names_what_is_allowed():
    sim = chain_of_three()
    with pytest.raises(PlanError, match=r"a-b, b-c"):
        sim.set_link("a-c", 0.5)
    with pytest.raises(PlanError, match=r"\[0, 1\)"):
        sim.set_link("a-b", loss=1.0)
    with pytest.raises(PlanError, match=">= 0"):
        sim.set_link("a-b", -1.0)


def test_the_world_s_network_keeps_its_capacities():
    """The planner reads the network too: a run's link changes stay in its own flows."""
    sim = chain_of_three()
    sim.set_link("a-b", 0.5)
    assert sim.network.capacity["a>b"] == 1e6
