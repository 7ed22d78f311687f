"""The engine's compute, memory, energy and battery models against hand-computed timelines."""
import numpy as np
import pytest

from simdl.errors import CapacityError, DeviceGone
from simdl.hw.devices import DeviceSpec, UnitSpec
from simdl.sim.engine import Simulator


def device(peak=1e9, efficiency=0.5, overhead=0.0, mem_bw=1e8, idle=1.0, active=2.0,
           battery=None, background=0.0, memory=1e6, units=("cpu",)):
    unit = UnitSpec(kind="cpu", peak={"fp32": peak, "int8": 4 * peak}, efficiency=efficiency,
                    overhead=overhead, active_power=active)
    return DeviceSpec(type="test", label="test device", units={u: unit for u in units},
                      memory=memory, mem_bw=mem_bw, idle_power=idle, radio_tx_power=0.5,
                      radio_rx_power=0.25, battery=battery, background=background,
                      interfaces={"wifi": 1e6})


def run_kernels(sim, kernels):
    """Submit (device, flops, nbytes, kwargs) at t=0; return the finish time of each."""
    done = {}

    def proc(i, dev, flops, nbytes, kw):
        yield sim.compute(dev, flops, nbytes, **kw)
        done[i] = sim.now

    for i, (dev, flops, nbytes, kw) in enumerate(kernels):
        sim.process(proc(i, dev, flops, nbytes, kw))
    sim.run()
    return [done[i] for i in range(len(kernels))]


def test_compute_bound_kernel_takes_flops_over_effective_peak_plus_overhead():
    """1 GFLOP at 1 GFLOP/s x 0.5 = 2 s, plus 1 ms overhead; 1 MB at 100 MB/s is only 10 ms."""
    sim = Simulator({"a": device(overhead=1e-3)})
    assert run_kernels(sim, [("a", 1e9, 1e6, {})]) == [2.001]


def test_memory_bound_kernel_takes_bytes_over_bandwidth():
    """1 MFLOP is 2 ms of compute, but 1 GB at 100 MB/s is 10 s."""
    sim = Simulator({"a": device()})
    assert run_kernels(sim, [("a", 1e6, 1e9, {})]) == [10.0]


def test_int8_kernels_use_the_int8_rate():
    """int8 peak is 4 GOP/s x 0.5: 1 GOP takes 0.5 s."""
    sim = Simulator({"a": device()})
    assert run_kernels(sim, [("a", 1e9, 0.0, {"dtype": "int8"})]) == [0.5]


def test_two_kernels_on_one_unit_queue_and_a_second_unit_runs_in_parallel():
    """Each kernel is 2 s: on one unit they end at 2 s and 4 s; on its own unit at 2 s."""
    sim = Simulator({"a": device(units=("cpu", "gpu"))})
    ends = run_kernels(sim, [("a", 1e9, 0, {"unit": "cpu"}), ("a", 1e9, 0, {"unit": "cpu"}),
                             ("a", 1e9, 0, {"unit": "gpu"})])
    assert ends == [2.0, 4.0, 2.0]


def test_waiting_kernels_run_by_priority_then_arrival():
    """The first takes the unit; of the waiting ones priority 0 goes before 1, FIFO within."""
    sim = Simulator({"a": device()})
    ends = run_kernels(sim, [("a", 1e9, 0, {"priority": 5}), ("a", 1e9, 0, {"priority": 1}),
                             ("a", 1e9, 0, {"priority": 0}), ("a", 1e9, 0, {"priority": 0})])
    assert ends == [2.0, 8.0, 4.0, 6.0]


def test_background_load_slows_a_kernel():
    """A quarter of the unit taken by other apps: 2 s of work takes 2 / 0.75 s."""
    sim = Simulator({"a": device(background=0.25)})
    assert run_kernels(sim, [("a", 1e9, 0, {})]) == [pytest.approx(2 / 0.75, rel=1e-15)]


def test_memory_overflow_names_the_device_the_need_and_what_is_free():
    sim = Simulator({"phone": device(memory=3 * 2**20)})
    sim.allocate("phone", 2 * 2**20, "weights")
    with pytest.raises(CapacityError, match=r"^devices\.phone\.memory: needs 1\.50 MiB for "
                       r"activations but only 1\.00 MiB of 3\.00 MiB is free$"):
        sim.allocate("phone", 1.5 * 2**20, "activations")
    sim.free("phone", 2 * 2**20, "weights")
    sim.allocate("phone", 1.5 * 2**20, "activations")
    assert sim.memory_peak["phone"] == 2 * 2**20


def test_energy_of_a_small_schedule():
    """Idle 1 W for 5 s = 5 J; cpu +2 W for two 2 s kernels = 8 J; total 13 J."""
    sim = Simulator({"a": device()})

    def proc():
        yield sim.compute("a", 1e9)
        yield sim.env.timeout(1.0)
        yield sim.compute("a", 1e9)

    sim.process(proc())
    sim.run()
    assert sim.now == 5.0
    e = sim.energy("a")
    assert (e.idle, e.compute, e.radio, e.total) == (5.0, 8.0, 0.0, 13.0)


def test_a_battery_runs_out_at_the_computed_instant_and_the_kernel_is_lost():
    """10 J at 1 W idle + 4 W cpu = 5 W: empty at 2 s, in the middle of a 100 s kernel."""
    sim = Simulator({"a": device(battery=10.0, active=4.0, peak=1e7)})
    seen = []

    def proc():
        try:
            yield sim.compute("a", 1e9, label="long")
        except DeviceGone as gone:
            seen.append((sim.now, gone.why))

    sim.process(proc())
    sim.run()
    assert seen == [(pytest.approx(2.0, rel=1e-9), "battery empty")]
    log = sim.log.frame()
    leave = log[log.kind == "leave"].iloc[0]
    lost = log[log.kind == "lost"].iloc[0]
    assert leave.t_start == pytest.approx(2.0, rel=1e-9) and lost.label == "long"
    assert sim.departure("a").triggered and sim.departure("a").value == "battery empty"
    assert sim.energy("a").total == pytest.approx(10.0, rel=1e-9)


def test_an_idle_device_runs_out_while_others_work():
    """b idles at 1 W on a 3 J battery while a computes for 10 s: b leaves at 3 s."""
    sim = Simulator({"a": device(), "b": device(battery=3.0)})
    def work():
        yield sim.compute("a", 5e9)

    sim.process(work())
    sim.run()
    assert sim.gone["b"] == (pytest.approx(3.0, rel=1e-9), "battery empty")
    assert sim.now == 10.0


def test_a_battery_check_does_not_extend_a_run():
    """A 1 s kernel on a device with a large battery: the run ends at 1 s, not at the check."""
    sim = Simulator({"a": device(battery=1e6)})
    assert run_kernels(sim, [("a", 5e8, 0, {})]) == [1.0]
    assert sim.now == 1.0 and not sim.gone


def test_work_sent_to_a_gone_device_fails_at_once():
    sim = Simulator({"a": device()})
    sim.leave("a", "unplugged")
    ev = sim.compute("a", 1.0)
    ev.defused = True
    assert isinstance(ev.value, DeviceGone) and "unplugged" in str(ev.value)


def _matmul_workload(sim, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((64, 64)).astype(np.float32)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    out = {}

    def proc(name, dev):
        y = x
        for i in range(3):
            y = yield sim.compute(dev, 2 * 64**3, 3 * 64 * 64 * 4, lambda a: a @ w, (y,),
                                  label=f"{name}{i}")
        out[name] = y

    sim.process(proc("p", "a"))
    sim.process(proc("q", "a"))
    sim.process(proc("r", "b"))
    sim.run()
    return out


def test_timing_only_and_real_mode_give_identical_timelines():
    devices = {"a": device(overhead=1e-4), "b": device(peak=3e9, battery=50.0)}
    real = Simulator(devices)
    outputs = _matmul_workload(real)
    timing = Simulator(devices, timing_only=True)
    nothing = _matmul_workload(timing)
    assert real.log.rows == timing.log.rows
    assert outputs["p"].shape == (64, 64) and nothing["p"] is None


def test_a_transfer_in_flight_when_its_device_leaves_fails_and_is_logged_lost():
    """10 MB at 1 MB/s from a to b; a leaves at 3 s: the sender hears at 3 s, a `lost` row."""
    from simdl.hw.topologies import links
    devices = {"a": device(), "b": device()}
    net = links(devices, links=[{"a": "a", "b": "b", "bandwidth": 1e6, "latency": 0.0}])
    sim = Simulator(devices, net)
    seen = []

    def send():
        try:
            yield sim.transfer("a", "b", 10e6, label="weights")
        except DeviceGone as gone:
            seen.append((sim.now, gone.device))

    def unplug():
        yield sim.env.timeout(3.0)
        sim.leave("a", "unplugged")

    sim.process(send())
    sim.process(unplug())
    sim.run()
    assert seen == [(3.0, "a")]
    log = sim.log.frame()
    assert log[log.kind == "lost"].label.tolist() == ["weights"]
    assert log[log.kind == "transfer"].empty


def test_work_sent_to_a_device_that_left_fails_even_after_kernels_ran_there():
    """The unit a device's kernels go to is looked up once; a departure forgets it."""
    sim = Simulator({"a": device()})
    assert run_kernels(sim, [("a", 5e8, 0, {})]) == [1.0]
    sim.leave("a", "unplugged")
    ev = sim.compute("a", 1.0)
    ev.defused = True
    assert isinstance(ev.value, DeviceGone) and "unplugged" in str(ev.value)
    assert not sim.units["a", "cpu"].queue and sim.units["a", "cpu"].running is None


def test_a_kernel_lost_while_it_runs_fails_its_waiter_at_once_and_never_logs_compute():
    """A 2 s kernel; its device leaves at 0.5 s: the waiter hears then, the kernel's end
    at 2 s changes nothing, and the log has its `lost` row and no `compute` row."""
    sim = Simulator({"a": device()})
    heard = []

    def work():
        try:
            yield sim.compute("a", 1e9, label="k")
        except DeviceGone:
            heard.append(sim.now)

    def unplug():
        yield sim.env.timeout(0.5)
        sim.leave("a", "unplugged")

    sim.process(work())
    sim.process(unplug())
    sim.run()
    assert heard == [0.5] and sim.now == 2.0
    assert [r[2] for r in sim.log.rows] == ["leave", "lost"]
    assert sim.busy_time("a", "cpu") == 0.5


def _join_order(all_of):
    """Who runs when, at one instant: two children end, a waiter joins them with
    `all_of`, another process takes zero-delay steps in between."""
    sim = Simulator({"a": device()})
    order = []

    def child(k):
        yield sim.env.timeout(1.0)
        order.append(f"child{k}")
        return k * 10

    def waiter():
        procs = [sim.process(child(k)) for k in range(2)]
        order.append(("joined", (yield from all_of(sim, procs))))

    def other():
        yield sim.env.timeout(1.0)
        for step in range(4):
            order.append(f"other{step}")
            yield sim.env.timeout(0.0)

    sim.process(waiter())
    sim.process(other())
    sim.run()
    return order


def test_sim_all_of_resumes_its_waiter_where_simpys_all_of_does():
    def simpy_all_of(sim, events):
        got = yield sim.env.all_of(events)
        return [got[e] for e in events]

    def ours(sim, events):
        return (yield sim.all_of(events))

    expected = _join_order(simpy_all_of)
    assert ("joined", [0, 10]) in expected
    assert _join_order(ours) == expected


def test_sim_all_of_of_nothing_succeeds_at_once_and_a_failure_fails_it():
    sim = Simulator({"a": device()})
    seen = []

    def fails():
        yield sim.env.timeout(1.0)
        raise ValueError("broken")

    def waiter():
        seen.append((yield sim.all_of([])))
        try:
            yield sim.all_of([sim.env.timeout(2.0), sim.process(fails())])
        except ValueError as err:
            seen.append((sim.now, str(err)))

    sim.process(waiter())
    sim.run()
    assert seen == [[], (1.0, "broken")]


def test_a_run_freezes_what_lives_before_it_and_leaves_the_collector_as_it_was():
    """During a run the objects alive at its start are frozen (the collector skips them);
    after it none are; and a caller's own frozen objects stay frozen, run or not."""
    import gc

    def frozen_during_a_run():
        sim, seen = Simulator({"a": device()}), []

        def look():
            yield sim.compute("a", 1.0)
            seen.append(gc.get_freeze_count())

        sim.process(look())
        sim.run()
        return seen[0]

    assert gc.get_freeze_count() == 0
    assert frozen_during_a_run() > 0 and gc.get_freeze_count() == 0
    gc.freeze()
    try:
        theirs = gc.get_freeze_count()
        frozen_during_a_run()
        assert gc.get_freeze_count() == theirs
    finally:
        gc.unfreeze()


def test_frozen_scopes_nest_and_keep_freezes_what_lives_now():
    """The outermost scope freezes the heap and at its end unfreezes it; `keep`, even in
    an inner scope, freezes what was made since, and an inner scope's end leaves it
    frozen. With a caller's own objects frozen, scopes and `keep` do nothing."""
    import gc

    from simdl.sim.engine import frozen

    assert gc.get_freeze_count() == 0
    with frozen():
        before = gc.get_freeze_count()
        made = [[i] for i in range(1000)]  # 1,000 tracked objects
        with frozen() as keep:
            keep()
            assert gc.get_freeze_count() >= before + len(made)
        assert gc.get_freeze_count() >= before + len(made)
    assert gc.get_freeze_count() == 0
    del made
    gc.freeze()
    try:
        theirs = gc.get_freeze_count()
        with frozen() as keep:
            more = [[i] for i in range(1000)]
            keep()
            assert gc.get_freeze_count() <= theirs < len(more) + theirs
        assert gc.get_freeze_count() <= theirs
    finally:
        gc.unfreeze()


def test_a_finished_run_is_frozen_while_its_result_tables_are_made(monkeypatch):
    """api.run freezes the world before each strategy, and the finished run before its
    tables: more is frozen then than while it ran; nothing after api.run returns."""
    import gc

    from simdl import api
    from simdl.report import result as result_module

    counts = {}
    run, tables = Simulator.run, result_module.Result.from_log

    def running(self, *args, **kwargs):
        counts["run"] = gc.get_freeze_count()
        return run(self, *args, **kwargs)

    def tabling(*args, **kwargs):
        counts["tables"] = gc.get_freeze_count()
        return tables(*args, **kwargs)

    monkeypatch.setattr(Simulator, "run", running)
    monkeypatch.setattr(result_module.Result, "from_log", tabling)
    api.run("scenarios/slow_link.yaml", timing_only=True)
    assert counts["tables"] > counts["run"] > 0 and gc.get_freeze_count() == 0


def test_frozen_scopes_on_threads_unfreeze_when_the_last_ends():
    """Two threads' scopes overlap: the heap stays frozen until the second ends."""
    import gc
    import threading

    from simdl.sim.engine import frozen

    entered, release = threading.Event(), threading.Event()

    def other():
        with frozen():
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    entered.wait(10)
    with frozen():
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() > 0  # the other thread's scope is still open
    release.set()
    thread.join(10)
    assert gc.get_freeze_count() == 0
